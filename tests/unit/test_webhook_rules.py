"""Standard Webhooks signatures as the webhook ingest checks them, and update masks."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from google.protobuf import field_mask_pb2
from standardwebhooks import Webhook

from aias.core import signing
from aias.core.errors import DomainError, InvalidArgument, Unauthenticated
from aias.core.protoconv import update_paths
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
