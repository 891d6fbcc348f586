"""Migrations: the schema (its SQL in ``store.schema_sql``) applied on one of two storage paths
chosen by detection.

* **TimescaleDB path** (the extension is available and loads): ``telemetry`` and ``events`` are
  hypertables with daily chunks, compression segmented by device, retention policies, and the two
  hourly rollups are continuous aggregates with refresh policies.
* **Plain path** (e.g. the embedded pgserver, the test suite): the same tables use native
  declarative range partitioning by day with a DEFAULT partition; ``store.partitions`` creates
  partitions ahead and drops old ones, and the rollups are plain
  tables of the same names and columns, refreshed incrementally by ``store.jobs.refresh_rollups``.

Readers never need to know which path is in use: relation and column names are the same. The
choice is made once, on the first migration, logged, and recorded in ``store_meta`` (a database
never switches path under existing data); :func:`timescale_enabled` reads it back.

Migrations are numbered; each runs once in its own transaction and is recorded in
``schema_migrations``. The whole run holds a session advisory lock, so two services starting at
once serialise: one applies, the other then finds nothing left to do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from runtime.logs import get_logger
from store.connections import connect
from store.errors import MigrationError
from store.partitions import ensure_partitions
from store.schema_sql import (
    ACCOUNTS_AND_SOS_SOURCE_SQL,
    ALERT_HISTORY_SQL,
    CAMERAS_SQL,
    CORE_TABLES_SQL,
    DEFAULT_RETENTION,
    DEVICE_DISTRICT_TRIGGER_SQL,
    JOBS_SQL,
    LAMP_REGISTER_SQL,
    OPERATOR_COMMANDS_SQL,
    PLAIN_ROLLUP_TABLES_SQL,
    TS_BRIN_SQL,
    plain_timeseries_sql,
    timescale_jobs_sql,
    timescale_rollup_sql,
    timescale_timeseries_sql,
)
from store.types import Conn

log = get_logger(__name__)

# Arbitrary but fixed key ("SLMG" in ASCII) for the migration advisory lock; any process that
# migrates this database uses the same one.
MIGRATION_LOCK_KEY = 0x534C4D47


# --------------------------------------------------------------------------- migrations


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change; ``apply(conn, timescale)`` runs inside its transaction."""

    version: int
    name: str
    apply: Callable[[Conn, bool], None]


def _run_all(conn: Conn, statements: list[str]) -> None:
    for stmt in statements:
        conn.execute(stmt.encode())


def _m1_core(conn: Conn, timescale: bool) -> None:
    conn.execute(CORE_TABLES_SQL.encode())


def _m2_timeseries(conn: Conn, timescale: bool) -> None:
    _run_all(conn, timescale_timeseries_sql() if timescale else plain_timeseries_sql())


def _m3_rollups(conn: Conn, timescale: bool) -> None:
    if timescale:
        _run_all(conn, timescale_rollup_sql())
    else:
        conn.execute(PLAIN_ROLLUP_TABLES_SQL.encode())


def _m4_late_rows_and_jobs(conn: Conn, timescale: bool) -> None:
    if timescale:
        _run_all(conn, timescale_jobs_sql())
    else:
        conn.execute(JOBS_SQL.encode())
        conn.execute(TS_BRIN_SQL.encode())


def _m5_accounts_and_sos_source(conn: Conn, timescale: bool) -> None:
    conn.execute(ACCOUNTS_AND_SOS_SOURCE_SQL.encode())


