"""The OpenAPI 3.1 document of the public API, generated from the same routes the gateway serves."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.jsonmap import descriptor_of, enum_to_json
from aias.gateway.binding import MAX_STORED_HEADER_CHARS, STORED_HEADERS, Parameter, parameters
from aias.gateway.template import PathTemplate
from aias.gateway.transcoder import HTTP_BODY, RpcRoute

ERROR_SCHEMA = "Error"
_TEMPLATE_FIELD = re.compile(r"\{([^}=]+)(=[^}]*)?\}")
_SCALARS: Mapping[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SINT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_FIXED32: {"type": "integer", "format": "int32", "minimum": 0},
    # The gateway prints 64-bit integers as JSON numbers (and accepts strings too).
    FieldDescriptor.TYPE_INT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SINT64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "integer", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "integer", "format": "int64", "minimum": 0},
    FieldDescriptor.TYPE_FIXED64: {"type": "integer", "format": "int64", "minimum": 0},
}
# Well-known types have the JSON forms the protobuf JSON specification gives them.
_WELL_KNOWN: Mapping[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": r"^-?\d+(\.\d+)?s$"},
    "google.protobuf.FieldMask": {"type": "string"},
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Empty": {"type": "object"},
    "google.protobuf.Any": {"type": "object"},
    "google.protobuf.StringValue": {"type": "string"},
    "google.protobuf.BoolValue": {"type": "boolean"},
    "google.protobuf.Int32Value": {"type": "integer", "format": "int32"},
    "google.protobuf.Int64Value": {"type": "integer", "format": "int64"},
    "google.protobuf.DoubleValue": {"type": "number"},
}
_SECURITY: Mapping[int, list[dict[str, list[str]]]] = {
    access_pb2.ACCESS_PUBLIC: [],
    access_pb2.ACCESS_OPERATOR: [{"operatorToken": []}],
}


def proto_comments() -> dict[str, str]:
    """Leading comments of every message, field, enum, value, service and method, by full name."""
    image = resources.files("aias.api.v1").joinpath("descriptors.binpb").read_bytes()
    files = descriptor_pb2.FileDescriptorSet.FromString(image)
    found: dict[str, str] = {}
    for file in files.file:
        if not file.package.startswith("aias."):
            continue
        names = _element_names(file)
        for location in file.source_code_info.location:
            name = names.get(tuple(location.path))
            if name is not None and location.leading_comments.strip():
                found[name] = " ".join(location.leading_comments.split())
    return found


def _element_names(file: descriptor_pb2.FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Source-info paths (per descriptor.proto's field numbers) to full element names."""
    names: dict[tuple[int, ...], str] = {}

    def message(proto: descriptor_pb2.DescriptorProto, path: tuple[int, ...], scope: str) -> None:
        full = f"{scope}.{proto.name}"
        names[path] = full
        for index, field in enumerate(proto.field):
            names[(*path, 2, index)] = f"{full}.{field.name}"
        for index, nested in enumerate(proto.nested_type):
            message(nested, (*path, 3, index), full)
        for index, nested_enum in enumerate(proto.enum_type):
            enum(nested_enum, (*path, 4, index), full)

    def enum(proto: descriptor_pb2.EnumDescriptorProto, path: tuple[int, ...], scope: str) -> None:
        full = f"{scope}.{proto.name}"
        names[path] = full
        for index, value in enumerate(proto.value):
            names[(*path, 2, index)] = f"{full}.{value.name}"

    for index, proto in enumerate(file.message_type):
        message(proto, (4, index), file.package)
    for index, proto_enum in enumerate(file.enum_type):
        enum(proto_enum, (5, index), file.package)
    for index, service in enumerate(file.service):
        names[(6, index)] = f"{file.package}.{service.name}"
        for method_index, method in enumerate(service.method):
            names[(6, index, 2, method_index)] = f"{file.package}.{service.name}.{method.name}"
    return names


