"""Alerts kept in PostgreSQL.

This is the one place where an `alerts.Alert` (the pure core's value) becomes rows and back,
so the API (SOS from residents, operators' actions), the controller (routing, blinking,
escalation) and ingest (maintenance alerts) all write alerts the same way.

Every save notifies ``sl_alert`` (a `store.notes.AlertNote`, delivered at commit) for the
console and the controller; `store.notes` has the channels and their payloads. `listening` opens a
connection that LISTENs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import dict_row

from alerts import Alert, AlertState, alert_from_dict, alert_to_dict
from store.alerts import active_clause, add_alert_positions, append_alert_event, upsert_alert
from store.errors import StoreRejected
from store.filters import Where
from store.notes import ALERT_CHANNEL, LAMP_CHANNEL, WALK_CHANNEL, AlertNote, notify
from store.types import AsyncConn, Conn

__all__ = [  # the channels are `store.notes`'; named here too for the modules that import them from here
    "ALERT_CHANNEL",
    "LAMP_CHANNEL",
    "WALK_CHANNEL",
    "AlertNotFound",
    "active_alerts",
    "change_alert",
    "load_alert",
    "save_alert",
]


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


@asynccontextmanager
async def listening(database_url: str, channels: Sequence[str] = ()) -> AsyncIterator[AsyncConn]:
    """An autocommit async connection that LISTENs on `channels` (none: a plain connection),
    closed on leaving; read its wake-ups with ``async for note in conn.notifies()``."""
    async with await AsyncConnection.connect(database_url, autocommit=True) as conn:
        for channel in channels:
            await conn.execute(f"LISTEN {channel}")
        yield conn
