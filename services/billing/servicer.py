"""gRPC protocol layer of billing: proto <-> domain, nothing else."""

from __future__ import annotations

import grpc

from aias.billing.v1 import billing_service_pb2 as pb
from aias.billing.v1 import billing_service_pb2_grpc as pb_grpc
from aias.core.protoconv import timestamp
from aias.services.billing.domain import Outcome
from aias.services.billing.models import DeliveryRow
from aias.services.billing.service import BillingService, SubscriptionView

_OUTCOME = {
    Outcome.PROCESSED: pb.DELIVERY_OUTCOME_PROCESSED,
    Outcome.DUPLICATE: pb.DELIVERY_OUTCOME_DUPLICATE,
    Outcome.IGNORED: pb.DELIVERY_OUTCOME_IGNORED,
    Outcome.REJECTED: pb.DELIVERY_OUTCOME_REJECTED,
}


def subscription_pb(view: SubscriptionView) -> pb.Subscription:
    return pb.Subscription(
        id=view.id,
        customer_id=view.customer_id,
        status=view.status,
        plan=view.plan,
        price_lookup_key=view.price_lookup_key,
        current_period_end_time=timestamp(view.current_period_end),
        cancel_at_period_end=view.cancel_at_period_end,
        past_due=view.past_due,
    )


def delivery_pb(row: DeliveryRow) -> pb.StripeDelivery:
    return pb.StripeDelivery(
        event_id=row.event_id,
        event_type=row.event_type,
        receive_time=timestamp(row.create_time),
        outcome=_OUTCOME.get(Outcome(row.outcome), pb.DELIVERY_OUTCOME_UNSPECIFIED),
        error=row.error,
        tenant_id=str(row.tenant_id or ""),
    )


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, service: BillingService) -> None:
        self._service = service

    async def HandleStripeEvent(
        self, request: pb.HandleStripeEventRequest, context: grpc.aio.ServicerContext
    ) -> pb.HandleStripeEventResponse:
        result = await self._service.handle_event(request.http_body.data, request.stripe_signature)
        return pb.HandleStripeEventResponse(
            event_id=result.event_id,
            event_type=result.event_type,
            duplicate=result.outcome == Outcome.DUPLICATE,
            outcome=_OUTCOME[result.outcome],
            tenant_id=str(result.tenant_id or ""),
        )

    async def GetBillingStatus(
        self, request: pb.GetBillingStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBillingStatusResponse:
        return pb.GetBillingStatusResponse(configured=self._service.configured)

    async def CreateCheckoutSession(
        self, request: pb.CreateCheckoutSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCheckoutSessionResponse:
        session = await self._service.create_checkout_session(
            request.plan, request.price_lookup_key
        )
        return pb.CreateCheckoutSessionResponse(url=session.url, session_id=session.id)

    async def CreatePortalSession(
        self, request: pb.CreatePortalSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreatePortalSessionResponse:
        return pb.CreatePortalSessionResponse(url=await self._service.create_portal_session())

    async def GetSubscription(
        self, request: pb.GetSubscriptionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSubscriptionResponse:
        current = await self._service.current_subscription()
        return pb.GetSubscriptionResponse(
            subscription=subscription_pb(current) if current is not None else None
        )

    async def GetBillingAccount(
        self, request: pb.GetBillingAccountRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetBillingAccountResponse:
        account = await self._service.account(request.tenant_id)
        return pb.GetBillingAccountResponse(
            account=pb.BillingAccount(
                tenant_id=str(account.tenant_id),
                customer_id=account.customer_id,
                plan=account.plan,
                plan_time=timestamp(account.plan_time),
                plan_sync_pending=account.plan_sync_pending,
                past_due=account.past_due,
                subscriptions=[subscription_pb(s) for s in account.subscriptions],
            )
        )

    async def ListStripeDeliveries(
        self, request: pb.ListStripeDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListStripeDeliveriesResponse:
        page = await self._service.deliveries(request.page_size, request.page_token)
        return pb.ListStripeDeliveriesResponse(
            deliveries=[delivery_pb(row) for row in page.items],
            next_page_token=page.next_page_token,
        )

    async def Reconcile(
        self, request: pb.ReconcileRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReconcileResponse:
        results = await self._service.reconcile(request.tenant_id, request.dry_run)
        return pb.ReconcileResponse(
            tenants=[
                pb.ReconciledTenant(
                    tenant_id=str(r.tenant_id),
                    customer_id=r.customer_id,
                    previous_plan=r.previous_plan,
                    plan=r.plan,
                    changed=r.changed,
                    error=r.error,
                )
                for r in results
            ]
        )
