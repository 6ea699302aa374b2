"""Webhook ingest with every limit enforced beside the same path with none, and /healthz, same run."""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from aias.core.launcher import launch
from bench.common import machine, print_machine


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


# Every limit set, high enough that none refuses: all the checks run and none stops the load.
ENFORCED = {
    "workflows": 1_000,
    "webhook_endpoints": 1_000,
    "runs_per_month": 1_000_000_000,
    "concurrent_runs": 1_000,
    "webhook_payload_bytes": 1_048_576,
    "webhook_requests_per_second": 5_000,
    "webhook_burst": 5_000,
    "artifact_storage_bytes": 1_000_000_000,
    "artifact_retention_days": 30,
}
WORKFLOW = {
    "name": "bench",
    "steps": [{"id": "shape", "type": "transform", "config": {"expression": "{id: id}"}}],
}
PAYLOAD = {"id": "order-1", "items": [1, 2, 3]}


async def _webhook_path(session: aiohttp.ClientSession, admin: str, limits: dict[str, int]) -> str:
    """A tenant on the enterprise plan (no limits) with `limits` set, and its webhook path."""
    operator = {"Authorization": f"Bearer {admin}"}
    async with session.post(
        "/api/tenants", json={"name": "bench", "plan": "enterprise"}, headers=operator
    ) as response:
        created = await response.json()
    if limits:
        async with session.patch(
            f"/api/tenants/{created['tenant']['id']}",
            json={"limit_overrides": limits},
            headers=operator,
        ) as response:
            response.raise_for_status()
    auth = {"Authorization": f"Bearer {created['admin_key']}"}
    async with session.post("/api/workflows", json=WORKFLOW, headers=auth) as response:
        workflow_id = (await response.json())["workflow"]["id"]
    async with session.post(
        "/api/webhook-endpoints", headers=auth, json={"workflow_id": workflow_id, "name": "bench"}
    ) as response:
        url: str = (await response.json())["webhook_endpoint"]["url"]
    return "/api/" + url.split("/api/", 1)[1]


def _merge(rounds: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


async def _run(url: str, admin: str, total: int, concurrency: int, rounds: int) -> None:
    async with aiohttp.ClientSession(base_url=url) as session:
        unlimited = await _webhook_path(session, admin, {})
        enforced = await _webhook_path(session, admin, ENFORCED)
        await _measure(session, "GET", "/healthz", 50, concurrency)  # warm-up
        for path in (unlimited, enforced):
            await _measure(session, "POST", path, 100, concurrency, json=PAYLOAD)
        baseline = await _measure(session, "GET", "/healthz", total, concurrency)
        # Alternating rounds, so drift (the worker's backlog, the database warming) hits both,
        # and each goes first in turn: a round pays for the previous round's runs the worker is
        # executing meanwhile.
        off: list[dict[str, float]] = []
        on: list[dict[str, float]] = []
        for index in range(rounds):
            pairs = [(unlimited, off), (enforced, on)]
            for path, taken in pairs if index % 2 == 0 else reversed(pairs):
                taken.append(
                    await _measure(session, "POST", path, total, concurrency, json=PAYLOAD)
                )
    print_machine(machine())
    print(f"requests per round: {total}, concurrency: {concurrency}, rounds: {rounds} (medians)")
    figures = (
        ("baseline GET /healthz (gateway only)", baseline),
        ("webhook -> 202, enforcement off (enterprise, no limits)", _merge(off)),
        ("webhook -> 202, enforcement on (every limit set)", _merge(on)),
    )
    for name, measured in figures:
        print(
            f"{name}: {measured['per_second']:.0f} req/s, p50 {measured['p50_ms']:.1f} ms, "
            f"p99 {measured['p99_ms']:.1f} ms"
        )
    cost = 1 - _merge(on)["per_second"] / _merge(off)["per_second"]
    print(f"enforcement cost: {cost:.1%} of ingest throughput (budget: 10%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
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
            asyncio.run(
                _run(
                    stack.gateway_url,
                    stack.admin_token,
                    args.requests,
                    args.concurrency,
                    args.rounds,
                )
            )
        finally:
            stack.stop()
            stack.database.stop()


if __name__ == "__main__":
    main()
