"""The running workers export what the alert rules read: finished runs and the queue."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from aias.core.launcher import Stack
from tests.e2e.client import ORDER, expect, new_endpoint, new_tenant, wait_for_run


async def _worker_metrics(stack: Stack) -> dict[tuple[str, str], float]:
    port = stack.children["execution-worker"].metrics_port
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    return {
        (sample.name, sample.labels.get("status", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_a_finished_run_is_counted_and_the_queue_is_measured(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    tenant = await new_tenant(http)
    _endpoint, secret = await new_endpoint(http, tenant)
    before = (await _worker_metrics(stack)).get(("aias_runs_finished_total", "succeeded"), 0.0)

    async with http.post(f"/api/webhooks/{tenant.id}/{secret}", json=ORDER) as response:
        run = await wait_for_run(http, tenant, (await expect(response, 202))["run_id"])
    assert run["status"] == "succeeded"

    after = await _worker_metrics(stack)
    assert after[("aias_runs_finished_total", "succeeded")] == before + 1
    assert ("aias_run_queue_depth", "") in after
    assert after[("aias_run_queue_oldest_age_seconds", "")] >= 0
