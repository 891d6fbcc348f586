"""The Safety app's endpoints: registration, safe walks and SOS.

Each handler validates (schemas.py), writes the rows and the wake-up NOTIFY in one transaction
(store/alerts.py is the contract with the controller), and answers only once that commit
is done, so an accepted SOS survives any crash after the answer.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from alerts import (
    Alert,
    AlertState,
    CancelReason,
    InvalidTransition,
    Position,
    cancel,
    fold_sos_press,
    merge_sos,
    route,
)
from api.places import place_for
from api.ratelimit import retry_after_header
from api.schemas import (
    RegisteredOut,
    SosCancelledOut,
    SosIn,
    SosOut,
    SosStatusOut,
    WalkEndedOut,
    WalkPositionIn,
    WalkPositionOut,
    WalkStartedOut,
)
from api.security import hash_resident_token, new_id, new_resident_token
from api.state import (
    AppState,
    Db,
    Resident,
    State,
    address_key,
    bearer_token,
    client_address,
    resident_subject,
)
from geo import lamps_for_walker
from runtime.logs import get_logger
from store.alerts import (
    AlertNotFound,
    active_alerts,
    change_alert,
    claim_idempotency_key,
    idempotency_alert,
    load_alert,
    lock_sos_of,
    save_alert,
)
from store.bursts import mark_sos_source
from store.notes import WalkEnded, WalkStarted, notify
from store.operators import log_access
from store.privacy import resident_export
from store.types import Conn, Row
from store.walkpositions import QueuedPosition
from store.walks import (
    active_walks_of,
    add_walk_positions,
    attach_walk_to_alert,
    create_resident,
    delete_resident,
    end_walk,
    get_walk,
    lock_walks_of,
    read_live_walk,
    start_walk,
)

log = get_logger(__name__)
router = APIRouter(tags=["residents"])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]


def _now() -> datetime:
    """Now, in whole milliseconds: a position's row ``ts`` and its wake-up's ``ts_ms`` are the
    same instant, so the controller's verdict finds the row by walk id and timestamp."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def _district_for_walk(state: AppState, body: WalkPositionIn) -> str | None:
    """The district of a walk position (the quick grid answer well inside a district, the full
    lookup near borders), or 422 outside the service area."""
    quick = state.gazetteer.quick_district(body.lat, body.lon)
    if quick is not None:
        return quick
    loc = state.gazetteer.locate(body.lat, body.lon)
    if not loc.inside:
        raise HTTPException(
            422,
            f"point ({body.lat:.5f}, {body.lon:.5f}) is outside the service area (Seoul), "
            f"{loc.distance_outside_m:.0f} m from the nearest district",
        )
    return loc.district_code


def walk_lamps(state: AppState, body: WalkPositionIn) -> tuple[str, ...]:
    """The lamps of a walker's position: within 30 m and in the corridor ahead (`geo`)."""
    return lamps_for_walker(state.lamps.snapshot.index, body.lat, body.lon, body.heading_deg, body.speed_mps)


def _walk_started(
    walk_id: str, body: WalkPositionIn, district: str | None, now: datetime, lamps: tuple[str, ...]
) -> WalkStarted:
    return WalkStarted(
        walk_id=walk_id,
        district=district,
        lat=body.lat,
        lon=body.lon,
        accuracy_m=body.accuracy_m,
        heading_deg=body.heading_deg,
        speed_mps=body.speed_mps,
        ts_ms=int(now.timestamp() * 1000),
        lamps=lamps,
    )


def _walk_ended(walk_id: str, district: str | None, now: datetime) -> WalkEnded:
    return WalkEnded(walk_id=walk_id, district=district, ts_ms=int(now.timestamp() * 1000))


def _own_walk(conn: Conn, walk_id: str, resident: str) -> Row:
    walk = get_walk(conn, walk_id)
    if walk is None:
        raise HTTPException(404, f"unknown walk {walk_id!r}")
    if walk["resident_id"] != resident:
        raise HTTPException(403, f"walk {walk_id!r} belongs to another resident")
    return walk


