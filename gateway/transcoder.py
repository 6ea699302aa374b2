"""google.api.http annotations -> routes, and HTTP requests and RPC responses mapped both ways."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.api import annotations_pb2 as http_annotations
from google.api import http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from multidict import MultiMapping

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.context import HTTP_CODE, HTTP_HEADER_PREFIX
from aias.core.errors import clip
from aias.core.jsonmap import (
    JsonMappingError,
    append_scalar,
    descriptor_of,
    field_by_json_name,
    field_to_json,
    json_to_message,
    message_to_json,
    scalar_from_text,
    set_scalar,
)
from gateway.backends import BackendSpec
from gateway.errors import GatewayError, json_response
from gateway.template import PathTemplate

HTTP_BODY = "google.api.HttpBody"
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Request fields (string, or int64 for a size) filled from headers when the request message has
# them and nothing else binds them; the first header present wins (Standard Webhooks'
# webhook-id stands in for the key). Admission requests get them too, so a check that needs
# only headers is made before the body is read.
HEADER_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("stripe_signature", ("Stripe-Signature",)),
    ("idempotency_key", ("Idempotency-Key", "Webhook-Id")),
    ("webhook_id", ("Webhook-Id",)),
    ("webhook_timestamp", ("Webhook-Timestamp",)),
    ("webhook_signature", ("Webhook-Signature",)),
    ("content_length", ("Content-Length",)),
)
# No body the gateway reads has a longer size (it reads less than 8 MiB).
_MAX_LENGTH_DIGITS = 18
# Headers the backends keep in 255-character columns; longer ones are refused here, where the
# client learns which header it was.
_STORED_HEADERS = frozenset({"Content-Type", "Idempotency-Key", "Webhook-Id"})
MAX_STORED_HEADER_CHARS = 255
# What gRPC metadata and the request fields built from headers can carry. aiohttp hands on
# undecodable header bytes as lone surrogates, which this also refuses.
PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# How deep a JSON body may nest: far beyond any workflow definition, far below a stack limit.
MAX_JSON_DEPTH = 32
# No integer field holds more digits (uint64 has 20). Longer literals are read as doubles, as
# Struct numbers are anyway, so Python's int-string conversion limit is never reached.
_MAX_INTEGER_DIGITS = 20
# Response metadata that would corrupt the HTTP framing if copied as a header.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})
# Messages a query parameter can set: well-known types whose JSON form is one string.
_TEXT_MESSAGES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)
# Header words whose usual spelling is not Title-Case.
_HEADER_WORDS = {"etag": "ETag", "id": "ID", "md5": "MD5", "www": "WWW"}


class TranscodeError(ValueError):
    """An annotation the gateway cannot serve; raised at start-up, naming the method."""


@dataclass(frozen=True)
class Admission:
    """The RPC asked, with the route's path parameters, before a request body is read."""

    rpc: str
    request_class: type[Message]
    response_class: type[Message]


ADMISSION_LIMIT_FIELD = "max_body_bytes"


@dataclass(frozen=True)
class RpcRoute:
    """One HTTP binding of one RPC: where it is, how the request and response map."""

    backend: str
    rpc: str
    http_method: str
    template: str
    body: str
    response_body: str
    access: int
    request_class: type[Message]
    response_class: type[Message]
    server_streaming: bool
    admission: Admission | None = None
    # What a success answers with unless the RPC says otherwise (`x-http-code`).
    success_status: int = 200

    @property
    def raw_request(self) -> bool:
        """The body is a google.api.HttpBody field: raw bytes, any content type."""
        if self.body in ("", "*"):
            return False
        field = descriptor_of(self.request_class).fields_by_name[self.body]
        return field.message_type is not None and field.message_type.full_name == HTTP_BODY

    @property
    def raw_response(self) -> bool:
        """The response is (or `response_body` names) a google.api.HttpBody: raw bytes."""
        descriptor = descriptor_of(self.response_class)
        if self.response_body:
            field = descriptor.fields_by_name[self.response_body]
            return field.message_type is not None and field.message_type.full_name == HTTP_BODY
        return descriptor.full_name == HTTP_BODY


