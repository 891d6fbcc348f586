"""Commands to lamps and their acks in ``commands``, and the controller's record of them written
in batches.

A command is recorded as sent (`insert_commands`, one statement for many) and settled by its
device's ack (`record_ack`, `record_acks`) or marked ``unanswered`` when it never came. An
operator's command is written first as ``pending`` by the API (`insert_pending`, in the
transaction of its note); the controller turns it into ``sent`` by sending it, or settles it
without sending (`settle_unsent`: ``undelivered`` with a reason, or ``expired``). The statuses
and their transitions are `controller._commands.CommandState` and ``TRANSITIONS``; the
``status IN (...)`` conditions here are those transitions.

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

from psycopg.rows import dict_row

from store.types import Conn, Row


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as sent to a device."""

    cmd_id: str
    device_id: str
    action: str
    priority: str
    source: str
    ttl_s: int
    sent_at: datetime
    level: int | None = None
    district_code: str | None = None
    # Set when the device's answer is already known as the row is first written.
    status: str = "sent"
    acked_at: datetime | None = None
    effective_level: int | None = None
    reason: str | None = None


_INSERT_COMMANDS_SQL = """
INSERT INTO commands AS c (cmd_id, device_id, district_code, action, level, priority, source, ttl_s,
                           sent_at, expires_at, status, acked_at, effective_level, reason, attempts)
SELECT r.cmd_id, r.device_id, r.district_code, r.action, r.level, r.priority, r.source, r.ttl_s,
       r.sent_at, r.sent_at + make_interval(secs => r.ttl_s), r.status, r.acked_at, r.effective_level,
       r.reason, r.attempts
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::smallint[], %s::text[], %s::text[],
            %s::int[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::smallint[], %s::text[],
            %s::int[])
     AS r(cmd_id, device_id, district_code, action, level, priority, source, ttl_s, sent_at, status,
          acked_at, effective_level, reason, attempts)
ON CONFLICT (cmd_id) DO UPDATE SET
    attempts = c.attempts + EXCLUDED.attempts,
    sent_at = EXCLUDED.sent_at,
    expires_at = EXCLUDED.expires_at,
    status = CASE WHEN c.status = 'pending' THEN EXCLUDED.status
                  WHEN EXCLUDED.status <> 'sent' AND c.status IN ('sent', 'unanswered')
                  THEN EXCLUDED.status ELSE c.status END,
    acked_at = CASE WHEN EXCLUDED.acked_at IS NOT NULL AND c.status IN ('pending', 'sent', 'unanswered')
                    THEN EXCLUDED.acked_at ELSE c.acked_at END,
    effective_level = CASE WHEN EXCLUDED.acked_at IS NOT NULL
                                AND c.status IN ('pending', 'sent', 'unanswered')
                           THEN EXCLUDED.effective_level ELSE c.effective_level END,
    reason = CASE WHEN EXCLUDED.acked_at IS NOT NULL AND c.status IN ('pending', 'sent', 'unanswered')
                  THEN EXCLUDED.reason ELSE c.reason END
"""


# The arrays of _INSERT_COMMANDS_SQL, in order (then the attempts).
_COMMAND_COLUMNS = (
    "cmd_id", "device_id", "district_code", "action", "level", "priority", "source", "ttl_s",
    "sent_at", "status", "acked_at", "effective_level", "reason",
)  # fmt: skip


def insert_commands(conn: Conn, commands: Sequence[CommandRecord]) -> None:
    """Record commands as sent (status ``sent``), in one statement; a re-sent cmd_id counts one
    more attempt.

    A record may already carry its device's answer (``status`` applied, rejected or expired, with
    ``acked_at``): the controller gathers rows for a tenth of a second and most acks arrive within
    it, so the row is written settled instead of inserted and then updated (an UPDATE of
    ``status`` rewrites all four of the table's indexes). Status ``unanswered`` without an answer
    is written as such. When one cmd_id comes more than once, its attempts add up and the first
    answer wins, as with the statements applied one after the other."""
    merged: dict[str, CommandRecord] = {}
    attempts: dict[str, int] = {}
    for c in commands:
        before = merged.get(c.cmd_id)
        attempts[c.cmd_id] = attempts.get(c.cmd_id, 0) + 1
        if before is not None and (
            before.acked_at is not None or (before.status != "sent" and c.acked_at is None)
        ):
            c = replace(c, status=before.status, acked_at=before.acked_at,
                        effective_level=before.effective_level, reason=before.reason)  # fmt: skip
        merged[c.cmd_id] = c
    rows = list(merged.values())
    if not rows:
        return
    columns = [[getattr(c, name) for c in rows] for name in _COMMAND_COLUMNS]
    conn.execute(_INSERT_COMMANDS_SQL, (*columns, [attempts[c.cmd_id] for c in rows]))


def record_ack(
    conn: Conn,
    cmd_id: str,
    *,
    status: str,
    acked_at: datetime | None = None,
    effective_level: int | None = None,
    reason: str | None = None,
) -> bool:
    """Store a device's ack (applied, rejected or expired); False for an unknown or already-acked id."""
    cur = conn.execute(
        """
        UPDATE commands SET status = %s, acked_at = %s, effective_level = %s, reason = %s
        WHERE cmd_id = %s AND status IN ('pending', 'sent', 'unanswered')
        """,
        (status, acked_at or _now(), effective_level, reason, cmd_id),
    )
    return cur.rowcount == 1


