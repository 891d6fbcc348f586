"""One database connection used from one worker thread, for an asyncio service.

The store's repositories are synchronous (psycopg ``Connection``); the controller is asyncio. All
calls go through one single-thread executor, so the connection is never shared between threads
and calls keep their order (a command's row is written before its ack is recorded). A call that
finds the connection dead drops it; the next call opens a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psycopg

from store.connections import connect
from store.errors import DatabaseError
from store.types import Conn

T = TypeVar("T")

DbError = DatabaseError
"""What a call raises when the database refuses it or cannot be reached."""


class DbThread:
    """``await db.call(fn, *args)`` runs ``fn(conn, *args)`` on the thread's connection."""

    def __init__(self, url: str, *, name: str = "db") -> None:
        self._url = url
        self._conn: Conn | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self._url, connect_timeout_s=5)
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
