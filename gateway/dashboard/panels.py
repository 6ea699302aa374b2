"""The diagnostics page as a list of panels: each one template fed by its RPCs, all loaded at once.

A panel whose backend fails or is slow says so in its place; the page is still served. A new
panel is one entry here and one template.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from yarl import URL

from aias.core.destinations import shown_url
from aias.core.jsonmap import message_to_json
from aias.core.version import package_version
from aias.gateway.dashboard.client import Reader
from aias.gateway.dashboard.render import parse_time
from aias.gateway.errors import GatewayError

log = logging.getLogger(__name__)

RECENT_RUNS = 10
RECENT_DELIVERIES = 10
RECENT_ALERTS = 10


@dataclass(frozen=True)
class Panel:
    """A part of the diagnostics page: its key in the JSON, its heading and where its data is."""

    name: str
    title: str
    load: Callable[[Reader], Awaitable[dict[str, Any]]]

    @property
    def template(self) -> str:
        return f"panels/{self.name}.html"


@dataclass(frozen=True)
class Loaded:
    """A panel with its data, or with why it has none."""

    panel: Panel
    data: dict[str, Any] | None
    error: str

    def as_json(self) -> dict[str, Any]:
        return {
            "title": self.panel.title,
            "available": self.data is not None,
            "data": self.data,
            "error": self.error or None,
        }


async def load_panels(panels: tuple[Panel, ...], reader: Reader) -> list[Loaded]:
    """Every panel at once; each call has the reader's deadline, so a slow backend costs that."""
    return list(await asyncio.gather(*(_load(panel, reader) for panel in panels)))


async def _load(panel: Panel, reader: Reader) -> Loaded:
    try:
        return Loaded(panel, await panel.load(reader), "")
    except GatewayError as error:
        log.warning(
            "diagnostics panel unavailable",
            extra={"panel": panel.name, "reason": error.reason, "detail": error.detail},
        )
        return Loaded(panel, None, error.message)


def usage_bar(name: str, unit: str, used: int, limit: int | None) -> dict[str, Any]:
    """One metered usage against its limit; `percent` is None for no limit, at most 100."""
    percent = None if limit is None else 100.0 if limit <= 0 else min(100.0, used * 100 / limit)
    return {"name": name, "unit": unit, "used": used, "limit": limit, "percent": percent}


async def _services(reader: Reader) -> dict[str, Any]:
    checked = await reader.health()
    rows = [{"name": "gateway", "state": "serving", "version": package_version()}]
    rows += [
        {"name": name, "state": found.state.lower(), "version": found.version}
        for name, found in checked.items()
    ]
    return {"services": rows}


async def _plan(reader: Reader) -> dict[str, Any]:
    reply = await reader.current_tenant()
    limits, usage = reply.limits, reply.usage
    data: dict[str, Any] = message_to_json(reply)
    data["usage_bars"] = [
        usage_bar(
            "Runs this period",
            "count",
            usage.runs,
            limits.runs_per_month if limits.HasField("runs_per_month") else None,
        ),
        usage_bar(
            "Artifact storage",
            "bytes",
            usage.artifact_storage_bytes,
            limits.artifact_storage_bytes if limits.HasField("artifact_storage_bytes") else None,
        ),
    ]
    return data


async def _billing(reader: Reader) -> dict[str, Any]:
    return {"account": message_to_json(await reader.billing_account())}


async def _run_stats(reader: Reader) -> dict[str, Any]:
    data: dict[str, Any] = message_to_json(await reader.run_stats())
    hour = {row["status"]: row["count"] for row in data["last_hour"]}
    data["by_status"] = [
        {"status": row["status"], "last_hour": hour.get(row["status"], 0), "last_day": row["count"]}
        for row in data["last_day"]
    ]
    oldest, read = parse_time(data["oldest_queued_time"]), parse_time(data["read_time"])
    data["oldest_queued_age_seconds"] = (read - oldest).total_seconds() if oldest and read else None
    return data


async def _recent_runs(reader: Reader) -> dict[str, Any]:
    page = await reader.runs("", RECENT_RUNS, "")
    return {"runs": [message_to_json(run) for run in page.runs]}


async def _webhook_endpoints(reader: Reader) -> dict[str, Any]:
    return {"webhook_endpoints": [message_to_json(e) for e in await reader.webhook_endpoints()]}


async def _webhook_deliveries(reader: Reader) -> dict[str, Any]:
    deliveries, endpoints = await asyncio.gather(
        reader.webhook_deliveries(RECENT_DELIVERIES), reader.webhook_endpoints()
    )
    # Deleted endpoints are not listed; their deliveries show the endpoint's id.
    names = {endpoint.id: endpoint.name for endpoint in endpoints}
    return {
        "webhook_deliveries": [
            {**message_to_json(d), "endpoint_name": names.get(d.endpoint_id, "")}
            for d in deliveries
        ]
    }


def destination_label(url: str) -> str:
    """Where a destination points, as text rather than a link: host and path, without the
    scheme and the query (which may hold a token)."""
    return shown_url(URL(url)).split("://", 1)[-1]


async def _alerts(reader: Reader) -> dict[str, Any]:
    destinations, deliveries = await asyncio.gather(
        reader.alert_destinations(), reader.alert_deliveries(RECENT_ALERTS)
    )
    labels = {d.id: destination_label(d.url) for d in destinations}
    return {
        "alert_destinations": [{**message_to_json(d), "label": labels[d.id]} for d in destinations],
        "alert_deliveries": [
            {**message_to_json(d), "destination_label": labels.get(d.destination_id, "")}
            for d in deliveries
        ],
    }


# In page order.
PANELS: tuple[Panel, ...] = (
    Panel("services", "Services", _services),
    Panel("plan", "Plan, limits and usage", _plan),
    Panel("billing", "Billing", _billing),
    Panel("run_stats", "Runs by status, queue and latest failures", _run_stats),
    Panel("recent_runs", "Recent runs", _recent_runs),
    Panel("webhook_endpoints", "Webhook endpoints", _webhook_endpoints),
    Panel("alerts", "Alerts", _alerts),
    Panel("webhook_deliveries", "Webhook deliveries", _webhook_deliveries),
)
