"""Scheduled jobs: partitions ahead, hourly rollups, and retention of telemetry and personal data.

Every job is safe to run from several processes at once (each holds an advisory lock for its
work) and safe to run again (it recomputes or re-deletes to the same result).

Rollups on the plain path are tables refreshed incrementally here rather than materialised
views: ``REFRESH MATERIALIZED VIEW`` recomputes every hour of the retention window each time,
while this job recomputes only the hours since its last run (plus a look-back for late rows).
On the TimescaleDB path the continuous aggregates' policies do that work.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from psycopg.types.json import Jsonb

from store.schema import (
    DEFAULT_RETENTION,
    drop_expired_partitions,
    ensure_partitions,
    plain_lamp_hour_select,
    timescale_enabled,
)
from store.types import Conn

log = logging.getLogger(__name__)

ROLLUP_LOCK_KEY = 0x534C524F  # "SLRO"
RETENTION_LOCK_KEY = 0x534C5254  # "SLRT"
HOUR = timedelta(hours=1)


def _hour_floor(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def raw_retained_from(conn: Conn, *, timescale: bool | None = None) -> datetime | None:
    """The earliest instant from which raw telemetry is still complete (None: nothing dropped yet).

    Aggregates outlive raw data: a refresh must never reach below this, or it would recompute
    hours whose raw rows are gone and wipe them. Plain path: the retention job's latest cutoff;
    TimescaleDB: now minus the retention policy's ``drop_after`` (chunks go whole, never newer).
    """
    if timescale if timescale is not None else timescale_enabled(conn):
        row = conn.execute(
            "SELECT now() - (config->>'drop_after')::interval FROM timescaledb_information.jobs "
            "WHERE proc_name = 'policy_retention' AND hypertable_name = 'telemetry'"
        ).fetchone()
    else:
        row = conn.execute(
            "SELECT value::timestamptz FROM store_meta WHERE key = 'telemetry_retained_from'"
        ).fetchone()
    return None if row is None or row[0] is None else row[0]


def _hour_ceil(t: datetime) -> datetime:
    floor = _hour_floor(t)
    return floor if floor == t else floor + HOUR


def _clamp(start: datetime, retained_from: datetime | None) -> datetime:
    if retained_from is None:
        return start
    return max(start, _hour_ceil(retained_from))


def _recompute_hours(conn: Conn, start: datetime, end: datetime) -> tuple[int, int]:
    """Recompute both plain rollups for the hours in [start, end); returns rows written."""
    conn.execute("DELETE FROM telemetry_hourly_lamp WHERE bucket >= %s AND bucket < %s", (start, end))
    lamp_hours = conn.execute(
        f"INSERT INTO telemetry_hourly_lamp SELECT {plain_lamp_hour_select()} "
        "FROM telemetry t JOIN devices d ON t.device_id = d.device_id "
        "WHERE t.ts >= %s AND t.ts < %s AND t.level IS NOT NULL "
        "GROUP BY date_trunc('hour', t.ts), t.device_id, d.district_code",
        (start, end),
    ).rowcount
    conn.execute("DELETE FROM telemetry_hourly_district WHERE bucket >= %s AND bucket < %s", (start, end))
    district_hours = conn.execute(
        "INSERT INTO telemetry_hourly_district (bucket, district_code, lamps_online, energy_wh) "
        "SELECT bucket, district_code, count(*), sum(energy_wh) FROM telemetry_hourly_lamp "
        "WHERE bucket >= %s AND bucket < %s GROUP BY bucket, district_code",
        (start, end),
    ).rowcount
    return lamp_hours, district_hours


def _runs_of_hours(hours: list[datetime]) -> list[tuple[datetime, datetime]]:
    """Consecutive hours merged into [start, end) ranges, oldest first."""
    runs: list[tuple[datetime, datetime]] = []
    for h in sorted(set(hours)):
        if runs and runs[-1][1] == h:
            runs[-1] = (runs[-1][0], h + HOUR)
        else:
            runs.append((h, h + HOUR))
    return runs


@dataclass(frozen=True, slots=True)
class RollupRun:
    """Which hours a rollup refresh recomputed and how many lamp-hours it wrote."""

    start: datetime
    end: datetime
    lamp_hours: int
    district_hours: int
    late_hours: int = 0
    """Hours outside [start, end) recomputed because late rows arrived for them."""


def _refresh_timescale(conn: Conn, start: datetime | None, end: datetime, now: datetime) -> None:
    # The ordered refresh job's own procedure does the scheduled work; an explicit window is
    # refreshed here, clamped so it never reaches hours whose raw chunks were dropped.
    conn.execute("DELETE FROM rollup_dirty_hours")  # the invalidation log covers late rows here
    if start is None or not conn.autocommit:
        return
    start = _clamp(start, raw_retained_from(conn, timescale=True))
    if start >= end:
        return
    for view in ("telemetry_hourly_lamp", "telemetry_hourly_district"):
        conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (view, start, end))


def refresh_rollups(
    conn: Conn,
    *,
    now: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    lookback: timedelta = timedelta(hours=3),
) -> RollupRun | None:
    """Recompute the hourly rollups from the last run (minus ``lookback``) to now, or for [start, end).

    Hours that received late rows (``rollup_dirty_hours``, written by the COPY writer) are
    recomputed too, whatever their age. No window ever reaches below :func:`raw_retained_from`:
    aggregates of hours whose raw rows were dropped are kept, never recomputed from nothing.

    On the TimescaleDB path this asks for a refresh of the continuous aggregates for an explicit
    [start, end) when the connection is in autocommit mode (``refresh_continuous_aggregate``
    refuses a transaction) and returns None; the scheduled refresh is the database's own job.
    """
    now = now or datetime.now(UTC)
    if timescale_enabled(conn):
        _refresh_timescale(conn, start, end or now, now)
        return None
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (ROLLUP_LOCK_KEY,))
        if start is None:
            row = conn.execute(
                "SELECT coalesce((SELECT value::timestamptz FROM store_meta WHERE key = 'rollups_until'), "
                "(SELECT min(ts) FROM telemetry), %s)",
                (now,),
            ).fetchone()
            assert row is not None
            start = row[0] - lookback
        retained_from = raw_retained_from(conn, timescale=False)
        start = _clamp(_hour_floor(start), retained_from)
        end = _hour_floor(end) if end is not None else _hour_floor(now) + HOUR
        # Taken (deleted) in this transaction: a writer marking the same hour meanwhile waits for
        # the commit and marks it again, so a late row is never forgotten.
        taken = conn.execute("DELETE FROM rollup_dirty_hours RETURNING hour").fetchall()
        dirty = [_hour_floor(r[0]) for r in taken]
        late = [h for h in dirty if not (start <= h < end) and _clamp(h, retained_from) == h]
        lamp_hours, district_hours = _recompute_hours(conn, start, end) if start < end else (0, 0)
        for lo, hi in _runs_of_hours(late):
            more = _recompute_hours(conn, lo, hi)
            lamp_hours, district_hours = lamp_hours + more[0], district_hours + more[1]
        # The open hour is recomputed next time; remember where this run's data ended.
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES ('rollups_until', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (min(now, end).isoformat(),),
        )
    log.info(
        "rollups refreshed from %s to %s and %d late hours: %d lamp-hours, %d district-hours",
        start.isoformat(),
        end.isoformat(),
        len(late),
        lamp_hours,
        district_hours,
    )
    return RollupRun(start, end, lamp_hours, district_hours, len(late))


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of data is kept (issue 6's privacy rules and issue 4's telemetry)."""

    timeseries: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    walk_positions_after_end: timedelta = timedelta(hours=24)
    sos_track: timedelta = timedelta(days=30)  # then coarsened
    coarsen_decimals: int = 3  # 0.001 deg is about 110 m of latitude in Seoul
    idempotency_keys: timedelta = timedelta(days=7)
    dead_letters: timedelta = timedelta(days=30)
    commands: timedelta = timedelta(days=30)