@router.post("/v1/residents", status_code=201, summary="Register an app install")
def register(request: Request, state: State, conn: Db) -> RegisteredOut:
    """A pseudonymous resident id and its install token; the token is shown only this once.
    At most ``registrations_per_hour`` per client address (429 with Retry-After)."""
    client = address_key(client_address(request))
    wait = state.register_limit.hit(client, time.monotonic()) if state.register_limit else 0.0
    if wait:
        state.metrics.rate_limited.labels("register").inc()
        raise HTTPException(
            429, "too many registrations from this address", {"Retry-After": retry_after_header(wait)}
        )
    resident_id, token = new_id("res"), new_resident_token()
    create_resident(conn, resident_id, hash_resident_token(token))
    return RegisteredOut(resident_id=resident_id, token=token)


@router.delete("/v1/residents/me", status_code=204, summary="Delete my account and data")
def delete_me(resident: Resident, conn: Db) -> Response:
    """Delete the caller's account, walks and positions at once; SOS alerts are unlinked from the
    resident and coarsened by the retention job once their legal hold after the close has passed
    (an open incident stays with the police). docs/privacy.md."""
    delete_resident(conn, resident)
    log.info("resident_deleted")
    return Response(status_code=204)


PHONE_REVEALS_NOTE = (
    "Your phone number itself is never exported or listed: phone_number says whether one is registered, "
    "and phone_number_reveals lists every time an operator handling your SOS saw it (phone.reveal) or "
    "had the control centre's telephone system dial it (phone.dial)."
)


@router.get("/v1/residents/me/export", summary="Everything held about me (JSON)")
def export_me(resident: Resident, state: State, conn: Db) -> JSONResponse:
    """The caller's data as one JSON document: the walks and positions still held, the SOS alerts
    with what operators saw of them (document, track, timeline, who read them and when), the
    reveals of their phone number, and the audit rows naming them. The export is audited too."""
    pseudonym = resident_subject(state, resident)
    with conn.transaction():
        document = resident_export(conn, resident, pseudonym)
        log_access(
            conn,
            actor="resident",
            action="export",
            subject_kind="resident",
            subject_id=pseudonym,
            details={"walks": len(document["walks"]), "alerts": len(document["alerts"])},
        )
    document["phone_number_reveals_note"] = PHONE_REVEALS_NOTE
    document["exported_at"] = _now().isoformat()
    document["retention"] = "docs/privacy.md"
    return JSONResponse(document, headers={"Cache-Control": "no-store"})


@router.post("/v1/walks", status_code=201, summary="Start a safe walk")
def walk_start(body: WalkPositionIn, resident: Resident, state: State, conn: Db) -> WalkStartedOut:
    """Start a walk at a position; answers with the lamps being brightened. A resident has at most
    ``walks_per_resident`` walks in progress (one by default): a new walk ends the oldest, so an
    app restarted mid-walk is never locked out (``ended`` lists them)."""
    district = _district_for_walk(state, body)
    wait = state.walk_start_limit.hit(resident, time.monotonic())
    if wait:
        state.metrics.rate_limited.labels("walk_start").inc()
        raise HTTPException(
            429,
            f"at most {state.config.walk_starts_per_minute} walks started per minute",
            {"Retry-After": retry_after_header(wait)},
        )
    now = _now()
    walk_id = new_id("walk")
    lamps = walk_lamps(state, body)  # the answer's, and the controller's (it trusts the note)
    with conn.transaction():
        # One resident's advisory lock: two starts racing cannot both keep their walk.
        lock_walks_of(conn, resident)
        active = active_walks_of(conn, resident)
        superseded = active[: max(0, len(active) - state.config.walks_per_resident + 1)]
        for old in superseded:
            end_walk(conn, old["walk_id"], ended_at=now)
            notify(conn, _walk_ended(old["walk_id"], old["district_code"], now))
        start_walk(conn, walk_id, resident, started_at=now, district_code=district)
        add_walk_positions(
            conn,
            walk_id,
            [(now, body.lat, body.lon, body.accuracy_m, body.heading_deg, body.speed_mps, True, None)],
        )
        notify(conn, _walk_started(walk_id, body, district, now, lamps))
    state.metrics.walk_positions.inc()
    return WalkStartedOut(
        walk_id=walk_id,
        district=district,
        lamps=list(lamps),
        ended=[w["walk_id"] for w in superseded],
    )


class PositionRateLimited(HTTPException):
    """Over the positions-per-second limit of a walk: 429 + Retry-After (``wait_s`` exactly)."""

    def __init__(self, walk_id: str, per_s: float, wait_s: float) -> None:
        super().__init__(
            429,
            f"walk {walk_id!r}: at most {per_s:g} positions per second",
            {"Retry-After": retry_after_header(wait_s)},
        )
        self.wait_s = wait_s


