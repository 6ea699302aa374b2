"""The alert sender: claims due alerts of every tenant, signs and posts them, records each try."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry, Counter

from aias.core import signing
from aias.core.db import Database, SystemPath, follow_notifications
from aias.core.outbound import OutboundClient, OutboundError
from aias.core.version import package_version
from aias.services.execution.alerts.domain import (
    MAX_RESPONSE_BYTES,
    DeliveryState,
    RetrySchedule,
    answer_error,
    body,
    delivered,
)
from aias.services.execution.alerts.models import (
    AlertAttemptRow,
    AlertDestinationRow,
    AlertEventRow,
)
from aias.services.execution.alerts.repository import AlertRepository, OutboxRepository

log = logging.getLogger(__name__)

CHANNEL = "aias_alert_events"
# How long a claim keeps other senders off an alert beyond the attempt's own time limit.
LEASE_MARGIN = timedelta(seconds=30)
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 1_000


@dataclass(frozen=True)
class SenderConfig:
    schedule: RetrySchedule = field(default_factory=RetrySchedule)
    # Alerts one sender claims and posts at once.
    batch: int = 16
    # How often a sender looks for due alerts besides being woken by new ones (retries).
    poll_interval: float = 2.0
    # The longest one attempt may take, connecting and the answer included.
    timeout: float = 10.0
    # Delivered and failed alerts are deleted this long after they were raised.
    kept: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Attempt:
    start_time: datetime
    http_status: int
    error: str
    duration_ms: int


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._attempts = Counter(
            "aias_alert_attempts",
            "Alert delivery attempts this sender made, by event type and what came of the alert: "
            "delivered, retrying or failed (given up).",
            ["event_type", "outcome"],
            registry=registry,
        )

    def attempted(self, event_type: str, outcome: str) -> None:
        self._attempts.labels(event_type, outcome).inc()


class AlertSender:
    """Sends alerts until stopped, woken by new ones (LISTEN) and by a poll for retries.

    Any number of senders run side by side (the `execution-alerts` process kind): each claims a
    batch with SKIP LOCKED and a lease, so no two send one alert at once, and an alert whose
    sender died goes out again when its lease ends. A receiver may therefore see an alert twice,
    with the same `webhook-id`, which is how Standard Webhooks receivers drop repeats.
    """

    def __init__(
        self,
        db: Database,
        listen_url: str,
        client: OutboundClient,
        config: SenderConfig,
        metrics: SenderMetrics,
    ) -> None:
        self._db = db
        self._listen_url = listen_url
        self._client = client
        self._config = config
        self._metrics = metrics
        self._user_agent = f"AIAS-Alerts/{package_version()}"
        self._wake = asyncio.Event()
        self._stopping = False
        self._sending: asyncio.Task[None] | None = None
        self._listening: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sending = asyncio.create_task(self._send_forever(), name="alert-sender")
        self._listening = asyncio.create_task(
            follow_notifications(
                self._listen_url, CHANNEL, lambda _: self._wake.set(), self._wake.set
            ),
            name="alert-sender-listen",
        )

    async def stop(self, grace: float) -> None:
        """Lets the batch in flight finish within `grace`; what is cut off goes out again once
        its lease ends."""
        self._stopping = True
        self._wake.set()
        if self._sending is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._sending), grace)
        for task in (self._listening, self._sending):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def send_due(self) -> int:
        """Claims one batch of due alerts and sends them at once; returns how many."""
        lease = timedelta(seconds=self._config.timeout) + LEASE_MARGIN
        async with self._db.system(SystemPath.ALERT_OUTBOX) as session:
            claimed = await OutboxRepository(session).claim_due(self._config.batch, lease)
        await asyncio.gather(*(self._deliver(event_id, tenant) for event_id, tenant in claimed))
        return len(claimed)

    async def prune(self) -> int:
        """Deletes alerts settled and raised longer ago than the kept time; returns how many."""
        pruned = 0
        while True:
            async with self._db.system(SystemPath.ALERT_OUTBOX) as session:
                deleted = await OutboxRepository(session).prune(self._config.kept, PRUNE_BATCH)
            pruned += deleted
            if deleted < PRUNE_BATCH:
                return pruned

    async def _send_forever(self) -> None:
        pruned_at = -PRUNE_EVERY_SECONDS
        while not self._stopping:
            self._wake.clear()
            sent = 0
            try:
                sent = await self.send_due()
                if time.monotonic() - pruned_at >= PRUNE_EVERY_SECONDS:
                    await self.prune()
                    pruned_at = time.monotonic()
            except Exception as error:
                log.warning("claiming alerts failed", extra={"error": type(error).__name__})
            # A full batch means more may be due: go on at once.
            if sent < self._config.batch and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._config.poll_interval)

    async def _deliver(self, event_id: uuid.UUID, tenant_id: uuid.UUID) -> None:
        try:
            async with self._db.tenant(tenant_id) as session:
                found = await AlertRepository(session).to_send(event_id)
            if found is None:
                return  # settled meanwhile (its destination was deleted)
            event, destination = found
            attempt = await self._attempt(event, destination)
            await self._record(event, attempt)
        except Exception:
            # Not recorded: the alert is due again when its lease ends.
            log.exception(
                "an alert attempt could not be made or recorded",
                extra={"tenant_id": str(tenant_id), "alert_id": str(event_id)},
            )

    async def _attempt(self, event: AlertEventRow, destination: AlertDestinationRow) -> Attempt:
        """One signed POST; its answer, or why there was none."""
        payload = body(event.event_type, event.create_time, event.data)
        message_id, stamp = str(event.id), str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
            "webhook-id": message_id,
            "webhook-timestamp": stamp,
            "webhook-signature": signing.sign(destination.signing_key, message_id, stamp, payload),
        }
        started, clock = datetime.now(UTC), time.perf_counter()
        try:
            response = await self._client.request(
                "POST",
                destination.url,
                headers=headers,
                body=payload,
                time_limit=self._config.timeout,
                max_body_bytes=MAX_RESPONSE_BYTES,
                follow_redirects=False,
            )
            status = response.status
            error = (
                "" if delivered(status) else answer_error(status, response.reason, response.body)
            )
        except OutboundError as failure:
            status, error = 0, str(failure)
        return Attempt(started, status, error, round((time.perf_counter() - clock) * 1000))

    async def _record(self, claimed: AlertEventRow, attempt: Attempt) -> None:
        """Records the attempt and settles the alert: delivered, retried later, or failed once
        the next try would fall after the retry window."""
        async with self._db.tenant(claimed.tenant_id) as session:
            repo = AlertRepository(session)
            event = await repo.locked_event(claimed.id)
            if event is None:
                return  # pruned meanwhile
            event.attempts += 1
            repo.add_attempt(
                AlertAttemptRow(
                    tenant_id=event.tenant_id,
                    event_id=event.id,
                    attempt=event.attempts,
                    attempt_time=attempt.start_time,
                    http_status=attempt.http_status,
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                )
            )
            event.last_attempt_time = attempt.start_time
            event.last_http_status, event.last_error = attempt.http_status, attempt.error
            if event.state != DeliveryState.PENDING:
                return  # another sender settled it while this one's lease had run out
            outcome = self._settle(event, attempt)
        self._metrics.attempted(event.event_type, outcome)
        log.info(
            "alert attempt",
            extra={
                "tenant_id": str(event.tenant_id),
                "alert_id": str(event.id),
                "event_type": event.event_type,
                "attempt": event.attempts,
                "http_status": attempt.http_status,
                "outcome": outcome,
            },
        )

    def _settle(self, event: AlertEventRow, attempt: Attempt) -> str:
        if not attempt.error:
            event.state = DeliveryState.DELIVERED.value
            return "delivered"
        retry_at = self._config.schedule.next_attempt(
            event.attempts, event.create_time, datetime.now(UTC)
        )
        if retry_at is None:
            event.state = DeliveryState.FAILED.value
            return "failed"
        event.next_attempt_time = retry_at
        return "retrying"
