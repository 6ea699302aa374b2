"""Gateway routing and mapping without I/O: templates, routes, request and JSON mapping, errors."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import grpc
import pytest
from google.api import annotations_pb2 as http_annotations
from google.api import http_pb2, httpbody_pb2
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, timestamp_pb2
from google.protobuf.descriptor import FieldDescriptor, FileDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from multidict import CIMultiDict, MultiDict

from aias.api.v1 import annotations_pb2 as access_pb2
from aias.core.jsonmap import JsonMappingError, descriptor_of, json_to_message, message_to_json
from aias.execution.v1 import execution_service_pb2 as execution_pb
from aias.gateway.backends import BACKENDS, BackendSpec
from aias.gateway.binding import build_admission, build_request, parameters
from aias.gateway.errors import HTTP_STATUS, GatewayError, error_response, from_rpc_error
from aias.gateway.template import PathTemplate, Route, Router, TemplateError
from aias.gateway.transcoder import (
    RpcRoute,
    TranscodeError,
    build_routes,
    render_unary,
    response_head,
)
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "gwtest.v1"


def _field(
    name: str, number: int, kind: _F.Type.ValueType, type_name: str = "", repeated: bool = False
) -> _F:
    label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL
    field = _F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name
    return field


def _message(name: str, *fields: _F) -> descriptor_pb2.DescriptorProto:
    return descriptor_pb2.DescriptorProto(name=name, field=list(fields))


def _method(
    name: str,
    request: str,
    response: str,
    rule: http_pb2.HttpRule | None,
    *,
    access: access_pb2.Access.ValueType = access_pb2.ACCESS_UNSPECIFIED,
    client_streaming: bool = False,
    server_streaming: bool = False,
    batch: str = "",
) -> descriptor_pb2.MethodDescriptorProto:
    options = descriptor_pb2.MethodOptions()
    if rule is not None:
        options.Extensions[http_annotations.http].CopyFrom(rule)
    if access:
        options.Extensions[access_pb2.access] = access
    if batch:
        options.Extensions[access_pb2.batch] = batch
    return descriptor_pb2.MethodDescriptorProto(
        name=name,
        input_type=request if request.startswith(".google") else f".{_PACKAGE}.{request}",
        output_type=response if response.startswith(".google") else f".{_PACKAGE}.{response}",
        options=options,
        client_streaming=client_streaming,
        server_streaming=server_streaming,
    )


def _file(name: str, *methods: descriptor_pb2.MethodDescriptorProto) -> FileDescriptor:
    """A proto file in the default pool (where the http option resolves) with sample messages."""
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName(f"gwtest/{name}.proto")
    except KeyError:
        pass
    color = descriptor_pb2.EnumDescriptorProto(
        name="Color",
        value=[
            descriptor_pb2.EnumValueDescriptorProto(name=n, number=i)
            for i, n in enumerate(("COLOR_UNSPECIFIED", "COLOR_DEEP_RED", "COLOR_BLUE"))
        ],
    )
    string, message = _F.TYPE_STRING, _F.TYPE_MESSAGE
    enum_color = f".{_PACKAGE}.Color"
    proto = descriptor_pb2.FileDescriptorProto(
        name=f"gwtest/{name}.proto",
        package=_PACKAGE,
        syntax="proto3",
        dependency=[
            "google/api/annotations.proto",
            "google/api/httpbody.proto",
            "google/protobuf/timestamp.proto",
        ],
        enum_type=[color] if name == "sample" else [],
        message_type=[
            _message("Parent", _field("id", 1, string), _field("depth", 2, _F.TYPE_INT32)),
            _message(
                "GetItemRequest",
                _field("parent", 1, message, f".{_PACKAGE}.Parent"),
                _field("name", 2, string),
                _field("color", 3, _F.TYPE_ENUM, enum_color),
                _field("tags", 4, string, repeated=True),
                _field("limit", 5, _F.TYPE_INT64),
                _field("verbose", 6, _F.TYPE_BOOL),
                _field("since", 7, message, ".google.protobuf.Timestamp"),
                _field("sizes", 8, _F.TYPE_INT32, repeated=True),
            ),
            _message(
                "Item",
                _field("id", 1, string),
                _field("color", 2, _F.TYPE_ENUM, enum_color),
                _field("create_time", 3, message, ".google.protobuf.Timestamp"),
            ),
            _message("ItemRequest", _field("id", 1, string), _field("note", 2, string)),
            _message(
                "PatchRequest",
                _field("id", 1, string),
                _field("item", 2, message, f".{_PACKAGE}.Item"),
            ),
            _message("PatchResponse", _field("item", 1, message, f".{_PACKAGE}.Item")),
            _message(
                "UploadRequest",
                _field("name", 1, string),
                _field("http_body", 2, message, ".google.api.HttpBody"),
                _field("stripe_signature", 3, string),
                _field("idempotency_key", 4, string),
            ),
        ]
        if name == "sample"
        else [],
        service=[
            descriptor_pb2.ServiceDescriptorProto(name=f"{name.title()}Service", method=methods)
        ],
    )
    if name != "sample":
        proto.dependency.append("gwtest/sample.proto")
    pool.Add(proto)
    return pool.FindFileByName(proto.name)


def _rule(**fields: Any) -> http_pb2.HttpRule:
    return http_pb2.HttpRule(**fields)


def _sample() -> FileDescriptor:
    body = ".google.api.HttpBody"
    return _file(
        "sample",
        _method(
            "GetItem", "GetItemRequest", "Item", _rule(get="/v1/{parent.id}/items/{name=files/**}")
        ),
        _method("ListItems", "GetItemRequest", "Item", _rule(get="/v1/items")),
        _method("Rotate", "ItemRequest", "Item", _rule(post="/v1/items/{id}:rotate", body="*")),
        _method("DeleteItem", "ItemRequest", "Item", _rule(delete="/v1/items/{id}")),
        _method(
            "PatchItem",
            "PatchRequest",
            "PatchResponse",
            _rule(patch="/v1/items/{id}", body="item", response_body="item"),
        ),
        _method(
            "Upload",
            "UploadRequest",
            "Item",
            _rule(post="/v1/uploads/{name}", body="http_body"),
            access=access_pb2.ACCESS_PUBLIC,
        ),
        _method(
            "Download",
            "ItemRequest",
            body,
            _rule(
                get="/v1/items/{id}/content",
                additional_bindings=[
                    _rule(custom=http_pb2.CustomHttpPattern(kind="HEAD", path="/v1/content/{id}"))
                ],
            ),
            server_streaming=True,
        ),
        _method("Internal", "ItemRequest", "Item", None),
    )


@pytest.fixture(scope="module")
def sample_routes() -> dict[str, RpcRoute]:
    routes = build_routes([BackendSpec("sample", "AIAS_SAMPLE_ADDR", _sample())])
    return {f"{route.rpc.rsplit('/', 1)[1]} {route.http_method}": route for route in routes}


# --- routes from the real compiled descriptors -------------------------------------------


def test_every_annotated_method_of_every_backend_yields_a_route() -> None:
    annotated = {
        f"/{service.full_name}/{method.name}"
        for spec in BACKENDS
        for service in spec.file.services_by_name.values()
        for method in service.methods
        if method.GetOptions().HasExtension(http_annotations.http)
    }
    routes = build_routes(BACKENDS)

    assert {route.rpc for route in routes} == annotated
    assert "/aias.tenancy.v1.TenancyService/AuthenticateApiKey" not in annotated
    by_rpc = {route.rpc: route for route in routes}
    create_tenant = by_rpc["/aias.tenancy.v1.TenancyService/CreateTenant"]
    assert (create_tenant.http_method, create_tenant.template, create_tenant.body) == (
        "POST",
        "/api/tenants",
        "*",
    )
    assert create_tenant.access == access_pb2.ACCESS_OPERATOR
    trigger = by_rpc["/aias.execution.v1.ExecutionService/TriggerWebhook"]
    assert trigger.raw_request
    assert trigger.access == access_pb2.ACCESS_PUBLIC
    assert trigger.backend == "execution"
    download = by_rpc["/aias.artifacts.v1.ArtifactsService/DownloadArtifact"]
    assert download.server_streaming
    assert download.raw_response
    # A stream of JSON messages: served as NDJSON or Server-Sent Events.
    events = by_rpc["/aias.execution.v1.ExecutionService/WatchRun"]
    assert (events.http_method, events.template) == ("GET", "/api/runs/{run_id}/events")
    assert events.server_streaming
    assert not events.raw_response
    assert by_rpc["/aias.tenancy.v1.TenancyService/GetCurrentTenant"].access == 0


def test_sample_descriptors_yield_every_binding_and_skip_unannotated(
    sample_routes: dict[str, RpcRoute],
) -> None:
    assert sorted(sample_routes) == [
        "DeleteItem DELETE",
        "Download GET",
        "Download HEAD",
        "GetItem GET",
        "ListItems GET",
        "PatchItem PATCH",
        "Rotate POST",
        "Upload POST",
    ]
    assert sample_routes["Download HEAD"].template == "/v1/content/{id}"


@pytest.mark.parametrize(
    ("rpc", "problem"),
    [
        ("client", "client-streaming"),
        ("path", "'missing' is not a singular scalar"),
        ("body", "body field 'nope' does not exist"),
    ],
)
def test_bad_annotations_fail_at_start_up(rpc: str, problem: str) -> None:
    _sample()
    methods = {
        "client": _method(
            "M", "ItemRequest", "Item", _rule(post="/x", body="*"), client_streaming=True
        ),
        "path": _method("M", "ItemRequest", "Item", _rule(get="/x/{missing}")),
        "body": _method("M", "ItemRequest", "Item", _rule(post="/x", body="nope")),
    }
    bad = _file(f"bad{rpc}", methods[rpc])

    with pytest.raises(TranscodeError, match=problem):
        build_routes([BackendSpec("bad", "AIAS_BAD_ADDR", bad)])


@pytest.mark.parametrize(
    ("name", "batch_rpc", "problem"),
    [
        ("nobatch", None, "batch 'Many' is not a unary RPC of the service"),
        ("streamed", _method("Many", "ItemRequest", "Item", None, server_streaming=True), "unary"),
        ("shapeless", _method("Many", "ItemRequest", "Item", None), "repeated"),
    ],
)
def test_a_batch_rpc_of_the_wrong_kind_fails_at_start_up(
    name: str, batch_rpc: descriptor_pb2.MethodDescriptorProto | None, problem: str
) -> None:
    _sample()
    one = _method("One", "ItemRequest", "Item", _rule(post="/one", body="*"), batch="Many")
    bad = _file(f"bad{name}", one, *([batch_rpc] if batch_rpc else []))

    with pytest.raises(TranscodeError, match=problem):
        build_routes([BackendSpec("bad", "AIAS_BAD_ADDR", bad)])


def test_the_webhook_route_goes_in_batches_through_trigger_webhooks() -> None:
    by_rpc = {route.rpc: route for route in build_routes(BACKENDS)}
    trigger = by_rpc["/aias.execution.v1.ExecutionService/TriggerWebhook"]
    assert trigger.batch is not None
    assert trigger.batch.rpc == "/aias.execution.v1.ExecutionService/TriggerWebhooks"
    # Only routes that name a batch RPC have one.
    assert [route.rpc for route in by_rpc.values() if route.batch] == [trigger.rpc]


# --- path templates -------------------------------------------------------------------------


def test_template_binds_literal_and_variable_segments() -> None:
    template = PathTemplate.parse("/api/runs/{run_id}/logs")

    assert template.match("/api/runs/r-1/logs") == {"run_id": "r-1"}
    assert template.match("/api/runs/r-1") is None
    assert template.match("/api/runs/a/b/logs") is None


def test_template_double_star_captures_several_segments_and_dotted_fields() -> None:
    template = PathTemplate.parse("/v1/{parent.id}/items/{name=files/**}")

    assert template.fields == ("parent.id", "name")
    assert template.match("/v1/p%201/items/files/a/b.txt") == {
        "parent.id": "p 1",
        "name": "files/a/b.txt",
    }
    assert template.match("/v1/p/items/other/a") is None


def test_template_custom_verb_is_not_swallowed_by_the_variable() -> None:
    template = PathTemplate.parse("/api/webhook-endpoints/{id}:rotate")

    assert template.verb == "rotate"
    assert template.match("/api/webhook-endpoints/e1:rotate") == {"id": "e1"}
    assert template.match("/api/webhook-endpoints/e1") is None
    assert template.match("/api/webhook-endpoints/e1:cancel") is None


@pytest.mark.parametrize(
    "source",
    ["api/x", "/a/**/b", "/a/{b={c}}", "/a/{1x}", "/a/{b}:", "/a/{b}/{b}", "/a/b*c"],
)
def test_malformed_templates_are_refused(source: str) -> None:
    with pytest.raises(TemplateError):
        PathTemplate.parse(source)


def _router() -> Router[str]:
    router: Router[str] = Router()
    router.add("POST", "/api/webhook-endpoints/{id}:rotate", "rotate")
    router.add("DELETE", "/api/webhook-endpoints/{id}", "delete")
    router.add("GET", "/api/webhook-endpoints/{id}", "get")
    router.add("GET", "/api/tenants/{id}", "tenant")
    router.add("GET", "/api/tenants/me", "me")
    return router


def test_router_prefers_verb_routes_and_literal_routes() -> None:
    router = _router()

    route, params = router.resolve("POST", "/api/webhook-endpoints/e1:rotate")
    assert (route.target, params) == ("rotate", {"id": "e1"})
    route, params = router.resolve("DELETE", "/api/webhook-endpoints/e1")
    assert (route.target, params) == ("delete", {"id": "e1"})
    assert router.resolve("GET", "/api/tenants/me")[0].target == "me"
    assert router.resolve("GET", "/api/tenants/t1")[0].target == "tenant"


def test_router_answers_405_with_every_allowed_method() -> None:
    router = _router()

    with pytest.raises(GatewayError) as wrong_method:
        router.resolve("PUT", "/api/webhook-endpoints/e1")
    assert wrong_method.value.http_status == 405
    assert wrong_method.value.headers == {"Allow": "DELETE, GET, HEAD"}
    with pytest.raises(GatewayError) as wrong_verb_method:
        router.resolve("DELETE", "/api/webhook-endpoints/e1:rotate")
    assert wrong_verb_method.value.headers == {"Allow": "POST"}


def test_head_is_served_by_the_get_route() -> None:
    router = _router()

    route, params = router.resolve("HEAD", "/api/webhook-endpoints/e1")

    assert (route.target, params) == ("get", {"id": "e1"})
    assert router.resolve("HEAD", "/api/tenants/me")[0].target == "me"


def test_router_answers_404_for_an_unknown_path() -> None:
    with pytest.raises(GatewayError) as missing:
        _router().resolve("GET", "/api/nothing")

    assert missing.value.http_status == 404
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert missing.value.reason == "ROUTE_NOT_FOUND"


def test_router_refuses_a_duplicate_route() -> None:
    with pytest.raises(TemplateError, match="declared twice"):
        _router().add("GET", "/api/tenants/me", "again")


class _EveryRoute(Router[str]):
    """The router as it was before its index: every path is matched against every route."""

    def _candidates(self, raw_path: str) -> list[Route[str]]:
        return list(self.routes)


def test_the_index_finds_what_a_scan_of_every_route_finds() -> None:
    # Routes by leading literal segments, including templates whose first segments are
    # variables, wildcards or carry a verb, which only the shorter prefixes index.
    router: Router[str] = Router()
    for method, template in [
        ("GET", "/{name=shelves/*}"),
        ("GET", "/api/runs:stats"),
        ("GET", "/api/runs/{id}"),
        ("POST", "/api/runs/{id}:cancel"),
        ("GET", "/api/{kind}/x"),
        ("GET", "/api/a/**"),
        ("GET", "/healthz"),
    ]:
        router.add(method, template, f"{method} {template}")
    scan = _EveryRoute()
    for route in router.routes:
        scan.add(route.method, route.template.source, route.target)
    paths = ["/shelves/1", "/api/runs:stats", "/api/runs/r1", "/api/runs/r1:cancel", "/api/q/x"]
    paths += ["/api/a/b/c", "/healthz", "/api/runs", "/api//runs", "/nothing", "", "api/runs/r1"]
    for path in paths:
        for method in ("GET", "POST"):
            outcomes: list[object] = []
            for each in (router, scan):
                try:
                    route, params = each.resolve(method, path)
                    outcomes.append((route.target, params))
                except GatewayError as error:
                    outcomes.append((error.http_status, error.headers))
            assert outcomes[0] == outcomes[1], (method, path)


# --- request mapping ------------------------------------------------------------------------


def _build(
    route: RpcRoute,
    params: dict[str, str] | None = None,
    query: str = "",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> Any:
    pairs = parse_qsl(query, keep_blank_values=True)
    return build_request(route, params or {}, MultiDict(pairs), CIMultiDict(headers or {}), body)


def _invalid(route: RpcRoute, reason: str, **kwargs: Any) -> str:
    with pytest.raises(GatewayError) as failure:
        _build(route, **kwargs)
    assert failure.value.http_status == 400
    assert failure.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.reason == reason
    return failure.value.message


def test_body_star_fills_the_request_and_path_parameters_override_it(
    sample_routes: dict[str, RpcRoute],
) -> None:
    request = _build(
        sample_routes["Rotate POST"], {"id": "from-path"}, body=b'{"id": "x", "note": "hi"}'
    )

    assert (request.id, request.note) == ("from-path", "hi")


def test_body_star_accepts_an_empty_body_and_refuses_query_parameters(
    sample_routes: dict[str, RpcRoute],
) -> None:
    assert _build(sample_routes["Rotate POST"], {"id": "e1"}).note == ""
    message = _invalid(
        sample_routes["Rotate POST"], "UNKNOWN_QUERY_PARAMETER", params={"id": "e"}, query="note=x"
    )
    assert "note" in message


def test_named_body_field_takes_the_json(sample_routes: dict[str, RpcRoute]) -> None:
    request = _build(
        sample_routes["PatchItem PATCH"],
        {"id": "i1"},
        body=b'{"color": "blue", "create_time": "2024-05-01T10:00:00Z"}',
    )

    assert request.id == "i1"
    assert request.item.color == 2
    assert request.item.create_time.seconds == 1714557600


def test_http_body_field_takes_raw_bytes_and_content_type(
    sample_routes: dict[str, RpcRoute],
) -> None:
    raw = b"\x00not json\xff"
    request = _build(
        sample_routes["Upload POST"],
        {"name": "n"},
        headers={"Content-Type": "application/x-custom; v=1"},
        body=raw,
    )

    assert request.http_body.data == raw
    assert request.http_body.content_type == "application/x-custom; v=1"
    assert request.name == "n"


def test_header_fields_fill_unbound_request_fields(sample_routes: dict[str, RpcRoute]) -> None:
    route = sample_routes["Upload POST"]

    both = _build(
        route,
        {"name": "n"},
        headers={"Stripe-Signature": "t=1,v1=ab", "Idempotency-Key": "k1", "Webhook-Id": "w1"},
    )
    assert (both.stripe_signature, both.idempotency_key) == ("t=1,v1=ab", "k1")
    assert _build(route, {"name": "n"}, headers={"Webhook-Id": "w1"}).idempotency_key == "w1"
    with pytest.raises(GatewayError) as refused:
        _build(route, {"name": "n"}, query="idempotency_key=q", headers={"Webhook-Id": "w"})
    assert refused.value.reason == "UNKNOWN_QUERY_PARAMETER"
    assert "Idempotency-Key header" in refused.value.message


_SAMPLE_TEXT = {
    FieldDescriptor.TYPE_STRING: "x",
    FieldDescriptor.TYPE_BOOL: "true",
    FieldDescriptor.TYPE_INT32: "1",
    FieldDescriptor.TYPE_INT64: "1",
    FieldDescriptor.TYPE_UINT32: "1",
    FieldDescriptor.TYPE_UINT64: "1",
}


def test_every_documented_parameter_binds_and_nothing_else_does() -> None:
    # `parameters` (what /openapi.json lists) and `build_request` read one set of rules.
    for route in build_routes(BACKENDS):
        documented = parameters(route)
        path = {p.name: "1" for p in documented if p.location == "path"}
        for parameter in documented:
            text = _SAMPLE_TEXT.get(parameter.field.type)
            if parameter.location == "query" and text is not None:
                request = _build(route, path, query=f"{parameter.name}={text}")
                top = parameter.name.split(".")[0]
                is_set = request.HasField(top) if "." in parameter.name else getattr(request, top)
                assert is_set, (route.rpc, parameter.name)
            if parameter.location == "header" and parameter.field.type == _F.TYPE_STRING:
                request = _build(route, path, headers={parameter.name: "h1"})
                assert getattr(request, parameter.field.name) == "h1", (route.rpc, parameter)
        queries = {p.name for p in documented if p.location == "query"}
        request_fields = descriptor_of(route.request_class).fields
        for field in request_fields:
            if field.name in queries or field.message_type is not None:
                continue
            text = _SAMPLE_TEXT.get(field.type)
            if text is not None:
                with pytest.raises(GatewayError) as refused:
                    _build(route, path, query=f"{field.name}={text}")
                assert refused.value.reason == "UNKNOWN_QUERY_PARAMETER", (route.rpc, field.name)


def test_real_trigger_webhook_maps_path_body_and_headers() -> None:
    route = next(r for r in build_routes(BACKENDS) if r.rpc.endswith("/TriggerWebhook"))
    request = _build(
        route,
        {"tenant_id": "t1", "secret": "s3"},
        headers={"Content-Type": "text/plain", "Idempotency-Key": "idem"},
        body=b"hello",
    )

    assert isinstance(request, execution_pb.TriggerWebhookRequest)
    assert (request.tenant_id, request.secret, request.idempotency_key) == ("t1", "s3", "idem")
    assert (request.http_body.data, request.http_body.content_type) == (b"hello", "text/plain")


def test_the_webhook_and_its_admission_get_the_standard_webhooks_headers() -> None:
    route = next(r for r in build_routes(BACKENDS) if r.rpc.endswith("/TriggerWebhook"))
    assert route.admission is not None
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": "1700000000",
        "Webhook-Signature": "v1,c2ln v1,b3RoZXI=",
        "Content-Length": "5",
    }
    request = _build(route, {"tenant_id": "t1", "secret": "s"}, headers=headers, body=b"hello")
    admission = build_admission(
        route.admission, {"tenant_id": "t1", "secret": "s"}, CIMultiDict(headers)
    )

    assert isinstance(admission, execution_pb.AdmitWebhookRequest)
    signed = ("msg_1", "1700000000", "v1,c2ln v1,b3RoZXI=")
    for message in (request, admission):
        assert (message.webhook_id, message.webhook_timestamp, message.webhook_signature) == signed
    assert (request.idempotency_key, admission.content_length) == ("msg_1", 5)
    chunked = build_admission(route.admission, {"tenant_id": "t1", "secret": "s"}, CIMultiDict())
    assert isinstance(chunked, execution_pb.AdmitWebhookRequest)
    assert chunked.content_length == 0


def test_query_parameters_convert_types_repeat_and_nest(
    sample_routes: dict[str, RpcRoute],
) -> None:
    request = _build(
        sample_routes["ListItems GET"],
        query="tags=a&tags=b&limit=25&verbose=true&color=deep_red&parent.depth=3&parent.id=p",
    )

    assert list(request.tags) == ["a", "b"]
    assert (request.limit, request.verbose, request.color) == (25, True, 1)
    assert (request.parent.id, request.parent.depth) == ("p", 3)
    assert _build(sample_routes["ListItems GET"], query="color=COLOR_BLUE").color == 2
    # A Timestamp takes its JSON form, RFC 3339 text.
    since = _build(sample_routes["ListItems GET"], query="since=2024-05-01T10:00:00Z").since
    assert since.seconds == 1714557600


@pytest.mark.parametrize(
    ("query", "reason", "named"),
    [
        ("nope=1", "UNKNOWN_QUERY_PARAMETER", "nope"),
        ("parent.nope=1", "UNKNOWN_QUERY_PARAMETER", "parent.nope"),
        ("name.x=1", "UNKNOWN_QUERY_PARAMETER", "name.x"),
        ("limit=ten", "INVALID_FIELD_VALUE", "limit"),
        ("verbose=yes", "INVALID_FIELD_VALUE", "verbose"),
        ("color=green", "INVALID_FIELD_VALUE", "color"),
        ("limit=1&limit=2", "INVALID_FIELD_VALUE", "limit"),
        ("since=2024", "INVALID_FIELD_VALUE", "since"),
        ("since=2024-05-01T10:00:00Z&since=2024-05-02T10:00:00Z", "INVALID_FIELD_VALUE", "since"),
        ("sizes=1&sizes=99999999999", "INVALID_FIELD_VALUE", "sizes"),
    ],
)
def test_bad_query_parameters_are_400(
    sample_routes: dict[str, RpcRoute], query: str, reason: str, named: str
) -> None:
    message = _invalid(sample_routes["ListItems GET"], reason, query=query)

    assert message.startswith(named)


def test_path_bound_fields_cannot_come_from_the_query(sample_routes: dict[str, RpcRoute]) -> None:
    message = _invalid(
        sample_routes["GetItem GET"],
        "UNKNOWN_QUERY_PARAMETER",
        params={"parent.id": "p", "name": "files/x"},
        query="parent.id=q",
    )

    assert "path" in message


def test_bad_json_bodies_are_400(sample_routes: dict[str, RpcRoute]) -> None:
    route = sample_routes["Rotate POST"]

    assert "JSON" in _invalid(route, "INVALID_JSON", body=b"{not json")
    assert _invalid(route, "UNKNOWN_FIELD", body=b'{"colour": 1}').startswith("colour")
    assert "JSON object" in _invalid(route, "INVALID_FIELD_VALUE", body=b"[1]")
    patch = sample_routes["PatchItem PATCH"]
    assert _invalid(patch, "UNKNOWN_FIELD", body=b'{"nope": 1}').startswith("item.nope")


# --- JSON mapping ---------------------------------------------------------------------------


def _run(**fields: Any) -> execution_pb.Run:
    return execution_pb.Run(**fields)


def test_json_output_prints_defaults_nulls_short_enums_and_rfc3339() -> None:
    created = timestamp_pb2.Timestamp(seconds=1714557600, nanos=500_000_000)
    run = _run(id="r1", status=execution_pb.RUN_STATUS_QUEUED, create_time=created)

    assert message_to_json(run) == {
        "id": "r1",
        "workflow_id": "",
        "workflow_version": 0,
        "status": "queued",
        "attempt": 0,
        "error": "",
        "create_time": "2024-05-01T10:00:00.500Z",
        "start_time": None,
        "end_time": None,
        "retry_of": "",
        "cancel_requested": False,
    }
    tenant = tenancy_pb.Tenant(status=tenancy_pb.TENANT_STATUS_ACTIVE)
    assert message_to_json(tenant)["status"] == "active"
    reply = tenancy_pb.AuthenticateApiKeyResponse(role=tenancy_pb.ROLE_ADMIN)
    assert message_to_json(reply)["role"] == "admin"


def test_json_output_keeps_int64_numbers_and_struct_as_plain_json() -> None:
    step = execution_pb.Step(id="s", type="transform")
    step.config.update({"expression": "a.b", "nested": {"n": 1, "list": [True, None, 0.5]}})
    log = execution_pb.StepLog(duration_ms=12, output_bytes=2**40)

    # Compared as text, since 1 == 1.0 in Python but clients see "1.0".
    assert json.dumps(message_to_json(step)["config"], sort_keys=True) == (
        '{"expression": "a.b", "nested": {"list": [true, null, 0.5], "n": 1}}'
    )
    assert message_to_json(log)["output_bytes"] == 2**40
    empty_list = execution_pb.ListWebhookEndpointsResponse()
    assert message_to_json(empty_list) == {"webhook_endpoints": [], "next_page_token": ""}


def test_json_input_accepts_both_enum_forms_timestamps_and_structs() -> None:
    for status in ("succeeded", "RUN_STATUS_SUCCEEDED", 3):
        run = _run()
        json_to_message({"status": status, "start_time": "2024-05-01T10:00:00Z"}, run)
        assert run.status == execution_pb.RUN_STATUS_SUCCEEDED
        assert run.start_time.seconds == 1714557600
    request = execution_pb.CreateWorkflowRequest()
    json_to_message(
        {
            "name": "orders",
            "steps": [{"id": "shape", "type": "transform", "config": {"expression": "x"}}],
            "enabled": False,
        },
        request,
    )
    assert request.steps[0].config["expression"] == "x"
    assert request.HasField("enabled")
    assert request.enabled is False
    log = execution_pb.StepLog()
    json_to_message({"duration_ms": "9007199254740993", "attempt": 2.0}, log)
    assert (log.duration_ms, log.attempt) == (9007199254740993, 2)


@pytest.mark.parametrize(
    ("data", "reason", "field"),
    [
        ({"status": "green"}, "INVALID_FIELD_VALUE", "status"),
        ({"attempt": "x"}, "INVALID_FIELD_VALUE", "attempt"),
        ({"attempt": 2**40}, "INVALID_FIELD_VALUE", "attempt"),
        ({"attempt": True}, "INVALID_FIELD_VALUE", "attempt"),
        ({"id": 5}, "INVALID_FIELD_VALUE", "id"),
        ({"start_time": "yesterday"}, "INVALID_FIELD_VALUE", "start_time"),
        ({"unknown": 1}, "UNKNOWN_FIELD", "unknown"),
    ],
)
def test_json_input_errors_name_the_field(data: dict[str, Any], reason: str, field: str) -> None:
    with pytest.raises(JsonMappingError) as failure:
        json_to_message(data, _run())

    assert (failure.value.reason, failure.value.field) == (reason, field)


def test_json_round_trip_of_a_workflow_is_lossless() -> None:
    workflow = execution_pb.Workflow(id="w", name="n", version=2, enabled=True)
    workflow.steps.add(id="a", type="filter").config.update({"condition": "x > `1`"})
    workflow.create_time.FromSeconds(1714557600)
    parsed = execution_pb.Workflow()

    json_to_message(json.loads(json.dumps(message_to_json(workflow))), parsed)

    assert parsed == workflow


# --- responses and errors -------------------------------------------------------------------


def test_response_head_reads_status_and_headers_from_metadata() -> None:
    metadata = (
        ("x-http-code", "201"),
        ("x-http-header-etag", '"abc"'),
        ("x-http-header-content-length", "10"),
        ("x-http-header-transfer-encoding", "chunked"),
        ("x-request-id", "r"),
    )

    assert response_head(metadata, keep_length=True) == (
        201,
        {"ETag": '"abc"', "Content-Length": "10"},
    )
    assert response_head(metadata, keep_length=False) == (201, {"ETag": '"abc"'})
    assert response_head((("x-http-code", "999"),), keep_length=False) == (200, {})


def test_unary_responses_honour_response_body_and_http_body(
    sample_routes: dict[str, RpcRoute],
) -> None:
    patch = sample_routes["PatchItem PATCH"]
    reply: Any = patch.response_class()
    reply.item.id = "i1"

    rendered = render_unary(patch, reply, (("x-http-code", "202"),))

    assert rendered.status == 202
    assert isinstance(rendered.body, bytes)
    assert json.loads(rendered.body) == {"id": "i1", "color": "unspecified", "create_time": None}
    raw_route = RpcRoute(
        **{**patch.__dict__, "response_class": httpbody_pb2.HttpBody, "response_body": ""}
    )
    raw = render_unary(raw_route, httpbody_pb2.HttpBody(content_type="text/csv", data=b"a,b"), ())
    assert (raw.body, raw.headers["Content-Type"]) == (b"a,b", "text/csv")


def test_the_status_table_follows_grpc_gateway() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)
    assert HTTP_STATUS[grpc.StatusCode.NOT_FOUND] == 404
    assert HTTP_STATUS[grpc.StatusCode.CANCELLED] == 499
    assert HTTP_STATUS[grpc.StatusCode.FAILED_PRECONDITION] == 400
    assert HTTP_STATUS[grpc.StatusCode.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[grpc.StatusCode.UNAVAILABLE] == 503
    assert HTTP_STATUS[grpc.StatusCode.DEADLINE_EXCEEDED] == 504


def _rpc_error(code: grpc.StatusCode, details: str, info: Message | None = None) -> Any:
    trailing = grpc.aio.Metadata()
    if info is not None:
        packed = any_pb2.Any()
        packed.Pack(info)
        status = status_pb2.Status(code=code.value[0], message=details, details=[packed])
        trailing.add("grpc-status-details-bin", status.SerializeToString())
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


def test_backend_error_info_sets_reason_status_override_and_retry_after() -> None:
    disabled = from_rpc_error(
        _rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "the workflow is disabled",
            error_details_pb2.ErrorInfo(
                reason="WORKFLOW_DISABLED", metadata={"http_status": "409"}
            ),
        ),
        "execution",
    )
    quota = from_rpc_error(
        _rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "quota",
            error_details_pb2.ErrorInfo(
                reason="QUOTA_EXCEEDED", metadata={"retry_after_seconds": "30"}
            ),
        ),
        "execution",
    )

    assert (disabled.http_status, disabled.reason, disabled.message) == (
        409,
        "WORKFLOW_DISABLED",
        "the workflow is disabled",
    )
    assert (quota.http_status, quota.headers) == (429, {"Retry-After": "30"})


def test_backend_errors_without_error_info() -> None:
    down = from_rpc_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "failed to connect to ipv4:10.0.0.1:50052"),
        "execution",
    )
    crash = from_rpc_error(_rpc_error(grpc.StatusCode.UNKNOWN, "Exception: secret"), "billing")
    bad = from_rpc_error(_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad page"), "billing")

    assert (down.http_status, down.reason) == (503, "BACKEND_UNAVAILABLE")
    assert "10.0.0.1" not in down.message
    assert "10.0.0.1" in down.detail, "the operator still gets the cause in the log"
    assert (crash.http_status, crash.reason) == (500, "UNKNOWN")
    assert "secret" not in crash.message
    assert (bad.http_status, bad.reason, bad.message) == (400, "INVALID_ARGUMENT", "bad page")


def test_error_body_shape_and_authenticate_header() -> None:
    error = GatewayError(grpc.StatusCode.UNAUTHENTICATED, "INVALID_API_KEY", "the key is not valid")

    response = error_response(error, "req-1")

    assert response.status == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {
        "error": {
            "code": 401,
            "status": "UNAUTHENTICATED",
            "message": "the key is not valid",
            "reason": "INVALID_API_KEY",
            "request_id": "req-1",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "INVALID_API_KEY",
                    "domain": "aias.dev",
                }
            ],
        }
    }