class _Schemas:
    """JSON Schemas of messages as the gateway maps them, collected as named components."""

    def __init__(self, comments: Mapping[str, str]) -> None:
        self._comments = comments
        self.components: dict[str, Any] = {}

    def message_ref(self, message: Descriptor) -> dict[str, Any]:
        if message.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[message.full_name])
        if message.full_name not in self.components:
            self.components[message.full_name] = {}  # a placeholder stops recursion
            self.components[message.full_name] = self._message(message)
        return {"$ref": f"#/components/schemas/{message.full_name}"}

    def _message(self, message: Descriptor, skip: Iterable[str] = ()) -> dict[str, Any]:
        skipped = set(skip)
        schema: dict[str, Any] = {
            "type": "object",
            "properties": {
                field.name: self.field(field)
                for field in message.fields
                if field.name not in skipped
            },
            # The gateway refuses unknown fields with 400 UNKNOWN_FIELD.
            "additionalProperties": False,
        }
        if description := self._comments.get(message.full_name):
            schema["description"] = description
        return schema

    def message_without(self, message: Descriptor, skip: Iterable[str]) -> dict[str, Any]:
        """A request body schema: the message less the fields the path binds."""
        return self._message(message, skip)

    def field(self, field: FieldDescriptor) -> dict[str, Any]:
        entry = field.message_type
        if entry is not None and field.is_repeated and entry.GetOptions().map_entry:
            schema: dict[str, Any] = {
                "type": "object",
                "additionalProperties": self._single(entry.fields_by_name["value"]),
            }
        elif field.is_repeated:
            schema = {"type": "array", "items": self._single(field)}
        else:
            schema = self._single(field)
            if field.has_presence:
                # Unset message fields and unset optional scalars print as null.
                schema = {"anyOf": [schema, {"type": "null"}]}
        if description := self._comments.get(field.full_name):
            schema = {**schema, "description": description}
        return schema

    def _single(self, field: FieldDescriptor) -> dict[str, Any]:
        if field.message_type is not None:
            return self.message_ref(field.message_type)
        if field.enum_type is not None:
            return self._enum(field.enum_type)
        return dict(_SCALARS[field.type])

    def _enum(self, enum: EnumDescriptor) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "type": "string",
            "enum": [enum_to_json(enum, value.number) for value in enum.values],
        }
        if description := self._comments.get(enum.full_name):
            schema["description"] = description
        return schema


def _path(template: str) -> str:
    """`/api/files/{name=**}` as OpenAPI writes it: `/api/files/{name}`."""
    return _TEMPLATE_FIELD.sub(lambda match: "{" + match.group(1) + "}", template)


def _operation(route: RpcRoute, schemas: _Schemas, comments: Mapping[str, str]) -> dict[str, Any]:
    service, _, method = route.rpc.lstrip("/").rpartition("/")
    request = descriptor_of(route.request_class)
    path_fields = PathTemplate.parse(route.template).fields
    operation: dict[str, Any] = {
        "operationId": f"{service.rsplit('.', 1)[1]}_{method}",
        "tags": [route.backend],
        "summary": method,
        "parameters": [
            {
                "name": parameter.name,
                "in": parameter.location,
                "required": parameter.required,
                "schema": _parameter_schema(parameter, schemas),
                **_described(comments, parameter.field.full_name),
            }
            for parameter in parameters(route)
        ],
        "responses": {
            str(route.success_status): _success(route, schemas),
            "default": {
                "description": "An error, in the one error shape.",
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}
                },
            },
        },
    }
    if description := comments.get(f"{service}.{method}"):
        operation["description"] = description
    if (security := _SECURITY.get(route.access)) is not None:
        operation["security"] = security
    if body := _request_body(route, request, path_fields, schemas):
        operation["requestBody"] = body
    return operation


def _parameter_schema(parameter: Parameter, schemas: _Schemas) -> dict[str, Any]:
    """Path and header values are text; headers kept in a column have its length limit."""
    if parameter.location == "query":
        return schemas.field(parameter.field)
    if parameter.location == "header" and parameter.field.type == FieldDescriptor.TYPE_INT64:
        return {"type": "string", "pattern": r"^\d{1,18}$"}
    if parameter.location == "header" and parameter.name in STORED_HEADERS:
        return {"type": "string", "maxLength": MAX_STORED_HEADER_CHARS}
    return {"type": "string"}


def _described(comments: Mapping[str, str], name: str) -> dict[str, str]:
    return {"description": comments[name]} if name in comments else {}


def _request_body(
    route: RpcRoute, request: Descriptor, path_fields: Iterable[str], schemas: _Schemas
) -> dict[str, Any] | None:
    if not route.body:
        return None
    if route.body == "*":
        schema = schemas.message_without(request, path_fields)
        return {"required": False, "content": {"application/json": {"schema": schema}}}
    field = request.fields_by_name[route.body]
    if field.message_type is not None and field.message_type.full_name == HTTP_BODY:
        raw = {"type": "string", "format": "binary"}
        return {"required": False, "content": {"*/*": {"schema": raw}}}
    return {"required": False, "content": {"application/json": {"schema": schemas.field(field)}}}


