"""The operator's working day: history search of alerts (filters, keyset paging), the shift
hand-over, an alert's incident report (HTML to print, CSV to file) and the bulk acknowledgement
of maintenance alerts.

Visibility is the operators' one rule (`api.state.visible_districts`, `visible_kinds`): a search
finds, a hand-over lists and a batch acknowledges only what the operator may see; an alert outside
their view answers as an unknown one. Which alerts may be acknowledged in bulk is the alerts
core's rule (`alerts.bulk_refusal`: never an SOS).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from alerts import (
    ACTIVE_STATES,
    AlertKind,
    AlertState,
    InvalidTransition,
    alert_from_dict,
    bulk_acknowledge,
    bulk_refusal,
)
from api.hub import alert_summary
from api.operators import audit_resident_places
from api.reports import incident_csv, incident_html, incident_report
from api.schemas import (
    AlertSearchOut,
    BulkAckIn,
    BulkAckItemOut,
    BulkAckOut,
    HandoverOut,
    ShiftActionOut,
    ShiftOperatorOut,
)
from api.security import Operator
from api.state import (
    AppState,
    CurrentOperator,
    Db,
    State,
    may_see,
    resident_subject,
    visible_districts,
    visible_kinds,
)
from runtime.logs import get_logger
from store.alerts import (
    AlertNotFound,
    AlertSearch,
    alert_events,
    alert_track,
    change_alert,
    count_alerts,
    get_alert,
    operator_events,
    raised_counts,
    search_alerts,
)
from store.devices import lamp_register_of
from store.operators import log_access
from store.types import Conn, Row

log = get_logger(__name__)
router = APIRouter(tags=["operators"])

_STATES = [s.value for s in AlertState]
_KINDS = [k.value for k in AlertKind]
MAX_SHIFT = timedelta(days=31)
HANDOVER_OPEN_LIMIT = 1000


def _aware(value: datetime | None, name: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise HTTPException(422, f"{name} needs a time zone, e.g. 2024-05-01T21:00:00+09:00")
    return value


def _encode_cursor(row: Row) -> str:
    raw = json.dumps([row["created_at"].isoformat(), row["alert_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        at, alert_id = json.loads(raw)
        created = datetime.fromisoformat(at)
        if created.tzinfo is None or not isinstance(alert_id, str):
            raise ValueError("naive time or bad id")
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise HTTPException(422, "cursor is not one this API gave (pass next_cursor as it is)") from exc
    return created, alert_id


def _near(near: str | None, radius_m: float) -> tuple[float, float, float] | None:
    if near is None:
        return None
    try:
        lat_text, lon_text = near.split(",")
        lat, lon = float(lat_text), float(lon_text)
    except ValueError as exc:
        raise HTTPException(422, f"near must be 'lat,lon' in degrees, got {near!r}") from exc
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):  # NaN fails too
        raise HTTPException(422, f"near is not a point on Earth: {near!r}")
    return lat, lon, radius_m


def _checked(values: list[str] | None, allowed: list[str], name: str) -> None:
    for v in values or []:
        if v not in allowed:
            raise HTTPException(422, f"{name} must be one of {', '.join(allowed)}, got {v!r}")


def _kinds_for(op: Operator, kind: list[str] | None) -> list[str] | None:
    kinds = visible_kinds(op)
    if kind is None:
        return kinds
    return [k for k in kind if kinds is None or k in kinds]


def _district_for(op: Operator, district: str | None) -> str | None:
    mine = visible_districts(op)
    if district is not None and mine is not None and district not in mine:
        raise HTTPException(404, f"district {district!r} is not one of your districts")
    return district


@router.get("/v1/alerts/search", summary="Search the alert history")
def alerts_search(
    state: State,
    op: CurrentOperator,
    conn: Db,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="created before (ISO 8601)")] = None,
    status: Annotated[list[str] | None, Query(description="open, acknowledged, ...; repeat")] = None,
    kind: Annotated[list[str] | None, Query(description="sos, lamp_fault, ...; repeat")] = None,
    district: Annotated[str | None, Query(pattern=r"^\d{5}$", description="5-digit district code")] = None,
    dong: Annotated[
        str | None, Query(pattern=r"^\d{8,10}$", description="neighbourhood (dong) code of the place")
    ] = None,
    near: Annotated[str | None, Query(description="'lat,lon': alerts placed within radius_m of it")] = None,
    radius_m: Annotated[float, Query(gt=0, le=20_000, description="with near, metres")] = 300.0,
    q: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="free text: the place in words (ko/en), alert id, device ids, notes, units",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(max_length=400, description="next_cursor of the page before")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> AlertSearchOut:
    """Alerts the operator may see matching every filter given, newest first (created_at, then
    id); page with `cursor` through any number of them, each exactly once."""
    _checked(status, _STATES, "status")
    _checked(kind, _KINDS, "kind")
    _aware(since, "since")
    _aware(until, "until")
    if since is not None and until is not None and until <= since:
        raise HTTPException(422, "until must be after since")
    search = AlertSearch(
        districts=visible_districts(op),
        kinds=_kinds_for(op, kind),
        statuses=status,
        created_from=since,
        created_before=until,
        district=_district_for(op, district),
        dong_code=dong,
        near=_near(near, radius_m),
        text=q,
        after=None if cursor is None else _decode_cursor(cursor),
    )
    rows = search_alerts(conn, search, limit=limit + 1)
    page, more = rows[:limit], len(rows) > limit
    audit_resident_places(state, conn, op, "read_alert_search", page)
    return AlertSearchOut(
        alerts=[alert_summary(r) for r in page], next_cursor=_encode_cursor(page[-1]) if more else None
    )


@router.get("/v1/handover", summary="Shift hand-over")
def handover(
    state: State,
    op: CurrentOperator,
    conn: Db,
    since: Annotated[datetime | None, Query(description="shift start (default: until - 8 h)")] = None,
    until: Annotated[datetime | None, Query(description="shift end (default: now)")] = None,
) -> HandoverOut:
    """What is open now, what was raised during the shift and what each operator did (their
    acknowledgements, dispatches, resolutions, cancellations, from the alerts' timelines)."""
    end = _aware(until, "until") or datetime.now(UTC)
    start = _aware(since, "since") or end - timedelta(hours=8)
    if end <= start:
        raise HTTPException(422, "until must be after since")
    if end - start > MAX_SHIFT:
        raise HTTPException(422, "a hand-over covers at most 31 days")
    districts, kinds = visible_districts(op), visible_kinds(op)
    active = AlertSearch(districts=districts, kinds=kinds, statuses=[s.value for s in ACTIVE_STATES])
    open_rows = search_alerts(conn, active, limit=HANDOVER_OPEN_LIMIT)
    open_rows.sort(key=lambda r: r["kind"] != AlertKind.SOS.value)  # stable: newest first within
    audit_resident_places(state, conn, op, "read_handover", open_rows)
    by_actor: dict[str, list[ShiftActionOut]] = {}
    for e in operator_events(conn, since=start, until=end, districts=districts, kinds=kinds):
        by_actor.setdefault(str(e["actor"]), []).append(
            ShiftActionOut(
                event_id=int(e["id"]),
                at=e["ts"].isoformat(),
                alert_id=e["alert_id"],
                kind=e["kind"],
                state=e["status"],
                action=e["action"],
                note=e["note"],
                details=dict(e["details"] or {}),
                place_text_ko=e["place_text_ko"],
                place_text_en=e["place_text_en"],
            )
        )
    operators = [
        ShiftOperatorOut(actor=actor, counts=_counts(actions), actions=actions)
        for actor, actions in sorted(by_actor.items())
    ]
    return HandoverOut(
        since=start.isoformat(),
        until=end.isoformat(),
        open=[alert_summary(r) for r in open_rows],
        open_total=count_alerts(conn, active),
        raised=raised_counts(conn, since=start, until=end, districts=districts, kinds=kinds),
        operators=operators,
    )


def _counts(actions: list[ShiftActionOut]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in actions:
        counts[a.action] = counts.get(a.action, 0) + 1
    return counts


def _report_of(state: AppState, conn: Conn, op: Operator, alert_id: str, form: str) -> dict[str, object]:
    row = get_alert(conn, alert_id)
    if row is None or not may_see(op, list(row["district_codes"]), str(row["kind"])):
        raise HTTPException(404, f"alert {alert_id!r} not found in your districts")
    alert = alert_from_dict(row["data"])
    track = alert_track(conn, alert_id)
    register = lamp_register_of(
        conn, [*alert.device_ids, *(lamp.lamp_id for lamp in alert.place.nearest_lamps)]
    )
    # The report carries the place (an SOS: the resident's position and track): an audited read.
    resident = row["resident_id"]
    log_access(
        conn,
        actor=op.actor,
        action="read_report",
        subject_kind="resident" if resident is not None else "alert",
        subject_id=resident_subject(state, str(resident)) if resident is not None else alert_id,
        details={"alert_id": alert_id, "format": form, "points": len(track)},
    )
    return incident_report(alert, alert_events(conn, alert_id), track, register, printed_by=op.actor)


@router.get(
    "/v1/alerts/{alert_id}/report",
    summary="Incident report to print (HTML)",
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}},
)
def alert_report_html(alert_id: str, state: State, op: CurrentOperator, conn: Db) -> Response:
    """One alert for a supervisor: place in words, timeline, lamps, units dispatched, track and
    CAP messages, as an HTML page with a print stylesheet. Reading it is audited (`read_report`)."""
    report = _report_of(state, conn, op, alert_id, "html")
    return Response(incident_html(report), media_type="text/html; charset=utf-8")


