"""The operators' endpoints: login, alerts (list, detail, actions, CAP), accounts and the audit log.

Visibility is one rule (state.may_see): a district operator sees and acts on the alerts routed
to their district only; city and admin see all; maintenance sees lamp alerts. An alert outside
an operator's view answers 404, exactly as an unknown one, so ids leak nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from alerts import (
    Alert,
    AlertKind,
    CancelReason,
    InvalidTransition,
    acknowledge,
    alert_from_dict,
    alert_to_dict,
    allowed_actions,
    cancel,
    dispatch,
    render_cap,
    resolve,
)
from api.accounts import create_operator
from api.hub import alert_summary
from api.loginguard import Refusal, Throttle
from api.ratelimit import retry_after_header
from api.schemas import (
    AlertActionOut,
    AlertDetailOut,
    AlertEventOut,
    AlertListOut,
    AuditEntryOut,
    AuditOut,
    CallbackInfoOut,
    DispatchIn,
    LoginIn,
    LoginOut,
    MeOut,
    NoteIn,
    OperatorAccountOut,
    OperatorDisabledOut,
    OperatorIn,
    OperatorSavedOut,
    OperatorsOut,
    ResolveIn,
    TrackPointOut,
)
from api.security import Operator, SessionClaims, new_session_id, sign_token, verify_password
from api.state import (
    AppState,
    CurrentAccount,
    CurrentOperator,
    Db,
    State,
    address_key,
    client_address,
    may_see,
    require_role,
    resident_subject,
    visible_districts,
    visible_kinds,
)
from runtime.logs import get_logger
from store.alerts import (
    AlertNotFound,
    alert_events,
    alert_track,
    change_alert,
    get_alert,
    last_event_id,
    list_alerts,
)
from store.operators import (
    account_changed,
    audit_entries,
    create_session,
    get_operator,
    is_login_place,
    list_operators,
    log_access,
    log_accesses,
    remember_login_place,
    revoke_session,
    set_operator_disabled,
)
from store.phones import has_phone
from store.types import Conn, Row

log = get_logger(__name__)
router = APIRouter(tags=["operators"])

_STATES = ("open", "acknowledged", "dispatched", "resolved", "cancelled")


def _now() -> datetime:
    return datetime.now(UTC)


def _audit_login(conn: Conn, address: str, action: str, username: str, **details: Any) -> None:
    log_access(
        conn,
        actor=f"address:{address}",
        action=action,
        subject_kind="operator",
        subject_id=username,
        details={"address": address, **details},
    )


def _throttled(
    state: AppState, conn: Conn, username: str, address: str, now: float
) -> tuple[Refusal | None, bool]:
    """A refusal for this attempt, or None: the address's failures first, then the username's; and
    whether it waits for the password. At a place the operator logged in from before the password
    is checked first and a right one gets through (api/loginguard.py): someone failing from the
    control centre's shared address, or anywhere on the username, does not lock its operators out."""
    guard = state.login_guard
    key = address_key(address)
    refusal = guard.address_refusal(key, now) or guard.username_refusal(username, now)
    if refusal is None:
        return None, False
    return refusal, is_login_place(conn, username, key)


def _refuse(state: AppState, conn: Conn, refusal: Refusal, username: str, address: str, now: float) -> None:
    """429 for a throttled attempt: counted, and audited once per window per address and username."""
    state.metrics.rate_limited.labels("login").inc()
    state.metrics.login_failures.labels(f"throttled_{refusal.throttle.value}").inc()
    if state.login_guard.first_report(f"{refusal.throttle.value}:{address_key(address)}:{username}", now):
        _audit_login(conn, address, "login.throttled", username, by=refusal.throttle.value)
    where = "from this address" if refusal.throttle is Throttle.ADDRESS else "for this username"
    raise HTTPException(
        429,
        f"too many failed logins {where}; try again later",
        {"Retry-After": retry_after_header(refusal.wait_s)},
    )


