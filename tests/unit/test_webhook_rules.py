"""Standard Webhooks signatures, webhook bodies as workflows see them, and update masks."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from standardwebhooks import Webhook

from aias.core import signing
from aias.core.errors import DomainError, InvalidArgument, Unauthenticated
from aias.core.protoconv import update_paths
from aias.services.execution.domain import MAX_PAYLOAD_DEPTH, check_payload, decode_payload
from aias.tenancy.v1 import tenancy_service_pb2 as tenancy_pb

# The example secret of the Standard Webhooks specification.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _headers(secret: str, body: bytes, sent: float) -> tuple[str, str, str]:
    msg_id = "msg_p5jXN8AQM9LWM0D4loKWxJek"
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(sent, UTC), body.decode())
    return msg_id, str(int(sent)), signature


def test_signatures_match_the_reference_library() -> None:
    key = signing.parse_secret(SPEC_SECRET, "secret")
    body = b'{"test": 2432232314}'
    msg_id, sent, signature = _headers(SPEC_SECRET, body, 1614265330)

    assert signing.sign(key, msg_id, sent, body) == signature
    signing.verify(key, msg_id, sent, signature, body, now=1614265330 + 299)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"body": b'{"test": 1}'}, "INVALID_SIGNATURE"),
        ({"signature": "v1,AAAA"}, "INVALID_SIGNATURE"),
        ({"signature": "v2,whatever"}, "INVALID_SIGNATURE"),
        ({"signature": "v1," + "A" * 2000}, "INVALID_SIGNATURE"),
        ({"now": 1614265330 + 301}, "STALE_SIGNATURE"),
        ({"now": 1614265330 - 301}, "STALE_SIGNATURE"),
        ({"timestamp": "1614265330.5"}, "INVALID_SIGNATURE"),
        ({"timestamp": "-1"}, "INVALID_SIGNATURE"),
        ({"msg_id": ""}, "MISSING_SIGNATURE"),
        ({"signature": ""}, "MISSING_SIGNATURE"),
    ],
)
def test_what_a_signature_check_refuses(change: dict[str, Any], reason: str) -> None:
    body = b'{"test": 2432232314}'
    msg_id, sent, signature = _headers(SPEC_SECRET, body, 1614265330)
    given: dict[str, Any] = {
        "key": signing.parse_secret(SPEC_SECRET, "secret"),
        "msg_id": msg_id,
        "timestamp": sent,
        "signature": signature,
        "body": body,
        "now": 1614265330,
    }
    with pytest.raises(Unauthenticated) as caught:
        signing.verify(**{**given, **change})
    assert caught.value.reason == reason


def test_any_of_several_signatures_may_match_and_binary_bodies_verify() -> None:
    secret, key = signing.generate_secret()
    body = bytes(range(256))
    other = signing.sign(signing.generate_secret()[1], "m", "100", body)
    signature = f"{other} {signing.sign(key, 'm', '100', body)}"

    signing.verify(key, "m", "100", signature, body, now=100)
    assert signing.parse_secret(secret, "s") == key
    assert len(key) == signing.GENERATED_KEY_BYTES


@pytest.mark.parametrize(
    "secret", ["", "whsec_", "whsec_!!!", "whsec_" + base64.b64encode(b"x" * 23).decode()]
)
def test_malformed_signing_secrets_are_refused(secret: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        signing.parse_secret(secret, "signing_secret")
    assert caught.value.reason == "INVALID_SIGNING_SECRET"


def test_a_secret_without_the_prefix_or_padding_is_the_same_key() -> None:
    key = signing.parse_secret(SPEC_SECRET, "s")
    assert signing.parse_secret(SPEC_SECRET.removeprefix("whsec_"), "s") == key
    signing.check_headers("m", str(int(time.time())), "v1,x", time.time())


@pytest.mark.parametrize(
    ("body", "content_type", "expected"),
    [
        (b'{"a": [1]}', "application/cloudevents+json", {"a": [1]}),
        (b"[1, 2]", "", [1, 2]),
        (b"", "", None),
        (b"a,b\n1,2\n", "text/csv", {"content_type": "text/csv", "text": "a,b\n1,2\n"}),
        (b"<a/>", "image/svg+xml", {"content_type": "image/svg+xml", "text": "<a/>"}),
        (b"caf\xe9", "text/plain", {"content_type": "text/plain", "base64": "Y2Fm6Q=="}),
        (
            b"x",
            "text/plain; charset=nope",
            {"content_type": "text/plain; charset=nope", "base64": "eA=="},
        ),
        (
            b"\x00\x01",
            "application/octet-stream",
            {"content_type": "application/octet-stream", "base64": "AAE="},
        ),
        (b"42", "", {"content_type": "", "base64": "NDI="}),
    ],
)
def test_bodies_as_a_workflow_gets_them(body: bytes, content_type: str, expected: Any) -> None:
    assert decode_payload(body, content_type) == expected
    check_payload(body, content_type)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [(b"{oops", "application/json"), (b"[1,", ""), (b"{NaN", "application/x-www-form-urlencoded")],
)
def test_bodies_that_claim_json_must_be_json(body: bytes, content_type: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        check_payload(body, content_type)
    assert caught.value.reason == "INVALID_PAYLOAD"


def _nested(levels: int, wide: bool) -> bytes:
    """JSON nesting `levels` deep, alternating objects and arrays; `wide` adds flat siblings
    and a shallower branch at each level, so the deepest path is not the first one."""
    value: Any = 0
    for level in range(levels):
        # The container made here sits at depth `levels - level`; its siblings go two deeper.
        siblings = wide and level >= 2
        if level % 2:
            value = [value, {"flat": [1, 2]}] if siblings else [value]
        else:
            value = {"a": "x", "deeper": value, "b": [[]]} if siblings else {"deeper": value}
    return json.dumps(value).encode()


@pytest.mark.parametrize("wide", [False, True])
def test_json_may_nest_to_the_limit_and_no_deeper(wide: bool) -> None:
    check_payload(_nested(MAX_PAYLOAD_DEPTH, wide), "application/json")
    # Past the parser's own recursion limit too.
    for body in (_nested(MAX_PAYLOAD_DEPTH + 1, wide), b"[" * 5_000 + b"]" * 5_000):
        with pytest.raises(InvalidArgument) as caught:
            check_payload(body, "application/json")
        assert caught.value.reason == "PAYLOAD_TOO_DEEP"


def test_an_empty_mask_means_the_fields_the_request_sets() -> None:
    allowed = ("plan", "status", "clear_limit_overrides")
    request = tenancy_pb.UpdateTenantRequest(tenant_id="t", plan="pro")
    assert update_paths(request, field_mask_pb2.FieldMask(), allowed) == {"plan"}
    request.clear_limit_overrides.append("workflows")
    assert update_paths(request, field_mask_pb2.FieldMask(), allowed) == {
        "plan",
        "clear_limit_overrides",
    }
    star = field_mask_pb2.FieldMask(paths=["*"])
    assert update_paths(request, star, allowed) == set(allowed)
    named = field_mask_pb2.FieldMask(paths=["status"])
    assert update_paths(request, named, allowed) == {"status"}
    with pytest.raises(DomainError) as caught:
        update_paths(request, field_mask_pb2.FieldMask(paths=["plan", "tenant_id"]), allowed)
    assert caught.value.reason == "INVALID_UPDATE_MASK"
