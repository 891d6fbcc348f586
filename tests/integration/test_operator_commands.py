"""An operator's commands against the real API, controller, database and broker, with simulated
lamps that answer over MQTT: every override has a status the operator can follow (applied,
rejected with the lamp's reason, unanswered, undelivered) and none is dropped without a word."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest

from api.accounts import create_operator
from api.security import password_hasher
from broker import parse_mqtt_url
from controller import Controller, ControllerConfig
from devkit.apiclient import GANGNAM, JUNG, PASSWORD, fast_config, login, seed, serve
from devkit.bench.controller import LampFleet, LampSpec
from devkit.localservices import MqttService
from store import set_connectivity, upsert_device
from store.commands import CommandRecord, insert_pending
from tests.helpers import controller_running

pytestmark = pytest.mark.integration

DISTRICT = "11020"  # Jung-gu, op-jung's
OTHER = "11230"  # Gangnam-gu
M_LAT = 1 / 111_000


@pytest.fixture
def api(db_url: str) -> Iterator[httpx.Client]:
    seed(db_url, [("cg1", OTHER, GANGNAM[0], GANGNAM[1] + 0.0001)])
    with psycopg.connect(db_url, autocommit=True) as conn:
        # Jung-gu's own maintenance: overrides its lamps, sees no other district's.
        create_operator(
            conn, "maint-jung", PASSWORD, role="maintenance", district=DISTRICT, hasher=password_hasher(1, 8)
        )
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        yield c


@contextlib.asynccontextmanager
async def controller(db_url: str, mqtt_service: MqttService) -> AsyncIterator[Controller]:
    """A controller for Jung-gu that reloads its devices only once an hour (so a lamp provisioned
    after it started is not in its cache)."""
    cfg = ControllerConfig(
        mqtt=parse_mqtt_url(mqtt_service.url),
        database_url=db_url,
        districts=(DISTRICT,),
        owner=f"test-{uuid.uuid4().hex[:8]}",
        lease_ttl_s=1.5,
        tick_s=0.05,
        retry_after_s=0.5,
        lamps_refresh_s=3600.0,
    )
    async with controller_running(cfg) as ctl:
        yield ctl


def provision(db_url: str, device_id: str, i: int, *, online: bool = True) -> LampSpec:
    """A lamp written to the register now (and connected, as ingest records at its birth)."""
    spec = LampSpec(device_id, DISTRICT, JUNG[0] + i * 20 * M_LAT, JUNG[1])
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_device(conn, device_id, kind="lamp", district_code=DISTRICT, lat=spec.lat, lon=spec.lon)
        if online:
            set_connectivity(conn, device_id, online=True, bdseq=1)
    return spec


async def get(api: httpx.Client, path: str, headers: dict[str, str]) -> Any:
    r = await asyncio.to_thread(api.get, path, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


async def status_of(
    api: httpx.Client, headers: dict[str, str], cmd_id: str, want: set[str], timeout_s: float = 10.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = await asyncio.to_thread(api.get, f"/v1/commands/{cmd_id}", headers=headers)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        if body["status"] in want:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"command {cmd_id} is {body['status']}, not one of {sorted(want)}")
        await asyncio.sleep(0.1)


def override(api: httpx.Client, headers: dict[str, str], device_id: str, level: int = 70) -> dict[str, Any]:
    r = api.post(f"/v1/lamps/{device_id}/override", json={"level": level, "duration_s": 600}, headers=headers)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == "pending" and body["status_url"] == f"/v1/commands/{body['cmd_id']}"
    return body


async def test_an_override_for_a_lamp_provisioned_a_second_ago_reaches_it_and_shows_applied(
    api: httpx.Client, db_url: str, mqtt_service: MqttService
) -> None:
    op = login(api, "maint-jung")
    async with controller(db_url, mqtt_service) as ctl:
        spec = provision(db_url, "cnew1", 1)  # after the controller loaded its devices
        assert ctl._devices.get("cnew1") is None
        with LampFleet(ctl.cfg.mqtt, [spec]) as fleet:
            sent = override(api, op, "cnew1", level=70)
            pending = await get(api, sent["status_url"], op)
            assert pending["status"] in {"pending", "sent", "applied"} and pending["final"] is (
                pending["status"] == "applied"
            )
            done = await status_of(api, op, sent["cmd_id"], {"applied"})
            assert done["final"] and done["effective_level"] == 70 and done["reason"] is None
            assert done["source"] == "operator:maint-jung" and done["attempts"] == 1
            assert fleet.commands_for("cnew1")[0]["cmd_id"] == sent["cmd_id"]
            assert fleet.sources("cnew1") == {"operator:maint-jung": (70, False)}
        # The lamp panel's list: the lamp's latest commands, newest first, with their status.
        listed = (await get(api, "/v1/lamps/cnew1/commands", op))["commands"]
        assert [(c["cmd_id"], c["status"]) for c in listed] == [(sent["cmd_id"], "applied")]
        detail = await get(api, "/v1/lamps/cnew1", op)
        assert [c["status"] for c in detail["commands"]] == ["applied"]


async def test_a_lamp_that_rejects_shows_rejected_with_its_reason_and_a_silent_one_unanswered(
    api: httpx.Client, db_url: str, mqtt_service: MqttService
) -> None:
    op = login(api, "maint-jung")
    async with controller(db_url, mqtt_service) as ctl:
        refusing, silent = provision(db_url, "cref1", 2), provision(db_url, "csil1", 3)
        with LampFleet(
            ctl.cfg.mqtt, [refusing, silent], silent=["csil1"], refusing={"cref1": "driver overheated"}
        ) as fleet:
            rejected = override(api, op, "cref1")
            unanswered = override(api, op, "csil1")
            r = await status_of(api, op, rejected["cmd_id"], {"rejected"})
            assert r["reason"] == "driver overheated" and r["final"]
            # Sent, sent again after retry_after_s, then given up on: the lamp never answered.
            u = await status_of(api, op, unanswered["cmd_id"], {"unanswered"})
            assert u["attempts"] == 2 and not u["final"]
            assert [c["cmd_id"] for c in fleet.commands_for("csil1")] == [unanswered["cmd_id"]] * 2


async def test_an_offline_lamp_is_undelivered_and_a_lost_note_is_still_sent(
    api: httpx.Client, db_url: str, mqtt_service: MqttService
) -> None:
    op = login(api, "maint-jung")
    async with controller(db_url, mqtt_service) as ctl:
        asleep, lamp = provision(db_url, "coff1", 4, online=False), provision(db_url, "clost1", 5)
        with LampFleet(ctl.cfg.mqtt, [asleep, lamp]) as fleet:
            off = override(api, op, "coff1")
            o = await status_of(api, op, off["cmd_id"], {"undelivered"})
            assert o["reason"] == "offline" and o["final"] and o["attempts"] == 0
            assert fleet.commands_for("coff1") == []
            # A pending row whose note never reached a controller (written without NOTIFY).
            with psycopg.connect(db_url, autocommit=True) as conn:
                insert_pending(
                    conn,
                    CommandRecord(
                        cmd_id="op.lost-note",
                        device_id="clost1",
                        action="set_level",
                        priority="manual",
                        source="operator:maint-jung",
                        ttl_s=600,
                        sent_at=datetime.now(UTC),
                        level=40,
                        district_code=DISTRICT,
                    ),
                )
            swept = await status_of(api, op, "op.lost-note", {"applied"})
            assert swept["effective_level"] == 40
            assert ctl.stats["pending_swept"] >= 1


def test_an_override_or_a_command_of_another_districts_lamp_is_404(api: httpx.Client, db_url: str) -> None:
    jung, maint = login(api, "maint-jung"), login(api, "op-maint")
    r = api.post("/v1/lamps/cg1/override", json={"level": 50, "duration_s": 60}, headers=jung)
    assert r.status_code == 404 and "not found in your districts" in r.json()["detail"]
    theirs = api.post("/v1/lamps/cg1/override", json={"level": 50, "duration_s": 60}, headers=maint)
    assert theirs.status_code == 202
    cmd_id = theirs.json()["cmd_id"]
    assert api.get(f"/v1/commands/{cmd_id}", headers=jung).status_code == 404
    assert api.get("/v1/lamps/cg1/commands", headers=jung).status_code == 404
    assert api.get(f"/v1/commands/{cmd_id}", headers=maint).json()["status"] == "pending"
    assert api.get("/v1/commands/nope", headers=maint).status_code == 404
    assert api.get(f"/v1/commands/{'x' * 300}", headers=maint).status_code == 404
    # A district operator follows the commands to the district's lamps, never another's.
    assert api.get(f"/v1/commands/{cmd_id}", headers=login(api, "op-gangnam")).status_code == 200
    assert api.get(f"/v1/commands/{cmd_id}", headers=login(api, "op-jung")).status_code == 404
