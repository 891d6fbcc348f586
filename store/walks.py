"""Residents and their safe walks: accounts (pseudonymous ids, hashed install tokens), walks,
their positions, the check of a walker's live socket, and the anonymous dots of walks in progress.

The batched position writes with their wake-up are in ``store/walkpositions.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg.rows import dict_row

from store.filters import Where
from store.types import AsyncConn, Conn, Row


def _now() -> datetime:
    return datetime.now(UTC)


def create_resident(conn: Conn, resident_id: str, token_hash: str, *, at: datetime | None = None) -> None:
    """Register a resident under a pseudonymous id and the hash of their install token."""
    conn.execute(
        "INSERT INTO residents (resident_id, token_hash, created_at) VALUES (%s, %s, %s)",
        (resident_id, token_hash, at or _now()),
    )


def resident_by_token_hash(conn: Conn, token_hash: str) -> str | None:
    """The resident id owning a token hash (None if unknown or deleted)."""
    row = conn.execute(
        "SELECT resident_id FROM residents WHERE token_hash = %s AND deleted_at IS NULL", (token_hash,)
    ).fetchone()
    return None if row is None else str(row[0])


def delete_resident(conn: Conn, resident_id: str, *, at: datetime | None = None) -> None:
    """Delete a resident's account, walk data and phone number (SOS alerts stay, unlinked from walks'
    positions)."""
    with conn.transaction():
        conn.execute("DELETE FROM resident_phones WHERE resident_id = %s", (resident_id,))
        conn.execute("DELETE FROM walks WHERE resident_id = %s", (resident_id,))
        conn.execute("DELETE FROM idempotency_keys WHERE resident_id = %s", (resident_id,))
        conn.execute(
            "UPDATE residents SET token_hash = NULL, deleted_at = %s WHERE resident_id = %s",
            (at or _now(), resident_id),
        )


def lock_walks_of(conn: Conn, resident_id: str) -> None:
    """Hold the resident's walk lock until the transaction ends (inside one): two starts of a walk
    racing, on any API instance, take their turns."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", ("walk:" + resident_id,))


def start_walk(
    conn: Conn, walk_id: str, resident_id: str, *, started_at: datetime, district_code: str | None = None
) -> None:
    """Record a walk as active."""
    conn.execute(
        "INSERT INTO walks (walk_id, resident_id, district_code, started_at) VALUES (%s, %s, %s, %s)",
        (walk_id, resident_id, district_code, started_at),
    )


def end_walk(conn: Conn, walk_id: str, *, ended_at: datetime, status: str = "ended") -> bool:
    """Mark a walk ended (or expired); False when it was not active."""
    cur = conn.execute(
        "UPDATE walks SET ended_at = %s, status = %s WHERE walk_id = %s AND status = 'active'",
        (ended_at, status, walk_id),
    )
    return cur.rowcount == 1


def active_walks_of(conn: Conn, resident_id: str) -> list[Row]:
    """A resident's walks in progress (walk_id, district_code), oldest first; locks them against a
    concurrent start of another walk (call inside a transaction)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT walk_id, district_code FROM walks WHERE resident_id = %s AND status = 'active' "
            "ORDER BY started_at, walk_id FOR UPDATE",
            (resident_id,),
        ).fetchall()


def get_walk(conn: Conn, walk_id: str) -> Row | None:
    """One walk, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM walks WHERE walk_id = %s", (walk_id,)).fetchone()


WalkPosition = tuple[datetime, float, float, float | None, float | None, float | None, bool, str | None]
"""(ts, lat, lon, accuracy_m, heading_deg, speed_m_s, accepted, reason)"""


def add_walk_positions(conn: Conn, walk_id: str, positions: Sequence[WalkPosition]) -> None:
    """Append positions to a walk."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO walk_positions (walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s, "
            "accepted, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(walk_id, *p) for p in positions],
        )


def walk_positions(conn: Conn, walk_id: str) -> list[Row]:
    """A walk's positions, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT ts, lat, lon, accuracy_m, heading_deg, speed_m_s, accepted, reason, alert_id "
            "FROM walk_positions WHERE walk_id = %s ORDER BY ts, id",
            (walk_id,),
        ).fetchall()


def attach_walk_to_alert(conn: Conn, walk_id: str, alert_id: str) -> int:
    """Tie a walk's positions to an SOS so retention keeps them with the alert; returns rows tied."""
    return conn.execute(
        "UPDATE walk_positions SET alert_id = %s WHERE walk_id = %s AND alert_id IS NULL", (alert_id, walk_id)
    ).rowcount


@dataclass(frozen=True, slots=True)
class LiveWalkCheck:
    """What one query says about a walker's token and walk (None: no such resident or walk)."""

    resident_id: str | None  # the live resident owning the token
    owner_id: str | None  # the resident the walk belongs to
    status: str | None  # the walk's status ("active", "ended", "expired")
    district_code: str | None


async def read_live_walk(conn: AsyncConn, token_hash: str, walk_id: str) -> LiveWalkCheck:
    """The resident of a token hash and the walk's owner, status and district, in one query (on
    the event loop's async pool: a walker's position needs no thread hop)."""
    cur = await conn.execute(
        "SELECT r.resident_id, w.resident_id, w.status, w.district_code FROM (SELECT 1) one "
        "LEFT JOIN residents r ON r.token_hash = %s AND r.deleted_at IS NULL "
        "LEFT JOIN walks w ON w.walk_id = %s",
        (token_hash, walk_id),
    )
    row = await cur.fetchone()
    assert row is not None
    return LiveWalkCheck(*row)


def active_walkers(conn: Conn, district_codes: Sequence[str] | None) -> list[Row]:
    """The latest position of every walk in progress, without walk or resident ids (map dots)."""
    where = Where().add("w.status = 'active'").any_of("w.district_code", district_codes)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT p.lat, p.lon, p.ts, w.district_code FROM walks w "
            "JOIN LATERAL (SELECT lat, lon, ts FROM walk_positions wp WHERE wp.walk_id = w.walk_id "
            "ORDER BY ts DESC, id DESC LIMIT 1) p ON true" + where.sql,
            where.params,
        ).fetchall()
