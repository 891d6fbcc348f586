"""``/v1/stream``: the consoles' WebSocket.

Authenticated before accept: the session token comes as the subprotocol ``bearer.<token>``
(what a browser can send) or an ``Authorization`` header, never in the URL (URLs end up in access
logs and proxies' logs: a ``token`` query parameter is refused); a bad or missing one closes with
1008 (policy violation). On connect the console receives a ``hello``, then every active alert it
may see and every alert changed since its ``last_event_id`` (query parameter), marked ``replay``;
then changes as they happen.

The session is checked again whenever the operator's account or sessions change (the hub hears
`store.notes.OPERATOR_CHANNEL`): a session ended (logout, account disabled) closes with 1008,
a changed role or district with 4001 (the console reconnects and gets its new view); the
token's expiry closes it with 1008 too.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from api.hub import RESIDENT_KEY, Subscriber, alert_message
from api.operators import audit_resident_places
from api.security import InvalidToken, Operator
from api.sockets import drain, until_first_ends
from api.state import AppState, operator_from_token, resident_subject, visible_districts, visible_kinds
from store.alerts import last_event_id, stream_catch_up
from store.errors import DatabaseUnavailable
from store.operators import log_access
from store.types import Row

router = APIRouter(tags=["stream"])

SUBPROTOCOL = "streetlight.v1"
_POLICY_VIOLATION = 1008
_TRY_AGAIN_LATER = 1013
_ACCOUNT_CHANGED = 4001  # application-defined (4000-4999): reconnect for the new role or district


def _token(ws: WebSocket) -> tuple[str, bool]:
    """The token and whether it came as a subprotocol (then we must answer with ours)."""
    offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    for proto in offered:
        if proto.startswith("bearer."):
            return proto[len("bearer.") :], True
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value:
        return value.strip(), SUBPROTOCOL in offered
    return "", SUBPROTOCOL in offered


def _operator(state: AppState, token: str) -> Operator:
    with state.pool.connection() as conn:
        return operator_from_token(state, conn, token)


def _catch_up(state: AppState, op: Operator, after: int) -> tuple[int, list[Row]]:
    with state.pool.connection() as conn:
        rows = stream_catch_up(
            conn, after_event_id=after, district_codes=visible_districts(op), kinds=visible_kinds(op)
        )
        audit_resident_places(state, conn, op, "stream_replay", rows)
        log_access(
            conn,
            actor=op.actor,
            action="stream.connect",
            subject_kind="operator",
            subject_id=op.username,
            details={"last_event_id": after, "replayed": len(rows)},
        )
        return last_event_id(conn), rows


def _recheck(state: AppState, op: Operator, token: str) -> int | None:
    """None while the session and the account's view are unchanged, else the close code."""
    try:
        now = _operator(state, token)
    except InvalidToken:
        return _POLICY_VIOLATION
    same = (now.role, now.district) == (op.role, op.district)
    return None if same else _ACCOUNT_CHANGED


async def _pump(ws: WebSocket, sub: Subscriber, state: AppState, op: Operator, token: str) -> None:
    while True:
        message = await sub.queue.get()
        if message["type"] == "overflow":
            await ws.close(code=_TRY_AGAIN_LATER, reason="fell behind; reconnect with last_event_id")
            return
        if message["type"] == "account":
            code = await run_in_threadpool(_recheck, state, op, token)
            if code == _POLICY_VIOLATION:
                await ws.close(code=code, reason="operator session ended; log in again")
                return
            if code is not None:
                await ws.close(code=code, reason="operator account changed; reconnect")
                return
            continue
        if RESIDENT_KEY in message:
            resident = message[RESIDENT_KEY]
            message = {k: v for k, v in message.items() if k != RESIDENT_KEY}
            await run_in_threadpool(_audit_live, state, op, resident, message)
        await ws.send_text(json.dumps(message, ensure_ascii=False, default=str))


def _audit_live(state: AppState, op: Operator, resident_id: str, message: dict[str, Any]) -> None:
    """A live SOS change shows the resident's position: one audit row per message sent."""
    with state.pool.connection() as conn:
        log_access(
            conn,
            actor=op.actor,
            action="stream_alert",
            subject_kind="resident",
            subject_id=resident_subject(state, resident_id),
            details={"alert_id": message.get("alert", {}).get("id"), "event_id": message.get("event_id")},
        )


async def _expire(ws: WebSocket, op: Operator) -> None:
    """Close the stream when its session's token expires (a socket must not outlive its login)."""
    await asyncio.sleep(max(0.0, op.expires_at - time.time()))
    await ws.close(code=_POLICY_VIOLATION, reason="operator token expired; log in again")


@router.websocket("/v1/stream")
async def stream(ws: WebSocket) -> None:
    """Live alert and lamp changes of the operator's districts."""
    state: AppState = ws.state.api
    if "token" in ws.query_params:
        await ws.close(
            code=_POLICY_VIOLATION,
            reason="no token in the URL: send it as the subprotocol bearer.<token> (or Authorization)",
        )
        return
    token, as_subprotocol = _token(ws)
    try:
        op = await run_in_threadpool(_operator, state, token)
    except InvalidToken as exc:
        await ws.close(code=_POLICY_VIOLATION, reason=str(exc) if token else "missing operator token")
        return
    except DatabaseUnavailable:
        await ws.close(code=_TRY_AGAIN_LATER, reason="database unavailable, retry")
        return
    try:
        after = max(0, int(ws.query_params.get("last_event_id", "0")))
    except ValueError:
        after = 0
    await ws.accept(subprotocol=SUBPROTOCOL if as_subprotocol else None)
    # Subscribe before reading the catch-up, so nothing falls between the two (duplicates may;
    # the console keeps the newest event id per alert).
    sub = state.hub.subscribe(visible_districts(op), visible_kinds(op), op.username)
    try:
        newest, rows = await run_in_threadpool(_catch_up, state, op, after)
        hello = {
            "type": "hello",
            "operator": op.username,
            "role": op.role,
            "districts": visible_districts(op),
            "event_id": newest,
        }
        await ws.send_text(json.dumps(hello))
        for row in rows:
            await ws.send_text(json.dumps(alert_message(row, replay=True), ensure_ascii=False, default=str))
        await until_first_ends(
            {
                "stream-pump": _pump(ws, sub, state, op, token),
                "stream-drain": drain(ws),
                "stream-expiry": _expire(ws, op),
            }
        )
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        state.hub.unsubscribe(sub)
