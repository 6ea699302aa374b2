"""The step types and the integrations catalog; plain Python, no I/O (the worker sends HTTP)."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from yarl import URL

from aias.core.destinations import checked_url, shown_url
from aias.core.errors import InvalidArgument, clip
from aias.core.text import checked_file_name

if TYPE_CHECKING:
    from jinja2 import Template
    from jinja2.sandbox import ImmutableSandboxedEnvironment

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


@dataclass(frozen=True)
class HttpRequest:
    """A request an http_request step asks the worker to send: rendered, not yet checked
    against the destination policy (the worker's outbound client does that at every hop)."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    timeout: float
    expect_status: tuple[int, ...] = ()

    def accepts(self, status: int) -> bool:
        """Whether `status` makes the step succeed: one of `expect_status`, else any 2xx."""
        return status in self.expect_status if self.expect_status else 200 <= status < 300

    def describe(self) -> dict[str, Any]:
        """Everything but the body, as JSON (the body travels as raw bytes)."""
        return {
            "method": self.method,
            "url": self.url,
            "headers": self.headers,
            "timeout": self.timeout,
            "expect_status": self.expect_status,
        }

    @classmethod
    def from_description(cls, data: Mapping[str, Any], body: bytes) -> HttpRequest:
        return cls(
            str(data["method"]),
            str(data["url"]),
            tuple((str(name), str(value)) for name, value in data["headers"]),
            body,
            float(data["timeout"]),
            tuple(int(status) for status in data["expect_status"]),
        )


@dataclass(frozen=True)
class HttpResponse:
    """What the worker received for an http_request step, handed back to a step process to
    become the step's value (the body travels as the call's value)."""

    method: str
    url: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "url": self.url,
            "status": self.status,
            "reason": self.reason,
            "headers": self.headers,
        }

    @classmethod
    def from_description(cls, data: Mapping[str, Any]) -> HttpResponse:
        return cls(
            str(data["method"]),
            str(data["url"]),
            int(data["status"]),
            str(data["reason"]),
            tuple((str(name), str(value)) for name, value in data["headers"]),
        )


@dataclass
class StepResult:
    """What one step produced: the next value, whether the run continues, and any artifact or
    request for the worker."""

    value: Any
    message: str
    stop: bool = False
    artifact: ArtifactOutput | None = None
    request: HttpRequest | None = None


def _text(config: dict[str, Any], key: str, where: str) -> str:
    value = config.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(
            "INVALID_STEP_CONFIG", f"{where}.config.{key} must be a non-empty string"
        )
    return value


def load_libraries() -> None:
    """Imports what the step types use (Jinja's sandbox, JMESPath, jsonschema) now, not at the
    first step or check. The processes that check or run steps call it as they start; a worker,
    which only hands steps to its step processes, and the alert senders never load them."""
    _environment()
    import jmespath  # noqa: F401
    import jsonschema  # noqa: F401


def _jmespath(expression: str, where: str, key: str) -> None:
    import jmespath.exceptions

    try:
        jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as error:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG",
            f"{where}.config.{key} is not a valid JMESPath expression: {error}",
        ) from None


# One environment per process. StrictUndefined: a typo in a template fails the step instead of
# rendering empty text. A template's compiled form is kept, since a workflow's runs render the
# same few templates again and again and compiling costs more than rendering; only short
# templates are kept, and few, so the cache stays small beside a step's memory limit.
CACHED_TEMPLATES = 64
CACHED_TEMPLATE_CHARS = 16_384


@functools.cache
def _environment() -> ImmutableSandboxedEnvironment:
    from jinja2 import StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


@functools.lru_cache(maxsize=CACHED_TEMPLATES)
def _cached_template(template: str) -> Template:
    return _environment().from_string(template)


def _compiled(template: str) -> Template:
    if len(template) <= CACHED_TEMPLATE_CHARS:
        return _cached_template(template)
    return _environment().from_string(template)


def _search(expression: str, value: Any) -> Any:
    import jmespath.exceptions

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
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG",
            f"{where}.config.schema is not a valid JSON Schema: {error.message}",
        ) from None


