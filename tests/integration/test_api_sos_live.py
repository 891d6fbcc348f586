"""The residents' SOS socket (``/v1/sos/{id}/live``) against a real database and a real uvicorn: each
operator action reaches the resident as it happens, without operator names; a reconnect with
``since`` gets exactly what was missed; only the alert's own resident gets in; the connection is
audited; a resident who falls behind is closed without holding up anyone else."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from api.hub import StreamHub
from api.metrics import ApiMetrics
from devkit.apiclient import JUNG, fast_config, login, seed, serve

pytestmark = pytest.mark.integration


@pytest.fixture
def base(db_url: str) -> Iterator[str]:
    seed(db_url, [("sl1", "11020", JUNG[0], JUNG[1] + 0.0001)])
    with serve(fast_config(db_url)) as url:
        yield url


def raise_sos(c: httpx.Client) -> tuple[str, str]:
    token = c.post("/v1/residents").json()["token"]
    r = c.post(
        "/v1/sos",
        json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 8.0},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert r.status_code == 202, r.text
    return token, str(r.json()["alert_id"])


def live(base: str, alert_id: str, token: str | None, since: int | str | None = None) -> ClientConnection:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    query = "" if since is None else f"?since={since}"
    url = base.replace("http://", "ws://") + f"/v1/sos/{alert_id}/live{query}"
    return connect(url, additional_headers=headers, open_timeout=10, close_timeout=2)


def recv(ws: ClientConnection) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(ws.recv(timeout=10))
    return message


def test_each_operator_action_reaches_the_resident_without_operator_names(base: str, db_url: str) -> None:
    with httpx.Client(base_url=base, timeout=10.0) as c:
        token, alert_id = raise_sos(c)
        op = login(c, "op-jung")
        with live(base, alert_id, token) as ws:
            first = recv(ws)
            assert first["type"] == "status" and first["replay"] is True
            assert first["status"]["status"] == "open" and not first["status"]["acknowledged"]
            assert [e["action"] for e in first["events"]] == ["created"]
            r = c.post(f"/v1/alerts/{alert_id}/acknowledge", json={"note": "kim here, calling"}, headers=op)
            assert r.status_code == 200, r.text
            ack = recv(ws)
            assert ack["replay"] is False and ack["status"]["acknowledged"] is True
            assert [e["action"] for e in ack["events"]] == ["acknowledged"]
            assert ack["event_id"] > first["event_id"]
            r = c.post(
                f"/v1/alerts/{alert_id}/dispatch", json={"unit": "Jung 112-3", "note": "op kim"}, headers=op
            )
            assert r.status_code == 200, r.text
            sent = recv(ws)
            assert sent["status"]["status"] == "dispatched" and sent["status"]["unit"] == "Jung 112-3"
            assert sent["events"][-1]["action"] == "dispatched" and sent["events"][-1]["unit"] == "Jung 112-3"
            r = c.post(f"/v1/alerts/{alert_id}/resolve", json={"outcome": "safe, by kim"}, headers=op)
            assert r.status_code == 200, r.text
            done = recv(ws)
            assert done["status"]["resolved"] is True and done["events"][-1]["action"] == "resolved"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        every = json.dumps([first, ack, sent, done])
        for private in ("op-jung", "operator:", "kim", "note", "actor", "lat", "outcome"):
            assert private not in every, private
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT actor, subject_kind, subject_id, details FROM audit_log WHERE action = 'sos_live'"
        ).fetchall()
    assert len(rows) == 1
    actor, kind, subject, details = rows[0]
    assert (actor, kind) == ("resident", "resident") and subject.startswith("rp_")
    assert details["alert_id"] == alert_id and details["replayed"] == 1


def test_a_reconnect_with_since_gets_what_it_missed(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10.0) as c:
        token, alert_id = raise_sos(c)
        op = login(c, "op-city")
        with live(base, alert_id, token) as ws:
            seen = recv(ws)["event_id"]
        assert c.post(f"/v1/alerts/{alert_id}/acknowledge", headers=op).status_code == 200
        assert c.post(f"/v1/alerts/{alert_id}/dispatch", json={"unit": "U7"}, headers=op).status_code == 200
        with live(base, alert_id, token, since=seen) as ws:
            caught = recv(ws)
            assert caught["replay"] is True
            assert [e["action"] for e in caught["events"]] == ["acknowledged", "dispatched"]
            assert caught["status"]["dispatched"] is True
            # Up to date: reconnecting with the newest id replays nothing.
        with live(base, alert_id, token, since=caught["event_id"]) as ws:
            assert recv(ws)["events"] == []
        # The resident cancels: the socket tells it and closes.
        with live(base, alert_id, token, since=caught["event_id"]) as ws:
            recv(ws)
            r = c.post(f"/v1/sos/{alert_id}/cancel", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, r.text
            cancelled = recv(ws)
            assert cancelled["status"]["cancelled"] is True
            assert cancelled["events"] == [
                {
                    "event_id": cancelled["event_id"],
                    "action": "cancelled",
                    "at": cancelled["events"][0]["at"],
                    "reason": "resident_cancelled",
                }
            ]


def test_a_browser_sends_its_token_first_and_strangers_get_nothing(base: str) -> None:
    with httpx.Client(base_url=base, timeout=10.0) as c:
        token, alert_id = raise_sos(c)
        other, _ = raise_sos(c)
        # The browser's way: the token as the first message.
        with live(base, alert_id, None) as ws:
            ws.send(json.dumps({"token": token}))
            assert recv(ws)["status"]["alert_id"] == alert_id
            ws.send("ping")
            assert recv(ws) == {"type": "pong"}
        # Another resident's token: 404 as GET /v1/sos/{id} answers, then closed.
        with live(base, alert_id, None) as ws:
            ws.send(json.dumps({"token": other}))
            assert recv(ws) == {"error": f"unknown alert {alert_id!r} for this resident", "status": 404}
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)
        with live(base, alert_id, None) as ws:
            ws.send(json.dumps({"token": "nope"}))
            assert recv(ws)["status"] == 401
        # With the header: refused at the handshake.
        with pytest.raises(InvalidStatus):
            live(base, alert_id, other)
        with pytest.raises(InvalidStatus):
            live(base, "sos-unknown", token)
        # Bad input: a clear 422, never a crash.
        with live(base, alert_id, token, since="yesterday") as ws:
            assert recv(ws)["status"] == 422
        with live(base, alert_id, None) as ws:
            ws.send("not json")
            assert recv(ws)["status"] == 401


def test_a_watcher_that_falls_behind_is_dropped_and_never_blocks_the_others() -> None:
    async def scenario() -> None:
        hub = StreamHub("postgresql://unused", ApiMetrics(), queue_size=2)
        slow, quick = hub.watch("sos-a"), hub.watch("sos-a")
        other = hub.watch("sos-b")
        for i in range(3):
            hub._offer_watcher(slow, {"type": "sos", "row": {"n": i}})
            hub._offer_watcher(quick, {"type": "sos", "row": {"n": i}})
            await quick.queue.get()
        assert slow.queue.get_nowait() == {"type": "overflow"}
        assert hub._watchers["sos-a"] == {quick}
        assert other.queue.empty() and hub._watchers["sos-b"] == {other}
        hub.unwatch(quick)
        hub.unwatch(quick)  # again: harmless
        hub.unwatch(other)
        assert hub._watchers == {}

    asyncio.run(scenario())
