"""What one lamp's valid credentials can do through the services (issue 15), tried as the attacker
would: the messages go out with Mosquitto's own ``mosquitto_pub`` on the attacker's own topics,
against a real broker and PostgreSQL and the real ingest worker and controller."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from alerts import (
    FAULT_FLOOD_CODE,
    MAX_OPEN_FAULTS_PER_DEVICE,
    AlertKind,
    Place,
    Position,
    new_alert,
    resolve,
)
from broker import ConnectionParams, parse_mqtt_url
from controller import ControllerConfig
from devkit.bench.controller import LampFleet, LampSpec
from devkit.localservices import MqttService
from ingest import IngestWorker, WorkerConfig, raise_fault_alerts
from store import migrate, upsert_device
from store.alerts import active_alerts, load_alert, save_alert
from tests.conftest import skip_unless
from tests.helpers import controller_running, wait_for
from tests.helpers import running as running_worker
from tests.integration.test_controller_service import until

DISTRICT = "11140"  # Jung-gu
BASE_LAT, BASE_LON = 37.5650, 126.9800
M_LAT = 1 / 111_000  # degrees of latitude per metre, near enough for test layouts
MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"


def now_ms() -> int:
    return int(time.time() * 1000)


def mosquitto_pub(
    params: ConnectionParams,
    topic: str,
    lines: list[bytes],
    *,
    qos: int = 1,
    retain: bool = False,
    client_id: str | None = None,
) -> None:
    """Publish one message per line with the broker's own C client, as a device would."""
    skip_unless(Path(MOSQUITTO_PUB).exists(), "the attacks are sent with mosquitto_pub")
    cmd = [MOSQUITTO_PUB, "-h", params.host, "-p", str(params.port), "-t", topic, "-q", str(qos), "-l"]
    if client_id:
        cmd += ["-i", client_id]
    if params.username:
        cmd += ["-u", params.username, "-P", params.password or ""]
    if retain:
        cmd.append("-r")
    subprocess.run(cmd, input=b"\n".join(lines) + b"\n", check=True, timeout=120, capture_output=True)


# ------------------------------------------------------------------ faked blink confirmations


def _sos(conn: psycopg.Connection[Any], alert_id: str, lat: float, lon: float) -> None:
    now = datetime.now(UTC)
    place = Place(lat=lat, lon=lon, district_code=DISTRICT, district_name="중구")
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


