"""Lamp commands the controller sends, and their acknowledgement tracking (pure).

Every command has an id, an issue time, a time to live and a priority (DESIGN.md §3). A command
not acknowledged ``retry_after_s`` after it was sent is sent once more with the same id and
issue time (the firmware answers a repeated id with its first ack, and the absolute expiry
stays the same); still unanswered ``retry_after_s`` after that it is ``unanswered``.

States::

    sent --ack applied--> applied
         --ack rejected-> rejected
         --ack expired--> expired      (it reached the lamp after its own expiry)
         --no ack, retried once, still none--> unanswered
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import count

from broker import Cmd


class CommandState(StrEnum):
    """The state of a command, as stored in the commands table."""

    SENT = "sent"
    APPLIED = "applied"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNANSWERED = "unanswered"


# issue #5: "a command unacknowledged after 5 s is retried once"
RETRY_AFTER_S = 5.0
MAX_ATTEMPTS = 2


@dataclass(frozen=True, slots=True)
class LampCommand:
    """A command for one lamp: what goes on the wire plus where it goes."""

    cmd_id: str
    device_id: str
    district: str
    action: str  # set_level, blink, clear
    priority: str  # sos, walk, manual
    source: str  # walk id, beacon key, alert id or operator: the override's key on the lamp
    ts_ms: int
    ttl_s: int
    level: int | None = None

    def to_wire(self) -> Cmd:
        """The payload struct of ``sl/v1/{d}/{id}/cmd``."""
        return Cmd(
            cmd_id=self.cmd_id,
            ts=self.ts_ms,
            action=self.action,  # type: ignore[arg-type]
            source=self.source,
            priority=self.priority,  # type: ignore[arg-type]
            level=self.level,
            ttl_s=self.ttl_s,
        )


class CommandIds:
    """Command ids unique across controllers and restarts: a per-process prefix and a counter."""

    def __init__(self, prefix: str) -> None:
        self._prefix = prefix
        self._next = count(1)

    def __call__(self) -> str:
        return f"{self._prefix}.{next(self._next)}"


@dataclass(slots=True)
class Pending:
    """A command waiting for its ack."""

    command: LampCommand
    sent_ms: int
    attempts: int = 1


@dataclass(frozen=True, slots=True)
class Answered:
    """A command that got its ack: the command, its final state and how long it took."""

    command: LampCommand
    state: CommandState
    latency_ms: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Due:
    """What the tracker wants done now: commands to send again, commands given up on."""

    retries: tuple[LampCommand, ...] = ()
    unanswered: tuple[LampCommand, ...] = ()


@dataclass
class CommandTracker:
    """Commands in flight, matched to acks by id, retried once, counted by final state."""

    retry_after_s: float = RETRY_AFTER_S
    max_attempts: int = MAX_ATTEMPTS
    pending: dict[str, Pending] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)

    def sent(self, command: LampCommand, now_ms: int) -> None:
        """A command went out (first attempt)."""
        self.pending[command.cmd_id] = Pending(command, now_ms)
        self.counts[CommandState.SENT] += 1

    def acked(self, cmd_id: str, status: str, now_ms: int) -> Answered | None:
        """Match an ack; None when the id is not ours (another controller's) or already settled."""
        waiting = self.pending.pop(cmd_id, None)
        if waiting is None:
            return None
        try:
            state = CommandState(status)
        except ValueError:
            state = CommandState.REJECTED
        self.counts[state] += 1
        return Answered(waiting.command, state, now_ms - waiting.sent_ms, waiting.attempts)

    def due(self, now_ms: int) -> Due:
        """Commands whose ack is overdue: retried once, then given up as unanswered."""
        wait_ms = round(self.retry_after_s * 1000)
        retries: list[LampCommand] = []
        gone: list[LampCommand] = []
        for cmd_id, waiting in list(self.pending.items()):
            if now_ms - waiting.sent_ms < wait_ms:
                continue
            if waiting.attempts < self.max_attempts:
                waiting.attempts += 1
                waiting.sent_ms = now_ms
                retries.append(waiting.command)
            else:
                del self.pending[cmd_id]
                self.counts[CommandState.UNANSWERED] += 1
                gone.append(waiting.command)
        return Due(tuple(retries), tuple(gone))

    def forget_district(self, district: str) -> None:
        """Stop tracking a district's commands (its lease went to another controller)."""
        for cmd_id in [c for c, p in self.pending.items() if p.command.district == district]:
            del self.pending[cmd_id]
