"""A small bounded in-process cache whose entries expire, for lookups a hot path repeats."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


class TtlCache(Generic[_K, _V]):
    """Entries live `ttl` seconds; past `max_entries` the least recently stored one goes first."""

    def __init__(
        self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[_K, tuple[float, _V]] = OrderedDict()

    def get(self, key: _K) -> _V | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def put(self, key: _K, value: _V) -> None:
        self._entries[key] = (self._clock() + self._ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def discard(self, key: _K) -> None:
        self._entries.pop(key, None)

    def discard_where(self, predicate: Callable[[_V], bool]) -> None:
        """Drops every entry whose value matches."""
        for key in [k for k, (_, value) in self._entries.items() if predicate(value)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
