"""Scheduled jobs: partitions ahead, hourly rollups, and retention of telemetry and personal data.

Every job is safe to run from several processes at once (each holds an advisory lock for its
work) and safe to run again (it recomputes or re-deletes to the same result).

Rollups on the plain path are tables refreshed incrementally here rather than materialised
views: ``REFRESH MATERIALIZED VIEW`` recomputes every hour of the retention window each time,
while this job recomputes only the hours since its last run (plus a look-back for late rows).
On the TimescaleDB path the continuous aggregates' policies do that work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.types.json import Jsonb

from alerts import COARSE_DECIMALS
from runtime.logs import get_logger
from store.partitions import drop_expired_partitions, ensure_partitions
from store.phones import PhoneKeyring, rotate_phones
from store.privacy import coarsen_sos_documents, unlink_deleted_residents
from store.schema import timescale_enabled
from store.schema_sql import DEFAULT_RETENTION, plain_lamp_hour_select
from store.types import Conn

log = get_logger(__name__)

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


def _refresh_timescale(conn: Conn, start: datetime | None, end: datetime, now: datetime) -> int:
    """Refresh [start, end) when asked and force-refresh the marked hours; returns hours forced.

    The scheduled refresh is the ordered job's (``streetlight_refresh_rollups``); the invalidation
    log already covers late rows, but not a device row that appeared or moved, hence the marks.
    Every window is clamped so it never reaches hours whose raw chunks were dropped.
    """
    if not conn.autocommit:
        return 0  # refresh_continuous_aggregate refuses to run inside a transaction
    retained_from = raw_retained_from(conn, timescale=True)
    if start is not None:
        start = _clamp(start, retained_from)
        if start < end:
            for view in ("telemetry_hourly_lamp", "telemetry_hourly_district"):
                conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s)", (view, start, end))
    taken = [_hour_floor(r[0]) for r in conn.execute("DELETE FROM rollup_dirty_hours RETURNING hour")]
    hours = [h for h in taken if _clamp(h, retained_from) == h and h < _hour_floor(now)]
    try:
        for lo, hi in _runs_of_hours(hours):
            for view in ("telemetry_hourly_lamp", "telemetry_hourly_district"):
                conn.execute("CALL refresh_continuous_aggregate(%s, %s, %s, force => true)", (view, lo, hi))
    except BaseException:
        # Put the marks back so the next run tries again (the failure itself is recorded).
        if not conn.closed:
            conn.execute(
                "INSERT INTO rollup_dirty_hours (hour) SELECT unnest(%s::timestamptz[]) "
                "ON CONFLICT DO NOTHING",
                (hours,),
            )
        raise
    return len(hours)


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
        forced = _refresh_timescale(conn, start, end or now, now)
        if forced:
            log.info("rollups_refreshed", path="timescaledb", late_hours=forced)
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
        "rollups_refreshed",
        path="plain",
        start=start.isoformat(),
        end=end.isoformat(),
        late_hours=len(late),
        lamp_hours=lamp_hours,
        district_hours=district_hours,
    )
    return RollupRun(start, end, lamp_hours, district_hours, len(late))


# --------------------------------------------------------------------------- retention


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long each kind of data is kept (issue 6's privacy rules and issue 4's telemetry)."""

    timeseries: dict[str, timedelta] = field(default_factory=lambda: dict(DEFAULT_RETENTION))
    walk_positions_after_end: timedelta = timedelta(hours=24)
    sos_track: timedelta = timedelta(days=30)  # exact SOS positions, then coarsened (docs/privacy.md)
    coarsen_decimals: int = COARSE_DECIMALS  # 0.001 deg is about 110 m of latitude in Seoul
    deletion_hold: timedelta = timedelta(days=30)  # a deleted resident's closed SOS, after the close
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
        done["sos_documents_coarsened"] = coarsen_sos_documents(conn, cutoff=sos_cutoff)
        done.update(unlink_deleted_residents(conn, hold=policy.deletion_hold, now=now, accuracy_m=coarse_acc))
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
    counts = {key: value for key, value in done.items() if key != "now"}
    log.info("retention_applied", ran_at=done["now"], **counts)
    return done


MAINTENANCE_JOB = "maintenance"
# The maintenance job is meant to run every 10-15 min (ingest's jobs leader: 10 min; the systemd
# timer: 15 min); three missed runs make it late.
MAINTENANCE_LATE_AFTER = timedelta(minutes=45)


def _record_job(conn: Conn, job: str, outcome: str, error: str | None = None) -> None:
    if outcome == "start":
        sql = (
            "INSERT INTO storage_job_runs (job, last_start) VALUES (%(job)s, now()) "
            "ON CONFLICT (job) DO UPDATE SET last_start = now()"
        )
    elif outcome == "success":
        sql = (
            "INSERT INTO storage_job_runs (job, last_success) VALUES (%(job)s, now()) "
            "ON CONFLICT (job) DO UPDATE SET last_success = now(), failures_in_row = 0"
        )
    else:
        sql = (
            "INSERT INTO storage_job_runs (job, last_failure, last_error, failures_in_row) "
            "VALUES (%(job)s, now(), %(error)s, 1) ON CONFLICT (job) DO UPDATE SET last_failure = now(), "
            "last_error = %(error)s, failures_in_row = storage_job_runs.failures_in_row + 1"
        )
    conn.execute(sql, {"job": job, "error": (error or "")[:500]})


