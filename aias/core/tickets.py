"""Run tickets: execution's word that a run is a tenant's and of a workflow.

The worker, which claimed the run from execution's own tables, signs (tenant, run, workflow)
with a key derived from the internal token; the artifacts service checks the signature instead
of asking execution whose run it is. Whoever holds the internal token can already call internal
RPCs as any tenant, so a ticket trusts nobody new: it keeps an upload from naming a run of
another tenant, or another workflow's run, without a round trip per upload.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

_VERSION = "v1"
# Domain separation: the internal token's bearer value is never itself a signing key.
_LABEL = b"aias run ticket v1"


def ticket_key(internal_token: str) -> bytes:
    """The signing key of run tickets, derived from the internal token every process shares."""
    return hmac.new(internal_token.encode(), _LABEL, hashlib.sha256).digest()


def _mac(key: bytes, tenant_id: uuid.UUID, run_id: uuid.UUID, workflow_id: uuid.UUID) -> bytes:
    message = b"".join((tenant_id.bytes, run_id.bytes, workflow_id.bytes))
    return hmac.new(key, message, hashlib.sha256).digest()


def run_ticket(key: bytes, tenant_id: uuid.UUID, run_id: uuid.UUID, workflow_id: uuid.UUID) -> str:
    """`v1.<base64url HMAC-SHA256>` over the three ids."""
    mac = _mac(key, tenant_id, run_id, workflow_id)
    return f"{_VERSION}.{base64.urlsafe_b64encode(mac).decode('ascii').rstrip('=')}"


def valid_ticket(
    key: bytes, ticket: str, tenant_id: uuid.UUID, run_id: uuid.UUID, workflow_id: uuid.UUID
) -> bool:
    """Whether `ticket` is the one `run_ticket` gives for these ids (compared in constant time)."""
    expected = run_ticket(key, tenant_id, run_id, workflow_id)
    return hmac.compare_digest(ticket.encode("utf-8", "replace"), expected.encode("ascii"))
