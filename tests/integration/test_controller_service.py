"""The controller against a real broker and database, with simulated lamps that ack like firmware."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from alerts import AlertKind, EscalationPolicy, Place, Position, acknowledge, new_alert, resolve
from broker import ConnectionParams, paho_client, parse_mqtt_url
from controller import ControllerConfig, HoldPolicy
from devkit.bench.controller import LampFleet, LampSpec
from devkit.localservices import MqttService, start_mosquitto
from geo import LampIndex, lamps_for_walker, load_safety_zones
from store import command_status_counts, migrate, upsert_device
from store.alerts import change_alert, load_alert, save_alert
from store.notes import WALK_CHANNEL, WalkMoved, notify
from store.walkpositions import QueuedPosition, add_positions_and_notify
from store.walks import create_resident, start_walk
from tests.conftest import skip_unless
from tests.helpers import controller_running

ROOT = Path(__file__).resolve().parents[2]
DISTRICT = "11140"  # Jung-gu
NEIGHBOUR = "11110"  # Jongno-gu
BASE_LAT, BASE_LON = 37.5650, 126.9800
M_LAT = 1 / 111_000  # degrees of latitude per metre, near enough for test layouts
M_LON = 1 / 88_200  # degrees of longitude per metre at 37.5 N
Conn = psycopg.Connection[Any]
HAVE_MOSQUITTO = shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


@dataclass
class World:
    db_url: str
    params: ConnectionParams
    lamps: list[LampSpec]
    prefix: str

    def cfg(self, **changes: Any) -> ControllerConfig:
        base = ControllerConfig(
            mqtt=self.params,
            database_url=self.db_url,
            districts=(DISTRICT,),
            owner=f"test-{uuid.uuid4().hex[:8]}",
            lease_ttl_s=1.5,
            tick_s=0.05,
            retry_after_s=0.5,
            holds=HoldPolicy(hold_s=6),
            escalation=EscalationPolicy(renotify_after_s=60.0, police_after_s=120.0),
        )
        return replace(base, **changes)

    def index(self) -> LampIndex:
        return LampIndex(
            [s.device_id for s in self.lamps], [s.lat for s in self.lamps], [s.lon for s in self.lamps]
        )


@pytest.fixture
def world(db_url: str, mqtt_service: MqttService, unique_id: str) -> World:
    """Ten lamps 20 m apart along a street running north, and one 70 m east of the first."""
    migrate(db_url, timescale=False)
    prefix = f"L{unique_id}"
    lamps = [LampSpec(f"{prefix}-{i:02d}", DISTRICT, BASE_LAT + i * 20 * M_LAT, BASE_LON) for i in range(10)]
    lamps.append(LampSpec(f"{prefix}-east", DISTRICT, BASE_LAT, BASE_LON + 70 * M_LON))
    with psycopg.connect(db_url, autocommit=True) as conn:
        for spec in lamps:
            upsert_device(
                conn, spec.device_id, kind="lamp", district_code=DISTRICT, lat=spec.lat, lon=spec.lon
            )
    return World(db_url, parse_mqtt_url(mqtt_service.url), lamps, prefix)


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


class Centres:
    """A control-centre client collecting what arrives on cc/v1/{d}/alerts."""

    def __init__(self, params: ConnectionParams, centres: list[str]) -> None:
        self.messages: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        ready = threading.Event()
        self._client = paho_client(params, f"cc-{os.getpid()}-{time.monotonic_ns()}")
        self._client.on_connect = lambda c, *_a: c.subscribe([(f"cc/v1/{d}/alerts", 1) for d in centres])
        self._client.on_subscribe = lambda *_a: ready.set()
        self._client.on_message = self._on_message
        self._client.connect(params.host, params.port)
        self._client.loop_start()
        assert ready.wait(5)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload)))

    def for_alert(self, alert_id: str, topic: str | None = None) -> list[tuple[str, dict[str, Any]]]:
        """The messages naming ``alert_id`` (on ``topic`` only, when given), in arrival order."""
        with self._lock:
            return [
                (t, m)
                for t, m in self.messages
                if m.get("alert_id") == alert_id and (topic is None or t == topic)
            ]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def centres(world: World) -> Iterator[Centres]:
    c = Centres(world.params, [DISTRICT, NEIGHBOUR, "11000"])
    yield c
    c.close()


def _sos(conn: Conn, alert_id: str, lat: float, lon: float, neighbours: tuple[str, ...] = ()) -> None:
    now = datetime.now(UTC)
    place = Place(lat=lat, lon=lon, district_code=DISTRICT, district_name="중구", neighbours=neighbours)
    alert = new_alert(
        alert_id=alert_id,
        kind=AlertKind.SOS,
        place=place,
        source_id="res-1",
        now=now,
        track=(Position(lat, lon, now, 8.0),),
    )
    with conn.transaction():
        save_alert(conn, alert, resident_id="res-1")


def _walk_note(
    conn: Conn, walk_id: str, op: str, lat: float, lon: float, heading: float, speed: float
) -> None:
    assert op == "position"
    note = WalkMoved(
        walk_id=walk_id,
        lat=lat,
        lon=lon,
        accuracy_m=5.0,
        heading_deg=heading,
        speed_mps=speed,
        ts_ms=time.time_ns() // 1_000_000,
        district=DISTRICT,
    )
    with conn.transaction():
        notify(conn, note)


async def test_a_walk_brightens_the_lamps_around_and_ahead_which_ack_and_two_walkers_share_them(
    world: World,
) -> None:
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    expected = lamps_for_walker(world.index(), lat, lon, 0.0, 1.4)
    assert len(expected) >= 3  # the lamp here, and lamps ahead to the north
    with (
        LampFleet(world.params, world.lamps) as fleet,
        psycopg.connect(world.db_url, autocommit=True) as conn,
    ):
        start_walk(conn, "walk-a", "res-a", started_at=datetime.now(UTC), district_code=DISTRICT)
        async with controller_running(world.cfg()) as ctl:
            _walk_note(conn, "walk-a", "position", lat, lon, 0.0, 1.4)
            await until(lambda: all("walk-a" in fleet.sources(i) for i in expected), 5, "walk-a lamps")
            assert all(fleet.sources(i)["walk-a"] == (100, False) for i in expected)
            behind = set(world.lamps[i].device_id for i in range(10)) - set(expected)
            assert not any(fleet.commands_for(i) for i in behind)
            await until(lambda: ctl.snapshot()["pending_commands"] == 0, 5, "acks")
            sent = ctl.snapshot()["stats"]["commands_sent"]
            # A position update a moment later: more than half the hold left, nothing re-sent.
            _walk_note(conn, "walk-a", "position", lat + 1 * M_LAT, lon, 0.0, 1.4)
            await asyncio.sleep(0.5)
            assert ctl.snapshot()["stats"]["commands_sent"] == sent
            # A second walker at the same lamp gets an override of its own: they never fight.
            _walk_note(conn, "walk-b", "position", lat, lon, 0.0, 1.4)
            await until(lambda: "walk-b" in fleet.sources(expected[0]), 5, "walk-b override")
            assert {"walk-a", "walk-b"} <= set(fleet.sources(expected[0]))
            await until(lambda: ctl.snapshot()["pending_commands"] == 0, 5, "acks")
            await asyncio.sleep(0.3)  # the writer batches rows
        counts = command_status_counts(conn)
    assert counts.get("applied", 0) == sent * 2 and counts.get("sent", 0) == 0


async def test_an_impossible_jump_is_refused_with_a_reason(world: World) -> None:
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    with (
        LampFleet(world.params, world.lamps) as fleet,
        psycopg.connect(world.db_url, autocommit=True) as conn,
    ):
        async with controller_running(world.cfg()) as ctl:
            _walk_note(conn, "walk-j", "position", lat, lon, 0.0, 0.0)
            await until(lambda: "walk-j" in fleet.sources(world.lamps[0].device_id), 5, "first fix")
            _walk_note(conn, "walk-j", "position", lat + 0.05, lon, 0.0, 0.0)  # 5.5 km in a moment
            await until(lambda: ctl.snapshot()["stats"].get("walk_positions_refused") == 1, 5, "refusal")
            assert "impossible jump" in ctl.snapshot()["position_reasons"]


async def test_a_beacon_sighting_brightens_its_lamp_and_neighbours_without_gps(world: World) -> None:
    blinker = f"{world.prefix}-bk"
    lamp = world.lamps[3]
    with psycopg.connect(world.db_url, autocommit=True) as conn:
        upsert_device(
            conn, blinker, kind="blinker", district_code=DISTRICT, lat=lamp.lat, lon=lamp.lon,
            paired_device_id=lamp.device_id,
        )  # fmt: skip
    token = "ab" * 16
    with LampFleet(world.params, world.lamps) as fleet:
        async with controller_running(world.cfg()):
            pub = paho_client(world.params, f"bk-{world.prefix}")
            pub.connect(world.params.host, world.params.port)
            pub.loop_start()
            event = {
                "ts": time.time_ns() // 1_000_000,
                "seq": 1,
                "type": "beacon",
                "token_hash": token,
                "rssi_dbm": -60,
            }
            pub.publish(f"sl/v1/{DISTRICT}/{blinker}/event", json.dumps(event), qos=1).wait_for_publish(5)
            source = f"bcn-{token[:32]}"
            near = [world.lamps[i].device_id for i in (2, 3, 4)]  # 20 m either side
            await until(lambda: all(source in fleet.sources(i) for i in near), 5, "beacon brightening")
            assert not fleet.commands_for(world.lamps[6].device_id)
            pub.disconnect()
            pub.loop_stop()


async def test_an_sos_reaches_both_centres_and_blinks_the_lamps_within_50m_which_confirm(
    world: World, centres: Centres
) -> None:
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    within = [world.lamps[i].device_id for i in (0, 1, 2)]  # 0, 20 and 40 m
    silent = world.lamps[1].device_id
    with (
        LampFleet(world.params, world.lamps, silent=[silent]) as fleet,
        psycopg.connect(world.db_url, autocommit=True) as conn,
    ):
        async with controller_running(world.cfg()):
            await asyncio.to_thread(_sos, conn, "SOS-1", lat, lon, neighbours=(NEIGHBOUR,))
            await until(lambda: len({t for t, _ in centres.for_alert("SOS-1")}) >= 2, 5, "both centres")
            topics = {t for t, _ in centres.for_alert("SOS-1")}
            assert {f"cc/v1/{DISTRICT}/alerts", f"cc/v1/{NEIGHBOUR}/alerts"} <= topics
            first = centres.for_alert("SOS-1")[0][1]
            assert first["kind"] == "sos" and first["status"] == "open" and first["id"] == "SOS-1"
            await until(
                lambda: all(fleet.sources(i).get("SOS-1", (0, False))[1] for i in (within[0], within[2])),
                5,
                "blink",
            )
            assert not fleet.commands_for(world.lamps[4].device_id)  # 80 m away
            # The silent lamp is retried once, reported, and the next nearest lamp added.
            await until(lambda: len(fleet.commands_for(silent)) >= 2, 5, "retry")

            def timeline_news() -> dict[str, str]:
                alert = load_alert(conn, "SOS-1")
                assert alert is not None
                merged: dict[str, str] = {}
                for e in alert.timeline:
                    if e.action.value == "lamps_confirmed":
                        for k, v in e.details:
                            merged[k] = (merged.get(k, "") + " " + v).strip()
                return merged

            await until(lambda: "added" in timeline_news(), 8, "replacement lamp")
            news = timeline_news()
            assert set(news["confirmed"].split()) >= {within[0], within[2]}
            assert news["unconfirmed"] == silent
            added = news["added"]
            assert added == world.lamps[3].device_id  # the next nearest, 60 m
            await until(lambda: fleet.sources(added).get("SOS-1", (0, False))[1], 5, "added lamp blinks")
            # Operators see the confirmations on the centre's topic too.
            await until(
                lambda: any(
                    e["action"] == "lamps_confirmed"
                    for _, m in centres.for_alert("SOS-1")
                    for e in m["timeline"]
                ),
                5,
                "confirmations published",
            )


async def test_acknowledged_alerts_do_not_escalate_and_unacknowledged_ones_do_on_time(
    world: World, centres: Centres
) -> None:
    posted: list[bytes] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posted.append(self.rfile.read(int(self.headers["content-length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    cfg = world.cfg(
        escalation=EscalationPolicy(renotify_after_s=1.0, police_after_s=2.0),
        police_webhook_url=f"http://127.0.0.1:{server.server_address[1]}/cap",
    )
    lat, lon = world.lamps[5].lat, world.lamps[5].lon
    try:
        with LampFleet(world.params, world.lamps), psycopg.connect(world.db_url, autocommit=True) as conn:
            async with controller_running(cfg):
                t0 = time.monotonic()
                await asyncio.to_thread(_sos, conn, "SOS-ACK", lat, lon)
                await asyncio.to_thread(_sos, conn, "SOS-NOACK", lat, lon)
                await asyncio.sleep(0.3)
                await asyncio.to_thread(
                    change_alert, conn, "SOS-ACK", lambda a: acknowledge(a, datetime.now(UTC), "op-jung")
                )

                def escalations(alert_id: str) -> list[tuple[str | None, float]]:
                    alert = load_alert(conn, alert_id)
                    assert alert is not None
                    return [
                        (e.detail("escalation"), (e.at - alert.created_at).total_seconds())
                        for e in alert.timeline
                        if e.action.value == "escalated"
                    ]

                await until(lambda: len(escalations("SOS-NOACK")) == 3, 6, "three escalation steps")
                steps = dict(escalations("SOS-NOACK"))
                assert 1.0 <= steps["renotify"] < 2.0 and 1.0 <= steps["notify_city"] < 2.0
                assert 2.0 <= steps["police"] < 3.0
                await until(lambda: bool(posted), 5, "police webhook")
                assert b"<alert" in posted[0] and b"SOS-NOACK" in posted[0]
                assert any(t == "cc/v1/11000/alerts" for t, _ in centres.for_alert("SOS-NOACK"))
                assert time.monotonic() - t0 < 5
                assert escalations("SOS-ACK") == []
                assert not any(t == "cc/v1/11000/alerts" for t, _ in centres.for_alert("SOS-ACK"))
    finally:
        server.shutdown()
        server.server_close()


async def test_resolving_an_sos_stops_the_blinking(world: World, centres: Centres) -> None:
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    lamp = world.lamps[0].device_id
    with (
        LampFleet(world.params, world.lamps) as fleet,
        psycopg.connect(world.db_url, autocommit=True) as conn,
    ):
        async with controller_running(world.cfg()):
            await asyncio.to_thread(_sos, conn, "SOS-R", lat, lon)
            await until(lambda: "SOS-R" in fleet.sources(lamp), 5, "blink")
            now = datetime.now(UTC)
            # Off the event loop: the controller runs on this loop, and a blocking call here would
            # stall it for as long as the row lock is waited for.
            await asyncio.to_thread(
                change_alert,
                conn,
                "SOS-R",
                lambda a: resolve(acknowledge(a, now, "op"), now, "op", outcome="safe"),
            )
            await until(lambda: "SOS-R" not in fleet.sources(lamp), 5, "clear")
            await until(
                lambda: any(m["status"] == "resolved" for _, m in centres.for_alert("SOS-R")), 5, "resolved"
            )
            assert fleet.commands_for(lamp)[-1]["action"] == "clear"


async def test_two_controllers_split_the_districts_and_a_killed_one_is_replaced_within_the_lease(
    world: World, mqtt_service: MqttService
) -> None:
    """A real controller process is SIGKILLed during an open SOS; the in-process one takes over its
    district within the lease time, carries on escalating, and keeps the lamps blinking."""
    lease_s = 2.0
    districts = (DISTRICT, NEIGHBOUR)
    env = {
        **os.environ,
        "MQTT_URL": mqtt_service.url,
        "DATABASE_URL": world.db_url,
        "STREETLIGHT_ESCALATE_AFTER_S": "4",
        "STREETLIGHT_POLICE_AFTER_S": "60",
        "STREETLIGHT_LOG_LEVEL": "WARNING",
    }
    argv = [sys.executable, "-m", "streetlight.cli", "controller", "--districts", ",".join(districts)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--lease-ttl-s",
        str(lease_s),
        "--owner",
        "victim",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    def owners() -> dict[str, str]:
        with psycopg.connect(world.db_url, autocommit=True) as c:
            rows = c.execute(
                "SELECT district_code, owner FROM controller_leases WHERE expires_at >= now()"
            ).fetchall()
        return {str(r[0]): str(r[1]) for r in rows if not str(r[0]).startswith("member/")}

    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    lamp = world.lamps[0].device_id
    try:
        await until(
            lambda: set(owners()) == set(districts), 20, "the first controller to take both districts"
        )
        cfg = world.cfg(
            districts=districts,
            owner="survivor",
            lease_ttl_s=lease_s,
            escalation=EscalationPolicy(renotify_after_s=4.0, police_after_s=60.0),
        )
        with (
            LampFleet(world.params, world.lamps) as fleet,
            psycopg.connect(world.db_url, autocommit=True) as conn,
        ):
            async with controller_running(cfg) as survivor:
                # Two controllers: each gets one district.
                await until(lambda: sorted(owners().values()) == ["survivor", "victim"], 10, "a split")
                victim_district = next(d for d, o in owners().items() if o == "victim")
                assert victim_district == DISTRICT  # the first controller keeps the first of its share
                await asyncio.to_thread(_sos, conn, "SOS-F", lat, lon)
                await until(lambda: "SOS-F" in fleet.sources(lamp), 10, "blink by the first controller")
                killed_at = time.monotonic()
                proc.send_signal(signal.SIGKILL)
                await asyncio.wait_for(proc.wait(), 5)
                await until(lambda: DISTRICT in survivor.owned, lease_s + 3, "takeover")
                took_s = time.monotonic() - killed_at
                assert took_s <= lease_s + 1.5
                alert = load_alert(conn, "SOS-F")
                assert alert is not None

                def escalated_by_survivor() -> bool:
                    a = load_alert(conn, "SOS-F")
                    return a is not None and any(
                        e.action.value == "escalated" and e.actor == "controller:survivor" for e in a.timeline
                    )

                await until(escalated_by_survivor, 8, "escalation carried on by the survivor")
                assert "SOS-F" in fleet.sources(lamp)
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 5)


async def test_no_lamp_stays_bright_longer_than_the_hold_time_after_the_controller_dies(world: World) -> None:
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    lamp = world.lamps[0].device_id
    hold_s = 2
    with (
        LampFleet(world.params, world.lamps) as fleet,
        psycopg.connect(world.db_url, autocommit=True) as conn,
    ):
        async with controller_running(world.cfg(holds=HoldPolicy(hold_s=hold_s))) as ctl:
            _walk_note(conn, "walk-d", "position", lat, lon, 0.0, 0.0)
            await until(lambda: "walk-d" in fleet.sources(lamp), 5, "brightened")
            ctl.release_on_exit = False  # a crash: nothing is cleaned up
        died = time.monotonic()
        await until(lambda: "walk-d" not in fleet.sources(lamp), hold_s + 5, "the override to expire")
        assert time.monotonic() - died <= hold_s + 5


async def test_bad_messages_and_notifications_are_counted_and_the_controller_goes_on(world: World) -> None:
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    lamp = world.lamps[0].device_id
    with (
        LampFleet(world.params, world.lamps) as fleet,
        psycopg.connect(world.db_url, autocommit=True) as conn,
    ):
        async with controller_running(world.cfg()) as ctl:
            pub = paho_client(world.params, f"bad-{world.prefix}")
            pub.connect(world.params.host, world.params.port)
            pub.loop_start()
            for topic, payload in [
                (f"sl/v1/{DISTRICT}/{lamp}/ack", b"{not json"),
                (f"sl/v1/{DISTRICT}/{lamp}/event", b'{"ts": 1, "seq": 1, "type": "beacon"}'),
                (f"sl/v1/{DISTRICT}/{'x' * 70}/ack", b"{}"),
            ]:
                pub.publish(topic, payload, qos=1).wait_for_publish(5)
            with conn.transaction():
                conn.execute("SELECT pg_notify('sl_walk', 'not json')")
                bad_lat = {"walk_id": "w-x", "op": "position", "lat": "x", "lon": 127.0, "district": DISTRICT}
                conn.execute("SELECT pg_notify(%s, %s)", (WALK_CHANNEL, json.dumps(bad_lat)))
            await until(
                lambda: ctl.snapshot()["stats"].get("notify_handler_errors", 0) >= 2, 5, "notify errors"
            )
            await until(lambda: ctl.snapshot()["stats"].get("bad_ack", 0) >= 1, 5, "bad ack counted")
            assert ctl.snapshot()["stats"].get("bad_event", 0) >= 1
            _walk_note(conn, "walk-ok", "position", lat, lon, 0.0, 0.0)
            await until(lambda: "walk-ok" in fleet.sources(lamp), 5, "a good walk after bad input")
            pub.disconnect()
            pub.loop_stop()


async def test_an_sos_in_a_guard_zone_during_patrol_hours_reaches_the_guards(world: World) -> None:
    posted: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            posted.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    zones = load_safety_zones()
    zone = zones.guard_zones[0]
    all_day = replace(zones, patrol_start_local=dt_time(0, 0), patrol_end_local=dt_time(23, 59, 59))
    cfg = world.cfg(
        districts=(zone.district_code,),
        safety_zones=all_day,
        guard_webhook_url=f"http://127.0.0.1:{server.server_address[1]}/guards",
    )
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    now = datetime.now(UTC)
    place = Place(
        lat=lat, lon=lon, district_code=zone.district_code, dong_code=zone.dong_code, dong_name=zone.dong
    )
    alert = new_alert(alert_id="SOS-G", kind=AlertKind.SOS, place=place, source_id="res-g", now=now)
    try:
        with psycopg.connect(world.db_url, autocommit=True) as conn:
            async with controller_running(cfg):
                with conn.transaction():
                    save_alert(conn, alert)

                def guard_events() -> list[Any]:
                    a = load_alert(conn, "SOS-G")
                    return [] if a is None else [e for e in a.timeline if e.detail("escalation") == "guards"]

                await until(lambda: len(guard_events()) == 1, 5, "guard notification recorded")
                await until(lambda: bool(posted), 5, "guard webhook")
                assert guard_events()[0].detail("targets") == f"guards:{zone.dong_code}"
                assert posted[0]["guard_zone"] == zone.dong_code and posted[0]["alert"]["id"] == "SOS-G"
                await asyncio.sleep(0.3)
                assert len(guard_events()) == 1 and len(posted) == 1  # once, not on every change
    finally:
        server.shutdown()
        server.server_close()


async def test_an_alert_changed_while_the_broker_is_down_reaches_the_centre_once_it_is_back(
    db_url: str, tmp_path: Path, unique_id: str
) -> None:
    """Published means PUBACKed: a change the broker never got is re-published after reconnect."""
    skip_unless(HAVE_MOSQUITTO, "needs a mosquitto binary to stop and restart")
    migrate(db_url, timescale=False)
    broker = start_mosquitto(tmp_path / "mosquitto")
    params = parse_mqtt_url(broker.url)
    got: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(json.loads(msg.payload))

    def statuses(alert_id: str) -> list[str]:
        with lock:
            return [m["status"] for m in got if m.get("alert_id") == alert_id]

    # The control centre: a persistent session that reconnects every second.
    centre = paho_client(
        params, f"cc-{unique_id}", clean_session=False, reconnect_base_s=0.5, reconnect_cap_s=1
    )
    subscribed = threading.Event()
    centre.on_connect = lambda c, *_a: c.subscribe(f"cc/v1/{DISTRICT}/alerts", 1)
    centre.on_subscribe = lambda *_a: subscribed.set()
    centre.on_message = on_message
    centre.connect(params.host, params.port)
    centre.loop_start()
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=(DISTRICT,),
        owner=f"test-{uuid.uuid4().hex[:8]}",
        lease_ttl_s=1.5,
        tick_s=0.05,
        escalation=EscalationPolicy(renotify_after_s=300.0, police_after_s=600.0),  # not the way back
    )
    alert_id = f"SOS-{unique_id}"
    try:
        assert subscribed.wait(5)
        with psycopg.connect(db_url, autocommit=True) as conn:
            async with controller_running(cfg) as controller:
                await asyncio.to_thread(_sos, conn, alert_id, BASE_LAT, BASE_LON)
                await until(lambda: "open" in statuses(alert_id), 5, "the open SOS at the centre")
                session = controller.mqtt
                assert session is not None
                broker.stop()  # graceful: the centre's persistent session is saved
                await until(lambda: not session.connected, 5, "the controller to see the broker gone")
                await asyncio.to_thread(
                    change_alert, conn, alert_id, lambda a: acknowledge(a, datetime.now(UTC), "op-jung")
                )
                await until(lambda: controller.stats["alert_publish_failed"] >= 1, 5, "the failed publish")
                await asyncio.to_thread(broker.start_again)
                await until(
                    lambda: "acknowledged" in statuses(alert_id), 8, "the acknowledgement at the centre"
                )
                assert controller.stats["alerts_republished"] >= 1
    finally:
        centre.disconnect()
        centre.loop_stop()
        broker.stop()


async def test_a_batch_of_positions_is_handled_in_order_and_a_refused_one_gets_its_reason_on_its_row(
    world: World,
) -> None:
    """Positions as the API writes them (one statement, one NOTIFY ``positions``): two walks in one
    batch; walk x's jump is refused only because its first position came first, and the refusal
    finds its own row (the row's ts and the notification's ts_ms are the same millisecond)."""
    lat, lon = world.lamps[0].lat, world.lamps[0].lon
    far = world.lamps[8]
    now = datetime.fromtimestamp(time.time_ns() // 1_000_000 / 1000, UTC)
    walk_x, walk_y = f"walk-x{world.prefix}", f"walk-y{world.prefix}"
    with psycopg.connect(world.db_url, autocommit=True) as conn:
        create_resident(conn, f"res-{world.prefix}", f"hash-{world.prefix}")
        for walk_id in (walk_x, walk_y):
            start_walk(conn, walk_id, f"res-{world.prefix}", started_at=now, district_code=DISTRICT)
    batch = [
        QueuedPosition(walk_x, now, lat, lon, 5.0, 0.0, 1.4, DISTRICT),
        QueuedPosition(walk_y, now, far.lat, far.lon, 5.0, 0.0, 1.4, DISTRICT),
        # 160 m from walk x's first position 1 ms later: an impossible jump.
        QueuedPosition(walk_x, now + timedelta(milliseconds=1), far.lat, far.lon, 5.0, 0.0, 1.4, DISTRICT),
    ]
    with LampFleet(world.params, world.lamps) as fleet:
        async with controller_running(world.cfg()) as ctl:
            async with await psycopg.AsyncConnection.connect(world.db_url, autocommit=True) as aconn:
                assert await add_positions_and_notify(aconn, batch, WALK_CHANNEL) == [True, True, True]
            await until(lambda: walk_y in fleet.sources(far.device_id), 5, "walk y's lamps")
            await until(lambda: walk_x in fleet.sources(world.lamps[0].device_id), 5, "walk x's lamps")
            await until(lambda: ctl.snapshot()["stats"].get("walk_positions_refused") == 1, 5, "refusal")
            assert walk_x not in fleet.sources(far.device_id)

            def verdicts() -> list[tuple[Any, ...]]:
                with psycopg.connect(world.db_url) as conn:
                    return conn.execute(
                        "SELECT walk_id, accepted, reason FROM walk_positions WHERE walk_id = ANY(%s) "
                        "ORDER BY id",
                        ([walk_x, walk_y],),
                    ).fetchall()

            await until(lambda: not verdicts()[2][1], 5, "the refusal written on its row")
    rows = verdicts()
    assert [(r[0], r[1]) for r in rows] == [(walk_x, True), (walk_y, True), (walk_x, False)]
    assert "impossible jump" in rows[2][2]


async def test_the_controller_brightens_the_lamps_the_api_named_unless_it_drops_the_corridor(
    world: World,
) -> None:
    """The API sends the lamps it answered with; the controller uses them for a position it trusts
    (the same rule), and computes the near lamps itself for a down-weighted one."""
    lamp, named = world.lamps[0], world.lamps[9]  # `named` is 180 m away: only the API names it
    now = datetime.fromtimestamp(time.time_ns() // 1_000_000 / 1000, UTC)
    trusted, vague = f"walk-t{world.prefix}", f"walk-v{world.prefix}"
    with psycopg.connect(world.db_url, autocommit=True) as conn:
        create_resident(conn, f"res-{world.prefix}", f"hash-{world.prefix}")
        for walk_id in (trusted, vague):
            start_walk(conn, walk_id, f"res-{world.prefix}", started_at=now, district_code=DISTRICT)
    batch = [
        QueuedPosition(trusted, now, lamp.lat, lamp.lon, 5.0, 0.0, 1.4, DISTRICT, (named.device_id,)),
        # Accuracy 70 m: near lamps only, whatever the API named.
        QueuedPosition(vague, now, lamp.lat, lamp.lon, 70.0, 0.0, 1.4, DISTRICT, (named.device_id,)),
    ]
    with LampFleet(world.params, world.lamps) as fleet:
        async with controller_running(world.cfg()) as ctl:
            async with await psycopg.AsyncConnection.connect(world.db_url, autocommit=True) as aconn:
                assert await add_positions_and_notify(aconn, batch, WALK_CHANNEL) == [True, True]
            await until(lambda: trusted in fleet.sources(named.device_id), 5, "the named lamp")
            await until(lambda: vague in fleet.sources(lamp.device_id), 5, "the near lamp")
            await until(lambda: ctl.snapshot()["pending_commands"] == 0, 5, "acks")
    assert trusted not in fleet.sources(lamp.device_id)
    assert vague not in fleet.sources(named.device_id)