def run_maintenance(
    conn: Conn,
    *,
    now: datetime | None = None,
    policy: RetentionPolicy | None = None,
    phone_keys: PhoneKeyring | None = None,
) -> dict[str, object]:
    """The periodic job a service runs (e.g. every 10 min): partitions ahead, rollups, retention,
    and with ``phone_keys`` the residents' phone numbers re-encrypted under the current key.

    Each run's start, success or failure (with its error) is recorded in ``storage_job_runs`` so a
    failing or stalled job shows in :func:`storage_job_problems`."""
    _record_job(conn, MAINTENANCE_JOB, "start")
    try:
        created = [] if timescale_enabled(conn) else ensure_partitions(conn, now=now)
        rollups = refresh_rollups(conn, now=now)
        retention = run_retention(conn, now=now, policy=policy)
        phones = rotate_phones(conn, phone_keys) if phone_keys is not None else None
    except Exception as exc:
        if not conn.closed:
            try:
                _record_job(conn, MAINTENANCE_JOB, "failure", f"{type(exc).__name__}: {exc}")
            except psycopg.Error:
                log.warning("job_failure_not_recorded", job=MAINTENANCE_JOB, exc_info=True)
        log.error("job_failed", job=MAINTENANCE_JOB, error=f"{type(exc).__name__}: {exc}")
        raise
    _record_job(conn, MAINTENANCE_JOB, "success")
    done: dict[str, object] = {"partitions_created": created, "rollups": rollups, "retention": retention}
    if phones is not None:
        done["phones"] = phones
    return done


# --------------------------------------------------------------------------- job health


@dataclass(frozen=True, slots=True)
class JobProblem:
    """A storage job that failed its last run or has not succeeded for too long."""

    job: str  # "maintenance", or the TimescaleDB job's procedure and table, e.g. "policy_retention telemetry"
    problem: str  # "failed" or "late"
    since: datetime | None  # the failure, or the last success (None: never succeeded)
    detail: str

    def as_dict(self) -> dict[str, str | None]:
        """JSON-able, for /readyz and alert notes."""
        return {
            "job": self.job,
            "problem": self.problem,
            "since": None if self.since is None else self.since.isoformat(),
            "detail": self.detail,
        }


# A TimescaleDB job is late when it has not succeeded for two of its intervals plus this margin
# (its scheduler retries a failed job with back-off, so one slow retry is not yet a problem).
TIMESCALE_LATE_MARGIN = timedelta(minutes=10)

_TIMESCALE_JOBS_SQL = """
SELECT j.job_id, j.proc_name, coalesce(j.hypertable_name, ''), j.schedule_interval,
       s.last_run_status, nullif(s.last_successful_finish, '-infinity'),
       nullif(s.last_run_started_at, '-infinity'),
       (SELECT e.err_message FROM timescaledb_information.job_errors e
         WHERE e.job_id = j.job_id ORDER BY e.finish_time DESC NULLS LAST LIMIT 1)
FROM timescaledb_information.jobs j
LEFT JOIN timescaledb_information.job_stats s ON s.job_id = j.job_id
WHERE j.scheduled AND j.job_id >= 1000
ORDER BY j.job_id
"""


def _jobs_since(conn: Conn) -> datetime | None:
    # When the jobs this module watches were created: a fresh database is not yet "late".
    row = conn.execute("SELECT applied_at FROM schema_migrations WHERE version = 4").fetchone()
    return None if row is None else row[0]


def storage_job_problems(conn: Conn, *, now: datetime | None = None) -> list[JobProblem]:
    """Failed or late storage jobs, on either path: the project's maintenance job, and on
    TimescaleDB the database's own jobs (columnstore, retention, the rollup refresh)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    created = _jobs_since(conn)
    if created is None:
        return []  # schema older than migration 4: nothing recorded yet
    problems: list[JobProblem] = []
    row = conn.execute(
        "SELECT last_success, last_failure, last_error, failures_in_row FROM storage_job_runs WHERE job = %s",
        (MAINTENANCE_JOB,),
    ).fetchone()
    success, failure, error, in_row = row if row is not None else (None, None, None, 0)
    if failure is not None and (success is None or failure > success):
        problems.append(
            JobProblem(MAINTENANCE_JOB, "failed", failure, f"{in_row} failed runs in a row: {error}")
        )
    elif (success or created) < now - MAINTENANCE_LATE_AFTER:
        problems.append(
            JobProblem(
                MAINTENANCE_JOB,
                "late",
                success,
                f"no successful run for more than {int(MAINTENANCE_LATE_AFTER.total_seconds() // 60)} min",
            )
        )
    if not timescale_enabled(conn):
        return problems
    for job_id, proc, table, every, status, ok_at, started, err in conn.execute(_TIMESCALE_JOBS_SQL):
        name = f"{proc} {table}".strip() + f" (job {job_id})"
        if status == "Failed":
            problems.append(JobProblem(name, "failed", started, str(err or "failed")))
        elif (ok_at or created) < now - 2 * every - TIMESCALE_LATE_MARGIN:
            problems.append(JobProblem(name, "late", ok_at, f"no successful run within 2 x {every}"))
    return problems


def storage_jobs_report(conn: Conn, *, now: datetime | None = None) -> dict[str, object]:
    """What /readyz shows of the storage jobs: ``ok``, or ``failing`` with each problem."""
    problems = storage_job_problems(conn, now=now)
    return {"status": "failing" if problems else "ok", "problems": [p.as_dict() for p in problems]}
