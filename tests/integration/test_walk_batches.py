"""Walk positions gathered into batches (``api/walkbatch.py``, ``store/walkpositions.py``) against
a real PostgreSQL: one statement and its notifications per batch, in order, all or nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from websockets.sync.client import connect

from api.walkbatch import PositionBatcher, PositionsBusy
from devkit.apiclient import JUNG, fast_config, seed, serve
from store import migrate
from store.notes import WALK_CHANNEL
from store.walkpositions import NOTIFY_BYTES, QueuedPosition
from store.walks import create_resident, end_walk, start_walk

pytestmark = pytest.mark.integration

Pool = AsyncConnectionPool[AsyncConnection[Any]]


def _walks(db_url: str, prefix: str, count: int) -> list[str]:
    migrate(db_url, timescale=False)
    ids = [f"walk-{prefix}-{i}" for i in range(count)]
    with psycopg.connect(db_url, autocommit=True) as conn:
        create_resident(conn, f"res-{prefix}", f"hash-{prefix}")
        for walk_id in ids:
            start_walk(conn, walk_id, f"res-{prefix}", started_at=datetime.now(UTC), district_code="11140")
    return ids


def _position(walk_id: str, k: int) -> QueuedPosition:
    ts = datetime(2026, 12, 7, 20, 0, tzinfo=UTC) + timedelta(milliseconds=k)
    return QueuedPosition(walk_id, ts, 37.565 + k * 1e-6, 126.98, 5.0 + k, 90.0, 1.4, "11140")


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[Pool]:
    migrate(db_url, timescale=False)
    async with AsyncConnectionPool(db_url, min_size=1, max_size=2, kwargs={"autocommit": True}) as p:
        yield p


@pytest.fixture
def listener(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {WALK_CHANNEL}")
        yield conn


def _batches(listener: psycopg.Connection[Any], wanted: int) -> list[list[Any]]:
    """The position lists of the next `wanted` notifications (each checked under the 8000-byte cap)."""
    found: list[list[Any]] = []
    for note in listener.notifies(timeout=5.0, stop_after=wanted):
        assert len(note.payload.encode()) < 8000
        body = json.loads(note.payload)
        assert body["op"] == "positions"
        found.append(body["positions"])
    return found


async def _running(batcher: PositionBatcher) -> asyncio.Task[None]:
    return asyncio.create_task(batcher.run())


async def test_positions_within_the_batching_window_are_one_statement_and_reach_the_controller_in_order(
    db_url: str, pool: Pool, listener: psycopg.Connection[Any], unique_id: str
) -> None:
    walks = _walks(db_url, unique_id, 3)
    batcher = PositionBatcher(pool, WALK_CHANNEL, gather_s=0.2, max_batch=500, max_queue=1000)
    task = await _running(batcher)
    try:
        queued = [_position(walks[k % 3], k) for k in range(9)]
        stored = await asyncio.gather(*(batcher.add(p) for p in queued))
    finally:
        task.cancel()
    assert stored == [True] * 9
    assert batcher.batches == 1  # all nine within the window: one statement
    (entries,) = await asyncio.to_thread(_batches, listener, 1)
    assert [(e[0], e[1]) for e in entries] == [(p.walk_id, int(p.ts.timestamp() * 1000)) for p in queued]
    assert entries[4] == [
        walks[1],
        int(queued[4].ts.timestamp() * 1000),
        queued[4].lat,
        126.98,
        9.0,
        90.0,
        1.4,
        "11140",
        None,
    ]
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT walk_id, ts, accuracy_m FROM walk_positions WHERE walk_id = ANY(%s) ORDER BY id", (walks,)
        ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [(p.walk_id, p.ts, p.accuracy_m) for p in queued]


async def test_a_large_batch_is_split_into_notifications_under_the_payload_cap_in_order(
    db_url: str, pool: Pool, listener: psycopg.Connection[Any], unique_id: str
) -> None:
    (walk,) = _walks(db_url, unique_id, 1)
    batcher = PositionBatcher(pool, WALK_CHANNEL, gather_s=0.2, max_batch=500, max_queue=1000)
    task = await _running(batcher)
    try:
        queued = [_position(walk, k) for k in range(200)]
        assert await asyncio.gather(*(batcher.add(p) for p in queued)) == [True] * 200
    finally:
        task.cancel()
    expected = -(-sum(len(p.note()) + 1 for p in queued) // NOTIFY_BYTES)
    batches = await asyncio.to_thread(_batches, listener, expected + 1)
    assert len(batches) >= 2
    assert [e[1] for batch in batches for e in batch] == [int(p.ts.timestamp() * 1000) for p in queued]


async def test_a_position_of_an_ended_walk_is_neither_stored_nor_notified_while_its_batch_goes_on(
    db_url: str, pool: Pool, listener: psycopg.Connection[Any], unique_id: str
) -> None:
    active, ended = _walks(db_url, unique_id, 2)
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert end_walk(conn, ended, ended_at=datetime.now(UTC))
    batcher = PositionBatcher(pool, WALK_CHANNEL, gather_s=0.2, max_batch=500, max_queue=1000)
    task = await _running(batcher)
    try:
        outcome = await asyncio.gather(
            batcher.add(_position(active, 1)),
            batcher.add(_position(ended, 2)),
            batcher.add(_position(active, 3)),
        )
    finally:
        task.cancel()
    assert list(outcome) == [True, False, True]
    (entries,) = await asyncio.to_thread(_batches, listener, 1)
    assert [e[0] for e in entries] == [active, active]
    with psycopg.connect(db_url) as conn:
        count = conn.execute("SELECT count(*) FROM walk_positions WHERE walk_id = %s", (ended,)).fetchone()
    assert count == (0,)


async def test_a_batch_that_fails_to_commit_is_not_half_applied_and_the_next_batch_goes_through(
    db_url: str, pool: Pool, listener: psycopg.Connection[Any], unique_id: str
) -> None:
    walks = _walks(db_url, unique_id, 2)
    poison = 12.5  # a fault injected in the database: this accuracy makes the INSERT fail
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE OR REPLACE FUNCTION test_refuse_position() RETURNS trigger LANGUAGE plpgsql AS "
            f"$$ BEGIN IF NEW.accuracy_m = {poison} THEN RAISE EXCEPTION 'injected fault'; END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER refuse_{unique_id} BEFORE INSERT ON walk_positions "
            "FOR EACH ROW EXECUTE FUNCTION test_refuse_position()"
        )
    batcher = PositionBatcher(pool, WALK_CHANNEL, gather_s=0.2, max_batch=500, max_queue=1000)
    task = await _running(batcher)
    try:
        good_before = _position(walks[0], 1)
        bad = QueuedPosition(walks[1], good_before.ts, 37.565, 126.98, poison, None, None, "11140")
        outcome = await asyncio.gather(
            batcher.add(good_before),
            batcher.add(bad),
            batcher.add(_position(walks[0], 3)),
            return_exceptions=True,
        )
        assert all(isinstance(o, psycopg.Error) for o in outcome), outcome
        # The batcher goes on: the next batch is stored and notified.
        assert await batcher.add(_position(walks[0], 4)) is True
    finally:
        task.cancel()
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(f"DROP TRIGGER refuse_{unique_id} ON walk_positions")
    (entries,) = await asyncio.to_thread(_batches, listener, 1)  # only the later batch's
    assert [e[1] for e in entries] == [int(_position(walks[0], 4).ts.timestamp() * 1000)]
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT walk_id, accuracy_m FROM walk_positions WHERE walk_id = ANY(%s)", (walks,)
        ).fetchall()
    assert rows == [(walks[0], 9.0)]


async def test_a_full_queue_refuses_at_once_instead_of_waiting(
    db_url: str, pool: Pool, unique_id: str
) -> None:
    (walk,) = _walks(db_url, unique_id, 1)
    batcher = PositionBatcher(pool, WALK_CHANNEL, gather_s=0.0, max_batch=10, max_queue=2)
    # Not running: nothing drains the queue.
    waiting = [asyncio.create_task(batcher.add(_position(walk, k))) for k in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(PositionsBusy):
        await batcher.add(_position(walk, 3))
    task = await _running(batcher)
    try:
        assert await asyncio.gather(*waiting) == [True, True]
    finally:
        task.cancel()


def test_the_walk_track_stored_in_batches_survives_for_the_sos_that_follows(db_url: str) -> None:
    seed(db_url, [("tl1", "11020", JUNG[0], JUNG[1] + 0.0001)])
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        token = c.post("/v1/residents").json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        walk_id = c.post(
            "/v1/walks", json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5.0}, headers=auth
        ).json()["walk_id"]
        url = base.replace("http://", "ws://") + f"/v1/walks/{walk_id}/live"
        with connect(url, additional_headers=auth, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["status"] == "live"
            for k in range(3):
                ws.send(json.dumps({"lat": JUNG[0] + k * 1e-5, "lon": JUNG[1], "accuracy_m": 5.0}))
                assert "lamps" in json.loads(ws.recv(timeout=10))
                if k < 2:
                    time.sleep(0.55)  # under the 2 positions/s limit
        sos = c.post("/v1/sos", json={"lat": JUNG[0], "lon": JUNG[1], "walk_id": walk_id}, headers=auth)
        assert sos.status_code == 202, sos.text
        alert_id = sos.json()["alert_id"]
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT lat, alert_id FROM walk_positions WHERE walk_id = %s ORDER BY ts", (walk_id,)
        ).fetchall()
    # The start and the three socket positions: the whole track, tied to the SOS.
    assert [r[0] for r in rows] == pytest.approx([JUNG[0], JUNG[0], JUNG[0] + 1e-5, JUNG[0] + 2e-5])
    assert {r[1] for r in rows} == {alert_id}
