"""Webhook bodies are read only once the endpoint and its plan's limit are known."""

from __future__ import annotations

import asyncio
import io
import os

import aiohttp
import psutil

from aias.core.launcher import Stack
from tests.e2e.client import new_endpoint, new_tenant

MIB = 1024 * 1024


async def _head_only(stack: Stack, path: str, length: int) -> tuple[int, bytes]:
    """Sends a request head that announces `length` body bytes, and none of them."""
    host, port = stack.gateway_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
    )
    await writer.drain()
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return int(head.split()[1]), head


async def test_unknown_url_and_oversized_body_are_answered_before_any_body_byte(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    tenant = await new_tenant(http)  # free: 256 KiB bodies
    _endpoint, secret = await new_endpoint(http, tenant)
    status, _ = await _head_only(stack, f"/api/webhooks/{tenant.id}/not-the-secret", 5 * MIB)
    assert status == 404
    status, _ = await _head_only(stack, f"/api/webhooks/{tenant.id}/{secret}", 300 * 1024)
    assert status == 413
    async with http.post(
        f"/api/webhooks/{tenant.id}/{secret}", data=b'"' + b"x" * (300 * 1024) + b'"'
    ) as response:
        body = await response.json()
    assert (response.status, body["error"]["reason"]) == (413, "PAYLOAD_TOO_LARGE")
    # Its declared length is refused by execution's admission, which records the delivery.
    assert "the free plan accepts at most 262144" in body["error"]["message"]


async def test_hostile_8_mb_webhooks_keep_gateway_and_execution_under_150_mib(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    processes = {
        name: psutil.Process(stack.children[name].process.pid) for name in ("gateway", "execution")
    }
    peaks = dict.fromkeys(processes, 0)
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            for name, process in processes.items():
                peaks[name] = max(peaks[name], process.memory_info().rss)
            await asyncio.sleep(0.01)

    payload = os.urandom(8 * MIB - 128 * 1024)

    async def deliver(path: str) -> int:
        async with http.post(path, data=io.BytesIO(payload)) as response:
            await response.read()
            return response.status

    sampler = asyncio.create_task(sample())
    statuses = await asyncio.gather(
        *(deliver(f"/api/webhooks/{tenant.id}/unknown-{n}") for n in range(50)),
        *(deliver(f"/api/webhooks/{tenant.id}/{secret}") for _ in range(50)),
    )
    stop.set()
    await sampler
    assert sorted(set(statuses)) == [404, 413]
    for name, peak in peaks.items():
        assert peak < 150 * MIB, f"{name} peaked at {peak / MIB:.0f} MiB"