def admit_position(state: AppState, walk_id: str, body: WalkPositionIn) -> QueuedPosition:
    """The checks after the body's validation, for the HTTP endpoint and the live socket alike:
    the rate limit (`PositionRateLimited`), then the service area (422). The caller has checked
    that the walk is the resident's and active."""
    wait = state.position_limit.hit(walk_id, time.monotonic())
    if wait:
        state.metrics.rate_limited.labels("walk_position").inc()
        raise PositionRateLimited(walk_id, state.config.walk_positions_per_s, wait)
    district = _district_for_walk(state, body)
    # The lamps go with the position to the controller, which uses them when it trusts the heading
    # (the same rule over the same devices) instead of computing them again.
    return QueuedPosition(
        walk_id,
        _now(),
        body.lat,
        body.lon,
        body.accuracy_m,
        body.heading_deg,
        body.speed_mps,
        district,
        walk_lamps(state, body),
    )


async def store_position(state: AppState, position: QueuedPosition) -> bool:
    """Store an admitted position and wake the controller (in the process's next batch,
    `api.walkbatch`); False when its walk is no longer active."""
    assert state.positions is not None
    return await state.positions.add(position)


def walk_has_ended(walk_id: str) -> HTTPException:
    """409: positions of an ended walk are refused."""
    return HTTPException(409, f"walk {walk_id!r} has ended")


@router.post("/v1/walks/{walk_id}/positions", summary="Report a position during a walk")
async def walk_position(
    walk_id: str, body: WalkPositionIn, request: Request, state: State
) -> WalkPositionOut:
    """Add a position (at most 2 per second per walk); answers with the lamps being brightened.

    On the event loop with the async pool, like the walkers' socket (``/v1/walks/{id}/live``):
    the resident and the walk in one query, the row and its wake-up in the process's next batch
    (`api.walkbatch`), no thread hop (as a plain ``def`` with a pooled connection it cost ~1.5 ms
    of CPU per position)."""
    try:
        await check_live_walk(state, bearer_token(request), walk_id)
    except WalkRefused as exc:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        raise HTTPException(exc.status, exc.reason, headers) from None
    pos = admit_position(state, walk_id, body)
    if not await store_position(state, pos):
        raise walk_has_ended(walk_id)  # ended since the check above
    state.metrics.walk_positions.inc()
    return WalkPositionOut(walk_id=walk_id, district=pos.district, lamps=list(pos.lamps or ()))


