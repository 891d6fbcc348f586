"""The walkers' WebSocket (``/v1/walks/{id}/live``) against a real database and a real uvicorn."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from devkit.apiclient import BUSAN, JUNG, fast_config, seed, serve

pytestmark = pytest.mark.integration

LAMPS = [
    ("jl1", "11020", JUNG[0], JUNG[1] + 0.0001),  # ~9 m east
    ("jl2", "11020", JUNG[0], JUNG[1] + 0.0005),  # ~44 m east: ahead of an eastbound walker
]


@pytest.fixture
def base(db_url: str) -> Iterator[str]:
    seed(db_url, LAMPS)
    with serve(fast_config(db_url)) as url:
        yield url


def pos(lat: float = JUNG[0], lon: float = JUNG[1], **extra: object) -> dict[str, object]:
    return {"lat": lat, "lon": lon, "accuracy_m": 5.0, **extra}


def walker(base: str) -> tuple[str, str]:
    """A fresh resident's token and an active walk of theirs."""
    with httpx.Client(base_url=base, timeout=10.0) as c:
        token = c.post("/v1/residents").json()["token"]
        r = c.post("/v1/walks", json=pos(), headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        return token, str(r.json()["walk_id"])


def live(base: str, walk_id: str, token: str | None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    url = base.replace("http://", "ws://") + f"/v1/walks/{walk_id}/live"
    return connect(url, additional_headers=headers, open_timeout=10, close_timeout=2)


def ask(ws: ClientConnection, message: Any) -> dict[str, Any]:
    ws.send(message if isinstance(message, str) else json.dumps(message))
    answer: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return answer


def test_a_walker_streams_positions_and_gets_lamps_stored_and_notified(base: str, db_url: str) -> None:
    token, walk_id = walker(base)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN sl_walk")
        with live(base, walk_id, token) as ws:
            hello = json.loads(ws.recv(timeout=10))
            assert hello == {"walk_id": walk_id, "district": "11020", "status": "live"}
            first = ask(ws, pos(heading_deg=90.0, speed_mps=1.4, ts_ms=1))
            assert first["seq"] == 1 and "jl1" in first["lamps"]
            time.sleep(0.5)
            second = ask(ws, pos(lon=JUNG[1] + 0.00005, heading_deg=90.0))
            assert second["seq"] == 2 and "jl1" in second["lamps"]
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=5.0, stop_after=2)]
    # Each position in its batch's wake-up: [walk_id, ts_ms, lat, lon, accuracy, heading, speed, district]
    assert [n["op"] for n in notes] == ["positions", "positions"]
    entry = notes[0]["positions"][0]
    assert entry[0] == walk_id and entry[5] == 90.0 and entry[6] == 1.4
    assert entry[7] == "11020" and entry[8] == first["lamps"]  # what the walker was told
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT lon, heading_deg, ts FROM walk_positions WHERE walk_id = %s ORDER BY id", (walk_id,)
        ).fetchall()
    assert len(rows) == 3  # the start (HTTP) and two over the socket
    assert rows[1][1] == 90.0 and rows[2][0] == pytest.approx(JUNG[1] + 0.00005)
    # The wake-up names its row's exact instant: the controller's verdict finds the row by it.
    assert rows[1][2] == datetime.fromtimestamp(entry[1] / 1000, UTC)


def test_token_as_first_message_and_op_end_ends_the_walk(base: str, db_url: str) -> None:
    token, walk_id = walker(base)
    with live(base, walk_id, None) as ws:
        assert ask(ws, {"token": token})["status"] == "live"
        assert ask(ws, pos())["seq"] == 1
        ended = ask(ws, {"op": "end"})
        assert ended == {"seq": 2, "walk_id": walk_id, "status": "ended", "already_ended": False}
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT status FROM walks WHERE walk_id = %s", (walk_id,)).fetchone()
    assert row == ("ended",)


def test_refused_at_connect(base: str) -> None:
    token, walk_id = walker(base)
    other_token, _ = walker(base)
    for bad in ("not-a-token", other_token):
        with pytest.raises(InvalidStatus) as refused:
            live(base, walk_id, bad)
        assert refused.value.response.status_code == 403
    with pytest.raises(InvalidStatus):
        live(base, "walk-unknown", token)
    # The same refusal when the token comes as the first message: an error, then closed (1008).
    with live(base, walk_id, None) as ws:
        answer = ask(ws, {"token": other_token})
        assert answer["status"] == 403 and "another resident" in answer["error"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    with httpx.Client(base_url=base) as c:
        r = c.post(f"/v1/walks/{walk_id}/end", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    with pytest.raises(InvalidStatus):
        live(base, walk_id, token)


def test_bad_positions_name_the_field_and_the_connection_stays_usable(base: str) -> None:
    token, walk_id = walker(base)
    with live(base, walk_id, token) as ws:
        ws.recv(timeout=10)
        nan = ask(ws, '{"lat": NaN, "lon": 126.994, "accuracy_m": 5}')
        assert nan["status"] == 422 and nan["error"].startswith("lat:")
        far = ask(ws, pos(lat=91.0))
        assert far["status"] == 422 and "lat: Input should be less than or equal to 90" in far["error"]
        heading = ask(ws, pos(heading_deg=400.0))
        assert "heading_deg" in heading["error"]
        missing = ask(ws, {"lat": JUNG[0]})
        assert "lon: Field required" in missing["error"] and "accuracy_m" in missing["error"]
        assert ask(ws, "not json")["status"] == 422
        assert ask(ws, "[1, 2]")["status"] == 422
        time.sleep(1.1)  # the bad bodies above never reached the rate limit; the next two do
        busan = ask(ws, pos(*BUSAN))
        assert busan["status"] == 422 and "outside the service area (Seoul)" in busan["error"]
        ok = ask(ws, pos())
        assert ok["seq"] == 8 and "lamps" in ok


def test_rate_limit_answers_retry_after_and_keeps_the_connection(base: str) -> None:
    token, walk_id = walker(base)
    with live(base, walk_id, token) as ws:
        ws.recv(timeout=10)
        answers = [ask(ws, pos()) for _ in range(3)]
        assert "lamps" in answers[0] and "lamps" in answers[1]
        assert answers[2]["status"] == 429 and 0 < answers[2]["retry_after"] <= 1.0
        time.sleep(answers[2]["retry_after"] + 0.05)
        assert "lamps" in ask(ws, pos())


def test_a_walk_ended_over_http_answers_its_next_position_with_409(base: str) -> None:
    token, walk_id = walker(base)
    with live(base, walk_id, token) as ws:
        ws.recv(timeout=10)
        with httpx.Client(base_url=base) as c:
            c.post(f"/v1/walks/{walk_id}/end", headers={"Authorization": f"Bearer {token}"})
        answer = ask(ws, pos())
        assert answer["status"] == 409
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
