"""Connections to the database, for the callers outside ``store/`` (which never import the driver).

``connect(url)`` opens an autocommit connection (use it in ``with``); what fails raises the driver's
errors under their ``store.errors`` names (`DatabaseUnavailable` when the database cannot be
reached). ``connect_or_unavailable``, ``batch_transaction`` and ``savepoint`` serve a caller that
writes batches of its own and spools on ``StoreUnavailable`` (ingest's worker): a connection lost
at connect, inside a batch or at commit raises it. ``async_connection(url)`` is the asyncio
connection, as an ``async with``. The API's pools are ``store.pools``; a LISTENing connection is
``store.listen``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import psycopg

from store.errors import StoreUnavailable
from store.types import AsyncConn, Conn

T = TypeVar("T")


def connect(database_url: str, *, connect_timeout_s: float | None = None, autocommit: bool = True) -> Conn:
    """A connection to `database_url` (autocommit unless told); `connect_timeout_s` caps the wait
    for the server (None: the driver's default, which waits as long as the network does)."""
    if connect_timeout_s is None:
        return psycopg.connect(database_url, autocommit=autocommit)
    return psycopg.connect(database_url, autocommit=autocommit, connect_timeout=int(connect_timeout_s))


_LOST = (psycopg.OperationalError, psycopg.InterfaceError)


def connect_or_unavailable(database_url: str, *, connect_timeout_s: int = 5) -> Conn:
    """An autocommit connection; ``StoreUnavailable`` when the database cannot be reached."""
    try:
        return connect(database_url, connect_timeout_s=connect_timeout_s)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable(f"cannot connect to the database: {exc}") from exc


def close_quietly(conn: Conn | None) -> None:
    """Close a connection that may be broken already, ignoring what the close raises."""
    if conn is not None:
        with contextlib.suppress(psycopg.Error):
            conn.close()


@contextlib.contextmanager
def batch_transaction(conn: Conn, *, rows: int = 0) -> Iterator[None]:
    """One transaction for a batch: all of it commits or none; a connection lost inside it (or at
    commit) raises ``StoreUnavailable`` carrying ``rows``, the batch's rows left for the caller."""
    try:
        with conn.transaction():
            yield
    except _LOST as exc:
        raise StoreUnavailable(f"database unreachable: {exc}", rows=rows) from exc


def savepoint(conn: Conn, *, rows: int = 0) -> contextlib.AbstractContextManager[None]:
    """A nested transaction inside a batch's: what fails in it is rolled back alone, the batch goes
    on; a lost connection raises ``StoreUnavailable`` (``rows`` as in ``batch_transaction``).
    (A transaction opened inside another is a savepoint: the same code as `batch_transaction`.)"""
    return batch_transaction(conn, rows=rows)


def on_own_connection(database_url: str, fn: Callable[..., T], *args: Any, connect_timeout_s: float) -> T:
    """``fn(conn, *args)`` on a short-lived autocommit connection of its own; any database error
    (cannot connect, refused) raises ``StoreUnavailable``."""
    try:
        with connect(database_url, connect_timeout_s=connect_timeout_s) as conn:
            return fn(conn, *args)
    except psycopg.Error as exc:
        raise StoreUnavailable(str(exc)) from exc


@contextlib.asynccontextmanager
async def async_connection(database_url: str) -> AsyncIterator[AsyncConn]:
    """An autocommit asyncio connection, closed on leaving."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        yield conn
