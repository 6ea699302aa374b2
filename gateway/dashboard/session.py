"""The dashboard's cookie session: encrypted with Fernet, HttpOnly, SameSite=Lax, time-bounded.

The session holds the admin's API key, so every request is checked again through tenancy (and
the gateway's key cache, which tenancy's change notices keep current): a revoked key or a
suspended tenant ends the session on its next request. Encryption keeps the key unreadable to
anyone who gets hold of the cookie; the cookie's path keeps it away from the JSON API.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping

from aiohttp import web
from aiohttp_session import Session
from aiohttp_session.cookie_storage import EncryptedCookieStorage
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COOKIE_NAME = "aias_dashboard"
COOKIE_PATH = "/dashboard"
# A session lasts this long from sign-in, however often it is used; then the admin signs in again.
SESSION_SECONDS = 8 * 60 * 60
CSRF_FIELD = "csrf_token"
MIN_SECRET_CHARS = 32
_API_KEY = "api_key"
_CSRF = "csrf"
_TENANT_NAME = "tenant_name"


def cookie_key(secret: str) -> bytes:
    """32 bytes for Fernet derived from AIAS_DASHBOARD_SECRET, so any long random text serves."""
    return HKDF(algorithm=SHA256(), length=32, salt=None, info=b"aias dashboard session").derive(
        secret.encode()
    )


class Sessions:
    """Loads and saves sessions; the cookie is re-encrypted only when a session changes."""

    def __init__(self, secret: str, *, secure: bool) -> None:
        # Fernet's own timestamp check (max_age) bounds a cookie even if a client keeps it.
        self._storage = EncryptedCookieStorage(
            cookie_key(secret),
            cookie_name=COOKIE_NAME,
            path=COOKIE_PATH,
            max_age=SESSION_SECONDS,
            secure=secure,
            httponly=True,
            samesite="Lax",
        )

    async def load(self, request: web.Request) -> Session:
        """The request's session; a cookie that does not decrypt is no session (a new one)."""
        try:
            return await self._storage.load_session(request)
        except UnicodeEncodeError:
            # aiohttp hands undecodable cookie bytes on as lone surrogates, which the storage
            # cannot even try to decrypt.
            return await self._storage.new_session()

    async def save(
        self, request: web.Request, response: web.StreamResponse, session: Session
    ) -> None:
        """Writes a changed session into the response; an emptied one deletes the cookie.

        Only changes are saved: saving re-encrypts, which would restart Fernet's clock.
        """
        await self._storage.save_session(request, response, session)


def api_key(session: Session) -> str:
    return str(session.get(_API_KEY, ""))


def tenant_name(session: Session) -> str:
    return str(session.get(_TENANT_NAME, ""))


def csrf_token(session: Session) -> str:
    return str(session.get(_CSRF, ""))


def give_csrf_token(session: Session) -> bool:
    """Gives a session without a form token one (the sign-in form needs it); True if it did."""
    if _CSRF in session:
        return False
    session[_CSRF] = secrets.token_urlsafe(32)
    return True


def csrf_matches(session: Session, form: Mapping[str, str]) -> bool:
    expected = csrf_token(session)
    sent = form.get(CSRF_FIELD, "").encode()
    return bool(expected) and hmac.compare_digest(expected.encode(), sent)


def sign_in(session: Session, key: str, name: str) -> None:
    """Starts a fresh session for the key: new form token, new creation time."""
    session.invalidate()
    session[_API_KEY] = key
    session[_TENANT_NAME] = name
    session[_CSRF] = secrets.token_urlsafe(32)
