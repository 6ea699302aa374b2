"""The gateway's server against hostile clients: raw bytes, slow clients, floods, fuzz, its log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psutil
import pytest
from aiohttp import ClientSession
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aias.core.logging import JsonFormatter
from aias.gateway.app import build_router
from aias.gateway.backends import BACKENDS
from aias.gateway.ingress import MAX_BODY_BYTES
from aias.gateway.server import serving
from aias.gateway.transcoder import build_routes
from tests.conftest import DASHBOARD_SECRET, INTERNAL_TOKEN
from tests.unit.test_gateway_app import (
    ADMIN_TOKEN,
    API_KEY,
    TENANT_ID,
    Fakes,
    gateway_settings,
    running_fakes,
)

WEBHOOK = f"/api/webhooks/{TENANT_ID}"
# Short, so the tests of slow clients are quick.
TIMEOUT_SECONDS = 0.5


@dataclass
class Fixture:
    fakes: Fakes
    port: int


@pytest.fixture
async def gateway() -> AsyncIterator[Fixture]:
    """The gateway served as production serves it (the same runner), on an ephemeral port."""
    async with running_fakes() as fakes:
        limits = gateway_settings(
            fakes.addresses,
            header_timeout_seconds=TIMEOUT_SECONDS,
            body_timeout_seconds=TIMEOUT_SECONDS,
        )
        async with serving(limits) as port:
            yield Fixture(fakes, port)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    interim: list[int]

    def error(self) -> dict[str, Any]:
        """The error body, checked to be the one shape every error has."""
        assert self.headers["content-type"].startswith("application/json"), self.body[:200]
        error: dict[str, Any] = json.loads(self.body)["error"]
        assert set(error) == {"code", "status", "message", "reason", "request_id", "details"}
        assert error["code"] == self.status
        assert error["request_id"] == self.headers["x-request-id"]
        return error


async def _read_reply(reader: asyncio.StreamReader, *, bodiless: bool) -> Reply:
    interim = []
    while True:
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status >= 200:
            break
        interim.append(status)
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    length = headers.get("content-length")
    if bodiless:
        body = b""
    else:
        body = await (reader.readexactly(int(length)) if length else reader.read())
    return Reply(status, headers, body, interim)


async def exchange(
    port: int, data: bytes, *, seconds: float = 5.0, bodiless: bool = False
) -> Reply:
    """Sends raw bytes on a new connection and reads one response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        # The gateway may answer and close before taking all of a body it refuses.
        with suppress(ConnectionError):
            await writer.drain()
        return await asyncio.wait_for(_read_reply(reader, bodiless=bodiless), seconds)
    finally:
        # Abort rather than close: a close would first send whatever the gateway left unread.
        writer.transport.abort()


