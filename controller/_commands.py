"""Lamp commands the controller sends, and their acknowledgement tracking (pure).

Every command has an id, an issue time, a time to live and a priority (DESIGN.md §3). A command
not acknowledged ``retry_after_s`` after it was sent is sent once more with the same id and
issue time (the firmware answers a repeated id with its first ack, and the absolute expiry
stays the same); still unanswered ``retry_after_s`` after that it is ``unanswered``.

An ack counts only when it comes from the device the command was sent to (the device id of the
ack's topic, which the broker binds to the sender's identity): an ack naming another lamp's
command is refused and the command keeps waiting for its own lamp. Command ids carry 128 random
bits, so a lamp that reads its own ``cmd_id`` learns nothing about its neighbours'.

States (``TRANSITIONS``)::

    pending --sent--> sent             (an operator's command: the API writes it pending)
            --device unknown or offline--> undelivered (reason unknown_device / offline)
            --its time to live over before it could be sent--> expired (reason not_sent)
    sent --ack applied--> applied
         --ack rejected-> rejected     (with the lamp's reason)
         --ack expired--> expired      (it reached the lamp after its own expiry)
         --no ack, retried once, still none--> unanswered
    unanswered --a late ack--> applied / rejected / expired

``applied``, ``rejected``, ``expired`` and ``undelivered`` are final. `unsent_verdict` decides
what becomes of an operator's pending command when the controller reads it.
"""

from __future__ import annotations

import secrets
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final

from broker import Cmd


class CommandState(StrEnum):
    """The state of a command, as stored in the commands table."""

    PENDING = "pending"
    SENT = "sent"
    APPLIED = "applied"
    REJECTED = "rejected"
    EXPIRED = "expired"
    UNANSWERED = "unanswered"
    UNDELIVERED = "undelivered"


_ANSWERS = frozenset({CommandState.APPLIED, CommandState.REJECTED, CommandState.EXPIRED})
TRANSITIONS: Final[dict[CommandState, frozenset[CommandState]]] = {
    CommandState.PENDING: frozenset(
        {CommandState.SENT, CommandState.UNDELIVERED, CommandState.EXPIRED} | _ANSWERS
    ),
    CommandState.SENT: _ANSWERS | {CommandState.UNANSWERED},
    CommandState.UNANSWERED: _ANSWERS,
    CommandState.APPLIED: frozenset(),
    CommandState.REJECTED: frozenset(),
    CommandState.EXPIRED: frozenset(),
    CommandState.UNDELIVERED: frozenset(),
}
"""The states a command may move to from each state (an ack may overtake the row's ``sent``)."""

FINAL_STATES: Final = frozenset(s for s, nexts in TRANSITIONS.items() if not nexts)


def may_move(current: str, new: str) -> bool:
    """True when a command in state ``current`` may become ``new`` (unknown states: never)."""
    try:
        return CommandState(new) in TRANSITIONS[CommandState(current)]
    except ValueError:
        return False


# Why an operator's command was settled without reaching its lamp (the row's ``reason``).
UNKNOWN_DEVICE: Final = "unknown_device"  # no such device, or it has left the district
OFFLINE: Final = "offline"  # the lamp is not connected: nothing would receive it
NOT_SENT: Final = "not_sent"  # its time to live ran out before a controller could send it


@dataclass(frozen=True, slots=True)
class Unsent:
    """An operator's command settled without being sent: its state and reason."""

    state: CommandState
    reason: str


def unsent_verdict(
    *, district: str, device_district: str | None, online: bool, expires_ms: int | None, now_ms: int
) -> Unsent | None:
    """What becomes of an operator's pending command for a lamp of ``district``: None to send it,
    else why it is not sent. ``device_district`` is the device's district as read now (None: no
    such device), ``online`` whether it is connected, ``expires_ms`` the end of the command's
    time to live (None: no end)."""
    if expires_ms is not None and expires_ms <= now_ms:
        return Unsent(CommandState.EXPIRED, NOT_SENT)
    if device_district is None or device_district != district:
        return Unsent(CommandState.UNDELIVERED, UNKNOWN_DEVICE)
    if not online:
        return Unsent(CommandState.UNDELIVERED, OFFLINE)
    return None


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


# 128 random bits: as many as a uuid4 has (122), so ids are unique across controllers and
# restarts without coordination, and a lamp cannot guess another lamp's from its own.
CMD_ID_RANDOM_BYTES: Final = 16


class CommandIds:
    """Command ids that are unique and unguessable: a per-process prefix and 128 random bits.

    ``<prefix>.<32 hex digits>``; the prefix (at most 30 characters) only tells which controller
    sent a command, so an id stays within the protocol's 64 characters."""

    def __init__(self, prefix: str) -> None:
        if not 1 <= len(prefix) <= 30:
            raise ValueError(f"command id prefix must be 1-30 characters, got {len(prefix)}")
        self._prefix = prefix

    def __call__(self) -> str:
        return f"{self._prefix}.{secrets.token_hex(CMD_ID_RANDOM_BYTES)}"


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
class WrongDevice:
    """An ack for one of our commands from a device the command was not sent to (refused)."""

    command: LampCommand
    sender: str


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

    def acked(self, cmd_id: str, status: str, now_ms: int, *, sender: str) -> Answered | WrongDevice | None:
        """Match an ack from device ``sender``; None when the id is not ours (another controller's)
        or already settled; ``WrongDevice`` (the command still waits) when ``sender`` is not the
        device the command went to."""
        waiting = self.pending.get(cmd_id)
        if waiting is None:
            return None
        if waiting.command.device_id != sender:
            self.counts["wrong_device"] += 1
            return WrongDevice(waiting.command, sender)
        del self.pending[cmd_id]
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
