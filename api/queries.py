"""The few reads the API needs beyond `store.repo` (kept here, next to their only user)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import orjson
from psycopg import AsyncConnection, pq
from psycopg.rows import dict_row

from store.types import Conn

ACTIVE_STATES = ("open", "acknowledged", "dispatched")
_SECRET_KEY = "api_token_secret"


def shared_token_secret(conn: Conn) -> bytes:
    """The operators' token signing secret kept in the database, created by the first instance."""
    conn.execute(
        "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
        (_SECRET_KEY, secrets.token_hex(32)),
    )
    row = conn.execute("SELECT value FROM store_meta WHERE key = %s", (_SECRET_KEY,)).fetchone()
    assert row is not None
    return bytes.fromhex(str(row[0]))


# One position row and its wake-up in one statement, only while the walk is active: a walk ended
# (by ``POST .../end`` or the live socket) between the caller's check and this write gets neither.
_POSITION_SQL = (
    "WITH w AS (SELECT 1 FROM walks WHERE walk_id = %s AND status = 'active'), "
    "pos AS (INSERT INTO walk_positions (walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s, "
    "accepted, reason) SELECT %s, %s::timestamptz, %s::float8, %s::float8, %s::real, %s::real, %s::real, "
    "%s::boolean, %s::text FROM w) "
    "SELECT pg_notify(%s, %s) FROM w"
)


def position_statement(
    walk_id: str, position: Sequence[Any], channel: str, note: dict[str, Any]
) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of `add_position_and_notify_async`."""
    return _POSITION_SQL, (walk_id, walk_id, *position, channel, orjson.dumps(note).decode())


async def add_position_and_notify_async(
    conn: AsyncConnection[Any], walk_id: str, position: Sequence[Any], channel: str, note: dict[str, Any]
) -> bool:
    """One walk position row and its wake-up, in one statement (one round trip, one transaction);
    False (nothing written, nothing notified) when the walk is not active. For the HTTP endpoint
    and the walkers' socket alike, on the event loop's pool.

    The same rows as ``store.repo.add_walk_positions`` + ``store.alertstore.notify`` inside
    ``conn.transaction()``, which cost six round trips (BEGIN, SAVEPOINT, INSERT, RELEASE, NOTIFY,
    COMMIT); a data-modifying CTE always runs, and on an autocommit connection the statement is
    its own transaction, so the NOTIFY is still delivered only once the row is committed.
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise RuntimeError("add_position_and_notify commits on its own; call it outside a transaction")
    cur = await conn.execute(*position_statement(walk_id, position, channel, note))
    return await cur.fetchone() is not None


def last_event_id(conn: Conn) -> int:
    """The newest alert event id (0 when there is none): a console's catch-up cursor."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM alert_events").fetchone()
    return int(row[0]) if row else 0


STREAM_SELECT = """
SELECT a.alert_id, a.kind, a.status, a.district_codes, a.updated_at, a.data,
       a.suspected_burst, a.burst_group, a.resident_id,
       (SELECT coalesce(max(e.id), 0) FROM alert_events e WHERE e.alert_id = a.alert_id) AS event_id
FROM alerts a
"""


def stream_alert(conn: Conn, alert_id: str) -> dict[str, Any] | None:
    """One alert as the stream sends it, with its newest event id."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(STREAM_SELECT + " WHERE a.alert_id = %s", (alert_id,)).fetchone()


def stream_catch_up(
    conn: Conn,
    *,
    after_event_id: int,
    district_codes: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """What a (re)connecting console needs: every active alert it may see, and every alert
    changed since its last event id (so it learns of those closed while it was away).

    No limit by default: a cap (it was 500, oldest first) left the newest open SOS out of a
    reconnecting console once more than 500 were open (issue #8, scenario 5 at 1,000 SOS)."""
    where = ["(a.status = ANY(%s) OR a.alert_id IN (SELECT alert_id FROM alert_events WHERE id > %s))"]
    params: list[object] = [list(ACTIVE_STATES), after_event_id]
    if district_codes is not None:
        where.append("a.district_codes && %s")
        params.append(list(district_codes))
    if kinds is not None:
        where.append("a.kind = ANY(%s)")
        params.append(list(kinds))
    query = STREAM_SELECT + " WHERE " + " AND ".join(where) + " ORDER BY a.created_at"
    if limit is not None:
        query += " LIMIT %s"
        params.append(limit)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def active_overrides(conn: Conn, device_ids: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Commands still in force per lamp (sent or applied, not expired): the lamp's overrides, without
    their source (a walk id or an SOS alert id would let a lamp reader follow a resident)."""
    # A later `clear` from the same source (a resolved SOS, an ended override) ends it early.
    where = (
        "c.status IN ('sent', 'applied') AND c.expires_at > now() AND c.action IN ('set_level', 'blink') "
        "AND NOT EXISTS (SELECT 1 FROM commands x WHERE x.device_id = c.device_id "
        "AND x.source = c.source AND x.action = 'clear' AND x.sent_at >= c.sent_at)"
    )
    params: list[object] = []
    if device_ids is not None:
        where += " AND c.device_id = ANY(%s)"
        params.append(list(device_ids))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT c.device_id, c.cmd_id, c.action, c.level, c.priority, c.expires_at, c.status "
            "FROM commands c WHERE " + where + " ORDER BY c.device_id, c.sent_at",
            params,
        ).fetchall()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.pop("device_id")), []).append(r)
    return out


def audit_entries(conn: Conn, *, subject_id: str | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """The privacy audit log, newest first."""
    where, params = ("WHERE subject_id = %s", [subject_id]) if subject_id else ("", [])
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id, ts, actor, action, subject_kind, subject_id, details FROM audit_log "
            + where
            + " ORDER BY id DESC LIMIT %s",
            [*params, limit],
        ).fetchall()


def list_operators(conn: Conn) -> list[dict[str, Any]]:
    """Operator accounts without their password hashes."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT username, role, district_code, display_name, disabled, created_at FROM operators "
            "ORDER BY username"
        ).fetchall()


def active_walkers(conn: Conn, district_codes: Sequence[str] | None) -> list[dict[str, Any]]:
    """The latest position of every walk in progress, without walk or resident ids (map dots)."""
    where, params = (
        ("AND w.district_code = ANY(%s)", [list(district_codes)]) if district_codes is not None else ("", [])
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT p.lat, p.lon, p.ts, w.district_code FROM walks w "
            "JOIN LATERAL (SELECT lat, lon, ts FROM walk_positions wp WHERE wp.walk_id = w.walk_id "
            "ORDER BY ts DESC, id DESC LIMIT 1) p ON true "
            "WHERE w.status = 'active' " + where,
            params,
        ).fetchall()
