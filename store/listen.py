"""A connection that LISTENs on notification channels (`store.notes`) and hands their payloads over.

``async with listening(url, channels) as notes:`` connects and LISTENs; ``async for channel,
payload in notes`` yields what arrives, in order, until the connection fails (the error is
raised: the caller reconnects, and re-reads the tables for what it missed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from psycopg import AsyncConnection, sql

from store.types import AsyncConn


@contextlib.asynccontextmanager
async def listening(url: str, channels: Sequence[str]) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
    """A LISTENing connection to `url` for `channels`; yields its stream of (channel, payload).

    It connects here rather than through `store.connections.async_connection`: with a second
    generator-based context manager between them, a task cancelled while waiting in
    ``notifies()`` left the connection open (the controller's tests then stalled)."""
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        for channel in channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield _payloads(conn)


async def _payloads(conn: AsyncConn) -> AsyncIterator[tuple[str, str]]:
    async for note in conn.notifies():
        yield note.channel, note.payload
