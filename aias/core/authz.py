"""Who may call which RPC: the one table of role checks, enforced by every gRPC server."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from aias.core.errors import DomainError, PermissionDenied


class Rule(StrEnum):
    """The least a caller must be to call an RPC."""

    PUBLIC = "public"  # anyone the gateway lets through; the RPC checks a secret or signature
    MEMBER = "member"  # any principal of the tenant
    ADMIN = "admin"
    OWNER = "owner"
    OPERATOR = "operator"  # the operator token at the gateway, or an internal caller
    INTERNAL = "internal"  # other AIAS services and the operator CLI only


# Roles the gateway asserts in `x-aias-role`. Internal callers (services, the CLI) send none:
# they proved themselves with the internal credential and act on the system's behalf.
PUBLIC_ROLE = "public"
OPERATOR_ROLE = "operator"
ROLE_RANK: Mapping[str, int] = MappingProxyType({"member": 1, "admin": 2, "owner": 3})

_T = "/aias.tenancy.v1.TenancyService/"
_E = "/aias.execution.v1.ExecutionService/"
_A = "/aias.artifacts.v1.ArtifactsService/"
_B = "/aias.billing.v1.BillingService/"

# Every RPC of every service, with its rule. A unit test keeps this table complete, so a new
# RPC cannot ship without a decision here.
RULES: Mapping[str, Rule] = MappingProxyType(
    {
        _T + "CreateTenant": Rule.OPERATOR,
        _T + "ListTenants": Rule.OPERATOR,
        _T + "UpdateTenant": Rule.OPERATOR,
        _T + "DeleteTenant": Rule.OPERATOR,
        _T + "GetCurrentTenant": Rule.MEMBER,
        _T + "ListPlans": Rule.MEMBER,
        _T + "GetTenant": Rule.INTERNAL,
        _T + "SetPlan": Rule.INTERNAL,
        _T + "AuthenticateApiKey": Rule.INTERNAL,
        _T + "CreateApiKey": Rule.ADMIN,
        _T + "ListApiKeys": Rule.ADMIN,
        _T + "DeleteApiKey": Rule.ADMIN,
        _T + "CreateMember": Rule.ADMIN,
        _T + "ListMembers": Rule.MEMBER,
        _T + "UpdateMember": Rule.ADMIN,
        _T + "DeleteMember": Rule.ADMIN,
        _T + "GetEntitlements": Rule.INTERNAL,
        _T + "WatchEntitlements": Rule.INTERNAL,
        _T + "ReserveUsage": Rule.INTERNAL,
        _T + "ReleaseUsage": Rule.INTERNAL,
        _E + "ListIntegrations": Rule.MEMBER,
        _E + "GetRunStats": Rule.ADMIN,
        _E + "CreateWorkflow": Rule.MEMBER,
        _E + "GetWorkflow": Rule.MEMBER,
        _E + "ListWorkflows": Rule.MEMBER,
        _E + "UpdateWorkflow": Rule.MEMBER,
        _E + "DeleteWorkflow": Rule.MEMBER,
        _E + "ListWorkflowVersions": Rule.MEMBER,
        _E + "CreateWebhookEndpoint": Rule.ADMIN,
        _E + "ListWebhookEndpoints": Rule.MEMBER,
        _E + "UpdateWebhookEndpoint": Rule.ADMIN,
        _E + "DeleteWebhookEndpoint": Rule.ADMIN,
        _E + "RotateWebhookEndpointSecret": Rule.ADMIN,
        # Deliveries show refusal details (a disabled endpoint, a bad signature) for admins.
        _E + "ListWebhookDeliveries": Rule.ADMIN,
        _E + "TriggerWebhook": Rule.PUBLIC,
        # The gateway's check before it reads a webhook's body: as public as the webhook.
        _E + "AdmitWebhook": Rule.PUBLIC,
        _E + "TriggerWebhooks": Rule.INTERNAL,
        _E + "GetRun": Rule.MEMBER,
        _E + "ListRuns": Rule.MEMBER,
        _E + "ListRunLogs": Rule.MEMBER,
        _E + "CancelRun": Rule.MEMBER,
        _E + "RetryRun": Rule.MEMBER,
        _E + "WatchRun": Rule.MEMBER,
        # Alert destinations hold where a tenant's operations people are paged, and deliveries
        # show receivers' answers: admins, like webhook endpoints and their delivery log.
        _E + "CreateAlertDestination": Rule.ADMIN,
        _E + "ListAlertDestinations": Rule.ADMIN,
        _E + "DeleteAlertDestination": Rule.ADMIN,
        _E + "ListAlertDeliveries": Rule.ADMIN,
        # Billing raises billing.past_due with it; an internal caller names any tenant.
        _E + "RaiseAlert": Rule.INTERNAL,
        _A + "UploadArtifact": Rule.INTERNAL,
        _A + "StoreArtifact": Rule.INTERNAL,
        _A + "GetArtifact": Rule.MEMBER,
        _A + "ListArtifacts": Rule.MEMBER,
        _A + "DownloadArtifact": Rule.MEMBER,
        # Deleting loses the content for good, and frees storage for the whole tenant.
        _A + "DeleteArtifact": Rule.ADMIN,
        _B + "HandleStripeEvent": Rule.PUBLIC,
        _B + "GetBillingStatus": Rule.INTERNAL,
        _B + "CreateCheckoutSession": Rule.ADMIN,
        _B + "CreatePortalSession": Rule.ADMIN,
        _B + "GetSubscription": Rule.ADMIN,
        _B + "GetBillingAccount": Rule.INTERNAL,
        _B + "ListStripeDeliveries": Rule.INTERNAL,
        _B + "Reconcile": Rule.INTERNAL,
    }
)


def at_least(role: str, wanted: str) -> bool:
    """Whether a tenant role ranks at or above another (owner > admin > member)."""
    return ROLE_RANK.get(role, 0) >= ROLE_RANK[wanted]


def denial(method: str, role: str) -> DomainError | None:
    """Why a caller asserting `role` may not call `method`, or None when it may."""
    if not role:
        return None  # an internal caller
    rule = RULES.get(method, Rule.INTERNAL)
    if rule == Rule.PUBLIC:
        return None
    if role == OPERATOR_ROLE:
        if rule == Rule.OPERATOR:
            return None
        return PermissionDenied("OPERATOR_NOT_TENANT", "the operator token acts on no tenant")
    if rule in (Rule.MEMBER, Rule.ADMIN, Rule.OWNER) and role in ROLE_RANK:
        if at_least(role, rule.value):
            return None
        return PermissionDenied(
            "ROLE_REQUIRED",
            f"this needs the {rule.value} role or higher; the key has the {role} role",
            {"required_role": rule.value},
        )
    if rule == Rule.OPERATOR:
        return PermissionDenied("OPERATOR_ONLY", "only the operator may do this")
    return PermissionDenied("INTERNAL_ONLY", "this RPC is for AIAS services only")
