"""Safe-village guards (issue 21): their alerts and answers, and the roster for the centres.

A guard logs in like an operator (``POST /v1/auth/login``, role ``guard``) and may use only these
endpoints (and logout): the SOS alerts the controller sent to it (``guard_alerts``, written when
an SOS inside its zone found it on duty), each with its place and status, never the resident's
identity or phone; and its answers, acknowledged and arrived, which go into the alert's timeline
as guard actions (`alerts.guard_acknowledge`, `alerts.guard_arrive`) and stop the guards' step of
the escalation. An alert not sent to the guard is a 404, whoever's it is. Each answer that
carries an SOS's place is audited (the resident's pseudonym) like an operator's read.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict

from alerts import (
    SEOUL,
    Alert,
    AlertKind,
    EventAction,
    Guard,
    GuardShift,
    InvalidTransition,
    format_weekdays,
    guard_acknowledge,
    guard_actor,
    guard_arrive,
    on_duty,
)
from api.state import AppState, CurrentGuard, CurrentOperator, Db, State, require_role, resident_subject
from store.alerts import AlertNotFound, change_alert
from store.guards import alerts_sent_to, guard_of, roster_rows, sent_at
from store.operators import log_accesses
from store.types import Conn

router = APIRouter(tags=["guards"])

ROSTER_ROLES = ("district", "city", "admin")


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class ShiftOut(_Out):
    """A guard's shift, Seoul wall-clock time; an end not after the start is on the next day."""

    starts: str
    ends: str
    weekdays: str  # mon,tue,... (the weekday a shift starts on)


class GuardPlaceOut(_Out):
    """Where the SOS is: its latest position and neighbourhood."""

    lat: float
    lon: float
    district_code: str
    dong_code: str
    dong_name: str


class GuardAlertOut(_Out):
    """An SOS sent to this guard: its place, its status and the guard's own answers."""

    alert_id: str
    kind: str
    status: str
    created_at: str
    notified_at: str
    place: GuardPlaceOut
    acknowledged_at: str | None
    arrived_at: str | None


class GuardAlertsOut(_Out):
    alerts: list[GuardAlertOut]


class GuardMeOut(_Out):
    username: str
    zone_code: str
    district: str | None
    shift: ShiftOut | None
    on_duty_now: bool


class RosterGuardOut(_Out):
    username: str
    name: str
    shift: ShiftOut
    on_duty_now: bool
    on_duty_tonight: bool  # a shift starts today (Seoul) for this guard
    has_phone: bool  # the number itself is never shown
    disabled: bool


class RosterZoneOut(_Out):
    zone_code: str
    zone_name: str
    district_code: str
    guards: list[RosterGuardOut]


class RosterOut(_Out):
    zones: list[RosterZoneOut]


def _iso(t: dt.datetime | None) -> str | None:
    return t.isoformat() if t is not None else None


def _shift(shift: GuardShift) -> ShiftOut:
    return ShiftOut(
        starts=shift.starts.isoformat("minutes"),
        ends=shift.ends.isoformat("minutes"),
        weekdays=format_weekdays(shift.weekdays),
    )


def _mine(alert: Alert, username: str, action: EventAction) -> dt.datetime | None:
    actor = guard_actor(username)
    return next((e.at for e in alert.timeline if e.action is action and e.actor == actor), None)


def _out(alert: Alert, username: str, notified_at: dt.datetime) -> GuardAlertOut:
    lat, lon = alert.last_position
    return GuardAlertOut(
        alert_id=alert.id,
        kind=alert.kind.value,
        status=alert.state.value,
        created_at=alert.created_at.isoformat(),
        notified_at=notified_at.isoformat(),
        place=GuardPlaceOut(
            lat=lat,
            lon=lon,
            district_code=alert.place.district_code,
            dong_code=alert.place.dong_code,
            dong_name=alert.place.dong_name,
        ),
        acknowledged_at=_iso(_mine(alert, username, EventAction.GUARD_ACKNOWLEDGED)),
        arrived_at=_iso(_mine(alert, username, EventAction.GUARD_ARRIVED)),
    )


def _audit(state: AppState, conn: Conn, username: str, action: str, alerts: list[Alert]) -> None:
    """One audit row per resident whose SOS place the answer carries."""
    by_resident: dict[str, list[str]] = {}
    for a in alerts:
        if a.kind is AlertKind.SOS and a.source_id:
            by_resident.setdefault(a.source_id, []).append(a.id)
    if by_resident:
        entries = [
            ("resident", resident_subject(state, rid), {"alert_ids": ids}) for rid, ids in by_resident.items()
        ]
        log_accesses(conn, actor=guard_actor(username), action=action, entries=entries)


