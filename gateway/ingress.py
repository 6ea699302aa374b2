"""What a client can make the gateway hold: requests in flight, body bytes in memory, body time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass

import grpc
from aiohttp import HttpVersion11, web
from aiohttp.web_protocol import RequestPayloadError

from aias.gateway.errors import GatewayError

# The largest body the gateway reads; the gRPC channels accept 8 MiB messages, and per-plan
# payload limits below this are the backends' to enforce.
MAX_BODY_BYTES = 8 * 1024 * 1024 - 64 * 1024
_RETRY_AFTER_SECONDS = "1"
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def _overloaded(message: str) -> GatewayError:
    return GatewayError(
        grpc.StatusCode.UNAVAILABLE,
        "OVERLOADED",
        message,
        headers={"Retry-After": _RETRY_AFTER_SECONDS},
    )


def _too_large(limit: int, whose: str = "the gateway") -> GatewayError:
    return GatewayError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "PAYLOAD_TOO_LARGE",
        f"the body is larger than {whose} accepts ({limit} bytes)",
        http_status=413,
        close=True,
    )


def check_head(request: web.Request) -> None:
    """Refuses, from the request line and headers alone, what the gateway will not read."""
    if not request.raw_path.startswith("/"):
        # CONNECT's host:port and OPTIONS' `*` name no resource here; the catch-all route
        # cannot match them, so they are answered before routing.
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "INVALID_REQUEST_TARGET",
            "the gateway serves paths that start with '/'",
            close=True,
        )
    expect = request.headers.get("Expect")
    if expect is not None and expect.lower() != "100-continue":
        raise GatewayError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "EXPECTATION_FAILED",
            "the only expectation the gateway meets is 'Expect: 100-continue'",
            http_status=417,
            close=True,
        )
    declared = request.content_length
    if declared is not None and declared > MAX_BODY_BYTES:
        raise _too_large(MAX_BODY_BYTES)


async def defer_continue(request: web.Request) -> None:
    """aiohttp's expect handler: `100 Continue` waits until the body is wanted (`BodyReader`)."""


class InflightLimit:
    """Counts requests being served; past the maximum, a request is refused at once."""

    def __init__(self, maximum: int) -> None:
        self._maximum = maximum
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Set when the gateway starts to stop: /readyz answers 503 and responses close their
        # connections from then on.
        self.draining = False

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self._count >= self._maximum:
            raise _overloaded(f"the gateway is serving its maximum of {self._maximum} requests")
        self._count += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._count -= 1
            if not self._count:
                self._idle.set()

    async def idle(self, timeout_seconds: float) -> None:
        """Returns once no request is in flight, or at the timeout."""
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout_seconds):
                await self._idle.wait()


@dataclass(frozen=True)
class BodyLimit:
    """The most a request body may hold, and whose limit that is (for the 413's message)."""

    bytes: int
    whose: str


class BodyReader:
    """Reads request bodies whole, within a size limit, a deadline and a shared memory budget.

    A body is reserved at its declared Content-Length (the limit when chunked) before one byte
    is read and stays reserved until the caller is done with what it built from it, so the
    bodies in memory at once never add up to more than the budget.
    """

    def __init__(
        self, budget_bytes: int, timeout_seconds: float, limit_bytes: int = MAX_BODY_BYTES
    ) -> None:
        self._free = budget_bytes
        self._timeout = timeout_seconds
        self._limit = limit_bytes
        # First come, first served: the head of the queue waits alone for room, so a large
        # body is not starved by a stream of small ones.
        self._turn = asyncio.Lock()
        self._freed = asyncio.Event()

    def limit(self, backend_limit: int = 0) -> BodyLimit:
        """The gateway's own limit, lowered to a backend's (an admission's) when it has one."""
        if 0 < backend_limit < self._limit:
            return BodyLimit(backend_limit, "this endpoint")
        return BodyLimit(self._limit, "the gateway")

    @asynccontextmanager
    async def reserve(self, request: web.Request, limit: BodyLimit) -> AsyncIterator[None]:
        """Holds room for the request's body; 503 OVERLOADED when none frees up in time."""
        declared = request.content_length
        if declared is not None and declared > limit.bytes:
            raise _too_large(limit.bytes, limit.whose)
        size = limit.bytes if declared is None else declared
        if self._free >= size and not self._turn.locked():
            # Room, and nobody waiting ahead: taken at once (no timer, no lock).
            self._free -= size
        else:
            try:
                async with asyncio.timeout(self._timeout), self._turn:
                    while self._free < size:
                        self._freed.clear()
                        await self._freed.wait()
                    self._free -= size
            except TimeoutError:
                raise _overloaded(
                    "the gateway is holding as many request bodies as it can"
                ) from None
        try:
            yield
        finally:
            self._free += size
            self._freed.set()

    async def read(self, request: web.Request, limit: BodyLimit) -> bytes:
        """The whole body: 413 past the limit, 408 past the deadline, 400 when malformed."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._timeout):
                if request.version == HttpVersion11 and request.headers.get("Expect"):
                    await request.writer.write(_CONTINUE)
                    # The interim response is not the response: an error can still be sent.
                    request.writer.output_size = 0
                async for chunk in request.content.iter_any():
                    size += len(chunk)
                    if size > limit.bytes:
                        raise _too_large(limit.bytes, limit.whose)
                    chunks.append(chunk)
        except TimeoutError:
            raise GatewayError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "REQUEST_TIMEOUT",
                f"the body did not arrive within {self._timeout:g} s",
                http_status=408,
                close=True,
            ) from None
        except ConnectionError:
            # Nobody reads this answer; 499 (nginx's "client closed request") labels it.
            raise GatewayError(
                grpc.StatusCode.CANCELLED,
                "CLIENT_CLOSED_REQUEST",
                "the client closed the connection before the body ended",
                close=True,
            ) from None
        except RequestPayloadError:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "MALFORMED_BODY",
                "the body does not match its Content-Length or chunked encoding",
                close=True,
            ) from None
        return b"".join(chunks)
