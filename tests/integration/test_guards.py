"""Guards who answer, against real PostgreSQL, the MQTT broker, a controller and the API in uvicorn.

The roster is provisioned from a CSV through `streetlight.guardroster.import_guards` (what
``streetlight provision --guards`` runs). The controller's clock for the guards' shifts is set by
the test (`ControllerConfig.clock`), so "Monday 22:00 in Seoul" is an instant the test chooses;
everything else (the SOS, the centre's publication, the notifications, the answers, the
escalation) runs on the wall clock through the real services.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from httpx import Client

from alerts import EscalationPolicy
from broker import parse_mqtt_url
from controller import ControllerConfig
from devkit.apiclient import PASSWORD, TEST_PHONE_KEYS, client, fast_config, login, resident, seed
from devkit.localservices import MqttService
from geo import Gazetteer, load_safety_zones
from store.phones import read_guard_phone
from streetlight.guardroster import import_guards
from tests.helpers import controller_in_thread
from tests.integration.test_controller_service import Centres

ZONES = load_safety_zones()
ZONE_A, ZONE_B = ZONES.guard_zones[0], ZONES.guard_zones[1]
MONDAY_22 = dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.UTC)  # Monday 22:00 in Seoul
MONDAY_15 = dt.datetime(2026, 12, 7, 6, 0, tzinfo=dt.UTC)  # Monday 15:00 in Seoul
SUNDAY_22 = dt.datetime(2026, 12, 6, 13, 0, tzinfo=dt.UTC)  # Sunday 22:00: nobody's day
GUARD_PHONE = "010-5678-1234"


def _inside(dong_code: str) -> tuple[float, float]:
    p = Gazetteer.load().dong(dong_code).polygon_lonlat.representative_point()
    return float(p.y), float(p.x)


A_LAT, A_LON = _inside(ZONE_A.dong_code)


def wait_for(predicate: Callable[[], Any], what: str, timeout_s: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Services:
    api: Client
    db_url: str
    centre: Centres
    clock: list[dt.datetime]
    police: list[bytes]

    def guard(self, username: str) -> dict[str, str]:
        return login(self.api, username)

    def sos(self) -> str:
        me = resident(self.api)
        body = {"lat": A_LAT, "lon": A_LON, "accuracy_m": 5.0}
        r = self.api.post("/v1/sos", json=body, headers={**me, "Idempotency-Key": os.urandom(4).hex()})
        assert r.status_code == 202, r.text
        return str(r.json()["alert_id"])

    def sent_to(self, alert_id: str) -> set[str]:
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute("SELECT username FROM guard_alerts WHERE alert_id = %s", (alert_id,))
            return {str(r[0]) for r in rows.fetchall()}

    def timeline(self, alert_id: str) -> list[dict[str, Any]]:
        r = self.api.get(f"/v1/alerts/{alert_id}", headers=login(self.api, "op-city"))
        assert r.status_code == 200, r.text
        return list(r.json()["events"])


ROSTER = (
    "zone,username,name,phone,weekdays,starts,ends,password\n"
    f"{ZONE_A.dong_code},g-a1,김,{GUARD_PHONE},mon-fri,21:00,02:30,{PASSWORD}\n"
    f"{ZONE_A.dong_code},g-a2,이,,mon-fri,,,{PASSWORD}\n"
    f"{ZONE_A.dong_code},g-a3,박,,sat,21:00,02:30,{PASSWORD}\n"
    f"{ZONE_B.dong_code},g-b1,최,,mon-fri,21:00,02:30,{PASSWORD}\n"
)


@pytest.fixture
def services(db_url: str, mqtt_service: MqttService, tmp_path: Path) -> Iterator[Services]:
    seed(db_url)
    roster = tmp_path / "guards.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    printed = import_guards(roster, db_url, ZONES, TEST_PHONE_KEYS)
    assert printed[0].startswith("guards: 4 guards in 2 zones")
    police: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            police.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    clock = [MONDAY_22]
    params = parse_mqtt_url(mqtt_service.url)
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=(ZONE_A.district_code, ZONE_B.district_code),
        owner=f"guards-{os.urandom(3).hex()}",
        lease_ttl_s=1.5,
        tick_s=0.05,
        escalation=EscalationPolicy(renotify_after_s=600.0, police_after_s=900.0, guard_ack_after_s=1.5),
        police_webhook_url=f"http://127.0.0.1:{server.server_address[1]}/police",
        clock=lambda: clock[0],
    )
    centre = Centres(params, [ZONE_A.district_code, "11000"])
    try:
        with controller_in_thread(cfg), client(fast_config(db_url)) as api:
            yield Services(api, db_url, centre, clock, police)
    finally:
        centre.close()
        server.shutdown()
        server.server_close()


def test_an_sos_in_a_zone_at_22_on_a_duty_day_reaches_the_guards_on_duty_after_the_centre_and_they_answer(
    services: Services,
) -> None:
    s = services
    a1, a2, a3, b1 = (s.guard(u) for u in ("g-a1", "g-a2", "g-a3", "g-b1"))
    alert_id = s.sos()
    mine = wait_for(lambda: s.api.get("/v1/guards/me/alerts", headers=a1).json()["alerts"], "g-a1's alert")
    assert s.sent_to(alert_id) == {"g-a1", "g-a2"}  # exactly the zone's guards on duty
    (item,) = mine
    assert item["alert_id"] == alert_id and item["status"] == "open" and item["kind"] == "sos"
    assert item["place"]["dong_code"] == ZONE_A.dong_code
    assert abs(item["place"]["lat"] - A_LAT) < 1e-6 and item["acknowledged_at"] is None
    assert [a["alert_id"] for a in s.api.get("/v1/guards/me/alerts", headers=a2).json()["alerts"]] == [
        alert_id
    ]
    for other in (a3, b1):  # off today; another zone
        assert s.api.get("/v1/guards/me/alerts", headers=other).json()["alerts"] == []
    # What a guard sees: the place and the status, never the resident nor a phone.
    text = json.dumps(mine)
    assert "resident" not in text and "source_id" not in text and "phone" not in text

    # The centre first: its first publication of the alert predates the guards' notification.
    first_topic, first = s.centre.for_alert(alert_id)[0]
    assert first_topic == f"cc/v1/{ZONE_A.district_code}/alerts"
    assert all(e.get("details", {}).get("escalation") != "guards" for e in first["timeline"])
    notified = dt.datetime.fromisoformat(item["notified_at"])
    assert first["ts"] <= notified.timestamp() * 1000
    actions = [e["action"] for e in s.timeline(alert_id)]
    assert actions.index("created") < actions.index("escalated")

    # Answers: ack, then arrival, into the timeline as guard actions; others get 404.
    r = s.api.post(f"/v1/guards/alerts/{alert_id}/ack", headers=a1)
    assert r.status_code == 200 and r.json()["acknowledged_at"] is not None, r.text
    assert s.api.post(f"/v1/guards/alerts/{alert_id}/ack", headers=a1).status_code == 200  # again: same
    r = s.api.post(f"/v1/guards/alerts/{alert_id}/arrived", headers=a1)
    assert r.status_code == 200 and r.json()["arrived_at"] is not None, r.text
    for other in (b1, a3):
        for step in ("ack", "arrived"):
            r = s.api.post(f"/v1/guards/alerts/{alert_id}/{step}", headers=other)
            assert r.status_code == 404 and "detail" in r.json(), r.text
    assert s.api.post("/v1/guards/alerts/SOS-nope/ack", headers=a1).status_code == 404
    guard_events = [
        (e["action"], e["actor"]) for e in s.timeline(alert_id) if e["action"].startswith("guard_")
    ]
    assert guard_events == [("guard_acknowledged", "guard:g-a1"), ("guard_arrived", "guard:g-a1")]
    # The centre sees the guard's answers too (each change is published).
    wait_for(
        lambda: any(
            any(e["action"] == "guard_arrived" for e in m["timeline"])
            for _, m in s.centre.for_alert(alert_id)
        ),
        "the arrival at the centre",
    )
    # A guard acknowledged: the guards' step of the escalation never comes.
    time.sleep(2.0)
    assert "guards_unanswered" not in json.dumps(s.timeline(alert_id))

    # A guard's account is limited to its endpoints; operators do not get the guards' ones.
    assert s.api.get("/v1/alerts", headers=a1).status_code == 403
    assert s.api.get(f"/v1/alerts/{alert_id}", headers=a1).status_code == 403
    city = login(s.api, "op-city")
    assert s.api.get("/v1/guards/me/alerts", headers=city).status_code == 403
    assert s.api.post(f"/v1/guards/alerts/{alert_id}/ack", headers=city).status_code == 403
    assert s.api.get("/v1/guards/me/alerts").status_code == 401
    me = s.api.get("/v1/guards/me", headers=a1).json()
    assert me["zone_code"] == ZONE_A.dong_code and me["shift"]["weekdays"] == "mon,tue,wed,thu,fri"

    # The roster for the centres: zones, shifts, a phone on file but never its number.
    roster = s.api.get("/v1/guards/roster", headers=city)
    assert roster.status_code == 200, roster.text
    zones = {z["zone_code"]: z for z in roster.json()["zones"]}
    assert set(zones) == {ZONE_A.dong_code, ZONE_B.dong_code}
    by_name = {g["username"]: g for g in zones[ZONE_A.dong_code]["guards"]}
    assert by_name["g-a1"]["has_phone"] and not by_name["g-a2"]["has_phone"]
    assert by_name["g-a1"]["shift"] == {"starts": "21:00", "ends": "02:30", "weekdays": "mon,tue,wed,thu,fri"}
    assert "5678" not in roster.text
    gangnam = login(s.api, "op-gangnam")  # a district operator sees its district's zones only
    assert s.api.get("/v1/guards/roster", headers=gangnam).json()["zones"] == []
    assert s.api.get("/v1/guards/roster", headers=login(s.api, "op-maint")).status_code == 403
    # The guard's number is stored encrypted with the residents' keyring.
    with psycopg.connect(s.db_url) as conn:
        raw = conn.execute("SELECT encode(ciphertext, 'hex') FROM guard_phones").fetchone()
        assert raw is not None and "5678" not in raw[0]
        assert read_guard_phone(conn, TEST_PHONE_KEYS, "g-a1") == "+821056781234"
    # Logout works for a guard, and ends its token.
    assert s.api.post("/v1/auth/logout", headers=a2).status_code == 204
    assert s.api.get("/v1/guards/me/alerts", headers=a2).status_code == 401


def test_outside_the_shift_or_on_an_off_day_nobody_is_notified(services: Services) -> None:
    s = services
    a1 = s.guard("g-a1")
    for instant in (MONDAY_15, SUNDAY_22):
        s.clock[0] = instant
        alert_id = s.sos()
        wait_for(lambda: s.centre.for_alert(alert_id), "the centre's publication")  # noqa: B023
        time.sleep(1.0)  # the controller has acted on it long since
        assert s.sent_to(alert_id) == set()
        assert "guards" not in json.dumps(s.timeline(alert_id))
    assert s.api.get("/v1/guards/me/alerts", headers=a1).json()["alerts"] == []


def test_an_sos_no_guard_acknowledges_in_time_goes_up_the_chain(services: Services) -> None:
    s = services
    alert_id = s.sos()
    wait_for(lambda: s.sent_to(alert_id) == {"g-a1", "g-a2"}, "the guards' notification")
    city = f"cc/v1/{'11000'}/alerts"
    assert s.centre.for_alert(alert_id, city) == []  # the city centre is not told yet
    step = wait_for(
        lambda: [
            e
            for e in s.timeline(alert_id)
            if e["action"] == "escalated" and e["details"].get("escalation") == "guards_unanswered"
        ],
        "the guards' escalation step",
    )
    assert step[0]["details"]["targets"] == "11000 police"
    wait_for(lambda: s.centre.for_alert(alert_id, city), "the city centre told")
    wait_for(lambda: s.police, "the police webhook (CAP)")
    assert b"<alert" in s.police[0] and alert_id.encode() in s.police[0]
    # Too late to matter for the chain, a guard's answer is still recorded.
    r = s.api.post(f"/v1/guards/alerts/{alert_id}/ack", headers=s.guard("g-a2"))
    assert r.status_code == 200, r.text
