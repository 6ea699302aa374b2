"""Tenancy rules: roles, API key format and hashing, members, billing periods, name validation."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from aias.core import authz
from aias.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from aias.core.text import checked_text

KEY_PREFIX = "aias"
# Shown in key listings: the key's start up to 8 characters of its id; never the secret.
PREFIX_KEY_ID_CHARS = 8
MAX_EMAIL_CHARS = 254
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
# Usage that is not per period (storage) is kept under this fixed period start.
NO_PERIOD = datetime(1970, 1, 1, tzinfo=UTC)


class TenantStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def manages_people(self) -> bool:
        """Owner and admin principals may be created, changed or removed by owners only."""
        return self in (Role.OWNER, Role.ADMIN)


class Metric(StrEnum):
    RUNS = "runs"
    ARTIFACT_STORAGE_BYTES = "artifact_storage_bytes"

    @property
    def per_period(self) -> bool:
        return self == Metric.RUNS

    @property
    def limit_name(self) -> str:
        return "runs_per_month" if self == Metric.RUNS else "artifact_storage_bytes"


def lower_role(a: Role, b: Role) -> Role:
    return a if authz.ROLE_RANK[a.value] <= authz.ROLE_RANK[b.value] else b


def require_owner_for(target: Role, acting_role: str, what: str) -> None:
    """Owners alone manage owners and admins; internal callers (no role) act for the system."""
    if target.manages_people and acting_role and not authz.at_least(acting_role, "owner"):
        raise PermissionDenied(
            "OWNER_REQUIRED",
            f"only an owner may {what} with the {target.value} role",
            {"required_role": "owner"},
        )


def validate_name(name: str, what: str = "name") -> str:
    return checked_text(name, what)


def validate_email(email: str) -> str:
    cleaned = email.strip().lower()
    if len(cleaned) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(cleaned):
        raise InvalidArgument(
            "INVALID_EMAIL",
            f"email must be an address like name@example.com (at most {MAX_EMAIL_CHARS} characters)",
        )
    return checked_text(cleaned, "email", MAX_EMAIL_CHARS)


def period_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The billing period containing `now`: a calendar month in UTC."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def block_grant(requested: int, used: int, limit: int | None) -> int:
    """How much of a partial reservation to grant.

    Blocks shrink as the limit nears (a quarter of what is left, at least one), so the units
    that processes hold unused stay few, and the last ones go to whoever asks first.
    """
    if limit is None:
        return requested
    remaining = limit - used
    if remaining <= 0:
        return 0
    return min(requested, max(1, remaining // 4))


def whole_grant(requested: int, used: int, limit: int | None) -> int:
    """All of a reservation or nothing."""
    return requested if limit is None or used + requested <= limit else 0


def hash_secret(secret: str) -> bytes:
    """SHA-256 suffices: secrets are 256 random bits, so there is nothing to brute-force."""
    return hashlib.sha256(secret.encode()).digest()


def key_prefix(tenant_id: uuid.UUID, key_id: uuid.UUID) -> str:
    return f"{KEY_PREFIX}_{tenant_id.hex}_{key_id.hex[:PREFIX_KEY_ID_CHARS]}"


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
