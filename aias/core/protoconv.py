"""Small conversions between protobuf well-known types and Python values."""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from google.protobuf import field_mask_pb2, struct_pb2, timestamp_pb2
from google.protobuf.message import Message

from aias.core.errors import InvalidArgument, clip


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for a datetime; None stays unset so JSON shows null."""
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def rfc3339(value: datetime) -> str:
    """A time as protobuf's JSON mapping writes its Timestamp (what the public API shows): UTC
    with `Z`, and 0, 3 or 6 digits of fraction, as few as hold it exactly. A naive time is UTC.

    The same text as `timestamp(value).ToJsonString()`, at a tenth of the cost (the worker
    writes one per run).
    """
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}T"
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    )
    micros = value.microsecond
    if micros == 0:
        return f"{text}Z"
    if micros % 1000 == 0:
        return f"{text}.{micros // 1000:03d}Z"
    return f"{text}.{micros:06d}Z"


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(value)
    return message


def update_paths(
    request: Message, mask: field_mask_pb2.FieldMask, allowed: Collection[str]
) -> set[str]:
    """The fields an update changes: its mask (`*` is every allowed field), or, with an empty
    mask, the allowed fields the request sets, as grpc-gateway infers a PATCH's mask."""
    paths = set(mask.paths)
    if not paths:
        return {name for name in allowed if _is_set(request, name)}
    if paths == {"*"}:
        return set(allowed)
    unknown = sorted(paths - set(allowed))
    if unknown:
        raise InvalidArgument(
            "INVALID_UPDATE_MASK",
            f"update_mask names {clip(', '.join(unknown))}, which cannot be changed; it may name "
            f"{', '.join(sorted(allowed))}, or '*' for all of them",
        )
    return paths


def _is_set(request: Message, name: str) -> bool:
    field = request.DESCRIPTOR.fields_by_name[name]
    if field.is_repeated:
        return len(getattr(request, name)) > 0
    if field.has_presence:
        return request.HasField(name)
    return bool(getattr(request, name))
