"""Operator accounts: creation with an argon2id hash, and the demo accounts `streetlight up` prints."""

from __future__ import annotations

from dataclasses import dataclass

from argon2 import PasswordHasher

from api.security import ROLES, password_hasher
from geo import Gazetteer
from store.operators import get_operator, revoke_sessions, upsert_operator
from store.types import Conn

DEMO_PASSWORD = "streetlight"  # demo only: printed by `streetlight up`; never for a real deployment


@dataclass(frozen=True, slots=True)
class DemoOperator:
    """A login to print for a demo."""

    username: str
    password: str
    role: str
    district: str | None


def create_operator(
    conn: Conn,
    username: str,
    password: str,
    *,
    role: str,
    district: str | None = None,
    display_name: str | None = None,
    hasher: PasswordHasher | None = None,
) -> int:
    """Create or replace an operator account; a district operator needs its 5-digit district.
    Replacing an account (a new password) ends its sessions: returns how many."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    if role == "district" and not district:
        raise ValueError("a district operator needs a district code")
    hasher = hasher or password_hasher(3, 65536)
    with conn.transaction():
        upsert_operator(
            conn,
            username,
            password_hash=hasher.hash(password),
            role=role,
            district_code=district,
            display_name=display_name,
        )
        return revoke_sessions(conn, username)


def ensure_demo_operators(
    conn: Conn,
    *,
    password: str = DEMO_PASSWORD,
    hasher: PasswordHasher | None = None,
    gazetteer: Gazetteer | None = None,
) -> list[DemoOperator]:
    """Create the demo accounts that do not exist yet and return all of them: ``city`` (every
    district), ``maintenance``, ``admin``, and one district operator per district named after it
    in lower case (``jung-gu``, ``gangnam-gu``, ...). Existing accounts keep their passwords."""
    gaz = gazetteer or Gazetteer.load()
    wanted = [
        DemoOperator("city", password, "city", None),
        DemoOperator("maintenance", password, "maintenance", None),
        DemoOperator("admin", password, "admin", None),
        *(DemoOperator(d.name_eng.lower(), password, "district", d.code) for d in gaz.districts),
    ]
    missing = [op for op in wanted if get_operator(conn, op.username) is None]
    if missing:
        # One hash for all: each account is still a separate row, and the demo starts fast.
        stored = (hasher or password_hasher(3, 65536)).hash(password)
        with conn.transaction():
            for op in missing:
                upsert_operator(
                    conn,
                    op.username,
                    password_hash=stored,
                    role=op.role,
                    district_code=op.district,
                    display_name=f"demo {op.role} {op.district or ''}".strip(),
                )
    return wanted
