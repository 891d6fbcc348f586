"""``/v1/sos/{alert_id}/live``: a resident's WebSocket on their open SOS.

Authenticated like the walk socket (`api.walklive`): the install token as ``Authorization:
Bearer`` at the handshake, or a first message ``{"token": ...}`` (what a browser can send). The
alert must be the caller's own (404 for anyone else's, as ``GET /v1/sos/{id}`` answers).

Every message is one shape, ``{"type": "status", "event_id", "replay", "status", "events"}``:
``status`` is `SosStatusOut` (what ``GET /v1/sos/{id}`` answers), ``events`` the changes a
resident is told of since the last message, each ``{"event_id", "action", "at"}`` plus ``unit``
for ``dispatched`` and ``reason`` for ``cancelled``. Operators' names, notes, outcomes in words
and positions never leave this socket (`resident_event`). The first message (``replay: true``)
carries the status now and every such change after the query parameter ``since`` (an
``event_id`` the app received: a reconnecting app gets exactly what it missed; 0 or absent:
all of them). Then one message per change as it is committed: the API's stream hub (`api.hub`)
hears ``NOTIFY sl_alert`` and hands the changed alert to this socket's bounded queue; a socket
that falls behind is closed (1013) and catches up with ``since``. Once the SOS is resolved or
cancelled the socket sends that and closes (1000).

The connection is audited (actor ``resident``, action ``sos_live``, the resident's pseudonym),
as the resident's export is; its messages carry no position, so there is no read of one to audit.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from alerts import Alert, alert_from_dict
from alerts._errors import AlertError
from api.hub import Watcher
from api.residents import WalkRefused, sos_status_of
from api.security import hash_resident_token
from api.sockets import drain, until_first_ends
from api.state import AppState, resident_subject
from api.walklive import first_message_token, header_token
from runtime.logs import get_logger
from store.alerts import alert_events, alert_events_async, load_alert
from store.errors import DatabaseUnavailable
from store.operators import log_access
from store.types import Row
from store.walks import resident_by_token_hash

log = get_logger(__name__)
router = APIRouter(tags=["residents"])

_NORMAL = 1000
_POLICY_VIOLATION = 1008
_TRY_AGAIN_LATER = 1013

# What a resident is told of an alert's timeline (the rest: positions, repeated presses, lamps,
# escalations between centres, are the centre's business) and which details of each.
RESIDENT_ACTIONS: dict[str, tuple[str, ...]] = {
    "created": (),
    "acknowledged": (),
    "dispatched": ("unit",),
    "resolved": (),
    "cancelled": ("reason",),
}


def resident_event(row: Row) -> dict[str, Any] | None:
    """One timeline row as its resident sees it, or None when they are not told of it: the action,
    its time and the whitelisted details; never the actor, the note or any other detail."""
    action = str(row["action"])
    allowed = RESIDENT_ACTIONS.get(action)
    if allowed is None:
        return None
    at = row["ts"]
    event: dict[str, Any] = {
        "event_id": int(row["id"]),
        "action": action,
        "at": at.isoformat() if hasattr(at, "isoformat") else str(at),
    }
    details = row.get("details") or {}
    for key in allowed:
        if details.get(key):
            event[key] = str(details[key])
    return event


def status_message(alert: Alert, events: list[Row], event_id: int, *, replay: bool) -> dict[str, Any]:
    """The socket's message: the status now and the changes told since the last one."""
    told = [e for e in (resident_event(r) for r in events) if e is not None]
    return {
        "type": "status",
        "event_id": event_id,
        "replay": replay,
        "status": sos_status_of(alert).model_dump(),
        "events": told,
    }


def _closed(alert: Alert) -> bool:
    return alert.state.is_terminal


