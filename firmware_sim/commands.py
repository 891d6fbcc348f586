"""Commands sent to a device (`sl/v1/{d}/{id}/cmd`), decoded and validated into typed values.

A command that fails validation raises `CommandRejected` with the reason the device puts in
its `rejected` ack; the reason names the field and the value.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from enum import IntEnum
from typing import Literal, TypeAlias, TypeGuard

__all__ = [
    "ACTIONS",
    "MAX_TTL_S",
    "Action",
    "Command",
    "CommandRejected",
    "ConfigValue",
    "Priority",
    "parse_command",
]

Action: TypeAlias = Literal["set_level", "blink", "clear", "config"]
ACTIONS: tuple[Action, ...] = ("set_level", "blink", "clear", "config")
ConfigValue: TypeAlias = int | time | None

# A lamp must never stay bright for long if the backend dies (DESIGN.md §3): no override may
# be asked to last more than a day; controllers refresh walk and SOS overrides well before.
MAX_TTL_S = 86_400
# Same bound as the device id pattern of the wire protocol.
MAX_ID_CHARS = 64
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_CONFIG_LEVEL_KEYS = ("night_level", "late_level")
_CONFIG_TIME_KEYS = ("late_from", "late_until")
_CONFIG_NULLABLE = ("late_level", "late_until")


class Priority(IntEnum):
    """Override priorities, lowest first; `sos` > `walk` > `manual` > `schedule`."""

    SCHEDULE = 0
    MANUAL = 1
    WALK = 2
    SOS = 3

    @property
    def wire_name(self) -> str:
        """Name of the priority on the wire (lower case)."""
        return self.name.lower()


_PRIORITY_BY_NAME = {p.wire_name: p for p in Priority}


class CommandRejected(ValueError):
    """A command the device refuses; `reason` goes into the ack."""

    def __init__(self, reason: str, cmd_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cmd_id = cmd_id


@dataclass(frozen=True)
class Command:
    """A validated command."""

    cmd_id: str
    ts_ms: int
    action: Action
    source: str
    priority: Priority
    level: int | None = None
    ttl_s: float | None = None
    config: Mapping[str, ConfigValue] = field(default_factory=dict)

    @property
    def expires_ms(self) -> int | None:
        """Epoch ms after which the command is void, or None if it carries no ttl."""
        if self.ttl_s is None:
            return None
        return self.ts_ms + round(self.ttl_s * 1000)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _identifier(payload: Mapping[str, object], key: str, cmd_id: str | None) -> str:
    if key not in payload:
        raise CommandRejected(f"missing {key}", cmd_id)
    value = payload[key]
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        raise CommandRejected(
            f"{key} must be a string of 1-{MAX_ID_CHARS} characters, got {value!r:.80}", cmd_id
        )
    return value


def _level(value: object, key: str, cmd_id: str) -> int:
    if not _is_int(value):
        raise CommandRejected(f"{key} must be an integer percent, got {value!r:.80}", cmd_id)
    if not 0 <= value <= 100:
        raise CommandRejected(f"{key} out of range 0-100: {value}", cmd_id)
    return value


def _ttl_s(payload: Mapping[str, object], cmd_id: str, *, required: bool) -> float | None:
    if "ttl_s" not in payload or payload["ttl_s"] is None:
        if required:
            raise CommandRejected("missing ttl_s", cmd_id)
        return None
    value = payload["ttl_s"]
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise CommandRejected(f"ttl_s must be a positive number of seconds, got {value!r:.80}", cmd_id)
    if value > MAX_TTL_S:
        raise CommandRejected(f"ttl_s above the {MAX_TTL_S} s cap: {value}", cmd_id)
    return float(value)


def _priority(payload: Mapping[str, object], cmd_id: str, default: Priority | None) -> Priority:
    if "priority" not in payload or payload["priority"] is None:
        if default is None:
            raise CommandRejected("missing priority", cmd_id)
        return default
    value = payload["priority"]
    if not isinstance(value, str) or value not in _PRIORITY_BY_NAME:
        raise CommandRejected(
            f"bad priority {value!r:.80}: expected one of {sorted(_PRIORITY_BY_NAME)}", cmd_id
        )
    return _PRIORITY_BY_NAME[value]


def _config(payload: Mapping[str, object], cmd_id: str) -> dict[str, ConfigValue]:
    raw = payload.get("config", {})
    if not isinstance(raw, Mapping):
        raise CommandRejected(f"config must be an object, got {raw!r:.80}", cmd_id)
    result: dict[str, ConfigValue] = {}
    for key, value in raw.items():
        if value is None and key in _CONFIG_NULLABLE:
            result[key] = None
        elif key in _CONFIG_LEVEL_KEYS:
            result[key] = _level(value, f"config.{key}", cmd_id)
        elif key in _CONFIG_TIME_KEYS:
            match = _HHMM.match(value) if isinstance(value, str) else None
            if match is None:
                raise CommandRejected(f"config.{key} must be 'HH:MM', got {value!r:.80}", cmd_id)
            result[key] = time(int(match[1]), int(match[2]))
        else:
            # A typo in a config key must not be silently ignored: the operator would believe
            # the lamp took the setting.
            raise CommandRejected(f"unknown config key {key!r:.80}", cmd_id)
    return result


def parse_command(payload: object) -> Command:
    """Decode a `cmd` payload (already JSON-decoded) into a `Command`, or raise `CommandRejected`."""
    if not isinstance(payload, Mapping):
        raise CommandRejected(f"payload must be a JSON object, got {type(payload).__name__}")
    cmd_id = _identifier(payload, "cmd_id", None)
    if "ts" not in payload:
        raise CommandRejected("missing ts", cmd_id)
    ts = payload["ts"]
    if not _is_int(ts) or ts < 0:
        raise CommandRejected(f"ts must be a non-negative integer epoch ms, got {ts!r:.80}", cmd_id)
    action = payload.get("action")
    if action not in ACTIONS:
        raise CommandRejected(f"unknown action {action!r:.80}", cmd_id)
    if action == "set_level":
        if "level" not in payload:
            raise CommandRejected("missing level", cmd_id)
        return Command(
            cmd_id=cmd_id,
            ts_ms=ts,
            action="set_level",
            source=_identifier(payload, "source", cmd_id),
            priority=_priority(payload, cmd_id, default=None),
            level=_level(payload["level"], "level", cmd_id),
            ttl_s=_ttl_s(payload, cmd_id, required=True),
        )
    if action == "blink":
        # An SOS blink is the usual case, so the priority may be left out; the peak level too.
        level = payload.get("level")
        return Command(
            cmd_id=cmd_id,
            ts_ms=ts,
            action="blink",
            source=_identifier(payload, "source", cmd_id),
            priority=_priority(payload, cmd_id, default=Priority.SOS),
            level=100 if level is None else _level(level, "level", cmd_id),
            ttl_s=_ttl_s(payload, cmd_id, required=True),
        )
    if action == "clear":
        return Command(
            cmd_id=cmd_id,
            ts_ms=ts,
            action="clear",
            source=_identifier(payload, "source", cmd_id),
            priority=_priority(payload, cmd_id, default=Priority.SCHEDULE),
            ttl_s=_ttl_s(payload, cmd_id, required=False),
        )
    source = payload.get("source")
    return Command(
        cmd_id=cmd_id,
        ts_ms=ts,
        action="config",
        source=_identifier(payload, "source", cmd_id) if source is not None else "config",
        priority=_priority(payload, cmd_id, default=Priority.SCHEDULE),
        ttl_s=_ttl_s(payload, cmd_id, required=False),
        config=_config(payload, cmd_id),
    )