def _m6_device_hours(conn: Conn, timescale: bool) -> None:
    days = int(DEFAULT_RETENTION["telemetry"].total_seconds() // 86400) + 1
    conn.execute((DEVICE_DISTRICT_TRIGGER_SQL % {"days": days}).encode())


# The district's lamp register (the national security-lamp standard data): what is painted on the
# pole and where it stands in words, written by provisioning before the controller first connects.
def _m7_lamp_register(conn: Conn, timescale: bool) -> None:
    conn.execute(LAMP_REGISTER_SQL.encode())


# Privacy (issue 22, docs/privacy.md): the audit trail becomes a hash chain (each row carries the
# previous row's hash and its own; rows already there are chained in id order), and an SOS alert
# records when its whole document is coarse so the retention job stops rereading it.
PRIVACY_SQL = """
ALTER TABLE audit_log ADD COLUMN prev_hash text;
ALTER TABLE audit_log ADD COLUMN row_hash text;
ALTER TABLE alerts ADD COLUMN positions_coarse boolean NOT NULL DEFAULT false;
CREATE INDEX alerts_sos_exact ON alerts (created_at) WHERE kind = 'sos' AND NOT positions_coarse;
"""
PRIVACY_MIGRATION = 8


def _m8_privacy(conn: Conn, timescale: bool) -> None:
    from store.operators import chain_unhashed_audit_rows, pseudonymise_audit_subjects

    conn.execute(PRIVACY_SQL.encode())
    pseudonymise_audit_subjects(conn)
    chain_unhashed_audit_rows(conn)


def _m9_alert_history(conn: Conn, timescale: bool) -> None:
    conn.execute(ALERT_HISTORY_SQL.encode())


# Commands an operator can follow: pending (written by the API with its note) and undelivered.
def _m10_operator_commands(conn: Conn, timescale: bool) -> None:
    conn.execute(OPERATOR_COMMANDS_SQL.encode())


# Call-back (issue 21, docs/security.md): residents' phone numbers, encrypted (store/phones.py).
def _m11_resident_phones(conn: Conn, timescale: bool) -> None:
    from store.phones import PHONES_SQL

    conn.execute(PHONES_SQL.encode())


# The camera register (issue 21): cameras near an SOS, from the national standard CCTV data.
def _m12_cameras(conn: Conn, timescale: bool) -> None:
    conn.execute(CAMERAS_SQL.encode())


def _m13_guards(conn: Conn, timescale: bool) -> None:
    from store.guards import GUARDS_SQL

    conn.execute(GUARDS_SQL.encode())


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "core tables", _m1_core),
    Migration(2, "telemetry and events (hypertables or partitioned)", _m2_timeseries),
    Migration(3, "hourly rollups (continuous aggregates or tables)", _m3_rollups),
    Migration(4, "late rows, ordered rollup refresh, storage job runs, BRIN on ts", _m4_late_rows_and_jobs),
    Migration(5, "operator sessions, login places, SOS source grouping", _m5_accounts_and_sos_source),
    Migration(
        6, "a device's hours recomputed when its row appears or its district changes", _m6_device_hours
    ),
    Migration(7, "the lamp register: a device's address and lamp count", _m7_lamp_register),
    Migration(PRIVACY_MIGRATION, "audit hash chain, SOS documents' coarsening mark", _m8_privacy),
    Migration(9, "alert history: paging and shift indexes", _m9_alert_history),
    Migration(10, "operators' commands: pending and undelivered", _m10_operator_commands),
    Migration(11, "residents' phone numbers, encrypted", _m11_resident_phones),
    Migration(12, "the camera register (national standard CCTV data)", _m12_cameras),
    Migration(13, "the guards' roster, their phones and the alerts sent to them", _m13_guards),
)