_WALK_POSITIONS_SQL = """
DELETE FROM walk_positions p USING walks w
WHERE p.walk_id = w.walk_id AND p.alert_id IS NULL
  AND ((w.ended_at IS NOT NULL AND w.ended_at < %(cutoff)s)
       OR (w.ended_at IS NULL AND p.ts < %(cutoff)s))
"""
# Ended walks outlive their positions only as long as an SOS track would; none tied to an SOS.
_WALKS_SQL = """
DELETE FROM walks w WHERE w.ended_at < %(cutoff)s
  AND NOT EXISTS (SELECT 1 FROM walk_positions p WHERE p.walk_id = w.walk_id AND p.alert_id IS NOT NULL)
"""
_COARSEN_ALERT_SQL = """
UPDATE alert_positions SET lat = round(lat::numeric, %(d)s), lon = round(lon::numeric, %(d)s),
                           accuracy_m = greatest(coalesce(accuracy_m, 0), %(acc)s), coarsened = true
WHERE NOT coarsened AND ts < %(cutoff)s
"""
_COARSEN_WALK_SQL = """
UPDATE walk_positions SET lat = round(lat::numeric, %(d)s), lon = round(lon::numeric, %(d)s),
                          accuracy_m = greatest(coalesce(accuracy_m, 0), %(acc)s), heading_deg = NULL,
                          speed_m_s = NULL, reason = 'coarsened'
WHERE alert_id IS NOT NULL AND ts < %(cutoff)s AND reason IS DISTINCT FROM 'coarsened'
"""


