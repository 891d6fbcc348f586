"""``streetlight bench storage``: a simulated day of telemetry and events on both storage paths.

In one run, on DATABASE_URL's server (a throwaway database) or a throwaway cluster, and on a
throwaway cluster with TimescaleDB preloaded:

1. a day (the last 24 h) of a fleet of lamps (one sample a minute, a night/day level profile,
   noisy power, voltage, temperature, lux) and a few events per device, COPYed as ingest does;
2. bytes per row of telemetry (heap + indexes), and on TimescaleDB after the columnstore
   conversion of every chunk: the compression ratio and bytes per row; events with and without
   segment-by device;
3. the rollup refresh of the day, and one hour's refresh scan with and without the BRIN index on
   ``ts``, plus the COPY rate with and without it;
4. the console's 24-hour chart query of a lamp (``store.devices.lamp_hours``): median and p95;
5. the writer's late-row check on an in-time batch (the cost every batch pays).

The baseline of each figure is the other path in the same run. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from devkit.localservices import PgService, start_pg_cluster, timescale_installed

HELP = "a simulated day on both storage paths: bytes per row, compression, refresh, 24 h chart query"
DISTRICTS = ("11110", "11140", "11170", "11200", "11215", "11230")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench storage``."""
    parser.add_argument("--lamps", type=int, default=2000, help="lamps, one sample a minute each")
    parser.add_argument("--events-per-device", type=int, default=3)
    parser.add_argument("--chart-queries", type=int, default=200)


def _say(text: str) -> None:
    sys.stderr.write(f"[bench storage] {text}\n")
    sys.stderr.flush()


