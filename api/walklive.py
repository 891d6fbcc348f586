"""``/v1/walks/{walk_id}/live``: a walker's WebSocket, one position per message.

The same walk as ``POST /v1/walks/{id}/positions`` without a request per position: the resident's
token is checked once (``Authorization: Bearer`` at the handshake, or a first message
``{"token": ...}``, what a browser can send), with the walk (the resident's, active). Then each text
message is a position, validated by the same model (`WalkPositionIn`), limited by the same rate
limit and stored with the same single statement (row + ``NOTIFY sl_walk``) as the HTTP endpoint,
from an async pool on the event loop (no thread hop, no token hashing per message). Answers:
``{"seq","lamps"}``, or ``{"seq","error","status"[,"retry_after"]}`` with the connection kept
(``status`` is what the HTTP endpoint would have answered). ``{"op":"end"}`` ends the walk and
closes (1000); a walk ended meanwhile (``POST .../end``) answers its next position with a 409
error and closes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, WebSocket
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from api.residents import (
    PositionRateLimited,
    WalkRefused,
    admit_position,
    check_live_walk,
    finish_walk,
    store_position,
)
from api.schemas import WalkPositionIn, describe_errors
from api.state import AppState
from api.walkbatch import PositionsBusy
from runtime.logs import get_logger
from store.errors import DatabaseUnavailable

log = get_logger(__name__)
router = APIRouter(tags=["residents"])

_NORMAL = 1000
_POLICY_VIOLATION = 1008
_TRY_AGAIN_LATER = 1013
AUTH_TIMEOUT_S = 10.0  # for the first message when the token did not come with the handshake


def header_token(ws: WebSocket) -> str | None:
    """The resident's token from the handshake's ``Authorization: Bearer`` (None: not sent)."""
    scheme, _, value = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


def _decode(raw: str | bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        # A raw NaN/Infinity is not JSON, but the HTTP endpoint reads it (and refuses the field by
        # name); so does this.
        try:
            return json.loads(raw)
        except ValueError:
            return None


async def _send(ws: WebSocket, message: dict[str, Any]) -> None:
    await ws.send_text(orjson.dumps(message).decode())


async def first_message_token(ws: WebSocket) -> str:
    """The token of the first message ``{"token": ...}`` (what a browser can send after accept);
    `WalkRefused` (401) when none comes within `AUTH_TIMEOUT_S` or it is not one."""
    try:
        msg = await asyncio.wait_for(ws.receive(), AUTH_TIMEOUT_S)
    except TimeoutError as exc:
        raise WalkRefused(401, f"no token within {AUTH_TIMEOUT_S:g} s") from exc
    raw = msg.get("text") or msg.get("bytes")
    data = _decode(raw) if raw else None
    token = data.get("token") if isinstance(data, dict) else None
    if not isinstance(token, str) or not token:
        raise WalkRefused(
            401, 'missing token: send {"token": "<install token>"} first, or Authorization: Bearer'
        )
    return token


@router.websocket("/v1/walks/{walk_id}/live")
async def walk_live(ws: WebSocket, walk_id: str) -> None:
    """A walk's positions over one connection (see the module docstring)."""
    state: AppState = ws.state.api
    token = header_token(ws)
    try:
        if token is not None:
            district = await check_live_walk(state, token, walk_id)
            await ws.accept()
        else:
            await ws.accept()
            district = await check_live_walk(state, await first_message_token(ws), walk_id)
    except WalkRefused as exc:
        if token is not None:  # not accepted yet: the handshake answers 403
            await ws.close(_POLICY_VIOLATION, exc.reason)
        else:
            await _send(ws, {"error": exc.reason, "status": exc.status})
            await ws.close(_POLICY_VIOLATION, exc.reason[:120])
        return
    except DatabaseUnavailable:
        await ws.close(_TRY_AGAIN_LATER, "database unavailable, retry")
        return
    await _send(ws, {"walk_id": walk_id, "district": district, "status": "live"})
    seq = 0
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
        seq += 1
        raw = msg.get("text") or msg.get("bytes")
        answer, close = await _one(state, walk_id, district, seq, raw)
        await _send(ws, answer)
        if close:
            await ws.close(_NORMAL)
            return


async def _one(
    state: AppState, walk_id: str, district: str | None, seq: int, raw: str | bytes | None
) -> tuple[dict[str, Any], bool]:
    """The answer to one message, and whether the connection ends after it."""
    data = _decode(raw) if raw else None
    if not isinstance(data, dict):
        return {"seq": seq, "error": "not a JSON object (a position, or op end)", "status": 422}, False
    try:
        if data.get("op") == "end":
            ended = await run_in_threadpool(_finish, state, walk_id, district)
            return {"seq": seq, "walk_id": walk_id, "status": "ended", "already_ended": not ended}, True
        body = WalkPositionIn.model_validate(data)
        pos = admit_position(state, walk_id, body)
        if not await store_position(state, pos):
            return {"seq": seq, "error": f"walk {walk_id!r} has ended", "status": 409}, True
        state.metrics.walk_positions.inc()
        return {"seq": seq, "lamps": pos.lamps or ()}, False
    except ValidationError as exc:
        detail, _ = describe_errors(exc.errors())
        return {"seq": seq, "error": detail, "status": 422}, False
    except PositionRateLimited as exc:
        return {"seq": seq, "error": exc.detail, "status": 429, "retry_after": round(exc.wait_s, 3)}, False
    except HTTPException as exc:
        return {"seq": seq, "error": exc.detail, "status": exc.status_code}, False
    except ValueError as exc:  # a coordinate the gazetteer refuses: 422 over HTTP too
        return {"seq": seq, "error": str(exc), "status": 422}, False
    except (DatabaseUnavailable, PositionsBusy):  # a pool timeout is one too
        return {"seq": seq, "error": "database unavailable, retry", "status": 503, "retry_after": 1.0}, False
    except Exception:  # never a crash of the connection over one message
        log.exception("walk_live_message_failed", walk=walk_id, seq=seq)
        return {"seq": seq, "error": "internal error", "status": 500}, False


def _finish(state: AppState, walk_id: str, district: str | None) -> bool:
    with state.pool.connection() as conn:
        return finish_walk(conn, walk_id, district)