@router.get(
    "/v1/alerts/{alert_id}/report.csv",
    summary="Incident report to file (CSV)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}}},
)
def alert_report_csv(alert_id: str, state: State, op: CurrentOperator, conn: Db) -> Response:
    """The incident report as CSV, UTF-8 with a byte-order mark (Excel then reads Korean right):
    one row per item, its section first. Reading it is audited (`read_report`)."""
    report = _report_of(state, conn, op, alert_id, "csv")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in alert_id)
    return Response(
        incident_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="incident-{safe}.csv"'},
    )


@router.post("/v1/alerts/acknowledge", summary="Acknowledge maintenance alerts in bulk")
def alerts_bulk_acknowledge(body: BulkAckIn, op: CurrentOperator, conn: Db) -> BulkAckOut:
    """Acknowledge many maintenance alerts at once, each in its own transaction and audited
    (`alert.bulk_acknowledge`). Never an SOS: one in the batch is refused with its reason, and
    so is an alert not open or not in the operator's districts; the others are applied."""
    results = [_bulk_one(conn, op, alert_id, body.note) for alert_id in dict.fromkeys(body.alert_ids)]
    done = sum(1 for r in results if r.ok)
    log.info("alerts_bulk_acknowledged", actor=op.actor, acknowledged=done, refused=len(results) - done)
    return BulkAckOut(acknowledged=done, refused=len(results) - done, results=results)


