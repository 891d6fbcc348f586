"""The ingest hot path: rows as tuples, COPYed into a staging table, inserted once each.

A batch goes ``COPY (binary) -> temp staging table -> INSERT ... SELECT ... ON CONFLICT DO
NOTHING`` in one transaction, so a redelivered message (same device, ts, seq, bdseq) is stored
once and the caller learns how many rows were really new (for duplicate counting). Timestamps
travel as epoch milliseconds (``ts_ms``, as on the wire) and become ``timestamptz`` in SQL, which
saves a ``datetime`` per row in Python.

:class:`BatchWriter` adds a bounded buffer and a writer thread that flushes by size or age. A
caller that writes batches of its own in one transaction each (ingest's worker) uses
``store.connections`` (``connect_or_unavailable``, ``batch_transaction``, ``savepoint``): a lost
connection is ``StoreUnavailable`` (spool, retry).

Over 500 lines on purpose: the row layouts, the binary COPY dumpers and the staging-table SQL are
one contract (a field added to a layout must change all three together), and `BatchWriter` is
their only buffered caller; split apart, each half would have to be read with the other open.
"""

from __future__ import annotations

import contextlib
import operator
import random
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import postgres
from psycopg.adapt import Dumper
from psycopg.pq import Format

from runtime.logs import get_logger
from store.connections import connect_or_unavailable
from store.errors import BufferFull, StoreRejected, StoreUnavailable
from store.schema_sql import LATE_AFTER
from store.types import Conn

log = get_logger(__name__)

Kind = Literal["telemetry", "events"]

# Row layouts, in order. Lamp rows leave the blinker fields None and the other way round.
TELEMETRY_FIELDS = (
    "ts_ms", "device_id", "bdseq", "seq", "level", "power_w", "voltage_v", "current_a",
    "temp_c", "lux", "faults", "rssi_dbm", "battery_v", "blinking", "sightings",
)  # fmt: skip
# Staging types are the widest of their kind on purpose: psycopg's binary int2/float4 dumpers
# wrap silently (70000 arrives as 4464, 1e300 as inf, measured), while int8/float8 values are
# range-checked by PostgreSQL's own cast into the real column, which refuses the row instead.
# RSSI is staged as float8 (the protocol allows tenths of a dB) and rounded by PostgreSQL's
# assignment cast into the smallint column.
TELEMETRY_TYPES = (
    "int8", "text", "int8", "int8", "int8", "float8", "float8", "float8",
    "float8", "float8", "text[]", "float8", "float8", "bool", "int8",
)  # fmt: skip
# ``payload`` is the JSON text of the event (or None); it is cast to jsonb in SQL.
EVENT_FIELDS = ("ts_ms", "device_id", "bdseq", "seq", "type", "code", "token_hash", "rssi", "payload")
EVENT_TYPES = ("int8", "text", "int8", "int8", "text", "text", "text", "float8", "text")

TelemetryRow = tuple[Any, ...]
"""(ts_ms, device_id, bdseq, seq, level, power_w, voltage_v, current_a, temp_c, lux, faults,
rssi_dbm, battery_v, blinking, sightings)"""
EventRow = tuple[Any, ...]
"""(ts_ms, device_id, bdseq, seq, type, code, token_hash, rssi, payload_json)"""


@dataclass(frozen=True, slots=True)
class _Layout:
    fields: tuple[str, ...]
    types: tuple[str, ...]
    stage_ddl: str
    insert_sql: str


def _layout(table: str, fields: tuple[str, ...], types: tuple[str, ...], casts: dict[str, str]) -> _Layout:
    stage = f"{table}_stage"
    cols = ", ".join(f"{f} {t}" for f, t in zip(fields, types, strict=True))
    target = ["ts" if f == "ts_ms" else f for f in fields]
    source = [casts.get(f, f) for f in fields]
    return _Layout(
        fields,
        types,
        # ON COMMIT DELETE ROWS: the stage is empty at the start of every batch transaction.
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({cols}) ON COMMIT DELETE ROWS",
        f"INSERT INTO {table} ({', '.join(target)}) SELECT {', '.join(source)} FROM {stage} "
        "ON CONFLICT DO NOTHING",
    )