BOOTSTRAP_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS store_meta (
    key        text PRIMARY KEY,
    value      text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What a migration run did: versions applied now, and which storage path the database uses."""

    applied: list[str] = field(default_factory=list)
    timescale: bool = False
    timescale_version: str | None = None
    partitions_created: list[str] = field(default_factory=list)


def _meta(conn: Conn, key: str) -> str | None:
    row = conn.execute("SELECT value FROM store_meta WHERE key = %s", (key,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(conn: Conn, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO store_meta (key, value) VALUES (%s, %s) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()",
        (key, value),
    )


PRELOAD_HINT = (
    "add timescaledb to shared_preload_libraries in postgresql.conf and restart PostgreSQL "
    "(docs/operations.md, TimescaleDB)"
)


def timescale_preloaded(conn: Conn) -> bool:
    """True when this server was started with TimescaleDB's loader in ``shared_preload_libraries``.

    ``CREATE EXTENSION timescaledb`` on a server without the preload ends the session with a FATAL
    error, so this is asked first. The loader defines ``timescaledb.max_background_workers``
    (an integer) when it is loaded; without it the name is unknown or, when postgresql.conf sets
    it anyway, a text placeholder. Any role can read ``pg_settings`` for it, unlike
    ``shared_preload_libraries`` itself, which only superusers may read.
    """
    row = conn.execute(
        "SELECT vartype FROM pg_settings WHERE name = 'timescaledb.max_background_workers'"
    ).fetchone()
    return row is not None and row[0] == "integer"


def _refuse_timescale_without_preload(conn: Conn) -> None:
    """Fail clearly when this database has the extension but the server did not preload it.

    Any DDL in such a database, even ``CREATE TABLE IF NOT EXISTS``, loads the extension and ends
    the session with a FATAL error; catalog reads do not.
    """
    has_extension = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if has_extension is not None and not timescale_preloaded(conn):
        raise MigrationError(
            0, f"this database uses TimescaleDB but the server did not preload it: {PRELOAD_HINT}"
        )


def _detect_timescale(conn: Conn, wanted: bool | None) -> tuple[bool, str | None]:
    """Decide the storage path once per database; later runs read the recorded decision."""
    recorded = _meta(conn, "timescaledb")
    if recorded is not None:
        if wanted and recorded != "on":
            raise MigrationError(
                0, "TimescaleDB was asked for but this database was created on native partitioning"
            )
        return recorded == "on", _meta(conn, "timescaledb_version")
    if wanted is False:
        log.info("storage_path_chosen", path="plain", reason="timescaledb_not_wanted")
        _set_meta(conn, "timescaledb", "off")
        return False, None
    row = conn.execute(
        "SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if row is None:
        if wanted:
            raise MigrationError(0, "TimescaleDB was asked for but is not installed on this server")
        log.info("storage_path_chosen", path="plain", reason="timescaledb_not_installed")
        _set_meta(conn, "timescaledb", "off")
        return False, None
    if not timescale_preloaded(conn):
        # Installed but not preloaded (the package is in, postgresql.conf not yet edited):
        # CREATE EXTENSION would end this session with a FATAL error, so it is never tried.
        if wanted:
            raise MigrationError(
                0,
                f"TimescaleDB {row[0]} is installed but not in shared_preload_libraries: {PRELOAD_HINT}",
            )
        log.warning(
            "storage_path_chosen",
            path="plain",
            reason="timescaledb_not_preloaded",
            timescaledb_version=row[0],
            hint=f"to use TimescaleDB, {PRELOAD_HINT} before the first migration",
        )
        _set_meta(conn, "timescaledb", "off")
        return False, None
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        if conn.closed:
            # A FATAL error ended the session: nothing more can be written on it.
            raise MigrationError(
                0, f"CREATE EXTENSION timescaledb ended the session ({exc}); {PRELOAD_HINT}"
            ) from exc
        if wanted:
            raise MigrationError(0, f"CREATE EXTENSION timescaledb failed: {exc}") from exc
        log.warning("storage_path_chosen", path="plain", reason="timescaledb_failed_to_load", error=str(exc))
        _set_meta(conn, "timescaledb", "off")
        return False, None
    version_row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    version = None if version_row is None else str(version_row[0])
    log.info("storage_path_chosen", path="timescaledb", timescaledb_version=version)
    _set_meta(conn, "timescaledb", "on")
    _set_meta(conn, "timescaledb_version", version or "")
    return True, version


def apply_migrations(conn: Conn, *, timescale: bool | None = None) -> MigrationReport:
    """Bring the schema up to date (``timescale``: None detects, False forces the plain path)."""
    if not conn.autocommit:
        raise ValueError(
            "apply_migrations needs an autocommit connection: each migration is its own transaction"
        )
    _refuse_timescale_without_preload(conn)
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    try:
        conn.execute(BOOTSTRAP_SQL.encode())
        use_ts, ts_version = _detect_timescale(conn, timescale)
        done = {int(r[0]) for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        applied: list[str] = []
        for m in MIGRATIONS:
            if m.version in done:
                continue
            try:
                with conn.transaction():
                    m.apply(conn, use_ts)
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (m.version, m.name)
                    )
            except psycopg.Error as exc:
                raise MigrationError(m.version, str(exc)) from exc
            log.info("migration_applied", version=m.version, name=m.name)
            applied.append(f"{m.version}: {m.name}")
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    created = [] if use_ts else ensure_partitions(conn)
    return MigrationReport(applied, use_ts, ts_version or None, created)


def migrate(database_url: str, *, timescale: bool | None = None) -> MigrationReport:
    """Open a connection to ``database_url``, apply the migrations, close it."""
    with connect(database_url) as conn:
        return apply_migrations(conn, timescale=timescale)


def timescale_enabled(conn: Conn) -> bool:
    """True when this database was migrated onto the TimescaleDB path."""
    row = conn.execute("SELECT value FROM store_meta WHERE key = 'timescaledb'").fetchone()
    return row is not None and row[0] == "on"


def schema_version(conn: Conn) -> int:
    """The highest migration applied (0 on an empty database)."""
    if conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,):
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0
