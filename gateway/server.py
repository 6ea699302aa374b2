"""The HTTP server around the app: connection timeouts, JSON errors for unparsable requests."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, InvalidURLError, LineTooLong

from aias.core.context import request_id_var
from aias.gateway.app import INFLIGHT, init_app, request_id
from aias.gateway.errors import GatewayError, error_response
from aias.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_READ_BUFFER_BYTES = 16 * 1024
# What aiohttp gives a request still running once the grace period is over, before cancelling it.
_STRAGGLER_SECONDS = 1.0


def _refusal(status: int, exc: BaseException | None) -> GatewayError:
    """The answer to a request aiohttp could not parse (400) or serve outside the app (5xx)."""
    if status >= 500:
        return GatewayError(
            grpc.StatusCode.INTERNAL, "INTERNAL", "an internal error occurred; quote the request id"
        )
    if isinstance(exc, LineTooLong):
        return GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "HEADERS_TOO_LARGE",
            "the request line or a header is longer than the gateway reads",
            http_status=431,
        )
    if isinstance(exc, BadHttpMethod):
        message = "the request method is not an HTTP method the gateway knows"
    elif isinstance(exc, InvalidURLError):
        message = "the request target is not a valid URL"
    else:
        message = "the request is not valid HTTP/1.1 (request line, headers or framing)"
    return GatewayError(grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST", message)


class _Protocol(web.RequestHandler):
    """aiohttp's connection handler, answering what it cannot parse in the gateway's error shape.

    aiohttp has no hook for these answers (a middleware never sees a request that did not
    parse), so its handler is subclassed where it makes them.
    """

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("the response has started; no error can follow it")
        error = _refusal(status, exc)
        request_id_var.set(request_id(None))
        # aiohttp's exceptions quote up to 100 bytes of the request line or a header (a webhook
        # secret, an API key), so only their type is logged.
        log.log(
            logging.ERROR if error.http_status >= 500 else logging.INFO,
            "request refused before routing",
            extra={"status": error.http_status, "reason": error.reason, "error": _name(exc)},
        )
        response = error_response(error, request_id_var.get())
        response.headers["X-Request-ID"] = request_id_var.get()
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        log.error(*args, extra={"error": _name(kw.get("exc_info"))})


def _name(exc: object) -> str:
    return type(exc).__name__ if isinstance(exc, BaseException) else ""


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections are served by `_Protocol`."""

    async def _make_server(self) -> web.Server:
        built = await super()._make_server()
        return _Server(
            built.request_handler,
            request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation,
            loop=built._loop,
            **built._kwargs,
        )


@asynccontextmanager
async def serving(settings: GatewaySettings) -> AsyncIterator[int]:
    """Serves the gateway on host:port (0: any free port) and yields the bound port.

    On exit it reports not ready, keeps accepting for the drain delay, stops accepting, lets the
    requests in flight finish within the rest of the grace period, closes the connections, then
    the backend channels.
    """
    app = init_app(settings)
    runner = GatewayRunner(
        app,
        access_log=None,
        shutdown_timeout=_STRAGGLER_SECONDS,
        # aiohttp closes a connection that has not sent a whole request head this long after
        # it opened or after its last response: a slow or stalled head is cut off here.
        keepalive_timeout=settings.header_timeout_seconds,
        # aiohttp buffers up to twice this of a body nobody reads yet; requests waiting for
        # body memory hold that much each (aiohttp's 64 KiB measured 0.6 MiB per waiting request).
        read_bufsize=_READ_BUFFER_BYTES,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        yield int(runner.addresses[0][1])
        inflight = app[INFLIGHT]
        # Not ready from now on, and every response closes its connection: load balancers and
        # keep-alive clients move to other gateways. For the drain delay this one still accepts
        # connections, so a balancer that has not yet seen the 503 gets answers, not refusals.
        inflight.draining = True
        await asyncio.sleep(settings.drain_delay_seconds)
        await site.stop()
        # aiohttp's own graceful stop marks every connection closing at once, and a closing
        # connection drops what it receives: a request whose body was still arriving would be
        # cut off. So the requests in flight finish first, bodies and all.
        await inflight.idle(settings.grace_seconds - settings.drain_delay_seconds)
    finally:
        await runner.cleanup()
