"""The controller's database adapter: one connection, used from one worker thread, reconnecting.

The store's repositories are synchronous (psycopg ``Connection``); the controller is asyncio. All
calls go through one single-thread executor, so the connection is never shared between threads
and calls keep their order (a command's row is written before its ack is recorded).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

T = TypeVar("T")
Conn = psycopg.Connection[Any]


@dataclass(frozen=True, slots=True)
class LampRow:
    """A lamp or blinker as the controller needs it."""

    device_id: str
    kind: str
    district: str
    lat: float
    lon: float
    lamp_number: str
    paired: str | None


@dataclass(frozen=True, slots=True)
class WalkRow:
    """An active walk with its latest accepted position (None when it has none yet)."""

    walk_id: str
    district: str | None
    lat: float | None
    lon: float | None
    ts_ms: int | None
    accuracy_m: float | None
    heading_deg: float | None
    speed_mps: float | None


class Db:
    """``await db.call(fn, *args)`` runs ``fn(conn, *args)`` on the controller's connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: Conn | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="controller-db")

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._url, autocommit=True, connect_timeout=5)
        return self._conn

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        try:
            return fn(self._connection(), *args)
        except psycopg.OperationalError:
            # The connection may be dead; the next call opens a new one.
            if self._conn is not None:
                self._conn.close()
            self._conn = None
            raise

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(conn, *args)`` in the database thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._run, fn, args)

    def close(self) -> None:
        """Close the connection and stop the thread."""

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()

        self._pool.submit(_close)
        self._pool.shutdown(wait=True)


def load_devices(conn: Conn) -> list[LampRow]:
    """Every lamp and blinker with a position."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT device_id, kind, district_code, lamp_number, lat, lon, paired_device_id FROM devices "
            "WHERE lat IS NOT NULL AND lon IS NOT NULL ORDER BY device_id"
        ).fetchall()
    return [
        LampRow(
            device_id=r["device_id"],
            kind=r["kind"],
            district=r["district_code"],
            lat=float(r["lat"]),
            lon=float(r["lon"]),
            lamp_number=r["lamp_number"] or "",
            paired=r["paired_device_id"],
        )
        for r in rows
    ]


def active_walks(conn: Conn, districts: Sequence[str], fresh_s: float) -> list[WalkRow]:
    """Active walks of the districts with their latest accepted position of the last `fresh_s`."""
    since = datetime.now(UTC) - timedelta(seconds=fresh_s)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT w.walk_id, w.district_code, p.ts, p.lat, p.lon, p.accuracy_m, p.heading_deg, p.speed_m_s
            FROM walks w
            LEFT JOIN LATERAL (
                SELECT ts, lat, lon, accuracy_m, heading_deg, speed_m_s FROM walk_positions
                WHERE walk_id = w.walk_id AND accepted AND ts >= %s ORDER BY ts DESC, id DESC LIMIT 1
            ) p ON true
            WHERE w.status = 'active' AND w.district_code = ANY(%s)
            """,
            (since, list(districts)),
        ).fetchall()
    return [
        WalkRow(
            walk_id=r["walk_id"],
            district=r["district_code"],
            lat=r["lat"],
            lon=r["lon"],
            ts_ms=None if r["ts"] is None else int(r["ts"].timestamp() * 1000),
            accuracy_m=r["accuracy_m"],
            heading_deg=r["heading_deg"],
            speed_mps=r["speed_m_s"],
        )
        for r in rows
    ]


def mark_commands_unanswered(conn: Conn, cmd_ids: Sequence[str]) -> int:
    """Mark this controller's given-up commands unanswered (only those still ``sent``)."""
    return conn.execute(
        "UPDATE commands SET status = 'unanswered' WHERE cmd_id = ANY(%s) AND status = 'sent'",
        (list(cmd_ids),),
    ).rowcount