def record_acks(
    conn: Conn, acks: Sequence[tuple[str, str, int | None, str | None]], *, acked_at: datetime | None = None
) -> int:
    """``record_ack`` for many acks, ``(cmd_id, status, effective_level, reason)``, in one statement;
    returns how many commands it updated (unknown and already-acked ids are skipped). When one
    cmd_id comes twice, the first ack wins, as with ``record_ack`` called in order."""
    first: dict[str, tuple[str, str, int | None, str | None]] = {}
    for ack in acks:
        first.setdefault(ack[0], ack)
    if not first:
        return 0
    rows = list(first.values())
    cur = conn.execute(
        """
        UPDATE commands c SET status = a.status, acked_at = %s, effective_level = a.level, reason = a.reason
        FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[]) AS a(cmd_id, status, level, reason)
        WHERE c.cmd_id = a.cmd_id AND c.status IN ('pending', 'sent', 'unanswered')
        """,
        (
            acked_at or _now(),
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        ),
    )
    return cur.rowcount


def insert_pending(conn: Conn, command: CommandRecord) -> None:
    """An operator's command as the API hands it to the controller: status ``pending``, no attempt
    yet (``sent_at`` is when it was asked for, ``expires_at`` that plus its time to live)."""
    conn.execute(
        """
        INSERT INTO commands (cmd_id, device_id, district_code, action, level, priority, source, ttl_s,
                              sent_at, expires_at, status, attempts)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s + make_interval(secs => %s), 'pending', 0)
        """,
        (
            command.cmd_id,
            command.device_id,
            command.district_code,
            command.action,
            command.level,
            command.priority,
            command.source,
            command.ttl_s,
            command.sent_at,
            command.sent_at,
            command.ttl_s,
        ),
    )


def settle_unsent(conn: Conn, settled: Sequence[tuple[str, str, str | None]]) -> int:
    """Settle pending commands that were never sent, ``(cmd_id, status, reason)`` with status
    ``undelivered`` or ``expired``; returns how many it changed (only rows still ``pending``)."""
    if not settled:
        return 0
    return conn.execute(
        """
        UPDATE commands c SET status = s.status, reason = s.reason, acked_at = now()
        FROM unnest(%s::text[], %s::text[], %s::text[]) AS s(cmd_id, status, reason)
        WHERE c.cmd_id = s.cmd_id AND c.status = 'pending'
        """,
        ([s[0] for s in settled], [s[1] for s in settled], [s[2] for s in settled]),
    ).rowcount


def pending_commands(conn: Conn, districts: Sequence[str], asked_before: datetime) -> list[Row]:
    """The districts' commands still ``pending`` that were asked for before ``asked_before``
    (their note was lost, or came while no controller held the district)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT cmd_id, device_id, district_code, action, level, priority, source, ttl_s, sent_at, "
            "expires_at FROM commands WHERE status = 'pending' AND district_code = ANY(%s) "
            "AND sent_at < %s ORDER BY sent_at LIMIT 500",
            (list(districts), asked_before),
        ).fetchall()


_OPERATOR_COMMAND_COLUMNS = (
    "cmd_id, device_id, district_code, action, level, source, ttl_s, sent_at, expires_at, status, "
    "acked_at, effective_level, reason, attempts"
)


def operator_command(conn: Conn, cmd_id: str) -> Row | None:
    """One operator's (manual) command with its status, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_OPERATOR_COMMAND_COLUMNS} FROM commands WHERE cmd_id = %s AND priority = 'manual'",
            (cmd_id,),
        ).fetchone()


def lamp_operator_commands(conn: Conn, device_id: str, *, limit: int = 10) -> list[Row]:
    """A lamp's latest operators' (manual) commands with their status, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            f"SELECT {_OPERATOR_COMMAND_COLUMNS} FROM commands WHERE device_id = %s AND priority = 'manual' "
            "ORDER BY sent_at DESC LIMIT %s",
            (device_id, limit),
        ).fetchall()


def mark_unanswered(conn: Conn, *, sent_before: datetime) -> list[str]:
    """Mark commands still waiting for an ack since before ``sent_before`` as unanswered; returns ids."""
    rows = conn.execute(
        "UPDATE commands SET status = 'unanswered' WHERE status = 'sent' AND sent_at < %s RETURNING cmd_id",
        (sent_before,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def command_status_counts(conn: Conn, *, since: datetime | None = None) -> dict[str, int]:
    """How many commands are in each status (since a time, when given)."""
    rows = conn.execute(
        "SELECT status, count(*) FROM commands "
        "WHERE sent_at >= coalesce(%s::timestamptz, '-infinity') GROUP BY status",
        (since,),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def get_command(conn: Conn, cmd_id: str) -> Row | None:
    """One command with its ack status, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM commands WHERE cmd_id = %s", (cmd_id,)).fetchone()


# --------------------------------------------------------------------------- the controller's write queue


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
class UnsentRow:
    """An operator's pending command settled without being sent (``undelivered`` with its reason,
    or ``expired``)."""

    cmd_id: str
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class PositionVerdict:
    """Why a walk position was refused or down-weighted, for its ``walk_positions`` row."""

    walk_id: str
    ts_ms: int
    accepted: bool
    reason: str | None


CommandWrite: TypeAlias = CommandRecord | AckRow | UnansweredRows | UnsentRow | PositionVerdict
"""One item of the controller's write queue: a command as sent (a retry: the same cmd_id again),
an ack, commands given up on, an operator's command settled unsent, or a position's verdict."""


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
    later: list[AckRow | UnansweredRows | UnsentRow | PositionVerdict] = []
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
            elif kind is UnsentRow:
                settle_unsent(conn, [(u.cmd_id, u.status, u.reason) for u in run if isinstance(u, UnsentRow)])
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
