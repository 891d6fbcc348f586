"""The operators' API and stream against a real database: login, district isolation, actions with
their audit trail, privacy log of track reads, CAP, lamps, overrides, the WebSocket."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from api.accounts import ensure_demo_operators
from api.security import password_hasher
from devkit.apiclient import GANGNAM, JUNG, PASSWORD, fast_config, login, resident, seed, serve

pytestmark = pytest.mark.integration

LAMPS = [("oj1", "11020", JUNG[0], JUNG[1] + 0.0001), ("og1", "11230", GANGNAM[0], GANGNAM[1] + 0.0001)]


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    seed(db_url, LAMPS)
    with serve(fast_config(db_url)) as base:
        yield base


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10.0) as c:
        yield c


def raise_sos(c: httpx.Client, at: tuple[float, float]) -> str:
    r = c.post("/v1/sos", json={"lat": at[0], "lon": at[1], "accuracy_m": 5}, headers=resident(c))
    assert r.status_code == 202, r.text
    return str(r.json()["alert_id"])


def test_login_refuses_wrong_passwords_and_limits_guessing(api: httpx.Client) -> None:
    r = api.post("/v1/auth/login", json={"username": "op-jung", "password": "wrong"})
    assert r.status_code == 401 and "wrong username or password" in r.json()["detail"]
    ok = api.post("/v1/auth/login", json={"username": "op-jung", "password": PASSWORD}).json()
    assert ok["role"] == "district" and ok["district"] == "11020" and ok["expires_at"]
    codes = [
        api.post("/v1/auth/login", json={"username": "op-gangnam", "password": "x"}).status_code
        for _ in range(11)
    ]
    assert codes[-1] == 429
    assert api.get("/v1/alerts").status_code == 401
    assert api.get("/v1/alerts", headers={"Authorization": "Bearer v1.forged.sig"}).status_code == 401


def test_a_district_operator_neither_sees_nor_acts_on_another_districts_alert(api: httpx.Client) -> None:
    jung, gangnam = raise_sos(api, JUNG), raise_sos(api, GANGNAM)
    op = login(api, "op-jung")
    listed = {a["id"] for a in api.get("/v1/alerts", headers=op).json()["alerts"]}
    assert jung in listed and gangnam not in listed
    for method, path in [
        ("GET", f"/v1/alerts/{gangnam}"),
        ("GET", f"/v1/alerts/{gangnam}/cap"),
        ("POST", f"/v1/alerts/{gangnam}/acknowledge"),
        ("POST", f"/v1/alerts/{gangnam}/dispatch"),
        ("POST", f"/v1/alerts/{gangnam}/resolve"),
        ("POST", f"/v1/alerts/{gangnam}/cancel"),
    ]:
        r = api.request(method, path, headers=op)
        assert r.status_code == 404, (method, path, r.text)
    city = {a["id"] for a in api.get("/v1/alerts", headers=login(api, "op-city")).json()["alerts"]}
    assert {jung, gangnam} <= city
    assert api.get("/v1/alerts", headers=login(api, "op-maint")).json()["alerts"] == []


def test_actions_follow_the_lifecycle_and_are_audited_with_the_operator(
    api: httpx.Client, db_url: str
) -> None:
    alert_id = raise_sos(api, JUNG)
    op = login(api, "op-jung")
    assert api.post(f"/v1/alerts/{alert_id}/resolve", headers=op).status_code == 409
    r = api.post(f"/v1/alerts/{alert_id}/acknowledge", json={"note": "on it"}, headers=op)
    assert r.status_code == 200 and r.json()["state"] == "acknowledged"
    r = api.post(
        f"/v1/alerts/{alert_id}/dispatch", json={"unit": "중부서 112-3", "note": "2 officers"}, headers=op
    )
    assert r.json()["state"] == "dispatched"
    r = api.post(f"/v1/alerts/{alert_id}/resolve", json={"outcome": "resident safe"}, headers=op)
    assert r.json()["state"] == "resolved" and r.json()["allowed_actions"] == []
    r = api.post(f"/v1/alerts/{alert_id}/acknowledge", headers=op)
    assert r.status_code == 409 and "resolved" in r.json()["detail"]
    with psycopg.connect(db_url) as conn:
        events = conn.execute(
            "SELECT action, actor FROM alert_events WHERE alert_id = %s ORDER BY id", (alert_id,)
        ).fetchall()
        audit = conn.execute(
            "SELECT action FROM audit_log WHERE actor = 'operator:op-jung' "
            "AND details->>'alert_id' = %s ORDER BY id",
            (alert_id,),
        ).fetchall()
    assert events[1:] == [
        ("acknowledged", "operator:op-jung"),
        ("dispatched", "operator:op-jung"),
        ("resolved", "operator:op-jung"),
    ]
    assert [a[0] for a in audit] == ["alert.acknowledge", "alert.dispatch", "alert.resolve"]


def test_reading_an_sos_track_is_logged_for_privacy(api: httpx.Client, db_url: str) -> None:
    alert_id = raise_sos(api, JUNG)
    detail = api.get(f"/v1/alerts/{alert_id}", headers=login(api, "op-jung")).json()
    assert len(detail["track"]) == 1 and detail["alert"]["place"]["district_code"] == "11020"
    assert "Jung-gu" in detail["alert"]["place_text_en"] and detail["allowed_actions"][0] == "acknowledge"
    admin = login(api, "op-admin")
    entries = api.get("/v1/audit", headers=admin).json()["entries"]
    reads = [e for e in entries if e["action"] == "read_track"]
    assert reads and reads[0]["actor"] == "operator:op-jung" and reads[0]["subject_kind"] == "resident"
    assert reads[0]["details"]["alert_id"] == alert_id
    assert api.get("/v1/audit", headers=login(api, "op-jung")).status_code == 403


def test_cap_of_an_alert(api: httpx.Client) -> None:
    alert_id = raise_sos(api, JUNG)
    r = api.get(f"/v1/alerts/{alert_id}/cap", headers=login(api, "op-jung"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/cap+xml")
    assert "urn:oasis:names:tc:emergency:cap:1.2" in r.text and alert_id in r.text


def test_lamps_are_geojson_of_the_operators_districts_and_ngsi_ld(api: httpx.Client) -> None:
    op = login(api, "op-jung")
    lamps = api.get("/v1/lamps", headers=op).json()
    assert [f["id"] for f in lamps["features"]] == ["oj1"]
    assert lamps["features"][0]["properties"]["state"] == "offline"
    assert api.get("/v1/lamps?district=11230", headers=op).status_code == 404
    assert api.get("/v1/lamps/og1", headers=op).status_code == 404
    detail = api.get("/v1/lamps/oj1", headers=op).json()
    assert detail["lamp"]["device_id"] == "oj1" and detail["hours"] == []
    ngsi = api.get("/v1/lamps.ngsi-ld", headers=login(api, "op-city")).json()
    assert {e["id"] for e in ngsi} == {"urn:ngsi-ld:Streetlight:oj1", "urn:ngsi-ld:Streetlight:og1"}
    assert ngsi[0]["type"] == "Streetlight" and ngsi[0]["location"]["value"]["type"] == "Point"
    areas = api.get("/v1/districts").json()
    assert len(areas["features"]) == 25
    dongs = api.get("/v1/districts?level=dong&district=11020").json()
    assert dongs["features"] and all(f["properties"]["district_code"] == "11020" for f in dongs["features"])


def test_a_manual_override_wakes_the_controller_and_needs_maintenance(api: httpx.Client, db_url: str) -> None:
    body = {"level": 100, "duration_s": 600}
    assert api.post("/v1/lamps/oj1/override", json=body, headers=login(api, "op-jung")).status_code == 403
    bad = api.post(
        "/v1/lamps/oj1/override", json={"level": 150, "duration_s": 5}, headers=login(api, "op-maint")
    )
    assert bad.status_code == 422 and "level" in bad.json()["detail"]
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN sl_lamp")
        r = api.post("/v1/lamps/oj1/override", json=body, headers=login(api, "op-maint"))
        assert r.status_code == 202
        notes = list(listener.notifies(timeout=2.0, stop_after=1))
    note = json.loads(notes[0].payload)
    assert note == {
        "device_id": "oj1",
        "district": "11020",
        "level": 100,
        "ttl_s": 600,
        "source": "operator:op-maint",
        "action": "set_level",
        "cmd_id": r.json()["cmd_id"],
    }


def _ws_url(server: str) -> str:
    return server.replace("http://", "ws://") + "/v1/stream"


def test_the_stream_refuses_bad_tokens_before_accepting(server: str) -> None:
    for headers in ({}, {"Authorization": "Bearer v1.nope.nope"}):
        with pytest.raises(InvalidStatus) as caught:
            connect(_ws_url(server), additional_headers=headers, open_timeout=5)
        assert caught.value.response.status_code == 403


def test_the_stream_pushes_only_the_operators_districts_and_catches_up(
    server: str, api: httpx.Client
) -> None:
    token = login(api, "op-jung")["Authorization"].split()[1]
    before = raise_sos(api, JUNG)
    with connect(_ws_url(server), subprotocols=["streetlight.v1", f"bearer.{token}"], open_timeout=5) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "streetlight.v1"
        hello = json.loads(ws.recv(timeout=5))
        assert hello["type"] == "hello" and hello["districts"] == ["11020"]
        replay = json.loads(ws.recv(timeout=5))
        assert replay["replay"] and replay["alert"]["id"] == before
        raise_sos(api, GANGNAM)
        live = raise_sos(api, JUNG)
        pushed = json.loads(ws.recv(timeout=5))
        while pushed["alert"]["id"] == before:  # its own notification may still be on its way: a duplicate
            pushed = json.loads(ws.recv(timeout=5))
        assert pushed["alert"]["id"] == live and pushed["alert"]["districts"] == ["11020"]
        last_event_id = pushed["event_id"]
    op = login(api, "op-jung")
    api.post(f"/v1/alerts/{before}/acknowledge", headers=op)
    api.post(f"/v1/alerts/{before}/resolve", headers=op)
    url = f"{_ws_url(server)}?last_event_id={last_event_id}"
    with connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=5) as ws:
        json.loads(ws.recv(timeout=5))
        got = {
            m["alert"]["id"]: m["alert"]["state"] for m in (json.loads(ws.recv(timeout=5)) for _ in range(2))
        }
    assert got == {before: "resolved", live: "open"}


def test_each_live_sos_message_is_audited_under_the_residents_pseudonym(
    server: str, api: httpx.Client, db_url: str
) -> None:
    token = login(api, "op-jung")["Authorization"].split()[1]
    with connect(_ws_url(server), subprotocols=["streetlight.v1", f"bearer.{token}"], open_timeout=5) as ws:  # type: ignore[list-item]
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        live = raise_sos(api, JUNG)
        pushed = json.loads(ws.recv(timeout=5))
        assert pushed["alert"]["id"] == live and pushed["alert"]["place"]["lat"] == JUNG[0]
        assert not any(k.startswith("_") for k in pushed)  # the resident's id is never sent
    with psycopg.connect(db_url) as conn:
        rid = conn.execute("SELECT resident_id FROM alerts WHERE alert_id = %s", (live,)).fetchone()
        rows = conn.execute(
            "SELECT actor, subject_kind, subject_id, details->>'alert_id' FROM audit_log "
            "WHERE action = 'stream_alert'"
        ).fetchall()
    assert rid is not None and rows and all(r[0] == "operator:op-jung" for r in rows)
    assert {(r[1], r[3]) for r in rows} == {("resident", live)}
    assert all(r[2].startswith("rp_") and r[2] != rid[0] for r in rows)


def test_demo_operators_are_created_once_and_can_log_in(db_url: str) -> None:
    seed(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        demo = ensure_demo_operators(conn, hasher=password_hasher(1, 8))
        again = ensure_demo_operators(conn, hasher=password_hasher(1, 8))
        count = conn.execute("SELECT count(*) FROM operators").fetchone()
    assert demo == again and len(demo) == 28 and count == (28 + 5,)
    names = {d.username: d for d in demo}
    assert names["jung-gu"].district == "11020" and names["city"].role == "city"
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base) as c:
        r = c.post("/v1/auth/login", json={"username": "jung-gu", "password": demo[0].password})
        assert r.status_code == 200 and r.json()["district"] == "11020"


def test_a_lamp_stops_showing_blinking_once_the_controller_clears_that_blink(
    api: httpx.Client, db_url: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from store import CommandRecord, StateUpdate, insert_commands, set_connectivity, update_device_states

    now = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        set_connectivity(conn, "oj1", online=True, bdseq=1, at=now)
        update_device_states(conn, [StateUpdate("oj1", now, 1, 80, ())])
        blink = CommandRecord("c1", "oj1", "blink", "sos", "sos-1", 120, now - timedelta(seconds=5), 100)
        insert_commands(conn, [blink])

    def state() -> str:
        lamps = api.get("/v1/lamps", headers=login(api, "op-jung")).json()
        return str(lamps["features"][0]["properties"]["state"])

    assert state() == "blinking"
    with psycopg.connect(db_url, autocommit=True) as conn:
        insert_commands(conn, [CommandRecord("c2", "oj1", "clear", "sos", "sos-1", 120, now, None)])
    assert state() == "online"  # the blink's expiry is still two minutes away


def test_a_lamps_24_hour_chart_comes_from_the_hourly_aggregates_on_both_storage_paths(
    storage_url: str,
) -> None:
    from store import write_telemetry
    from tests.helpers import run_storage_jobs

    seed(storage_url, LAMPS)
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = [
        (int((hour - timedelta(hours=h, minutes=-m)).timestamp() * 1000), "oj1", 1, h * 100 + m, 80, 30.0,
         220.0, 0.14, 20.0, 2.0, [], None, None, None, None)
        for h in range(1, 30) for m in range(0, 60, 10)
    ]  # fmt: skip
    with psycopg.connect(storage_url, autocommit=True) as conn:
        write_telemetry(conn, rows)
        run_storage_jobs(conn)
    with serve(fast_config(storage_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        r = c.get("/v1/lamps/oj1", headers=login(c, "op-city"))
    assert r.status_code == 200, r.text
    hours = r.json()["hours"]
    assert len(hours) in (23, 24) and all(h["samples"] == 6 for h in hours)  # the closed hours of the day
    assert hours[0]["energy_wh"] == pytest.approx(3.0)  # six 60-s samples at 30 W
