"""Alerts kept in PostgreSQL: the tables (rows, their audit trail of events, SOS tracks,
idempotency keys, the reads of the operators' lists and live stream, the one SQL test of an
"active" alert), and below them the one place where an `alerts.Alert` (the pure core's value)
becomes rows and back (`save_alert`, `load_alert`, `change_alert`, `active_alerts`), so the API
(SOS from residents, operators' actions), the controller (routing, blinking, escalation) and
ingest (maintenance alerts) all write alerts the same way.

Every `save_alert` notifies ``sl_alert`` (a `store.notes.AlertNote`, delivered at commit) for the
console and the controller; `store.notes` has the channels and their payloads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts import ACTIVE_STATES, Alert, AlertState, alert_from_dict, alert_to_dict
from store.errors import StoreRejected
from store.filters import Where
from store.notes import AlertNote, notify
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


@dataclass(frozen=True, slots=True)
class AlertSearch:
    """The filters of a history search; None leaves a filter open. `districts` and `kinds` are
    what the operator may see (the API's visibility), `district` one district among them."""

    districts: Sequence[str] | None = None
    kinds: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    created_from: datetime | None = None  # created at or after
    created_before: datetime | None = None  # created before
    district: str | None = None
    dong_code: str | None = None
    near: tuple[float, float, float] | None = None  # (lat, lon, radius in metres)
    text: str | None = None  # in the place's words, the ids, the devices, the timeline's notes
    after: tuple[datetime, str] | None = None  # the last (created_at, alert_id) of the page before


# Metres per degree of latitude; near a point the distance is the equirectangular one (well under
# a metre off across a district).
_M_PER_DEG = 111_320.0


def _like(text: str) -> str:
    """``%text%`` with LIKE's own characters escaped (backslash is PostgreSQL's LIKE escape)."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _search_where(search: AlertSearch) -> Where:
    where = (
        Where()
        .overlaps("a.district_codes", search.districts)
        .overlaps("a.district_codes", None if search.district is None else [search.district])
        .any_of("a.kind", search.kinds)
        .any_of("a.status", search.statuses)
        .at_least("a.created_at", search.created_from)
        .below("a.created_at", search.created_before)
        .equals("a.data->'place'->>'dong_code'", search.dong_code)
    )
    if search.near is not None:
        lat, lon, radius = search.near
        where.add(
            "power(((a.data->'place'->>'lat')::float8 - %s) * %s, 2)"
            " + power(((a.data->'place'->>'lon')::float8 - %s) * %s * cos(radians(%s)), 2) <= %s",
            lat,
            _M_PER_DEG,
            lon,
            _M_PER_DEG,
            lat,
            radius * radius,
        )
    if search.text:
        pattern = _like(search.text)
        where.add(
            "(a.alert_id ILIKE %s OR a.data->>'place_text_ko' ILIKE %s OR a.data->>'place_text_en' ILIKE %s"
            " OR a.data->>'device_ids' ILIKE %s OR EXISTS (SELECT 1 FROM alert_events x"
            " WHERE x.alert_id = a.alert_id AND (x.note ILIKE %s OR x.details::text ILIKE %s)))",
            *([pattern] * 6),
        )
    if search.after is not None:
        where.add("(a.created_at, a.alert_id) < (%s, %s)", *search.after)
    return where


def search_alerts(conn: Conn, search: AlertSearch, *, limit: int = 100) -> list[Row]:
    """Alerts newest first in a stable order (created_at, then alert_id, both descending), a page
    of `limit` after `search.after`: keyset paging, so a page never repeats or skips an alert
    however deep it is, whatever is raised meanwhile. Rows carry their newest event id."""
    where = _search_where(search)
    query = (
        "SELECT a.*, (SELECT coalesce(max(e.id), 0) FROM alert_events e WHERE e.alert_id = a.alert_id)"
        " AS event_id FROM alerts a" + where.sql + " ORDER BY a.created_at DESC, a.alert_id DESC LIMIT %s"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, [*where.params, limit]).fetchall()


def count_alerts(conn: Conn, search: AlertSearch) -> int:
    """How many alerts a search finds (every page)."""
    where = _search_where(search)
    row = conn.execute("SELECT count(*) FROM alerts a" + where.sql, where.params).fetchone()
    return int(row[0]) if row else 0


def operator_events(
    conn: Conn,
    *,
    since: datetime,
    until: datetime,
    districts: Sequence[str] | None,
    kinds: Sequence[str] | None,
    limit: int = 5000,
) -> list[Row]:
    """What operators did to alerts in [since, until): each timeline event by an operator, oldest
    first, with the alert's kind, state and place in words."""
    where = (
        Where()
        .at_least("e.ts", since)
        .below("e.ts", until)
        .add("e.actor LIKE 'operator:%%'")
        .overlaps("a.district_codes", districts)
        .any_of("a.kind", kinds)
    )
    query = (
        "SELECT e.id, e.alert_id, e.ts, e.actor, e.action, e.note, e.details, a.kind, a.status,"
        " a.data->>'place_text_ko' AS place_text_ko, a.data->>'place_text_en' AS place_text_en"
        " FROM alert_events e JOIN alerts a ON a.alert_id = e.alert_id"
        + where.sql
        + " ORDER BY e.id LIMIT %s"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, [*where.params, limit]).fetchall()


def raised_counts(
    conn: Conn,
    *,
    since: datetime,
    until: datetime,
    districts: Sequence[str] | None,
    kinds: Sequence[str] | None,
) -> dict[str, int]:
    """How many alerts of each kind were raised in [since, until)."""
    where = (
        Where()
        .at_least("created_at", since)
        .below("created_at", until)
        .overlaps("district_codes", districts)
        .any_of("kind", kinds)
    )
    rows = conn.execute("SELECT kind, count(*) FROM alerts" + where.sql + " GROUP BY kind", where.params)
    return {str(k): int(n) for k, n in rows.fetchall()}


def alert_events(conn: Conn, alert_id: str, *, after_id: int = 0) -> list[Row]:
    """An alert's audit trail in order (entries after ``after_id`` only, for catch-up)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM alert_events WHERE alert_id = %s AND id > %s ORDER BY id", (alert_id, after_id)
        ).fetchall()


async def alert_events_async(conn: AsyncConn, alert_id: str, *, after_id: int = 0) -> list[Row]:
    """`alert_events` on an async connection (a resident's SOS socket, on the event loop)."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            "SELECT id, ts, action, details FROM alert_events WHERE alert_id = %s AND id > %s ORDER BY id",
            (alert_id, after_id),
        )
        return await cur.fetchall()


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


# --------------------------------------------------------------------------- alerts.Alert <-> rows


class AlertNotFound(StoreRejected):
    """No alert with that id."""


def _acknowledged_by(alert: Alert) -> str | None:
    for event in alert.timeline:
        if event.action.value == "acknowledged":
            return event.actor
    return None


def _resolved_at(alert: Alert) -> datetime | None:
    if alert.state in (AlertState.RESOLVED, AlertState.CANCELLED):
        return alert.timeline[-1].at if alert.timeline else None
    return None


def save_alert(
    conn: Conn,
    alert: Alert,
    *,
    previous: Alert | None = None,
    resident_id: str | None = None,
    walk_id: str | None = None,
) -> None:
    """Write `alert` (new or changed from `previous`): its row, its new timeline events and new
    track points, then notify `sl_alert`. Call inside a transaction."""
    data = alert_to_dict(alert)
    old_events = len(previous.timeline) if previous is not None else 0
    old_track = len(previous.track) if previous is not None else 0
    updated = alert.timeline[-1].at if alert.timeline else alert.created_at
    upsert_alert(
        conn,
        alert.id,
        kind=alert.kind.value,
        status=alert.state.value,
        severity=alert.severity.value,
        district_codes=data["centres"],
        created_at=alert.created_at,
        updated_at=updated,
        data=data,
        resident_id=resident_id,
        walk_id=walk_id,
        device_id=alert.device_ids[0] if len(alert.device_ids) == 1 else None,
        acknowledged_by=_acknowledged_by(alert),
        acknowledged_at=alert.acknowledged_at,
        resolved_at=_resolved_at(alert),
    )
    for event in alert.timeline[old_events:]:
        append_alert_event(
            conn,
            alert.id,
            actor=event.actor,
            action=event.action.value,
            note=event.note or None,
            details=dict(event.details),
            at=event.at,
        )
    new_points = alert.track[old_track:]
    if new_points:
        add_alert_positions(conn, alert.id, [(p.at, p.lat, p.lon, p.accuracy_m) for p in new_points])
    last_action = alert.timeline[-1].action.value if alert.timeline else "created"
    notify(
        conn,
        AlertNote(
            alert_id=alert.id,
            kind=alert.kind.value,
            state=alert.state.value,
            districts=tuple(data["centres"]),
            action=last_action,
        ),
    )


def _from_row(row: dict[str, Any]) -> Alert:
    return alert_from_dict(row["data"])


def load_alert(conn: Conn, alert_id: str, *, for_update: bool = False) -> Alert | None:
    """The alert with that id, or None; `for_update` locks its row until the transaction ends."""
    query = "SELECT data FROM alerts WHERE alert_id = %s" + (" FOR UPDATE" if for_update else "")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(query, (alert_id,)).fetchone()
    return _from_row(row) if row is not None else None


def change_alert(conn: Conn, alert_id: str, change: Callable[[Alert], Alert]) -> tuple[Alert, Alert]:
    """Lock the alert, apply the pure `change` (e.g. `lambda a: acknowledge(a, now, actor)`), save
    and notify, all in one transaction. Returns (before, after). Raises AlertNotFound, and lets
    the core's InvalidTransition through untouched (nothing is written then)."""
    with conn.transaction():
        before = load_alert(conn, alert_id, for_update=True)
        if before is None:
            raise AlertNotFound(f"no alert {alert_id!r}")
        after = change(before)
        if after is not before:
            save_alert(conn, after, previous=before)
    return before, after


def active_alerts(
    conn: Conn,
    *,
    districts: Sequence[str] | None = None,
    kinds: Iterable[str] | None = None,
    source_id: str | None = None,
    fault_code: str | None = None,
) -> list[Alert]:
    """Active alerts (`alerts.ACTIVE_STATES`), oldest first, optionally filtered."""
    active, states = active_clause()
    where = (
        Where()
        .add(active, states)
        .overlaps("district_codes", districts)
        .any_of("kind", kinds)
        .equals("data->>'source_id'", source_id)
        .equals("data->>'fault_code'", fault_code)
    )
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT data FROM alerts" + where.sql + " ORDER BY created_at", where.params
        ).fetchall()
    return [_from_row(r) for r in rows]
