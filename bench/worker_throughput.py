"""Runs completed per second by one and two workers, with latency from 202 to `succeeded`.

Starts the suite on ephemeral ports (its own embedded PostgreSQL) and replaces its worker with
worker processes started here, one configuration at a time:

- drain: runs queued in one SQL statement, then drained by the workers (runs/s from the first
  start to the last end); one-step runs (transform) and four-step runs (validate, transform,
  template, artifact);
- end to end: four-step runs triggered by webhooks through the gateway (16 clients), each
  timed from its 202 to its end;
- baselines from the same run: a single-row UPDATE per transaction (the database's round trip
  on this machine), and the same workers claiming one run per statement
  (AIAS_WORKER_CLAIM_BATCH=1).

Prints the machine, the versions and the figures, and writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from sqlalchemy import text

from aias.core.db import Database, SystemPath, create_engine
from aias.core.launcher import Stack, launch
from bench.common import cpu_seconds, machine, print_machine

ONE_STEP = [{"id": "shape", "type": "transform", "config": {"expression": "{order: id}"}}]
FOUR_STEPS = [
    {
        "id": "check",
        "type": "validate",
        "config": {"schema": {"type": "object", "required": ["id", "items"]}},
    },
    {
        "id": "shape",
        "type": "transform",
        "config": {"expression": "{order: id, total: sum(items[].price)}"},
    },
    {"id": "say", "type": "template", "config": {"template": "Order {{ input.order }}"}},
    {"id": "save", "type": "artifact", "config": {"name": "summary.json", "format": "json"}},
]


# The benchmark's own worker processes (their step processes are their children).
WORKER_PIDS: list[int] = []


def _cpu(stack: Stack) -> dict[str, float]:
    """CPU seconds so far: the suite's processes, PostgreSQL, and the benchmark's workers."""
    used = cpu_seconds(stack)
    used["workers"] = 0.0
    for pid in WORKER_PIDS:
        with contextlib.suppress(psutil.Error):
            process = psutil.Process(pid)
            for member in (process, *process.children(recursive=True)):
                times = member.cpu_times()
                used["workers"] += times.user + times.system
    return used


@asynccontextmanager
async def _workers(stack: Stack, count: int, settings: dict[str, str]) -> AsyncIterator[None]:
    """`count` worker processes as the launcher starts them, with `settings` added."""
    processes = []
    for index in range(count):
        env = {**stack.environment("execution-worker"), **settings}
        env["AIAS_WORKER_ID"] = f"bench-{index}-{uuid.uuid4().hex[:6]}"
        # Started as the launcher starts processes: they die with the benchmark.
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "aias.core.launched",
                str(os.getpid()),
                "aias.services.execution.worker_main",
                env=env,
            )
        )
    WORKER_PIDS[:] = [process.pid for process in processes]
    try:
        await asyncio.sleep(3.0)  # start-up: step processes, LISTEN connections
        yield
    finally:
        WORKER_PIDS.clear()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            await asyncio.wait_for(process.wait(), 60)


class Bench:
    def __init__(self, stack: Stack, http: aiohttp.ClientSession, db: Database) -> None:
        self.stack = stack
        self.http = http
        self.db = db

    async def tenant(self) -> tuple[str, dict[str, str]]:
        """An enterprise tenant (no limits) and its API key's headers."""
        async with self.http.post(
            "/api/tenants",
            json={"name": "bench", "plan": "enterprise"},
            headers={"Authorization": f"Bearer {self.stack.admin_token}"},
        ) as response:
            created = await response.json()
        return created["tenant"]["id"], {"Authorization": f"Bearer {created['admin_key']}"}

    async def workflow(self, auth: dict[str, str], steps: list[dict[str, Any]]) -> str:
        async with self.http.post(
            "/api/workflows", json={"name": "bench", "steps": steps}, headers=auth
        ) as response:
            return str((await response.json())["workflow"]["id"])

    async def webhook(self, auth: dict[str, str], workflow: str) -> str:
        async with self.http.post(
            "/api/webhook-endpoints", json={"workflow_id": workflow, "name": "b"}, headers=auth
        ) as response:
            url: str = (await response.json())["webhook_endpoint"]["url"]
        return "/api/" + url.split("/api/", 1)[1]

    async def queue(self, tenant: str, workflow: str, runs: int) -> None:
        """`runs` queued runs, each with its own input, in one statement."""
        async with self.db.tenant(tenant) as session:
            await session.execute(
                text(
                    "INSERT INTO execution.runs (id, tenant_id, workflow_id, workflow_version, "
                    "status, max_attempts, payload, content_type) "
                    "SELECT gen_random_uuid(), :t, :w, 1, 'queued', 3, convert_to(json_build_"
                    "object('id', 'order-' || i, 'items', json_build_array(json_build_object("
                    "'price', i)))::text, 'UTF8'), 'application/json' "
                    "FROM generate_series(1, :n) AS i"
                ),
                {"t": tenant, "w": workflow, "n": runs},
            )

    async def wait_done(self, tenant: str, workflow: str, runs: int) -> None:
        while True:
            async with self.db.tenant(tenant) as session:
                done = (
                    await session.execute(
                        text(
                            "SELECT count(*) FROM execution.runs WHERE workflow_id = :w "
                            "AND status NOT IN ('queued', 'running')"
                        ),
                        {"w": workflow},
                    )
                ).scalar_one()
            if done >= runs:
                return
            await asyncio.sleep(0.1)

    async def outcome(self, tenant: str, workflow: str) -> dict[str, Any]:
        async with self.db.tenant(tenant) as session:
            row = (
                await session.execute(
                    text(
                        "SELECT count(*) FILTER (WHERE status = 'succeeded'), count(*), "
                        "min(start_time), max(end_time) FROM execution.runs WHERE workflow_id = :w"
                    ),
                    {"w": workflow},
                )
            ).one()
        succeeded, total, first_start, last_end = row
        assert succeeded == total, f"{total - succeeded} of {total} runs did not succeed"
        return {"runs": total, "seconds": (last_end - first_start).total_seconds()}

    async def drain(self, steps: list[dict[str, Any]], runs: int) -> dict[str, Any]:
        """Runs/s of `runs` runs queued at once, from the first start to the last end."""
        tenant, auth = await self.tenant()
        workflow = await self.workflow(auth, steps)
        await self.queue(tenant, workflow, runs)
        before = _cpu(self.stack)
        await self.wait_done(tenant, workflow, runs)
        after = _cpu(self.stack)
        measured = await self.outcome(tenant, workflow)
        return {
            "runs": runs,
            "per_second": measured["runs"] / measured["seconds"],
            # Where a run's CPU goes: the workers (and their step processes), each service,
            # PostgreSQL (the benchmark's own polling included, a few ms a second).
            "cpu_ms_per_run": {
                name: round((after[name] - before.get(name, 0.0)) * 1000 / runs, 2)
                for name in after
                if after[name] - before.get(name, 0.0) > 0
            },
            "tenant": tenant,
            "workflow": workflow,
        }

    async def end_to_end(self, runs: int, concurrency: int) -> dict[str, float]:
        """Four-step runs triggered by `concurrency` webhook clients; each run is timed from
        its 202 to its end (queueing included: ingest outpaces the artifact step)."""
        path, tenant, workflow, _auth = await self.four_step_webhook()
        accepted: dict[str, float] = {}
        pending = iter(range(runs))

        async def client() -> None:
            for index in pending:
                async with self.http.post(path, json=_order(index)) as response:
                    assert response.status == 202, await response.text()
                    accepted[(await response.json())["run_id"]] = time.time()

        began = time.time()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        ingested = time.time()
        await self.wait_done(tenant, workflow, runs)
        async with self.db.tenant(tenant) as session:
            ends = {
                str(run_id): end.timestamp()
                for run_id, end in await session.execute(
                    text("SELECT id, end_time FROM execution.runs WHERE workflow_id = :w"),
                    {"w": workflow},
                )
            }
        return {
            "runs": runs,
            "ingest_per_second": runs / (ingested - began),
            "per_second": runs / (max(ends.values()) - began),
            **_percentiles([ends[run_id] - at for run_id, at in accepted.items()]),
        }

    async def one_at_a_time(self, runs: int) -> dict[str, float]:
        """Four-step runs one after another, each timed from its 202 to the `succeeded` event
        its event stream (GET /api/runs/{id}/events) delivers: the latency without a queue."""
        path, _tenant, _workflow, auth = await self.four_step_webhook()
        latencies = []
        for index in range(runs):
            async with self.http.post(path, json=_order(index)) as response:
                run_id = (await response.json())["run_id"]
            accepted = time.perf_counter()
            async with self.http.get(f"/api/runs/{run_id}/events", headers=auth) as response:
                async for line in response.content:
                    run = json.loads(line)["run"]
                    if run and run["status"] == "succeeded":
                        latencies.append(time.perf_counter() - accepted)
                        break
        return {"runs": runs, **_percentiles(latencies)}

    async def four_step_webhook(self) -> tuple[str, str, str, dict[str, str]]:
        """A new tenant's four-step workflow: its webhook path, the tenant, the workflow and
        the tenant's API key headers."""
        tenant, auth = await self.tenant()
        workflow = await self.workflow(auth, FOUR_STEPS)
        return await self.webhook(auth, workflow), tenant, workflow, auth


