"""What one lamp's valid credentials can do through the services (issue 15), tried as the attacker
would: the messages go out with Mosquitto's own ``mosquitto_pub`` on the attacker's own topics,
against a real broker and PostgreSQL and the real ingest worker and controller."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from alerts import AlertKind, Place, Position, new_alert
from broker import ConnectionParams, parse_mqtt_url
from controller import Controller, ControllerConfig
from store import migrate, upsert_device
from store.alertstore import load_alert, save_alert
from streetlight.bench.controller import LampFleet, LampSpec
from streetlight.localservices import MqttService
from tests.conftest import skip_unless

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


@contextlib.asynccontextmanager
async def running(cfg: ControllerConfig) -> AsyncIterator[Controller]:
    controller = Controller(cfg)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.ready.wait(), 10)
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.05)


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
    migrate(db_url)
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
        lease_ttl_s=2.0,
        tick_s=0.05,
        retry_after_s=0.5,
    )
    alert_id = f"SOS-{unique_id}"
    with (
        LampFleet(params, lamps, silent=[dark]) as fleet,
        psycopg.connect(db_url, autocommit=True) as conn,
    ):
        async with running(cfg) as ctl:
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
