"""A neighbourhood's power cut and restore, driven through the simulator's devices over MQTT.

Real broker, real PostgreSQL, a real ingest worker (its fault path with the gazetteer's locator);
the periodic offline pass is run by the test at the moments that matter. The operator must see
one alert per outage (its count the number of its lamps), no per-lamp power_loss beside it nor
raised at any moment (a power loss waits its grace in the offline pass), and nothing open once the
lamps are back, except for a device still without power.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from alerts import Alert, AlertKind, AlertState, MassOutagePolicy
from broker import parse_mqtt_url
from devkit.localservices import MqttService
from firmware_sim.firmware import Faults
from firmware_sim.scenarios import SimConfig, Simulation
from geo import Gazetteer
from ingest import IngestWorker, RawMessage, SeqTracker, WorkerConfig, process, raise_fault_alerts
from ingest._alerts import raise_offline_alerts
from ingest._write import write_batch
from store import migrate
from store.alerts import active_alerts, load_alert
from tests.helpers import count, running

pytestmark = pytest.mark.integration

MAINTENANCE = [k.value for k in AlertKind if k is not AlertKind.SOS]


@pytest.fixture
def migrated(db_url: str) -> str:
    migrate(db_url, timescale=False)
    return db_url


@functools.cache
def _gazetteer() -> Gazetteer:
    return Gazetteer.load()


def locate(lat: float, lon: float) -> tuple[str, str]:
    where = _gazetteer().locate(lat, lon)
    return where.district_code or "", where.dong_code or ""


async def until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll without blocking the simulator's event loop."""
    deadline = time.monotonic() + timeout_s
    while not await asyncio.to_thread(cond):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


def offline_pass(db: str, now: datetime | None = None) -> dict[str, int]:
    with psycopg.connect(db, autocommit=True) as conn:
        return raise_offline_alerts(
            conn, now or datetime.now(UTC), silent_after_s=3600, grace_s=120, locate=locate
        )


SQL_EVER_RAISED = "SELECT count(*) FROM alerts WHERE kind = 'lamp_fault' AND device_id = ANY(%s)"


def active(db: str, devices: set[str] | None = None) -> list[Alert]:
    with psycopg.connect(db, autocommit=True) as conn:
        found = active_alerts(conn, kinds=MAINTENANCE)
    return [a for a in found if devices is None or a.source_id in devices or set(a.device_ids) & devices]


