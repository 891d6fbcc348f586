"""The alerts' tables: rows, their audit trail (events), SOS tracks, idempotency keys, the reads of
the operators' lists and live stream, and the one SQL test of an "active" alert.

``store/alertstore.py`` maps the pure core's `alerts.Alert` onto these rows (and wakes the
services); these functions are the rows themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts import ACTIVE_STATES
from store.filters import Where
from store.types import AsyncConn, Conn, Row


def _now() -> datetime:
    return datetime.now(UTC)


def active_clause(column: str = "status") -> tuple[str, list[str]]:
    """The SQL condition of an active alert on its status `column`, with its one parameter: the
    only place the store spells "active" (`alerts.ACTIVE_STATES` says which states are)."""
    return f"{column} = ANY(%s)", [s.value for s in ACTIVE_STATES]


def upsert_alert(
    conn: Conn,
    alert_id: str,
    *,
    kind: str,
    status: str,
    severity: str,
    district_codes: Sequence[str],
    created_at: datetime,
    updated_at: datetime | None = None,
    data: dict[str, Any] | None = None,
    resident_id: str | None = None,
    walk_id: str | None = None,
    device_id: str | None = None,
    acknowledged_by: str | None = None,
    acknowledged_at: datetime | None = None,
    resolved_at: datetime | None = None,
) -> None:
    """Insert an alert or replace its mutable fields (status, districts, acknowledgement, data)."""
    conn.execute(
        """
        INSERT INTO alerts (alert_id, kind, status, severity, district_codes, resident_id, walk_id,
                            device_id, created_at, updated_at, acknowledged_by, acknowledged_at,
                            resolved_at, data)
        VALUES (%(id)s, %(kind)s, %(status)s, %(severity)s, %(d)s, %(resident)s, %(walk)s,
                %(device)s, %(created)s, %(updated)s, %(ack_by)s, %(ack_at)s, %(resolved)s, %(data)s)
        ON CONFLICT (alert_id) DO UPDATE SET
            status = EXCLUDED.status, severity = EXCLUDED.severity,
            district_codes = EXCLUDED.district_codes, updated_at = EXCLUDED.updated_at,
            acknowledged_by = coalesce(EXCLUDED.acknowledged_by, alerts.acknowledged_by),
            acknowledged_at = coalesce(EXCLUDED.acknowledged_at, alerts.acknowledged_at),
            resolved_at = coalesce(EXCLUDED.resolved_at, alerts.resolved_at),
            data = EXCLUDED.data
        """,
        {
            "id": alert_id,
            "kind": kind,
            "status": status,
            "severity": severity,
            "d": list(district_codes),
            "resident": resident_id,
            "walk": walk_id,
            "device": device_id,
            "created": created_at,
            "updated": updated_at or created_at,
            "ack_by": acknowledged_by,
            "ack_at": acknowledged_at,
            "resolved": resolved_at,
            "data": Jsonb(data or {}),
        },
    )


def append_alert_event(
    conn: Conn,
    alert_id: str,
    *,
    actor: str,
    action: str,
    note: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Append one entry to an alert's audit trail; returns its id (ids grow with time)."""
    row = conn.execute(
        "INSERT INTO alert_events (alert_id, ts, actor, action, note, details) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (alert_id, at or _now(), actor, action, note, Jsonb(details or {})),
    ).fetchone()
    assert row is not None
    return int(row[0])


def get_alert(conn: Conn, alert_id: str) -> Row | None:
    """One alert, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM alerts WHERE alert_id = %s", (alert_id,)).fetchone()


def list_alerts(
    conn: Conn,
    *,
    district_codes: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    since: datetime | None = None,
    limit: int = 200,
) -> list[Row]:
    """Alerts newest first, filtered by districts (any overlap), status, kind and creation time."""
    where = (
        Where()
        .overlaps("district_codes", district_codes)
        .any_of("status", statuses)
        .any_of("kind", kinds)
        .at_least("created_at", since)
    )
    query = "SELECT * FROM alerts" + where.sql + " ORDER BY created_at DESC LIMIT %s"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, [*where.params, limit]).fetchall()


def alert_events(conn: Conn, alert_id: str, *, after_id: int = 0) -> list[Row]:
    """An alert's audit trail in order (entries after ``after_id`` only, for catch-up)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM alert_events WHERE alert_id = %s AND id > %s ORDER BY id", (alert_id, after_id)
        ).fetchall()