class WalkRefused(Exception):
    """A position for this walk is refused before anything is stored: why, and the HTTP status."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


async def check_live_walk(state: AppState, token: str, walk_id: str) -> str | None:
    """The walk's district when the token is a live resident's and the walk theirs and active
    (one query on the event loop's pool); `WalkRefused` with 401, 404, 403 or 409 otherwise."""
    assert state.apool is not None
    async with state.apool.connection() as conn:
        found = await read_live_walk(conn, hash_resident_token(token), walk_id)
    if found.resident_id is None:
        raise WalkRefused(401, "unknown or revoked resident token")
    if found.owner_id is None:
        raise WalkRefused(404, f"unknown walk {walk_id!r}")
    if found.owner_id != found.resident_id:
        raise WalkRefused(403, f"walk {walk_id!r} belongs to another resident")
    if found.status != "active":
        raise WalkRefused(409, f"walk {walk_id!r} has ended")
    return None if found.district_code is None else str(found.district_code)


def finish_walk(conn: Conn, walk_id: str, district: str | None) -> bool:
    """End a walk and wake the controller, one transaction; False when it was not active."""
    now = _now()
    with conn.transaction():
        ended = end_walk(conn, walk_id, ended_at=now)
        if ended:
            notify(conn, _walk_ended(walk_id, district, now))
    return ended


@router.post("/v1/walks/{walk_id}/end", summary="End a walk")
def walk_end(walk_id: str, resident: Resident, conn: Db) -> WalkEndedOut:
    """End a walk; its lamps fall back when their hold time runs out."""
    walk = _own_walk(conn, walk_id, resident)
    ended = finish_walk(conn, walk_id, walk["district_code"])
    return WalkEndedOut(walk_id=walk_id, status="ended", already_ended=not ended)


def _sos_answer(alert: Alert, detail: str | None = None) -> dict[str, Any]:
    """The JSON of `SosOut` (``detail`` only when there is one)."""
    answer = SosOut(
        alert_id=alert.id, district=route(alert.place)[0], status=alert.state.value, detail=detail
    )
    return answer.model_dump(exclude_none=True)


def sos_source_key(state: AppState, address: str) -> str:
    """The pseudonymous key of an SOS's source address (its `address_key`: an IPv6 /64) (HMAC with
    the token secret): the same on every API instance, and the address itself is never stored."""
    return hmac.new(state.token_secret, b"sos-source:" + address.encode(), hashlib.sha256).hexdigest()[:32]


def _accept_sos(
    state: AppState, conn: Conn, resident: str, body: SosIn, key: str, source_key: str
) -> tuple[Alert, bool]:
    """Claim the key, merge or open the SOS, save and notify: one transaction. Returns the alert and
    whether this request was a retry of an earlier one (same key)."""
    now = _now()
    _, place = place_for(
        state.gazetteer, state.lamps.snapshot, body.lat, body.lon, state.config.nearest_lamps
    )
    with conn.transaction():
        # One SOS at a time per resident, across API instances: two presses racing must merge.
        lock_sos_of(conn, resident)
        if body.walk_id is not None:
            walk = get_walk(conn, body.walk_id)
            if walk is None or walk["resident_id"] != resident:
                raise HTTPException(404, f"unknown walk {body.walk_id!r} for this resident")
        active = active_alerts(conn, source_id=resident, kinds=["sos"])
        position = Position(lat=body.lat, lon=body.lon, at=now, accuracy_m=body.accuracy_m)
        alert, created = merge_sos(
            active, resident_id=resident, position=position, place=place, now=now, new_alert_id=new_id("sos")
        )
        bound, fresh = claim_idempotency_key(conn, resident, key, alert.id)
        if not fresh:
            earlier = load_alert(conn, bound)
            if earlier is None:  # the alert was deleted with the account; nothing to retry
                raise HTTPException(404, f"alert {bound!r} for this Idempotency-Key no longer exists")
            return earlier, True
        previous = None if created else next(a for a in active if a.id == alert.id)
        save_alert(conn, alert, previous=previous, resident_id=resident, walk_id=body.walk_id)
        if created:
            mark = mark_sos_source(
                conn,
                alert.id,
                source_key=source_key,
                resident_id=resident,
                window_s=state.config.sos_burst_window_s,
            )
            if mark.flagged:
                state.metrics.sos_bursts.inc(mark.flagged)
        if body.walk_id is not None:
            attach_walk_to_alert(conn, body.walk_id, alert.id)
    return alert, False


class _OverLimit(Enum):
    """What a press over the resident's SOS limit amounts to, decided before anything is written."""

    REPLAY = "replay"  # a retry of an earlier request (same Idempotency-Key)
    FOLDED = "folded"  # one more press of the open SOS (written at most once a second per alert)
    NEW = "new"  # no open SOS to take it: accepted as a new alert, never refused


def _sos_over_limit(
    state: AppState, conn: Conn, resident: str, body: SosIn, key: str | None
) -> tuple[_OverLimit, Alert | None]:
    """Over the limit: a replay, a press folded into the open SOS (the alert, or None when this
    second's press of that alert is already written), or a new SOS to accept as usual."""
    if key is not None:
        bound = idempotency_alert(conn, resident, key)
        earlier = load_alert(conn, bound) if bound is not None else None
        if earlier is not None:
            return _OverLimit.REPLAY, earlier
    now = _now()
    _, place = place_for(
        state.gazetteer, state.lamps.snapshot, body.lat, body.lon, state.config.nearest_lamps
    )
    position = Position(lat=body.lat, lon=body.lon, at=now, accuracy_m=body.accuracy_m)
    with conn.transaction():
        lock_sos_of(conn, resident)
        active = active_alerts(conn, source_id=resident, kinds=["sos"])
        target, created = merge_sos(
            active, resident_id=resident, position=position, place=place, now=now, new_alert_id="-"
        )
        if created:
            return _OverLimit.NEW, None
        previous = next(a for a in active if a.id == target.id)
        if state.sos_fold_limit.hit(previous.id, time.monotonic()):
            return _OverLimit.FOLDED, previous  # this second's press is written: nothing more
        folded = fold_sos_press(previous, position=position, place=place)
        save_alert(conn, folded, previous=previous, resident_id=resident)
    return _OverLimit.FOLDED, folded


@router.post(
    "/v1/sos",
    status_code=202,
    summary="Raise an SOS",
    responses={
        202: {"model": SosOut, "description": "accepted (``Idempotent-Replayed: true`` for a retry)"},
        429: {"model": SosOut, "description": "over the limit: added to the open SOS (``detail``)"},
    },
)
def sos(
    body: SosIn,
    request: Request,
    resident: Resident,
    state: State,
    conn: Db,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Accept an SOS once it is durable. A retry with the same ``Idempotency-Key`` returns the same
    alert; more than 3 per minute answer 429 with Retry-After and only update the open alert's
    count and position (at most once a second, no timeline entry), or open a new alert when none is
    open. Other residents' SOS from the same address within minutes are grouped and flagged for the
    operator as a suspected burst (never refused)."""
    # The limit first: a resident pressing in a loop costs one read per press, not a transaction.
    wait = state.sos_limit.wait(resident, time.monotonic())
    if wait:
        outcome, over = _sos_over_limit(state, conn, resident, body, idempotency_key)
        if outcome is _OverLimit.REPLAY and over is not None:
            state.metrics.sos.labels("retry").inc()
            return JSONResponse(_sos_answer(over), status_code=202, headers={"Idempotent-Replayed": "true"})
        if outcome is _OverLimit.FOLDED and over is not None:
            state.metrics.sos.labels("rate_limited").inc()
            state.metrics.rate_limited.labels("sos").inc()
            limit = state.config.sos_per_minute
            answer = _sos_answer(
                over, f"at most {limit} SOS per minute; this one was added to alert {over.id}"
            )
            return JSONResponse(answer, status_code=429, headers={"Retry-After": retry_after_header(wait)})
    key = idempotency_key or new_id("auto")
    source = sos_source_key(state, address_key(client_address(request)))
    alert, retried = _accept_sos(state, conn, resident, body, key, source)
    answer = _sos_answer(alert)
    if retried:
        state.metrics.sos.labels("retry").inc()
        return JSONResponse(answer, status_code=202, headers={"Idempotent-Replayed": "true"})
    state.sos_limit.hit(resident, time.monotonic())
    state.metrics.sos.labels("accepted").inc()
    return JSONResponse(answer, status_code=202)


def _own_alert(conn: Conn, alert_id: str, resident: str) -> Alert:
    alert = load_alert(conn, alert_id)
    if alert is None or alert.source_id != resident:
        raise HTTPException(404, f"unknown alert {alert_id!r} for this resident")
    return alert


@router.get("/v1/sos/{alert_id}", summary="My SOS's status")
def sos_status(alert_id: str, resident: Resident, conn: Db) -> SosStatusOut:
    """What the resident needs to know: acknowledged? help dispatched? (no operator names)."""
    return sos_status_of(_own_alert(conn, alert_id, resident))


def sos_status_of(alert: Alert) -> SosStatusOut:
    """An SOS as its resident sees it (the answer of ``GET /v1/sos/{id}`` and of its live socket):
    no operator names, no notes, no position."""
    unit = None
    for event in alert.timeline:
        if event.action.value == "dispatched":
            unit = dict(event.details).get("unit") or None
    return SosStatusOut(
        alert_id=alert.id,
        status=alert.state.value,
        district=alert.place.district_code or None,
        acknowledged=alert.acknowledged_at is not None,
        dispatched=any(e.action.value == "dispatched" for e in alert.timeline),
        unit=unit,
        resolved=alert.state is AlertState.RESOLVED,
        cancelled=alert.state is AlertState.CANCELLED,
        created_at=alert.created_at.isoformat(),
        updated_at=(alert.timeline[-1].at if alert.timeline else alert.created_at).isoformat(),
    )


@router.post("/v1/sos/{alert_id}/cancel", summary="Cancel my SOS")
def sos_cancel(alert_id: str, resident: Resident, conn: Db) -> SosCancelledOut:
    """The resident is safe: cancel the alert (operators see why)."""
    _own_alert(conn, alert_id, resident)
    try:
        _, after = change_alert(
            conn,
            alert_id,
            lambda a: cancel(a, _now(), f"resident:{resident}", CancelReason.RESIDENT_CANCELLED),
        )
    except AlertNotFound as exc:
        raise HTTPException(404, f"unknown alert {alert_id!r} for this resident") from exc
    except InvalidTransition as exc:
        raise HTTPException(409, f"alert {alert_id!r} is {exc.from_state}; it cannot be cancelled") from exc
    return SosCancelledOut(alert_id=after.id, status=after.state.value)
