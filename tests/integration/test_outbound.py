"""The outbound HTTP client against local servers: every hop checked, bounded, no ambient state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from aias.core.destinations import AddressPolicy
from aias.core.outbound import OutboundClient, OutboundError, OutboundResponse
from tests.remote_fake import Remote

LOOPBACK = AddressPolicy.parse("127.0.0.1")


@pytest.fixture
async def remote() -> AsyncIterator[Remote]:
    async with Remote().running() as server:
        yield server


@pytest.fixture
async def client() -> AsyncIterator[OutboundClient]:
    """A client that may reach 127.0.0.1, where the test servers listen, and nothing else local."""
    outbound = OutboundClient(LOOPBACK)
    yield outbound
    await outbound.close()


async def _get(
    client: OutboundClient, url: str, time_limit: float = 5.0, limit: int = 2**20
) -> OutboundResponse:
    return await client.request(
        "GET", url, headers={}, body=b"", time_limit=time_limit, max_body_bytes=limit
    )


async def _refusal(client: OutboundClient, url: str) -> OutboundError:
    with pytest.raises(OutboundError) as caught:
        await _get(client, url)
    return caught.value


async def test_a_post_reaches_an_allowed_address(client: OutboundClient, remote: Remote) -> None:
    response = await client.request(
        "POST",
        f"{remote.url}/echo?q=1",
        headers={"Content-Type": "application/json", "X-Order": "A-1"},
        body=b'{"a":1}',
        time_limit=5,
        max_body_bytes=2**20,
    )
    assert response.status == 200
    assert response.content_type.startswith("application/json")
    echoed = json.loads(response.body)
    assert (echoed["method"], echoed["query"], echoed["body"]) == ("POST", "q=1", '{"a":1}')
    assert echoed["headers"]["x-order"] == "A-1"


@pytest.mark.parametrize(
    ("host", "refusal"),
    [
        ("127.0.0.1", "127.0.0.1 is a loopback address; AIAS_HTTP_STEP_ALLOW can allow it"),
        ("localhost", "localhost resolves to 127.0.0.1, a loopback address"),
        ("[::1]", "::1 is a loopback address"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1 (127.0.0.1) is a loopback address"),
        # glibc reads this as 127.0.0.1; the address it resolves to is what is judged.
        ("0x7f.1", "0x7f.1 resolves to 127.0.0.1, a loopback address"),
        ("169.254.169.254", "169.254.169.254 is a link-local address"),
        ("10.0.0.5", "10.0.0.5 is a private address"),
        ("0.0.0.0", "0.0.0.0 is an unspecified address"),
    ],
)
async def test_local_destinations_are_refused_without_the_allowlist(
    remote: Remote, host: str, refusal: str
) -> None:
    port = remote.url.rsplit(":", 1)[1]
    outbound = OutboundClient(AddressPolicy())
    try:
        error = await _refusal(outbound, f"http://{host}:{port}/echo")
    finally:
        await outbound.close()
    assert (error.reason, error.retryable) == ("HTTP_DESTINATION_REFUSED", False)
    assert refusal in str(error)
    assert remote.hits["/echo"] == 0


@pytest.mark.parametrize("host", ["2130706433", "127.1", "017700000001"])
async def test_numeric_hosts_that_are_not_addresses_are_refused(
    client: OutboundClient, remote: Remote, host: str
) -> None:
    port = remote.url.rsplit(":", 1)[1]
    error = await _refusal(client, f"http://{host}:{port}/echo")
    assert error.reason in ("HTTP_INVALID_URL", "HTTP_DESTINATION_REFUSED")
    assert remote.hits["/echo"] == 0


async def test_an_allowed_host_name_reaches_what_it_resolves_to(remote: Remote) -> None:
    port = remote.url.rsplit(":", 1)[1]
    outbound = OutboundClient(AddressPolicy.parse("localhost"))
    try:
        response = await _get(outbound, f"http://localhost:{port}/echo")
        refused = await _refusal(outbound, f"{remote.url}/echo")
    finally:
        await outbound.close()
    assert response.status == 200
    # The name is allowed, not the address: written as an address it is refused.
    assert refused.reason == "HTTP_DESTINATION_REFUSED"


async def test_a_redirect_to_a_disallowed_address_is_refused_before_it_is_followed(
    client: OutboundClient, remote: Remote
) -> None:
    # 127.0.0.2 is loopback as well, and really listens: only the policy keeps the request out.
    async with Remote(host="127.0.0.2").running() as hidden:
        for target in (f"{hidden.url}/echo", "http://169.254.169.254/latest/meta-data/"):
            error = await _refusal(client, f"{remote.url}/redirect?to={target}")
            assert error.reason == "HTTP_DESTINATION_REFUSED"
        assert "127.0.0.2 is a loopback address" in str(
            await _refusal(client, f"{remote.url}/redirect?to={hidden.url}/echo&status=307")
        )
        assert hidden.hits["/echo"] == 0


async def test_redirects_are_followed_checked_and_bounded(
    client: OutboundClient, remote: Remote
) -> None:
    followed = await client.request(
        "POST",
        f"{remote.url}/redirect?to=/echo&status=303",
        headers={"Content-Type": "text/plain", "Authorization": "Bearer t"},
        body=b"hello",
        time_limit=5,
        max_body_bytes=2**20,
    )
    assert followed.url == f"{remote.url}/echo"
    echoed = json.loads(followed.body)
    # A 303 turns into a GET without the body; the same origin keeps its credentials.
    assert (echoed["method"], echoed["body"]) == ("GET", "")
    assert echoed["headers"]["authorization"] == "Bearer t"
    assert "content-type" not in echoed["headers"]
    kept = await client.request(
        "PUT",
        f"{remote.url}/redirect?to=/echo&status=307",
        headers={},
        body=b"same",
        time_limit=5,
        max_body_bytes=2**20,
    )
    assert json.loads(kept.body)["method"] == "PUT"
    assert json.loads(kept.body)["body"] == "same"
    looping = await _refusal(client, f"{remote.url}/loop")
    assert (looping.reason, remote.hits["/loop"]) == ("HTTP_TOO_MANY_REDIRECTS", 6)
    scheme = await _refusal(client, f"{remote.url}/redirect?to=file:///etc/passwd")
    assert scheme.reason == "HTTP_INVALID_URL"
    assert "must start with http:// or https://" in str(scheme)


async def test_credentials_are_not_carried_to_another_origin(remote: Remote) -> None:
    outbound = OutboundClient(AddressPolicy.parse("127.0.0.1, localhost"))
    port = remote.url.rsplit(":", 1)[1]
    try:
        response = await outbound.request(
            "GET",
            f"{remote.url}/redirect?to=http://localhost:{port}/echo",
            headers={"Authorization": "Bearer t", "X-Kept": "yes"},
            body=b"",
            time_limit=5,
            max_body_bytes=2**20,
        )
    finally:
        await outbound.close()
    headers = json.loads(response.body)["headers"]
    assert "authorization" not in headers
    assert headers["x-kept"] == "yes"


async def test_urls_with_user_info_or_other_schemes_are_refused(client: OutboundClient) -> None:
    for url, rule in [
        ("http://user:secret@127.0.0.1/", "must not carry a user name or password"),
        ("ftp://127.0.0.1/", "must start with http:// or https://"),
        ("http:///path", "has no host"),
    ]:
        error = await _refusal(client, url)
        assert error.reason == "HTTP_INVALID_URL"
        assert rule in str(error)
        assert "secret" not in str(error)


async def test_bodies_are_read_up_to_the_limit(client: OutboundClient, remote: Remote) -> None:
    assert (await _get(client, f"{remote.url}/bytes/100", limit=100)).body == b"x" * 100
    # Declared too large, and (gzip: 10 MB from about 10 kB on the wire) found too large.
    for url in (f"{remote.url}/bytes/101", f"{remote.url}/bytes/10000000?gzip=1"):
        with pytest.raises(OutboundError) as caught:
            await _get(client, url, limit=100)
        assert str(caught.value) == (
            "HTTP_RESPONSE_TOO_LARGE: the response body is over the limit of 100 bytes"
        )
        assert not caught.value.retryable


async def test_timeouts_and_refused_connections_are_retryable(
    client: OutboundClient, remote: Remote
) -> None:
    with pytest.raises(OutboundError) as slow:
        await _get(client, f"{remote.url}/slow/1/a?token=secret", time_limit=0.2)
    assert (slow.value.reason, slow.value.retryable) == ("HTTP_TIMEOUT", True)
    assert str(slow.value) == (
        f"HTTP_TIMEOUT: GET {remote.url}/slow/1/a got no complete response within 0.2 s"
    )
    closed = remote.url.rsplit(":", 1)[0] + ":1"
    with pytest.raises(OutboundError) as refused:
        await _get(client, f"{closed}/echo")
    assert (refused.value.reason, refused.value.retryable) == ("HTTP_CONNECTION_FAILED", True)


async def test_no_proxy_from_the_environment_and_no_cookies_kept(
    client: OutboundClient, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Remote().running() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        await _get(client, f"{remote.url}/cookie")
        echoed = json.loads((await _get(client, f"{remote.url}/echo")).body)
        assert sum(proxy.hits.values()) == 0
    assert "cookie" not in echoed["headers"]
