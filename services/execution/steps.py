"""The deterministic step types and the integrations catalog; plain Python, no I/O."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jmespath
import jmespath.exceptions
import jsonschema
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from aias.core.errors import InvalidArgument
from aias.core.text import checked_file_name

ARTIFACT_FORMATS = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "text": "text/plain; charset=utf-8",
}
MAX_ARTIFACT_NAME = 255


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no spaces, UTF-8, no trailing newline: equal values give equal bytes."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StepFailed(Exception):
    """A step cannot succeed with this input; retrying the same input would fail again."""


@dataclass(frozen=True)
class ArtifactOutput:
    """Bytes an artifact step asks the worker to store."""

    name: str
    media_type: str
    content: bytes


@dataclass(frozen=True)
class StepContext:
    """What a step knows of its run besides the current value; templates see it as `run`
    (id, attempt, create_time) and `workflow` (id, version)."""

    run: Mapping[str, Any] = field(default_factory=dict)
    workflow: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """What one step produced: the next value, whether the run continues, and any artifact."""

    value: Any
    message: str
    stop: bool = False
    artifact: ArtifactOutput | None = None


def _text(config: dict[str, Any], key: str, where: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(
            "INVALID_STEP_CONFIG", f"{where}.config.{key} must be a non-empty string"
        )
    return value


def _jmespath(expression: str, where: str, key: str) -> None:
    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as error:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG",
            f"{where}.config.{key} is not a valid JMESPath expression: {error}",
        ) from None


def _sandbox() -> ImmutableSandboxedEnvironment:
    # StrictUndefined: a typo in a template fails the step instead of rendering empty text.
    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


def _search(expression: str, value: Any) -> Any:
    try:
        return jmespath.search(expression, value)
    except jmespath.exceptions.JMESPathError as error:
        raise StepFailed(f"JMESPath evaluation failed: {error}") from None


# -- validate ---------------------------------------------------------------------------------


def _validate_config(config: dict[str, Any], where: str) -> None:
    schema = config.get("schema")
    if not isinstance(schema, dict):
        raise InvalidArgument(
            "INVALID_STEP_CONFIG", f"{where}.config.schema must be a JSON Schema object"
        )
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG",
            f"{where}.config.schema is not a valid JSON Schema: {error.message}",
        ) from None


def _validate_run(config: dict[str, Any], value: Any, _context: StepContext) -> StepResult:
    validator = jsonschema.Draft202012Validator(config["schema"])
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise StepFailed(
            f"input does not match the schema at {path}: {first.message}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else "")
        )
    return StepResult(value, "input matches the schema")


# -- transform, filter ------------------------------------------------------------------------


def _transform_config(config: dict[str, Any], where: str) -> None:
    _jmespath(_text(config, "expression", where), where, "expression")


def _transform_run(config: dict[str, Any], value: Any, _context: StepContext) -> StepResult:
    return StepResult(_search(config["expression"], value), "transformed")


def _filter_config(config: dict[str, Any], where: str) -> None:
    _jmespath(_text(config, "condition", where), where, "condition")


def _filter_run(config: dict[str, Any], value: Any, _context: StepContext) -> StepResult:
    # JMESPath truthiness: false, null, "", [] and {} are false.
    if _search(config["condition"], value) in (False, None, "", [], {}):
        return StepResult(value, "condition is false; the run ends as skipped", stop=True)
    return StepResult(value, "condition is true")


# -- template ---------------------------------------------------------------------------------


def _template_config(config: dict[str, Any], where: str) -> None:
    try:
        _sandbox().parse(_text(config, "template", where))
    except TemplateError as error:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG", f"{where}.config.template is not a valid template: {error}"
        ) from None


def _template_run(config: dict[str, Any], value: Any, context: StepContext) -> StepResult:
    try:
        rendered = (
            _sandbox()
            .from_string(config["template"])
            .render(input=value, run=context.run, workflow=context.workflow)
        )
    except TemplateError as error:
        raise StepFailed(f"template rendering failed: {error}") from None
    return StepResult(rendered, f"rendered {len(rendered)} characters")


# -- artifact ---------------------------------------------------------------------------------


def _artifact_config(config: dict[str, Any], where: str) -> None:
    try:
        checked_file_name(_text(config, "name", where), f"{where}.config.name", MAX_ARTIFACT_NAME)
    except InvalidArgument as error:
        raise InvalidArgument("INVALID_STEP_CONFIG", error.message) from None
    fmt = config.get("format", "json")
    if fmt not in ARTIFACT_FORMATS:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG",
            f"{where}.config.format must be one of {sorted(ARTIFACT_FORMATS)}",
        )


def _csv_bytes(value: Any) -> bytes:
    """Objects get a header of the sorted union of their keys; lists are written as they are."""
    if not isinstance(value, list):
        raise StepFailed("a csv artifact needs a list of rows")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if all(isinstance(row, dict) for row in value):
        header = sorted({key for row in value for key in row})
        writer.writerow(header)
        for row in value:
            writer.writerow([_cell(row.get(key)) for key in header])
    elif all(isinstance(row, list) for row in value):
        for row in value:
            writer.writerow([_cell(cell) for cell in row])
    else:
        raise StepFailed("a csv artifact needs rows that are all objects or all lists")
    return buffer.getvalue().encode("utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return canonical_json(value).decode()


def _artifact_run(config: dict[str, Any], value: Any, _context: StepContext) -> StepResult:
    fmt = config.get("format", "json")
    if fmt == "json":
        content = canonical_json(value)
    elif fmt == "csv":
        content = _csv_bytes(value)
    else:
        content = (value if isinstance(value, str) else canonical_json(value).decode()).encode()
    output = ArtifactOutput(config["name"], ARTIFACT_FORMATS[fmt], content)
    return StepResult(value, f"wrote {config['name']} ({len(content)} bytes)", artifact=output)


@dataclass(frozen=True)
class StepSpec:
    """One entry of the integrations catalog."""

    type: str
    title: str
    description: str
    available: bool
    validate: Callable[[dict[str, Any], str], None] = field(repr=False)
    run: Callable[[dict[str, Any], Any, StepContext], StepResult] | None = field(
        default=None, repr=False
    )


def _not_yet(config: dict[str, Any], where: str) -> None:
    raise InvalidArgument("STEP_TYPE_COMING_SOON", f"{where} uses a step type that is coming soon")


STEP_TYPES: dict[str, StepSpec] = {
    spec.type: spec
    for spec in (
        StepSpec(
            "validate",
            "Validate",
            "Check the input against a JSON Schema.",
            True,
            _validate_config,
            _validate_run,
        ),
        StepSpec(
            "transform",
            "Transform",
            "Reshape the input with a JMESPath expression.",
            True,
            _transform_config,
            _transform_run,
        ),
        StepSpec(
            "filter",
            "Filter",
            "End the run as skipped unless a JMESPath condition holds.",
            True,
            _filter_config,
            _filter_run,
        ),
        StepSpec(
            "template",
            "Template",
            "Render text with a sandboxed Jinja2 template.",
            True,
            _template_config,
            _template_run,
        ),
        StepSpec(
            "artifact",
            "Artifact",
            "Store the current value as a JSON, CSV or text file.",
            True,
            _artifact_config,
            _artifact_run,
        ),
        StepSpec("slack", "Slack message", "Post a message to a Slack channel.", False, _not_yet),
        StepSpec("email", "Email", "Send an email.", False, _not_yet),
        StepSpec(
            "http_request", "HTTP request", "Call an external HTTP endpoint.", False, _not_yet
        ),
    )
}


def run_step(
    step_type: str, config: dict[str, Any], value: Any, context: StepContext | None = None
) -> StepResult:
    """Runs one validated step on `value`; raises StepFailed when the input does not fit."""
    spec = STEP_TYPES[step_type]
    if spec.run is None:
        raise StepFailed(f"step type {step_type!r} is not available")
    return spec.run(config, value, context or StepContext())
