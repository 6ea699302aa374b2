"""Small bounded in-process caches for lookups a hot path repeats: expiring, and kept coherent."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
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

    def discard_keys(self, predicate: Callable[[_K], bool]) -> None:
        """Drops every entry whose key matches."""
        for key in [k for k in self._entries if predicate(k)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()


_G = TypeVar("_G", bound=Hashable)


class CoherentCache(Generic[_K, _G, _V]):
    """A TtlCache filled by a loader and emptied by change notices, per group of keys.

    Concurrent misses of one key share one load. A load that raced a change notice for its
    group is returned but not kept, so a notice is never undone by a stale answer.
    """

    def __init__(
        self,
        group_of: Callable[[_K], _G],
        ttl: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._group_of = group_of
        self._entries: TtlCache[_K, _V] = TtlCache(ttl, max_entries, clock)
        self._inflight: dict[_K, asyncio.Future[_V]] = {}
        self._generations: dict[_G, int] = {}
        self._epoch = 0

    def peek(self, key: _K) -> _V | None:
        return self._entries.get(key)

    async def get(self, key: _K, load: Callable[[], Awaitable[_V]]) -> _V:
        if (cached := self._entries.get(key)) is not None:
            return cached
        if (pending := self._inflight.get(key)) is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        group = self._group_of(key)
        seen = (self._epoch, self._generations.get(group, 0))
        try:
            value = await load()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved here: only waiters decide whether it is reported
            raise
        finally:
            del self._inflight[key]
        if seen == (self._epoch, self._generations.get(group, 0)):
            self._entries.put(key, value)
        future.set_result(value)
        return value

    def forget(self, group: _G) -> None:
        """Drops every entry of one group (one tenant, say)."""
        self._generations[group] = self._generations.get(group, 0) + 1
        self._entries.discard_keys(lambda key: self._group_of(key) == group)

    def forget_key(self, key: _K) -> None:
        self._entries.discard(key)

    def clear(self) -> None:
        self._epoch += 1
        self._generations.clear()
        self._entries.clear()
