"""Call-back: a resident's phone number, and the operator who calls them back during their SOS.

- ``PUT``/``DELETE /v1/residents/me/phone``: the resident registers, replaces or removes a number
  (checked and written in E.164 by `alerts.normalise_phone`, stored encrypted by `store.phones`).
- ``POST /v1/alerts/{id}/callback/reveal``: the number, for an operator of the alert's centre
  (a district operator of a district it is routed to, or the city centre) while the SOS is active;
  each reveal is in the audit chain with the resident's pseudonym and in the resident's export.
- ``POST /v1/alerts/{id}/callback/dial``: the centre's PBX (`api.telephony`) rings the resident
  and connects them to the centre; the number is used, not shown, and audited the same way. The
  timeline gets "call placed" now and "answered" / "no answer" when the PBX says.
- ``POST /v1/alerts/{id}/callback/outcome``: the steps of a call placed from the console's
  ``tel:`` link, recorded by the operator.

Refusals: an alert the operator does not see, or one that is not an SOS, answers 404 (as an
unknown one); a closed SOS or a role that does not handle incidents (admin, maintenance) 403; no
number registered 404.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response
from fastapi.responses import JSONResponse

from alerts import (
    Alert,
    AlertKind,
    CallChannel,
    CallOutcome,
    InvalidTransition,
    alert_from_dict,
    normalise_phone,
    record_call,
    tel_uri,
)
from api.schemas import CallOutcomeIn, CallRecordedOut, PhoneIn, PhoneOut
from api.security import Operator
from api.state import AppState, CurrentOperator, Db, Resident, State, may_see, resident_subject
from api.telephony import PlacedCall, TelephonyError
from runtime.logs import get_logger
from store.alerts import AlertNotFound, change_alert, get_alert
from store.operators import log_access
from store.phones import PhoneKeyError, PhoneKeyring, delete_phone, read_phone, set_phone
from store.privacy import PHONE_DIAL_ACTION, PHONE_REVEAL_ACTION
from store.types import Conn, Row

log = get_logger(__name__)
router = APIRouter(tags=["call-back"])

# The roles that handle incidents at a control centre, and so may call a resident back.
CALLBACK_ROLES = ("district", "city")


def _now() -> datetime:
    return datetime.now(UTC)


def _keyring(state: AppState) -> PhoneKeyring:
    if state.config.phone_keys is None:
        raise HTTPException(
            503, "phone numbers are not taken by this service (STREETLIGHT_PHONE_KEYS is not set)"
        )
    return state.config.phone_keys


@router.put("/v1/residents/me/phone", summary="Register or replace my call-back number")
def phone_put(body: PhoneIn, resident: Resident, state: State, conn: Db) -> PhoneOut:
    """Store the caller's number (Korean mobile, geographic or 070; answered in E.164), encrypted.
    Operators see it only while handling this resident's open SOS, and each time is audited."""
    keyring = _keyring(state)
    number = normalise_phone(body.number)  # InvalidPhoneNumber is a ValueError: 422
    replaced = set_phone(conn, keyring, resident, number)
    log.info("resident_phone_set", replaced=replaced)
    return PhoneOut(number=number, replaced=replaced)


@router.delete("/v1/residents/me/phone", status_code=204, summary="Remove my call-back number")
def phone_delete(resident: Resident, conn: Db) -> Response:
    """Forget the caller's number (also done when the account is deleted); 204 whether or not one was held."""
    delete_phone(conn, resident)
    return Response(status_code=204)


def _callable_sos(conn: Conn, op: Operator, alert_id: str) -> tuple[Row, Alert]:
    row = get_alert(conn, alert_id)
    if row is None or not may_see(op, list(row["district_codes"]), str(row["kind"])):
        raise HTTPException(404, f"alert {alert_id!r} not found in your districts")
    if op.role not in CALLBACK_ROLES:
        raise HTTPException(
            403, f"role {op.role!r} does not handle incidents; a control centre's operator calls back"
        )
    alert = alert_from_dict(row["data"])
    if alert.kind is not AlertKind.SOS or row["resident_id"] is None:
        raise HTTPException(404, f"alert {alert_id!r} has no resident to call back")
    if not alert.is_active:
        raise HTTPException(
            403,
            f"alert {alert_id!r} is {alert.state.value}: the number is shown only while the SOS is open",
        )
    return row, alert


def _number(state: AppState, conn: Conn, row: Row) -> str:
    try:
        number = read_phone(conn, _keyring(state), str(row["resident_id"]))
    except PhoneKeyError as exc:
        log.error("resident_phone_unreadable", alert_id=row["alert_id"], error=str(exc))
        raise HTTPException(409, "the resident's number cannot be read with the keys configured") from None
    if number is None:
        raise HTTPException(404, f"the resident of alert {row['alert_id']!r} registered no phone number")
    return number


