"""What webhook ingest's speed must not break, checked under a burst (no timing is asserted).

Runs that arrive together share one transaction (the group commit); these tests hold it to
"202 means committed": every accepted run id is in the database, none twice, a repeated
idempotency key is one run, and a monthly run limit admits exactly its number.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from aias.core.launcher import Stack
from tests.e2e.client import OPERATOR, Tenant, expect, new_tenant
from tests.e2e.database import superuser

CONNECTIONS = 64
BURST_SECONDS = 5.0
# Every KEY_EVERY-th request repeats one of KEYS idempotency keys.
KEY_EVERY = 10
KEYS = 20
ONE_STEP = {
    "name": "burst",
    "steps": [{"id": "shape", "type": "transform", "config": {"expression": "{id: id}"}}],
}


def _stored_runs(stack: Stack, tenant_id: str) -> list[tuple[str, str | None]]:
    with superuser(stack.database) as engine, engine.connect() as connection:
        rows = connection.execute(
            text("SELECT id, idempotency_key FROM execution.runs WHERE tenant_id = :tenant"),
            {"tenant": tenant_id},
        )
        return [(str(run_id), key) for run_id, key in rows]


async def _endpoint_path(http: aiohttp.ClientSession, tenant: Tenant) -> str:
    async with http.post("/api/workflows", json=ONE_STEP, headers=tenant.auth) as response:
        workflow = (await expect(response, 201))["workflow"]
    async with http.post(
        "/api/webhook-endpoints",
        json={"workflow_id": workflow["id"], "name": "burst"},
        headers=tenant.auth,
    ) as response:
        created = await expect(response, 201)
    return f"/api/webhooks/{tenant.id}/{created['secret']}"


async def _burst(
    stack: Stack, path: str, *, seconds: float = 0.0, total: int = 0, key_prefix: str = ""
) -> list[tuple[int, dict[str, Any], str | None]]:
    """CONNECTIONS clients posting back to back, for `seconds` or until `total` are sent.

    Each answer is (status, body, the idempotency key sent or None).
    """
    answers: list[tuple[int, dict[str, Any], str | None]] = []
    deadline = time.monotonic() + seconds
    sent = 0

    async def client(http: aiohttp.ClientSession) -> None:
        nonlocal sent
        while (time.monotonic() < deadline) if seconds else (sent < total):
            sent += 1
            key = (
                f"{key_prefix}{sent // KEY_EVERY % KEYS}"
                if key_prefix and sent % KEY_EVERY == 0
                else None
            )
            headers = {"Idempotency-Key": key} if key else {}
            # A repeated key comes with the same body (another body under it would be 422).
            body = {"id": key or sent}
            async with http.post(path, json=body, headers=headers) as response:
                answers.append((response.status, await response.json(), key))

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(base_url=stack.gateway_url, connector=connector) as http:
        await asyncio.gather(*(client(http) for _ in range(CONNECTIONS)))
    return answers


async def test_every_202_of_a_burst_is_one_committed_run(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    tenant = await new_tenant(http, plan="enterprise")
    path = await _endpoint_path(http, tenant)
    prefix = f"burst-{uuid.uuid4().hex[:8]}-"

    answers = await _burst(stack, path, seconds=BURST_SECONDS, key_prefix=prefix)

    statuses = collections.Counter(status for status, _, _ in answers)
    assert statuses == {202: len(answers)}, statuses
    accepted = [body["run_id"] for _, body, _ in answers]
    stored = _stored_runs(stack, tenant.id)
    stored_ids = [run_id for run_id, _ in stored]
    assert len(stored_ids) == len(set(stored_ids)), "a run is stored twice"
    assert set(accepted) == set(stored_ids), "every 202's run is stored, and nothing else"
    # A repeated key answers with its one run: one run per key, and the rest one run each.
    by_key: dict[str, set[str]] = collections.defaultdict(set)
    for _, body, key in answers:
        if key is not None:
            by_key[key].add(body["run_id"])
    assert len(by_key) == KEYS
    assert all(len(runs) == 1 for runs in by_key.values()), by_key
    unkeyed = sum(1 for _, _, key in answers if key is None)
    assert len(stored_ids) == unkeyed + len(by_key)
    assert {key for _, key in stored if key} == set(by_key)


async def test_a_monthly_limit_of_n_admits_exactly_n_of_a_burst(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    limit = 150
    tenant = await new_tenant(http, plan="enterprise")
    async with http.patch(
        f"/api/tenants/{tenant.id}",
        json={"limit_overrides": {"runs_per_month": limit}},
        headers=OPERATOR,
    ) as response:
        await expect(response, 200)
    path = await _endpoint_path(http, tenant)

    answers = await _burst(stack, path, total=4 * limit)

    statuses = collections.Counter(status for status, _, _ in answers)
    assert statuses == {202: limit, 429: 3 * limit}, statuses
    refused = {body["error"]["reason"] for status, body, _ in answers if status == 429}
    assert refused == {"QUOTA_EXCEEDED"}
    stored = _stored_runs(stack, tenant.id)
    assert sorted(run_id for run_id, _ in stored) == sorted(
        body["run_id"] for status, body, _ in answers if status == 202
    )
    async with http.get("/api/tenants/me", headers=tenant.auth) as response:
        me = await expect(response, 200)
    assert me["usage"]["runs"] == limit


async def _handled(stack: Stack) -> collections.Counter[tuple[str, str]]:
    """The execution service's RPCs answered so far, by (method, code), from its metrics."""
    execution = stack.children["execution"]
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{execution.metrics_port}/metrics") as response,
    ):
        exposition = await response.text()
    return collections.Counter(
        {
            (sample.labels["grpc_method"], sample.labels["grpc_code"]): int(sample.value)
            for family in text_string_to_metric_families(exposition)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total"
        }
    )


