"""The controller's write queue: command rows, acks, give-ups and position verdicts, in batches.

Rows are the record, not the delivery: they are queued (bounded; when full an item is dropped
and counted, the command still goes) and one task writes what gathered in ``WRITE_GATHER_S`` in
one transaction (`store.commands.write_batch`) in the database thread.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime

from controller._commands import LampCommand
from runtime.logs import get_logger
from store.commands import CommandRecord, CommandWrite, write_batch
from store.dbthread import DbThread

log = get_logger(__name__)

# Bound of the database write queue; when full, rows are dropped and counted (commands still go).
WRITE_QUEUE_SIZE = 50_000
# The command-row writer waits this long after a first row so the rows behind it share a transaction.
WRITE_GATHER_S = 0.1
# At most this many items in one transaction.
WRITE_BATCH_MAX = 2000


class WriteQueue:
    """``put`` items from the event loop; ``run`` (one task) writes them in batches."""

    def __init__(self, db: DbThread, stats: Counter[str]) -> None:
        self._db = db
        self._stats = stats
        self._queue: asyncio.Queue[CommandWrite] = asyncio.Queue(maxsize=WRITE_QUEUE_SIZE)

    def put(self, item: CommandWrite) -> None:
        """Queue a row to write; dropped and counted when the queue is full."""
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            self._stats["db_writes_dropped"] += 1

    def command(self, cmd: LampCommand) -> None:
        """Queue a command's row as sent (a retry: the same cmd_id, one more attempt)."""
        self.put(command_record(cmd))

    async def run(self) -> None:
        """Write batches until cancelled."""
        while True:
            items = [await self._queue.get()]
            # Let a batch gather: command and ack rows are the record, not the delivery, and one
            # transaction a tenth of a second costs PostgreSQL and this loop far less than one
            # per row (at 1,000 walkers that was ~500 transactions and thread hand-offs a second).
            await asyncio.sleep(WRITE_GATHER_S)
            while not self._queue.empty() and len(items) < WRITE_BATCH_MAX:
                items.append(self._queue.get_nowait())
            try:
                await self._db.call(write_batch, items)
            except Exception as exc:
                self._stats["db_write_failed"] += len(items)
                log.warning("command_rows_not_written", count=len(items), error=str(exc))
                await asyncio.sleep(0.5)


def command_record(cmd: LampCommand) -> CommandRecord:
    """The row of a command as sent."""
    return CommandRecord(
        cmd_id=cmd.cmd_id,
        device_id=cmd.device_id,
        action=cmd.action,
        priority=cmd.priority,
        source=cmd.source,
        ttl_s=cmd.ttl_s,
        sent_at=datetime.fromtimestamp(cmd.ts_ms / 1000, UTC),
        level=cmd.level,
        district_code=cmd.district,
    )
