"""Credentials: residents' install tokens, operators' passwords and signed session tokens.

- A resident's token is 32 random bytes shown once; the database keeps its SHA-256 only (a
  random 256-bit secret needs no slow KDF: nobody can guess it to test against the hash).
- An operator's password is hashed with argon2id (cost from the settings; tests lower it).
- An operator's session token is `v2.<payload>.<HMAC-SHA256>` carrying a random session id,
  the username and the expiry. The signature refuses a forged or altered token without a database
  round trip; the session and the account are then read as they are now (`store.operators`), so
  logout, a disabled account, a new role or district count from the next request. The signing
  secret comes from the settings or is shared through the database (`store_meta`).
- Login verifies a password hash for an unknown username too (`dummy_password_hash`), so the
  answer's timing does not tell which usernames exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

ROLES = ("district", "city", "maintenance", "admin", "guard")  # a guard: /v1/guards/... only


class InvalidToken(Exception):
    """A session token that is malformed, forged or expired; the message says which."""


def new_resident_token() -> str:
    """A fresh install token for the Safety app (URL-safe, 43 characters)."""
    return secrets.token_urlsafe(32)


def hash_resident_token(token: str) -> str:
    """The stored form of an install token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_id(prefix: str) -> str:
    """A random, unguessable id such as ``sos-3f9a...`` (pseudonymous: it encodes nothing)."""
    return f"{prefix}-{secrets.token_hex(8)}"


def password_hasher(time_cost: int, memory_kib: int) -> PasswordHasher:
    """argon2id with the given cost (parallelism 1: the API's threads already share the cores)."""
    return PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=1)


def dummy_password_hash(hasher: PasswordHasher) -> str:
    """A hash of a random password with `hasher`'s cost, verified for unknown usernames so that
    they cost the same time as a wrong password."""
    return hasher.hash(secrets.token_urlsafe(24))


def verify_password(hasher: PasswordHasher, password_hash: str, password: str) -> bool:
    """True when `password` matches; False for a mismatch or an unreadable hash."""
    try:
        return hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True, slots=True)
class SessionClaims:
    """What a session token says: which session, whose, until when."""

    session_id: str
    username: str
    expires_at: float  # epoch seconds


@dataclass(frozen=True, slots=True)
class Operator:
    """Who is calling: the session's account as it is now."""

    username: str
    role: str
    district: str | None
    expires_at: float  # epoch seconds
    session_id: str = ""

    @property
    def actor(self) -> str:
        """The actor name in alert timelines and the audit log."""
        return f"operator:{self.username}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_session_id() -> str:
    """A random session id (128 bits)."""
    return secrets.token_urlsafe(16)


def sign_token(secret: bytes, claims: SessionClaims) -> str:
    """A session token for `claims`, valid (as far as the signature goes) until its `expires_at`."""
    payload = json.dumps(
        {"s": claims.session_id, "u": claims.username, "e": claims.expires_at}, separators=(",", ":")
    ).encode("utf-8")
    body = "v2." + _b64(payload)
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return body + "." + _b64(mac)


def verify_token(secret: bytes, token: str, now: float) -> SessionClaims:
    """The session a token names; InvalidToken when it is malformed, forged or expired."""
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != "v2":
        raise InvalidToken("malformed operator token")
    body = parts[0] + "." + parts[1]
    try:
        mac = _unb64(parts[2])
        payload = json.loads(_unb64(parts[1]))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidToken("malformed operator token") from exc
    good = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(mac, good):
        raise InvalidToken("operator token signature does not match")
    try:
        claims = SessionClaims(str(payload["s"]), str(payload["u"]), float(payload["e"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidToken("malformed operator token") from exc
    if claims.expires_at <= now:
        raise InvalidToken("operator token expired; log in again")
    return claims
