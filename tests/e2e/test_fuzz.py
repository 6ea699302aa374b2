"""Hostile requests on every public route of the running suite: never a 5xx, always the error shape."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aias.core.launcher import Stack
from aias.gateway.backends import BACKENDS
from aias.gateway.transcoder import build_routes
from tests.e2e.client import Tenant, new_tenant

ROUTES = sorted({(route.http_method, route.template) for route in build_routes(BACKENDS)})
_FIELD = re.compile(r"\{([^}=]+)(=[^}]*)?\}")

_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["", "00000000-0000-0000-0000-000000000000", "..", "%00", "a" * 300, "\u202e", "null"]
    ),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_text, children, max_size=4),
    max_leaves=25,
)
_bodies = st.one_of(
    _json.map(lambda value: json.dumps(value).encode()),
    st.sampled_from(
        [
            b'{"name": "x", "steps": [{"id": "a", "type": "transform", "config": {"v": NaN}}]}',
            b'{"name": "' + b"n" * 5000 + b'"}',
            b"[" * 3000 + b"]" * 3000,
            b'{"page_size": 99999999999999999999999}',
            b"\xff\xfe\x00",
        ]
    ),
    st.binary(max_size=300),
)


# One tenant for all examples: hypothesis calls the test body many times per fixture.
_owners: list[Tenant] = []


@pytest.fixture
async def owner(http: aiohttp.ClientSession) -> Tenant:
    if not _owners:
        _owners.append(await new_tenant(http))
    return _owners[0]


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(ROUTES),
    values=st.lists(_text, min_size=3, max_size=3),
    query=st.dictionaries(st.sampled_from(["page_size", "run_id", "x", "tenant_id"]), _text),
    body=_bodies,
    content_type=st.sampled_from(["application/json", "text/plain", "", "a/" + "b" * 300]),
    authorized=st.booleans(),
)
async def test_hostile_requests_get_a_4xx_in_the_error_shape(
    http: aiohttp.ClientSession,
    owner: Tenant,
    route: tuple[str, str],
    values: list[str],
    query: dict[str, str],
    body: bytes,
    content_type: str,
    authorized: bool,
) -> None:
    method, template = route
    fill = iter(values)
    path = _FIELD.sub(lambda _: quote(next(fill), safe="") or "x", template)
    headers = {"Content-Type": content_type} if content_type else {}
    if authorized:
        headers["Authorization"] = f"Bearer {owner.key}"
    async with http.request(
        method, path, params=query, data=body, headers=headers, allow_redirects=False
    ) as response:
        text = await response.read()
    assert response.status < 500, (method, path, response.status, text[:300])
    if response.status >= 400:
        error: dict[str, Any] = json.loads(text)["error"]
        assert error["code"] == response.status
        assert all(error[key] for key in ("reason", "message", "request_id")), error


async def test_every_process_still_serves_after_the_fuzzing(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    async with http.get("/readyz") as response:
        assert response.status == 200, await response.text()
    assert all(child.process.poll() is None for child in stack.children.values())
