"""Opaque keyset page tokens (AIP-158): the last row's sort key, base64-encoded."""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from datetime import datetime

from aias.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class PageCursor:
    """Position after the last row of a page ordered by (create_time DESC, id DESC)."""

    create_time: datetime
    id: uuid.UUID


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument("INVALID_PAGE_SIZE", "page_size must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(cursor: PageCursor) -> str:
    raw = json.dumps([cursor.create_time.isoformat(), str(cursor.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str) -> PageCursor | None:
    """None for the first page; InvalidArgument for a token this service did not issue."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        when, ident = json.loads(raw)
        return PageCursor(datetime.fromisoformat(when), uuid.UUID(ident))
    except (ValueError, TypeError):
        raise InvalidArgument(
            "INVALID_PAGE_TOKEN",
            "page_token is not one this service issued; start again without it",
        ) from None