def _success(route: RpcRoute, schemas: _Schemas) -> dict[str, Any]:
    if route.raw_response:
        raw = {"type": "string", "format": "binary"}
        return {"description": "The bytes.", "content": {"*/*": {"schema": raw}}}
    response = descriptor_of(route.response_class)
    if route.response_body:
        schema = schemas.field(response.fields_by_name[route.response_body])
    else:
        schema = schemas.message_ref(response)
    if route.server_streaming:
        # One JSON message per line, or per `data:` event with Accept: text/event-stream; an
        # error in mid-stream is a last item in the error shape.
        return {
            "description": "A stream of messages, until the backend ends it.",
            "content": {
                "application/x-ndjson": {"schema": schema},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    return {"description": "Success.", "content": {"application/json": {"schema": schema}}}


def _error_schema() -> dict[str, Any]:
    detail = {"type": "object", "properties": {"@type": {"type": "string"}}}
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "status", "message", "reason", "request_id"],
                "properties": {
                    "code": {"type": "integer", "description": "The HTTP status."},
                    "status": {"type": "string", "description": "The gRPC status name."},
                    "message": {"type": "string", "description": "What went wrong, for people."},
                    "reason": {
                        "type": "string",
                        "description": "An UPPER_SNAKE code for programs.",
                    },
                    "request_id": {"type": "string"},
                    "details": {"type": "array", "items": detail},
                },
            }
        },
    }


_FIXED: Mapping[str, tuple[str, str]] = {
    "/healthz": ("Liveness of the gateway process.", "application/json"),
    "/readyz": ("Readiness: 200 when every backend is SERVING, else 503.", "application/json"),
    "/metrics": ("Prometheus metrics of the gateway.", "text/plain"),
    "/openapi.json": ("This document.", "application/json"),
    "/docs": ("This document as a page for people.", "text/html"),
}


def _head_of(get: Mapping[str, Any]) -> dict[str, Any]:
    """The HEAD twin the gateway answers for every GET: the same parameters, security and
    statuses, and no body."""
    head = {key: value for key, value in get.items() if key not in ("responses", "description")}
    head["operationId"] = f"{get['operationId']}_Head"
    head["summary"] = f"{get['summary']} (headers only)"
    head["description"] = "The headers the GET of this path would answer, without its body."
    head["responses"] = {
        status: {"description": response["description"]}
        for status, response in get["responses"].items()
    }
    return head


def build_document(routes: Iterable[RpcRoute], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `routes` and the gateway's own fixed routes."""
    comments = proto_comments()
    schemas = _Schemas(comments)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        operation = _operation(route, schemas, comments)
        existing = paths.setdefault(_path(route.template), {})
        method = route.http_method.lower()
        if method in existing:  # an additional binding of the same path and method
            operation["operationId"] += f"_{len(existing)}"
        existing[method] = operation
    for path, (summary, media) in _FIXED.items():
        paths[path] = {
            "get": {
                "operationId": "Gateway_" + re.sub(r"\W", "", path.title()),
                "tags": ["gateway"],
                "summary": summary,
                "security": [],
                "responses": {
                    "200": {"description": summary, "content": {media: {"schema": {}}}},
                    "default": {"description": "Not ready, or an error."},
                },
            }
        }
    for operations in paths.values():
        if "get" in operations:
            operations["head"] = _head_of(operations["get"])
    schemas.components[ERROR_SCHEMA] = _error_schema()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "AIAS",
            "version": version,
            "description": (
                "Multi-tenant workflow automation. JSON uses proto field names; enums are their "
                "lowercase names; `*_time` fields are RFC 3339 strings; unknown fields and query "
                "parameters are refused with 400."
            ),
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A tenant API key: `Authorization: Bearer aias_...`.",
                },
                "operatorToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The operator token (AIAS_ADMIN_TOKEN).",
                },
            },
        },
        "security": [{"apiKey": []}],
    }


def render_docs(document: Mapping[str, Any]) -> str:
    """The document as one self-contained HTML page: no script, no external resource."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    environment = Environment(
        loader=PackageLoader("aias.gateway", "templates"), autoescape=select_autoescape(["html"])
    )
    groups: dict[str, list[tuple[str, str, Any]]] = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            groups.setdefault(operation["tags"][0], []).append((path, method, operation))
    return environment.get_template("docs.html").render(doc=document, groups=sorted(groups.items()))
