"""Tenancy over real gRPC and PostgreSQL: keys, members, roles, plans, overrides, usage, changes."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aias.core.db import Database
from aias.core.entitlements import PLANS
from aias.services.tenancy.domain import Metric
from aias.services.tenancy.service import TenancyService
from aias.tenancy.v1 import tenancy_service_pb2 as pb
from tests.integration.servers import Tenancy

Metadata = tuple[tuple[str, str], ...]


def acting(tenant: uuid.UUID, role: str = "owner") -> Metadata:
    """What the gateway asserts for a caller with a key of `role`."""
    return (("x-aias-tenant-id", str(tenant)), ("x-aias-role", role))


def reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    status.details[0].Unpack(info)
    return str(info.reason)


async def refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code(), reason(caught.value)


async def new_tenant(tenancy: Tenancy, plan: str = "free") -> tuple[uuid.UUID, str]:
    reply = await tenancy.stub.CreateTenant(pb.CreateTenantRequest(name="Acme", plan=plan))
    return uuid.UUID(reply.tenant.id), reply.admin_key


async def authenticate(tenancy: Tenancy, key: str) -> pb.AuthenticateApiKeyResponse:
    reply: pb.AuthenticateApiKeyResponse = await tenancy.stub.AuthenticateApiKey(
        pb.AuthenticateApiKeyRequest(api_key=key)
    )
    return reply


# -- API keys -----------------------------------------------------------------------------------


async def test_first_key_is_an_owner_key(tenancy: Tenancy) -> None:
    tenant, key = await new_tenant(tenancy)
    who = await authenticate(tenancy, key)
    assert (who.tenant_id, who.role) == (str(tenant), pb.ROLE_OWNER)


async def test_key_is_shown_once_listed_without_secret_and_revoked(tenancy: Tenancy) -> None:
    tenant, _owner = await new_tenant(tenancy)
    created = await tenancy.stub.CreateApiKey(
        pb.CreateApiKeyRequest(name="ci", role=pb.ROLE_MEMBER), metadata=acting(tenant, "admin")
    )
    assert created.key.startswith(created.api_key.prefix)
    assert (await authenticate(tenancy, created.key)).role == pb.ROLE_MEMBER

    listed = await tenancy.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=acting(tenant))
    mine = {k.id: k for k in listed.api_keys}[created.api_key.id]
    assert (mine.name, mine.role, mine.prefix) == ("ci", pb.ROLE_MEMBER, created.api_key.prefix)
    assert mine.HasField("last_used_time"), "authentication records the last use"
    secret = created.key.rsplit("_", 1)[1]
    assert secret not in str(listed)

    await tenancy.stub.DeleteApiKey(
        pb.DeleteApiKeyRequest(key_id=created.api_key.id), metadata=acting(tenant, "admin")
    )
    assert await refused(authenticate(tenancy, created.key)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
    )
    listed = await tenancy.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=acting(tenant))
    assert created.api_key.id not in {k.id for k in listed.api_keys}


async def test_wrong_and_malformed_keys_fail_alike(tenancy: Tenancy) -> None:
    _tenant, key = await new_tenant(tenancy)
    for wrong in (key[:-1] + ("A" if key[-1] != "A" else "B"), "aias_nonsense", "", "x" * 300):
        assert await refused(authenticate(tenancy, wrong)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "INVALID_API_KEY",
        )


async def test_suspended_tenant_keys_are_refused_until_resumed(tenancy: Tenancy) -> None:
    tenant, key = await new_tenant(tenancy)
    await tenancy.stub.UpdateTenant(
        pb.UpdateTenantRequest(tenant_id=str(tenant), status=pb.TENANT_STATUS_SUSPENDED)
    )
    assert await refused(authenticate(tenancy, key)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "TENANT_SUSPENDED",
    )
    await tenancy.stub.UpdateTenant(
        pb.UpdateTenantRequest(tenant_id=str(tenant), status=pb.TENANT_STATUS_ACTIVE)
    )
    assert (await authenticate(tenancy, key)).tenant_id == str(tenant)


async def test_role_table_keeps_members_from_managing_keys(tenancy: Tenancy) -> None:
    tenant, _owner = await new_tenant(tenancy)
    as_member = acting(tenant, "member")
    for call in (
        tenancy.stub.CreateApiKey(pb.CreateApiKeyRequest(name="x"), metadata=as_member),
        tenancy.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=as_member),
        tenancy.stub.CreateMember(
            pb.CreateMemberRequest(email="a@example.com"), metadata=as_member
        ),
    ):
        assert await refused(call) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    # Internal RPCs are not for principals of any role, and operator RPCs not for tenants.
    assert await refused(
        tenancy.stub.GetEntitlements(
            pb.GetEntitlementsRequest(tenant_id=str(tenant)), metadata=acting(tenant)
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "INTERNAL_ONLY")
    assert await refused(
        tenancy.stub.ListTenants(pb.ListTenantsRequest(), metadata=acting(tenant))
    ) == (grpc.StatusCode.PERMISSION_DENIED, "OPERATOR_ONLY")


async def test_only_owners_manage_admin_and_owner_keys(tenancy: Tenancy) -> None:
    tenant, _owner = await new_tenant(tenancy)
    assert await refused(
        tenancy.stub.CreateApiKey(
            pb.CreateApiKeyRequest(name="x", role=pb.ROLE_ADMIN), metadata=acting(tenant, "admin")
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "OWNER_REQUIRED")
    admin_key = await tenancy.stub.CreateApiKey(
        pb.CreateApiKeyRequest(name="ops", role=pb.ROLE_ADMIN), metadata=acting(tenant, "owner")
    )
    assert await refused(
        tenancy.stub.DeleteApiKey(
            pb.DeleteApiKeyRequest(key_id=admin_key.api_key.id), metadata=acting(tenant, "admin")
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "OWNER_REQUIRED")


async def test_the_last_owner_key_cannot_be_revoked(tenancy: Tenancy) -> None:
    tenant, key = await new_tenant(tenancy)
    owner_id = str(uuid.UUID(hex=key.split("_")[2]))
    assert await refused(
        tenancy.stub.DeleteApiKey(pb.DeleteApiKeyRequest(key_id=owner_id), metadata=acting(tenant))
    ) == (grpc.StatusCode.FAILED_PRECONDITION, "LAST_OWNER_KEY")


async def test_another_tenants_key_is_not_found(tenancy: Tenancy) -> None:
    tenant_a, _ = await new_tenant(tenancy)
    tenant_b, _ = await new_tenant(tenancy)
    key_a = await tenancy.stub.CreateApiKey(
        pb.CreateApiKeyRequest(name="a"), metadata=acting(tenant_a)
    )
    assert await refused(
        tenancy.stub.DeleteApiKey(
            pb.DeleteApiKeyRequest(key_id=key_a.api_key.id), metadata=acting(tenant_b)
        )
    ) == (grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")
    listed = await tenancy.stub.ListApiKeys(pb.ListApiKeysRequest(), metadata=acting(tenant_b))
    assert key_a.api_key.id not in {k.id for k in listed.api_keys}


# -- members ------------------------------------------------------------------------------------


async def test_members_roles_and_the_keys_bound_to_them(tenancy: Tenancy) -> None:
    tenant, _owner = await new_tenant(tenancy)
    owner = acting(tenant, "owner")
    ada = (
        await tenancy.stub.CreateMember(
            pb.CreateMemberRequest(email="Ada@Example.com", name="Ada", role=pb.ROLE_ADMIN),
            metadata=owner,
        )
    ).member
    assert (ada.email, ada.role) == ("ada@example.com", pb.ROLE_ADMIN)
    assert await refused(
        tenancy.stub.CreateMember(pb.CreateMemberRequest(email="ada@example.com"), metadata=owner)
    ) == (grpc.StatusCode.ALREADY_EXISTS, "MEMBER_EXISTS")
    key = await tenancy.stub.CreateApiKey(
        pb.CreateApiKeyRequest(name="ada", role=pb.ROLE_ADMIN, member_id=ada.id), metadata=owner
    )
    assert (await authenticate(tenancy, key.key)).role == pb.ROLE_ADMIN

    # Demoting the member caps the key; an admin may not touch an admin; removal revokes keys.
    await tenancy.stub.UpdateMember(
        pb.UpdateMemberRequest(member_id=ada.id, role=pb.ROLE_MEMBER), metadata=owner
    )
    assert (await authenticate(tenancy, key.key)).role == pb.ROLE_MEMBER
    assert await refused(
        tenancy.stub.UpdateMember(
            pb.UpdateMemberRequest(member_id=ada.id, role=pb.ROLE_ADMIN),
            metadata=acting(tenant, "admin"),
        )
    ) == (grpc.StatusCode.PERMISSION_DENIED, "OWNER_REQUIRED")
    await tenancy.stub.DeleteMember(
        pb.DeleteMemberRequest(member_id=ada.id), metadata=acting(tenant, "admin")
    )
    assert await refused(authenticate(tenancy, key.key)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "INVALID_API_KEY",
    )
    listed = await tenancy.stub.ListMembers(pb.ListMembersRequest(), metadata=owner)
    assert list(listed.members) == []


async def test_the_last_owner_stays(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy)
    owner = acting(tenant, "owner")
    only = (
        await tenancy.stub.CreateMember(
            pb.CreateMemberRequest(email="o@example.com", role=pb.ROLE_OWNER), metadata=owner
        )
    ).member
    for call in (
        tenancy.stub.DeleteMember(pb.DeleteMemberRequest(member_id=only.id), metadata=owner),
        tenancy.stub.UpdateMember(
            pb.UpdateMemberRequest(member_id=only.id, role=pb.ROLE_ADMIN), metadata=owner
        ),
    ):
        assert await refused(call) == (grpc.StatusCode.FAILED_PRECONDITION, "LAST_OWNER")


@pytest.mark.parametrize(
    ("email", "name", "expected"),
    [
        ("not-an-address", "", "INVALID_EMAIL"),
        ("a@b.c" + "x" * 300, "", "INVALID_EMAIL"),
        ("a@example.com", "Eve\u202etxt.exe", "INVALID_NAME"),
        ("a@example.com", "bad\x00name", "INVALID_NAME"),
    ],
)
async def test_bad_member_input_is_refused(
    tenancy: Tenancy, email: str, name: str, expected: str
) -> None:
    tenant, _ = await new_tenant(tenancy)
    assert await refused(
        tenancy.stub.CreateMember(
            pb.CreateMemberRequest(email=email, name=name), metadata=acting(tenant)
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, expected)


# -- plans, overrides and SetPlan ---------------------------------------------------------------


async def test_catalog_lists_every_plan_and_enterprise_has_no_limits(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy)
    plans = (await tenancy.stub.ListPlans(pb.ListPlansRequest(), metadata=acting(tenant))).plans
    assert [p.name for p in plans] == ["free", "starter", "pro", "business", "enterprise"]
    assert plans[-1].limits == pb.Limits()
    assert plans[0].limits.runs_per_month == PLANS["free"].runs_per_month


async def test_operator_overrides_one_limit_for_one_tenant(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy, "enterprise")
    other, _ = await new_tenant(tenancy, "enterprise")
    changed = await tenancy.stub.UpdateTenant(
        pb.UpdateTenantRequest(
            tenant_id=str(tenant),
            limit_overrides={"runs_per_month": 5, "workflows": -1},
            allowed_step_types_override=pb.StepTypes(types=["transform"]),
        )
    )
    assert changed.limits.runs_per_month == 5
    assert not changed.limits.HasField("workflows"), "-1 is unlimited"
    assert list(changed.limits.allowed_step_types.types) == ["transform"]
    untouched = await tenancy.stub.GetEntitlements(pb.GetEntitlementsRequest(tenant_id=str(other)))
    assert untouched.entitlements.limits == pb.Limits()
    cleared = await tenancy.stub.UpdateTenant(
        pb.UpdateTenantRequest(
            tenant_id=str(tenant), clear_limit_overrides=["runs_per_month", "allowed_step_types"]
        )
    )
    assert not cleared.limits.HasField("runs_per_month")
    assert not cleared.limits.HasField("allowed_step_types")
    assert await refused(
        tenancy.stub.UpdateTenant(
            pb.UpdateTenantRequest(tenant_id=str(tenant), limit_overrides={"bogus": 1})
        )
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_LIMIT")
    assert await refused(
        tenancy.stub.UpdateTenant(pb.UpdateTenantRequest(tenant_id=str(tenant), plan="gold"))
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_PLAN")


def _at(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def test_set_plan_ignores_a_change_older_than_the_current_one(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy)
    later = datetime.now(UTC) + timedelta(minutes=5)
    applied = await tenancy.stub.SetPlan(
        pb.SetPlanRequest(tenant_id=str(tenant), plan="pro", event_time=_at(later))
    )
    assert (applied.applied, applied.tenant.plan) == (True, "pro")
    stale = await tenancy.stub.SetPlan(
        pb.SetPlanRequest(
            tenant_id=str(tenant), plan="free", event_time=_at(later - timedelta(seconds=1))
        )
    )
    assert (stale.applied, stale.tenant.plan) == (False, "pro")
    newer = await tenancy.stub.SetPlan(
        pb.SetPlanRequest(
            tenant_id=str(tenant), plan="business", event_time=_at(later + timedelta(seconds=1))
        )
    )
    assert (newer.applied, newer.tenant.plan) == (True, "business")


# -- usage --------------------------------------------------------------------------------------


async def test_concurrent_reservations_never_overshoot(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy, "enterprise")
    await tenancy.set_limits(tenant, artifact_storage_bytes=10)
    replies = await asyncio.gather(
        *(
            tenancy.stub.ReserveUsage(
                pb.ReserveUsageRequest(
                    tenant_id=str(tenant), metric=pb.METRIC_ARTIFACT_STORAGE_BYTES, amount=1
                )
            )
            for _ in range(25)
        )
    )
    assert sorted(r.granted for r in replies) == [0] * 15 + [1] * 10
    assert max(r.used for r in replies) == 10
    released = await tenancy.stub.ReleaseUsage(
        pb.ReleaseUsageRequest(
            tenant_id=str(tenant), metric=pb.METRIC_ARTIFACT_STORAGE_BYTES, amount=4
        )
    )
    assert released.used == 6


async def test_releases_stop_at_zero_and_reservations_need_a_tenant(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy, "enterprise")
    storage = pb.METRIC_ARTIFACT_STORAGE_BYTES

    def release(amount: int) -> pb.ReleaseUsageRequest:
        return pb.ReleaseUsageRequest(tenant_id=str(tenant), metric=storage, amount=amount)

    # Nothing used yet (no counter): nothing to take off.
    assert (await tenancy.stub.ReleaseUsage(release(5))).used == 0
    reserved = await tenancy.stub.ReserveUsage(
        pb.ReserveUsageRequest(tenant_id=str(tenant), metric=storage, amount=7)
    )
    assert (reserved.granted, reserved.used, reserved.plan) == (7, 7, "enterprise")
    assert (await tenancy.stub.ReleaseUsage(release(3))).used == 4
    assert (await tenancy.stub.ReleaseUsage(release(9))).used == 0
    assert await refused(
        tenancy.stub.ReserveUsage(
            pb.ReserveUsageRequest(tenant_id=str(uuid.uuid4()), metric=storage, amount=1)
        )
    ) == (grpc.StatusCode.NOT_FOUND, "TENANT_NOT_FOUND")


async def test_run_blocks_shrink_near_the_limit_and_stop_at_it(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy, "enterprise")
    await tenancy.set_limits(tenant, runs_per_month=100)
    grants = []
    while True:
        reply = await tenancy.stub.ReserveUsage(
            pb.ReserveUsageRequest(
                tenant_id=str(tenant), metric=pb.METRIC_RUNS, amount=64, partial=True
            )
        )
        if reply.granted == 0:
            break
        grants.append(reply.granted)
    assert sum(grants) == 100
    assert grants[0] == 25, "a quarter of what is left"
    assert grants[-3:] == [1, 1, 1]
    assert (reply.limit, reply.plan) == (100, "enterprise")
    assert reply.period_end_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC)


async def test_a_new_billing_period_starts_from_zero(app_db: Database, tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy, "enterprise")
    await tenancy.set_limits(tenant, runs_per_month=3)
    now = [datetime(2026, 1, 31, 23, 59, 59, tzinfo=UTC)]
    service = TenancyService(app_db, clock=lambda: now[0])
    january = [await service.reserve(str(tenant), Metric.RUNS, 1, False) for _ in range(4)]
    assert [r.granted for r in january] == [1, 1, 1, 0]
    assert january[-1].period_end == datetime(2026, 2, 1, tzinfo=UTC)
    now[0] = datetime(2026, 2, 1, tzinfo=UTC)
    february = await service.reserve(str(tenant), Metric.RUNS, 1, False)
    assert (february.granted, february.used) == (1, 1)
    _, _, usage = await service.current(tenant)
    assert (usage.runs, usage.period_start) == (1, datetime(2026, 2, 1, tzinfo=UTC))


async def test_current_tenant_shows_limits_usage_and_role(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy, "starter")
    await tenancy.stub.ReserveUsage(
        pb.ReserveUsageRequest(tenant_id=str(tenant), metric=pb.METRIC_RUNS, amount=7)
    )
    me = await tenancy.stub.GetCurrentTenant(
        pb.GetCurrentTenantRequest(), metadata=acting(tenant, "member")
    )
    assert (me.tenant.plan, me.role, me.usage.runs) == ("starter", pb.ROLE_MEMBER, 7)
    assert me.limits.webhook_burst == PLANS["starter"].webhook_burst


# -- change notices -----------------------------------------------------------------------------


async def test_watchers_hear_of_plan_status_and_key_changes(tenancy: Tenancy) -> None:
    tenant, _ = await new_tenant(tenancy)
    stream = tenancy.stub.WatchEntitlements(pb.WatchEntitlementsRequest())
    notices = aiter(stream)
    first = await anext(notices)
    assert first.reset
    key = await tenancy.stub.CreateApiKey(pb.CreateApiKeyRequest(name="k"), metadata=acting(tenant))
    changes = (
        tenancy.stub.UpdateTenant(pb.UpdateTenantRequest(tenant_id=str(tenant), plan="pro")),
        tenancy.stub.UpdateTenant(
            pb.UpdateTenantRequest(tenant_id=str(tenant), status=pb.TENANT_STATUS_SUSPENDED)
        ),
        tenancy.stub.DeleteApiKey(
            pb.DeleteApiKeyRequest(key_id=key.api_key.id), metadata=acting(tenant)
        ),
    )
    for change in changes:
        await change
        async with asyncio.timeout(2):
            while (notice := await anext(notices)).tenant_id != str(tenant):
                pass
        assert not notice.reset
    stream.cancel()


async def test_a_tenant_claimed_twice_is_refused(tenancy: Tenancy) -> None:
    tenant_a, _ = await new_tenant(tenancy)
    tenant_b, _ = await new_tenant(tenancy)
    twice = (("x-aias-tenant-id", str(tenant_a)), ("x-aias-tenant-id", str(tenant_b)))
    assert await refused(
        tenancy.stub.GetCurrentTenant(pb.GetCurrentTenantRequest(), metadata=twice)
    ) == (grpc.StatusCode.INVALID_ARGUMENT, "AMBIGUOUS_CALLER")
