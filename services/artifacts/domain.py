"""Artifact rules: names, media types, chunk limits, retention, download ranges and headers."""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import encode_rfc2231

from aias.core.errors import (
    CONTENT_RANGE,
    HTTP_STATUS_OVERRIDE,
    InvalidArgument,
    OutOfRange,
    clip,
)
from aias.core.text import checked_file_name

MAX_CHUNK_BYTES = 1024 * 1024
# A piece of content as it arrives: bytes, or a view of the gRPC message that carried it.
Chunk = bytes | memoryview
# Content stored in one message (StoreArtifact) rather than a stream: small step outputs.
MAX_STORE_BYTES = 512 * 1024
# Content stored in one message up to this size is kept in the database rather than the blob
# store (AIAS_ARTIFACTS_INLINE_BYTES, at most MAX_INLINE_BYTES).
DEFAULT_INLINE_BYTES = 64 * 1024
MAX_INLINE_BYTES = 256 * 1024
# Downloads go in messages this large: per byte, larger messages cost less in each hop (each
# is a thread hand-off and a completion on both sides). Kept under the processes' mmap
# threshold (aias.core.process), so the heap reuses them instead of mapping each afresh.
DOWNLOAD_CHUNK_BYTES = 512 * 1024
# Upload chunks received ahead while one is being stored, so receiving and storing overlap.
UPLOAD_READ_AHEAD = 1
MAX_NAME_CHARS = 255
MAX_STEP_ID_CHARS = 64
MAX_MEDIA_TYPE_CHARS = 255
# A century: beyond that a retention is "forever" in disguise and risks timestamp overflow.
MAX_RETENTION_DAYS = 36_500

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# RFC 9110 tokens for type and subtype; parameters only need to be printable ASCII.
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_MEDIA_TYPE = re.compile(rf"{_TOKEN}/{_TOKEN}(\s*;[ -~]*)?")
# Characters that can sit inside a quoted filename without escaping or encoding; `%` is not
# one, since some browsers percent-decode a plain filename.
_PLAIN_FILENAME = re.compile(r"[ !#$&-\[\]-~]+")
# One `first-last`, `first-` or `-suffix` range of a `bytes=` Range header (RFC 9110 14.1.1).
_BYTE_RANGE = re.compile(r"\s*(?:(\d{1,19})-(\d{0,19})|-(\d{1,19}))\s*")
# An entity tag, optionally weak: `"abc"` or `W/"abc"` (RFC 9110 8.8.3).
_ENTITY_TAG = re.compile(r'\s*(W/)?("[^"]*")\s*(?:,|$)')


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
    # Execution's proof that the run is the tenant's and of `workflow_id` (see aias.core.tickets).
    run_ticket: str = ""


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
    run_ticket: str = ""


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
    if spec.run_ticket and not spec.workflow_id:
        raise InvalidArgument(
            "WORKFLOW_ID_REQUIRED", "an upload with a run_ticket must name the run's workflow_id"
        )
    return NewArtifact(
        run_id=_uuid(spec.run_id, "run_id"),
        workflow_id=_uuid(spec.workflow_id, "workflow_id") if spec.workflow_id else None,
        step_id=validate_step_id(spec.step_id),
        name=validate_name(spec.name),
        media_type=validate_media_type(spec.media_type),
        retention=retention_period(spec.retention_days),
        run_ticket=spec.run_ticket,
    )


def check_workflow(new: NewArtifact, run_workflow: uuid.UUID) -> uuid.UUID:
    """The run's workflow, which an upload that names one must agree with."""
    if new.workflow_id is not None and new.workflow_id != run_workflow:
        raise InvalidArgument(
            "WORKFLOW_MISMATCH",
            f"run {new.run_id} belongs to workflow {run_workflow}, not {new.workflow_id}",
        )
    return run_workflow


def check_chunk(chunk: Chunk) -> Chunk:
    if len(chunk) > MAX_CHUNK_BYTES:
        raise InvalidArgument(
            "CHUNK_TOO_LARGE", f"a chunk may hold at most {MAX_CHUNK_BYTES} bytes, got {len(chunk)}"
        )
    return chunk


def check_content(content: bytes) -> bytes:
    if len(content) > MAX_STORE_BYTES:
        raise InvalidArgument(
            "CONTENT_TOO_LARGE",
            f"StoreArtifact takes at most {MAX_STORE_BYTES} bytes, got {len(content)}; "
            "use UploadArtifact for more",
        )
    return content


def content_disposition(name: str) -> str:
    """An attachment header (RFC 6266): names beyond plain ASCII, or with `"`, `\\` or `%`, get
    an ASCII `filename` fallback and the exact name as an RFC 8187 `filename*`.

    aiohttp's `content_disposition_header` is the multipart (RFC 7578) form, which percent-
    encodes inside `filename`; HTTP clients read `filename*` instead, so it is not used here.
    """
    if _PLAIN_FILENAME.fullmatch(name):
        return f'attachment; filename="{name}"'
    fallback = "".join(c if _PLAIN_FILENAME.fullmatch(c) else "_" for c in name)
    return f'attachment; filename="{fallback}"; filename*={encode_rfc2231(name, "UTF-8")}'