_TS_CAST = "timestamptz 'epoch' + ts_ms * interval '1 millisecond'"
LAYOUTS: dict[str, _Layout] = {
    "telemetry": _layout("telemetry", TELEMETRY_FIELDS, TELEMETRY_TYPES, {"ts_ms": _TS_CAST}),
    "events": _layout("events", EVENT_FIELDS, EVENT_TYPES, {"ts_ms": _TS_CAST, "payload": "payload::jsonb"}),
}

# The direct path (``write_rows(..., direct=True)``): COPY straight into telemetry, in a savepoint,
# with the columns' own binary types. About half the server's work of the staging path per row
# (a throwaway script, one connection, 100,000 rows: 153-165k -> 272-315k rows/s), for batches
# with no duplicate in them, which is nearly all of them; a duplicate (a redelivery) rolls the
# savepoint back and the batch takes the staging path. Binary int2/float4 dumpers wrap
# out-of-range values silently, so only rows whose every value is known to fit may go this way:
# ingest's rows are validated by the protocol schemas, whose bounds fit the columns
# (tests/unit/test_store_direct.py keeps them in step), and ingest rounds RSSI to whole dB before.
DIRECT_TELEMETRY_TYPES = (
    "timestamptz", "text", "int8", "int8", "int2", "float4", "float4", "float4",
    "float4", "float4", "text[]", "int2", "float4", "bool", "int4",
)  # fmt: skip
_EPOCH_2000_MS = 946_684_800_000
_first = operator.itemgetter(0)
_pack_int8 = struct.Struct(">q").pack


class _EpochMsTimestamptzDumper(Dumper):
    """Epoch milliseconds (an int) as binary timestamptz (microseconds since 2000-01-01 UTC)."""

    format = Format.BINARY
    oid = postgres.types["timestamptz"].oid

    def dump(self, obj: Any) -> bytes:
        return _pack_int8((obj - _EPOCH_2000_MS) * 1000)


_DIRECT_COPY_SQL = (
    f"COPY telemetry ({', '.join('ts' if f == 'ts_ms' else f for f in TELEMETRY_FIELDS)}) "
    "FROM STDIN (FORMAT BINARY)"
)


_HOUR_MS = 3_600_000
_LATE_AFTER_MS = int(LATE_AFTER.total_seconds() * 1000)
_MARK_LATE_SQL = (
    "INSERT INTO rollup_dirty_hours (hour) "
    "SELECT timestamptz 'epoch' + h * interval '1 hour' FROM unnest(%s::bigint[]) h "
    "ON CONFLICT DO NOTHING"
)


