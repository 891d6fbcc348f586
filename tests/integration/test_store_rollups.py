"""Hourly rollups on both storage paths: late rows, dropped raw data, job order, indexes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from store import drop_expired_partitions, refresh_rollups, upsert_device, write_telemetry
from tests.helpers import run_job_now, run_storage_jobs

Conn = psycopg.Connection[Any]
HOUR = timedelta(hours=1)


@pytest.fixture
def conn(storage_url: str) -> Iterator[Conn]:
    with psycopg.connect(storage_url, autocommit=True) as c:
        yield c


def _now_hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _row(ts: datetime, device: str, seq: int, power_w: float = 30.0) -> tuple[object, ...]:
    return (int(ts.timestamp() * 1000), device, 1, seq, 80, power_w, 220.0, 0.14, 20.0, 2.0, [],
            None, None, None, None)  # fmt: skip


def _lamps(conn: Conn, *names: str, district: str = "11230") -> None:
    for name in names:
        upsert_device(conn, name, kind="lamp", district_code=district, lat=37.57, lon=127.04, firmware="1")


def _hours(conn: Conn, start: datetime, end: datetime, per_hour: int = 2) -> int:
    rows = [
        _row(start + i * HOUR + timedelta(minutes=m), dev, i * 100 + m)
        for i in range(int((end - start) / HOUR))
        for m in range(0, 60, 60 // per_hour)
        for dev in ("lamp-a", "lamp-b")
    ]
    return write_telemetry(conn, rows)


def _aggregate_vs_raw(conn: Conn, since: datetime) -> tuple[list[Any], list[Any]]:
    agg = conn.execute(
        "SELECT bucket, device_id, samples FROM telemetry_hourly_lamp WHERE bucket >= %s ORDER BY 1, 2",
        (since,),
    ).fetchall()
    raw = conn.execute(
        "SELECT date_trunc('hour', ts), device_id, count(*) FROM telemetry "
        "WHERE ts >= %s AND level IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
        (since,),
    ).fetchall()
    return agg, raw


def _districts_vs_raw(conn: Conn, since: datetime) -> tuple[list[Any], list[Any]]:
    agg = conn.execute(
        "SELECT bucket, lamps_online FROM telemetry_hourly_district WHERE bucket >= %s ORDER BY 1", (since,)
    ).fetchall()
    raw = conn.execute(
        "SELECT date_trunc('hour', ts), count(DISTINCT device_id) FROM telemetry "
        "WHERE ts >= %s AND level IS NOT NULL GROUP BY 1 ORDER BY 1",
        (since,),
    ).fetchall()
    return agg, raw


def _compress_old_chunks(conn: Conn) -> None:
    conn.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry', older_than => INTERVAL '2 days') c")


def test_rows_arriving_hours_or_days_late_reach_the_aggregates_once_the_jobs_have_run(
    conn: Conn, storage: str
) -> None:
    now = _now_hour()
    _lamps(conn, "lamp-a", "lamp-b")
    _hours(conn, now - 6 * 24 * HOUR, now - HOUR)
    if storage == "timescaledb":
        _compress_old_chunks(conn)  # a late row for a compressed day goes through the columnstore
    run_storage_jobs(conn)
    since = now - 6 * 24 * HOUR
    assert _aggregate_vs_raw(conn, since)[0] == _aggregate_vs_raw(conn, since)[1]
    # A spool replayed after an outage, a lamp with a wrong clock: 10 hours and 5 days late.
    late = [
        _row(now - 10 * HOUR + timedelta(minutes=7), "lamp-a", 90_001),
        _row(now - 5 * 24 * HOUR + timedelta(minutes=9), "lamp-b", 90_002),
        _row(now - 5 * 24 * HOUR + timedelta(minutes=11), "lamp-c", 90_003),  # a third lamp that hour
    ]
    _lamps(conn, "lamp-c")
    assert write_telemetry(conn, late) == 3
    run_storage_jobs(conn)
    agg, raw = _aggregate_vs_raw(conn, since)
    assert agg == raw
    districts, raw_districts = _districts_vs_raw(conn, since)
    assert districts == raw_districts
    assert (now - 5 * 24 * HOUR, 3) in districts


def test_an_early_refresh_keeps_the_aggregates_of_hours_whose_raw_rows_were_dropped(
    conn: Conn, storage: str
) -> None:
    now = _now_hour()
    _lamps(conn, "lamp-a", "lamp-b")
    _hours(conn, now - 5 * 24 * HOUR, now - HOUR)
    run_storage_jobs(conn)
    before = conn.execute("SELECT count(*) FROM telemetry_hourly_lamp").fetchone()
    assert before is not None and before[0] == 2 * (5 * 24 - 1)
    # Raw retention of 2 days drops the older raw rows (partitions/default rows; whole chunks).
    if storage == "timescaledb":
        conn.execute("SELECT remove_retention_policy('telemetry')")
        conn.execute("SELECT add_retention_policy('telemetry', drop_after => INTERVAL '2 days')")
        (job,) = conn.execute(
            "SELECT job_id FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'telemetry'"
        ).fetchone() or (None,)
        assert job is not None
        run_job_now(conn, job)
    else:
        drop_expired_partitions(conn, retention={"telemetry": timedelta(days=2)})
    oldest_raw = conn.execute("SELECT min(ts) FROM telemetry").fetchone()
    assert oldest_raw is not None and oldest_raw[0] > now - 3 * 24 * HOUR
    from store.jobs import raw_retained_from

    retained_from = raw_retained_from(conn)
    assert retained_from is not None and retained_from > now - 3 * 24 * HOUR
    refresh_rollups(conn, start=now - 30 * 24 * HOUR, end=now)
    run_storage_jobs(conn)
    after = conn.execute("SELECT count(*), min(bucket) FROM telemetry_hourly_lamp").fetchone()
    assert after is not None
    assert after == (before[0], now - 5 * 24 * HOUR)


def test_one_run_of_the_timescaledb_refresh_materialises_the_district_hours_with_the_lamp_hours(
    timescale_url: str,
) -> None:
    # (The plain refresh recomputes both tables in one transaction.)
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        _one_ordered_refresh(conn)


def _one_ordered_refresh(conn: Conn) -> None:
    jobs = conn.execute(
        "SELECT proc_name FROM timescaledb_information.jobs WHERE proc_name IN "
        "('policy_refresh_continuous_aggregate', 'streetlight_refresh_rollups')"
    ).fetchall()
    assert jobs == [("streetlight_refresh_rollups",)]
    now = _now_hour()
    _lamps(conn, "lamp-a", "lamp-b")
    _hours(conn, now - 4 * HOUR, now)
    run_storage_jobs(conn)
    marks = conn.execute(
        "SELECT user_view_name, _timescaledb_functions.cagg_watermark(mat_hypertable_id) "
        "FROM _timescaledb_catalog.continuous_agg ORDER BY 1"
    ).fetchall()
    assert len(marks) == 2 and marks[0][1] == marks[1][1]


def test_the_storage_path_uses_the_current_columnstore_api_and_a_brin_index_on_ts(
    conn: Conn, storage: str
) -> None:
    indexes = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'telemetry'")}
    assert "telemetry_ts_brin" in indexes
    if storage == "plain":
        return
    settings = dict(
        conn.execute(
            "SELECT hypertable::text, segmentby FROM timescaledb_information.hypertable_columnstore_settings "
            "WHERE hypertable::text IN ('telemetry', 'events')"
        ).fetchall()
    )
    assert settings["telemetry"] == "device_id"
    assert not settings["events"]  # events are sparse: no segment-by
    policies = conn.execute(
        "SELECT proc_name, hypertable_name FROM timescaledb_information.jobs "
        "WHERE proc_name = 'policy_compression' ORDER BY 2"
    ).fetchall()
    assert [p[1] for p in policies] == ["events", "telemetry"]
    dims = conn.execute(
        "SELECT hypertable_name, time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_name IN ('telemetry', 'events') ORDER BY 1"
    ).fetchall()
    assert dims == [("events", timedelta(days=1)), ("telemetry", timedelta(days=1))]


def _lamp_districts(conn: Conn, bucket: datetime) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT device_id, district_code, samples FROM telemetry_hourly_lamp WHERE bucket = %s ORDER BY 1",
        (bucket,),
    ).fetchall()


def _district_counts(conn: Conn, bucket: datetime) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT district_code, lamps_online FROM telemetry_hourly_district WHERE bucket = %s ORDER BY 1",
        (bucket,),
    ).fetchall()


def test_telemetry_stored_before_its_lamps_birth_and_a_lamps_move_reach_the_district_figures(
    conn: Conn,
) -> None:
    now = _now_hour()
    hour = now - 5 * HOUR
    _lamps(conn, "lamp-a", district="11110")
    _hours(conn, now - 6 * HOUR, now - HOUR)  # lamp-b has no device row yet
    run_storage_jobs(conn)
    assert _lamp_districts(conn, hour) == [("lamp-a", "11110", 2)]
    # lamp-b's birth comes after its telemetry: its stored hours are materialised with it.
    _lamps(conn, "lamp-b", district="11110")
    run_storage_jobs(conn)
    assert _lamp_districts(conn, hour) == [("lamp-a", "11110", 2), ("lamp-b", "11110", 2)]
    assert _district_counts(conn, hour) == [("11110", 2)]
    # lamp-b is registered in another district: every hour raw retention holds follows it.
    _lamps(conn, "lamp-b", district="11140")
    run_storage_jobs(conn)
    assert _lamp_districts(conn, hour) == [("lamp-a", "11110", 2), ("lamp-b", "11140", 2)]
    assert _district_counts(conn, hour) == [("11110", 1), ("11140", 1)]
    # A re-birth in the same district marks nothing.
    _lamps(conn, "lamp-b", district="11140")
    assert conn.execute("SELECT count(*) FROM rollup_dirty_hours").fetchone() == (0,)
