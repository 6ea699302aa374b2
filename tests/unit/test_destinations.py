"""The address policy of outbound HTTP and its URL rules: what is refused, and what allows it."""

from __future__ import annotations

import re

import pytest

from aias.core.destinations import AddressPolicy, checked_url
from aias.core.settings import Env, SettingsError
from aias.services.execution.worker_main import load_settings

DENY = AddressPolicy()


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("10.0.0.5", "10.0.0.5 is a private address; AIAS_HTTP_STEP_ALLOW can allow it"),
        ("172.16.3.4", "172.16.3.4 is a private address"),
        ("192.168.1.1", "192.168.1.1 is a private address"),
        ("127.0.0.1", "127.0.0.1 is a loopback address"),
        ("127.8.9.10", "127.8.9.10 is a loopback address"),
        ("0.0.0.0", "0.0.0.0 is an unspecified address"),
        ("169.254.169.254", "169.254.169.254 is a link-local address"),  # cloud metadata
        ("169.254.10.1", "169.254.10.1 is a link-local address"),
        ("100.64.0.1", "100.64.0.1 is not a public address"),  # carrier-grade NAT
        ("224.0.0.1", "224.0.0.1 is a multicast address"),
        ("255.255.255.255", "255.255.255.255 is a"),
        ("240.0.0.1", "240.0.0.1 is a"),
        ("::1", "::1 is a loopback address"),
        ("::", ":: is an unspecified address"),
        ("fe80::1", "fe80::1 is a link-local address"),
        ("fe80::1%eth0", "fe80::1%eth0 is a link-local address"),
        ("fd00:ec2::254", "fd00:ec2::254 is a private address"),  # cloud metadata over IPv6
        ("ff02::1", "ff02::1 is a multicast address"),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1 (127.0.0.1) is a loopback address"),
        ("::ffff:10.0.0.5", "::ffff:10.0.0.5 (10.0.0.5) is a private address"),
        ("::ffff:169.254.169.254", "::ffff:169.254.169.254 (169.254.169.254) is a link-local"),
        ("2002:7f00:1::", "2002:7f00:1:: (127.0.0.1) is a loopback address"),  # 6to4
        ("64:ff9b::a00:5", "64:ff9b::a00:5 (10.0.0.5) is a private address"),  # DNS64
        ("2001:db8::1", "2001:db8::1 is a"),  # documentation
    ],
)
def test_addresses_that_are_not_public_are_refused(address: str, refusal: str) -> None:
    found = DENY.refusal(address, address)
    assert found is not None
    assert found.startswith(refusal)
    assert found.endswith("; AIAS_HTTP_STEP_ALLOW can allow it")


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert DENY.refusal(address, address) is None
    assert DENY.refusal("api.example.com", address) is None


def test_a_name_is_refused_for_what_it_resolves_to() -> None:
    assert DENY.refusal("localhost", "127.0.0.1") == (
        "localhost resolves to 127.0.0.1, a loopback address; AIAS_HTTP_STEP_ALLOW can allow it"
    )
    assert DENY.refusal("rebind.example.com", "10.1.2.3") == (
        "rebind.example.com resolves to 10.1.2.3, a private address; "
        "AIAS_HTTP_STEP_ALLOW can allow it"
    )


def test_the_allowlist_opens_networks() -> None:
    policy = AddressPolicy.parse(" 10.0.0.0/8, ::1 ,169.254.169.254")
    for address in ("10.1.2.3", "::1", "::ffff:10.0.0.1", "169.254.169.254"):
        assert policy.refusal("some.name", address) is None, address
    for address in ("192.168.0.1", "127.0.0.1", "169.254.169.253", "fe80::1"):
        assert policy.refusal("some.name", address) is not None, address


def test_the_allowlist_opens_host_names_whatever_they_resolve_to() -> None:
    policy = AddressPolicy.parse("localhost,Internal-API.,my_service")
    assert policy.refusal("localhost", "127.0.0.1") is None
    assert policy.refusal("LOCALHOST.", "::1") is None
    assert policy.refusal("internal-api", "10.0.0.5") is None
    assert policy.refusal("my_service", "172.18.0.3") is None
    assert policy.refusal("other", "127.0.0.1") is not None
    # A name allows a name: the same address written as an address is not allowed.
    assert policy.refusal("127.0.0.1", "127.0.0.1") is not None


@pytest.mark.parametrize("text", ["not a host!", "10.0.0.0/33", "300.1.1.1", "*.example.com"])
def test_a_malformed_allowlist_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is neither a network"):
        AddressPolicy.parse(text)


def test_the_worker_reads_the_allowlist_and_names_a_bad_one() -> None:
    environ = {
        "AIAS_APP_DATABASE_URL": "postgresql://app@localhost/aias",
        "AIAS_ARTIFACTS_ADDR": "localhost:50053",
        "AIAS_TENANCY_ADDR": "localhost:50051",
        "AIAS_INTERNAL_TOKEN": "t",
    }
    assert load_settings(Env(environ)).worker.http_allow == AddressPolicy()
    opened = load_settings(Env({**environ, "AIAS_HTTP_STEP_ALLOW": "127.0.0.1,localhost"}))
    assert opened.worker.http_allow == AddressPolicy.parse("127.0.0.1, localhost")
    with pytest.raises(SettingsError, match="AIAS_HTTP_STEP_ALLOW: 'a b' is neither a network"):
        load_settings(Env({**environ, "AIAS_HTTP_STEP_ALLOW": "a b"}))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/", "must start with http:// or https:// (not ftp:)"),
        ("/relative/path", "must start with http:// or https://"),
        ("javascript:alert(1)", "must start with http:// or https:// (not javascript:)"),
        ("http:///path", "has no host"),
        ("https://user:secret@example.com/", "must not carry a user name or password"),
        ("https://token@example.com/", "must not carry a user name or password"),
        ("https://example.com/" + "a" * 8200, "is longer than 8192 characters"),
        ("http://[::1/", "is not a valid URL"),
        ("https://example.com/\x00", "must not contain control characters"),
        ("https://example.com/a\r\nX-Injected: 1", "must not contain control characters"),
    ],
)
def test_urls_outside_the_rules_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(problem)}") as caught:
        checked_url(url)
    assert "secret" not in str(caught.value)


def test_http_and_https_urls_pass() -> None:
    assert checked_url("https://api.example.com/orders?id=1").raw_host == "api.example.com"
    assert checked_url("http://[2606:4700::1]:8080/").port == 8080
