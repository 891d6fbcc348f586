"""What the two live sockets share (`api.stream` for consoles, `api.soslive` for residents): the
reader that answers pings and ends at the disconnect, and the loop that runs a socket's tasks until
the first of them ends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

from fastapi import WebSocket


async def drain(ws: WebSocket) -> None:
    """Read the client's messages until it disconnects, answering ``ping`` with ``{"type":"pong"}``."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "ping":
            await ws.send_text('{"type":"pong"}')


async def until_first_ends(named: dict[str, Coroutine[Any, Any, None]]) -> None:
    """Run the coroutines (by task name) until the first one ends; then cancel the others and wait
    for them (what they raise on the way out is dropped)."""
    tasks = [asyncio.create_task(coro, name=name) for name, coro in named.items()]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
