"""Outbound HTTP that reaches only the addresses an AddressPolicy allows, checked at every hop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from aias.core.destinations import AddressPolicy, checked_url, ip_literal, shown_url
from aias.core.errors import clip

DESTINATION_REFUSED = "HTTP_DESTINATION_REFUSED"
INVALID_URL = "HTTP_INVALID_URL"
TOO_MANY_REDIRECTS = "HTTP_TOO_MANY_REDIRECTS"
RESPONSE_TOO_LARGE = "HTTP_RESPONSE_TOO_LARGE"
TIMEOUT = "HTTP_TIMEOUT"
CONNECTION_FAILED = "HTTP_CONNECTION_FAILED"

MAX_REDIRECTS = 5
_REDIRECTS = {301, 302, 303, 307, 308}
# Credentials meant for one origin are not handed to the next one a redirect names.
_ORIGIN_HEADERS = ("authorization", "cookie", "proxy-authorization")
_CHUNK = 64 * 1024


class OutboundError(Exception):
    """A request that got no usable response: `reason` is an UPPER_SNAKE code, `retryable` says
    whether the same request may succeed later."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.retryable = retryable


@dataclass(frozen=True)
class OutboundResponse:
    """The final response (after redirects): its URL, status line, headers and whole body."""

    url: str
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    content_type: str
    body: bytes


class _GuardedResolver(AbstractResolver):
    """Resolves once and refuses a name if any of its addresses is refused; aiohttp then
    connects to exactly the addresses checked here, so a second lookup cannot rebind."""

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._resolver = aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._resolver.resolve(host, port, family)
        for result in results:
            refusal = self._policy.refusal(host, result["host"])
            if refusal is not None:
                raise OutboundError(DESTINATION_REFUSED, refusal)
        return results

    async def close(self) -> None:
        await self._resolver.close()


class OutboundClient:
    """Sends requests under an AddressPolicy: no proxies from the environment, no cookies kept
    between requests, redirects followed one checked hop at a time, bodies read up to a limit.

    The session opens on first use, so a process that never sends anything holds no sockets.
    """

    def __init__(self, policy: AddressPolicy) -> None:
        self._policy = policy
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_GuardedResolver(self._policy))
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=aiohttp.ClientTimeout(total=None),
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes,
        time_limit: float,
        max_body_bytes: int,
        follow_redirects: bool = True,
    ) -> OutboundResponse:
        """The response to `method url`, redirects followed (at most MAX_REDIRECTS) unless told
        not to, all within `time_limit` seconds; raises OutboundError."""
        try:
            target = checked_url(url)
        except ValueError as error:
            raise OutboundError(INVALID_URL, f"the URL {error}") from None
        try:
            async with asyncio.timeout(time_limit):
                return await self._follow(
                    method, target, dict(headers), body, max_body_bytes, follow_redirects
                )
        except TimeoutError:
            raise OutboundError(
                TIMEOUT,
                f"{method} {shown_url(target)} got no complete response within {time_limit:g} s",
                retryable=True,
            ) from None

    async def _follow(
        self,
        method: str,
        url: URL,
        headers: dict[str, str],
        body: bytes,
        limit: int,
        redirects: bool,
    ) -> OutboundResponse:
        session = self._open()
        for _ in range(MAX_REDIRECTS + 1):
            self._check_literal(url)
            try:
                async with session.request(
                    method, url, headers=headers, data=body or None, allow_redirects=False
                ) as response:
                    location = response.headers.get("Location")
                    if not redirects or response.status not in _REDIRECTS or location is None:
                        return OutboundResponse(
                            str(url),
                            response.status,
                            response.reason or "",
                            tuple(response.headers.items()),
                            response.headers.get("Content-Type", ""),
                            await _read(response, limit),
                        )
            except aiohttp.ClientError as error:
                raise OutboundError(
                    CONNECTION_FAILED,
                    f"{method} {shown_url(url)} failed: {clip(str(error), 200)}",
                    retryable=True,
                ) from None
            following = _redirect_target(url, location)
            if (following.scheme, following.raw_host, following.port) != (
                url.scheme,
                url.raw_host,
                url.port,
            ):
                headers = {k: v for k, v in headers.items() if k.lower() not in _ORIGIN_HEADERS}
            # Like browsers: a 303, and a 301 or 302 after a POST, become a GET without a body.
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", b""
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
            url = following
        raise OutboundError(TOO_MANY_REDIRECTS, f"more than {MAX_REDIRECTS} redirects")

    def _check_literal(self, url: URL) -> None:
        """Checks a host written as an IP address, which aiohttp connects to without asking
        the resolver."""
        host = url.raw_host or ""
        if ip_literal(host) is None:
            # aiohttp also skips the resolver for hosts it takes for addresses (digits and dots,
            # or any ':'); one that is not a valid address is refused here, not left to it.
            if ":" in host or host.replace(".", "").isdigit():
                raise OutboundError(INVALID_URL, f"{clip(host)} is not a valid IP address")
            return
        refusal = self._policy.refusal(host, host)
        if refusal is not None:
            raise OutboundError(DESTINATION_REFUSED, refusal)


def _redirect_target(url: URL, location: str) -> URL:
    try:
        return checked_url(str(url.join(URL(location))))
    except ValueError as error:
        raise OutboundError(
            INVALID_URL, f"{shown_url(url)} redirects to a URL that {error}"
        ) from None


async def _read(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body (decompressed), refused once it is over `limit` bytes."""
    too_large = OutboundError(
        RESPONSE_TOO_LARGE, f"the response body is over the limit of {limit:,} bytes"
    )
    if response.content_length is not None and response.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)
