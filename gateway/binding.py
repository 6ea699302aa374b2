"""How an HTTP request becomes an RPC request message, and what that lets a client send.

One set of rules, read top to bottom, serves both sides: the proxy builds request messages with
`build_request` (and `build_admission`), and the OpenAPI generator documents the same inputs with
`parameters`. In the order they apply:

1. the body: the whole message (`body: "*"`), one field, or raw bytes into a google.api.HttpBody;
   JSON bodies must be declared JSON (415 otherwise), nest at most MAX_JSON_DEPTH levels and hold
   only numbers a double can;
2. path parameters, the template's `{field.path}` variables;
3. query parameters: every field the path and body leave, by proto or lowerCamelCase JSON name,
   nested fields dotted (`page.size`); scalars and enums (repeated ones by repeating the
   parameter), and Timestamp, Duration and FieldMask by their JSON text. A route whose body is
   `*` takes none, and an unknown name is 400 UNKNOWN_QUERY_PARAMETER;
4. headers, into the fields HEADER_FIELDS names, when nothing above bound them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from multidict import MultiMapping

from aias.core.errors import clip
from aias.core.jsonmap import (
    JsonMappingError,
    append_scalar,
    descriptor_of,
    field_by_json_name,
    json_to_message,
    scalar_from_text,
    set_scalar,
)
from aias.gateway.errors import GatewayError
from aias.gateway.template import PathTemplate

if TYPE_CHECKING:
    from aias.gateway.transcoder import Admission, RpcRoute

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
_HEADER_NAMES = dict(HEADER_FIELDS)
# No body the gateway reads has a longer size (it reads less than 8 MiB).
_MAX_LENGTH_DIGITS = 18
# Headers the backends keep in 255-character columns; longer ones are refused here, where the
# client learns which header it was.
STORED_HEADERS = frozenset({"Content-Type", "Idempotency-Key", "Webhook-Id"})
MAX_STORED_HEADER_CHARS = 255
# What gRPC metadata and the request fields built from headers can carry. aiohttp hands on
# undecodable header bytes as lone surrogates, which this also refuses.
PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
# How deep a JSON body may nest: far beyond any workflow definition, far below a stack limit.
MAX_JSON_DEPTH = 32
# No integer field holds more digits (uint64 has 20). Longer literals are read as doubles, as
# Struct numbers are anyway, so Python's int-string conversion limit is never reached.
_MAX_INTEGER_DIGITS = 20
# Messages a query parameter can set: well-known types whose JSON form is one string.
_TEXT_MESSAGES = frozenset(
    {"google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask"}
)


@dataclass(frozen=True)
class Parameter:
    """One input a route takes outside its body: where it goes and the field it sets."""

    name: str
    location: Literal["path", "query", "header"]
    field: FieldDescriptor
    required: bool = False


def parameters(route: RpcRoute) -> list[Parameter]:
    """The path, query and header parameters `build_request` reads for this route."""
    request = descriptor_of(route.request_class)
    path_fields = PathTemplate.parse(route.template).fields
    found = []
    for field_path in path_fields:
        field = resolve_field(request, field_path.split("."))
        assert field is not None  # the route table checks its paths at start-up
        found.append(Parameter(field_path, "path", field, required=True))
    bound = _bound(route, path_fields)
    if route.body != "*":
        for name, field in _query_fields(request, "", bound, frozenset()):
            if "." in name or not _header_field(field):
                found.append(Parameter(name, "query", field))
    for name, header_names in HEADER_FIELDS:
        field = request.fields_by_name.get(name)
        if field is not None and _header_bindable(field) and name not in bound:
            found.append(Parameter(header_names[0], "header", field))
    return found


def _bound(route: RpcRoute, path_fields: Iterable[str]) -> set[str]:
    """Field paths the path and the body set, which no query parameter or header may."""
    return {*path_fields, *([route.body] if route.body else [])}


def _query_fields(
    message: Descriptor, prefix: str, bound: set[str], seen: frozenset[str]
) -> Iterator[tuple[str, FieldDescriptor]]:
    """Every field a query parameter can set, by its dotted proto path."""
    for field in message.fields:
        path = f"{prefix}{field.name}"
        if path in bound:
            continue
        kind = field.message_type
        if kind is None:
            yield path, field
        elif kind.full_name in _TEXT_MESSAGES:
            if not field.is_repeated:
                yield path, field
        elif _has_query_fields(field) and kind.full_name not in seen:
            # A message names its fields; one that contains itself is followed once.
            yield from _query_fields(kind, f"{path}.", bound, seen | {message.full_name})


def _has_query_fields(field: FieldDescriptor) -> bool:
    """A message field whose own fields are query parameters (`page.size`); not well-known types."""
    kind = field.message_type
    return (
        kind is not None
        and not field.is_repeated
        and not kind.full_name.startswith("google.protobuf.")
    )


def _header_bindable(field: FieldDescriptor) -> bool:
    return not field.is_repeated and field.type in (
        FieldDescriptor.TYPE_STRING,
        FieldDescriptor.TYPE_INT64,
    )


def _header_field(field: FieldDescriptor) -> bool:
    """A request field a header sets (at the top level), and so no query parameter does."""
    return field.name in _HEADER_NAMES and _header_bindable(field)


def resolve_field(descriptor: Descriptor, names: list[str]) -> FieldDescriptor | None:
    """The field at a dotted path (`a.b.c`), or None when the path leads nowhere."""
    field = descriptor.fields_by_name.get(names[0])
    if field is None or len(names) == 1:
        return field
    if field.message_type is None or field.is_repeated:
        return None
    return resolve_field(field.message_type, names[1:])


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
        bound = _bound(route, path_params)
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
            if depth == 0 and _header_field(field):
                raise _invalid(
                    "UNKNOWN_QUERY_PARAMETER",
                    f"{name}: sent as the {_HEADER_NAMES[field.name][0]} header, not in the query",
                )
            if depth == len(parts) - 1:
                _set_query_leaf(target, field, text, name, seen)
            elif not _has_query_fields(field):
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
        if field is None or name in bound or not _header_bindable(field) or getattr(message, name):
            continue
        value = next((header_text(headers, h) for h in header_names if headers.get(h)), "")
        if field.type == FieldDescriptor.TYPE_STRING:
            setattr(message, name, value)
        elif value.isdigit() and len(value) <= _MAX_LENGTH_DIGITS:
            setattr(message, name, int(value))


def header_text(headers: Mapping[str, str], name: str) -> str:
    """A header the gateway copies into a request message, or 400 INVALID_HEADER."""
    value = headers.get(name, "")
    if not PRINTABLE_ASCII.fullmatch(value):
        raise _invalid("INVALID_HEADER", f"{name}: only printable ASCII is allowed")
    if name in STORED_HEADERS and len(value) > MAX_STORED_HEADER_CHARS:
        raise _invalid(
            "INVALID_HEADER", f"{name}: longer than {MAX_STORED_HEADER_CHARS} characters"
        )
    return value
