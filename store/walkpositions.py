"""Walk positions written in batches: the rows and their wake-up in one statement.

The API gathers the positions of its walkers for a few milliseconds (``api/walkbatch.py``) and
writes them here at once: one statement, so one transaction and one commit (with fsync on, one
flush of the WAL for the whole batch), and one ``NOTIFY sl_walk`` per ~7 kB of positions instead
of one per position. A position is stored only while its walk is active (the walk's row is read
in the same statement), and the notification names only the positions stored.

Payload (``store/alertstore.py`` has the channels)::

    {"op": "positions", "positions": [[walk_id, ts_ms, lat, lon, accuracy_m, heading_deg,
                                       speed_mps, district], ...]}

in the order the positions were queued; ``ts_ms`` is the row's ``ts`` (whole milliseconds), so
the controller's verdict finds its row by walk id and timestamp.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from psycopg import AsyncConnection, pq

# PostgreSQL refuses a NOTIFY payload of 8000 bytes or more; a batch is split into notifications
# of at most this many bytes of positions (~50 positions each).
NOTIFY_BYTES = 7000

_BATCH_SQL = (
    "WITH v AS (SELECT * FROM unnest(%s::text[], %s::timestamptz[], %s::float8[], %s::float8[], "
    "%s::float8[], %s::float8[], %s::float8[], %s::text[], %s::int[]) WITH ORDINALITY "
    "AS v(walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s, note, part, n)), "
    "ok AS MATERIALIZED (SELECT v.* FROM v JOIN walks w ON w.walk_id = v.walk_id AND w.status = 'active'), "
    "ins AS (INSERT INTO walk_positions (walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s) "
    "SELECT walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s FROM ok ORDER BY n), "
    'woke AS (SELECT pg_notify(%s, \'{"op":"positions","positions":[\' '
    "|| string_agg(note, ',' ORDER BY n) || ']}') FROM ok GROUP BY part) "
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

    def note(self) -> bytes:
        """The position as the controller reads it (one entry of the ``positions`` list)."""
        ts_ms = int(self.ts.timestamp() * 1000 + 0.5)
        return orjson.dumps(
            [
                self.walk_id,
                ts_ms,
                self.lat,
                self.lon,
                self.accuracy_m,
                self.heading_deg,
                self.speed_mps,
                self.district,
            ]
        )


def batch_statement(positions: Sequence[QueuedPosition], channel: str) -> tuple[str, tuple[Any, ...]]:
    """The statement and parameters of `add_positions_and_notify`."""
    notes = [p.note().decode() for p in positions]
    parts: list[int] = []
    part, size = 0, 0
    for note in notes:
        if size and size + len(note) + 1 > NOTIFY_BYTES:
            part, size = part + 1, 0
        parts.append(part)
        size += len(note) + 1
    params = (
        [p.walk_id for p in positions],
        [p.ts for p in positions],
        [p.lat for p in positions],
        [p.lon for p in positions],
        [p.accuracy_m for p in positions],
        [p.heading_deg for p in positions],
        [p.speed_mps for p in positions],
        notes,
        parts,
        channel,
    )
    return _BATCH_SQL, params


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