def add_alert_positions(
    conn: Conn, alert_id: str, positions: Sequence[tuple[datetime, float, float, float | None]]
) -> None:
    """Append (ts, lat, lon, accuracy_m) positions to an SOS track."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO alert_positions (alert_id, ts, lat, lon, accuracy_m) VALUES (%s, %s, %s, %s, %s)",
            [(alert_id, *p) for p in positions],
        )


def alert_track(conn: Conn, alert_id: str) -> list[Row]:
    """An SOS track, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT ts, lat, lon, accuracy_m, coarsened FROM alert_positions "
            "WHERE alert_id = %s ORDER BY ts, id",
            (alert_id,),
        ).fetchall()


def lock_sos_of(conn: Conn, resident_id: str) -> None:
    """Hold the resident's SOS lock until the transaction ends (inside one): two presses racing, on
    any API instance, merge into one alert instead of opening two."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7))", ("sos:" + resident_id,))


def claim_idempotency_key(conn: Conn, resident_id: str, key: str, alert_id: str) -> tuple[str, bool]:
    """Bind (resident, key) to ``alert_id`` once; returns (the alert id bound, whether it is new)."""
    row = conn.execute(
        "INSERT INTO idempotency_keys (resident_id, key, alert_id) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING alert_id",
        (resident_id, key, alert_id),
    ).fetchone()
    if row is not None:
        return str(row[0]), True
    existing = conn.execute(
        "SELECT alert_id FROM idempotency_keys WHERE resident_id = %s AND key = %s", (resident_id, key)
    ).fetchone()
    assert existing is not None
    return str(existing[0]), False


def idempotency_alert(conn: Conn, resident_id: str, key: str) -> str | None:
    """The alert id a (resident, key) is bound to, or None (a read: nothing is claimed)."""
    row = conn.execute(
        "SELECT alert_id FROM idempotency_keys WHERE resident_id = %s AND key = %s", (resident_id, key)
    ).fetchone()
    return None if row is None else str(row[0])


def last_event_id(conn: Conn) -> int:
    """The newest alert event id (0 when there is none): a console's catch-up cursor."""
    row = conn.execute("SELECT coalesce(max(id), 0) FROM alert_events").fetchone()
    return int(row[0]) if row else 0


# An alert as the lists and the live stream show it, with its newest event id.
_STREAM_SELECT = """
SELECT a.alert_id, a.kind, a.status, a.district_codes, a.updated_at, a.data,
       a.suspected_burst, a.burst_group, a.resident_id,
       (SELECT coalesce(max(e.id), 0) FROM alert_events e WHERE e.alert_id = a.alert_id) AS event_id
FROM alerts a
"""


async def stream_alert_async(conn: AsyncConn, alert_id: str) -> Row | None:
    """One alert as the stream sends it, with its newest event id (on the stream hub's async
    reader)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_STREAM_SELECT + " WHERE a.alert_id = %s", (alert_id,))
        return await cur.fetchone()


def stream_catch_up(
    conn: Conn,
    *,
    after_event_id: int,
    district_codes: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limit: int | None = None,
) -> list[Row]:
    """What a (re)connecting console needs: every active alert it may see, and every alert
    changed since its last event id (so it learns of those closed while it was away).

    No limit by default: a cap (it was 500, oldest first) left the newest open SOS out of a
    reconnecting console once more than 500 were open (issue #8, scenario 5 at 1,000 SOS)."""
    active, states = active_clause("a.status")
    where = (
        Where()
        .add(
            f"({active} OR a.alert_id IN (SELECT alert_id FROM alert_events WHERE id > %s))",
            states,
            after_event_id,
        )
        .overlaps("a.district_codes", district_codes)
        .any_of("a.kind", kinds)
    )
    query = _STREAM_SELECT + where.sql + " ORDER BY a.created_at"
    params = where.params
    if limit is not None:
        query += " LIMIT %s"
        params = [*params, limit]
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()
