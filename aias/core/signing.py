"""Standard Webhooks signatures: secrets (`whsec_...`), signing, and verification within a tolerance."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from aias.core.errors import InvalidArgument, Unauthenticated

SECRET_PREFIX = "whsec_"
# The spec's key sizes; generated keys take the middle.
MIN_KEY_BYTES, MAX_KEY_BYTES, GENERATED_KEY_BYTES = 24, 64, 32
TOLERANCE_SECONDS = 300
# A header carries a few signatures during a sender's rotation; far more is not a sender.
MAX_SIGNATURES = 10
MAX_HEADER_CHARS = 1024


def generate_secret() -> tuple[str, bytes]:
    """A new secret as shown to the tenant (`whsec_<base64>`) and its key bytes."""
    key = secrets.token_bytes(GENERATED_KEY_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii"), key


def parse_secret(text: str, what: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret, or InvalidArgument naming `what`."""
    encoded = text.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidArgument(
            "INVALID_SIGNING_SECRET",
            f"{what} must be '{SECRET_PREFIX}' and the base64 of {MIN_KEY_BYTES} to "
            f"{MAX_KEY_BYTES} bytes, as the sender issued it",
        )
    return key


def sign(key: bytes, msg_id: str, timestamp: str, body: bytes) -> str:
    """The `v1,<base64>` signature of one message: HMAC-SHA256 over `id.timestamp.body`.

    The body is signed as the bytes it is, so binary bodies verify like JSON ones.
    """
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def check_headers(msg_id: str, timestamp: str, signature: str, now: float) -> None:
    """Passes when the three headers are there and the timestamp is fresh.

    What can be checked before the body arrives: a missing header or a timestamp outside the
    tolerance (either way, so a captured delivery cannot be replayed later) is refused here.
    """
    missing = [
        name
        for name, value in (
            ("webhook-id", msg_id),
            ("webhook-timestamp", timestamp),
            ("webhook-signature", signature),
        )
        if not value
    ]
    if missing:
        raise Unauthenticated(
            "MISSING_SIGNATURE",
            f"this endpoint requires Standard Webhooks signatures; missing: {', '.join(missing)}",
        )
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise Unauthenticated(
            "INVALID_SIGNATURE", "webhook-timestamp must be a Unix time in whole seconds"
        )
    skew = abs(now - int(timestamp))
    if skew > TOLERANCE_SECONDS:
        raise Unauthenticated(
            "STALE_SIGNATURE",
            f"webhook-timestamp is {skew:.0f} s away from the receiver's clock; at most "
            f"{TOLERANCE_SECONDS} s are accepted (check the sender's clock)",
        )


def verify(
    key: bytes, msg_id: str, timestamp: str, signature: str, body: bytes, now: float
) -> None:
    """Passes when any `v1` signature in the header (senders rotating send two) fits the key."""
    check_headers(msg_id, timestamp, signature, now)
    invalid = Unauthenticated(
        "INVALID_SIGNATURE",
        "no signature in webhook-signature matches the endpoint's signing secret",
    )
    if len(signature) > MAX_HEADER_CHARS:
        raise invalid
    offered = [
        candidate.removeprefix("v1,")
        for candidate in signature.split()[:MAX_SIGNATURES]
        if candidate.startswith("v1,")
    ]
    expected = sign(key, msg_id, timestamp, body).removeprefix("v1,").encode()
    if not any(hmac.compare_digest(expected, candidate.encode()) for candidate in offered):
        raise invalid