def run_retention(
    conn: Conn, *, now: datetime | None = None, policy: RetentionPolicy | None = None
) -> dict[str, object]:
    """Delete or coarsen what is past its retention, log and record the run; returns what it did."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    policy = policy or RetentionPolicy()
    done: dict[str, object] = {"now": now.isoformat()}
    if timescale_enabled(conn):
        done["partitions_dropped"] = "by TimescaleDB retention policies"
    else:
        done["partitions_dropped"] = drop_expired_partitions(conn, now=now, retention=policy.timeseries)
    coarse_acc = 111.0 * 10 ** (3 - policy.coarsen_decimals)  # metres one rounding step spans, about
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (RETENTION_LOCK_KEY,))

        def run(name: str, query: str, **params: object) -> None:
            done[name] = conn.execute(query, params).rowcount

        run("walk_positions_deleted", _WALK_POSITIONS_SQL, cutoff=now - policy.walk_positions_after_end)
        run("walks_deleted", _WALKS_SQL, cutoff=now - policy.sos_track)
        sos_cutoff = now - policy.sos_track
        run(
            "sos_positions_coarsened",
            _COARSEN_ALERT_SQL,
            d=policy.coarsen_decimals,
            acc=coarse_acc,
            cutoff=sos_cutoff,
        )
        run(
            "walk_sos_positions_coarsened",
            _COARSEN_WALK_SQL,
            d=policy.coarsen_decimals,
            acc=coarse_acc,
            cutoff=sos_cutoff,
        )
        run(
            "idempotency_keys_deleted",
            "DELETE FROM idempotency_keys WHERE created_at < %(cutoff)s",
            cutoff=now - policy.idempotency_keys,
        )
        run(
            "dead_letters_deleted",
            "DELETE FROM dead_letters WHERE received_at < %(cutoff)s",
            cutoff=now - policy.dead_letters,
        )
        run(
            "commands_deleted",
            "DELETE FROM commands WHERE sent_at < %(cutoff)s",
            cutoff=now - policy.commands,
        )
        conn.execute("INSERT INTO retention_runs (ran_at, details) VALUES (%s, %s)", (now, Jsonb(done)))
    log.info("retention run: %s", json.dumps(done, default=str))
    return done


def run_maintenance(conn: Conn, *, now: datetime | None = None) -> dict[str, object]:
    """The periodic job a service runs (e.g. every 10 min): partitions ahead, rollups, retention."""
    created = [] if timescale_enabled(conn) else ensure_partitions(conn, now=now)
    rollups = refresh_rollups(conn, now=now)
    retention = run_retention(conn, now=now)
    return {"partitions_created": created, "rollups": rollups, "retention": retention}