def build_routes(backends: Iterable[BackendSpec]) -> list[RpcRoute]:
    """Every google.api.http binding (additional bindings included) of every backend's services."""
    routes = []
    for spec in backends:
        for service in spec.file.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(http_annotations.http):
                    continue
                rule = options.Extensions[http_annotations.http]
                access = options.Extensions[access_pb2.access]
                for binding in _bindings(rule):
                    routes.append(_route(spec.name, method, binding, access))
    return routes


def _bindings(rule: http_pb2.HttpRule) -> Iterator[http_pb2.HttpRule]:
    yield rule
    for extra in rule.additional_bindings:
        yield from _bindings(extra)


def _route(
    backend: str, method: MethodDescriptor, rule: http_pb2.HttpRule, access: int
) -> RpcRoute:
    where = method.full_name
    kind = rule.WhichOneof("pattern")
    if kind is None:
        raise TranscodeError(f"{where}: the http rule has no method and path")
    if kind == "custom":
        http_method, template = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, template = kind.upper(), getattr(rule, kind)
    if method.client_streaming:
        raise TranscodeError(f"{where}: client-streaming RPCs cannot be served over HTTP")
    route = RpcRoute(
        backend=backend,
        rpc=f"/{method.containing_service.full_name}/{method.name}",
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        access=access,
        request_class=GetMessageClass(method.input_type),
        response_class=GetMessageClass(method.output_type),
        server_streaming=method.server_streaming,
        admission=_admission(method),
        success_status=method.GetOptions().Extensions[access_pb2.success_status] or 200,
    )
    _check(route, where)
    return route


def _admission(method: MethodDescriptor) -> Admission | None:
    """The method's `aias.api.v1.admission` RPC, checked to take the path and give a limit."""
    name = method.GetOptions().Extensions[access_pb2.admission]
    if not name:
        return None
    where = method.full_name
    found = method.containing_service.methods_by_name.get(name)
    if found is None or found.client_streaming or found.server_streaming:
        raise TranscodeError(f"{where}: admission {name!r} is not a unary RPC of the service")
    limit = found.output_type.fields_by_name.get(ADMISSION_LIMIT_FIELD)
    if limit is None or limit.type not in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
        raise TranscodeError(f"{where}: admission {name!r} must answer {ADMISSION_LIMIT_FIELD}")
    return Admission(
        rpc=f"/{method.containing_service.full_name}/{name}",
        request_class=GetMessageClass(found.input_type),
        response_class=GetMessageClass(found.output_type),
    )


def _check(route: RpcRoute, where: str) -> None:
    """Fails at start-up on a binding that could only fail on every request."""
    request = descriptor_of(route.request_class)
    for field_path in PathTemplate.parse(route.template).fields:
        leaf = _resolve(request, field_path.split("."))
        if leaf is None or leaf.is_repeated or leaf.type == FieldDescriptor.TYPE_MESSAGE:
            raise TranscodeError(f"{where}: path field {field_path!r} is not a singular scalar")
    if route.body not in ("", "*") and route.body not in request.fields_by_name:
        raise TranscodeError(f"{where}: body field {route.body!r} does not exist")
    if route.response_body and route.response_body not in (
        descriptor_of(route.response_class).fields_by_name
    ):
        raise TranscodeError(f"{where}: response_body {route.response_body!r} does not exist")
    if route.admission is not None:
        admission_request = descriptor_of(route.admission.request_class)
        for field_path in PathTemplate.parse(route.template).fields:
            if _resolve(admission_request, field_path.split(".")) is None:
                raise TranscodeError(
                    f"{where}: admission request lacks the path field {field_path!r}"
                )


def _resolve(descriptor: Descriptor, names: list[str]) -> FieldDescriptor | None:
    field = descriptor.fields_by_name.get(names[0])
    if field is None or len(names) == 1:
        return field
    if field.message_type is None or field.is_repeated:
        return None
    return _resolve(field.message_type, names[1:])


def _invalid(reason: str, message: str, field: str = "") -> GatewayError:
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, reason, message, field=field)