async def test_deliveries_that_arrive_together_share_calls_and_keep_their_own_answers(
    http: aiohttp.ClientSession, stack: Stack
) -> None:
    tenant = await new_tenant(http, plan="enterprise")
    path = await _endpoint_path(http, tenant)
    wrong = path.rsplit("/", 1)[0] + "/" + "x" * 43
    # Good and bad deliveries interleaved, all at once: a batch mixes them.
    paths = [wrong if n % 5 == 4 else path for n in range(60)]
    before = await _handled(stack)

    async def post(target: str, n: int) -> tuple[int, dict[str, Any], str]:
        async with http.post(target, json={"id": n}) as response:
            return response.status, await response.json(), response.headers["X-Request-ID"]

    answers = await asyncio.gather(*(post(target, n) for n, target in enumerate(paths)))

    after = await _handled(stack)
    for target, (status, body, request_id) in zip(paths, answers, strict=True):
        if target == path:
            assert status == 202, body
            assert body["status"] == "queued"
        else:
            # The error each would get alone: its status, reason and its own request id.
            assert status == 404, body
            assert body["error"]["reason"] == "WEBHOOK_ENDPOINT_NOT_FOUND"
            assert body["error"]["request_id"] == request_id
    accepted = sorted(body["run_id"] for status, body, _ in answers if status == 202)
    assert sorted(run_id for run_id, _ in _stored_runs(stack, tenant.id)) == accepted
    assert len(accepted) == 48
    # Each delivery is measured as its own TriggerWebhook; the calls that carried them were
    # fewer than the deliveries.
    assert after[("TriggerWebhook", "OK")] - before[("TriggerWebhook", "OK")] == 48
    assert after[("TriggerWebhook", "NOT_FOUND")] - before[("TriggerWebhook", "NOT_FOUND")] == 12
    batches = after[("TriggerWebhooks", "OK")] - before[("TriggerWebhooks", "OK")]
    assert 1 <= batches < 60
    # Execution logged each refusal under the request id of the HTTP request it answered.
    refused = {request_id for status, _, request_id in answers if status == 404}
    assert stack.log_dir is not None
    deadline = time.monotonic() + 10
    while (logged := _refusals_logged(stack.log_dir / "execution.log")) < refused:
        assert time.monotonic() < deadline, refused - logged
        await asyncio.sleep(0.1)


def _refusals_logged(log: Path) -> set[str]:
    found = set()
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("method", "").endswith("/TriggerWebhook") and record["code"] != "OK":
                found.add(record.get("request_id", ""))
    return found
