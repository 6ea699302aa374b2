"""google.api.http annotations -> routes, and RPC responses -> HTTP (requests: `binding`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.api import annotations_pb2 as http_annotations
from google.api import http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.context import HTTP_CODE, HTTP_HEADER_PREFIX
from aias.core.jsonmap import descriptor_of, field_to_json, message_to_json
from aias.core.wire import length_delimited_fields
from aias.gateway.backends import BackendSpec
from aias.gateway.binding import resolve_field
from aias.gateway.errors import json_response
from aias.gateway.template import PathTemplate

HTTP_BODY = "google.api.HttpBody"
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Response metadata that would corrupt the HTTP framing if copied as a header.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade"})
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
class Batch:
    """The RPC that serves several calls of a route's RPC at once (`aias.api.v1.batch`)."""

    rpc: str
    request_class: type[Message]
    response_class: type[Message]
    # The batch request's repeated element: the call's `request` and `metadata`.
    call_class: type[Message]


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
    batch: Batch | None = None
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
        batch=_batch(method),
        success_status=method.GetOptions().Extensions[access_pb2.success_status] or 200,
    )
    _check(route, where)
    return route


def _named_unary(method: MethodDescriptor, option: Any, label: str) -> MethodDescriptor | None:
    """The unary RPC of the same service that `option` of the method names; None if unset."""
    name = method.GetOptions().Extensions[option]
    if not name:
        return None
    found = method.containing_service.methods_by_name.get(name)
    if found is None or found.client_streaming or found.server_streaming:
        raise TranscodeError(
            f"{method.full_name}: {label} {name!r} is not a unary RPC of the service"
        )
    return found


def _admission(method: MethodDescriptor) -> Admission | None:
    """The method's `aias.api.v1.admission` RPC, checked to take the path and give a limit."""
    found = _named_unary(method, access_pb2.admission, "admission")
    if found is None:
        return None
    where, name = method.full_name, found.name
    limit = found.output_type.fields_by_name.get(ADMISSION_LIMIT_FIELD)
    if limit is None or limit.type not in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_INT32):
        raise TranscodeError(f"{where}: admission {name!r} must answer {ADMISSION_LIMIT_FIELD}")
    return Admission(
        rpc=f"/{method.containing_service.full_name}/{name}",
        request_class=GetMessageClass(found.input_type),
        response_class=GetMessageClass(found.output_type),
    )


def _batch(method: MethodDescriptor) -> Batch | None:
    """The method's `aias.api.v1.batch` RPC, checked to have the shape the option documents."""
    found = _named_unary(method, access_pb2.batch, "batch")
    if found is None:
        return None
    where, name = method.full_name, found.name
    call = _repeated_message(found.input_type)
    outcome = _repeated_message(found.output_type)
    metadata = call.fields_by_name.get("metadata") if call is not None else None
    if (
        call is None
        or outcome is None
        or _message_field(call, "request") != method.input_type.full_name
        or metadata is None
        or metadata.message_type is None
        or not metadata.message_type.GetOptions().map_entry
        or _message_field(outcome, "response") != method.output_type.full_name
        or _message_field(outcome, "error") != "google.rpc.Status"
    ):
        raise TranscodeError(
            f"{where}: batch {name!r} must take repeated (request, metadata) calls and answer "
            "repeated (response | error) outcomes"
        )
    return Batch(
        rpc=f"/{method.containing_service.full_name}/{name}",
        request_class=GetMessageClass(found.input_type),
        response_class=GetMessageClass(found.output_type),
        call_class=GetMessageClass(call),
    )


def _repeated_message(message: Descriptor) -> Descriptor | None:
    """The message type of field 1 when it is a repeated message."""
    field = message.fields_by_number.get(1)
    if field is None or not field.is_repeated or field.message_type is None:
        return None
    return field.message_type


def _message_field(message: Descriptor, name: str) -> str:
    """The full name of a singular message field's type, "" when there is no such field."""
    field = message.fields_by_name.get(name)
    if field is None or field.is_repeated or field.message_type is None:
        return ""
    return str(field.message_type.full_name)


def _check(route: RpcRoute, where: str) -> None:
    """Fails at start-up on a binding that could only fail on every request."""
    request = descriptor_of(route.request_class)
    for field_path in PathTemplate.parse(route.template).fields:
        leaf = resolve_field(request, field_path.split("."))
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
            if resolve_field(admission_request, field_path.split(".")) is None:
                raise TranscodeError(
                    f"{where}: admission request lacks the path field {field_path!r}"
                )


@dataclass(frozen=True)
class RawHttpBody:
    """A google.api.HttpBody read straight from its wire bytes: `data` is a view, not a copy."""

    content_type: str
    data: memoryview

    @classmethod
    def parse(cls, wire: bytes) -> RawHttpBody:
        """The content type (field 1) and data (field 2); other fields are skipped.

        Streamed downloads are most of the gateway's bytes: the generated parser would copy
        each chunk into the message and again on every read of `data`.
        """
        content_type, data = "", memoryview(b"")
        try:
            for number, value in length_delimited_fields(wire):
                if number == 1:
                    content_type = bytes(value).decode()
                elif number == 2:
                    data = value
        except ValueError as error:
            raise ValueError(f"malformed HttpBody: {error}") from None
        return cls(content_type, data)


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
