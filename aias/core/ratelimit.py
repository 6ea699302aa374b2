"""Request rates with a burst, counted by the `limits` library in memory or in shared Redis."""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

from limits import RateLimitItemPerSecond
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

if TYPE_CHECKING:
    import coredis

log = logging.getLogger(__name__)


def storage_uri(redis_url: str) -> str:
    """The `limits` storage for a Redis URL (shared by every process), or process memory."""
    if not redis_url:
        return "async+memory://"
    scheme, _, rest = redis_url.partition("://")
    if scheme not in ("redis", "rediss"):
        raise ValueError(f"AIAS_REDIS_URL must be a redis:// or rediss:// URL, got {scheme!r}")
    return f"async+{scheme}://{rest}"


class RateLimiter:
    """A moving window per key: at most `burst` hits in any `burst / rate` seconds.

    That admits a burst of `burst` at once and `rate` per second sustained. When the shared
    store cannot be reached, requests are let through (and logged): a rate limit protects the
    system, and an unreachable Redis should not also stop every webhook.
    """

    def __init__(self, redis_url: str = "") -> None:
        self._pool: coredis.ConnectionPool | None = None
        if redis_url:
            # Imported only with Redis: coredis and its beartype add ~10 MiB to a process.
            import coredis

            # Our own pool, so the connections can be closed at shutdown (the storage has no close).
            self._pool = coredis.ConnectionPool.from_url(redis_url)
            # The storage's options are typed as scalars, but it hands `connection_pool` to coredis.
            options: dict[str, Any] = {"connection_pool": self._pool}
            storage = storage_from_string(storage_uri(redis_url), **options)
        else:
            storage = storage_from_string(storage_uri(""))
        self._limiter = MovingWindowRateLimiter(storage)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.disconnect()

    async def hit(self, key: str, rate: int, burst: int) -> float | None:
        """Counts one request; None when allowed, else the seconds until one would be."""
        burst = max(burst, rate, 1)
        window = max(1, math.ceil(burst / max(rate, 1)))
        item = RateLimitItemPerSecond(burst, window)
        try:
            if await self._limiter.hit(item, key):
                return None
            stats = await self._limiter.get_window_stats(item, key)
        except Exception as error:  # the storage backend's own errors have no common base
            log.warning(
                "rate limit store unreachable; request allowed", extra={"error": str(error)}
            )
            return None
        return max(stats.reset_time - time.time(), 0.001)