@router.post("/v1/auth/login", summary="Operator login")
def login(body: LoginIn, request: Request, state: State, conn: Db) -> LoginOut:
    """A session token for a valid username and password (argon2id), with its expiry and role.

    Failed logins are audited and limited per address and per username (429 with Retry-After);
    an unknown username costs the same password check as a wrong password."""
    address, now = client_address(request), time.monotonic()
    refusal, known_place = _throttled(state, conn, body.username, address, now)
    if refusal is not None and not known_place:
        _refuse(state, conn, refusal, body.username, address, now)
    row = get_operator(conn, body.username)
    # The same argon2id work whether the account exists or not: timing tells no usernames.
    stored = row["password_hash"] if row is not None else state.dummy_password_hash
    if not verify_password(state.hasher, stored, body.password) or row is None:
        reason = "unknown_user" if row is None else "wrong_password"
        state.metrics.login_failures.labels(reason).inc()
        spray = state.login_guard.failed(body.username, address_key(address), now)
        with conn.transaction():
            _audit_login(conn, address, "login.failed", body.username, reason=reason)
            if spray:
                state.metrics.login_sprays.inc()
                _audit_login(conn, address, "login.spray_suspected", body.username)
        if spray:
            log.warning("login_spray_suspected", address=address)
        if refusal is not None and refusal.throttle is Throttle.ADDRESS:
            _refuse(state, conn, refusal, body.username, address, now)  # a known place: still slowed
        raise HTTPException(401, "wrong username or password")
    expires = time.time() + state.config.token_ttl_s
    claims = SessionClaims(new_session_id(), row["username"], expires)
    op = Operator(row["username"], row["role"], row["district_code"], expires, claims.session_id)
    with conn.transaction():
        create_session(conn, claims.session_id, op.username, expires_at=datetime.fromtimestamp(expires, UTC))
        remember_login_place(conn, op.username, address_key(address))
        log_access(
            conn,
            actor=op.actor,
            action="login",
            subject_kind="operator",
            subject_id=op.username,
            details={"address": address},
        )
    return LoginOut(
        token=sign_token(state.token_secret, claims),
        expires_at=datetime.fromtimestamp(expires, UTC).isoformat(),
        role=op.role,
        district=op.district,
        username=op.username,
    )


@router.post("/v1/auth/logout", status_code=204, summary="Operator logout")
def logout(op: CurrentAccount, conn: Db) -> Response:
    """End this session: its token is refused from now on, and its live streams close."""
    with conn.transaction():
        revoke_session(conn, op.session_id)
        log_access(conn, actor=op.actor, action="logout", subject_kind="operator", subject_id=op.username)
    return Response(status_code=204)


@router.get("/v1/me", summary="Who am I")
def me(op: CurrentOperator, state: State) -> MeOut:
    """The logged-in operator and the districts they see (null: all)."""
    districts = visible_districts(op)
    names = {d.code: (d.name, d.name_eng) for d in state.gazetteer.districts}
    return MeOut(
        username=op.username,
        role=op.role,
        district=op.district,
        districts=districts,
        district_names={c: names.get(c, ("", "")) for c in (districts or [])},
        expires_at=datetime.fromtimestamp(op.expires_at, UTC).isoformat(),
    )


