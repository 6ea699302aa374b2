"""The http_request step without the network: its config rules, the request it renders, and the
value and failures it makes of a response."""

from __future__ import annotations

from typing import Any

import pytest

from aias.core.errors import InvalidArgument
from aias.services.execution.domain import StepDefinition, decode_response, validate_steps
from aias.services.execution.steps import (
    STEP_TYPES,
    HttpResponse,
    StepContext,
    StepFailed,
    read_response,
    run_step,
    status_failure,
)

CONTEXT = StepContext(
    run={"id": "r-1", "attempt": 2, "create_time": "2026-01-02T03:04:05Z"},
    workflow={"id": "w-1", "version": 3},
)
ORDER = {"id": "A-1", "items": [{"price": 2.5}], "note": "x\r\nX-Evil: 1"}


def _validate(config: dict[str, Any]) -> None:
    validate_steps([StepDefinition("call", "http_request", config)])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "steps[0].config.url must be a non-empty string"),
        ({"url": "ftp://example.com"}, "steps[0].config.url must start with http:// or https://"),
        ({"url": "https://u:p@example.com"}, "steps[0].config.url must not carry a user name"),
        ({"url": "https://{{ input.id"}, "steps[0].config.url is not a valid template"),
        ({"url": "https://x", "method": "TRACE"}, "steps[0].config.method must be one of GET"),
        ({"url": "https://x", "method": "get"}, "steps[0].config.method must be one of"),
        ({"url": "https://x", "timeout": 5}, "steps[0].config.timeout is not a field"),
        ({"url": "https://x", "headers": ["A"]}, "steps[0].config.headers must be an object"),
        ({"url": "https://x", "headers": {"Host": "a"}}, "config.headers.Host is set by the HTTP"),
        ({"url": "https://x", "headers": {"Content-Length": "1"}}, "headers.Content-Length is set"),
        ({"url": "https://x", "headers": {"transfer-encoding": "chunked"}}, "is set by the HTTP"),
        ({"url": "https://x", "headers": {"Connection": "close"}}, "is set by the HTTP client"),
        ({"url": "https://x", "headers": {"a b": "1"}}, "headers has 'a b', which is not a header"),
        ({"url": "https://x", "headers": {"A": "1", "a": "2"}}, "headers.a is given twice"),
        ({"url": "https://x", "headers": {"A": 1}}, "headers.A must be a string"),
        ({"url": "https://x", "headers": {"A": "{% if %}"}}, "headers.A is not a valid template"),
        ({"url": "https://x", "body": "@"}, 'config.body must be {"json": "<JMESPath'),
        ({"url": "https://x", "body": {"json": "@", "text": "t"}}, "config.body must be"),
        ({"url": "https://x", "body": {"xml": "<a/>"}}, "config.body must be"),
        ({"url": "https://x", "body": {"json": ""}}, "config.body.json must be a non-empty"),
        ({"url": "https://x", "body": {"json": "items[?"}}, "body.json is not a valid JMESPath"),
        ({"url": "https://x", "body": {"text": "{{"}}, "body.text is not a valid template"),
        ({"url": "https://x", "timeout_seconds": 0}, "config.timeout_seconds must be a number"),
        ({"url": "https://x", "timeout_seconds": 301}, "above 0 and at most 300"),
        ({"url": "https://x", "timeout_seconds": "5"}, "config.timeout_seconds must be a number"),
        ({"url": "https://x", "timeout_seconds": True}, "config.timeout_seconds must be a number"),
        ({"url": "https://x", "expect_status": [99]}, "config.expect_status must be a list"),
        ({"url": "https://x", "expect_status": ["200"]}, "config.expect_status must be a list"),
        ({"url": "https://x", "expect_status": 200}, "config.expect_status must be a list"),
    ],
)
def test_bad_configs_are_refused_naming_the_field(config: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        _validate(config)
    assert caught.value.reason == "INVALID_STEP_CONFIG"
    assert message in caught.value.message


def test_a_full_config_is_accepted() -> None:
    _validate(
        {
            "method": "POST",
            "url": "https://api.example.com/orders/{{ input.id | urlencode }}",
            "headers": {"Authorization": "Bearer {{ input.token }}", "X-Run": "{{ run.id }}"},
            "body": {"json": "{order: id}"},
            "timeout_seconds": 2.5,
            "expect_status": [200, 201, 404],
        }
    )
    _validate({"url": "http://{{ input.host }}/", "body": {"text": "Order {{ input.id }}"}})


def test_the_catalog_offers_http_request_but_not_slack_or_email() -> None:
    assert STEP_TYPES["http_request"].available
    assert "not deterministic" in STEP_TYPES["http_request"].description
    assert not STEP_TYPES["slack"].available
    assert not STEP_TYPES["email"].available
    for documented in ("`input`", "`run`", "`workflow`"):
        assert documented in STEP_TYPES["template"].description
        assert documented in STEP_TYPES["http_request"].description


def test_the_request_is_rendered_with_input_run_and_workflow() -> None:
    config = {
        "method": "POST",
        "url": "https://api.example.com/orders/{{ input.id }}?run={{ run.id }}&v={{ workflow.version }}",
        "headers": {"X-Attempt": "{{ run.attempt }}", "Accept": "application/json"},
        "body": {"json": "{order: id, total: sum(items[].price)}"},
        "timeout_seconds": 3,
        "expect_status": [201],
    }
    result = run_step("http_request", config, ORDER, CONTEXT)
    request = result.request
    assert request is not None
    assert request.method == "POST"
    assert request.url == "https://api.example.com/orders/A-1?run=r-1&v=3"
    assert request.headers == (
        ("X-Attempt", "2"),
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
    )
    assert request.body == b'{"order":"A-1","total":2.5}'
    assert (request.timeout, request.expect_status) == (3.0, (201,))
    # The query may hold a token: the step's message leaves it out.
    assert result.message == "POST https://api.example.com/orders/A-1"


def test_defaults_and_a_text_body_with_its_own_content_type() -> None:
    plain = run_step("http_request", {"url": "https://example.com/"}, ORDER, CONTEXT).request
    assert plain is not None
    assert (plain.method, plain.headers, plain.body, plain.timeout) == ("GET", (), b"", 10.0)
    config = {
        "method": "PUT",
        "url": "https://example.com/",
        "headers": {"content-type": "text/csv"},
        "body": {"text": "id\n{{ input.id }}"},
    }
    text = run_step("http_request", config, ORDER, CONTEXT).request
    assert text is not None
    assert (text.headers, text.body) == ((("content-type", "text/csv"),), b"id\nA-1")


@pytest.mark.parametrize(
    ("config", "failure"),
    [
        ({"url": "{{ input.to }}"}, "the rendered URL must start with http:// or https://"),
        ({"url": "https://x/{{ input.missing.deeper }}"}, "url rendering failed"),
        (
            {"url": "https://x/", "headers": {"X-Note": "{{ input.note }}"}},
            "header X-Note rendered to a line break or control character",
        ),
        (
            {"url": "https://x/", "headers": {"X-Big": "{{ 'a' * 20000 }}"}},
            "the rendered headers are over 16,384 bytes",
        ),
    ],
)
def test_a_request_that_renders_badly_fails_the_step(config: dict[str, Any], failure: str) -> None:
    with pytest.raises(StepFailed, match=failure):
        run_step("http_request", config, {**ORDER, "to": "file:///etc/passwd"}, CONTEXT)


def test_the_response_becomes_the_value() -> None:
    response = HttpResponse(
        "GET",
        "https://api.example.com/orders/A-1?token=secret",
        200,
        "OK",
        (("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")),
    )
    result = read_response(
        response, decode_response(b'{"id": "A-1", "paid": true}', "application/json")
    )
    assert result.value == {
        "status": 200,
        "headers": {"content-type": "application/json", "set-cookie": "a=1, b=2"},
        "body": {"id": "A-1", "paid": True},
    }
    assert result.message == "GET https://api.example.com/orders/A-1 answered 200 OK"


@pytest.mark.parametrize(
    ("body", "content_type", "value"),
    [
        (b"", "application/json", None),
        (b"<html>oops</html>", "application/json", "<html>oops</html>"),
        (b"plain words", "text/plain; charset=utf-8", "plain words"),
        (b'{"a": 1}', "", {"a": 1}),
        (b"\xff\xfe", "application/octet-stream", "\ufffd\ufffd"),
    ],
)
def test_response_bodies_are_json_when_they_are_json_else_text(
    body: bytes, content_type: str, value: Any
) -> None:
    assert decode_response(body, content_type) == value


def test_refused_statuses_are_explained_with_the_start_of_the_body() -> None:
    def failure(status: int, reason: str, body: bytes) -> str:
        response = HttpResponse(
            "POST", "https://api.example.com/orders?key=secret", status, reason, ()
        )
        return status_failure(response, body)

    assert failure(404, "Not Found", b"no such\n  order") == (
        "HTTP_CLIENT_ERROR: POST https://api.example.com/orders answered 404 Not Found: "
        "no such order"
    )
    assert failure(503, "Service Unavailable", b"").startswith("HTTP_SERVER_ERROR: POST")
    assert failure(200, "OK", b"x" * 5000).startswith("HTTP_UNEXPECTED_STATUS: POST")
    assert len(failure(200, "OK", b"x" * 5000)) < 300
