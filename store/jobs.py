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


@dataclass(frozen=True, slots=True)
class RollupRun:
    """Which hours a rollup refresh recomputed and how many lamp-hours it wrote."""

    start: datetime
    end: datetime
    lamp_hours: int
    district_hours: int


def refresh_rollups(
    conn: Conn,
    *,
    now: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    lookback: timedelta = timedelta(hours=3),
) -> RollupRun | None:
    """Recompute the hourly rollups from the last run (minus ``lookback``) to now, or for [start, end).

    On the TimescaleDB path this asks for a refresh of the continuous aggregates when the
    connection is in autocommit mode (``refresh_continuous_aggregate`` refuses a transaction)
    and returns None.
    """
    now = now or datetime.now(UTC)
    if timescale_enabled(conn):
        if conn.autocommit and start is not None:
            for view in ("telemetry_hourly_lamp", "telemetry_hourly_district"):
                conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (view, start, end or now))
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
        start = _hour_floor(start)
        end = _hour_floor(end) if end is not None else _hour_floor(now) + HOUR
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
        # The open hour is recomputed next time; remember where this run's data ended.
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES ('rollups_until', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
            (min(now, end).isoformat(),),
        )
    log.info(
        "rollups refreshed from %s to %s: %d lamp-hours, %d district-hours",
        start.isoformat(),
        end.isoformat(),
        lamp_hours,
        district_hours,
    )
    return RollupRun(start, end, lamp_hours, district_hours)


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