def _telemetry(lamps: int, start: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    t0 = int(start.timestamp() * 1000)
    rows: list[tuple[Any, ...]] = []
    for minute in range(24 * 60):
        hour = (start + timedelta(minutes=minute)).astimezone(UTC).hour
        night = hour >= 9  # 18:00-09:00 KST is 09:00-24:00 UTC
        for lamp in range(lamps):
            level = (80 if hour < 15 else 50) if night else 0
            power = round(level * 0.45 + rng.gauss(0, 0.3), 1) if level else 0.0
            rows.append((
                t0 + minute * 60_000 + lamp % 997, f"lamp-{lamp:06d}", 1, minute, level, power,
                round(221.0 + rng.gauss(0, 1.5), 1), round(power / 221.0, 3),
                round(18.0 + 6 * math.sin(minute / 229.0) + rng.gauss(0, 0.2), 1),
                round(0.3 if night else 900.0 + rng.gauss(0, 50), 1), [], None, None, None, None,
            ))  # fmt: skip
    return rows


def _events(lamps: int, per_device: int, start: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    t0 = int(start.timestamp() * 1000)
    return [
        (t0 + rng.randrange(86_400_000), f"lamp-{lamp:06d}", 1, i, "beacon", None,
         f"{rng.getrandbits(64):016x}", float(-60 - rng.randrange(30)), None)
        for lamp in range(lamps) for i in range(per_device)
    ]  # fmt: skip


def _copy(conn: psycopg.Connection[Any], kind: str, rows: list[tuple[Any, ...]]) -> float:
    from store.writer import write_rows

    t = time.perf_counter()
    for i in range(0, len(rows), 10_000):
        write_rows(conn, kind, rows[i : i + 10_000], direct=kind == "telemetry")  # type: ignore[arg-type]
    return len(rows) / (time.perf_counter() - t)


def _size(conn: psycopg.Connection[Any], table: str, timescale: bool) -> int:
    if timescale:
        row = conn.execute("SELECT hypertable_size(%s)", (table,)).fetchone()
    else:
        row = conn.execute(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits WHERE inhparent = %s::regclass",
            (table,),
        ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _best_ms(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...], runs: int = 3) -> float:
    best = math.inf
    for _ in range(runs):
        t = time.perf_counter()
        conn.execute(sql, params).fetchall()
        best = min(best, time.perf_counter() - t)
    return round(best * 1000, 2)


def _hour_scan_ms(conn: psycopg.Connection[Any], hour: datetime) -> float:
    from store.schema_sql import plain_lamp_hour_select

    sql = (
        f"SELECT {plain_lamp_hour_select()} FROM telemetry t JOIN devices d ON t.device_id = d.device_id "
        "WHERE t.ts >= %s AND t.ts < %s AND t.level IS NOT NULL "
        "GROUP BY date_trunc('hour', t.ts), t.device_id, d.district_code"
    )
    return _best_ms(conn, sql, (hour, hour + timedelta(hours=1)))


def _one_path(url: str, timescale: bool, args: argparse.Namespace) -> dict[str, Any]:
    from store import migrate, refresh_rollups
    from store.devices import lamp_hours

    migrate(url, timescale=timescale)
    rng = random.Random(20261207)
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = now - timedelta(hours=24)
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        if timescale:
            # The scheduled jobs would race the measurements; they are run by hand here.
            conn.execute("SELECT alter_job(job_id, scheduled => false) FROM timescaledb_information.jobs "
                         "WHERE job_id >= 1000")  # fmt: skip
        else:
            from store import ensure_partitions

            ensure_partitions(conn, days_back=2)
        with conn.transaction():
            for lamp in range(args.lamps):
                conn.execute(
                    "INSERT INTO devices (device_id, kind, district_code) VALUES (%s, 'lamp', %s)",
                    (f"lamp-{lamp:06d}", DISTRICTS[lamp % len(DISTRICTS)]),
                )
        rows = _telemetry(args.lamps, start, rng)
        _say(f"{'timescaledb' if timescale else 'plain'}: writing {len(rows)} telemetry rows")
        out["copy_rows_s"] = round(_copy(conn, "telemetry", rows), 0)
        _copy(conn, "events", _events(args.lamps, args.events_per_device, start, rng))
        conn.execute("VACUUM ANALYZE telemetry")
        conn.execute("VACUUM ANALYZE events")
        out["telemetry_rows"] = len(rows)
        size = _size(conn, "telemetry", timescale)
        out["telemetry_bytes_per_row"] = round(size / len(rows), 1)
        hour = start + timedelta(hours=12)
        out["hour_refresh_scan_ms_brin"] = _hour_scan_ms(conn, hour)
        conn.execute("DROP INDEX telemetry_ts_brin")
        out["hour_refresh_scan_ms_no_brin"] = _hour_scan_ms(conn, hour)
        extra = [(r[0] + 1, *r[1:]) for r in rows[:200_000]]  # a new ts: new rows, same shape
        out["copy_rows_s_no_brin"] = round(_copy(conn, "telemetry", extra), 0)
        conn.execute("CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts)")
        again = [(r[0] + 2, *r[1:]) for r in rows[:200_000]]
        out["copy_rows_s_brin"] = round(_copy(conn, "telemetry", again), 0)
        t = time.perf_counter()
        if timescale:
            (job,) = conn.execute(
                "SELECT job_id FROM timescaledb_information.jobs "
                "WHERE proc_name = 'streetlight_refresh_rollups'"
            ).fetchone() or (None,)
            conn.execute("CALL run_job(%s)", (job,))
        else:
            refresh_rollups(conn, start=start, end=now)
        out["day_refresh_s"] = round(time.perf_counter() - t, 2)
        # The scheduled run that follows, nothing having changed: on TimescaleDB the whole
        # retained window is looked at (the invalidation log), on the plain path the last 3 h.
        t = time.perf_counter()
        if timescale:
            conn.execute("CALL run_job(%s)", (job,))
        else:
            refresh_rollups(conn)
        out["next_refresh_ms"] = round((time.perf_counter() - t) * 1000, 1)
        devices = [f"lamp-{rng.randrange(args.lamps):06d}" for _ in range(args.chart_queries)]
        times = []
        for dev in devices:
            t = time.perf_counter()
            hours = lamp_hours(conn, dev, since=now - timedelta(hours=24))
            times.append(time.perf_counter() - t)
        assert len(hours) == 24, len(hours)
        out["chart_query_ms_median"] = round(statistics.median(times) * 1000, 2)
        out["chart_query_ms_p95"] = round(sorted(times)[int(0.95 * len(times))] * 1000, 2)
        if timescale:
            out |= _columnstore(conn)
    return out


def _columnstore(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute("SELECT count(*) FROM telemetry").fetchone()
    rows = int(row[0]) if row else 0
    before = _size(conn, "telemetry", True)
    conn.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry') c")
    after = _size(conn, "telemetry", True)
    out: dict[str, Any] = {
        "telemetry_rows_compressed": rows,
        "telemetry_bytes_per_row_before_columnstore": round(before / rows, 1),
        "telemetry_columnstore_bytes_per_row": round(after / rows, 1),
        "telemetry_compression_ratio": round(before / after, 1) if after else None,
    }
    conn.execute("VACUUM ANALYZE events")
    out["events_bytes_rowstore"] = _size(conn, "events", True)
    conn.execute("SELECT compress_chunk(c) FROM show_chunks('events') c")
    out["events_columnstore_bytes_no_segmentby"] = _size(conn, "events", True)
    conn.execute("SELECT decompress_chunk(c) FROM show_chunks('events') c")
    conn.execute("ALTER TABLE events SET (timescaledb.segmentby = 'device_id', "
                 "timescaledb.orderby = 'ts DESC, seq DESC, bdseq DESC')")  # fmt: skip
    conn.execute("SELECT compress_chunk(c) FROM show_chunks('events') c")
    out["events_columnstore_bytes_segmentby_device"] = _size(conn, "events", True)
    return out


def _late_check_us(batch: int = 5000) -> float:
    from store.writer import _mark_late_hours

    now_ms = int(time.time() * 1000)
    rows = [(now_ms - i, "lamp", 1, i) for i in range(batch)]
    t = time.perf_counter()
    for _ in range(200):
        _mark_late_hours(None, rows)  # type: ignore[arg-type]  # in time: no statement is sent
    return round((time.perf_counter() - t) / 200 * 1e6, 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both paths, the same simulated day; returns the figures."""
    workdir = Path(tempfile.mkdtemp(prefix="slbench-storage-"))
    name = f"slbench_{uuid.uuid4().hex[:8]}"
    started: list[PgService] = []
    result: dict[str, Any] = {
        "bench": "storage",
        "lamps": args.lamps,
        "late_check_us_per_5000_rows": _late_check_us(),
    }
    configured = admin = os.environ.get("DATABASE_URL")
    try:
        if not admin:
            started.append(start_pg_cluster(workdir / "pg"))
            admin = started[-1].url
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        result["plain"] = _one_path(PgService("configured", admin).database_url(name), False, args)
        if timescale_installed():
            started.append(start_pg_cluster(workdir / "pg-ts", timescale=True))
            ts_admin = started[-1].url
            with psycopg.connect(ts_admin, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            result["timescaledb"] = _one_path(
                PgService("configured", ts_admin).database_url(name), True, args
            )
        else:
            result["timescaledb_skipped"] = "TimescaleDB is not installed in the local PostgreSQL"
        return result
    finally:
        for svc in started:
            svc.stop()
        if configured:
            with psycopg.connect(configured, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
