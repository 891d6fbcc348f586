"""The few reads the API needs beyond `store.repo` (kept here, next to their only user)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

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
