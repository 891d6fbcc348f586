"""Device and account secrets, hashed the way Mosquitto 2.0's password file expects.

Mosquitto 2.0 reads ``username:$7$<iterations>$<base64 salt>$<base64 key>`` where the key is
PBKDF2-HMAC-SHA512 of the password (``mosquitto_passwd`` writes 101 iterations; the broker takes
the iteration count from the line). The salt must decode to exactly 12 bytes: measured, 2.0.11
logs "Unable to decode password salt ... removing entry" for a 16-byte one. Our 12 salt bytes are
ASCII (``token_urlsafe(9)``, 72 random bits) rather than raw, so the very same hash is also valid
for EMQX's built-in database (``pbkdf2``/``sha512``), which uses the salt string as given.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Final

# mosquitto_passwd's default. Low on purpose: secrets are 256-bit random, so a slow hash adds no
# protection against guessing, while every (re)connect of 16,000 lamps after a broker restart pays
# for it on the broker.
MOSQUITTO_ITERATIONS: Final = 101
SECRET_BYTES: Final = 32
MOSQUITTO_SALT_BYTES: Final = 12


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A PBKDF2-HMAC-SHA512 hash of one secret."""

    salt: bytes
    key: bytes
    iterations: int

    def mosquitto(self) -> str:
        """The ``$7$`` form of a Mosquitto 2.0 password file."""
        salt = base64.b64encode(self.salt).decode()
        key = base64.b64encode(self.key).decode()
        return f"$7${self.iterations}${salt}${key}"

    @classmethod
    def from_mosquitto(cls, text: str) -> PasswordHash:
        """Parse a ``$7$`` hash as written by ``mosquitto_passwd``."""
        parts = text.split("$")
        if len(parts) != 5 or parts[0] != "" or parts[1] != "7":
            raise ValueError(f"not a mosquitto $7$ hash: {text[:12]!r}...")
        try:
            salt = base64.b64decode(parts[3], validate=True)
            key = base64.b64decode(parts[4], validate=True)
            iterations = int(parts[2])
        except (ValueError, binascii.Error) as exc:
            raise ValueError(f"malformed mosquitto $7$ hash: {exc}") from exc
        return cls(salt=salt, key=key, iterations=iterations)


def new_secret() -> str:
    """A fresh random secret (URL-safe text, 256 bits)."""
    return secrets.token_urlsafe(SECRET_BYTES)


def hash_secret(
    secret: str, *, iterations: int = MOSQUITTO_ITERATIONS, salt: bytes | None = None
) -> PasswordHash:
    """Hash ``secret`` with PBKDF2-HMAC-SHA512 and a random ASCII salt."""
    salt = secrets.token_urlsafe(9).encode("ascii") if salt is None else salt
    if len(salt) != MOSQUITTO_SALT_BYTES:
        raise ValueError(f"mosquitto 2.0 needs a {MOSQUITTO_SALT_BYTES}-byte salt, got {len(salt)}")
    key = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), salt, iterations)
    return PasswordHash(salt=salt, key=key, iterations=iterations)


def verify_secret(secret: str, hashed: PasswordHash) -> bool:
    """True when ``secret`` is the one ``hashed`` was made from (constant-time compare)."""
    candidate = hashlib.pbkdf2_hmac("sha512", secret.encode("utf-8"), hashed.salt, hashed.iterations)
    return hmac.compare_digest(candidate, hashed.key)