def _open(state: AppState, token: str, alert_id: str, since: int) -> tuple[str, dict[str, Any], bool]:
    """Check the caller and the alert; the resident, the first message and whether it is closed."""
    with state.pool.connection() as conn:
        resident = resident_by_token_hash(conn, hash_resident_token(token))
        if resident is None:
            raise WalkRefused(401, "unknown or revoked resident token")
        alert = load_alert(conn, alert_id)
        if alert is None or alert.source_id != resident:
            raise WalkRefused(404, f"unknown alert {alert_id!r} for this resident")
        every = alert_events(conn, alert_id)
        newest = max((int(r["id"]) for r in every), default=0)
        missed = [r for r in every if int(r["id"]) > since]
        message = status_message(alert, missed, newest, replay=True)
        log_access(
            conn,
            actor="resident",
            action="sos_live",
            subject_kind="resident",
            subject_id=resident_subject(state, resident),
            details={"alert_id": alert_id, "since": since, "replayed": len(message["events"])},
        )
    return resident, message, _closed(alert)


async def _send(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(message).decode())


async def _pump(
    ws: WebSocket, state: AppState, watcher: Watcher, resident: str, first: dict[str, Any]
) -> None:
    """Forward each change of the alert the hub hands over, as it comes."""
    assert state.apool is not None
    cursor: int = first["event_id"]
    last_status: dict[str, Any] = first["status"]
    while True:
        item = await watcher.queue.get()
        if item["type"] == "overflow":
            await ws.close(_TRY_AGAIN_LATER, "fell behind; reconnect with since=<last event_id>")
            return
        row: Row = item["row"]
        if row.get("resident_id") is not None and str(row["resident_id"]) != resident:
            await ws.close(_POLICY_VIOLATION, "this alert is no longer yours")
            return
        if row.get("resident_id") is None:  # the account was deleted: the alert is unlinked
            await ws.close(_POLICY_VIOLATION, "resident account deleted")
            return
        try:
            alert = alert_from_dict(dict(row["data"]))
        except (AlertError, ValueError, KeyError) as exc:
            log.warning("sos_live_alert_unreadable", alert=watcher.alert_id, error=str(exc))
            continue
        async with state.apool.connection() as conn:
            events = await alert_events_async(conn, watcher.alert_id, after_id=cursor)
        cursor = max([cursor, *(int(r["id"]) for r in events)])
        message = status_message(alert, events, cursor, replay=False)
        if message["events"] or message["status"] != last_status:
            await _send(ws, message)
            last_status = message["status"]
        if _closed(alert):
            await ws.close(_NORMAL, f"sos {alert.state.value}")
            return


def _since(ws: WebSocket) -> int | None:
    raw = ws.query_params.get("since", "0") or "0"
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if 0 <= value < 2**63 else None


async def _refuse(ws: WebSocket, accepted: bool, status: int, reason: str) -> None:
    if not accepted:  # the handshake answers 403
        await ws.close(_POLICY_VIOLATION, reason[:120])
        return
    await _send(ws, {"error": reason, "status": status})
    await ws.close(_POLICY_VIOLATION, reason[:120])


@router.websocket("/v1/sos/{alert_id}/live")
async def sos_live(ws: WebSocket, alert_id: str) -> None:
    """The resident's own SOS, each change as it happens (see the module docstring)."""
    state: AppState = ws.state.api
    token = header_token(ws)
    since = _since(ws)
    accepted = False
    if since is None or token is None:
        await ws.accept()
        accepted = True
    if since is None:
        await _refuse(ws, accepted, 422, "since must be a whole number >= 0 (an event_id of this socket)")
        return
    try:
        if token is None:
            token = await first_message_token(ws)
    except WalkRefused as exc:
        await _refuse(ws, accepted, exc.status, exc.reason)
        return
    except WebSocketDisconnect:
        return
    # Watch before reading the catch-up, so no change falls between the two.
    watcher = state.hub.watch(alert_id)
    try:
        try:
            resident, first, closed = await run_in_threadpool(_open, state, token, alert_id, since)
        except WalkRefused as exc:
            await _refuse(ws, accepted, exc.status, exc.reason)
            return
        except DatabaseUnavailable:
            await ws.close(_TRY_AGAIN_LATER, "database unavailable, retry")
            return
        if not accepted:
            await ws.accept()
        await _send(ws, first)
        if closed:
            await ws.close(_NORMAL, f"sos {first['status']['status']}")
            return
        await until_first_ends(
            {"sos-live-pump": _pump(ws, state, watcher, resident, first), "sos-live-drain": drain(ws)}
        )
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        state.hub.unwatch(watcher)