def request(
    method: str, target: str, headers: dict[str, bytes] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: gateway", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in (headers or {}).items()]
    if body:
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# --- what aiohttp cannot parse, and what the gateway refuses from the request head -----------


@pytest.mark.parametrize(
    ("raw", "status", "reason"),
    [
        (b"GARBAGE\r\n\r\n", 400, "MALFORMED_REQUEST"),
        (b"FOO /healthz HTTP/1.1\r\nHost: g\r\n\r\n", 400, "MALFORMED_REQUEST"),
        (request("CONNECT", "example.com:443"), 400, "INVALID_REQUEST_TARGET"),
        (request("OPTIONS", "*"), 400, "INVALID_REQUEST_TARGET"),
        (request("GET", "/" + "a" * 10_000), 431, "HEADERS_TOO_LARGE"),
        (
            request("GET", "/healthz", {f"X-H{i}": b"1" for i in range(200)}),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            request(
                "POST", f"{WEBHOOK}/s", {"Content-Length": b"2", "Transfer-Encoding": b"chunked"}
            ),
            400,
            "MALFORMED_REQUEST",
        ),
        (
            request("GET", "/api/tenants/me", {"Authorization": b"Bearer \xff\xfe"}),
            401,
            "MALFORMED_CREDENTIALS",
        ),
        (
            request("POST", f"{WEBHOOK}/s", {"Idempotency-Key": b"\xc3\xa9\xff"}, b"{}"),
            400,
            "INVALID_HEADER",
        ),
        (
            request("POST", f"{WEBHOOK}/s", {"Content-Type": b"text/" + b"a" * 300}, b"{}"),
            400,
            "INVALID_HEADER",
        ),
        (request("POST", f"{WEBHOOK}/s", {"Expect": b"magic"}, b"{}"), 417, "EXPECTATION_FAILED"),
    ],
    ids=[
        "garbage",
        "unknown-method",
        "connect",
        "options-star",
        "huge-url",
        "too-many-headers",
        "length-and-chunked",
        "authorization-bytes",
        "idempotency-key-bytes",
        "long-content-type",
        "unknown-expectation",
    ],
)
async def test_bad_requests_get_a_4xx_in_the_error_shape(
    gateway: Fixture, raw: bytes, status: int, reason: str
) -> None:
    reply = await exchange(gateway.port, raw)

    assert (reply.status, reply.error()["reason"]) == (status, reason)
    assert gateway.fakes.execution.requests == []
    assert (await exchange(gateway.port, request("GET", "/healthz"))).status == 200


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(
    gateway: Fixture,
) -> None:
    head = request("POST", f"{WEBHOOK}/s", {"Content-Length": b"104857600"})

    started = time.monotonic()
    reply = await exchange(gateway.port, head, seconds=2)

    assert reply.error()["reason"] == "PAYLOAD_TOO_LARGE"
    assert (reply.status, reply.headers["connection"]) == (413, "close")
    assert time.monotonic() - started < 1


async def test_a_chunked_body_is_read_only_up_to_the_limit(gateway: Fixture) -> None:
    chunk = b"100000\r\n" + b"x" * 0x100000 + b"\r\n"
    head = request("POST", f"{WEBHOOK}/s", {"Transfer-Encoding": b"chunked"})

    reply = await exchange(gateway.port, head + chunk * 9 + b"0\r\n\r\n")

    assert (reply.status, reply.error()["reason"]) == (413, "PAYLOAD_TOO_LARGE")
    assert gateway.fakes.execution.requests == []


async def test_continue_is_sent_only_once_the_body_is_wanted(gateway: Fixture) -> None:
    expect = {"Expect": b"100-continue"}
    refused = await exchange(gateway.port, request("POST", "/api/workflows", expect, b"{}"))
    accepted = await exchange(gateway.port, request("POST", f"{WEBHOOK}/s", expect, b"{}"))

    assert (refused.status, refused.interim) == (401, [])
    assert (accepted.status, accepted.interim) == (202, [100])


# --- slow clients -----------------------------------------------------------------------------


async def test_a_request_head_that_never_ends_is_cut_off(gateway: Fixture) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: ")

    assert await asyncio.wait_for(reader.read(), 5 * TIMEOUT_SECONDS) == b""
    writer.close()


async def test_a_body_that_never_ends_gets_408_and_the_connection_closes(gateway: Fixture) -> None:
    head = request("POST", f"{WEBHOOK}/s", {"Content-Length": b"100"})

    reply = await exchange(gateway.port, head + b"{" * 10)

    assert (reply.status, reply.error()["reason"]) == (408, "REQUEST_TIMEOUT")
    assert reply.headers["connection"] == "close"
    assert gateway.fakes.execution.requests == []


async def test_a_client_leaving_mid_body_costs_nothing(gateway: Fixture) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
    writer.write(request("POST", f"{WEBHOOK}/s", {"Content-Length": b"1000"}) + b"{" * 10)
    await writer.drain()
    writer.close()
    await writer.wait_closed()

    assert (await exchange(gateway.port, request("GET", "/healthz"))).status == 200
    assert gateway.fakes.execution.requests == []


# --- fuzzing the public routes ------------------------------------------------------------------


def _path(template: str, segments: list[str]) -> str:
    values = iter(segments)
    return re.sub(r"\{[^}]+\}", lambda _: quote(next(values, "x"), safe=""), template)


_TEMPLATES = sorted(
    {route.template.source for route in build_router(build_routes(BACKENDS)).routes}
)
_paths = st.one_of(
    st.builds(
        _path,
        st.sampled_from(_TEMPLATES),
        st.lists(st.text(max_size=40), min_size=2, max_size=2),
    ),
    st.text(max_size=60).map(lambda text: "/" + quote(text, safe="/:%?=&")),
)
_queries = st.one_of(
    st.just(""),
    st.lists(
        st.tuples(
            st.sampled_from(["page_size", "page_token", "run_id", "tenant_id", "x.y", "z"]),
            st.one_of(st.text(max_size=20), st.just("9" * 5000), st.just("NaN")),
        ),
        max_size=3,
    ).map(lambda pairs: "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in pairs)),
)
_header_values = st.one_of(
    st.binary(max_size=300).map(lambda value: value.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from(
        [
            f"Bearer {API_KEY}".encode(),
            f"Bearer {ADMIN_TOKEN}".encode(),
            b"Bearer \xff",
            b"application/json",
            b"a/" + b"b" * 300,
            b"100-continue",
        ]
    ),
)
_headers = st.dictionaries(
    st.sampled_from(
        [
            "Authorization",
            "Content-Type",
            "Idempotency-Key",
            "Webhook-Id",
            "Stripe-Signature",
            "X-Request-ID",
            "Range",
            "Cookie",
            "Expect",
            "Accept",
        ]
    ),
    _header_values,
    max_size=5,
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
_bodies = st.one_of(
    st.just(b""),
    _json.map(lambda value: json.dumps(value).encode()),
    st.builds(
        lambda name, value: (
            json.dumps({"name": name, "steps": [{"config": {"v": 0}}]})
            .replace("0}}", value + "}}")
            .encode()
        ),
        st.text(max_size=10),
        st.sampled_from(["NaN", "Infinity", "1e400", "9" * 5000, "[" * 5000 + "]" * 5000]),
    ),
    st.binary(max_size=400),
)


@settings(
    max_examples=300,
    deadline=None,
    # No example database in the work tree; a failure prints the example to reproduce it.
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE"]),
    path=_paths,
    query=_queries,
    headers=_headers,
    body=_bodies,
)
async def test_fuzzed_requests_never_crash_the_gateway(
    gateway: Fixture,
    method: str,
    path: str,
    query: str,
    headers: dict[str, bytes],
    body: bytes,
) -> None:
    raw = request(method, path + query, headers, body)
    reply = await exchange(gateway.port, raw, bodiless=method == "HEAD")

    # The fakes lack most methods: 501 is the backend's answer, relayed, not a gateway failure.
    dashboard_page = path.startswith("/dashboard") and reply.headers.get(
        "content-type", ""
    ).startswith("text/html")
    if reply.status >= 400 and method != "HEAD" and dashboard_page:
        # The dashboard's pages answer their own refusals (a form without its token) with a page.
        assert reply.body.startswith(b"<!doctype html>"), reply.body[:200]
        assert reply.status < 500, reply.body
    elif reply.status >= 400 and method != "HEAD":
        reason = reply.error()["reason"]
        assert reply.status < 500 or (reply.status, reason) == (501, "UNIMPLEMENTED"), reply.body
    assert reply.status < 500 or reply.status == 501
    assert (await exchange(gateway.port, request("GET", "/healthz"))).status == 200


# --- the log ----------------------------------------------------------------------------------


async def test_no_secret_header_or_body_reaches_the_log(gateway: Fixture) -> None:
    secrets = {
        "secret": "whsec-path-9f1c2e",
        "key": "aias_key_7d41aa",
        "body": "body-value-51b0c7",
        "idempotency": "idem-3e8d2b",
        "signature": "t=1,v1=sig-0c6a9e",
        "cookie": "session-c0ffee",
    }
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(JsonFormatter("gateway"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        await _send_hostile_requests(gateway.port, secrets)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

    written = log.getvalue()
    assert "request refused before routing" in written
    assert '"route": "/api/stripe/webhook"' in written, "a failed request is logged by template"
    for name, value in secrets.items():
        assert value not in written, f"the {name} reached the log"


async def _send_hostile_requests(port: int, secrets: dict[str, str]) -> None:
    body = ('{"order": "' + secrets["body"] + '"}').encode()
    marked = {
        "Idempotency-Key": secrets["idempotency"].encode(),
        "Stripe-Signature": secrets["signature"].encode(),
        "Cookie": secrets["cookie"].encode(),
        "Authorization": f"Bearer {secrets['key']}".encode(),
    }
    webhook = f"{WEBHOOK}/{secrets['secret']}"
    sent = [
        request("POST", webhook, marked, body),
        request("POST", f"{WEBHOOK}/unknown-{secrets['secret']}", marked, body),
        request("POST", "/api/stripe/webhook", marked, body),
        request("POST", "/api/workflows", marked, body),
        request("GET", "/api/tenants/me", {"Authorization": marked["Authorization"] + b"\xff"}),
        request("POST", webhook, {"Idempotency-Key": marked["Idempotency-Key"] + b"\xff"}, body),
        request("GET", f"{webhook}/{'a' * 9000}"),
        request("GET", "/healthz", {"Authorization": marked["Authorization"] + b"a" * 9000}),
        request("GET", "/healthz", {"Cookie": marked["Cookie"] + b"\x00"}),
        f"{secrets['secret']} {webhook} HTTP/1.1\r\n\r\n".encode(),
    ]
    for raw in sent:
        await exchange(port, raw)
    # A client that leaves mid-body.
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request("POST", webhook, {"Content-Length": b"1000"}) + body)
    writer.close()
    await exchange(port, request("GET", "/healthz"))


# --- the process: memory and graceful stop ----------------------------------------------------


@asynccontextmanager
async def gateway_process(
    fakes: Fakes, tmp_path: Path, **settings: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """`python -m aias.gateway.main` against the fakes, with `settings` added to its environment;
    its log goes to tmp_path/gateway.log."""
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "AIAS_GATEWAY_HOST": "127.0.0.1",
        "AIAS_GATEWAY_PORT": "0",
        "AIAS_INTERNAL_TOKEN": INTERNAL_TOKEN,
        "AIAS_ADMIN_TOKEN": ADMIN_TOKEN,
        "AIAS_DASHBOARD_SECRET": DASHBOARD_SECRET,
        "AIAS_READY_FILE": str(ready),
        "AIAS_SHUTDOWN_GRACE_SECONDS": "5",
        **{f"AIAS_{name.upper()}_ADDR": address for name, address in fakes.addresses.items()},
        **settings,
    }
    with (tmp_path / "gateway.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aias.gateway.main", env=env, stderr=log
        )
    try:
        for _ in range(200):
            if ready.exists():
                break
            await asyncio.sleep(0.05)
        yield process, json.loads(ready.read_text())["port"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_unauthenticated_8_mb_bodies_keep_the_gateway_under_150_mib(
    tmp_path: Path,
) -> None:
    async with running_fakes() as fakes, gateway_process(fakes, tmp_path) as (process, port):
        memory = psutil.Process(process.pid)
        await asyncio.sleep(0.5)  # settled after start-up
        idle = memory.memory_info().rss
        payload = os.urandom(MAX_BODY_BYTES - 1024)
        peak = 0

        async def sample(stop: asyncio.Event) -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, memory.memory_info().rss)
                await asyncio.sleep(0.005)

        async def deliver(session: ClientSession, number: int) -> int:
            url = f"http://127.0.0.1:{port}{WEBHOOK}/unknown-{number}"
            async with session.post(url, data=io.BytesIO(payload)) as response:
                return response.status

        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(stop))
        async with ClientSession() as session:
            statuses = await asyncio.gather(*(deliver(session, n) for n in range(50)))
        stop.set()
        await sampler
        await asyncio.sleep(0.5)
        after = memory.memory_info().rss

    assert statuses == [404] * 50
    mib = 1024 * 1024
    assert peak < 150 * mib, f"peak RSS {peak / mib:.0f} MiB"
    # The bodies' memory goes back to the system: what stays is a few buffers, not the bodies.
    assert after - idle < 32 * mib, f"RSS {idle / mib:.0f} MiB idle, {after / mib:.0f} after"


async def test_sigterm_reports_not_ready_and_still_serves_during_the_drain_delay(
    tmp_path: Path,
) -> None:
    async with (
        running_fakes() as fakes,
        gateway_process(fakes, tmp_path, AIAS_GATEWAY_DRAIN_DELAY_SECONDS="3") as (process, port),
        ClientSession(f"http://127.0.0.1:{port}") as http,
    ):
        async with http.get("/readyz") as before:
            assert before.status == 200
            assert "Connection" not in before.headers, "kept alive while serving"
        process.send_signal(signal.SIGTERM)
        for _ in range(100):
            async with http.get("/readyz") as readiness:
                answer = (readiness.status, await readiness.json())
                closes = readiness.headers.get("Connection") == "close"
            if answer[0] != 200:
                break
            await asyncio.sleep(0.02)
        # Not ready as soon as it is stopping, and it closes each connection after its answer,
        # so keep-alive clients reconnect (through their balancer, to another gateway).
        assert answer == (503, {"status": "draining"})
        assert closes
        # Still accepting: a webhook on a new connection is served.
        async with http.post(f"{WEBHOOK}/s", data=b"{}") as late:
            assert late.status == 202
            assert late.headers["Connection"] == "close"
        # After the delay it refuses connections, and exits once nothing is in flight.
        refused = False
        for _ in range(400):
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                refused = True
                break
            writer.close()
            await asyncio.sleep(0.02)
        assert refused
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    async with running_fakes() as fakes, gateway_process(fakes, tmp_path) as (process, port):
        base = f"http://127.0.0.1:{port}"
        async with ClientSession(
            base_url=base, headers={"Authorization": f"Bearer {API_KEY}"}
        ) as http:
            slow = asyncio.create_task(http.get("/api/runs/slow"))
            reader, upload = await asyncio.open_connection("127.0.0.1", port)
            upload.write(request("POST", f"{WEBHOOK}/s", {"Content-Length": b"2"}) + b"{")
            await fakes.execution.arrived.wait()
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            upload.write(b"}")

            response = await slow
            uploaded = await asyncio.wait_for(_read_reply(reader, bodiless=False), 5)
            upload.close()
            assert response.status == 200
            assert (await response.json())["run"]["id"] == "slow"
            assert uploaded.status == 202
            with pytest.raises(ConnectionRefusedError):
                await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    lines = [json.loads(line) for line in (tmp_path / "gateway.log").read_text().splitlines()]
    messages = [line["message"] for line in lines if line["logger"] != "gateway.access"]
    assert messages[-2:] == ["shutting down", "stopped"]
    # Both requests finished during the stop, and the access log says so.
    served = [
        (line["route"], line["status"]) for line in lines if line["logger"] == "gateway.access"
    ]
    assert ("/api/runs/{run_id}", 200) in served