@router.get("/v1/alerts", summary="List alerts")
def alerts_list(
    op: CurrentOperator,
    state: State,
    conn: Db,
    status: Annotated[
        list[str] | None, Query(description="open, acknowledged, ...; repeat for several")
    ] = None,
    kind: Annotated[list[str] | None, Query(description="sos, lamp_fault, ...; repeat for several")] = None,
    since: Annotated[datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> AlertListOut:
    """Alerts the operator may see, newest first."""
    for s in status or []:
        if s not in _STATES:
            raise HTTPException(422, f"status must be one of {', '.join(_STATES)}, got {s!r}")
    if since is not None and since.tzinfo is None:
        raise HTTPException(422, "since needs a time zone, e.g. 2024-05-01T21:00:00+09:00")
    kinds = visible_kinds(op)
    if kind is not None:
        kinds = [k for k in kind if kinds is None or k in kinds]
    rows = list_alerts(
        conn, district_codes=visible_districts(op), statuses=status, kinds=kinds, since=since, limit=limit
    )
    audit_resident_places(state, conn, op, "read_alert_list", rows)
    return AlertListOut(alerts=[alert_summary(r) for r in rows], event_id=last_event_id(conn))


def audit_resident_places(state: AppState, conn: Conn, op: Operator, action: str, rows: list[Row]) -> None:
    """One audit row per resident whose SOS position (the alert's place) this answer carries."""
    by_resident: dict[str, list[str]] = {}
    for r in rows:
        if r.get("resident_id") is not None:
            by_resident.setdefault(str(r["resident_id"]), []).append(str(r["alert_id"]))
    if by_resident:
        entries = [
            ("resident", resident_subject(state, rid), {"alert_ids": ids}) for rid, ids in by_resident.items()
        ]
        log_accesses(conn, actor=op.actor, action=action, entries=entries)


def _visible_alert(conn: Conn, op: Operator, alert_id: str) -> Row:
    row = get_alert(conn, alert_id)
    if row is None or not may_see(op, list(row["district_codes"]), str(row["kind"])):
        raise HTTPException(404, f"alert {alert_id!r} not found in your districts")
    return row


def _iso_rows(rows: list[Row]) -> list[Row]:
    return [{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]


@router.get("/v1/alerts/{alert_id}", summary="Alert detail with track and timeline")
def alert_detail(alert_id: str, op: CurrentOperator, state: State, conn: Db) -> AlertDetailOut:
    """The whole alert: place in words, track, audit trail; reading an SOS track is logged."""
    row = _visible_alert(conn, op, alert_id)
    alert = alert_from_dict(row["data"])
    track = alert_track(conn, alert_id)
    if row["resident_id"] is not None:
        log_access(
            conn,
            actor=op.actor,
            action="read_track",
            subject_kind="resident",
            subject_id=resident_subject(state, str(row["resident_id"])),
            details={"alert_id": alert_id, "points": len(track)},
        )
    events = alert_events(conn, alert_id)
    callback = None
    if row["resident_id"] is not None and alert.kind is AlertKind.SOS:
        callback = CallbackInfoOut(
            phone_registered=has_phone(conn, str(row["resident_id"])), pbx=state.telephony is not None
        )
    return AlertDetailOut(
        alert=alert_to_dict(alert),
        state=alert.state.value,
        allowed_actions=[a.value for a in allowed_actions(alert)],
        acknowledged_by=row["acknowledged_by"],
        track=[TrackPointOut(**p) for p in _iso_rows(track)],
        events=[AlertEventOut(**e) for e in _iso_rows(events)],
        event_id=max((int(e["id"]) for e in events), default=0),
        callback=callback,
    )


def _act(
    state: AppState, conn: Conn, op: Operator, alert_id: str, action: str, change: Callable[[Alert], Alert]
) -> AlertActionOut:
    row = _visible_alert(conn, op, alert_id)
    try:
        with conn.transaction():
            _, after = change_alert(conn, alert_id, change)
            log_access(
                conn,
                actor=op.actor,
                action=f"alert.{action}",
                subject_kind="resident" if row["resident_id"] else "alert",
                subject_id=resident_subject(state, str(row["resident_id"]))
                if row["resident_id"]
                else alert_id,
                details={"alert_id": alert_id, "state": after.state.value},
            )
    except AlertNotFound as exc:
        raise HTTPException(404, f"alert {alert_id!r} not found in your districts") from exc
    except InvalidTransition as exc:
        raise HTTPException(409, f"alert {alert_id!r} is {exc.from_state}: cannot {exc.action}") from exc
    return AlertActionOut(
        alert_id=alert_id, state=after.state.value, allowed_actions=[a.value for a in allowed_actions(after)]
    )


@router.post("/v1/alerts/{alert_id}/acknowledge", summary="Acknowledge an alert")
def alert_acknowledge(
    alert_id: str, op: CurrentOperator, state: State, conn: Db, body: NoteIn | None = None
) -> AlertActionOut:
    """I have seen it: escalation stops."""
    note = body.note if body else ""
    return _act(state, conn, op, alert_id, "acknowledge", lambda a: acknowledge(a, _now(), op.actor, note))


@router.post("/v1/alerts/{alert_id}/dispatch", summary="Dispatch help")
def alert_dispatch(
    alert_id: str, op: CurrentOperator, state: State, conn: Db, body: DispatchIn | None = None
) -> AlertActionOut:
    """Help is on its way (unit, note); acknowledges too when still open."""
    b = body or DispatchIn()
    return _act(
        state, conn, op, alert_id, "dispatch", lambda a: dispatch(a, _now(), op.actor, b.note, b.unit)
    )


@router.post("/v1/alerts/{alert_id}/resolve", summary="Resolve an alert")
def alert_resolve(
    alert_id: str, op: CurrentOperator, state: State, conn: Db, body: ResolveIn | None = None
) -> AlertActionOut:
    """The incident is over (outcome in words)."""
    b = body or ResolveIn()
    return _act(
        state, conn, op, alert_id, "resolve", lambda a: resolve(a, _now(), op.actor, b.note, b.outcome)
    )


@router.post("/v1/alerts/{alert_id}/cancel", summary="Cancel as a false alarm")
def alert_cancel(
    alert_id: str, op: CurrentOperator, state: State, conn: Db, body: NoteIn | None = None
) -> AlertActionOut:
    """Not an emergency after all."""
    note = body.note if body else ""
    return _act(
        state,
        conn,
        op,
        alert_id,
        "cancel",
        lambda a: cancel(a, _now(), op.actor, CancelReason.FALSE_ALARM, note),
    )


@router.get(
    "/v1/alerts/{alert_id}/cap",
    summary="CAP 1.2 message of the alert",
    response_class=Response,
    responses={200: {"content": {"application/cap+xml": {}}}},
)
def alert_cap(alert_id: str, op: CurrentOperator, state: State, conn: Db) -> Response:
    """The OASIS CAP 1.2 XML of the alert's latest message."""
    row = _visible_alert(conn, op, alert_id)
    message = render_cap(alert_from_dict(row["data"]))
    if row["resident_id"] is not None:  # the CAP area is the resident's position
        log_access(
            conn,
            actor=op.actor,
            action="read_cap",
            subject_kind="resident",
            subject_id=resident_subject(state, str(row["resident_id"])),
            details={"alert_id": alert_id},
        )
    return Response(message.xml, media_type="application/cap+xml")


@router.get("/v1/audit", summary="Privacy audit log (admin)")
def audit(
    op: CurrentOperator,
    conn: Db,
    subject_id: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> AuditOut:
    """Who read or changed which resident's data, newest first."""
    require_role(op, "admin")
    entries = _iso_rows(audit_entries(conn, subject_id=subject_id, limit=limit))
    return AuditOut(entries=[AuditEntryOut(**e) for e in entries])


@router.get("/v1/operators", summary="Operator accounts (admin)")
def operators_list(op: CurrentOperator, conn: Db) -> OperatorsOut:
    """Every account, without password hashes."""
    require_role(op, "admin")
    return OperatorsOut(operators=[OperatorAccountOut(**o) for o in _iso_rows(list_operators(conn))])


@router.post("/v1/operators", status_code=201, summary="Create or update an operator (admin)")
def operators_create(body: OperatorIn, op: CurrentOperator, state: State, conn: Db) -> OperatorSavedOut:
    """Create an account; a district operator needs a district."""
    require_role(op, "admin")
    if body.role == "district" and body.district is None:
        raise HTTPException(422, "a district operator needs a district (5-digit code)")
    if body.district is not None and body.district not in {d.code for d in state.gazetteer.districts}:
        raise HTTPException(422, f"unknown district {body.district!r}")
    with conn.transaction():
        ended = create_operator(
            conn,
            body.username,
            body.password,
            role=body.role,
            district=body.district,
            display_name=body.display_name,
            hasher=state.hasher,
        )
        # A replaced password ends the account's sessions (create_operator); the role and district
        # count from the next request anyway (each request reads the account as it is now).
        log_access(
            conn,
            actor=op.actor,
            action="operator.upsert",
            subject_kind="operator",
            subject_id=body.username,
            details={"role": body.role, "district": body.district, "sessions_ended": ended},
        )
    return OperatorSavedOut(username=body.username, role=body.role, district=body.district)


@router.post("/v1/operators/{username}/disable", summary="Disable an operator (admin)")
def operators_disable(username: str, op: CurrentOperator, conn: Db) -> OperatorDisabledOut:
    """The account can no longer log in and its sessions end at once (tokens and live streams)."""
    return _set_disabled(conn, op, username, True)


@router.post("/v1/operators/{username}/enable", summary="Enable an operator again (admin)")
def operators_enable(username: str, op: CurrentOperator, conn: Db) -> OperatorDisabledOut:
    """The account may log in again (its old sessions stay ended)."""
    return _set_disabled(conn, op, username, False)


def _set_disabled(conn: Conn, op: Operator, username: str, disabled: bool) -> OperatorDisabledOut:
    require_role(op, "admin")
    with conn.transaction():
        if not set_operator_disabled(conn, username, disabled):
            raise HTTPException(404, f"unknown operator {username!r}")
        account_changed(conn, username)
        log_access(
            conn,
            actor=op.actor,
            action="operator.disable" if disabled else "operator.enable",
            subject_kind="operator",
            subject_id=username,
        )
    return OperatorDisabledOut(username=username, disabled=disabled)
