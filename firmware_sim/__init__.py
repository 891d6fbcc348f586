"""Simulated lamps, beacon blinkers and residents; the firmware logic is pure and unit-tested."""

from .commands import MAX_TTL_S, Command, CommandRejected, Priority, parse_command
from .firmware import (
    BlinkerFirmware,
    DeviceIdentity,
    Faults,
    LampConfig,
    LampFirmware,
    Message,
    Output,
    Override,
    resolve_output,
)
from .malformed import MalformedPayload, malformed_payloads
from .schedule import KST, NightProfile, is_dark, schedule_level

__all__ = [
    "KST",
    "MAX_TTL_S",
    "BlinkerFirmware",
    "Command",
    "CommandRejected",
    "DeviceIdentity",
    "Faults",
    "LampConfig",
    "LampFirmware",
    "MalformedPayload",
    "Message",
    "NightProfile",
    "Output",
    "Override",
    "Priority",
    "is_dark",
    "malformed_payloads",
    "parse_command",
    "resolve_output",
    "schedule_level",
]
