"""Billing use cases; each owns its transactions and calls Stripe and tenancy outside them.

How a webhook becomes a plan, and why a crash or a failed call loses nothing:

1. The event id is inserted first, in the same transaction as the event's effects on
   billing's tables (subscriptions, the customer link, the plan they decide, the delivery
   record). A concurrent duplicate waits on that row and then sees the conflict, so exactly
   one delivery applies the effects.
2. The decided plan gets a new revision in that transaction. After the commit, billing calls
   tenancy's SetPlan with the plan and the time of the Stripe state behind it, and records the
   revision as synced. No transaction is held across that call.
3. If SetPlan fails (or billing dies before it), the revision stays pending and the webhook
   answers UNAVAILABLE, so Stripe delivers the event again. The repeat is a duplicate that
   changes nothing in billing, but it retries the pending SetPlan; so does the next event of
   the tenant and `aias billing reconcile`. Repeating SetPlan is harmless: tenancy ignores a
   change older than the tenant's last one.
4. A delivery that makes the tenant past due leaves a past-due alert waiting on its customer row,
   in the same transaction, and execution's RaiseAlert is called after the commit like SetPlan,
   with the same retries. Its dedupe key is fixed when the alert is flagged, so a repeated call
   queues nothing twice.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from aias.core.context import require_tenant, tenant_id_var
from aias.core.db import Database, SystemPath, parse_uuid
from aias.core.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    clip,
)
from aias.core.pagination import decode_token, next_page_token, page_size
from aias.services.billing.domain import (
    CHECKOUT_COMPLETED,
    GRANTING_STATUSES,
    INVOICE_PAST_DUE,
    PAST_DUE,
    REPLAYED_EVENTS,
    SUBSCRIPTION_EVENTS,
    Outcome,
    Plans,
    StripeEvent,
    SubscriptionSnapshot,
    UnusableEvent,
    checkout_tenant,
    event_from,
    invoice_subscription_id,
    not_configured,
    past_due_after,
    subscription_from,
    verify,
)
from aias.services.billing.execution_client import ExecutionClient
from aias.services.billing.models import CustomerRow, DeliveryRow, SubscriptionRow
from aias.services.billing.repository import BillingRepository
from aias.services.billing.stripe_api import CheckoutSession, StripeApi
from aias.services.billing.tenancy_client import TenancyClient

log = logging.getLogger(__name__)

# Anyone can post a rejected delivery; only this many are kept for diagnostics.
MAX_REJECTED_KEPT = 1_000
_STALE = "a newer event already updated this subscription (delivered out of order)"

_T = TypeVar("_T")


@dataclass(frozen=True)
class ReturnUrls:
    """Where Stripe sends the user back to after checkout and from the portal."""

    checkout_success: str
    checkout_cancel: str
    portal_return: str


@dataclass(frozen=True)
class DeliveryResult:
    event_id: str
    event_type: str
    outcome: Outcome
    tenant_id: uuid.UUID | None


@dataclass(frozen=True)
class SubscriptionView:
    id: str
    customer_id: str
    status: str
    plan: str
    price_lookup_key: str
    current_period_end: datetime | None
    cancel_at_period_end: bool
    past_due: bool

    @classmethod
    def of_row(cls, row: SubscriptionRow) -> SubscriptionView:
        return cls(
            row.id,
            row.customer_id,
            row.status,
            row.plan,
            row.price_lookup_key,
            row.current_period_end,
            row.cancel_at_period_end,
            row.past_due,
        )


@dataclass(frozen=True)
class AccountView:
    tenant_id: uuid.UUID
    customer_id: str
    plan: str
    plan_time: datetime | None
    plan_sync_pending: bool
    subscriptions: list[SubscriptionView]

    @property
    def past_due(self) -> bool:
        return any(s.past_due and s.status in GRANTING_STATUSES for s in self.subscriptions)


@dataclass(frozen=True)
class Page(Generic[_T]):
    items: list[_T]
    next_page_token: str


@dataclass(frozen=True)
class ReconcileResult:
    tenant_id: uuid.UUID
    customer_id: str
    previous_plan: str = ""
    plan: str = ""
    changed: bool = False
    error: str = ""


class BillingService:
    def __init__(
        self,
        db: Database,
        tenancy: TenancyClient,
        execution: ExecutionClient,
        plans: Plans,
        webhook_secret: str,
        stripe_api: StripeApi | None,
        urls: ReturnUrls,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._db = db
        self._tenancy = tenancy
        self._execution = execution
        self._plans = plans
        self._webhook_secret = webhook_secret
        self._stripe = stripe_api
        self._urls = urls
        self._clock = clock

    @property
    def configured(self) -> bool:
        return bool(self._webhook_secret) and self._stripe is not None

    # -- webhook intake -----------------------------------------------------------------------

    async def handle_event(self, payload: bytes, signature: str) -> DeliveryResult:
        """Verifies one delivery, applies it once, and brings tenancy's plan up to date."""
        try:
            event = verify(payload, signature, self._webhook_secret)
        except InvalidArgument as rejected:
            await self._record_rejected(rejected)
            raise
        owner = await self._owner(event)
        if isinstance(owner, DeliveryResult):
            return owner
        return await self._process(owner, event)

    async def _owner(self, event: StripeEvent) -> uuid.UUID | DeliveryResult:
        """The tenant the event belongs to; else the event is recorded as belonging to none."""
        why = ""
        if event.type == CHECKOUT_COMPLETED:
            tenant_id, why = await self._checkout_tenant(event)
            if tenant_id is not None:
                return tenant_id
        return await self._intake(event, why)

    async def _process(self, tenant_id: uuid.UUID, event: StripeEvent) -> DeliveryResult:
        async with self._db.tenant(tenant_id) as session:
            repo = BillingRepository(session)
            if event.type == CHECKOUT_COMPLETED:
                await repo.lock_customer(event.customer_id)
            # The customer row serialises the tenant's events (see `_apply`), taken before the
            # past-due state is read so that no concurrent event changes it in between.
            await repo.customer_of_tenant(tenant_id, lock=True)
            was_past_due = await repo.past_due_now(tenant_id)
            if await repo.record_event(event):
                outcome, why = await self._apply(repo, tenant_id, event)
                await self._flag_past_due(repo, tenant_id, was_past_due, f"stripe:{event.id}")
            else:
                outcome, why = Outcome.DUPLICATE, ""
            delivery_id = await repo.add_delivery(tenant_id, event.id, event.type, outcome, why)
        self._log(event, outcome, tenant_id, why)
        for pending, send in (
            ("the plan is not applied yet", self._sync_plan),
            ("the past-due alert is not raised yet", self._raise_past_due),
        ):
            try:
                await send(tenant_id)
            except Unavailable as failure:
                async with self._db.tenant(tenant_id) as session:
                    await BillingRepository(session).note_delivery_error(
                        delivery_id, f"{pending}: {failure.message}"
                    )
                raise
        return DeliveryResult(event.id, event.type, outcome, tenant_id)

    async def _checkout_tenant(self, event: StripeEvent) -> tuple[uuid.UUID | None, str]:
        """A completed checkout's tenant, or why it has none."""
        tenant_id = checkout_tenant(event)
        if tenant_id is None:
            return None, "the Checkout Session names no tenant (client_reference_id)"
        if not event.customer_id:
            return None, "the Checkout Session has no customer"
        try:
            await self._tenancy.tenant(tenant_id)
        except NotFound:
            return None, f"the Checkout Session names tenant {tenant_id}, which does not exist"
        return tenant_id, ""

    async def _intake(self, event: StripeEvent, why: str) -> uuid.UUID | DeliveryResult:
        """The tenant of the event's customer; else the event is recorded as belonging to none.

        The customer's lock makes this and linking that customer (which replays its recorded
        events) happen one after the other, so no event slips between the two.
        """
        async with self._db.system(SystemPath.STRIPE_INTAKE) as session:
            repo = BillingRepository(session)
            why = why or self._why_unassigned(event)
            if not why:
                await repo.lock_customer(event.customer_id)
                tenant_id = await repo.tenant_of_customer(event.customer_id)
                if tenant_id is not None:
                    return tenant_id
                why = (
                    f"customer {event.customer_id} is not linked to a tenant; its subscription "
                    "events apply once a completed Checkout Session links it"
                )
            new = await repo.record_event(event)
            outcome = Outcome.IGNORED if new else Outcome.DUPLICATE
            await repo.add_delivery(None, event.id, event.type, outcome, why if new else "")
        self._log(event, outcome, None, why)
        return DeliveryResult(event.id, event.type, outcome, None)

    @staticmethod
    def _why_unassigned(event: StripeEvent) -> str:
        if event.type not in REPLAYED_EVENTS:
            return f"billing does not act on {event.type} events"
        if not event.customer_id:
            return "the event names no customer"
        return ""

    async def _record_rejected(self, error: InvalidArgument) -> None:
        async with self._db.system(SystemPath.STRIPE_INTAKE) as session:
            repo = BillingRepository(session)
            await repo.add_delivery(
                None, "", "", Outcome.REJECTED, f"{error.reason}: {error.message}"
            )
            await repo.prune_rejected(MAX_REJECTED_KEPT)
        log.info("stripe delivery rejected", extra={"reason": error.reason})

    @staticmethod
    def _log(event: StripeEvent, outcome: Outcome, tenant_id: uuid.UUID | None, why: str) -> None:
        log.info(
            "stripe event",
            extra={
                "event_id": event.id,
                "event_type": event.type,
                "outcome": outcome.value,
                "tenant_id": str(tenant_id or ""),
                "detail": why,
            },
        )

    # -- effects on billing's tables (inside the delivery's transaction) -----------------------

    async def _apply(
        self, repo: BillingRepository, tenant_id: uuid.UUID, event: StripeEvent
    ) -> tuple[Outcome, str]:
        if event.type == CHECKOUT_COMPLETED:
            return await self._link(repo, tenant_id, event)
        # The tenant's customer row is the per-tenant lock: events of one tenant decide its
        # plan one at a time, each seeing the others' subscriptions.
        customer = await repo.customer_of_tenant(tenant_id, lock=True)
        if customer is None:
            return Outcome.IGNORED, "the tenant has no Stripe customer"
        outcome, error = await self._apply_to_subscription(repo, tenant_id, event)
        if outcome == Outcome.PROCESSED:
            await self._decide(repo, customer)
        return outcome, error

    async def _link(
        self, repo: BillingRepository, tenant_id: uuid.UUID, event: StripeEvent
    ) -> tuple[Outcome, str]:
        """Links the checkout's customer to its tenant, then applies what that customer's
        earlier events (recorded while it belonged to no tenant) say."""
        customer_id = event.customer_id
        new_link = await repo.link_customer(customer_id, tenant_id)
        customer = await repo.customer_of_tenant(tenant_id, lock=True)
        if customer is None:
            return Outcome.IGNORED, f"customer {customer_id} is linked to another tenant"
        if customer.id != customer_id:
            return (
                Outcome.IGNORED,
                f"the tenant is linked to customer {customer.id} already, not {customer_id}",
            )
        if new_link:
            for row in await repo.earlier_events(customer_id, REPLAYED_EVENTS, but=event.id):
                await self._apply_to_subscription(repo, tenant_id, event_from(row.payload))
            await self._decide(repo, customer)
        return Outcome.PROCESSED, ""

    async def _apply_to_subscription(
        self, repo: BillingRepository, tenant_id: uuid.UUID, event: StripeEvent
    ) -> tuple[Outcome, str]:
        if event.type in SUBSCRIPTION_EVENTS:
            try:
                snapshot = subscription_from(event.object, self._plans)
            except UnusableEvent as error:
                return Outcome.IGNORED, str(error)
            plan = self._plans.plan_for(snapshot.price_lookup_key)
            if snapshot.grants_plan and plan is None:
                return Outcome.IGNORED, _unknown_key(snapshot)
            previous = await repo.past_due_of(snapshot.id)
            past_due = past_due_after(bool(previous), snapshot.status)
            saved = await repo.save_subscription(
                tenant_id, snapshot, plan or "", past_due, event.created
            )
            return (Outcome.PROCESSED, "") if saved else (Outcome.IGNORED, _STALE)
        if (flag := INVOICE_PAST_DUE.get(event.type)) is not None:
            subscription_id = invoice_subscription_id(event.object)
            if not subscription_id:
                return Outcome.IGNORED, "the invoice belongs to no subscription"
            if await repo.past_due_of(subscription_id) is None:
                return (
                    Outcome.IGNORED,
                    f"subscription {subscription_id} is not known yet; its own events carry "
                    "its status",
                )
            if not await repo.set_past_due(subscription_id, flag, event.created):
                return Outcome.IGNORED, _STALE
            return Outcome.PROCESSED, ""
        return Outcome.IGNORED, f"billing does not act on {event.type} events"

    async def _decide(self, repo: BillingRepository, customer: CustomerRow) -> None:
        """Records the plan the tenant's subscriptions grant together, when it changed.

        Its time is that of the newest Stripe state seen, so tenancy takes it over any change
        older than that state, and refuses it when something newer happened there.
        """
        subscriptions = await repo.subscriptions(customer.tenant_id)
        plan = self._plans.decided_by((s.status, s.plan) for s in subscriptions)
        if plan == customer.plan or (not customer.plan and plan == self._plans.default):
            return  # nothing new; a first "free" grants nothing to take away
        customer.plan = plan
        customer.plan_time = max((s.last_event_time for s in subscriptions), default=self._clock())
        customer.plan_revision += 1

    # -- past-due alerts ----------------------------------------------------------------------

    @staticmethod
    async def _flag_past_due(
        repo: BillingRepository, tenant_id: uuid.UUID, was_past_due: bool, key: str
    ) -> None:
        """Leaves a past-due alert waiting when this transaction made the tenant past due."""
        if was_past_due or not await repo.past_due_now(tenant_id):
            return
        customer = await repo.customer_of_tenant(tenant_id)
        if customer is not None:
            customer.past_due_alert = key

    async def _raise_past_due(self, tenant_id: uuid.UUID) -> None:
        """Hands a waiting past-due alert to execution, then clears it; an alert that waited
        while the tenant paid is dropped. Raises Unavailable when execution could not take it."""
        async with self._db.tenant(tenant_id) as session:
            repo = BillingRepository(session)
            customer = await repo.customer_of_tenant(tenant_id)
            if customer is None or customer.past_due_alert is None:
                return
            key = customer.past_due_alert
            owing = [
                {"id": s.id, "status": s.status, "plan": s.plan}
                for s in await repo.subscriptions(tenant_id)
                if s.past_due and s.status in GRANTING_STATUSES
            ]
        if owing:
            data = {"customer_id": customer.id, "plan": customer.plan, "subscriptions": owing}
            queued = await self._execution.raise_past_due(tenant_id, data, key)
            log.info(
                "past-due alert raised",
                extra={"tenant_id": str(tenant_id), "queued": queued, "dedupe_key": key},
            )
        async with self._db.tenant(tenant_id) as session:
            await BillingRepository(session).clear_past_due_alert(tenant_id, key)

    # -- tenancy ------------------------------------------------------------------------------

    async def _sync_plan(self, tenant_id: uuid.UUID) -> bool | None:
        """Tells tenancy the decided plan if it has not confirmed it yet.

        Returns whether tenancy applied it (False: it kept a newer change), None when there
        was nothing to tell. Raises Unavailable when tenancy could not be told.
        """
        async with self._db.tenant(tenant_id) as session:
            customer = await BillingRepository(session).customer_of_tenant(tenant_id)
        if (
            customer is None
            or customer.plan_time is None
            or customer.synced_revision >= customer.plan_revision
        ):
            return None
        try:
            applied = await self._tenancy.set_plan(tenant_id, customer.plan, customer.plan_time)
        except NotFound:
            log.warning(
                "the tenant of a Stripe customer is gone", extra={"tenant_id": str(tenant_id)}
            )
            applied = False
        log.info(
            "plan sent to tenancy",
            extra={"tenant_id": str(tenant_id), "plan": customer.plan, "applied": applied},
        )
        async with self._db.tenant(tenant_id) as session:
            await BillingRepository(session).mark_synced(tenant_id, customer.plan_revision)
        return applied

    # -- outbound: checkout, portal, subscription ----------------------------------------------

    def _api(self) -> StripeApi:
        if self._stripe is None:
            raise not_configured("AIAS_STRIPE_API_KEY")
        return self._stripe

    async def create_checkout_session(self, plan: str, lookup_key: str) -> CheckoutSession:
        api = self._api()
        tenant_id = require_tenant()
        paid = [name for name in self._plans.names if name != self._plans.default]
        if plan not in paid:
            raise InvalidArgument(
                "INVALID_PLAN",
                f"plan {clip(repr(plan))} cannot be bought; choose one of {', '.join(paid)}",
            )
        key = lookup_key or plan
        if self._plans.plan_for(key) != plan:
            raise InvalidArgument(
                "INVALID_PRICE_LOOKUP_KEY",
                f"price lookup key {clip(repr(key))} is not one of plan {plan}",
            )
        async with self._db.tenant(tenant_id) as session:
            repo = BillingRepository(session)
            customer = await repo.customer_of_tenant(tenant_id)
            subscriptions = await repo.subscriptions(tenant_id)
        if any(s.status in GRANTING_STATUSES and s.plan for s in subscriptions):
            raise FailedPrecondition(
                "SUBSCRIPTION_EXISTS",
                "the tenant has a subscription already; change its plan in the billing portal "
                "(POST /api/billing/portal-session)",
            )
        price_id = await api.price_id(key)
        if price_id is None:
            raise FailedPrecondition(
                "PRICE_NOT_FOUND", f"no active Stripe price has the lookup key {key!r}"
            )
        customer_id = (
            customer.id if customer is not None else await self._new_customer(api, tenant_id)
        )
        return await api.create_checkout_session(
            customer_id,
            tenant_id,
            price_id,
            self._urls.checkout_success,
            self._urls.checkout_cancel,
        )

    async def _new_customer(self, api: StripeApi, tenant_id: uuid.UUID) -> str:
        """Creates the tenant's Stripe customer and links it, so its events find the tenant."""
        tenant = await self._tenancy.tenant(tenant_id)
        created = await api.create_customer(tenant_id, tenant.name)
        async with self._db.tenant(tenant_id) as session:
            repo = BillingRepository(session)
            await repo.lock_customer(created)
            await repo.link_customer(created, tenant_id)
            # A concurrent first checkout may have linked its customer first; use that one.
            linked = await repo.customer_of_tenant(tenant_id)
        return linked.id if linked is not None else created

    async def create_portal_session(self) -> str:
        api = self._api()
        tenant_id = require_tenant()
        async with self._db.tenant(tenant_id) as session:
            customer = await BillingRepository(session).customer_of_tenant(tenant_id)
        if customer is None:
            raise FailedPrecondition(
                "NO_STRIPE_CUSTOMER",
                "the tenant has no Stripe customer yet; subscribe first "
                "(POST /api/billing/checkout-session)",
            )
        return await api.create_portal_session(customer.id, self._urls.portal_return)

    async def current_subscription(self) -> SubscriptionView | None:
        """The tenant's deciding (else newest) subscription, read from Stripe now."""
        api = self._api()
        tenant_id = require_tenant()
        async with self._db.tenant(tenant_id) as session:
            customer = await BillingRepository(session).customer_of_tenant(tenant_id)
        if customer is None:
            return None
        current = self._plans.current(self._snapshots(await api.subscriptions(customer.id)))
        return None if current is None else self._live_view(current)

    def _snapshots(self, objects: Iterable[dict[str, object]]) -> list[SubscriptionSnapshot]:
        snapshots = []
        for obj in objects:
            try:
                snapshots.append(subscription_from(obj, self._plans))
            except UnusableEvent:
                log.warning("Stripe listed a subscription without id or status")
        return snapshots

    def _live_view(self, snapshot: SubscriptionSnapshot) -> SubscriptionView:
        return SubscriptionView(
            snapshot.id,
            snapshot.customer_id,
            snapshot.status,
            self._plans.plan_for(snapshot.price_lookup_key) or "",
            snapshot.price_lookup_key,
            snapshot.current_period_end,
            snapshot.cancel_at_period_end,
            snapshot.status == PAST_DUE,
        )

    # -- diagnostics ---------------------------------------------------------------------------

    async def account(self, tenant_id: str) -> AccountView:
        tid = parse_uuid(tenant_id, "tenant_id") if tenant_id else require_tenant()
        async with self._db.tenant(tid) as session:
            repo = BillingRepository(session)
            customer = await repo.customer_of_tenant(tid)
            subscriptions = await repo.subscriptions(tid)
        return AccountView(
            tenant_id=tid,
            customer_id=customer.id if customer else "",
            plan=customer.plan if customer else "",
            plan_time=customer.plan_time if customer else None,
            plan_sync_pending=customer is not None
            and customer.synced_revision < customer.plan_revision,
            subscriptions=[SubscriptionView.of_row(row) for row in subscriptions],
        )

    async def deliveries(self, size: int, token: str) -> Page[DeliveryRow]:
        """The acting tenant's deliveries; with no acting tenant, every delivery."""
        limit = page_size(size)
        if tenant_id_var.get():
            tenant_id = require_tenant()
            scope = str(tenant_id)
            cursor = decode_token(token, scope)
            async with self._db.tenant(tenant_id) as session:
                rows = await BillingRepository(session).deliveries(tenant_id, cursor, limit + 1)
        else:
            scope = "all"
            cursor = decode_token(token, scope)
            async with self._db.system(SystemPath.STRIPE_INTAKE) as session:
                rows = await BillingRepository(session).deliveries(None, cursor, limit + 1)
        return Page(rows[:limit], next_page_token(rows, limit, scope))

    # -- reconcile -----------------------------------------------------------------------------

    async def reconcile(self, tenant_id: str, dry_run: bool) -> list[ReconcileResult]:
        """Makes each tenant's plan what its subscriptions at Stripe say now."""
        api = self._api()
        if tenant_id:
            tid = parse_uuid(tenant_id, "tenant_id")
            async with self._db.tenant(tid) as session:
                customer = await BillingRepository(session).customer_of_tenant(tid)
            if customer is None:
                raise NotFound("NO_STRIPE_CUSTOMER", f"tenant {tid} has no Stripe customer")
            pairs = [(customer.id, tid)]
        else:
            async with self._db.system(SystemPath.STRIPE_INTAKE) as session:
                pairs = await BillingRepository(session).customers()
        results = []
        for customer_id, tid in pairs:
            try:
                results.append(await self._reconcile_one(api, customer_id, tid, dry_run))
            except DomainError as error:
                results.append(ReconcileResult(tid, customer_id, error=error.message))
        return results

    async def _reconcile_one(
        self, api: StripeApi, customer_id: str, tenant_id: uuid.UUID, dry_run: bool
    ) -> ReconcileResult:
        snapshots = self._snapshots(await api.subscriptions(customer_id))
        unknown = [
            s for s in snapshots if s.grants_plan and not self._plans.plan_for(s.price_lookup_key)
        ]
        if unknown:
            raise FailedPrecondition("UNKNOWN_PRICE_LOOKUP_KEY", _unknown_key(unknown[0]))
        plan = self._plans.decided_by(
            (s.status, self._plans.plan_for(s.price_lookup_key) or "") for s in snapshots
        )
        previous = (await self._tenancy.tenant(tenant_id)).plan
        result = ReconcileResult(tenant_id, customer_id, previous, plan, changed=plan != previous)
        if dry_run:
            return result
        # Stripe's answer now is newer than any event still on its way.
        now = self._clock()
        async with self._db.tenant(tenant_id) as session:
            repo = BillingRepository(session)
            customer = await repo.customer_of_tenant(tenant_id, lock=True)
            if customer is None:
                raise NotFound("NO_STRIPE_CUSTOMER", f"tenant {tenant_id} has no Stripe customer")
            was_past_due = await repo.past_due_now(tenant_id)
            for snapshot in snapshots:
                await repo.save_subscription(
                    tenant_id,
                    snapshot,
                    self._plans.plan_for(snapshot.price_lookup_key) or "",
                    snapshot.status == PAST_DUE,
                    now,
                )
            await repo.end_other_subscriptions(tenant_id, [s.id for s in snapshots], now)
            await self._flag_past_due(repo, tenant_id, was_past_due, f"reconcile:{uuid.uuid4()}")
            customer.plan, customer.plan_time = plan, now
            customer.plan_revision += 1
            if not result.changed:
                customer.synced_revision = customer.plan_revision
        applied = await self._sync_plan(tenant_id) if result.changed else None
        await self._raise_past_due(tenant_id)
        if result.changed:
            return ReconcileResult(
                tenant_id, customer_id, previous, plan, changed=applied is not False
            )
        return result


def _unknown_key(snapshot: SubscriptionSnapshot) -> str:
    return (
        f"subscription {snapshot.id} has price lookup key {snapshot.price_lookup_key!r}, which "
        "maps to no plan: use a plan's name as the lookup key or add it to "
        "AIAS_STRIPE_PRICE_PLANS, then run `aias billing reconcile`"
    )