def build_request(
    route: RpcRoute,
    path_params: Mapping[str, str],
    query: MultiMapping[str],
    headers: Mapping[str, str],
    body: bytes,
) -> Message:
    """The RPC request: body first, then path parameters, query parameters and header fields."""
    if route.body and not route.raw_request and body.strip():
        _check_json_media_type(header_text(headers, "Content-Type"))
    message = route.request_class()
    try:
        if route.raw_request:
            raw = getattr(message, route.body)
            raw.data = body
            raw.content_type = header_text(headers, "Content-Type")
        elif route.body == "*":
            json_to_message(_decode_json(body, {}), message)
        elif route.body and body.strip():
            json_to_message({route.body: _decode_json(body, None)}, message)
        for field_path, value in path_params.items():
            _set_path(message, field_path, value)
        bound = {*path_params, *([route.body] if route.body else [])}
        _apply_query(route, message, query, bound)
    except JsonMappingError as error:
        raise _invalid(error.reason, str(error), error.field) from None
    _apply_headers(message, headers, bound)
    return message


class _NumberError(ValueError):
    """A number JSON can write but a double cannot hold, or NaN and Infinity, which JSON lacks."""


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NumberError(f"the number {clip(text)} is beyond the range of a double")
    return value


def _integer(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= _MAX_INTEGER_DIGITS else _finite(text)


def _constant(name: str) -> Any:
    raise _NumberError(f"{name} is not a JSON number")


def _check_json_media_type(content_type: str) -> None:
    """A JSON body must be declared JSON: any other type is 415 (none at all is taken as JSON)."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media and media != "application/json" and not media.endswith("+json"):
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "UNSUPPORTED_MEDIA_TYPE",
            f"this route takes application/json, not {clip(media)}; send the header "
            "'Content-Type: application/json' (curl: --json)",
            http_status=415,
        )


def _decode_json(body: bytes, empty: Any) -> Any:
    if not body.strip():
        return empty
    too_deep = _invalid("INVALID_JSON", f"the body nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(body, parse_float=_finite, parse_int=_integer, parse_constant=_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, _NumberError) as error:
        raise _invalid("INVALID_JSON", f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise too_deep from None
    # Counted without recursion, so the depth that decoding allowed cannot overflow it.
    pending = [(value, 1)] if isinstance(value, dict | list) else []
    while pending:
        container, depth = pending.pop()
        if depth > MAX_JSON_DEPTH:
            raise too_deep
        items = container.values() if isinstance(container, dict) else container
        pending.extend((item, depth + 1) for item in items if isinstance(item, dict | list))
    return value


def build_admission(
    admission: Admission, path_params: Mapping[str, str], headers: Mapping[str, str]
) -> Message:
    """The admission request: the route's path parameters and header fields, no body."""
    message = admission.request_class()
    try:
        for field_path, value in path_params.items():
            _set_path(message, field_path, value)
    except JsonMappingError as error:
        raise _invalid(error.reason, str(error), error.field) from None
    _apply_headers(message, headers, set(path_params))
    return message


def _set_path(message: Message, field_path: str, text: str) -> None:
    """Sets `a.b.c` from text, creating the messages on the way."""
    *parents, leaf = field_path.split(".")
    target = message
    for name in parents:
        target = getattr(target, name)
    field = descriptor_of(target).fields_by_name[leaf]
    set_scalar(target, field, scalar_from_text(field, text, field_path), field_path)


def _apply_query(
    route: RpcRoute, message: Message, query: MultiMapping[str], bound: set[str]
) -> None:
    if route.body == "*" and query:
        name = clip(next(iter(query)))
        raise _invalid("UNKNOWN_QUERY_PARAMETER", f"{name}: this route takes no query parameters")
    seen: set[str] = set()
    for name, text in query.items():
        target, proto_path = message, []
        parts = name.split(".")
        for depth, part in enumerate(parts):
            field = field_by_json_name(descriptor_of(target), part)
            if field is None:
                raise _invalid("UNKNOWN_QUERY_PARAMETER", f"{clip(name)}: unknown query parameter")
            proto_path.append(field.name)
            if ".".join(proto_path) in bound:
                raise _invalid(
                    "UNKNOWN_QUERY_PARAMETER", f"{name}: set by the path or body, not the query"
                )
            if depth == len(parts) - 1:
                _set_query_leaf(target, field, text, name, seen)
            elif field.type != FieldDescriptor.TYPE_MESSAGE or field.is_repeated:
                raise _invalid("UNKNOWN_QUERY_PARAMETER", f"{clip(name)}: {part} has no fields")
            else:
                target = getattr(target, field.name)


def _set_query_leaf(
    target: Message, field: FieldDescriptor, text: str, name: str, seen: set[str]
) -> None:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        kind = field.message_type.full_name if field.message_type else ""
        if kind not in _TEXT_MESSAGES or field.is_repeated:
            raise _invalid("INVALID_FIELD_VALUE", f"{name}: a message cannot be a query parameter")
        if name in seen:
            raise _invalid("INVALID_FIELD_VALUE", f"{name}: given more than once")
        seen.add(name)
        # E.g. a Timestamp from its RFC 3339 text, as its JSON form is.
        child = getattr(target, field.name)
        child.SetInParent()
        json_to_message(text, child, name)
        return
    value = scalar_from_text(field, text, name)
    if field.is_repeated:
        append_scalar(getattr(target, field.name), value, name)
        return
    if name in seen:
        raise _invalid("INVALID_FIELD_VALUE", f"{name}: given more than once")
    seen.add(name)
    set_scalar(target, field, value, name)


def _apply_headers(message: Message, headers: Mapping[str, str], bound: set[str]) -> None:
    fields = descriptor_of(message).fields_by_name
    for name, header_names in HEADER_FIELDS:
        field = fields.get(name)
        if field is None or name in bound or field.is_repeated or getattr(message, name):
            continue
        value = next((header_text(headers, h) for h in header_names if headers.get(h)), "")
        if field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, name, value)
        elif field.type == FieldDescriptor.TYPE_INT64 and (
            value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS
        ):
            setattr(message, name, int(value))


