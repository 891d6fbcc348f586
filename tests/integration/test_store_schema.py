"""Migrations, partitions and retention of time series on a real PostgreSQL (plain path)."""

from __future__ import annotations

import argparse
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from store import (
    apply_migrations,
    ensure_partitions,
    migrate,
    run_retention,
    schema_version,
    timescale_enabled,
    write_telemetry,
)
from store.embedded import start_embedded
from store.partitions import list_partitions, partition_name
from store.schema import MIGRATIONS
from store.schema_sql import timescale_rollup_sql
from streetlight.cli import migrate as migrate_command


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    migrate(db_url, timescale=False)
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def _lamp_row(ts: datetime, device: str, seq: int, level: int = 80) -> tuple[object, ...]:
    return (_ms(ts), device, 1, seq, level, 30.0, 220.0, 0.14, 20.0, 2.0, [], None, None, None, None)


def _schema_snapshot(c: psycopg.Connection[tuple[object, ...]]) -> list[tuple[object, ...]]:
    cols = c.execute(
        "SELECT table_name, column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = 'public' ORDER BY 1, 2"
    ).fetchall()
    idx = c.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    ).fetchall()
    return [*cols, *idx]


def test_migrations_apply_on_an_empty_database_and_record_the_plain_path(db_url: str) -> None:
    report = migrate(db_url, timescale=False)
    assert len(report.applied) == len(MIGRATIONS)
    assert report.timescale is False
    with psycopg.connect(db_url, autocommit=True) as c:
        assert schema_version(c) == MIGRATIONS[-1].version
        assert timescale_enabled(c) is False
        tables = {r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    expected = {
        "districts", "neighbourhoods", "devices", "device_state", "telemetry", "events", "commands",
        "walks", "walk_positions", "residents", "alerts", "alert_events", "alert_positions",
        "operators", "audit_log", "dead_letters", "controller_leases", "idempotency_keys",
        "telemetry_hourly_lamp", "telemetry_hourly_district", "schema_migrations", "store_meta",
        "retention_runs",
    }  # fmt: skip
    assert expected <= tables


def test_running_the_migrations_twice_changes_nothing(db_url: str) -> None:
    migrate(db_url, timescale=False)
    with psycopg.connect(db_url, autocommit=True) as c:
        before = _schema_snapshot(c)
        again = apply_migrations(c)
        after = _schema_snapshot(c)
    assert again.applied == []
    assert after == before


def test_two_services_migrating_at_once_both_succeed_and_only_one_applies(db_url: str) -> None:
    barrier = threading.Barrier(2)
    reports: list[int] = []
    errors: list[BaseException] = []

    def service() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as c:
                barrier.wait()
                reports.append(len(apply_migrations(c).applied))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=service) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(reports) == [0, len(MIGRATIONS)]


def test_partitions_exist_from_yesterday_to_days_ahead(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    today = datetime.now(UTC).date()
    for table in ("telemetry", "events"):
        names = set(list_partitions(conn, table))
        for offset in range(-1, 4):
            assert partition_name(table, today + timedelta(days=offset)) in names
    assert ensure_partitions(conn) == []


def test_rows_far_in_the_past_or_future_land_in_the_default_partition_without_failing_the_batch(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    now = datetime.now(UTC)
    rows = [
        _lamp_row(now, "lamp-a", 1),
        _lamp_row(now - timedelta(days=400), "lamp-a", 2),
        _lamp_row(now + timedelta(days=365), "lamp-a", 3),
    ]
    assert write_telemetry(conn, rows) == 3
    in_default = conn.execute("SELECT seq FROM telemetry_default ORDER BY seq").fetchall()
    assert [r[0] for r in in_default] == [2, 3]


def test_creating_a_partition_moves_rows_stranded_in_the_default_partition(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    future = datetime.now(UTC) + timedelta(days=20)
    write_telemetry(conn, [_lamp_row(future, "lamp-b", 1), _lamp_row(future, "lamp-b", 2)])
    created = ensure_partitions(conn, now=future, days_back=0, days_ahead=0, tables=("telemetry",))
    assert created == [partition_name("telemetry", future.date())]
    count = conn.execute(f"SELECT count(*) FROM {created[0]}").fetchone()
    assert count == (2,)
    assert conn.execute("SELECT count(*) FROM telemetry_default").fetchone() == (0,)


def test_the_retention_job_drops_partitions_older_than_the_retention(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(days=40)
    ensure_partitions(conn, now=old, days_back=0, days_ahead=1)
    write_telemetry(conn, [_lamp_row(old, "lamp-c", 1), _lamp_row(now, "lamp-c", 2)])
    write_telemetry(conn, [_lamp_row(now - timedelta(days=200), "lamp-c", 3)])  # default partition
    report = run_retention(conn, now=now)
    dropped = report["partitions_dropped"]
    assert isinstance(dropped, list)
    assert partition_name("telemetry", old.date()) in dropped
    assert partition_name("telemetry", now.date()) not in dropped
    remaining = [r[0] for r in conn.execute("SELECT seq FROM telemetry ORDER BY seq")]
    assert remaining == [2]
    assert conn.execute("SELECT count(*) FROM retention_runs").fetchone() == (1,)


def test_the_migrate_command_prints_what_it_applied_and_the_storage_path(
    db_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = argparse.Namespace(database_url=db_url, no_timescale=True)
    assert migrate_command.run(args) == 0
    first = capsys.readouterr().out
    assert "applied 1: core tables" in first
    assert "native partitioning" in first
    assert migrate_command.run(args) == 0
    assert "already up to date" in capsys.readouterr().out


def test_the_continuous_aggregate_queries_run_against_the_schema_with_a_time_bucket_stand_in(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    # Without TimescaleDB, check at least that the views' SELECTs name real columns and parse:
    # a stand-in time_bucket (the same result for whole hours) lets PostgreSQL plan them.
    conn.execute(
        "CREATE FUNCTION time_bucket(bucket_width interval, ts timestamptz) RETURNS timestamptz "
        "LANGUAGE sql IMMUTABLE AS $$ SELECT date_bin(bucket_width, ts, timestamptz '2000-01-03') $$"
    )
    for view in timescale_rollup_sql()[:2]:
        body = view.split(" AS SELECT ", 1)[1].removesuffix(" WITH NO DATA")
        conn.execute(f"EXPLAIN SELECT {body}")


@pytest.mark.filterwarnings("ignore:XDG_RUNTIME_DIR")  # pgserver's platformdirs, running as root
def test_the_embedded_database_starts_and_takes_the_migrations(tmp_path: Path) -> None:
    svc = start_embedded(tmp_path)
    try:
        report = migrate(svc.url)
        assert report.timescale is False
        assert len(report.applied) == len(MIGRATIONS)
    finally:
        svc.stop()