def _audit_use(state: AppState, conn: Conn, op: Operator, row: Row, action: str, **details: str) -> None:
    log_access(
        conn,
        actor=op.actor,
        action=action,
        subject_kind="resident",
        subject_id=resident_subject(state, str(row["resident_id"])),
        details={"alert_id": str(row["alert_id"]), **details},
    )


@router.post("/v1/alerts/{alert_id}/callback/reveal", summary="Show the SOS resident's number (audited)")
def callback_reveal(alert_id: str, op: CurrentOperator, state: State, conn: Db) -> JSONResponse:
    """The resident's number and its ``tel:`` link, for an operator of the alert's centre while
    the SOS is open (acknowledged or dispatched too); the reveal is in the audit chain first."""
    row, _ = _callable_sos(conn, op, alert_id)
    with conn.transaction():
        number = _number(state, conn, row)
        _audit_use(state, conn, op, row, PHONE_REVEAL_ACTION)
    body = {"alert_id": alert_id, "number": number, "tel": tel_uri(number)}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def _record(
    state: AppState,
    conn: Conn,
    alert_id: str,
    op: Operator,
    outcome: CallOutcome,
    channel: CallChannel,
    **kw: str,
) -> Alert:
    try:
        _, after = change_alert(
            conn,
            alert_id,
            lambda a: record_call(
                a, outcome, _now(), op.actor, channel, kw.get("note", ""), kw.get("call_id", "")
            ),
        )
    except AlertNotFound as exc:
        raise HTTPException(404, f"alert {alert_id!r} not found in your districts") from exc
    except InvalidTransition as exc:
        raise HTTPException(409, f"alert {alert_id!r}: cannot {exc.action}") from exc
    return after


@router.post("/v1/alerts/{alert_id}/callback/outcome", summary="Record a call-back step (tel: link)")
def callback_outcome(
    alert_id: str, body: CallOutcomeIn, op: CurrentOperator, state: State, conn: Db
) -> CallRecordedOut:
    """ "Call placed", then "answered" or "no answer", for a call made from the console's ``tel:``
    link; 409 for an answer without a call placed."""
    _callable_sos(conn, op, alert_id)
    outcome = CallOutcome(body.outcome)
    after = _record(state, conn, alert_id, op, outcome, CallChannel.TEL, note=body.note)
    event = after.timeline[-1]
    return CallRecordedOut(
        alert_id=alert_id,
        outcome=outcome.value,
        channel=event.detail("channel") or "tel",
        call_id=event.detail("call_id"),
    )


def _await_outcome(state: AppState, alert_id: str, op: Operator, call: PlacedCall) -> None:
    """In a thread of its own: the PBX's word on the call, into the timeline."""
    assert state.config.pbx is not None
    outcome = call.wait_outcome(state.config.pbx.ring_timeout_s + 15.0)
    try:
        with state.pool.connection() as conn:
            _record(state, conn, alert_id, op, outcome, CallChannel.PBX, call_id=call.call_id)
    except HTTPException as exc:  # closed meanwhile: nothing to record
        log.info("pbx_outcome_not_recorded", alert_id=alert_id, reason=str(exc.detail))
    except Exception as exc:
        log.error("pbx_outcome_not_recorded", alert_id=alert_id, error=f"{type(exc).__name__}: {exc}")


@router.post(
    "/v1/alerts/{alert_id}/callback/dial", status_code=202, summary="Call back through the centre's PBX"
)
def callback_dial(alert_id: str, op: CurrentOperator, state: State, conn: Db) -> CallRecordedOut:
    """The centre's telephone system rings the resident and connects them to the centre (the
    number is used, not shown; audited as a use of it). 202 once the PBX queued the call ("call
    placed" in the timeline); "answered" or "no answer" follows when the PBX reports. 409 when no
    PBX is configured, 502 when it cannot be reached or refuses."""
    if state.telephony is None:
        raise HTTPException(409, "no PBX is configured for this centre: call with the tel: link")
    row, _ = _callable_sos(conn, op, alert_id)
    number = _number(state, conn, row)
    districts = list(row["district_codes"])
    district = op.district if op.district in districts else (districts[0] if districts else "")
    try:
        call = state.telephony.place_call(
            number, alert_id=alert_id, district=district or "", operator=op.username
        )
    except TelephonyError as exc:
        log.warning("pbx_call_failed", alert_id=alert_id, error=str(exc))
        raise HTTPException(502, f"the centre's PBX did not place the call: {exc}") from None
    with conn.transaction():
        _audit_use(state, conn, op, row, PHONE_DIAL_ACTION, call_id=call.call_id)
        _record(state, conn, alert_id, op, CallOutcome.PLACED, CallChannel.PBX, call_id=call.call_id)
    threading.Thread(
        target=_await_outcome, args=(state, alert_id, op, call), name=f"pbx-{call.call_id}", daemon=True
    ).start()
    return CallRecordedOut(alert_id=alert_id, outcome="placed", channel="pbx", call_id=call.call_id)
