"""Where outbound HTTP may go: the URL rules and the address policy; plain Python, no I/O."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

from yarl import URL

from aias.core.errors import clip

ALLOW_SETTING = "AIAS_HTTP_STEP_ALLOW"
MAX_URL_CHARS = 8192
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

# The DNS64 prefix: in an IPv6-only network every IPv4 host appears behind it.
_NAT64 = IPv6Network("64:ff9b::/96")
# Letters, digits, '-' and '_' (Docker service names) in dot-separated labels.
_HOST_NAME = re.compile(
    r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$"
)

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network


def checked_url(text: str) -> URL:
    """An absolute http(s) URL with a host and no user info; a ValueError says what is wrong,
    worded to follow the URL's name ("... must start with http:// or https://"). It never
    quotes the URL, which may carry a password."""
    if len(text) > MAX_URL_CHARS:
        raise ValueError(f"is longer than {MAX_URL_CHARS} characters")
    if _CONTROL.search(text):
        raise ValueError("must not contain control characters (percent-encode them)")
    try:
        url = URL(text)
    except (ValueError, TypeError):
        raise ValueError("is not a valid URL") from None
    if url.scheme not in ("http", "https"):
        found = f" (not {clip(url.scheme, 16)}:)" if url.scheme else ""
        raise ValueError(f"must start with http:// or https://{found}")
    if not url.raw_host:
        raise ValueError("has no host")
    if url.raw_user is not None or url.raw_password is not None:
        raise ValueError("must not carry a user name or password (send credentials in a header)")
    return url


def shown_url(url: URL) -> str:
    """A URL as messages and logs show it: without query and fragment, which may hold secrets."""
    return str(url.with_query(None).with_fragment(None))


def normal_host(host: str) -> str:
    """A host name as the allowlist compares it: lowercase, without the root's trailing dot."""
    return host.lower().rstrip(".")


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, DNS64), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFF_FFFF)
    return None


def _kind(address: Address) -> str | None:
    """Why an address is not reachable by default, or None for a public one."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class AddressPolicy:
    """Public addresses may be reached; others only when a network or a host name allows them.

    A host name allows whatever it resolves to; a network allows its addresses whatever the
    name. IPv6 addresses that stand for an IPv4 address (`::ffff:10.0.0.1`) are judged as that
    address.
    """

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, text: str) -> AddressPolicy:
        """A comma-separated list of networks (`10.0.0.0/8`, `::1`) and host names."""
        networks: list[Network] = []
        hosts: set[str] = set()
        for item in (part.strip() for part in text.split(",")):
            if not item:
                continue
            try:
                networks.append(ip_network(item, strict=False))
                continue
            except ValueError:
                pass
            host = normal_host(item)
            # Digits and dots are a mistyped address, never a name the allowlist could match.
            if not _HOST_NAME.match(host) or host.replace(".", "").isdigit():
                raise ValueError(f"{item!r} is neither a network (CIDR) nor a host name")
            hosts.add(host)
        return cls(tuple(networks), frozenset(hosts))

    def refusal(self, host: str, address: str) -> str | None:
        """Why `host` may not be reached at `address` (an IP address), or None when it may."""
        parsed = ip_address(address)
        judged = (_embedded_ipv4(parsed) if isinstance(parsed, IPv6Address) else None) or parsed
        kind = _kind(judged)
        if kind is None or normal_host(host) in self.hosts:
            return None
        for network in self.networks:
            if any(a.version == network.version and a in network for a in (parsed, judged)):
                return None
        shown = address if judged is parsed else f"{address} ({judged})"
        if ip_literal(host) is not None:
            return f"{shown} is {kind}; {ALLOW_SETTING} can allow it"
        return f"{clip(host)} resolves to {shown}, {kind}; {ALLOW_SETTING} can allow it"


def ip_literal(host: str) -> Address | None:
    """The address a URL's host is written as, or None when the host is a name."""
    try:
        return ip_address(host)
    except ValueError:
        return None