async def test_a_neighbourhood_power_cut_is_one_alert_counting_its_lamps_and_nothing_stays_open_after(
    mqtt_service: MqttService, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    config = WorkerConfig(
        mqtt=parse_mqtt_url(mqtt_service.url),
        database_url=migrated,
        spool_path=tmp_path / "outage.spool",
        client_id=f"ingest-{unique_id}",
        shared=False,
        max_delay_s=0.05,
    )
    worker = IngestWorker(config, on_faults=raise_fault_alerts)
    sim_config = SimConfig(
        mqtt_url=mqtt_service.url,
        lamps=20,
        zones=("1",),
        id_prefix=f"o{unique_id}-",
        interval_s=1.0,
        night=True,
    )
    with running(worker):
        async with Simulation(sim_config) as sim:
            await sim.fleet.wait_connected(timeout_s=60)
            assert sim.placement is not None
            dong = sim.placement.lamps[0].dong_code
            lamps = {p.lamp_id for p in sim.placement.lamps if p.dong_code == dong}
            blinkers = {p.blinker_id for p in sim.placement.lamps if p.dong_code == dong}
            devices = lamps | blinkers
            assert len(lamps) >= 10
            sql_online = "SELECT count(*) FROM device_state WHERE online AND device_id = ANY(%s)"
            await until(lambda: count(migrated, sql_online, list(devices)) == len(devices), 60, "all online")

            cut = sim.power_cut(dong, duration_s=20.0)
            assert set(cut) == devices
            sql_loss = "SELECT count(*) FROM events WHERE type = 'power_loss' AND device_id = ANY(%s)"
            await until(lambda: count(migrated, sql_loss, list(devices)) == len(devices), 15, "last gasps")
            await until(lambda: count(migrated, sql_online, list(lamps)) == 0, 15, "the lamps' wills")
            # The last gasps raised nothing on arrival: no alert to fold, none in the console's stream.
            assert count(migrated, SQL_EVER_RAISED, list(devices)) == 0
            counts = await asyncio.to_thread(offline_pass, migrated)
            assert counts["mass_outage_new"] == 1
            assert counts["power_loss_new"] == counts["power_loss_folded"] == 0
            during = active(migrated, devices)
            [outage] = during  # one alert for the outage: no power_loss of a lamp or blinker beside it
            assert outage.kind is AlertKind.MASS_OUTAGE and outage.source_id == dong
            assert outage.areas == (dong,)
            assert set(outage.device_ids) == lamps and outage.count == len(lamps)
            # Long past the power losses' grace, the outage is still their one alert.
            later = datetime.now(UTC) + timedelta(seconds=600)
            counts = await asyncio.to_thread(offline_pass, migrated, later)
            assert counts["power_loss_new"] == 0 and [a.id for a in active(migrated, devices)] == [outage.id]
            assert count(migrated, SQL_EVER_RAISED, list(devices)) == 0
            assert locate(outage.place.lat, outage.place.lon)[1] == dong  # its area: the neighbourhood

            # One pole stays without power after the restore: its lamp dark, its blinker on battery.
            stuck = sorted(sim.placement.lamps, key=lambda p: p.lamp_id)
            stuck_pole = next(p for p in stuck if p.dong_code == dong)
            stuck_lamp, stuck_blinker = stuck_pole.lamp_id, stuck_pole.blinker_id
            sim.fleet.by_id[stuck_lamp].stay_down()
            await until(
                lambda: count(migrated, sql_online, list(lamps - {stuck_lamp})) == len(lamps) - 1,
                60,
                "the lamps back after the restore",
            )
            blinker = sim.fleet.by_id[stuck_blinker]
            since = datetime.now(UTC)
            blinker.send(blinker.firmware.inject(Faults(supply_loss=True), sim.fleet.clock.now_ms()))
            sql_faulty = (
                "SELECT count(*) FROM device_state WHERE device_id = %s AND 'power_loss' = ANY(faults) "
                "AND last_seen > %s"
            )
            await until(
                lambda: count(migrated, sql_faulty, stuck_blinker, since) == 1, 15, "still on battery"
            )
            # While the outage is open, the blinker's new power_loss is still the outage's.
            assert [a.id for a in active(migrated, devices)] == [outage.id]

            counts = await asyncio.to_thread(offline_pass, migrated)
            assert counts["mass_outage_resolved"] == 1
            with psycopg.connect(migrated, autocommit=True) as conn:
                ended = load_alert(conn, outage.id)
            assert ended is not None and ended.state is AlertState.RESOLVED
            # The pole still without power: its lamp (dark) and its blinker (on battery) get one
            # power_loss alert each, at once (the outage was their grace); nothing else stays open.
            assert counts["power_loss_after_outage"] == 2
            after = {(a.kind, a.source_id, a.fault_code) for a in active(migrated, devices)}
            assert after == {
                (AlertKind.LAMP_FAULT, stuck_lamp, "power_loss"),
                (AlertKind.LAMP_FAULT, stuck_blinker, "power_loss"),
            }


def test_a_lone_lamp_losing_power_gets_its_alert_after_the_grace_and_back_online_clears_it(
    migrated: str, unique_id: str
) -> None:
    lamp = f"PL{unique_id}"
    ts = int(time.time() * 1000)

    def batch(*messages: tuple[str, dict[str, object]]) -> None:
        raw = [
            RawMessage(f"sl/v1/11140/{lamp}/{channel}", json.dumps(body).encode())
            for channel, body in messages
        ]
        with psycopg.connect(migrated, autocommit=True) as conn:
            write_batch(
                conn, process(raw, ts, SeqTracker()), raw, datetime.now(UTC), on_faults=raise_fault_alerts
            )

    birth = {"kind": "lamp", "firmware": "1", "model": "X", "lat": 37.5665, "lon": 126.978}
    batch(("birth", {**birth, "bdseq": 1}), ("state", {"state": "online", "bdseq": 1}))
    batch(("event", {"ts": ts, "seq": 1, "type": "power_loss"}), ("state", {"state": "offline", "bdseq": 1}))
    assert active(migrated, {lamp}) == []  # recorded, not raised: an outage may explain it
    assert offline_pass(migrated)["power_loss_new"] == 0  # within the grace
    counts = offline_pass(migrated, datetime.now(UTC) + timedelta(seconds=121))
    assert counts["power_loss_new"] == 1 and counts["device_offline_new"] == 0
    [alert] = active(migrated, {lamp})  # its one alert: the power loss, not an offline beside it
    assert (alert.kind, alert.fault_code) == (AlertKind.LAMP_FAULT, "power_loss")
    batch(("birth", {**birth, "bdseq": 2}), ("state", {"state": "online", "bdseq": 2}))
    assert active(migrated, {lamp}) == []
    with psycopg.connect(migrated, autocommit=True) as conn:
        back = load_alert(conn, alert.id)
    assert back is not None and back.state is AlertState.RESOLVED


async def test_a_cut_over_two_neighbourhoods_of_a_district_is_one_district_outage_alert(
    mqtt_service: MqttService, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    config = WorkerConfig(
        mqtt=parse_mqtt_url(mqtt_service.url),
        database_url=migrated,
        spool_path=tmp_path / "district.spool",
        client_id=f"ingest-{unique_id}",
        shared=False,
        max_delay_s=0.05,
    )
    # 20 lamps over the zones: Jung-gu (11140) has two neighbourhoods of 5 lamps each.
    sim_config = SimConfig(
        mqtt_url=mqtt_service.url, lamps=20, id_prefix=f"d{unique_id}-", interval_s=1.0, night=True
    )
    policy = MassOutagePolicy(min_lamps=5)  # 5 lamps of a dong, whatever else the database holds there

    def district_pass(now: datetime | None = None) -> dict[str, int]:
        with psycopg.connect(migrated, autocommit=True) as conn:
            return raise_offline_alerts(
                conn, now or datetime.now(UTC), silent_after_s=3600, grace_s=120, policy=policy, locate=locate
            )

    with running(IngestWorker(config, on_faults=raise_fault_alerts)):
        async with Simulation(sim_config) as sim:
            await sim.fleet.wait_connected(timeout_s=60)
            assert sim.placement is not None
            poles = [p for p in sim.placement.lamps if p.district_code == "11140"]
            dongs = sorted({p.dong_code for p in poles})
            assert len(dongs) == 2, dongs
            lamps = {p.lamp_id for p in poles}
            devices = lamps | {p.blinker_id for p in poles}
            sql_online = "SELECT count(*) FROM device_state WHERE online AND device_id = ANY(%s)"
            await until(lambda: count(migrated, sql_online, list(devices)) == len(devices), 60, "all online")

            for dong in dongs:
                sim.power_cut(dong, duration_s=15.0)
            sql_loss = "SELECT count(*) FROM events WHERE type = 'power_loss' AND device_id = ANY(%s)"
            await until(lambda: count(migrated, sql_loss, list(devices)) == len(devices), 15, "last gasps")
            await until(lambda: count(migrated, sql_online, list(lamps)) == 0, 15, "the lamps' wills")
            counts = await asyncio.to_thread(district_pass)
            assert counts["mass_outage_new"] == 1 and counts["mass_outage_merged"] == 0
            [outage] = active(migrated, devices)  # one alert for the district's outage, nothing beside it
            assert outage.kind is AlertKind.MASS_OUTAGE and outage.source_id == "district:11140"
            assert outage.areas == tuple(dongs) and outage.place.district_code == "11140"
            assert outage.place.dong_code == ""  # its place is the district
            assert set(outage.device_ids) == lamps and outage.count == len(lamps)
            assert count(migrated, SQL_EVER_RAISED, list(devices)) == 0

            await until(lambda: count(migrated, sql_online, list(lamps)) == len(lamps), 60, "the lamps back")
            blinkers = sorted(devices - lamps)
            sql_cleared = (
                "SELECT count(DISTINCT device_id) FROM events "
                "WHERE type = 'fault_cleared' AND device_id = ANY(%s)"
            )
            await until(
                lambda: count(migrated, sql_cleared, blinkers) == len(blinkers), 15, "the blinkers' clears"
            )
            counts = await asyncio.to_thread(district_pass, datetime.now(UTC) + timedelta(seconds=600))
            assert counts["mass_outage_resolved"] == 1 and counts["power_loss_after_outage"] == 0
            assert active(migrated, devices) == []
