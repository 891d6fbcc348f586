"""The controller's record of its lamp commands, acks and position verdicts, written in batches.

The controller queues `CommandWrite` items as it sends commands, reads acks, gives commands up
and judges walk positions; one writer task takes what gathered in a tenth of a second and
writes it here in one transaction (`write_batch`), in a worker thread (``store.dbthread``). The
rows are the record, not the delivery: a batch that fails is counted, never retried.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TypeAlias

from store.repo import CommandRecord, insert_commands, record_acks
from store.types import Conn


@dataclass(frozen=True, slots=True)
class AckRow:
    """A lamp's answer to one of our commands (applied, rejected or expired)."""

    cmd_id: str
    status: str
    effective_level: int | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class UnansweredRows:
    """Commands given up on after their retry (a lamp that never answered)."""

    cmd_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PositionVerdict:
    """Why a walk position was refused or down-weighted, for its ``walk_positions`` row."""

    walk_id: str
    ts_ms: int
    accepted: bool
    reason: str | None


CommandWrite: TypeAlias = CommandRecord | AckRow | UnansweredRows | PositionVerdict
"""One item of the controller's write queue: a command as sent (a retry: the same cmd_id again),
an ack, commands given up on, or a position's verdict."""


def write_batch(conn: Conn, items: Sequence[CommandWrite]) -> None:
    """Write queued items in one transaction, the same end state as applying them in order.

    The commands of the batch go first, in one statement, each already carrying the ack or the
    ``unanswered`` that came for it within the batch (most acks come a few ms after their
    command, well inside the 0.1 s a batch gathers); then the acks and unanswered marks of earlier
    commands and the position verdicts, one statement per run of a kind. (The writer runs in a
    thread: per-row round trips held the GIL against the event loop, and an ack's UPDATE rewrote
    every index of ``commands``.)"""
    at = datetime.now(UTC)
    order: list[CommandRecord] = []
    latest: dict[str, int] = {}  # cmd_id -> its latest row in `order`
    later: list[AckRow | UnansweredRows | PositionVerdict] = []
    for item in items:
        if isinstance(item, CommandRecord):
            latest[item.cmd_id] = len(order)
            order.append(item)
        elif isinstance(item, AckRow) and (i := latest.get(item.cmd_id)) is not None:
            if order[i].status in ("sent", "unanswered"):
                order[i] = replace(
                    order[i],
                    status=item.status,
                    acked_at=at,
                    effective_level=item.effective_level,
                    reason=item.reason,
                )
        elif isinstance(item, UnansweredRows) and any(cmd_id in latest for cmd_id in item.cmd_ids):
            for cmd_id in item.cmd_ids:
                i = latest.get(cmd_id)
                if i is None:
                    later.append(UnansweredRows((cmd_id,)))
                elif order[i].status == "sent":
                    order[i] = replace(order[i], status="unanswered")
        else:
            later.append(item)
    with conn.transaction():
        if order:
            insert_commands(conn, order)
        for kind, run in itertools.groupby(later, key=type):
            if kind is AckRow:
                acks = [a for a in run if isinstance(a, AckRow)]
                record_acks(
                    conn, [(a.cmd_id, a.status, a.effective_level, a.reason) for a in acks], acked_at=at
                )
            elif kind is UnansweredRows:
                ids = [cmd_id for u in run if isinstance(u, UnansweredRows) for cmd_id in u.cmd_ids]
                mark_commands_unanswered(conn, ids)
            elif kind is PositionVerdict:
                record_verdicts(conn, [v for v in run if isinstance(v, PositionVerdict)])


def mark_commands_unanswered(conn: Conn, cmd_ids: Sequence[str]) -> int:
    """Mark this controller's given-up commands unanswered (only those still ``sent``)."""
    return conn.execute(
        "UPDATE commands SET status = 'unanswered' WHERE cmd_id = ANY(%s) AND status = 'sent'",
        (list(cmd_ids),),
    ).rowcount


def record_verdicts(conn: Conn, verdicts: Sequence[PositionVerdict]) -> None:
    """Write the verdicts onto their positions' rows (found by walk id and timestamp)."""
    conn.execute(
        "UPDATE walk_positions p SET accepted = v.accepted, reason = v.reason "
        "FROM unnest(%s::text[], %s::timestamptz[], %s::boolean[], %s::text[]) "
        "AS v(walk_id, ts, accepted, reason) WHERE p.walk_id = v.walk_id AND p.ts = v.ts",
        (
            [v.walk_id for v in verdicts],
            [datetime.fromtimestamp(v.ts_ms / 1000, UTC) for v in verdicts],
            [v.accepted for v in verdicts],
            [v.reason for v in verdicts],
        ),
    )
