"""The wire-format readers and writers agree with protobuf's generated code."""

from __future__ import annotations

import random

import pytest
from google.protobuf.message import DecodeError

from aias.artifacts.v1 import artifacts_service_pb2 as pb
from aias.core.errors import InvalidArgument
from aias.core.wire import decode_varint, encode_varint, length_delimited_fields
from aias.services.artifacts.servicer import UploadMessage


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21 - 1, 2**21, 2**63 - 1])
def test_varints_round_trip(value: int) -> None:
    encoded = encode_varint(value)
    assert decode_varint(memoryview(b"\xff" + encoded), 1) == (value, len(encoded) + 1)


def test_a_truncated_varint_is_refused() -> None:
    with pytest.raises(ValueError, match="truncated"):
        decode_varint(memoryview(encode_varint(300)[:1]), 0)


def _metadata(**fields: str) -> pb.UploadArtifactRequest:
    metadata = pb.UploadArtifactMetadata()
    for name, value in fields.items():
        setattr(metadata, name, value)
    return pb.UploadArtifactRequest(metadata=metadata)


def _chunk(data: bytes) -> pb.UploadArtifactRequest:
    return pb.UploadArtifactRequest(chunk=data)


def _parsed_both_ways(wire: bytes) -> tuple[UploadMessage, pb.UploadArtifactRequest]:
    return UploadMessage.parse(wire), pb.UploadArtifactRequest.FromString(wire)


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [_metadata(run_id="r", step_id="s", name="a.bin", media_type="x/y", run_ticket="t")],
        [_chunk(b"")],
        [_chunk(bytes(range(256)) * 4096)],
        # Sent twice, a message field merges; the other member in between starts it afresh.
        [_metadata(run_id="r"), _metadata(name="n")],
        [_metadata(run_id="r"), _chunk(b"x"), _metadata(name="n")],
        [_chunk(b"first"), _metadata(name="n"), _chunk(b"last")],
    ],
)
def test_an_upload_message_reads_as_the_generated_parser_reads_it(
    messages: list[pb.UploadArtifactRequest],
) -> None:
    wire = b"".join(message.SerializeToString() for message in messages)

    raw, generated = _parsed_both_ways(wire)

    assert raw.payload == generated.WhichOneof("payload")
    assert raw.metadata == generated.metadata
    assert bytes(raw.chunk) == generated.chunk


def test_an_upload_chunk_is_a_view_of_the_received_bytes() -> None:
    wire = _chunk(b"z" * 1000).SerializeToString()

    chunk = UploadMessage.parse(wire).chunk

    assert chunk.obj is wire


def test_fields_of_other_wire_types_are_skipped() -> None:
    # Fields 5 (varint), 6 (64-bit) and 7 (32-bit), unknown to the message, around a chunk.
    rng = random.Random(7)
    data = rng.randbytes(300)
    wire = (
        b"\x28\x96\x01" + b"\x31" + bytes(8) + _chunk(data).SerializeToString() + b"\x3d" + bytes(4)
    )

    raw, generated = _parsed_both_ways(wire)

    assert (raw.payload, bytes(raw.chunk)) == ("chunk", data) == ("chunk", generated.chunk)
    assert [number for number, _ in length_delimited_fields(wire)] == [2]


@pytest.mark.parametrize(
    "wire",
    [
        _chunk(b"abc").SerializeToString()[:-1],  # the value cut short
        b"\x12",  # a length missing
        b"\x31" + bytes(7),  # a 64-bit field cut short
        b"\x0b",  # a group: not a wire type these messages use
    ],
)
def test_malformed_messages_are_refused_by_both(wire: bytes) -> None:
    with pytest.raises(ValueError, match=r"truncated|unexpected wire type"):
        list(length_delimited_fields(wire))
    with pytest.raises(InvalidArgument, match=r"truncated|unexpected wire type") as caught:
        UploadMessage.parse(wire)
    assert caught.value.reason == "MALFORMED_MESSAGE"
    with pytest.raises(DecodeError):
        pb.UploadArtifactRequest.FromString(wire)
