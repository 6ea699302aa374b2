"""Scale-out under faults: two gateways, two execution processes and three workers share one
database and take webhooks through both gateways while one worker is killed (SIGKILL) and one
worker and one gateway are stopped (SIGTERM).

Afterwards every 202 is one run, every run ended once, no artifact is stored twice, and the
stopped gateway said it was not ready before it stopped and answered every request it received.
Clients act as clients of two gateways do: a webhook a gateway did not receive is sent to the
other one with the same idempotency key.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import itertools
import json
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, text

from aias.core.launcher import Child, Stack
from tests.e2e.client import Tenant, expect, new_tenant
from tests.e2e.conftest import own_suite
from tests.e2e.database import superuser
from tests.remote_fake import Remote

REPLICAS = {"gateway": 2, "execution": 2, "execution-worker": 3}
# Short, so the killed worker's runs are taken over within the test.
LEASE_SECONDS = 3
# Webhook clients, each pausing between its webhooks: a few dozen webhooks a second.
CLIENTS = 6
PAUSE_SECONDS = 0.1
# Webhooks in flight at the stopped gateway when it is told to stop, their bodies half sent.
HELD = 3
# The load ends once this many webhooks the stopped gateway refused were sent to the other one.
RETRIED = 3
# Each run waits this long on its HTTP call, so a worker is always in the middle of some runs.
REMOTE_DELAY_MS = 200
STEPS = ["call", "keep", "save"]


def _workflow(remote: str) -> dict[str, Any]:
    """Call an endpoint with the order, keep what was sent, store it as an artifact."""
    return {
        "name": "scale-out",
        "steps": [
            {
                "id": "call",
                "type": "http_request",
                "config": {
                    "method": "POST",
                    "url": f"{remote}/delay/{REMOTE_DELAY_MS}",
                    "body": {"json": "{order: id, total: sum(items[].price)}"},
                    "timeout_seconds": 10,
                },
            },
            {"id": "keep", "type": "transform", "config": {"expression": "body.body"}},
            {"id": "save", "type": "artifact", "config": {"name": "order.txt", "format": "text"}},
        ],
    }


def _order(number: int) -> dict[str, Any]:
    return {"id": f"order-{number}", "items": [{"price": number}, {"price": 0.5}]}


def _artifact_sha256(number: int) -> str:
    """What run `number` stores: the canonical JSON its call sent."""
    sent = json.dumps(
        {"order": f"order-{number}", "total": number + 0.5}, separators=(",", ":"), sort_keys=True
    )
    return hashlib.sha256(sent.encode()).hexdigest()


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The suite with replicas, on its own database (no other suite's worker takes its runs)."""
    with own_suite(
        tmp_path_factory.mktemp("scale-out"),
        {
            "AIAS_WORKER_LEASE_SECONDS": str(LEASE_SECONDS),
            "AIAS_WORKER_POLL_SECONDS": "0.5",
            "AIAS_WORKER_CONCURRENCY": "8",
            "AIAS_STEP_PROCESSES": "2",
            "AIAS_GATEWAY_DRAIN_DELAY_SECONDS": "1",
            # The endpoint the runs call listens on 127.0.0.1.
            "AIAS_HTTP_STEP_ALLOW": "127.0.0.1",
        },
        REPLICAS,
    ) as stack:
        yield stack


@dataclass
class Delivery:
    """One webhook, and what came of each attempt to deliver it: `(gateway, outcome)`.

    Outcomes: the HTTP status; `refused` (no connection: the gateway never saw it); `dropped`
    (the connection ended before the gateway asked for the body with `100 Continue`, so it made
    no run); `cut` (the connection ended after that: a request the gateway received went
    unanswered).
    """

    number: int
    key: str
    attempts: list[tuple[int, str]] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)
    # Set once a gateway has asked for the body: the request is in its hands.
    received: asyncio.Event = field(default_factory=asyncio.Event)


