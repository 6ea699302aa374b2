"""Execution rules: workflow validation, run states, payload decoding, canonical JSON."""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import parse_qs

from aias.core.errors import InvalidArgument, clip
from aias.core.text import checked_text
from services.execution.steps import STEP_TYPES, StepSpec

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


def validate_steps(steps: list[StepDefinition]) -> list[StepDefinition]:
    """Checks every step up front, so a workflow that is stored can run."""
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
            )
        if step.id in seen:
            raise InvalidArgument(
                "DUPLICATE_STEP_ID", f"{where}.id {clip(repr(step.id))} is used twice"
            )
        seen.add(step.id)
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
        spec.validate(step.config, where)
    return steps


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded value (iteratively: no recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def _strict_json(body: bytes) -> Any:
    """JSON with finite numbers only and at most MAX_PAYLOAD_DEPTH levels of nesting."""
    invalid = InvalidArgument(
        "INVALID_PAYLOAD",
        "the body is declared (or defaults to) JSON but is not valid JSON (NaN and Infinity "
        "are not JSON); send valid JSON or a text/plain body",
    )
    too_deep = InvalidArgument(
        "PAYLOAD_TOO_DEEP", f"the JSON body nests deeper than {MAX_PAYLOAD_DEPTH} levels"
    )
    try:
        value = json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError):
        raise invalid from None
    if _depth(value) > MAX_PAYLOAD_DEPTH:
        raise too_deep
    return value


def decode_payload(body: bytes, content_type: str) -> Any:
    """The run's input value: JSON for JSON bodies, a dict for forms, otherwise the text."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in ("", "application/json") or media.endswith("+json"):
        if not body.strip() and media == "":
            return None
        return _strict_json(body)
    text = body.decode("utf-8", errors="replace")
    if media == "application/x-www-form-urlencoded":
        # curl -d sends this type by default; a body that is plainly JSON is taken as JSON.
        if text.lstrip()[:1] in ("{", "["):
            with contextlib.suppress(InvalidArgument):
                return _strict_json(body)
        return {
            key: values if len(values) > 1 else values[0]
            for key, values in parse_qs(text, keep_blank_values=True).items()
        }
    return text
