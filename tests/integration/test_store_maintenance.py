"""The reads of ingest's maintenance planning, and the locks that serialise its decisions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts import DeviceLiveness, DeviceRecord
from store import migrate
from store.maintenance import (
    dark_candidates,
    decisions,
    device_records,
    lamp_snapshots,
    lamps_per_dong,
    lock_decisions,
)

Conn = psycopg.Connection[Any]
NOW = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
DONG = "1114052000"


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    migrate(db_url, timescale=False)
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _device(
    conn: Conn,
    device_id: str,
    *,
    kind: str = "lamp",
    dong: str | None = DONG,
    lat: float | None = 37.56,
    online: bool | None = None,
    changed_s: float | None = None,
    seen_s: float | None = None,
    faults: tuple[str, ...] = (),
    level: int | None = None,
    power_w: float | None = None,
) -> None:
    conn.execute(
        "INSERT INTO devices (device_id, kind, district_code, dong_code, lat, lon) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (device_id, kind, "11140", dong, lat, None if lat is None else 126.97),
    )
    if online is None:
        return
    conn.execute(
        "INSERT INTO device_state (device_id, online, state_changed_at, last_seen, faults, level, "
        "last_telemetry) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            device_id,
            online,
            None if changed_s is None else NOW - timedelta(seconds=changed_s),
            None if seen_s is None else NOW - timedelta(seconds=seen_s),
            list(faults),
            level,
            None if power_w is None else json.dumps({"power_w": power_w}),
        ),
    )


def _command(conn: Conn, cmd_id: str, device_id: str, *, action: str, priority: str, sent_s: float) -> None:
    sent = NOW - timedelta(seconds=sent_s)
    conn.execute(
        "INSERT INTO commands (cmd_id, device_id, action, level, priority, source, ttl_s, sent_at, "
        "expires_at, status) VALUES (%s, %s, %s, 0, %s, 'op-1', 600, %s, %s, 'applied')",
        (cmd_id, device_id, action, priority, sent, sent + timedelta(seconds=600)),
    )


def test_device_records_carry_the_stored_faults_and_an_empty_dong_when_none(conn: Conn) -> None:
    _device(conn, "L1", online=True, seen_s=5, faults=("lamp_failure",))
    _device(conn, "L2", dong=None, lat=None)
    records = device_records(conn, ["L1", "L2", "ghost"])
    assert records == {
        "L1": DeviceRecord("L1", "lamp", "11140", DONG, 37.56, 126.97, frozenset({"lamp_failure"})),
        "L2": DeviceRecord("L2", "lamp", "11140", "", None, None, frozenset()),
    }


def test_dark_candidates_are_the_offline_and_the_silent_devices(conn: Conn) -> None:
    _device(conn, "will", online=False, changed_s=30, seen_s=40)
    _device(conn, "silent", online=True, changed_s=900, seen_s=400)
    _device(conn, "reconnected", online=True, changed_s=100, seen_s=400)
    _device(conn, "heard", online=True, changed_s=900, seen_s=10)
    _device(conn, "never", online=False)
    rows = dark_candidates(conn, silent_since=NOW - timedelta(seconds=180))
    assert sorted(r.device_id for r in rows) == ["silent", "will"]
    will = next(r for r in rows if r.device_id == "will")
    assert will == DeviceLiveness(
        "will",
        False,
        NOW - timedelta(seconds=30),
        NOW - timedelta(seconds=40),
        "lamp",
        "11140",
        DONG,
        37.56,
        126.97,
    )


def test_lamps_are_counted_per_dong_without_blinkers_or_lamps_without_one(conn: Conn) -> None:
    for i in range(3):
        _device(conn, f"L{i}")
    _device(conn, "B1", kind="blinker")
    _device(conn, "X", dong=None)
    assert lamps_per_dong(conn) == {DONG: 3}


def test_lamp_snapshots_are_fresh_placed_lamps_with_their_power_and_overrides_in_force(conn: Conn) -> None:
    _device(conn, "plain", online=True, seen_s=30, level=100, power_w=41.5, faults=("overheat",))
    _device(conn, "walked", online=True, seen_s=30, level=0)
    _command(conn, "c1", "walked", action="set_level", priority="walk", sent_s=60)
    _device(conn, "cleared", online=True, seen_s=30, level=0)
    _command(conn, "c2", "cleared", action="set_level", priority="manual", sent_s=300)
    _command(conn, "c3", "cleared", action="clear", priority="manual", sent_s=200)
    _device(conn, "scheduled", online=True, seen_s=30, level=0)
    _command(conn, "c4", "scheduled", action="set_level", priority="schedule", sent_s=60)
    _device(conn, "stale", online=True, seen_s=400, level=100)
    _device(conn, "unplaced", online=True, seen_s=30, level=100, lat=None)
    _device(conn, "blinker", kind="blinker", online=True, seen_s=30, level=100)
    snaps = {
        s.device_id: s
        for s in lamp_snapshots(conn, fresh_since=NOW - timedelta(seconds=180), now=NOW, override_slack_s=60)
    }
    assert sorted(snaps) == ["cleared", "plain", "scheduled", "walked"]
    plain = snaps["plain"]
    assert (plain.power_w, plain.level, plain.faults, plain.at) == (
        41.5,
        100,
        frozenset({"overheat"}),
        NOW - timedelta(seconds=30),
    )
    assert (plain.district_code, plain.dong_code, plain.online) == ("11140", DONG, True)
    assert {d: s.override for d, s in snaps.items()} == {
        "plain": False,
        "walked": True,
        "cleared": False,
        "scheduled": False,
    }


def test_a_decision_waits_for_another_workers_decision_about_the_same_device(db_url: str, conn: Conn) -> None:
    with psycopg.connect(db_url, autocommit=True) as other, decisions(conn, "L1"):
        with pytest.raises(psycopg.errors.LockNotAvailable), other.transaction():
            other.execute("SET LOCAL lock_timeout = '100ms'")
            lock_decisions(other, "L1")
        with other.transaction():
            lock_decisions(other, "L2")  # another device: no wait
    with psycopg.connect(db_url, autocommit=True) as again, again.transaction():
        again.execute("SET LOCAL lock_timeout = '100ms'")
        lock_decisions(again, "L1")  # released when the decision committed
