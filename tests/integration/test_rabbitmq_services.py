"""The services on a private RabbitMQ node (issue 16, "A second real broker"): the real ingest
worker, controller and API with simulated lamps, and the devices' state resync that works without
retained messages on wildcard subscriptions (RabbitMQ sends them only on exact topics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from broker import paho_client, parse_mqtt_url
from controller import Controller, ControllerConfig
from devkit.apiclient import fast_config, login, seed, serve
from devkit.localservices import MqttService
from firmware_sim.fleet import DeviceLink, Endpoint, Fleet
from firmware_sim.placement import Placement, place_lamps
from ingest import IngestWorker, WorkerConfig, raise_fault_alerts
from tests.helpers import online_states

pytestmark = pytest.mark.integration


def _placement(prefix: str, lamps: int) -> Placement:
    return place_lamps(lamps, zones=["1"], id_prefix=prefix)


def _fleet(svc: MqttService, placement: Placement, interval_s: float) -> Fleet:
    fleet = Fleet([Endpoint(svc.host, svc.port)], interval_s=interval_s)
    fleet.add_placement(placement, with_blinkers=False)
    return fleet


def _worker(svc: MqttService, db_url: str, tmp: Path, name: str, **changes: Any) -> IngestWorker:
    config = WorkerConfig(
        mqtt=parse_mqtt_url(svc.url),
        database_url=db_url,
        spool_path=tmp / f"{name}.spool",
        client_id=name,
        shared=False,
        max_delay_s=0.05,
    )
    return IngestWorker(replace(config, **changes), on_faults=raise_fault_alerts)


@contextlib.asynccontextmanager
async def ingesting(worker: IngestWorker) -> AsyncIterator[IngestWorker]:
    """The worker on its own thread, subscribed, for the block (tests/helpers.py's ``running``)."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(worker.wait_connected, 15), "ingest did not subscribe"
        yield worker
    finally:
        worker.stop()
        await asyncio.to_thread(thread.join, 20)


async def until(what: str, cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await asyncio.to_thread(cond):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.2)


@contextlib.contextmanager
def api_lamps(db_url: str) -> Iterator[Callable[[], dict[str, bool]]]:
    """A fresh API: the operators' lamp map as {device id: online}."""
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        headers = login(c, "op-city")

        def lamps() -> dict[str, bool]:
            r = c.get("/v1/lamps", headers=headers)
            assert r.status_code == 200, r.text
            return {f["properties"]["device_id"]: f["properties"]["online"] for f in r.json()["features"]}

        yield lamps


async def test_an_ingest_started_after_the_lamps_went_online_on_rabbitmq_learns_they_are_online(
    rabbitmq_service: MqttService, db_url: str, unique_id: str, tmp_path: Path
) -> None:
    placement = _placement(f"r{unique_id}-", 6)
    ids = [lamp.lamp_id for lamp in placement.lamps]
    # Provisioning registered the lamps; the fresh ingest missed their births and states.
    seed(db_url, [(lamp.lamp_id, lamp.district_code, lamp.lat_deg, lamp.lon_deg) for lamp in placement.lamps])
    fleet = _fleet(rabbitmq_service, placement, interval_s=1.0)
    async with fleet:
        assert await fleet.wait_connected(timeout_s=30)
        dead: DeviceLink = fleet.by_id[ids[-1]]
        dead.stay_down()  # its retained offline will, before ingest exists
        await asyncio.sleep(1.0)
        worker = _worker(rabbitmq_service, db_url, tmp_path, f"fresh-{unique_id}")
        async with ingesting(worker):
            live = ids[:-1]
            await until(
                "the live lamps online", lambda: online_states(db_url, live) == dict.fromkeys(live, True), 30
            )
            assert worker.metrics.state_resyncs >= len(live)
        with api_lamps(db_url) as lamps:
            seen = await asyncio.to_thread(lamps)
    assert {i: seen[i] for i in ids} == {**dict.fromkeys(ids[:-1], True), ids[-1]: False}


class Centre:
    """A control centre's client on RabbitMQ: the alerts arriving on cc/v1/{d}/alerts."""

    def __init__(self, svc: MqttService, district: str) -> None:
        self.alerts: list[dict[str, Any]] = []
        ready = threading.Event()
        self.client = paho_client(parse_mqtt_url(svc.url), f"cc-{district}-{time.monotonic_ns()}")
        self.client.on_connect = lambda c, *_a: c.subscribe(f"cc/v1/{district}/alerts", qos=1)
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = lambda _c, _u, m: self.alerts.append(json.loads(m.payload))
        self.client.connect(svc.host, svc.port)
        self.client.loop_start()
        assert ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _count(db_url: str, sql: str, *params: object) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


async def test_births_telemetry_a_walk_an_sos_and_a_will_go_through_the_services_on_rabbitmq(
    rabbitmq_service: MqttService, db_url: str, unique_id: str, tmp_path: Path
) -> None:
    seed(db_url)  # the schema and the operators; the lamps register themselves by their births
    placement = _placement(f"e{unique_id}-", 8)
    lamps = placement.lamps
    ids = [lamp.lamp_id for lamp in lamps]
    district = lamps[0].district_code
    params = parse_mqtt_url(rabbitmq_service.url)
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=tuple(sorted({lamp.district_code for lamp in lamps})),
        owner=f"test-{uuid.uuid4().hex[:8]}",
        lease_ttl_s=1.5,
        tick_s=0.05,
        retry_after_s=0.5,
        lamps_refresh_s=0.5,  # the lamps register by their births after the controller starts
    )
    worker = _worker(rabbitmq_service, db_url, tmp_path, f"e2e-{unique_id}")
    centre = Centre(rabbitmq_service, district)
    controller = Controller(cfg)
    ctl_task = asyncio.create_task(controller.run())
    try:
        async with ingesting(worker):
            await asyncio.wait_for(controller.ready.wait(), 20)
            fleet = _fleet(rabbitmq_service, placement, interval_s=1.0)
            async with fleet:
                assert await fleet.wait_connected(timeout_s=30)
                # births and connectivity
                await until(
                    "births",
                    lambda: (
                        _count(db_url, "SELECT count(*) FROM devices WHERE device_id = ANY(%s)", ids) == 8
                    ),
                    30,
                )
                await until("online", lambda: online_states(db_url, ids) == dict.fromkeys(ids, True), 30)
                await until(
                    "telemetry",
                    lambda: (
                        _count(
                            db_url,
                            "SELECT count(DISTINCT device_id) FROM telemetry WHERE device_id = ANY(%s)",
                            ids,
                        )
                        == 8
                    ),
                    30,
                )
                await asyncio.sleep(1.0)  # the controller's next reload of the lamps
                with serve(fast_config(db_url)) as base:
                    async with httpx.AsyncClient(base_url=base, timeout=10.0) as c:
                        token = (await c.post("/v1/residents")).json()["token"]
                        me = {"Authorization": f"Bearer {token}"}
                        at = {"lat": lamps[0].lat_deg, "lon": lamps[0].lon_deg, "accuracy_m": 5.0}
                        # a walk: the lamps around are brightened by the controller and ack
                        r = await c.post(
                            "/v1/walks", json={**at, "heading_deg": 0.0, "speed_mps": 1.4}, headers=me
                        )
                        assert r.status_code == 201, r.text
                        walk_id = r.json()["walk_id"]
                        applied = "SELECT count(*) FROM commands WHERE source = %s AND status = 'applied'"
                        await until(
                            "walk commands applied", lambda: _count(db_url, applied, walk_id) >= 1, 30
                        )
                        assert fleet.firmware(ids[0]).output(fleet.clock.now_ms()).level == 100
                        # an SOS: routed to the district's centre, the nearest lamps blink
                        r = await c.post("/v1/sos", json=at, headers=me)
                        assert r.status_code == 202, r.text
                        alert_id = r.json()["alert_id"]
                        await until(
                            "the centre got the alert",
                            lambda: any(a.get("alert_id") == alert_id for a in centre.alerts),
                            30,
                        )
                        blink = applied + " AND action = 'blink'"
                        await until("lamps blinking", lambda: _count(db_url, blink, alert_id) >= 1, 30)
                # a will: a lamp that loses power shows offline
                fleet.by_id[ids[1]].stay_down()
                await until(
                    "the dead lamp offline", lambda: online_states(db_url, [ids[1]]) == {ids[1]: False}, 60
                )
                assert online_states(db_url, ids[2:]) == dict.fromkeys(ids[2:], True)
    finally:
        ctl_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ctl_task
        centre.close()
