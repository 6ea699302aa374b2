"""A local HTTP server standing for the endpoints http_request steps call, scripted by path."""

from __future__ import annotations

import asyncio
import gzip
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Remote:
    """A local HTTP server on port 0 whose answers the tests script by path.

    `/echo` answers JSON describing the request; `/status/{code}` answers that status;
    `/fail/{n}/{key}` answers 503 to the first `n` requests per key, then like `/echo`;
    `/slow/{n}/{key}` holds the first `n` requests per key for 5 s; `/delay/{ms}` answers like
    `/echo` after `ms` milliseconds; `/redirect?to=URL` and
    `/loop` redirect; `/bytes/{n}` answers `n` bytes (gzipped with `?gzip`); `/cookie` sets a
    cookie.
    """

    host: str = "127.0.0.1"
    hits: Counter[str] = field(default_factory=Counter)
    seen: list[dict[str, object]] = field(default_factory=list)
    url: str = ""

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Remote]:
        app = web.Application(middlewares=[self._count])
        app.router.add_route("*", "/echo", self._echo)
        app.router.add_route("*", "/status/{code}", self._status)
        app.router.add_route("*", "/fail/{n}/{key}", self._fail)
        app.router.add_route("*", "/slow/{n}/{key}", self._slow)
        app.router.add_route("*", "/delay/{ms}", self._delay)
        app.router.add_route("*", "/redirect", self._redirect)
        app.router.add_get("/loop", self._loop)
        app.router.add_get("/bytes/{n}", self._bytes)
        app.router.add_get("/cookie", self._cookie)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self.url = f"http://{self.host}:{runner.addresses[0][1]}"
        try:
            yield self
        finally:
            await runner.cleanup()

    @web.middleware
    async def _count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.hits[request.path] += 1
        return await handler(request)

    async def _echo(self, request: web.Request) -> web.Response:
        seen: dict[str, object] = {
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": {name.lower(): value for name, value in request.headers.items()},
            "body": await request.text(),
        }
        self.seen.append(seen)
        return web.json_response(seen)

    async def _status(self, request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"answer {code}\nfrom the remote")

    async def _fail(self, request: web.Request) -> web.Response:
        if self.hits[request.path] <= int(request.match_info["n"]):
            return web.Response(status=503, text="down for maintenance")
        return await self._echo(request)

    async def _slow(self, request: web.Request) -> web.Response:
        if self.hits[request.path] <= int(request.match_info["n"]):
            await asyncio.sleep(5)
        return await self._echo(request)

    async def _delay(self, request: web.Request) -> web.Response:
        await asyncio.sleep(int(request.match_info["ms"]) / 1000)
        return await self._echo(request)

    async def _redirect(self, request: web.Request) -> web.Response:
        status = int(request.query.get("status", "302"))
        return web.Response(status=status, headers={"Location": request.query["to"]})

    async def _loop(self, _request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")

    async def _bytes(self, request: web.Request) -> web.Response:
        body = b"x" * int(request.match_info["n"])
        if "gzip" in request.query:
            return web.Response(body=gzip.compress(body), headers={"Content-Encoding": "gzip"})
        return web.Response(body=body)

    async def _cookie(self, _request: web.Request) -> web.Response:
        response = web.Response(text="set")
        response.set_cookie("session", "secret-of-one-tenant")
        return response
