"""Execution rules: workflow validation, run states, payload decoding, canonical JSON."""

from __future__ import annotations

import base64
import contextlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aias.core.errors import InvalidArgument, clip
from aias.core.text import checked_text
from aias.services.execution.steps import STEP_TYPES, StepSpec

STEP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STEPS = 50
# Deeper JSON cannot be a real business document, and would exhaust recursion in the steps.
MAX_PAYLOAD_DEPTH = 100
DEFAULT_MAX_ATTEMPTS = 3


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


# A run in one of these states is finished: it never changes again.
FINAL_RUN_STATUSES = frozenset(
    {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.SKIPPED, RunStatus.CANCELLED}
)


class StepStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


def validate_name(name: str, what: str) -> str:
    return checked_text(name, what)


@dataclass(frozen=True)
class StepDefinition:
    """One step as stored in a workflow version."""

    id: str
    type: str
    config: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "config": self.config}


def steps_from_json(stored: list[dict[str, Any]]) -> list[StepDefinition]:
    """The steps of a stored workflow version."""
    return [StepDefinition(s["id"], s["type"], s.get("config") or {}) for s in stored]


def validate_steps(steps: list[StepDefinition]) -> list[StepDefinition]:
    """Checks every step up front, so a workflow that is stored can run.

    A refusal names the step (by id, and by index in `steps[i]`) and the field at fault;
    ErrorInfo metadata carries `step_index` and `step_id` for clients that point at it.
    """
    if not steps:
        raise InvalidArgument("NO_STEPS", "a workflow needs at least one step")
    if len(steps) > MAX_STEPS:
        raise InvalidArgument("TOO_MANY_STEPS", f"a workflow has at most {MAX_STEPS} steps")
    seen: set[str] = set()
    for index, step in enumerate(steps):
        where = f"steps[{index}]"
        if not STEP_ID.match(step.id):
            raise InvalidArgument(
                "INVALID_STEP_ID",
                f"{where}.id must be 1 to 64 letters, digits, '_' or '-', got {clip(repr(step.id))}",
                {"step_index": str(index)},
            )
        try:
            _validate_step(step, where, seen)
        except InvalidArgument as error:
            raise InvalidArgument(
                error.reason,
                f"step {step.id!r}: {error.message}",
                {**error.metadata, "step_index": str(index), "step_id": step.id},
            ) from None
        seen.add(step.id)
    return steps


def _validate_step(step: StepDefinition, where: str, seen: set[str]) -> None:
    if step.id in seen:
        raise InvalidArgument("DUPLICATE_STEP_ID", f"{where}.id {step.id!r} is used twice")
    spec: StepSpec | None = STEP_TYPES.get(step.type)
    if spec is None:
        raise InvalidArgument(
            "UNKNOWN_STEP_TYPE",
            f"{where}.type {clip(repr(step.type))} is not a step type; see "
            "GET /api/integrations for the catalog",
        )
    if not spec.available:
        raise InvalidArgument(
            "STEP_TYPE_COMING_SOON",
            f"{where}.type {step.type!r} is coming soon and cannot be used yet",
        )
    if _holds_nul(step.config):
        raise InvalidArgument(
            "INVALID_STEP_CONFIG",
            f"{where}.config holds the character U+0000 (NUL), which a stored workflow cannot "
            "hold; remove it",
        )
    spec.validate(step.config, where)


def _holds_nul(value: Any) -> bool:
    """Whether any string in a decoded JSON value, key or value, holds NUL (which PostgreSQL's
    jsonb and text refuse)."""
    level = [value]
    while level:
        below: list[Any] = []
        for item in level:
            if type(item) is str:
                if "\x00" in item:
                    return True
            elif type(item) is dict:
                below += item.keys()
                below += item.values()
            elif type(item) is list:
                below += item
        level = below
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


_CONTAINERS = (dict, list)


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded value: level by level, without
    recursion, looking only at containers (json.loads makes exact dicts and lists)."""
    depth, level = 0, [value] if type(value) in _CONTAINERS else []
    while level:
        depth += 1
        below: list[Any] = []
        for item in level:
            children = item.values() if type(item) is dict else item
            below += [child for child in children if type(child) in _CONTAINERS]
        level = below
    return depth


def _strict_json(body: bytes) -> Any:
    """JSON with finite numbers only and at most MAX_PAYLOAD_DEPTH levels of nesting."""
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise _too_deep() from None
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(
            "INVALID_PAYLOAD",
            "the body is JSON (declared, or an object or array sent without a type) but not "
            "valid JSON (NaN and Infinity are not JSON); send valid JSON or a text/plain body",
        ) from None
    if _depth(value) > MAX_PAYLOAD_DEPTH:
        raise _too_deep()
    return value


def _too_deep() -> InvalidArgument:
    return InvalidArgument(
        "PAYLOAD_TOO_DEEP", f"the JSON body nests deeper than {MAX_PAYLOAD_DEPTH} levels"
    )


# Bodies given to a workflow as text; anything else that is not JSON is given as base64.
_TEXT_TYPES = frozenset({"application/xml", "application/x-www-form-urlencoded"})


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _charset(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


def _is_json(media: str, body: bytes) -> bool:
    """Declared JSON; or no type and a body that is plainly an object or array.

    curl -d sends JSON as a form unless told otherwise, so a form body that is plainly an
    object or array is JSON too.
    """
    if media == "application/json" or media.endswith("+json"):
        return True
    return media in ("", "application/x-www-form-urlencoded") and body.lstrip()[:1] in (
        b"{",
        b"[",
    )


def check_payload(body: bytes, content_type: str) -> None:
    """Refuses a body the run could not decode (invalid or too deep JSON), decoding nothing else."""
    if _is_json(_media_type(content_type), body):
        _strict_json(body)


def decode_payload(body: bytes, content_type: str) -> Any:
    """The run's input value.

    JSON bodies are the parsed value (an empty body without a type is null). Any other body is
    `{"content_type", "text"}` for text types (text/*, XML, forms) in their charset, and
    `{"content_type", "base64"}` for everything else or text that does not decode.
    """
    media = _media_type(content_type)
    if not body.strip() and media == "":
        return None
    if _is_json(media, body):
        return _strict_json(body)
    if media.startswith("text/") or media in _TEXT_TYPES or media.endswith("+xml"):
        try:
            return {"content_type": content_type, "text": body.decode(_charset(content_type))}
        except (UnicodeDecodeError, LookupError):
            pass
    return {"content_type": content_type, "base64": base64.b64encode(body).decode("ascii")}


def decode_response(body: bytes, content_type: str) -> Any:
    """An http_request step's response body: JSON when it is JSON, otherwise its text (the
    server, not the tenant, wrote it, so a body that is not what it claims is kept as text);
    an empty body is null."""
    if not body:
        return None
    if _is_json(_media_type(content_type), body):
        with contextlib.suppress(InvalidArgument):
            return _strict_json(body)
    return body.decode("utf-8", errors="replace")