def header_text(headers: Mapping[str, str], name: str) -> str:
    """A header the gateway copies into a request message, or 400 INVALID_HEADER."""
    value = headers.get(name, "")
    if not PRINTABLE_ASCII.fullmatch(value):
        raise _invalid("INVALID_HEADER", f"{name}: only printable ASCII is allowed")
    if name in _STORED_HEADERS and len(value) > MAX_STORED_HEADER_CHARS:
        raise _invalid(
            "INVALID_HEADER", f"{name}: longer than {MAX_STORED_HEADER_CHARS} characters"
        )
    return value


def header_name(key: str) -> str:
    """`content-length` -> `Content-Length`, `etag` -> `ETag`."""
    return "-".join(_HEADER_WORDS.get(word, word.capitalize()) for word in key.split("-"))


def response_head(
    metadata: Any, *, keep_length: bool, status: int = 200
) -> tuple[int, dict[str, str]]:
    """The HTTP status (from `x-http-code`) and headers (from `x-http-header-*`) in metadata.

    Content-Length is kept only for streamed bodies; aiohttp measures any other body itself.
    """
    headers: dict[str, str] = {}
    for key, value in metadata or ():
        if not isinstance(value, str):
            continue
        if key == HTTP_CODE and value.isdigit() and 200 <= int(value) <= 599:
            status = int(value)
        elif key.startswith(HTTP_HEADER_PREFIX):
            name = key[len(HTTP_HEADER_PREFIX) :]
            if name in _HOP_BY_HOP or (name == "content-length" and not keep_length):
                continue
            headers[header_name(name)] = value
    return status, headers


def render_unary(route: RpcRoute, response: Message, metadata: Any) -> web.Response:
    """JSON, or raw bytes when the response is a google.api.HttpBody."""
    status, headers = response_head(metadata, keep_length=False, status=route.success_status)
    if route.raw_response:
        raw: Any = getattr(response, route.response_body) if route.response_body else response
        headers["Content-Type"] = raw.content_type or DEFAULT_CONTENT_TYPE
        return web.Response(body=raw.data, status=status, headers=headers)
    return json_response(render_json(route, response), status, headers)


def render_json(route: RpcRoute, response: Message) -> Any:
    """A response message (or its `response_body` field) as the public API's JSON."""
    if route.response_body:
        field = descriptor_of(response).fields_by_name[route.response_body]
        return field_to_json(response, field)
    return message_to_json(response)
