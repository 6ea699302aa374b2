"""Opaque keyset page tokens (AIP-158): the last row's sort key, bound to the list's filter."""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import Select, tuple_

from aias.core.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class PageCursor:
    """Position after the last row of a page ordered by (create_time DESC, id DESC)."""

    create_time: datetime
    id: uuid.UUID


def page_size(requested: int) -> int:
    """0 means the default; values above the maximum are lowered to it."""
    if requested < 0:
        raise InvalidArgument(
            "INVALID_PAGE_SIZE", f"page_size must not be negative, got {requested}"
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(cursor: PageCursor, scope: str = "") -> str:
    """`scope` names the list's filter, so a token cannot be replayed against another filter."""
    payload = {"t": cursor.create_time.isoformat(), "i": str(cursor.id), "s": scope}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_token(token: str, scope: str = "") -> PageCursor | None:
    """None for the first page; InvalidArgument for a token this list did not issue."""
    if not token:
        return None
    invalid = _invalid_token()
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        cursor = PageCursor(datetime.fromisoformat(payload["t"]), uuid.UUID(payload["i"]))
        same_scope = payload["s"] == scope
    except (binascii.Error, UnicodeError, ValueError, KeyError, TypeError):
        raise invalid from None
    if not same_scope or cursor.create_time.tzinfo is None:
        raise invalid
    return cursor


def encode_number_token(number: int, scope: str = "") -> str:
    """A token for lists keyed by a number (e.g. versions, newest first): the last one's."""
    payload = {"n": number, "s": scope}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_number_token(token: str, scope: str = "") -> int | None:
    """None for the first page; InvalidArgument for a token this list did not issue."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        number, same_scope = payload["n"], payload["s"] == scope
    except (binascii.Error, UnicodeError, ValueError, KeyError, TypeError):
        number, same_scope = None, False
    if not same_scope or not isinstance(number, int) or isinstance(number, bool):
        raise _invalid_token()
    return number


def _invalid_token() -> InvalidArgument:
    return InvalidArgument(
        "INVALID_PAGE_TOKEN",
        "page_token is not one this list returned for the same filter; start again without it",
    )


class _Keyed(Protocol):
    @property
    def create_time(self) -> datetime: ...

    @property
    def id(self) -> uuid.UUID: ...


_Query = TypeVar("_Query", bound=Select[Any])


def newest_first(query: _Query, model: Any, cursor: PageCursor | None, limit: int) -> _Query:
    """A page of `query` ordered by (create_time DESC, id DESC), after `cursor`."""
    if cursor is not None:
        query = query.where(
            tuple_(model.create_time, model.id) < tuple_(cursor.create_time, cursor.id)
        )
    return query.order_by(model.create_time.desc(), model.id.desc()).limit(limit)


def next_page_token(rows: Sequence[_Keyed], limit: int, scope: str = "") -> str:
    """A token only when a row beyond the page exists (the query fetched limit + 1)."""
    if len(rows) <= limit:
        return ""
    last = rows[limit - 1]
    return encode_token(PageCursor(last.create_time, last.id), scope)