def entity_tag(sha256: str) -> str:
    """The strong ETag of content: its digest, quoted."""
    return f'"{sha256}"'


@dataclass(frozen=True)
class ByteWindow:
    """The bytes of a blob to send: `length` of them from `offset`."""

    offset: int
    length: int

    def content_range(self, size: int) -> str:
        return f"bytes {self.offset}-{self.offset + self.length - 1}/{size}"


class Answer(enum.Enum):
    """What a download sends: everything, a range of it, or nothing since the client has it."""

    FULL = "full"
    PARTIAL = "partial"
    NOT_MODIFIED = "not_modified"


@dataclass(frozen=True)
class DownloadRequest:
    """What a caller asks of a download.

    A gRPC caller names a window (`offset`, `length`; a length of 0 means to the end); an HTTP
    client sends Range, If-Range and If-None-Match headers, which the gateway forwards.
    """

    offset: int = 0
    length: int = 0
    range_header: str = ""
    if_range: str = ""
    if_none_match: str = ""


@dataclass(frozen=True)
class DownloadPlan:
    answer: Answer
    window: ByteWindow


def plan_download(request: DownloadRequest, size: int, sha256: str) -> DownloadPlan:
    """What to send for a request, decided from the metadata before the blob is opened.

    If-None-Match that matches (weakly, or `*`) is 304. A single satisfiable byte range is
    206; several ranges are answered with the whole body (200), as RFC 9110 allows, which
    spares a multipart/byteranges body; a Range that is not valid syntax, or whose If-Range
    does not match the ETag strongly (a date never does), is ignored. A range that starts
    past the end is OUT_OF_RANGE, which HTTP answers 416 with `Content-Range: bytes */size`.
    """
    whole = ByteWindow(0, size)
    if request.if_none_match and _none_match_fails(request.if_none_match, sha256):
        return DownloadPlan(Answer.NOT_MODIFIED, ByteWindow(0, 0))
    if request.range_header:
        if request.offset or request.length:
            raise InvalidArgument(
                "RANGE_TWICE", "give either a Range header or offset and length, not both"
            )
        if request.if_range and request.if_range.strip() != entity_tag(sha256):
            return DownloadPlan(Answer.FULL, whole)
        window = _header_window(request.range_header, size)
        # A satisfiable Range is 206 even when it covers everything, as the client asked.
        return (
            DownloadPlan(Answer.FULL, whole)
            if window is None
            else DownloadPlan(Answer.PARTIAL, window)
        )
    return _partial(_requested_window(request.offset, request.length, size), size)


def _partial(window: ByteWindow, size: int) -> DownloadPlan:
    if window.offset == 0 and window.length == size:
        return DownloadPlan(Answer.FULL, window)
    return DownloadPlan(Answer.PARTIAL, window)


def _none_match_fails(header: str, sha256: str) -> bool:
    """Whether If-None-Match names this content (weak comparison, RFC 9110 13.1.2)."""
    if header.strip() == "*":
        return True
    tag = entity_tag(sha256)
    position = 0
    while position < len(header) and (found := _ENTITY_TAG.match(header, position)):
        if found.group(2) == tag:
            return True
        position = found.end()
    return False


def _unsatisfiable(size: int, message: str) -> OutOfRange:
    return OutOfRange(
        "RANGE_NOT_SATISFIABLE",
        message,
        {HTTP_STATUS_OVERRIDE: "416", CONTENT_RANGE: f"bytes */{size}"},
    )


def _header_window(header: str, size: int) -> ByteWindow | None:
    """The one range a `Range: bytes=...` header asks for; None to answer the whole body."""
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in specs:
        return None
    found = _BYTE_RANGE.fullmatch(specs)
    if found is None:
        return None
    first, last, suffix = found.groups()
    if suffix is not None:
        wanted = int(suffix)
        if wanted == 0 or size == 0:
            raise _unsatisfiable(size, f"the last {wanted} bytes of {size} cannot be sent")
        return ByteWindow(max(size - wanted, 0), min(wanted, size))
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None
    if start >= size:
        raise _unsatisfiable(size, f"the range starts at byte {start} of {size}")
    return ByteWindow(start, end - start + 1)


def _requested_window(offset: int, length: int, size: int) -> ByteWindow:
    if offset < 0 or length < 0:
        raise InvalidArgument("INVALID_RANGE", "offset and length must not be negative")
    if offset and offset >= size:
        raise _unsatisfiable(size, f"offset {offset} is past the end ({size} bytes)")
    if offset + length > size:
        raise _unsatisfiable(size, f"{length} bytes from {offset} run past the end ({size})")
    return ByteWindow(offset, length or size - offset)
