"""Tenancy rules: plans and their entitlements, API key format and hashing, name validation."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from enum import StrEnum

from aias.core.errors import InvalidArgument, Unauthenticated

KEY_PREFIX = "aias"


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True)
class Entitlements:
    """The limits a plan grants; every service enforces the ones it owns."""

    plan: str
    runs_per_month: int
    max_concurrent_runs: int
    max_payload_bytes: int
    webhook_requests_per_minute: int
    artifact_storage_bytes: int
    artifact_retention_days: int


PLANS: dict[str, Entitlements] = {
    "free": Entitlements("free", 1_000, 2, 256 * 1024, 60, 100 * 1024**2, 7),
    "starter": Entitlements("starter", 20_000, 5, 1024**2, 300, 5 * 1024**3, 30),
    "pro": Entitlements("pro", 250_000, 20, 5 * 1024**2, 1_200, 50 * 1024**3, 90),
}
DEFAULT_PLAN = "free"


def entitlements_for(plan: str) -> Entitlements:
    try:
        return PLANS[plan]
    except KeyError:
        raise InvalidArgument(
            "UNKNOWN_PLAN", f"plan {plan!r} does not exist; choose one of {sorted(PLANS)}"
        ) from None


def validate_name(name: str, what: str = "name") -> str:
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= 200:
        raise InvalidArgument("INVALID_NAME", f"{what} must be 1 to 200 characters")
    return cleaned


def hash_secret(secret: str) -> bytes:
    """SHA-256 suffices: secrets are 256 random bits, so there is nothing to brute-force."""
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class IssuedKey:
    """A new API key: the full key to show once and what to store."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID
    full_key: str
    secret_hash: bytes


def issue_key(tenant_id: uuid.UUID) -> IssuedKey:
    """Keys read `aias_<tenant hex>_<key hex>_<secret>`: a lookup needs no cross-tenant search."""
    key_id = uuid.uuid4()
    secret = secrets.token_urlsafe(32)
    full = f"{KEY_PREFIX}_{tenant_id.hex}_{key_id.hex}_{secret}"
    return IssuedKey(key_id, tenant_id, full, hash_secret(secret))


@dataclass(frozen=True)
class PresentedKey:
    tenant_id: uuid.UUID
    key_id: uuid.UUID
    secret: str

    def matches(self, stored_hash: bytes) -> bool:
        return hmac.compare_digest(hash_secret(self.secret), stored_hash)


def parse_key(presented: str) -> PresentedKey:
    """Splits a presented key; any malformed key is the same UNAUTHENTICATED as a wrong one."""
    parts = presented.split("_", 3)
    invalid = Unauthenticated("INVALID_API_KEY", "the API key is not valid")
    if len(parts) != 4 or parts[0] != KEY_PREFIX or not parts[3]:
        raise invalid
    try:
        return PresentedKey(uuid.UUID(hex=parts[1]), uuid.UUID(hex=parts[2]), parts[3])
    except ValueError:
        raise invalid from None
