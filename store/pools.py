"""The API's connection pools: a thread pool's (sync) and the event loop's (async), both autocommit.

Each is created closed and opened by the caller, who waits for its first connections
(``pool.open(wait=True, timeout=...)``); a pool with no free connection in time raises
``store.errors.DatabaseUnavailable``, like a database that is down.
"""

from __future__ import annotations

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from store.types import AsyncPool, Pool


def sync_pool(database_url: str, *, min_size: int, max_size: int, name: str) -> Pool:
    """A closed pool of autocommit connections for threads (open it with ``open(wait=True)``)."""
    return ConnectionPool(
        database_url, min_size=min_size, max_size=max_size, kwargs={"autocommit": True}, open=False, name=name
    )


def async_pool(database_url: str, *, min_size: int, max_size: int, name: str) -> AsyncPool:
    """A closed pool of autocommit asyncio connections (open it with ``await open(wait=True)``)."""
    return AsyncConnectionPool(
        database_url, min_size=min_size, max_size=max_size, kwargs={"autocommit": True}, open=False, name=name
    )
