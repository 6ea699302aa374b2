"""A local HTTP server standing for tenants' alert receivers: records every alert, answers by script."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it: when, the headers (lowercase names) and the body."""

    time: float
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Receives at `/alerts/{key}`. Each key answers the statuses scripted for it in turn, the
    last one again and again (200 when none was scripted)."""

    host: str = "127.0.0.1"
    url: str = ""
    scripts: dict[str, list[int]] = field(default_factory=dict)
    received: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Receiver]:
        app = web.Application()
        app.router.add_post("/alerts/{key}", self._receive)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self.url = f"http://{self.host}:{runner.addresses[0][1]}"
        try:
            yield self
        finally:
            await runner.cleanup()

    def endpoint(self, key: str, *statuses: int) -> str:
        """The URL for `key`, answering `statuses` in turn."""
        self.scripts[key] = list(statuses) or [200]
        return f"{self.url}/alerts/{key}"

    async def wait_for(self, key: str, count: int, seconds: float = 10.0) -> list[Received]:
        """The first `count` requests to `key`, once they have arrived."""
        deadline = time.monotonic() + seconds
        while len(self.received[key]) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{key} received {len(self.received[key])} alerts, not {count}"
                )
            await asyncio.sleep(0.02)
        return self.received[key][:count]

    async def _receive(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        seen = self.received[key]
        seen.append(
            Received(
                time.time(),
                {name.lower(): value for name, value in request.headers.items()},
                await request.read(),
            )
        )
        script = self.scripts.get(key, [200])
        status = script[min(len(seen), len(script)) - 1]
        return web.Response(status=status, text=f"answer {status}")