def _mark_late_hours(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> None:
    """Record the hours of late telemetry rows (in the caller's transaction) for the rollup refresh.

    In-time batches pay one ``min`` over their timestamps (about 0.13 ms for 5,000 rows) and no
    statement; a batch with late rows adds one small INSERT on the plain path (docs/ingest.md)."""
    if not rows:
        return
    cutoff_ms = int(time.time() * 1000) - _LATE_AFTER_MS
    if min(map(_first, rows)) >= cutoff_ms:
        return
    if _on_timescale(conn):
        return  # the continuous aggregates' invalidation log records late rows there
    hours = sorted({r[0] // _HOUR_MS for r in rows if r[0] < cutoff_ms})
    conn.execute(_MARK_LATE_SQL, (hours,))


# The storage path of each connection the writer has seen, asked once (it never changes).
_paths: weakref.WeakKeyDictionary[Conn, bool] = weakref.WeakKeyDictionary()


def _on_timescale(conn: Conn) -> bool:
    if conn not in _paths:
        row = conn.execute("SELECT value FROM store_meta WHERE key = 'timescaledb'").fetchone()
        _paths[conn] = row is not None and row[0] == "on"
    return _paths[conn]


def _write_direct(conn: Conn, rows: Sequence[tuple[Any, ...]]) -> bool:
    """COPY telemetry rows straight into the table; False (nothing written) when the stage must do it."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.adapters.register_dumper(None, _EpochMsTimestamptzDumper)
            with cur.copy(_DIRECT_COPY_SQL) as copy:
                copy.set_types(list(DIRECT_TELEMETRY_TYPES))
                write_row = copy.write_row
                for row in rows:
                    write_row(row)
            _mark_late_hours(conn, rows)
        return True
    except (psycopg.OperationalError, psycopg.InterfaceError):
        raise
    except (psycopg.Error, TypeError, ValueError, OverflowError, struct.error) as exc:
        # A duplicate (the usual case) or anything else: the staging path sorts it out.
        log.debug("direct_copy_fell_back_to_staging", kind="telemetry", error=str(exc))
        return False


# Connections on which a staging table already exists (temp tables live as long as the session).
_staged: weakref.WeakKeyDictionary[Conn, set[str]] = weakref.WeakKeyDictionary()


def _ensure_stage(conn: Conn, kind: str) -> None:
    seen = _staged.setdefault(conn, set())
    if kind not in seen:
        conn.execute(LAYOUTS[kind].stage_ddl)
        seen.add(kind)


def write_rows(
    conn: Conn, kind: Kind, rows: Iterable[tuple[Any, ...]], *, binary: bool = True, direct: bool = False
) -> int:
    """COPY ``rows`` into ``kind`` (telemetry or events) in one transaction; returns rows newly inserted.

    ``direct=True`` (telemetry): try the direct COPY first; only for rows whose values are known to
    fit the columns (see ``DIRECT_TELEMETRY_TYPES``).
    """
    layout = LAYOUTS[kind]
    fmt = "BINARY" if binary else "TEXT"
    if direct and kind == "telemetry" and binary:
        rows = rows if isinstance(rows, Sequence) else list(rows)
        try:
            if _write_direct(conn, rows):
                return len(rows)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"writing {kind} failed: {exc}") from exc
    try:
        with conn.transaction():
            _ensure_stage(conn, kind)
            with conn.cursor() as cur:
                copy_sql = f"COPY {kind}_stage ({', '.join(layout.fields)}) FROM STDIN (FORMAT {fmt})"
                with cur.copy(copy_sql) as copy:
                    copy.set_types(list(layout.types))
                    write_row = copy.write_row
                    for row in rows:
                        write_row(row)
                cur.execute(layout.insert_sql)
                inserted = cur.rowcount
            if kind == "telemetry":
                if not isinstance(rows, Sequence):
                    rows = conn.execute(
                        f"SELECT ts_ms FROM {kind}_stage WHERE ts_ms < %s",
                        (int(time.time() * 1000) - _LATE_AFTER_MS,),
                    ).fetchall()
                _mark_late_hours(conn, rows)
            return inserted
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        _staged.pop(conn, None)
        raise StoreUnavailable(f"writing {kind} failed: {exc}") from exc
    except (psycopg.Error, TypeError, ValueError, OverflowError) as exc:
        _staged.pop(conn, None)  # a staging table created in the rolled-back transaction is gone
        # A value the column type refuses (or the binary encoder cannot dump): the transaction
        # rolled back and the connection stays usable; resending the same rows cannot succeed.
        raise StoreRejected(f"{kind} rows refused: {exc}") from exc


def write_telemetry(conn: Conn, rows: Iterable[TelemetryRow]) -> int:
    """Store telemetry rows (see ``TELEMETRY_FIELDS``) once each; returns how many were new."""
    return write_rows(conn, "telemetry", rows)


def write_events(conn: Conn, rows: Iterable[EventRow]) -> int:
    """Store event rows (see ``EVENT_FIELDS``) once each; returns how many were new."""
    return write_rows(conn, "events", rows)


# --------------------------------------------------------------------------- batch writer


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows handed to the database together, with the caller's tags (e.g. MQTT message ids)."""

    rows: list[tuple[Any, ...]]
    tags: list[object]


OnWritten = Callable[[Batch, int], None]
"""Called from the writer thread after a batch committed, with the number of rows newly inserted."""
OnFailed = Callable[[Batch, StoreUnavailable], bool]
"""Called when a batch could not be written; return True when the caller took the rows (spooled
them), False to keep them buffered for a retry."""
OnRejected = Callable[[Batch, StoreRejected], None]
"""Called with the rows the database refused (isolated by splitting the batch), e.g. to keep them
as dead letters; they are not retried."""


class BatchWriter:
    """A bounded buffer of rows for one table, flushed by a writer thread by size or age.

    ``add`` never blocks: it raises :class:`BufferFull` when ``capacity`` rows are waiting (the
    caller spools or applies back-pressure). When the database is unreachable, ``on_failed``
    gets the batch; rows it does not take stay buffered and are retried after a capped, jittered
    backoff. Rows the database refuses (bad values) are isolated by splitting the batch and given
    to ``on_rejected``; the rest of their batch is written.
    """

    def __init__(
        self,
        conninfo: str,
        kind: Kind = "telemetry",
        *,
        max_rows: int = 5000,
        max_delay_s: float = 0.2,
        capacity: int = 100_000,
        on_written: OnWritten | None = None,
        on_failed: OnFailed | None = None,
        on_rejected: OnRejected | None = None,
        connect_timeout_s: int = 5,
    ) -> None:
        if max_rows > capacity:
            raise ValueError("max_rows must not exceed capacity")
        self.conninfo = conninfo
        self.kind: Kind = kind
        self.max_rows = max_rows
        self.max_delay_s = max_delay_s
        self.capacity = capacity
        self.on_written = on_written
        self.on_failed = on_failed
        self.on_rejected = on_rejected
        self.rows_rejected = 0
        self.connect_timeout_s = connect_timeout_s
        self.rows_written = 0
        self.rows_inserted = 0
        self.batches = 0
        self.failures = 0
        self._rows: deque[tuple[Any, ...]] = deque()
        self._tags: deque[object] = deque()
        self._oldest: float | None = None
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._conn: Conn | None = None
        self._io_lock = threading.Lock()  # one batch on the connection at a time

    # -- producer side

    @property
    def pending(self) -> int:
        """Rows waiting in the buffer."""
        return len(self._rows)

    def add(self, row: tuple[Any, ...], tag: object = None) -> None:
        """Queue one row (and an optional tag returned with its batch); raises BufferFull."""
        with self._cond:
            if len(self._rows) >= self.capacity:
                raise BufferFull(self.capacity)
            if not self._rows:
                # The writer thread sleeps without a deadline while the buffer is empty: wake it
                # so it starts this row's max_delay_s clock (once per batch, not per row).
                self._oldest = time.monotonic()
                self._cond.notify()
            self._rows.append(row)
            self._tags.append(tag)
            if len(self._rows) == self.max_rows:
                self._cond.notify()

    def add_many(self, rows: Sequence[tuple[Any, ...]], tags: Sequence[object] | None = None) -> None:
        """Queue several rows at once, all or none; raises BufferFull."""
        with self._cond:
            if len(self._rows) + len(rows) > self.capacity:
                raise BufferFull(self.capacity)
            if not self._rows:
                self._oldest = time.monotonic()
                self._cond.notify()
            self._rows.extend(rows)
            self._tags.extend(tags if tags is not None else [None] * len(rows))
            if len(self._rows) >= self.max_rows:
                self._cond.notify()

    # -- writing

    def _take(self) -> Batch:
        n = min(self.max_rows, len(self._rows))
        rows = [self._rows.popleft() for _ in range(n)]
        tags = [self._tags.popleft() for _ in range(n)]
        self._oldest = time.monotonic() if self._rows else None
        return Batch(rows, tags)

    def _put_back(self, batch: Batch) -> None:
        self._rows.extendleft(reversed(batch.rows))
        self._tags.extendleft(reversed(batch.tags))
        self._oldest = self._oldest or time.monotonic()

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = connect_or_unavailable(self.conninfo, connect_timeout_s=self.connect_timeout_s)
        return self._conn

    def _write(self, batch: Batch) -> int:
        with self._io_lock:
            try:
                inserted, rejected = self._write_isolating(self._connection(), batch)
            except StoreUnavailable as exc:
                # Halves already committed are safe to send again: the dedup key drops them.
                self._drop_connection()
                raise StoreUnavailable(str(exc), rows=len(batch.rows)) from exc
        self.rows_written += len(batch.rows) - len(rejected.rows)
        self.rows_inserted += inserted
        self.batches += 1
        if rejected.rows:
            self.rows_rejected += len(rejected.rows)
            self._call("on_rejected", rejected, StoreRejected(f"{len(rejected.rows)} rows refused"))
        if self.on_written is not None:
            written = batch
            if rejected.rows:
                bad = {id(r) for r in rejected.rows}
                keep = [i for i, r in enumerate(batch.rows) if id(r) not in bad]
                written = Batch([batch.rows[i] for i in keep], [batch.tags[i] for i in keep])
            self._call("on_written", written, inserted)
        return inserted

    def _write_isolating(self, conn: Conn, batch: Batch) -> tuple[int, Batch]:
        """Write a batch; when the database refuses it, split it to find the rows at fault."""
        try:
            return write_rows(conn, self.kind, batch.rows), Batch([], [])
        except StoreRejected as exc:
            if len(batch.rows) == 1:
                log.error("row_refused", kind=self.kind, error=str(exc))
                return 0, batch
        mid = len(batch.rows) // 2
        n1, bad1 = self._write_isolating(conn, Batch(batch.rows[:mid], batch.tags[:mid]))
        n2, bad2 = self._write_isolating(conn, Batch(batch.rows[mid:], batch.tags[mid:]))
        return n1 + n2, Batch(bad1.rows + bad2.rows, bad1.tags + bad2.tags)

    def _call(self, name: str, *args: Any) -> Any:
        """Run a caller's callback; its exception is logged, never allowed to stop the writer."""
        callback = getattr(self, name)
        if callback is None:
            return None
        try:
            return callback(*args)
        except Exception:
            log.exception("writer_callback_failed", callback=name, kind=self.kind)
            return None

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None

    def flush(self) -> int:
        """Write everything buffered now, in this thread; returns rows newly inserted.

        Raises StoreUnavailable when the database cannot be reached; the unwritten rows stay
        buffered (``pending``) for the caller to retry or ``drain`` into a spool.
        """
        inserted = 0
        while True:
            with self._cond:
                if not self._rows:
                    return inserted
                batch = self._take()
            try:
                inserted += self._write(batch)
            except StoreUnavailable:
                with self._cond:
                    self._put_back(batch)
                raise

    def drain(self) -> Batch:
        """Take every buffered row out (e.g. to spool it) and return them with their tags."""
        with self._cond:
            batch = Batch(list(self._rows), list(self._tags))
            self._rows.clear()
            self._tags.clear()
            self._oldest = None
            return batch

    # -- writer thread

    def start(self) -> BatchWriter:
        """Start the writer thread (flush by size or age); returns self."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"store-writer-{self.kind}", daemon=True)
            self._thread.start()
        return self

    def _due(self) -> float | None:
        """Seconds until the buffer is due (0 = now), or None when it is empty."""
        if not self._rows:
            return None
        if len(self._rows) >= self.max_rows or self._closing:
            return 0.0
        assert self._oldest is not None
        return max(0.0, self._oldest + self.max_delay_s - time.monotonic())

    def _loop(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while True:
                    due = self._due()
                    if due == 0.0:
                        break
                    if due is None and self._closing:
                        return
                    self._cond.wait(timeout=due)
                batch = self._take()
            try:
                self._write(batch)
                failures = 0
            except StoreUnavailable as exc:
                failures += 1
                self.failures += 1
                taken = bool(self._call("on_failed", batch, exc))
                if self.on_failed is None:
                    log.warning("rows_not_written", count=len(batch.rows), kind=self.kind, error=str(exc))
                with self._cond:
                    if not taken:
                        self._put_back(batch)
                    if self._closing and not taken:
                        return  # closing with the database away: rows stay for drain()
                    # Capped exponential backoff with jitter before the next attempt.
                    self._cond.wait(timeout=random.uniform(0, min(5.0, 0.1 * 2 ** min(failures, 6))))

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush what is buffered (best effort) and stop the thread; unwritten rows stay for ``drain``."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        elif self._rows:
            with contextlib.suppress(StoreUnavailable):
                self.flush()
        with self._io_lock:
            self._drop_connection()

    def __enter__(self) -> BatchWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
