"""Walk positions written in batches: the rows and their wake-up in one statement.

The API gathers the positions of its walkers for a few milliseconds (``api/walkbatch.py``) and
writes them here at once: one statement, so one transaction and one commit (with fsync on, one
flush of the WAL for the whole batch), and one ``NOTIFY sl_walk`` per ~7 kB of positions instead
of one per position. A position is stored only while its walk is active (the walk's row is read
in the same statement), and the notification names only the positions stored.

The notification is a `store.notes.WalkPositions` (``{"op": "positions", "positions": [...]}``)
whose entries are the positions in the order they were queued; ``ts_ms`` is the row's ``ts``
(whole milliseconds), so the controller's verdict finds its row by walk id and timestamp; the
lamp ids are the API's ``geo.lamps_for_walker`` answer for the position (what the resident was
told), which the controller uses when it trusts the heading instead of computing them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection, pq

from store.notes import POSITIONS_HEAD, POSITIONS_TAIL, PositionNote, encode_position

# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a batch is split into notifications
# of at most this many bytes of positions (~50 positions each).
NOTIFY_BYTES = 7000

# The batch travels as one JSON parameter (psycopg dumps a Python list into an array element by
# element in Python: ten arrays cost the API more than the rest of the statement), one element per
# position: [walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_mps, note, part]; ``note`` is the
# notification's entry as JSON (``json`` keeps its text as sent), ``part`` its notification.
_BATCH_SQL = (
    "WITH v AS (SELECT e.n, e.x->>0 AS walk_id, (e.x->>1)::timestamptz AS ts, (e.x->>2)::float8 AS lat, "
    "(e.x->>3)::float8 AS lon, (e.x->>4)::float8 AS accuracy_m, (e.x->>5)::float8 AS heading_deg, "
    "(e.x->>6)::float8 AS speed_m_s, (e.x->7)::text AS note, (e.x->>8)::int AS part "
    "FROM json_array_elements(%s::json) WITH ORDINALITY AS e(x, n)), "
    "ok AS MATERIALIZED (SELECT v.* FROM v JOIN walks w ON w.walk_id = v.walk_id AND w.status = 'active'), "
    "ins AS (INSERT INTO walk_positions (walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s) "
    "SELECT walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s FROM ok ORDER BY n), "
    "woke AS (SELECT pg_notify(%s, %s::text || string_agg(note, ',' ORDER BY n) || %s::text) "
    "FROM ok GROUP BY part) "
    "SELECT array(SELECT n FROM ok ORDER BY n), (SELECT count(*) FROM woke)"
)


@dataclass(frozen=True, slots=True)
class QueuedPosition:
    """A validated position of a walk, waiting for its batch (``ts`` in whole milliseconds)."""

    walk_id: str
    ts: datetime
    lat: float
    lon: float
    accuracy_m: float | None
    heading_deg: float | None
    speed_mps: float | None
    district: str | None
    lamps: tuple[str, ...] | None = None  # None: not computed (the controller computes them)

    def note(self) -> bytes:
        """The position as the controller reads it (one entry of the ``positions`` list)."""
        ts_ms = int(self.ts.timestamp() * 1000 + 0.5)
        return encode_position(
            PositionNote(
                self.walk_id,
                ts_ms,
                self.lat,
                self.lon,
                self.accuracy_m,
                self.heading_deg,
                self.speed_mps,
                self.district,
                self.lamps,
            )
        )


def batch_statement(positions: Sequence[QueuedPosition], channel: str) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of `add_positions_and_notify`."""
    rows: list[tuple[Any, ...]] = []
    part, size = 0, 0
    for p in positions:
        note = p.note()
        if size and size + len(note) + 1 > NOTIFY_BYTES:
            part, size = part + 1, 0
        size += len(note) + 1
        entry = orjson.Fragment(note)
        rows.append((p.walk_id, p.ts, p.lat, p.lon, p.accuracy_m, p.heading_deg, p.speed_mps, entry, part))
    return _BATCH_SQL, (orjson.dumps(rows).decode(), channel, POSITIONS_HEAD, POSITIONS_TAIL)


async def add_positions_and_notify(
    conn: AsyncConnection[Any], positions: Sequence[QueuedPosition], channel: str
) -> list[bool]:
    """Store the positions of active walks and wake the controller, in one statement (its own
    transaction: all or nothing); returns, per position, whether it was stored (False: its walk
    is not active, nothing written or notified for it)."""
    if not positions:
        return []
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise RuntimeError("add_positions_and_notify commits on its own; call it outside a transaction")
    cur = await conn.execute(*batch_statement(positions, channel))
    row = await cur.fetchone()
    stored = set(row[0]) if row is not None else set()
    return [n in stored for n in range(1, len(positions) + 1)]
