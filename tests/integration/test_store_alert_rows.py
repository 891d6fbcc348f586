"""Alerts saved, changed under a row lock, and announced on the wake-up channel."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from alerts import (
    AlertKind,
    InvalidTransition,
    Place,
    Position,
    acknowledge,
    add_position,
    new_alert,
    resolve,
)
from store import alert_events, alert_track, migrate
from store.alerts import AlertNotFound, active_alerts, change_alert, load_alert, save_alert
from store.notes import ALERT_CHANNEL

Conn = psycopg.Connection[Any]
T0 = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
PLACE = Place(lat=37.5665, lon=126.978, district_code="11140", district_name="중구", neighbours=("11110",))


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    migrate(db_url, timescale=False)  # the plain path, pinned
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _sos(alert_id: str = "A1") -> Any:
    pos = Position(lat=PLACE.lat, lon=PLACE.lon, at=T0, accuracy_m=10.0)
    return new_alert(
        alert_id=alert_id, kind=AlertKind.SOS, place=PLACE, source_id="res-1", now=T0, track=(pos,)
    )


def test_a_saved_alert_loads_back_equal_with_its_trail_and_track(conn: Conn) -> None:
    alert = _sos()
    with conn.transaction():
        save_alert(conn, alert, resident_id="res-1")
    assert load_alert(conn, "A1") == alert
    assert [e["action"] for e in alert_events(conn, "A1")] == ["created"]
    assert len(alert_track(conn, "A1")) == 1
    assert load_alert(conn, "nope") is None


def test_a_change_is_written_once_and_announced_at_commit(db_url: str, conn: Conn) -> None:
    with conn.transaction():
        save_alert(conn, _sos())
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {ALERT_CHANNEL}")
        later = T0 + timedelta(seconds=20)
        pos = Position(lat=37.567, lon=126.979, at=later, accuracy_m=8.0)
        change_alert(conn, "A1", lambda a: add_position(a, pos, later))
        change_alert(conn, "A1", lambda a: acknowledge(a, later, "op-jung"))
        notes = [json.loads(n.payload) for n in listener.notifies(timeout=2.0, stop_after=3)]
    assert [n["action"] for n in notes][-1] == "acknowledged"
    assert notes[-1]["districts"] == ["11140", "11110"]
    stored = load_alert(conn, "A1")
    assert stored is not None and stored.state.value == "acknowledged"
    assert [e["action"] for e in alert_events(conn, "A1")] == ["created", "position", "acknowledged"]
    assert len(alert_track(conn, "A1")) == 2
    row = conn.execute("SELECT acknowledged_by, status FROM alerts WHERE alert_id='A1'").fetchone()
    assert row == ("op-jung", "acknowledged")


def test_a_refused_transition_writes_nothing(conn: Conn) -> None:
    with conn.transaction():
        save_alert(conn, _sos())
    with pytest.raises(InvalidTransition):
        change_alert(conn, "A1", lambda a: resolve(a, T0, "op"))  # an SOS is never resolved unacknowledged
    assert [e["action"] for e in alert_events(conn, "A1")] == ["created"]
    with pytest.raises(AlertNotFound):
        change_alert(conn, "missing", lambda a: a)


def test_active_alerts_filter_by_district_and_source(conn: Conn) -> None:
    with conn.transaction():
        save_alert(conn, _sos("A1"))
        save_alert(conn, _sos("A2"))
    change_alert(conn, "A2", lambda a: acknowledge(a, T0, "op"))
    assert [a.id for a in active_alerts(conn, districts=["11110"])] == ["A1", "A2"]
    assert active_alerts(conn, districts=["11680"]) == []
    assert [a.id for a in active_alerts(conn, source_id="res-1", kinds=["sos"])] == ["A1", "A2"]
