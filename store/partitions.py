"""Daily partitions of the time series on the plain storage path (no TimescaleDB): created ahead
(`ensure_partitions`) and dropped once past retention (`drop_expired_partitions`), each under
its own advisory lock so the job never waits on (or blocks) a migration.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

from psycopg import sql

from runtime.logs import get_logger
from store.schema_sql import DEFAULT_RETENTION, PARTITIONED_TABLES
from store.types import Conn

log = get_logger(__name__)

# Separate key for partition maintenance, so the job never waits on (or blocks) a migration.
PARTITION_LOCK_KEY = 0x534C5054
_PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})$")


def _day_start(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def partition_name(table: str, day: date) -> str:
    """The name of ``table``'s partition for one UTC day, e.g. ``telemetry_p20261125``."""
    return f"{table}_p{day:%Y%m%d}"


def list_partitions(conn: Conn, table: str) -> list[str]:
    """Names of ``table``'s daily partitions (not the default one), oldest first."""
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY c.relname",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows if _PARTITION_NAME.match(str(r[0]))]


def _create_partition(conn: Conn, table: str, day: date) -> None:
    name = partition_name(table, day)
    lo, hi = _day_start(day), _day_start(day + timedelta(days=1))
    default = sql.Identifier(f"{table}_default")
    parent = sql.Identifier(table)
    # Rows for this day already in the default partition would make the new partition's
    # constraint fail; move them across in the same transaction.
    stranded = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE ts >= %s AND ts < %s)").format(default), (lo, hi)
    ).fetchone()
    has_stranded = bool(stranded and stranded[0])
    if has_stranded:
        conn.execute(
            sql.SQL(
                "CREATE TEMP TABLE _stranded ON COMMIT DROP AS "
                "WITH moved AS (DELETE FROM {} WHERE ts >= %s AND ts < %s RETURNING *) SELECT * FROM moved"
            ).format(default),
            (lo, hi),
        )
    conn.execute(
        sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(name), parent, sql.Literal(lo), sql.Literal(hi)
        )
    )
    if has_stranded:
        conn.execute(sql.SQL("INSERT INTO {} SELECT * FROM _stranded").format(parent))
        conn.execute("DROP TABLE _stranded")


def ensure_partitions(
    conn: Conn,
    *,
    now: datetime | None = None,
    days_ahead: int = 3,
    days_back: int = 1,
    tables: tuple[str, ...] = PARTITIONED_TABLES,
) -> list[str]:
    """Create daily partitions from ``days_back`` before today to ``days_ahead`` after; returns new names."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    created: list[str] = []
    for table in tables:
        existing = set(list_partitions(conn, table))
        for offset in range(-days_back, days_ahead + 1):
            day = today + timedelta(days=offset)
            name = partition_name(table, day)
            if name in existing:
                continue
            with conn.transaction():
                # Two workers running the job at once: the second waits, then sees the partition.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK_KEY,))
                if conn.execute("SELECT to_regclass(%s)", (name,)).fetchone() != (None,):
                    continue
                _create_partition(conn, table, day)
            created.append(name)
    if created:
        log.info("partitions_created", count=len(created), partitions=created)
    return created


def drop_expired_partitions(
    conn: Conn,
    *,
    now: datetime | None = None,
    retention: Mapping[str, timedelta] = DEFAULT_RETENTION,
) -> list[str]:
    """Drop daily partitions wholly older than each table's retention (and expired default rows)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    dropped: list[str] = []
    for table, keep in retention.items():
        cutoff = now - keep
        # Rollup refreshes never reach below this: hours there may have lost raw rows.
        conn.execute(
            "INSERT INTO store_meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
            "SET value = greatest(store_meta.value::timestamptz, EXCLUDED.value::timestamptz)::text, "
            "updated_at = now()",
            (f"{table}_retained_from", cutoff.isoformat()),
        )
        for name in list_partitions(conn, table):
            m = _PARTITION_NAME.match(name)
            assert m is not None
            day = datetime.strptime(m["day"], "%Y%m%d").date()
            if _day_start(day + timedelta(days=1)) <= cutoff:
                with conn.transaction():
                    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
                dropped.append(name)
        with conn.transaction():
            cur = conn.execute(
                sql.SQL("DELETE FROM {} WHERE ts < %s").format(sql.Identifier(f"{table}_default")), (cutoff,)
            )
            if cur.rowcount:
                log.info("expired_rows_deleted", table=f"{table}_default", count=cur.rowcount)
    if dropped:
        log.info("partitions_dropped", count=len(dropped), partitions=dropped)
    return dropped