def _bulk_one(conn: Conn, op: Operator, alert_id: str, note: str) -> BulkAckItemOut:
    row = get_alert(conn, alert_id)
    if row is None or not may_see(op, list(row["district_codes"]), str(row["kind"])):
        return BulkAckItemOut(alert_id=alert_id, ok=False, state=None, error="not found in your districts")
    refusal = bulk_refusal(alert_from_dict(row["data"]))
    if refusal is not None:
        return BulkAckItemOut(alert_id=alert_id, ok=False, state=str(row["status"]), error=refusal)
    now = datetime.now(UTC)
    try:
        with conn.transaction():
            _, after = change_alert(conn, alert_id, lambda a: bulk_acknowledge(a, now, op.actor, note))
            log_access(
                conn,
                actor=op.actor,
                action="alert.bulk_acknowledge",
                subject_kind="alert",
                subject_id=alert_id,
                details={"alert_id": alert_id, "state": after.state.value},
            )
    except AlertNotFound:
        return BulkAckItemOut(alert_id=alert_id, ok=False, state=None, error="not found in your districts")
    except InvalidTransition as exc:  # changed meanwhile (another operator, the lamp itself)
        return BulkAckItemOut(
            alert_id=alert_id,
            ok=False,
            state=exc.from_state,
            error=f"alert is {exc.from_state}: not acknowledged",
        )
    return BulkAckItemOut(alert_id=alert_id, ok=True, state=after.state.value, error=None)
