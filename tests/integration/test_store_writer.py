"""The COPY writer and the batch writer against a real PostgreSQL."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from devkit.localservices import free_port
from store import (
    Batch,
    BatchWriter,
    BufferFull,
    StoreRejected,
    StoreUnavailable,
    write_events,
    write_rows,
    write_telemetry,
)

Conn = psycopg.Connection[Any]


@pytest.fixture
def store_url(storage_url: str) -> str:
    """Every writer test runs on both storage paths (plain and TimescaleDB)."""
    return storage_url


@pytest.fixture
def conn(store_url: str) -> Iterator[Conn]:
    with psycopg.connect(store_url, autocommit=True) as c:
        yield c


def _ms_ago(seconds: float) -> int:
    """Epoch milliseconds ``seconds`` before now. Every row a test writes is recent, as ingest's
    are: on TimescaleDB the retention and columnstore policies run in the background from the
    moment a database is migrated, and drop (or compress) chunks older than their windows while
    the test runs; a 1970 or fixed-date row could vanish between two statements."""
    return int((time.time() - seconds) * 1000)


def _rows(n: int, *, devices: int = 500, start_ms: int | None = None) -> list[tuple[object, ...]]:
    t0 = start_ms if start_ms is not None else int(time.time() * 1000) - n
    no_faults: list[str] = []
    return [
        (t0 + i, f"lamp-{i % devices:05d}", 7, i // devices, 80, 31.5, 221.0, 0.14, 19.5, 1.5,
         ["F1"] if i % 97 == 0 else no_faults, None, None, None, None)
        for i in range(n)
    ]  # fmt: skip


def _count(c: Conn, table: str = "telemetry") -> int:
    row = c.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_the_copy_writer_stores_50000_rows_and_the_count_matches(conn: Conn) -> None:
    rows = _rows(50_000)
    assert write_telemetry(conn, rows) == 50_000
    assert _count(conn) == 50_000
    assert conn.execute("SELECT count(*) FROM telemetry WHERE faults = '{F1}'").fetchone() == (516,)


def test_writing_the_same_batch_twice_stores_each_row_once(conn: Conn) -> None:
    rows = _rows(2_000)
    assert write_telemetry(conn, rows) == 2_000
    assert write_telemetry(conn, rows) == 0
    # A batch holding a message twice, plus one already stored, inserts only what is new.
    again = _rows(1, start_ms=_ms_ago(60))
    assert write_telemetry(conn, [*again, *again, rows[0]]) == 1
    assert _count(conn) == 2_001


def test_the_same_seq_at_another_time_or_connection_is_a_new_row(conn: Conn) -> None:
    base = _rows(1)[0]
    other_ts = (int(str(base[0])) + 1, *base[1:])
    other_bdseq = (base[0], base[1], 8, *base[3:])
    assert write_telemetry(conn, [base, other_ts, other_bdseq]) == 3


def test_binary_and_text_copy_store_the_same_values(conn: Conn) -> None:
    second = datetime.fromtimestamp(int(time.time()) - 60, UTC)
    t_ms = int(second.timestamp()) * 1000
    row = (t_ms + 123, "lamp-x", 3, 9, 55, 12.5, 219.5, 0.057, -3.25, 0.5, ["LAMP_FAIL", "x,y"], None,
           None, None, None)  # fmt: skip
    blinker = (
        t_ms + 456,
        "blink-x",
        3,
        10,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        -71,
        3.5,
        True,
        4,
    )
    write_rows(conn, "telemetry", [row, blinker], binary=True)
    conn.execute("CREATE TABLE copy_check (LIKE telemetry)")
    conn.execute("INSERT INTO copy_check SELECT * FROM telemetry")
    conn.execute("TRUNCATE telemetry")
    write_rows(conn, "telemetry", [row, blinker], binary=False)
    diff = conn.execute(
        "(SELECT * FROM telemetry EXCEPT SELECT * FROM copy_check) "
        "UNION ALL (SELECT * FROM copy_check EXCEPT SELECT * FROM telemetry)"
    ).fetchall()
    assert diff == []
    ts, faults = conn.execute("SELECT ts, faults FROM telemetry WHERE device_id = 'lamp-x'").fetchone() or (
        0,
        0,
    )
    assert ts == second.replace(microsecond=123_000)
    assert faults == ["LAMP_FAIL", "x,y"]


def test_events_are_stored_once_with_their_payload_as_json(conn: Conn) -> None:
    payload = json.dumps({"type": "beacon", "token": "ab12", "rssi": -60, "note": "한글"})
    t_ms = _ms_ago(60)
    ev = (t_ms, "blink-1", 2, 5, "beacon", None, "ab12", -60, payload)
    fault = (t_ms + 1_000, "lamp-1", 2, 6, "fault", "LAMP_FAIL", None, None, None)
    assert write_events(conn, [ev, fault, ev]) == 2
    assert write_events(conn, [ev]) == 0
    row = conn.execute("SELECT payload->>'note', token_hash FROM events WHERE type = 'beacon'").fetchone()
    assert row == ("한글", "ab12")


def test_rssi_in_tenths_of_a_db_is_stored_rounded_not_refused(conn: Conn) -> None:
    # The protocol allows -71.4 dBm (a blinker's uplink, a beacon sighting); the columns hold whole dB.
    t_ms = _ms_ago(60)
    blinker = (t_ms, "bk-1", 0, 1, *([None] * 7), -71.6, 3.5, False, 0)
    beacon = (t_ms, "bk-1", 0, 2, "beacon", None, "ab12", -60.4, None)
    assert write_rows(conn, "telemetry", [blinker]) == 1
    assert write_events(conn, [beacon]) == 1
    assert conn.execute("SELECT rssi_dbm FROM telemetry").fetchone() == (-72,)
    assert conn.execute("SELECT rssi FROM events").fetchone() == (-60,)


def test_the_batch_writer_flushes_when_the_buffer_reaches_max_rows(store_url: str, conn: Conn) -> None:
    written: list[tuple[Batch, int]] = []
    with BatchWriter(
        store_url, max_rows=100, max_delay_s=60.0, on_written=lambda b, n: written.append((b, n))
    ) as writer:
        for i, row in enumerate(_rows(250)):
            writer.add(row, tag=i)
        # on_written runs after the commit: wait for both callbacks, not only the rows
        assert _wait_for(lambda: _count(conn) == 200 and len(written) == 2)
        assert writer.pending == 50  # the rest waits for its minute, not flushed early
        assert [len(b.rows) for b, _ in written] == [100, 100]
        assert written[0][0].tags == list(range(100))
    assert _count(conn) == 250  # close flushes what is left


def test_the_batch_writer_flushes_by_time_when_the_buffer_stays_small(store_url: str, conn: Conn) -> None:
    with BatchWriter(store_url, max_rows=10_000, max_delay_s=0.2) as writer:
        started = time.monotonic()
        writer.add_many(_rows(5))
        assert _wait_for(lambda: _count(conn) == 5, timeout_s=3.0)
        elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 2.0
    assert writer.rows_inserted == 5


def test_the_batch_writer_refuses_rows_beyond_its_capacity(store_url: str) -> None:
    writer = BatchWriter(store_url, max_rows=10, capacity=20)  # not started: nothing drains
    writer.add_many(_rows(20))
    with pytest.raises(BufferFull):
        writer.add(_rows(1)[0])
    with pytest.raises(BufferFull):
        writer.add_many(_rows(1))
    assert writer.pending == 20


def test_flush_raises_store_unavailable_and_keeps_the_rows_when_the_database_is_unreachable() -> None:
    writer = BatchWriter(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none", max_rows=10, connect_timeout_s=2
    )
    writer.add_many(_rows(25), tags=list(range(25)))
    with pytest.raises(StoreUnavailable) as caught:
        writer.flush()
    assert caught.value.rows == 10
    assert writer.pending == 25
    drained = writer.drain()
    assert drained.tags == list(range(25))
    assert writer.pending == 0


def test_the_writer_thread_hands_failed_batches_to_the_caller_to_spool() -> None:
    spooled: list[Batch] = []

    def spool(batch: Batch, exc: StoreUnavailable) -> bool:
        spooled.append(batch)
        return True

    writer = BatchWriter(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none", max_rows=10, max_delay_s=0.01, on_failed=spool
    )
    with writer:
        writer.add_many(_rows(10))
        assert _wait_for(lambda: len(spooled) == 1)
    assert writer.pending == 0
    assert len(spooled[0].rows) == 10


def test_a_row_the_database_refuses_is_isolated_and_the_rest_of_its_batch_is_written(
    store_url: str, conn: Conn
) -> None:
    rows = _rows(100)
    bad = (*rows[37][:4], 70_000, *rows[37][5:])  # level does not fit a smallint
    rows[37] = bad
    rejected: list[Batch] = []
    written: list[int] = []
    writer = BatchWriter(
        store_url,
        max_rows=100,
        on_rejected=lambda b, exc: rejected.append(b),
        on_written=lambda b, n: written.append(len(b.rows)),
    )
    writer.add_many(rows, tags=list(range(100)))
    assert writer.flush() == 99
    assert _count(conn) == 99
    assert [b.tags for b in rejected] == [[37]]
    assert written == [99]
    writer.add(_rows(1, start_ms=_ms_ago(60))[0])
    writer.close()  # never started: close writes what is left, in this thread
    assert writer.pending == 0
    assert _count(conn) == 100
    with pytest.raises(StoreRejected):
        write_telemetry(conn, [bad])


def test_the_direct_copy_stores_what_the_staging_path_stores_and_falls_back_on_duplicates(conn: Conn) -> None:
    # Ingest's fast path COPYs straight into telemetry; a batch holding a redelivery falls back to
    # the staging table, so the count of new rows (the duplicate counter) stays exact.
    rows = _rows(1_000)
    blinker = (rows[0][0], "blink-d", 3, 1, *([None] * 6), [], -72, 3.5, True, 4)
    assert write_rows(conn, "telemetry", [*rows, blinker], direct=True) == 1_001
    conn.execute("CREATE TABLE direct_copy AS SELECT * FROM telemetry")
    conn.execute("TRUNCATE telemetry")
    assert write_rows(conn, "telemetry", [*rows, blinker]) == 1_001
    diff = conn.execute(
        "(SELECT * FROM telemetry EXCEPT SELECT * FROM direct_copy) "
        "UNION ALL (SELECT * FROM direct_copy EXCEPT SELECT * FROM telemetry)"
    ).fetchall()
    assert diff == []
    a_minute_ago = _ms_ago(60)
    more = _rows(10, start_ms=a_minute_ago)
    assert write_rows(conn, "telemetry", [*more, rows[5]], direct=True) == 10  # one already stored
    assert write_rows(conn, "telemetry", [more[0]], direct=True) == 0
    three = _rows(3, start_ms=a_minute_ago + 4)
    assert write_rows(conn, "telemetry", [*three, three[0]], direct=True) == 3
    assert _count(conn) == 1_001 + 10 + 3
    # A value the direct types cannot carry (a fractional RSSI) is stored by the staging path.
    odd = (rows[0][0], "blink-e", 3, 1, *([None] * 6), [], -71.6, 3.5, True, 4)
    assert write_rows(conn, "telemetry", [odd], direct=True) == 1
    assert conn.execute("SELECT rssi_dbm FROM telemetry WHERE device_id = 'blink-e'").fetchone() == (-72,)


def test_a_row_inside_the_retention_outlives_a_retention_run_and_one_past_it_does_not(conn: Conn) -> None:
    # Late rows of any age are accepted (docs/ingest.md); retention drops only whole days wholly
    # past it (TimescaleDB chunks, plain partitions) and default-partition rows past the cutoff,
    # so a stored row inside the retention never goes, even one an hour from the boundary.
    from store.schema import DEFAULT_RETENTION
    from tests.helpers import run_retention_now

    day_s, hour_s = 86_400, 3_600
    keep_t, keep_e = (DEFAULT_RETENTION[table].total_seconds() for table in ("telemetry", "events"))
    inside, past, now = (_rows(1, start_ms=_ms_ago(s))[0] for s in (keep_t - hour_s, keep_t + 2 * day_s, 0))
    assert write_telemetry(conn, [inside, past, now]) == 3
    fault = ("lamp-1", 2, 6, "fault", "LAMP_FAIL", None, None, None)
    ev_inside, ev_past = ((_ms_ago(s), *fault) for s in (keep_e - hour_s, keep_e + 2 * day_s))
    assert write_events(conn, [ev_inside, ev_past]) == 2
    run_retention_now(conn)
    as_ms = "SELECT (extract(epoch FROM ts) * 1000)::bigint FROM {} ORDER BY ts"
    assert [r[0] for r in conn.execute(as_ms.format("telemetry"))] == [inside[0], now[0]]
    assert [r[0] for r in conn.execute(as_ms.format("events"))] == [ev_inside[0]]


def test_a_batch_transaction_commits_what_its_savepoint_did_not_roll_back(conn: Conn) -> None:
    from store.connections import batch_transaction, savepoint

    conn.execute("CREATE TEMP TABLE t (v int)")
    with batch_transaction(conn, rows=2):
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(psycopg.errors.DivisionByZero), savepoint(conn, rows=2):
            conn.execute("INSERT INTO t VALUES (2)")
            conn.execute("SELECT 1 / 0")
    assert conn.execute("SELECT array_agg(v) FROM t").fetchone() == ([1],)


def test_a_connection_lost_in_a_batch_transaction_is_store_unavailable_with_the_batchs_rows(
    store_url: str,
) -> None:
    from store.connections import batch_transaction, close_quietly, savepoint
    from store.connections import connect_or_unavailable as connect

    with pytest.raises(StoreUnavailable, match="cannot connect"):
        connect(f"postgresql://streetlight@127.0.0.1:{free_port()}/streetlight", connect_timeout_s=2)
    for nested in (False, True):
        conn = connect(store_url)
        pid = conn.info.backend_pid
        with (
            psycopg.connect(store_url, autocommit=True) as admin,
            pytest.raises(StoreUnavailable) as caught,
            batch_transaction(conn, rows=7),
        ):
            admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))  # waits until it is gone
            if nested:
                with savepoint(conn, rows=7):
                    conn.execute("SELECT 1")
            else:
                conn.execute("SELECT 1")
        assert caught.value.rows == 7
        close_quietly(conn)
        close_quietly(conn)  # twice, on a broken connection: never raises
