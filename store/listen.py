"""A connection that LISTENs on notification channels (`store.notes`) and hands their payloads over.

``async with listening(url, channels) as notes:`` connects and LISTENs; ``async for channel,
payload in notes`` yields what arrives, in order, until the connection fails (the error is
raised: the caller reconnects, and re-reads the tables for what it missed).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence

from psycopg import sql

from store.connections import async_connection
from store.types import AsyncConn


@contextlib.asynccontextmanager
async def listening(url: str, channels: Sequence[str]) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
    """A LISTENing connection to `url` for `channels`; yields its stream of (channel, payload)."""
    async with async_connection(url) as conn:
        for channel in channels:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        yield _payloads(conn)


async def _payloads(conn: AsyncConn) -> AsyncIterator[tuple[str, str]]:
    async for note in conn.notifies():
        yield note.channel, note.payload