@router.get("/v1/guards/me", summary="The guard's zone and shift (guard)")
def guard_me(guard: CurrentGuard, conn: Db) -> GuardMeOut:
    """The logged-in guard's zone and shift, and whether it is on duty now."""
    entry = guard_of(conn, guard.username)
    return GuardMeOut(
        username=guard.username,
        zone_code=entry.zone_code if entry else "",
        district=guard.district,
        shift=_shift(entry.shift) if entry else None,
        on_duty_now=bool(entry and on_duty(entry, dt.datetime.now(dt.UTC))),
    )


@router.get("/v1/guards/me/alerts", summary="The SOS alerts sent to this guard (guard)")
def guard_alerts(
    guard: CurrentGuard,
    state: State,
    conn: Db,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> GuardAlertsOut:
    """The alerts sent to the logged-in guard, newest first: place, status, its own answers.
    The guards' app polls it (every few seconds while on duty)."""
    sent = alerts_sent_to(conn, guard.username, limit=limit)
    with conn.transaction():
        _audit(state, conn, guard.username, "guard.alerts", [a for a, _ in sent])
    return GuardAlertsOut(alerts=[_out(a, guard.username, at) for a, at in sent])


def _answer(
    state: AppState, conn: Conn, username: str, alert_id: str, action: str, fn: Callable[[Alert], Alert]
) -> GuardAlertOut:
    at = sent_at(conn, alert_id, username)
    if at is None:
        raise HTTPException(404, f"alert {alert_id!r} was not sent to you")
    try:
        with conn.transaction():
            _, after = change_alert(conn, alert_id, fn)
            _audit(state, conn, username, action, [after])
    except AlertNotFound as exc:
        raise HTTPException(404, f"alert {alert_id!r} was not sent to you") from exc
    except InvalidTransition as exc:
        raise HTTPException(409, f"alert {alert_id!r} is {exc.from_state}: cannot {exc.action}") from exc
    return _out(after, username, at)


@router.post("/v1/guards/alerts/{alert_id}/ack", summary="A guard acknowledges an SOS sent to it (guard)")
def guard_ack(alert_id: str, guard: CurrentGuard, state: State, conn: Db) -> GuardAlertOut:
    """On my way: recorded in the alert's timeline as ``guard_acknowledged`` by ``guard:<username>``
    (again: unchanged); the guards' escalation step stops. 404 unless the alert was sent to this
    guard, 409 once it is resolved or cancelled."""
    now = dt.datetime.now(dt.UTC)
    return _answer(
        state,
        conn,
        guard.username,
        alert_id,
        "guard.ack",
        lambda a: guard_acknowledge(a, guard.username, now),
    )


@router.post("/v1/guards/alerts/{alert_id}/arrived", summary="A guard reports arrival (guard)")
def guard_arrived(alert_id: str, guard: CurrentGuard, state: State, conn: Db) -> GuardAlertOut:
    """I am there: ``guard_arrived`` in the timeline (acknowledging first when not yet done)."""
    now = dt.datetime.now(dt.UTC)
    return _answer(
        state, conn, guard.username, alert_id, "guard.arrived", lambda a: guard_arrive(a, guard.username, now)
    )


@router.get("/v1/guards/roster", summary="The guards' roster by zone (district, city, admin)")
def guard_roster(op: CurrentOperator, conn: Db) -> RosterOut:
    """Each guard zone with its guards, their shifts, who is on duty now and who works tonight
    (a shift starting today, Seoul time); whether a phone is on file, never the number. A district
    operator sees its district's zones."""
    require_role(op, *ROSTER_ROLES)
    rows = roster_rows(conn, [op.district or ""] if op.role == "district" else None)
    now = dt.datetime.now(dt.UTC)
    today = now.astimezone(SEOUL).weekday()
    zones: dict[str, RosterZoneOut] = {}
    for r in rows:
        shift = GuardShift(r["starts"], r["ends"], frozenset(int(d) for d in r["weekdays"]))
        entry = Guard(r["username"], r["zone_code"], shift, r["name"])
        zone = zones.setdefault(
            r["zone_code"],
            RosterZoneOut(
                zone_code=r["zone_code"],
                zone_name=r["zone_name"],
                district_code=r["district_code"],
                guards=[],
            ),
        )
        zone.guards.append(
            RosterGuardOut(
                username=r["username"],
                name=r["name"],
                shift=_shift(shift),
                on_duty_now=on_duty(entry, now) and not r["disabled"],
                on_duty_tonight=today in shift.weekdays and not r["disabled"],
                has_phone=bool(r["has_phone"]),
                disabled=bool(r["disabled"]),
            )
        )
    return RosterOut(zones=list(zones.values()))