async def test_a_lamp_acking_another_lamps_blink_command_is_refused_and_the_dark_lamp_stays_unconfirmed(
    db_url: str, mqtt_service: MqttService, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    prefix = f"L{unique_id}"
    lamps = [LampSpec(f"{prefix}-{i:02d}", DISTRICT, BASE_LAT + i * 20 * M_LAT, BASE_LON) for i in range(6)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        for spec in lamps:
            upsert_device(
                conn, spec.device_id, kind="lamp", district_code=DISTRICT, lat=spec.lat, lon=spec.lon
            )
    attacker, dark = lamps[0].device_id, lamps[1].device_id  # both within 50 m of the SOS
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=(DISTRICT,),
        owner=f"test-{uuid.uuid4().hex[:8]}",
        lease_ttl_s=2.0,
        tick_s=0.05,
        retry_after_s=0.5,
    )
    alert_id = f"SOS-{unique_id}"
    with (
        LampFleet(params, lamps, silent=[dark]) as fleet,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        async with controller_running(cfg) as ctl:
            _sos(conn, alert_id, lamps[0].lat, lamps[0].lon)
            await until(
                lambda: fleet.commands_for(attacker) and fleet.commands_for(dark), 5, "blink commands"
            )
            own = fleet.commands_for(attacker)[0]["cmd_id"]
            # 1. The attacker reads its own cmd_id and acks the ids around it, as if sequential.
            head, _, tail = own.rpartition(".")
            guesses = [f"{head}.{int(tail, 16) + d:x}" for d in range(-20, 21) if d] + (
                [f"{head}.{int(tail) + d}" for d in range(-20, 21) if d] if tail.isdigit() else []
            )
            # 2. Worse: it learnt the dark lamp's real cmd_id (a leak), and acks it from its own topic.
            leaked = fleet.commands_for(dark)[0]["cmd_id"]
            acks = [
                json.dumps(
                    {"cmd_id": c, "ts": now_ms(), "status": "applied", "effective_level": 100}
                ).encode()
                for c in [*guesses, leaked]
            ]
            mosquitto_pub(params, f"sl/v1/{DISTRICT}/{attacker}/ack", acks, client_id=attacker)

            def timeline_news() -> dict[str, str]:
                alert = load_alert(conn, alert_id)
                assert alert is not None
                merged: dict[str, str] = {}
                for e in alert.timeline:
                    if e.action.value == "lamps_confirmed":
                        for k, v in e.details:
                            merged[k] = (merged.get(k, "") + " " + v).strip()
                return merged

            # The dark lamp is retried, never confirmed, and reported unconfirmed to the operator.
            def reported(lamp: str) -> bool:
                news = timeline_news()
                return lamp in f"{news.get('confirmed', '')} {news.get('unconfirmed', '')}".split()

            await until(lambda: reported(dark), 8, "the dark lamp reported")
            news = timeline_news()
            assert dark not in news.get("confirmed", "").split()
            assert dark in news["unconfirmed"].split()
            assert ctl.snapshot()["stats"].get("acks_wrong_device", 0) >= 1
            assert attacker in news.get("confirmed", "").split()  # its own blink still counts
            statuses = {
                str(r[0]) for r in conn.execute("SELECT status FROM commands WHERE device_id = %s", (dark,))
            }
            assert "applied" not in statuses
            assert ctl.snapshot()["commands"].get("wrong_device", 0) >= 1


# ------------------------------------------------------------------ ingest: one lamp's messages


def ingest_worker(svc: MqttService, db: str, tmp: Path, client_id: str, **kw: Any) -> IngestWorker:
    """An ingest worker as `streetlight ingest` builds it (rate bound at its defaults)."""
    config = WorkerConfig(
        mqtt=parse_mqtt_url(svc.url),
        database_url=db,
        spool_path=tmp / f"{client_id}.spool",
        client_id=client_id,
        shared=False,
        max_delay_s=0.05,
        **kw,
    )
    return IngestWorker(config, on_faults=raise_fault_alerts)


def device_alerts(db: str, device_id: str, kind: str) -> list[tuple[str, str, int]]:
    """(status, fault code, count) of a device's alerts of a kind, oldest first."""
    with psycopg.connect(db, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT status, data->>'fault_code', (data->>'count')::int FROM alerts "
            "WHERE device_id = %s AND kind = %s ORDER BY created_at",
            (device_id, kind),
        ).fetchall()
    return [(str(s), str(c), int(n or 1)) for s, c, n in rows]


def stored(db: str, sql: str, *args: Any) -> int:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute(sql, args).fetchone()
    return int(row[0]) if row else 0


def marker(params: ConnectionParams, db: str, device_id: str, seq: int) -> None:
    """Send one telemetry from a bystander lamp and wait for its row: everything before is handled."""
    topic = f"sl/v1/11230/{device_id}/telemetry"
    mosquitto_pub(params, topic, [LAMP % (now_ms(), seq)], client_id=device_id)
    wait_for(
        lambda: (
            stored(db, "SELECT count(*) FROM telemetry WHERE device_id = %s AND seq = %s", device_id, seq)
            == 1
        ),
        10,
    )


LAMP = b'{"ts":%d,"seq":%d,"level":80,"power_w":36.4,"faults":[]}'


def test_a_retained_tamper_event_raises_no_alert_again_after_ingest_reconnects_nor_a_redelivered_one(
    mqtt_service: MqttService, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    dev, bystander = f"T{unique_id}", f"M{unique_id}"
    topic = f"sl/v1/11230/{dev}/event"
    tamper = b'{"ts":%d,"seq":41,"type":"tamper"}' % now_ms()
    try:
        with running_worker(ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")):
            mosquitto_pub(params, topic, [tamper], retain=True, client_id=dev)
            wait_for(lambda: device_alerts(db_url, dev, "tamper") == [("open", "tamper", 1)], 10)
        # The operator looks at the pole and resolves the alert.
        with psycopg.connect(db_url, autocommit=True) as conn:
            (alert,) = active_alerts(conn, kinds=["tamper"], source_id=dev)
            save_alert(
                conn, resolve(alert, datetime.now(UTC), "operator:kim", note="checked"), previous=alert
            )
        # Ingest reconnects (a restart, a broker restart): the broker hands it the retained copy.
        worker = ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")
        with running_worker(worker):
            marker(params, db_url, bystander, 1)
            # The same event again, live (a QoS 1 redelivery: same device, ts and seq).
            mosquitto_pub(params, topic, [tamper], client_id=dev)
            marker(params, db_url, bystander, 2)
        assert device_alerts(db_url, dev, "tamper") == [("resolved", "tamper", 1)]
        assert stored(db_url, "SELECT count(*) FROM events WHERE device_id = %s", dev) == 1
        assert worker.metrics.snapshot()["retained_ignored"] == 1
    finally:
        mosquitto_pub(params, topic, [b""], retain=True, client_id=dev)  # clear the retained message


def test_a_birth_contradicting_the_registration_is_flagged_and_changes_nothing_but_firmware(
    mqtt_service: MqttService, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    lamp, blinker, elsewhere = f"R{unique_id}", f"B{unique_id}", f"X{unique_id}"
    lat, lon = 37.5744, 127.0396  # Dongdaemun-gu, 11230
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_device(conn, blinker, kind="blinker", district_code="11230", lat=lat, lon=lon)
        upsert_device(conn, elsewhere, kind="lamp", district_code="11680", lat=37.4979, lon=127.0276)
    topic = f"sl/v1/11230/{lamp}/birth"

    def birth(**over: Any) -> bytes:
        fields = {"kind": "lamp", "firmware": "2.4.1", "model": "SL-LED-60", "lat": lat, "lon": lon,
                  "paired": blinker, "bdseq": 1}  # fmt: skip
        return json.dumps({**fields, **over}).encode()

    worker = ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")
    with running_worker(worker):
        mosquitto_pub(params, topic, [birth()], client_id=lamp)  # the first birth registers the lamp
        wait_for(lambda: stored(db_url, "SELECT count(*) FROM devices WHERE device_id = %s", lamp) == 1, 10)
        # Its controller stolen: a blinker now, in Gangnam, paired with a lamp there.
        attack = birth(kind="blinker", lat=37.4979, lon=127.0276, paired=elsewhere, firmware="6.6.6", bdseq=2)
        mosquitto_pub(params, topic, [attack], client_id=lamp)
        wait_for(lambda: device_alerts(db_url, lamp, "tamper") != [], 10)
        assert worker.metrics.flags["registration_mismatch"] == 1
        # A later honest birth after a firmware upgrade is no conflict.
        mosquitto_pub(params, topic, [birth(firmware="2.5.0", bdseq=3)], client_id=lamp)
        marker(params, db_url, f"M{unique_id}", 1)
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT kind, district_code, lat, lon, paired_device_id, firmware FROM devices "
            "WHERE device_id = %s",
            (lamp,),
        ).fetchone()
    assert row == ("lamp", "11230", lat, lon, blinker, "2.5.0")
    assert device_alerts(db_url, lamp, "tamper") == [("open", "registration_mismatch", 1)]
    assert worker.metrics.flags["registration_mismatch"] == 1


def test_a_lamp_flooding_50000_messages_is_bounded_alerted_once_and_does_not_hold_up_the_others(
    mqtt_service: MqttService, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    flooder, others = f"F{unique_id}", [f"N{unique_id}-{i}" for i in range(20)]
    t0 = now_ms()
    flood = [LAMP % (t0, seq) for seq in range(50_000)]
    worker = ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")
    with running_worker(worker):
        quiet: list[float] = []  # the same round trip with no flood, for comparison
        for i in range(5):
            sent = time.monotonic()
            marker(params, db_url, f"Q{unique_id}", i)
            quiet.append(time.monotonic() - sent)
        peak = [0]
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], len(worker._queue))
                time.sleep(0.001)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        started = time.monotonic()
        pub = threading.Thread(
            target=mosquitto_pub,
            args=(params, f"sl/v1/11230/{flooder}/telemetry", flood),
            kwargs={"qos": 0, "client_id": flooder},
        )
        pub.start()
        # Meanwhile the other lamps report as usual; each must be stored promptly.
        delays: list[float] = []
        for i, lamp in enumerate(others):
            sent = time.monotonic()
            marker(params, db_url, lamp, i)
            delays.append(time.monotonic() - sent)
        pub.join(120)
        flood_s = time.monotonic() - started
        marker(params, db_url, f"M{unique_id}", 1)
        done.set()
        watcher.join()
        rows = stored(db_url, "SELECT count(*) FROM telemetry WHERE device_id = %s", flooder)
        assert rows <= 100 + 5 * flood_s + 5  # the burst and the rate over the flood, nothing more
        limited = worker.metrics.snapshot()["rate_limited"]
        print(f"flood of 50,000 in {flood_s:.1f} s: {rows} stored, {limited} refused, peak queue {peak[0]},"
              f" bystanders' publish->row max {max(delays) * 1000:.0f} ms"
              f" (no flood: {max(quiet) * 1000:.0f} ms)")  # fmt: skip
        assert rows + limited == 50_000
        assert peak[0] < 1000  # what is over the bound never queues
        assert max(delays) < 2.0
        wait_for(lambda: device_alerts(db_url, flooder, "tamper") != [], 10)
    assert device_alerts(db_url, flooder, "tamper") == [("open", "message_flood", 1)]


def test_a_lamp_naming_32_new_fault_codes_in_each_telemetry_opens_at_most_nine_alerts(
    mqtt_service: MqttService, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    lamp = f"C{unique_id}"
    t0 = now_ms()
    n = 12
    worker = ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")
    with running_worker(worker):
        for i in range(n):  # one at a time, as at its allowed rate: each its own batch
            codes = [f"c{i}n{j}" for j in range(32)]  # valid codes, never seen before
            line = json.dumps(
                {"ts": t0 + i * 200, "seq": i + 1, "level": 80, "power_w": 36.0, "faults": codes}
            )
            mosquitto_pub(params, f"sl/v1/11230/{lamp}/telemetry", [line.encode()], client_id=lamp)
            wait_for(
                lambda i=i: (
                    stored(db_url, "SELECT count(*) FROM telemetry WHERE device_id = %s", lamp) == i + 1
                ),
                10,
            )
    assert worker.metrics.snapshot()["rate_limited"] == 0  # within the device's rate: no message_flood
    faults = device_alerts(db_url, lamp, "lamp_fault")
    assert len(faults) == MAX_OPEN_FAULTS_PER_DEVICE and all(s == "open" for s, _c, _n in faults)
    assert {c for _s, c, _n in faults} <= {f"c0n{j}" for j in range(32)}
    # Every code beyond is counted into the one tamper alert.
    assert device_alerts(db_url, lamp, "tamper") == [
        ("open", FAULT_FLOOD_CODE, n * 32 - MAX_OPEN_FAULTS_PER_DEVICE)
    ]
    with psycopg.connect(db_url, autocommit=True) as conn:
        (n_open,) = conn.execute(
            "SELECT count(*) FROM alerts WHERE device_id = %s AND status <> 'resolved'", (lamp,)
        ).fetchone() or (0,)
    assert n_open == MAX_OPEN_FAULTS_PER_DEVICE + 1


def test_a_lamp_sending_tamper_events_with_20_made_up_codes_opens_at_most_nine_alerts(
    mqtt_service: MqttService, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    lamp = f"E{unique_id}"
    t0 = now_ms()
    events = [b'{"ts":%d,"seq":%d,"type":"tamper","code":"t%d"}' % (t0 + i, i + 1, i) for i in range(20)]
    worker = ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")
    with running_worker(worker):
        mosquitto_pub(params, f"sl/v1/11230/{lamp}/event", events, client_id=lamp)
        wait_for(lambda: stored(db_url, "SELECT count(*) FROM events WHERE device_id = %s", lamp) == 20, 10)
        marker(params, db_url, f"M{unique_id}", 1)
    tampers = device_alerts(db_url, lamp, "tamper")
    codes = [c for _s, c, _n in tampers if c != FAULT_FLOOD_CODE]
    assert len(codes) == MAX_OPEN_FAULTS_PER_DEVICE and len(tampers) == MAX_OPEN_FAULTS_PER_DEVICE + 1
    assert [(s, n) for s, c, n in tampers if c == FAULT_FLOOD_CODE] == [
        ("open", 20 - MAX_OPEN_FAULTS_PER_DEVICE)
    ]


def test_a_retained_offline_with_the_largest_bdseq_does_not_keep_the_lamp_offline_after_its_next_birth(
    mqtt_service: MqttService, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    lamp = f"S{unique_id}"
    base = f"sl/v1/11230/{lamp}"

    def birth(bdseq: int) -> bytes:
        return json.dumps({"kind": "lamp", "firmware": "2.4.1", "model": "SL-LED-60", "lat": 37.5744,
                           "lon": 127.0396, "bdseq": bdseq, "ts": now_ms()}).encode()  # fmt: skip

    def state(online: bool, bdseq: int) -> bytes:
        return json.dumps(
            {"state": "online" if online else "offline", "bdseq": bdseq, "ts": now_ms()}
        ).encode()

    def connectivity() -> tuple[bool, int] | None:
        with psycopg.connect(db_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT online, bdseq FROM device_state WHERE device_id = %s", (lamp,)
            ).fetchone()
        return None if row is None else (bool(row[0]), int(row[1]))

    worker = ingest_worker(mqtt_service, db_url, tmp_path, f"ing-{unique_id}")
    try:
        with running_worker(worker):
            mosquitto_pub(params, f"{base}/birth", [birth(3)], client_id=lamp)
            mosquitto_pub(params, f"{base}/state", [state(True, 3)], retain=True, client_id=lamp)
            wait_for(lambda: connectivity() == (True, 3), 10)
            # The stolen credentials: a retained offline of the largest connection there can be.
            mosquitto_pub(params, f"{base}/state", [state(False, 2**63 - 1)], retain=True, client_id=lamp)
            wait_for(lambda: connectivity() == (False, 2**63 - 1), 10)
            # The lamp, repaired (its counter restarted), connects again: birth and online of bdseq 0.
            mosquitto_pub(params, f"{base}/birth", [birth(0)], client_id=lamp)
            mosquitto_pub(params, f"{base}/state", [state(True, 0)], retain=True, client_id=lamp)
            wait_for(lambda: connectivity() == (True, 0), 10)
            # It reconnects (bdseq 1); the previous connection's death arrives late: stale, counted.
            mosquitto_pub(params, f"{base}/birth", [birth(1)], client_id=lamp)
            mosquitto_pub(params, f"{base}/state", [state(True, 1)], retain=True, client_id=lamp)
            wait_for(lambda: connectivity() == (True, 1), 10)
            mosquitto_pub(params, f"{base}/state", [state(False, 0)], client_id=lamp)
            marker(params, db_url, f"M{unique_id}", 1)
            assert connectivity() == (True, 1)
            assert worker.metrics.stale_states == 1
            assert worker.metrics.flags["bdseq_restart"] == 1
    finally:
        mosquitto_pub(params, f"{base}/state", [b""], retain=True, client_id=lamp)


def _lamps_with_a_blinker(
    db_url: str, mqtt_service: MqttService, unique_id: str
) -> tuple[ConnectionParams, list[LampSpec], str, ControllerConfig]:
    """Three registered lamps 10 m apart, a blinker paired with the first, and a controller's config."""
    migrate(db_url, timescale=False)
    params = parse_mqtt_url(mqtt_service.url)
    lamps = [
        LampSpec(f"L{unique_id}-{i:02d}", DISTRICT, BASE_LAT + i * 10 * M_LAT, BASE_LON) for i in range(3)
    ]
    blinker = f"B{unique_id}"
    with psycopg.connect(db_url, autocommit=True) as conn:
        for spec in lamps:
            upsert_device(
                conn, spec.device_id, kind="lamp", district_code=DISTRICT, lat=spec.lat, lon=spec.lon
            )
        upsert_device(
            conn, blinker, kind="blinker", district_code=DISTRICT, lat=BASE_LAT, lon=BASE_LON,
            paired_device_id=lamps[0].device_id,
        )  # fmt: skip
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=(DISTRICT,),
        owner=f"test-{uuid.uuid4().hex[:8]}",
        lease_ttl_s=2.0,
        tick_s=0.05,
    )
    return params, lamps, blinker, cfg


async def test_a_blinker_flooding_made_up_beacon_sightings_commands_lamps_only_within_its_rate(
    db_url: str, mqtt_service: MqttService, unique_id: str
) -> None:
    params, lamps, blinker, cfg = _lamps_with_a_blinker(db_url, mqtt_service, unique_id)
    cfg = dataclasses.replace(cfg, retry_after_s=0.5)
    n = 5000
    sightings = [
        json.dumps(
            {"ts": now_ms(), "seq": i, "type": "beacon", "token_hash": f"{i:032x}", "rssi_dbm": -60}
        ).encode()
        for i in range(n)
    ]
    with LampFleet(params, lamps):
        async with controller_running(cfg) as ctl:
            started = time.monotonic()
            await asyncio.to_thread(
                mosquitto_pub, params, f"sl/v1/{DISTRICT}/{blinker}/event", sightings, client_id=blinker
            )
            await until(
                lambda: (
                    ctl.snapshot()["stats"].get("beacon_sightings", 0)
                    + ctl.snapshot()["stats"].get("rate_limited", 0)
                    >= n
                ),
                30,
                "every sighting handled or refused",
            )
            elapsed = time.monotonic() - started
            stats = ctl.snapshot()["stats"]
            # Each sighting brightens the three lamps: bounded by the blinker's burst and rate.
            assert stats.get("beacon_sightings", 0) <= 100 + 5 * elapsed + 5
            assert stats.get("commands_sent", 0) <= 3 * (100 + 5 * elapsed + 5)
            assert stats.get("rate_limited", 0) >= n - 100 - 5 * elapsed - 5


async def test_a_lamp_reporting_beacon_sightings_commands_no_lamp_and_a_blinkers_still_do(
    db_url: str, mqtt_service: MqttService, unique_id: str
) -> None:
    params, lamps, blinker, cfg = _lamps_with_a_blinker(db_url, mqtt_service, unique_id)
    attacker = lamps[0].device_id

    def sighting(seq: int) -> bytes:
        return json.dumps(
            {"ts": now_ms(), "seq": seq, "type": "beacon", "token_hash": f"{seq:032x}", "rssi_dbm": -60}
        ).encode()

    with LampFleet(params, lamps) as fleet:
        async with controller_running(cfg) as ctl:
            await asyncio.to_thread(
                mosquitto_pub, params, f"sl/v1/{DISTRICT}/{attacker}/event",
                [sighting(i) for i in range(1, 11)], client_id=attacker,
            )  # fmt: skip
            await until(lambda: ctl.snapshot()["stats"].get("beacon_not_blinker", 0) == 10, 10, "10 refusals")
            assert ctl.snapshot()["stats"].get("beacon_sightings", 0) == 0
            assert all(fleet.commands_for(spec.device_id) == [] for spec in lamps)
            # The real blinker's sighting still brightens its lamps.
            await asyncio.to_thread(
                mosquitto_pub, params, f"sl/v1/{DISTRICT}/{blinker}/event", [sighting(11)], client_id=blinker
            )
            await until(lambda: all(fleet.commands_for(spec.device_id) for spec in lamps), 10, "brightened")
            assert ctl.snapshot()["stats"]["beacon_sightings"] == 1