class Load:
    """Webhooks through both gateways, each with its own idempotency key; one a gateway did not
    receive goes to the other with the same key (`dropped` ones too: the key makes a repeat of a
    delivery that did arrive harmless)."""

    def __init__(self, gateways: list[aiohttp.ClientSession], path: str) -> None:
        self._gateways = gateways
        self._path = path
        self._numbers = itertools.count(1)
        self._prefix = f"scale-{uuid.uuid4().hex[:8]}-"
        self.deliveries: list[Delivery] = []

    def new(self) -> Delivery:
        number = next(self._numbers)
        delivery = Delivery(number, f"{self._prefix}{number}")
        self.deliveries.append(delivery)
        return delivery

    async def send(
        self, delivery: Delivery, first: int, release: asyncio.Event | None = None
    ) -> None:
        """Up to four attempts, alternating gateways from `first`. With `release`, half the body
        is sent, the rest once it is set, and there is no second attempt."""
        body = json.dumps(_order(delivery.number)).encode()
        for attempt in range(4):
            gateway = (first + attempt) % len(self._gateways)
            asked = False

            async def chunks() -> AsyncIterator[bytes]:
                # aiohttp asks for the body only after the gateway's `100 Continue`.
                nonlocal asked
                asked = True
                delivery.received.set()
                if release is None:
                    yield body
                    return
                yield body[: len(body) // 2]
                await release.wait()
                yield body[len(body) // 2 :]

            try:
                async with self._gateways[gateway].post(
                    self._path,
                    data=chunks(),
                    expect100=True,
                    headers={
                        "Idempotency-Key": delivery.key,
                        "Content-Type": "application/json",
                        "Content-Length": str(len(body)),
                    },
                ) as response:
                    answer = await response.json()
                    status = response.status
            except aiohttp.ClientConnectorError:
                delivery.attempts.append((gateway, "refused"))
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
                delivery.attempts.append((gateway, "cut" if asked else "dropped"))
            else:
                delivery.attempts.append((gateway, str(status)))
                if status == 202:
                    delivery.run_ids.add(answer["run_id"])
                return
            if release is not None:
                return

    async def run(self, stop: asyncio.Event) -> None:
        async def client(number: int) -> None:
            for turn in itertools.count(number):
                if stop.is_set():
                    return
                await self.send(self.new(), first=turn % len(self._gateways))
                await asyncio.sleep(PAUSE_SECONDS)

        await asyncio.gather(*(client(number) for number in range(CLIENTS)))

    def retried_after_refusal(self, gateway: int) -> int:
        """Webhooks `gateway` refused that another gateway then accepted."""
        return sum(
            1
            for delivery in self.deliveries
            if (gateway, "refused") in delivery.attempts and delivery.attempts[-1][1] == "202"
        )


async def _watch_readiness(url: str, states: list[str], stop: asyncio.Event) -> None:
    """Asks `/readyz` on a new connection every 20 ms, as a load balancer's probe does, and
    records each change of its answer (`unreachable` when no answer comes)."""
    async with aiohttp.ClientSession(
        url,
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=5),
    ) as probe:
        while not stop.is_set():
            try:
                async with probe.get("/readyz") as response:
                    state = str((await response.json())["status"])
            except aiohttp.ClientConnectionError:
                state = "unreachable"
            if not states or states[-1] != state:
                states.append(state)
            await asyncio.sleep(0.02)


async def _until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


async def _until_db(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """`_until` for a condition that reads the database (off the event loop, which the load
    clients share)."""
    for _ in range(int(seconds / 0.05)):
        if await asyncio.to_thread(condition):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


def _leased(engine: Engine, tenant: str, worker: Child, *, mid_run: bool) -> list[Any]:
    """The tenant's runs under `worker`'s lease (its id holds its pid: host:pid:random); with
    `mid_run`, only those whose current attempt has logged a step."""
    query = (
        "SELECT r.id, r.attempt FROM execution.runs r WHERE r.tenant_id = :tenant "
        "AND r.status = 'running' AND r.lease_owner LIKE :owner"
    )
    if mid_run:
        query += (
            " AND EXISTS (SELECT 1 FROM execution.step_logs l "
            "WHERE l.run_id = r.id AND l.attempt = r.attempt)"
        )
    with engine.connect() as connection:
        found = connection.execute(
            text(query), {"tenant": tenant, "owner": f"%:{worker.process.pid}:%"}
        )
        return list(found.all())


def _open_runs(engine: Engine, tenant: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                text(
                    "SELECT count(*) FROM execution.runs WHERE tenant_id = :tenant "
                    "AND status IN ('queued', 'running')"
                ),
                {"tenant": tenant},
            ).scalar_one()
        )


def _finished(log_dir: Path, tenant: str) -> collections.Counter[str]:
    """How often the workers' logs say each of the tenant's runs finished."""
    return collections.Counter(
        entry["run_id"]
        for path in log_dir.glob("execution-worker*.log")
        for line in path.read_text(errors="replace").splitlines()
        if line.startswith("{")
        and (entry := json.loads(line))["message"] == "run finished"
        and entry.get("tenant_id") == tenant
    )


def _files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*") if path.is_file())


async def _endpoint(http: aiohttp.ClientSession, tenant: Tenant, remote: str) -> str:
    async with http.post("/api/workflows", json=_workflow(remote), headers=tenant.auth) as response:
        workflow = (await expect(response, 201))["workflow"]
    async with http.post(
        "/api/webhook-endpoints",
        json={"workflow_id": workflow["id"], "name": "scale-out"},
        headers=tenant.auth,
    ) as response:
        created = await expect(response, 201)
    return f"/api/webhooks/{tenant.id}/{created['secret']}"


async def _webhooks_committed(execution: Child) -> float:
    """TriggerWebhook calls an execution process answered OK (a 202 each), from its metrics."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{execution.metrics_port}/metrics") as response,
    ):
        exposition = await response.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total"
        and sample.labels["grpc_method"] == "TriggerWebhook"
        and sample.labels["grpc_code"] == "OK"
    )


async def test_webhooks_through_two_gateways_survive_killed_and_stopped_processes(
    scaled: Stack,
) -> None:
    stack = scaled
    gateway_b = stack.instances("gateway")[1]
    _survivor, victim, stopped = stack.instances("execution-worker")
    timeout = aiohttp.ClientTimeout(total=30)
    with superuser(stack.database) as engine:
        async with (
            Remote().running() as remote,
            aiohttp.ClientSession(stack.gateway_urls[0], timeout=timeout) as http_a,
            aiohttp.ClientSession(stack.gateway_urls[1], timeout=timeout) as http_b,
        ):
            tenant = await new_tenant(http_a, "enterprise")
            load = Load([http_a, http_b], await _endpoint(http_a, tenant, remote.url))
            stop_load = asyncio.Event()
            loading = asyncio.create_task(load.run(stop_load))
            # Webhooks gateway B is in the middle of receiving when it is told to stop.
            release = asyncio.Event()
            held = [load.new() for _ in range(HELD)]
            holding = [asyncio.create_task(load.send(d, first=1, release=release)) for d in held]
            await _until(lambda: all(d.received.is_set() for d in held), 30, "held webhooks")

            # A worker killed in the middle of runs: its leases stay behind until they expire.
            await _until_db(
                lambda: len(_leased(engine, tenant.id, victim, mid_run=True)) >= 2,
                30,
                "the victim in the middle of two runs",
            )
            victim.process.kill()
            victim.process.wait()
            orphaned = dict(
                await asyncio.to_thread(_leased, engine, tenant.id, victim, mid_run=False)
            )
            assert orphaned, "the killed worker held runs"

            # A worker stopped in the middle of runs: it finishes (or releases) them and exits.
            await _until_db(
                lambda: bool(_leased(engine, tenant.id, stopped, mid_run=True)),
                30,
                "the stopped worker in the middle of a run",
            )
            stopped.process.send_signal(signal.SIGTERM)

            # A gateway stopped while it receives webhooks, its readiness watched as a balancer
            # watches it.
            states: list[str] = []
            stop_watching = asyncio.Event()
            watching = asyncio.create_task(
                _watch_readiness(stack.gateway_urls[1], states, stop_watching)
            )
            await _until(lambda: states == ["ready"], 10, "gateway B ready")
            gateway_b.process.send_signal(signal.SIGTERM)
            await _until(lambda: "unreachable" in states, 30, "gateway B refusing connections")
            # Its listener is closed; the webhooks it had received finish now.
            release.set()
            await asyncio.gather(*holding)
            gateway_b_exit = await asyncio.to_thread(gateway_b.process.wait, 30)
            stop_watching.set()
            await watching

            await _until(
                lambda: load.retried_after_refusal(1) >= RETRIED,
                30,
                "webhooks gateway B refused sent to gateway A",
            )
            stop_load.set()
            await loading
            stopped_exit = await asyncio.to_thread(stopped.process.wait, 30)
            await _until_db(lambda: _open_runs(engine, tenant.id) == 0, 60, "every run ended")
            committed = [await _webhooks_committed(e) for e in stack.instances("execution")]

        with engine.connect() as connection:
            runs = connection.execute(
                text(
                    "SELECT id, idempotency_key, status, attempt, max_attempts, end_time "
                    "FROM execution.runs WHERE tenant_id = :tenant"
                ),
                {"tenant": tenant.id},
            ).all()
            logs = connection.execute(
                text(
                    "SELECT run_id, attempt, step_index, step_id, status FROM execution.step_logs "
                    "WHERE tenant_id = :tenant ORDER BY run_id, attempt, step_index"
                ),
                {"tenant": tenant.id},
            ).all()
            artifacts = connection.execute(
                text(
                    "SELECT run_id, step_id, name, sha256 FROM artifacts.artifacts "
                    "WHERE tenant_id = :tenant"
                ),
                {"tenant": tenant.id},
            ).all()
            blobs = connection.execute(
                text(
                    "SELECT refcount, content IS NOT NULL AS in_row FROM artifacts.blobs "
                    "WHERE tenant_id = :tenant"
                ),
                {"tenant": tenant.id},
            ).all()

    deliveries = load.deliveries
    outcomes = collections.Counter(outcome for d in deliveries for _, outcome in d.attempts)
    # No request a gateway had received went unanswered, and none was refused otherwise.
    assert set(outcomes) <= {"202", "refused", "dropped"}, outcomes
    # Every webhook was accepted once, at one gateway or the other, with one run.
    assert all(d.attempts[-1][1] == "202" and len(d.run_ids) == 1 for d in deliveries), [
        d for d in deliveries if d.attempts[-1][1] != "202" or len(d.run_ids) != 1
    ]
    accepted_by = collections.Counter(d.attempts[-1][0] for d in deliveries)
    assert set(accepted_by) == {0, 1}, "both gateways accepted webhooks"
    # The webhooks in flight at gateway B's stop were answered by it.
    assert [d.attempts for d in held] == [[(1, "202")]] * HELD
    # Gateway B: ready, then not ready while it still accepted, then gone; exit code 0.
    assert states == ["ready", "draining", "unreachable"]
    assert gateway_b_exit == 0
    assert stopped_exit == 0
    # Both execution processes committed webhooks, one commit per 202.
    assert all(count > 0 for count in committed), committed
    assert sum(committed) == len(deliveries)

    # Every 202 is exactly one run, found by its idempotency key and its run id.
    stored = {run.idempotency_key: str(run.id) for run in runs}
    assert len(runs) == len(stored) == len(deliveries)
    assert stored == {d.key: next(iter(d.run_ids)) for d in deliveries}
    # Every run ended once, as succeeded, within its attempts.
    assert {run.status for run in runs} == {"succeeded"}
    assert all(run.end_time is not None and run.attempt <= run.max_attempts for run in runs)
    # The killed worker's runs were taken over after its leases expired, as new attempts.
    attempts = {run.id: run.attempt for run in runs}
    assert all(attempts[run_id] > attempt for run_id, attempt in orphaned.items()), orphaned
    # No attempt logged a step twice, and the attempt that finished each run logged every step
    # once.
    assert max(collections.Counter((r.run_id, r.attempt, r.step_index) for r in logs).values()) == 1
    final: dict[uuid.UUID, list[tuple[str, str]]] = collections.defaultdict(list)
    for row in logs:
        if row.attempt == attempts[row.run_id]:
            final[row.run_id].append((row.step_id, row.status))
    assert final == {run.id: [(step, "succeeded") for step in STEPS] for run in runs}
    # No run was recorded as finished by two workers.
    finished = _finished(stack.data_dir / "logs", tenant.id)
    assert max(finished.values()) == 1
    # One artifact per run, with the bytes its order gives, and one blob each.
    numbers = {stored[d.key]: d.number for d in deliveries}
    assert sorted(str(a.run_id) for a in artifacts) == sorted(numbers)
    assert {str(a.run_id): (a.step_id, a.name, a.sha256) for a in artifacts} == {
        run_id: ("save", "order.txt", _artifact_sha256(number))
        for run_id, number in numbers.items()
    }
    # One blob per artifact, each small enough to be kept in its database row: no file.
    assert sorted(blobs) == [(1, True)] * len(runs)
    assert _files(stack.data_dir / "artifacts" / tenant.id / "sha256") == 0

    # The rest stops cleanly; the killed worker stays dead (no supervisor restarts it here).
    codes = stack.stop()
    assert codes == {**dict.fromkeys(codes, 0), victim.name: -9}
