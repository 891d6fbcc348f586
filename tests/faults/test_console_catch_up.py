"""A reconnecting console is sent every open SOS again, however many are open (issue #8, scenario 5)."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from alerts import AlertKind, Place, Position, new_alert
from store import migrate
from store.alerts import save_alert, stream_catch_up

pytestmark = [pytest.mark.integration]


def test_catch_up_returns_every_active_alert_beyond_five_hundred(db_url: str) -> None:
    migrate(db_url, timescale=False)
    now = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        for i in range(620):
            place = Place(lat=37.561, lon=126.994, district_code="11140", district_name="중구")
            alert = new_alert(
                alert_id=f"sos-catchup-{i:04d}",
                kind=AlertKind.SOS,
                place=place,
                source_id=f"res-{i}",
                now=now,
                track=(Position(37.561, 126.994, now, 8.0),),
            )
            save_alert(conn, alert)
        rows = stream_catch_up(conn, after_event_id=0, district_codes=None, kinds=None)
    ids = {str(r["alert_id"]) for r in rows}
    assert {f"sos-catchup-{i:04d}" for i in range(620)} <= ids
