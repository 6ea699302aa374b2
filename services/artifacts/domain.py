"""Artifact rules: names, media types, chunk limits, retention, page tokens, download headers."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

from aias.core.errors import InvalidArgument, clip
from aias.core.text import checked_file_name

MAX_CHUNK_BYTES = 1024 * 1024
DOWNLOAD_CHUNK_BYTES = 64 * 1024
MAX_NAME_CHARS = 255
MAX_STEP_ID_CHARS = 64
MAX_MEDIA_TYPE_CHARS = 255
# A century: beyond that a retention is "forever" in disguise and risks timestamp overflow.
MAX_RETENTION_DAYS = 36_500

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 9110 tokens for type and subtype; parameters only need to be printable ASCII.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;[ -~]*)?")
# Characters that can sit inside a quoted filename without escaping or encoding.
_PLAIN_FILENAME = re.compile(r"[ !#-\[\]-~]+")


@dataclass(frozen=True)
class Artifact:
    """The metadata of one stored artifact."""

    id: uuid.UUID
    tenant_id: uuid.UUID
    run_id: uuid.UUID
    # None for artifacts stored before the workflow was recorded.
    workflow_id: uuid.UUID | None
    step_id: str
    name: str
    media_type: str
    size_bytes: int
    sha256: str
    create_time: datetime
    expire_time: datetime | None


@dataclass(frozen=True)
class UploadSpec:
    """What an upload says about itself, as the caller sent it."""

    run_id: str
    workflow_id: str
    step_id: str
    name: str
    media_type: str
    retention_days: int


@dataclass(frozen=True)
class NewArtifact:
    """A validated upload spec, ready to be stored."""

    run_id: uuid.UUID
    # What the uploader says the run's workflow is; None leaves it to the run.
    workflow_id: uuid.UUID | None
    step_id: str
    name: str
    media_type: str
    retention: timedelta | None


def validate_name(name: str) -> str:
    """A file name that is safe to put in a path segment and a header."""
    return checked_file_name(name, "name", MAX_NAME_CHARS)


def validate_step_id(step_id: str) -> str:
    if not 1 <= len(step_id) <= MAX_STEP_ID_CHARS or _CONTROL.search(step_id):
        raise InvalidArgument(
            "INVALID_STEP_ID",
            f"step_id must be 1 to {MAX_STEP_ID_CHARS} characters without control characters",
        )
    return step_id


def validate_media_type(media_type: str) -> str:
    """A `type/subtype[; params]` value; it becomes a Content-Type header, so ASCII only."""
    if not 1 <= len(media_type) <= MAX_MEDIA_TYPE_CHARS or not _MEDIA_TYPE.fullmatch(media_type):
        raise InvalidArgument(
            "INVALID_MEDIA_TYPE",
            f"media_type must look like type/subtype (at most {MAX_MEDIA_TYPE_CHARS} "
            f"characters), got {clip(repr(media_type))}",
        )
    return media_type


def retention_period(days: int) -> timedelta | None:
    """How long to keep an artifact; None keeps it forever."""
    if not 0 <= days <= MAX_RETENTION_DAYS:
        raise InvalidArgument(
            "INVALID_RETENTION",
            f"retention_days must be 0 (forever) to {MAX_RETENTION_DAYS}, got {days}",
        )
    return timedelta(days=days) if days else None


def kept_for(requested: timedelta | None, plan_days: int | None) -> timedelta | None:
    """The retention an artifact gets: what the upload asks for, at most the plan's."""
    if plan_days is None:
        return requested
    allowed = timedelta(days=plan_days)
    return allowed if requested is None else min(requested, allowed)


def _uuid(value: str, field: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidArgument(
            "INVALID_ID", f"{field} must be a UUID, got {clip(repr(value))}"
        ) from None


def validate_upload(spec: UploadSpec) -> NewArtifact:
    return NewArtifact(
        run_id=_uuid(spec.run_id, "run_id"),
        workflow_id=_uuid(spec.workflow_id, "workflow_id") if spec.workflow_id else None,
        step_id=validate_step_id(spec.step_id),
        name=validate_name(spec.name),
        media_type=validate_media_type(spec.media_type),
        retention=retention_period(spec.retention_days),
    )


def check_workflow(new: NewArtifact, run_workflow: uuid.UUID) -> uuid.UUID:
    """The run's workflow, which an upload that names one must agree with."""
    if new.workflow_id is not None and new.workflow_id != run_workflow:
        raise InvalidArgument(
            "WORKFLOW_MISMATCH",
            f"run {new.run_id} belongs to workflow {run_workflow}, not {new.workflow_id}",
        )
    return run_workflow


def check_chunk(chunk: bytes) -> bytes:
    if len(chunk) > MAX_CHUNK_BYTES:
        raise InvalidArgument(
            "CHUNK_TOO_LARGE", f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes, got {len(chunk)}"
        )
    return chunk


def content_disposition(name: str) -> str:
    """An attachment header; names beyond plain ASCII also get an RFC 6266 `filename*`."""
    if _PLAIN_FILENAME.fullmatch(name):
        return f'attachment; filename="{name}"'
    fallback = "".join(c if _PLAIN_FILENAME.fullmatch(c) else "_" for c in name)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"
