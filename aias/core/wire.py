"""The Protocol Buffers wire format, for the few messages read or written without the generated
classes: the chunks of streamed downloads and uploads.

The generated classes copy a `bytes` field when they parse it and again each time it is read,
and building a message to serialize copies it once more; a transfer of 100 MiB is mostly those
copies. These read a field as a view of the received bytes and write it with one join.
"""

from __future__ import annotations

from collections.abc import Iterator

# Wire types (https://protobuf.dev/programming-guides/encoding/#structure).
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    """A non-negative integer as a base-128 varint."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def length_delimited(number: int, value: bytes) -> list[bytes]:
    """The parts of one length-delimited field (a string, bytes or message), to be joined."""
    return [encode_varint(number << 3 | _LEN), encode_varint(len(value)), value]


def decode_varint(view: memoryview, position: int) -> tuple[int, int]:
    """The varint at `position` and the position after it; ValueError when truncated."""
    value = shift = 0
    while True:
        if position >= len(view) or shift > 63:
            raise ValueError("truncated varint")
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def length_delimited_fields(wire: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    """Each length-delimited field of a message, in wire order: its number and a view of its
    value (no copy). Fields of other wire types are skipped; ValueError on malformed input.

    A singular field sent twice is the last one, as the generated parsers take it."""
    view = memoryview(wire)
    position = 0
    while position < len(view):
        key, position = decode_varint(view, position)
        kind = key & 7
        if kind == _LEN:
            size, position = decode_varint(view, position)
            value = view[position : position + size]
            if len(value) != size:
                raise ValueError("truncated length-delimited field")
            position += size
            yield key >> 3, value
        elif kind == _VARINT:
            _, position = decode_varint(view, position)
        elif kind in (_I64, _I32):
            position += 8 if kind == _I64 else 4
            if position > len(view):
                raise ValueError("truncated fixed-width field")
        else:
            raise ValueError(f"unexpected wire type {kind}")
