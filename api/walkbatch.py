"""One API process's walk positions, gathered into batches: one statement and one wake-up each.

Every position admitted by ``POST /v1/walks/{id}/positions`` or a walker's socket
(``/v1/walks/{id}/live``) is queued here; one task takes what has gathered ``gather_s`` after the
first one (at most ``max_batch``) and writes it with `store.walkpositions.add_positions_and_notify`:
the rows and their ``NOTIFY sl_walk`` in one transaction. Each caller awaits its own position's
outcome, so an answer still comes only once its row is committed, and a batch that fails is
failed for every position in it (nothing of it is stored or notified: one statement). While a
batch is being written the next one gathers, so under load a batch holds whatever arrived during
the previous commit, and alone a position waits ``gather_s`` at most.

One writer per process, one batch at a time: positions reach the controller in the order they
were queued. The queue is bounded (``max_queue``); a position over it is refused at once
(`PositionsBusy`, answered 503 with Retry-After) instead of waiting behind a database that is not
keeping up.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from runtime.logs import get_logger
from store.types import AsyncPool
from store.walkpositions import QueuedPosition, add_positions_and_notify

log = get_logger(__name__)


class PositionsBusy(Exception):
    """The batcher's queue is full (the database is not keeping up): try again shortly."""


@dataclass(slots=True)
class _Pending:
    position: QueuedPosition
    done: asyncio.Future[bool]


class PositionBatcher:
    """Queue positions (`add`) and write them in batches (`run`, one task per process)."""

    def __init__(
        self,
        pool: AsyncPool,
        channel: str,
        *,
        gather_s: float,
        max_batch: int,
        max_queue: int,
    ) -> None:
        self._pool = pool
        self._channel = channel
        self._gather_s = gather_s
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(maxsize=max_queue)
        self.batches = 0
        self.positions = 0

    async def add(self, position: QueuedPosition) -> bool:
        """Queue a position and wait for its batch: True once stored (and the controller woken),
        False when its walk is not active. Raises the batch's database error, or `PositionsBusy`."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Pending(position, done))
        except asyncio.QueueFull:
            raise PositionsBusy(f"{self._queue.maxsize} positions already waiting for the database") from None
        return await done

    async def run(self) -> None:
        """Write batches until cancelled; positions still queued then are failed."""
        try:
            while True:
                batch = [await self._queue.get()]
                if self._gather_s > 0:
                    await asyncio.sleep(self._gather_s)
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await self._write(batch)
        finally:
            while not self._queue.empty():
                pending = self._queue.get_nowait()
                if not pending.done.done():
                    pending.done.set_exception(PositionsBusy("the API is shutting down"))

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            async with self._pool.connection() as conn:
                stored = await add_positions_and_notify(conn, [p.position for p in batch], self._channel)
        except asyncio.CancelledError:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(PositionsBusy("the API is shutting down"))
            raise
        except Exception as exc:
            # The statement is its own transaction: nothing of this batch was stored or notified.
            log.warning("walk_positions_not_stored", count=len(batch), error_type=type(exc).__name__)
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        self.batches += 1
        self.positions += len(batch)
        for pending, ok in zip(batch, stored, strict=True):
            if not pending.done.done():
                pending.done.set_result(ok)
