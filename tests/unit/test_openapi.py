"""The OpenAPI document is valid, covers every route the gateway serves, and /docs is offline."""

from __future__ import annotations

import re

from openapi_spec_validator import validate

from aias.gateway.backends import BACKENDS
from aias.gateway.openapi import build_document, render_docs
from aias.gateway.transcoder import build_routes

ROUTES = build_routes(BACKENDS)
DOCUMENT = build_document(ROUTES, "1.2.3")


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(DOCUMENT)
    assert DOCUMENT["openapi"] == "3.1.0"


def test_every_route_is_documented_with_its_method_and_success_status() -> None:
    for route in ROUTES:
        path = re.sub(r"\{([^}=]+)(=[^}]*)?\}", r"{\1}", route.template)
        operation = DOCUMENT["paths"][path][route.http_method.lower()]
        assert str(route.success_status) in operation["responses"]
        assert "default" in operation["responses"], "every error has the error schema"


def test_descriptions_come_from_the_proto_comments() -> None:
    created = DOCUMENT["paths"]["/api/workflows"]["post"]
    assert created["description"] == "Creates a workflow at version 1."
    assert created["responses"]["201"]
    workflow = DOCUMENT["components"]["schemas"]["aias.execution.v1.Workflow"]
    assert workflow["properties"]["version"]["description"].startswith("The current version")


def test_the_json_mapping_is_what_the_gateway_prints() -> None:
    run = DOCUMENT["components"]["schemas"]["aias.execution.v1.Run"]["properties"]
    assert "succeeded" in run["status"]["enum"], "enums are lowercase short names"
    assert {"type": "string", "format": "date-time"} in run["create_time"]["anyOf"]
    limits = DOCUMENT["components"]["schemas"]["aias.tenancy.v1.Limits"]["properties"]
    assert {"type": "integer", "format": "int64"} in limits["runs_per_month"]["anyOf"]
    assert {"type": "null"} in limits["runs_per_month"]["anyOf"], "unlimited is null"


def test_security_follows_each_routes_access_rule() -> None:
    paths = DOCUMENT["paths"]
    assert paths["/api/webhooks/{tenant_id}/{secret}"]["post"]["security"] == []
    assert paths["/api/tenants"]["post"]["security"] == [{"operatorToken": []}]
    assert "security" not in paths["/api/runs"]["get"], "the document's default: an API key"
    assert DOCUMENT["security"] == [{"apiKey": []}]


def test_the_docs_page_needs_nothing_from_outside() -> None:
    page = render_docs(DOCUMENT)
    assert "<script" not in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page), "no external resource"
    assert "/api/webhooks/{tenant_id}/{secret}" in page


def test_every_get_has_a_head_twin_without_a_body() -> None:
    gets = {path: ops["get"] for path, ops in DOCUMENT["paths"].items() if "get" in ops}
    heads = {path: ops["head"] for path, ops in DOCUMENT["paths"].items() if "head" in ops}

    assert gets.keys() == heads.keys()
    assert "/api/artifacts/{artifact_id}/download" in heads
    for path, head in heads.items():
        get = gets[path]
        assert head.get("parameters") == get.get("parameters")
        assert head.get("security") == get.get("security")
        assert head["responses"].keys() == get["responses"].keys()
        assert all("content" not in response for response in head["responses"].values())
    operation_ids = [op["operationId"] for ops in DOCUMENT["paths"].values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
