"""Webhook hot path throughput and latency, with the gateway's /healthz as the same-run baseline."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from aias.core.launcher import launch


async def _measure(
    session: aiohttp.ClientSession,
    method: str,
    path: str,
    total: int,
    concurrency: int,
    **kwargs: Any,
) -> dict[str, float]:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)

    async def client() -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            async with session.request(method, path, **kwargs) as response:
                await response.read()
                if response.status >= 300:
                    raise RuntimeError(f"{method} {path} answered {response.status}")
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "per_second": total / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def _run(url: str, admin: str, total: int, concurrency: int) -> None:
    async with aiohttp.ClientSession(base_url=url) as session:
        async with session.post(
            "/api/tenants",
            json={"name": "bench", "plan": "pro"},
            headers={"Authorization": f"Bearer {admin}"},
        ) as response:
            key = (await response.json())["admin_key"]
        auth = {"Authorization": f"Bearer {key}"}
        workflow = {
            "name": "bench",
            "steps": [{"id": "shape", "type": "transform", "config": {"expression": "{id: id}"}}],
        }
        async with session.post("/api/workflows", json=workflow, headers=auth) as response:
            workflow_id = (await response.json())["workflow"]["id"]
        async with session.post(
            "/api/webhook-endpoints",
            headers=auth,
            json={"workflow_id": workflow_id, "name": "bench"},
        ) as response:
            hook = (await response.json())["webhook_endpoint"]["url"].split("/api/", 1)[1]
        await _measure(session, "GET", "/healthz", 50, concurrency)  # warm-up
        baseline = await _measure(session, "GET", "/healthz", total, concurrency)
        webhook = await _measure(
            session,
            "POST",
            f"/api/{hook}",
            total,
            concurrency,
            json={"id": "order-1", "items": [1, 2, 3]},
        )
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"{platform.platform()}"
    )
    print(f"requests: {total}, concurrency: {concurrency}")
    for name, figures in (
        ("baseline GET /healthz (gateway only)", baseline),
        ("POST webhook -> 202 (gateway -> execution -> committed run)", webhook),
    ):
        print(
            f"{name}: {figures['per_second']:.0f} req/s, p50 {figures['p50_ms']:.1f} ms, "
            f"p99 {figures['p99_ms']:.1f} ms"
        )
    print(
        f"webhook cost relative to baseline: {baseline['per_second'] / webhook['per_second']:.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="aias-bench-") as tmp:
        data_dir = Path(tmp)
        data_dir.chmod(0o755)
        stack = launch(
            data_dir,
            {**os.environ, "AIAS_LOG_LEVEL": "WARNING"},
            any_port=True,
            log_dir=data_dir / "logs",
        )
        try:
            asyncio.run(_run(stack.gateway_url, stack.admin_token, args.requests, args.concurrency))
        finally:
            stack.stop()
            stack.database.stop()


if __name__ == "__main__":
    main()