def _four_step(drained: dict[str, Any]) -> dict[str, Any]:
    return {
        "four_step_per_second": drained["per_second"],
        "four_step_cpu_ms_per_run": drained["cpu_ms_per_run"],
    }


def _order(index: int) -> dict[str, Any]:
    return {"id": f"order-{index}", "items": [{"price": index}]}


def _percentiles(seconds: list[float]) -> dict[str, float]:
    seconds = sorted(seconds)
    return {
        "p50_ms": statistics.median(seconds) * 1000,
        "p99_ms": seconds[max(0, int(len(seconds) * 0.99) - 1)] * 1000,
    }


async def _durable_updates(db: Database, run_id: str, count: int) -> float:
    """Transactions/s of one single-row UPDATE each (committed, so flushed to the WAL): what a
    worker that wrote one run per transaction could do at best."""
    began = time.perf_counter()
    for _ in range(count):
        async with db.system(SystemPath.RUN_QUEUE) as session:
            await session.execute(
                text("UPDATE execution.runs SET lease_expire_time = now() WHERE id = :r"),
                {"r": run_id},
            )
    return count / (time.perf_counter() - began)


async def _run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    settings = {
        "AIAS_WORKER_CONCURRENCY": str(args.concurrency),
        "AIAS_STEP_PROCESSES": str(args.step_processes),
        "AIAS_WORKER_CLAIM_BATCH": str(args.claim_batch),
        "AIAS_LOG_LEVEL": "WARNING",
    }
    # The suite's own worker steps aside: every figure comes from workers started here.
    stack.children["execution-worker"].process.send_signal(signal.SIGTERM)
    stack.children["execution-worker"].process.wait(timeout=60)
    db = Database(create_engine(stack.database.app_url, name="bench", max_connections=4))
    results: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(base_url=stack.gateway_url) as http:
            bench = Bench(stack, http, db)
            async with _workers(stack, 1, {**settings, "AIAS_WORKER_CLAIM_BATCH": "1"}):
                unbatched = await bench.drain(ONE_STEP, args.runs // 4)
            async with db.tenant(unbatched["tenant"]) as session:
                any_run = (
                    await session.execute(text("SELECT id FROM execution.runs LIMIT 1"))
                ).scalar_one()
            results["baseline"] = {
                "durable_update_transactions_per_second": await _durable_updates(db, any_run, 2000),
                "one_step_claim_batch_1_per_second": unbatched["per_second"],
            }
            for count in (1, 2):
                async with _workers(stack, count, settings):
                    results[f"workers_{count}"] = {
                        "one_step_per_second": (await bench.drain(ONE_STEP, args.runs))[
                            "per_second"
                        ],
                        "three_step_per_second": (
                            await bench.drain(FOUR_STEPS[:3], args.four_step_runs)
                        )["per_second"],
                        **_four_step(await bench.drain(FOUR_STEPS, args.four_step_runs)),
                        "four_step_webhooks": await bench.end_to_end(args.webhooks, 16),
                        "four_step_one_at_a_time": await bench.one_at_a_time(args.sequential),
                    }
    finally:
        await db.close()
    return {"settings": settings, "results": results}


def _report(measured: dict[str, Any]) -> None:
    results = measured["results"]
    print_machine(measured["machine"])
    print("worker settings: " + ", ".join(f"{k}={v}" for k, v in measured["settings"].items()))
    baseline = results["baseline"]
    print(
        f"baseline: {baseline['durable_update_transactions_per_second']:,.0f} single-row "
        "UPDATE transactions/s; 1 worker claiming one run per statement (claim batch 1): "
        f"{baseline['one_step_claim_batch_1_per_second']:,.0f} one-step runs/s"
    )
    for count in (1, 2):
        figures = results[f"workers_{count}"]
        hooks, alone = figures["four_step_webhooks"], figures["four_step_one_at_a_time"]
        print(
            f"{count} worker(s), runs drained from the queue: one-step "
            f"{figures['one_step_per_second']:,.0f}/s, three-step (no artifact) "
            f"{figures['three_step_per_second']:,.0f}/s, four-step "
            f"{figures['four_step_per_second']:,.0f}/s"
        )
        print(
            f"{count} worker(s), CPU ms per four-step run drained, by process: "
            f"{figures['four_step_cpu_ms_per_run']}"
        )
        print(
            f"{count} worker(s), four-step runs by webhook: {hooks['per_second']:,.0f} "
            f"completed/s (webhooks accepted at {hooks['ingest_per_second']:,.0f}/s), 202 -> "
            f"succeeded p50 {hooks['p50_ms']:,.0f} ms, p99 {hooks['p99_ms']:,.0f} ms; one at a "
            f"time: p50 {alone['p50_ms']:,.0f} ms, p99 {alone['p99_ms']:,.0f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000, help="one-step runs per drain")
    parser.add_argument("--four-step-runs", type=int, default=1_000, help="per drain")
    parser.add_argument("--webhooks", type=int, default=1_000)
    parser.add_argument("--sequential", type=int, default=50, help="runs timed one at a time")
    parser.add_argument("--concurrency", type=int, default=16, help="AIAS_WORKER_CONCURRENCY")
    parser.add_argument("--claim-batch", type=int, default=32, help="AIAS_WORKER_CLAIM_BATCH")
    parser.add_argument("--step-processes", type=int, default=4, help="AIAS_STEP_PROCESSES")
    parser.add_argument("--output", type=Path, default=Path("build/bench/worker_throughput.json"))
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
            measured = asyncio.run(_run(stack, args))
        finally:
            stack.stop()
            stack.database.stop()
    measured["machine"] = {**machine(), "date": datetime.now().isoformat(timespec="seconds")}
    _report(measured)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(measured, indent=2))
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