def _validate_run(config: dict[str, Any], value: Any, _context: StepContext) -> StepResult:
    import jsonschema

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


def _parse_template(template: str, where: str, key: str) -> None:
    from jinja2 import TemplateError

    try:
        _environment().parse(template)
    except TemplateError as error:
        raise InvalidArgument(
            "INVALID_STEP_CONFIG", f"{where}.config.{key} is not a valid template: {error}"
        ) from None


def _render(template: str, value: Any, context: StepContext, what: str) -> str:
    """`template` rendered with the template context: `input`, `run` and `workflow`."""
    from jinja2 import TemplateError

    try:
        return _compiled(template).render(input=value, run=context.run, workflow=context.workflow)
    except TemplateError as error:
        raise StepFailed(f"{what} rendering failed: {error}") from None


def _template_config(config: dict[str, Any], where: str) -> None:
    _parse_template(_text(config, "template", where), where, "template")


def _template_run(config: dict[str, Any], value: Any, context: StepContext) -> StepResult:
    rendered = _render(config["template"], value, context, "template")
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


# -- http_request -----------------------------------------------------------------------------

HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
HTTP_FIELDS = ("method", "url", "headers", "body", "timeout_seconds", "expect_status")
DEFAULT_HTTP_TIMEOUT = 10.0
MAX_HTTP_TIMEOUT = 300.0
MAX_HEADERS = 50
MAX_HEADER_BYTES = 16 * 1024
MAX_EXPECT_STATUS = 20
# The connection and the framing belong to the HTTP client: a step that set them could smuggle
# a second request into the connection or tell the server it is another host.
_CLIENT_HEADERS = frozenset(
    {
        "connection",
        "content-length",
        "host",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Line breaks would split one header into two; tabs are allowed in values.
_HEADER_VALUE_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_EXCERPT_CHARS = 200
_BODY_SHAPE = 'must be {"json": "<JMESPath expression>"} or {"text": "<template>"}'


def _http_config(config: dict[str, Any], where: str) -> None:
    def bad(key: str, rule: str) -> InvalidArgument:
        return InvalidArgument("INVALID_STEP_CONFIG", f"{where}.config.{key} {rule}")

    for key in config:
        if key not in HTTP_FIELDS:
            raise bad(clip(key), f"is not a field of http_request ({', '.join(HTTP_FIELDS)})")
    if config.get("method", "GET") not in HTTP_METHODS:
        raise bad("method", f"must be one of {', '.join(HTTP_METHODS)}")
    url = _text(config, "url", where)
    _parse_template(url, where, "url")
    if "{" not in url:
        # Without template syntax the URL is known now, so a wrong one is refused now.
        try:
            checked_url(url.strip())
        except ValueError as error:
            raise bad("url", str(error)) from None
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or len(headers) > MAX_HEADERS:
        raise bad("headers", f"must be an object of at most {MAX_HEADERS} headers")
    seen: set[str] = set()
    for name, template in headers.items():
        if not _HEADER_NAME.match(name):
            raise bad("headers", f"has {clip(repr(name))}, which is not a header name")
        field_name = f"headers.{clip(name)}"
        if name.lower() in _CLIENT_HEADERS:
            raise bad(field_name, "is set by the HTTP client and cannot be configured")
        if name.lower() in seen:
            raise bad(field_name, "is given twice (header names ignore case)")
        seen.add(name.lower())
        if not isinstance(template, str):
            raise bad(field_name, "must be a string (a template)")
        _parse_template(template, where, field_name)
    body = config.get("body")
    if body is not None:
        if not isinstance(body, dict) or len(body) != 1 or not set(body) <= {"json", "text"}:
            raise bad("body", _BODY_SHAPE)
        key, text = next(iter(body.items()))
        if not isinstance(text, str) or not text.strip():
            raise bad(f"body.{key}", "must be a non-empty string")
        if key == "json":
            _jmespath(text, where, "body.json")
        else:
            _parse_template(text, where, "body.text")
    timeout = config.get("timeout_seconds", DEFAULT_HTTP_TIMEOUT)
    if (
        not isinstance(timeout, int | float)
        or isinstance(timeout, bool)
        or not 0 < timeout <= MAX_HTTP_TIMEOUT
    ):
        raise bad("timeout_seconds", f"must be a number above 0 and at most {MAX_HTTP_TIMEOUT:g}")
    expected = config.get("expect_status", [])
    if (
        not isinstance(expected, list)
        or len(expected) > MAX_EXPECT_STATUS
        or not all(type(status) is int and 100 <= status <= 599 for status in expected)
    ):
        raise bad(
            "expect_status",
            f"must be a list of at most {MAX_EXPECT_STATUS} status codes (100 to 599)",
        )


def _http_run(config: dict[str, Any], value: Any, context: StepContext) -> StepResult:
    """Renders the request; the worker sends it, and `read_response` makes the value."""
    method = config.get("method", "GET")
    rendered = _render(config["url"], value, context, "url").strip()
    try:
        url = checked_url(rendered)
    except ValueError as error:
        raise StepFailed(f"the rendered URL {error}") from None
    headers: list[tuple[str, str]] = []
    for name, template in config.get("headers", {}).items():
        text = _render(template, value, context, f"header {name}")
        if _HEADER_VALUE_UNSAFE.search(text):
            raise StepFailed(f"header {name} rendered to a line break or control character")
        headers.append((name, text))
    if sum(len(name) + len(text.encode()) for name, text in headers) > MAX_HEADER_BYTES:
        raise StepFailed(f"the rendered headers are over {MAX_HEADER_BYTES:,} bytes")
    shape = config.get("body") or {}
    body, media_type = b"", ""
    if "json" in shape:
        body, media_type = canonical_json(_search(shape["json"], value)), "application/json"
    elif "text" in shape:
        body = _render(shape["text"], value, context, "body").encode()
        media_type = "text/plain; charset=utf-8"
    if media_type and "content-type" not in {name.lower() for name, _ in headers}:
        headers.append(("Content-Type", media_type))
    request = HttpRequest(
        method,
        str(url),
        tuple(headers),
        body,
        float(config.get("timeout_seconds", DEFAULT_HTTP_TIMEOUT)),
        tuple(config.get("expect_status", ())),
    )
    return StepResult(None, f"{method} {shown_url(url)}", request=request)


def read_response(response: HttpResponse, body: Any) -> StepResult:
    """An http_request step's value: `status`, `headers` (lowercase names; repeated ones joined
    with ", ") and `body` (decoded like a run's input; null when empty)."""
    headers: dict[str, str] = {}
    for name, text in response.headers:
        key = name.lower()
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    value = {"status": response.status, "headers": headers, "body": body}
    shown = shown_url(URL(response.url))
    return StepResult(
        value, f"{response.method} {shown} answered {response.status} {response.reason}".rstrip()
    )


def status_failure(response: HttpResponse, body: bytes) -> str:
    """Why a response the step does not accept fails it, quoting the start of its body."""
    if 400 <= response.status < 500:
        code = "HTTP_CLIENT_ERROR"
    elif response.status >= 500:
        code = "HTTP_SERVER_ERROR"
    else:
        code = "HTTP_UNEXPECTED_STATUS"
    shown = shown_url(URL(response.url))
    text = f"{code}: {response.method} {shown} answered {response.status} {response.reason}"
    excerpt = " ".join(body[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace").split())
    return f"{text.rstrip()}: {clip(excerpt, _EXCERPT_CHARS)}" if excerpt else text.rstrip()


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
            "Render text with a sandboxed Jinja2 template. It sees `input` (the current value), "
            "`run` (`id`, `attempt`, `create_time`) and `workflow` (`id`, `version`).",
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
            "http_request",
            "HTTP request",
            "Call an HTTP endpoint: a method, a URL and header templates (seeing `input`, `run` "
            "and `workflow`, like the template step), a JSON or text body and a timeout; the "
            "response's `status`, `headers` and `body` become the value. Private, loopback and "
            "link-local addresses are refused. Its output is not deterministic: artifacts "
            "after it are not reproducible.",
            True,
            _http_config,
            _http_run,
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
