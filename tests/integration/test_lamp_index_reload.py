"""The lamp indexes of the API (`api.places.LampDirectory`) and the controller
(`controller._devices.Devices`) against a real PostgreSQL: the periodic reload rebuilds an index
only when the devices changed, and then always sees the change, however it was written."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from api.places import LampDirectory
from controller._devices import Devices
from store import migrate
from store.connections import connect
from store.dbthread import DbThread
from store.devices import upsert_device

pytestmark = pytest.mark.integration

JUNG = "11140"


def _seed(db_url: str) -> None:
    migrate(db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for k in range(3):
            upsert_device(
                conn,
                f"lamp-{k}",
                kind="lamp",
                district_code=JUNG,
                lamp_number=f"J-{k}",
                lat=37.5640 + k * 0.001,
                lon=126.9970,
            )


def _move(db_url: str, device_id: str, lat: float, lon: float) -> None:
    # A plain UPDATE that leaves updated_at alone (a repair by hand): still a change.
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE devices SET lat = %s, lon = %s WHERE device_id = %s", (lat, lon, device_id))


def test_api_lamp_directory_keeps_its_index_until_a_lamp_moves(db_url: str) -> None:
    _seed(db_url)
    lamps = LampDirectory()
    with connect(db_url) as conn:
        assert lamps.refresh(conn) == 3
        first = lamps.snapshot
        assert lamps.refresh(conn) == 3
        assert lamps.snapshot is first  # nothing changed: the same index, not a rebuilt copy

        _move(db_url, "lamp-0", 37.5700, 127.0100)
        assert lamps.refresh(conn) == 3
        moved = lamps.snapshot
        assert moved is not first
        assert moved.index.nearest(37.5700, 127.0100, 1).ids == ("lamp-0",)

        with conn.transaction():
            conn.execute("UPDATE devices SET lamp_number = 'J-99' WHERE device_id = 'lamp-1'")
        lamps.refresh(conn)
        assert lamps.snapshot.numbers["lamp-1"] == "J-99"


def test_controller_devices_reload_only_when_the_devices_changed(db_url: str) -> None:
    _seed(db_url)

    async def scenario() -> None:
        devices = Devices()
        db = DbThread(db_url, name="test-db")
        try:
            await devices.reload(db)
            first = devices.index
            assert len(first) == 3
            await devices.reload(db)
            assert devices.index is first

            _move(db_url, "lamp-2", 37.5500, 126.9800)
            await devices.reload(db)
            assert devices.index is not first
            assert devices.nearest(37.5500, 126.9800, 1) == ("lamp-2",)

            with psycopg.connect(db_url, autocommit=True) as conn:
                conn.execute("DELETE FROM devices WHERE device_id = 'lamp-1'")
            await devices.reload(db)
            assert len(devices.index) == 2
            assert devices.get("lamp-1") is None
        finally:
            db.close()

    asyncio.run(scenario())
