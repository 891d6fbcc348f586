"""Residents' phone numbers, encrypted at rest (AES-256-GCM), and their key rotation.

A number is stored as ``key_id`` + ``nonce`` + ``ciphertext`` (the GCM tag included); the
associated data binds it to its resident and key id, so a row copied onto another resident does
not decrypt. The keys come from the settings (``STREETLIGHT_PHONE_KEYS``: ``id:base64key,...``,
the first is the current one) and are never written to the database nor logged (`PhoneKeyring`'s
repr names the key ids only). New writes use the current key; rows under an older key stay
readable while that key is listed, and `rotate_phones` re-encrypts them under the current one
(``streetlight phones rotate``, or the maintenance job).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from store.types import Conn

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_NONCE_BYTES = 12


class PhoneKeyError(ValueError):
    """The phone keys setting is malformed, or a row's key is not in it; the message never holds a key."""


@dataclass(frozen=True, slots=True)
class PhoneKeyring:
    """The AES-256 keys of residents' phone numbers: (key id, 32-byte key), the current one first."""

    keys: tuple[tuple[str, bytes], ...] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.keys:
            raise PhoneKeyError("STREETLIGHT_PHONE_KEYS names no key")
        ids = [kid for kid, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise PhoneKeyError("STREETLIGHT_PHONE_KEYS names a key id twice")
        for kid, key in self.keys:
            if not _KEY_ID.match(kid):
                raise PhoneKeyError(f"STREETLIGHT_PHONE_KEYS: key id {kid!r} must be 1-32 of A-Z a-z 0-9 _ -")
            if len(key) != 32:
                raise PhoneKeyError(
                    f"STREETLIGHT_PHONE_KEYS: key {kid!r} must be 32 bytes (base64 of 256 bits)"
                )

    def __repr__(self) -> str:
        return (
            f"PhoneKeyring(current={self.current_id!r}, ids={[k for k, _ in self.keys]!r}, keys=[redacted])"
        )

    @classmethod
    def parse(cls, text: str) -> PhoneKeyring:
        """``id:base64key[,id:base64key...]`` (standard or URL-safe base64 of 32 bytes), the
        current key first; PhoneKeyError saying what is wrong (never echoing a key)."""
        keys: list[tuple[str, bytes]] = []
        for n, item in enumerate((i.strip() for i in text.split(",")), 1):
            if not item:
                continue
            kid, sep, encoded = item.partition(":")
            if not sep:
                raise PhoneKeyError(f"STREETLIGHT_PHONE_KEYS: entry {n} must be id:base64key")
            try:
                key = base64.b64decode(
                    encoded.strip().replace("-", "+").replace("_", "/") + "==", validate=False
                )
            except (binascii.Error, ValueError):
                raise PhoneKeyError(f"STREETLIGHT_PHONE_KEYS: key {kid.strip()!r} is not base64") from None
            keys.append((kid.strip(), key))
        return cls(tuple(keys))

    @staticmethod
    def generate(key_id: str) -> str:
        """A new entry ``id:base64key`` for the setting (``streetlight phones new-key``)."""
        return f"{key_id}:{base64.b64encode(os.urandom(32)).decode('ascii')}"

    @property
    def current_id(self) -> str:
        """The id of the key new writes use."""
        return self.keys[0][0]

    def _key(self, key_id: str) -> bytes:
        for kid, key in self.keys:
            if kid == key_id:
                return key
        raise PhoneKeyError(f"phone key {key_id!r} is not in STREETLIGHT_PHONE_KEYS (rotated out too early?)")

    def encrypt(self, resident_id: str, number: str) -> tuple[str, bytes, bytes]:
        """(key id, nonce, ciphertext) of ``number`` under the current key, bound to the resident."""
        nonce = os.urandom(_NONCE_BYTES)
        aad = _aad(resident_id, self.current_id)
        return self.current_id, nonce, AESGCM(self.keys[0][1]).encrypt(nonce, number.encode("utf-8"), aad)

    def decrypt(self, resident_id: str, key_id: str, nonce: bytes, ciphertext: bytes) -> str:
        """The number; PhoneKeyError when its key is unknown or the row was altered or moved."""
        try:
            plain = AESGCM(self._key(key_id)).decrypt(nonce, ciphertext, _aad(resident_id, key_id))
        except InvalidTag:
            raise PhoneKeyError(
                f"phone number of this resident does not decrypt under key {key_id!r}"
            ) from None
        return plain.decode("utf-8")


def _aad(resident_id: str, key_id: str) -> bytes:
    return f"streetlight-phone:v1:{resident_id}:{key_id}".encode()


PHONES_SQL = """
CREATE TABLE resident_phones (
    resident_id text PRIMARY KEY REFERENCES residents (resident_id) ON DELETE CASCADE,
    key_id      text NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX resident_phones_key ON resident_phones (key_id);
"""


@dataclass(frozen=True, slots=True)
class _PhoneTable:
    """A table of encrypted numbers: its name, its owner column and how the owner is named in
    the associated data (a resident by its id, a guard as ``guard:<username>``)."""

    table: str
    owner: str
    prefix: str = ""


RESIDENT_PHONES = _PhoneTable("resident_phones", "resident_id")
GUARD_PHONES = _PhoneTable("guard_phones", "username", "guard:")  # created by migration 13 (store/guards.py)


def _set(conn: Conn, keyring: PhoneKeyring, t: _PhoneTable, owner: str, number: str) -> bool:
    key_id, nonce, ciphertext = keyring.encrypt(t.prefix + owner, number)
    row = conn.execute(
        f"INSERT INTO {t.table} ({t.owner}, key_id, nonce, ciphertext) VALUES (%s, %s, %s, %s) "
        f"ON CONFLICT ({t.owner}) DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce, "
        "ciphertext = EXCLUDED.ciphertext, updated_at = now() RETURNING (xmax <> 0)",
        (owner, key_id, nonce, ciphertext),
    ).fetchone()
    return bool(row and row[0])


def _read(conn: Conn, keyring: PhoneKeyring, t: _PhoneTable, owner: str) -> str | None:
    row = conn.execute(
        f"SELECT key_id, nonce, ciphertext FROM {t.table} WHERE {t.owner} = %s", (owner,)
    ).fetchone()
    if row is None:
        return None
    return keyring.decrypt(t.prefix + owner, str(row[0]), bytes(row[1]), bytes(row[2]))


def set_phone(conn: Conn, keyring: PhoneKeyring, resident_id: str, number: str) -> bool:
    """Store (or replace) a resident's number, encrypted under the current key; True when it replaced one."""
    return _set(conn, keyring, RESIDENT_PHONES, resident_id, number)


def set_guard_phone(conn: Conn, keyring: PhoneKeyring, username: str, number: str) -> bool:
    """Store (or replace) a guard's number, encrypted as a resident's is; True when it replaced one."""
    return _set(conn, keyring, GUARD_PHONES, username, number)


def read_guard_phone(conn: Conn, keyring: PhoneKeyring, username: str) -> str | None:
    """A guard's number in clear, or None."""
    return _read(conn, keyring, GUARD_PHONES, username)


def delete_phone(conn: Conn, resident_id: str) -> bool:
    """Forget a resident's number; False when none was registered."""
    return conn.execute("DELETE FROM resident_phones WHERE resident_id = %s", (resident_id,)).rowcount > 0


def has_phone(conn: Conn, resident_id: str) -> bool:
    """True when the resident registered a number (all that is said of it outside a reveal)."""
    return (
        conn.execute("SELECT 1 FROM resident_phones WHERE resident_id = %s", (resident_id,)).fetchone()
        is not None
    )


def read_phone(conn: Conn, keyring: PhoneKeyring, resident_id: str) -> str | None:
    """The resident's number in clear (for a reveal or a PBX call, audited by the caller), or None."""
    return _read(conn, keyring, RESIDENT_PHONES, resident_id)


def rotate_phones(conn: Conn, keyring: PhoneKeyring, *, batch: int = 500) -> dict[str, int]:
    """Re-encrypt every number (residents' and guards') not under the current key (in batches,
    each its own transaction, rows locked); returns how many were re-encrypted and how many remain
    under keys no longer listed (those cannot be read: PhoneKeyError is not raised for them, they
    are counted)."""
    rotated = unreadable = 0
    for t in (RESIDENT_PHONES, GUARD_PHONES):
        done, left = _rotate(conn, keyring, t, batch)
        rotated += done
        unreadable += left
    return {"phones_rotated": rotated, "phones_under_unknown_keys": unreadable}


def _rotate(conn: Conn, keyring: PhoneKeyring, t: _PhoneTable, batch: int) -> tuple[int, int]:
    if conn.execute("SELECT to_regclass(%s)", (t.table,)).fetchone() in (None, (None,)):
        return 0, 0  # not migrated yet
    rotated = 0
    known = [kid for kid, _ in keyring.keys]
    while True:
        with conn.transaction():
            rows = conn.execute(
                f"SELECT {t.owner}, key_id, nonce, ciphertext FROM {t.table} "
                f"WHERE key_id <> %s AND key_id = ANY(%s) ORDER BY {t.owner} LIMIT %s "
                "FOR UPDATE SKIP LOCKED",
                (keyring.current_id, known, batch),
            ).fetchall()
            for owner, kid, nonce, ciphertext in rows:
                number = keyring.decrypt(t.prefix + str(owner), str(kid), bytes(nonce), bytes(ciphertext))
                _set(conn, keyring, t, str(owner), number)
                rotated += 1
        if len(rows) < batch:
            break
    row = conn.execute(f"SELECT count(*) FROM {t.table} WHERE NOT (key_id = ANY(%s))", (known,)).fetchone()
    return rotated, int(row[0]) if row else 0
