"""The controller: walk-along brightening, beacon sightings, SOS to control centres, blinking lamps,
escalation, and district leases for failover (docs/controller.md).

Pure decisions live in ``_positions`` (position checks), ``_holds`` (which lamps to command for
a walker, and when not again), ``_blink`` (SOS blink sets), ``_commands`` (ids, acks, retry);
``_service`` is the thin asyncio service around them and ``_db`` its database adapter.
"""

from alerts import responsible_centre
from controller._blink import BLINK_RADIUS_M, BLINK_TTL_S, BlinkPolicy, BlinkSet, LampBlink, blink_targets
from controller._commands import RETRY_AFTER_S, CommandState, CommandTracker, LampCommand
from controller._holds import HOLD_S, HoldBook, HoldPolicy
from controller._positions import Fix, PositionPolicy, Track, Verdict, advance, check_fix
from controller._service import Controller, ControllerConfig

__all__ = [
    "BLINK_RADIUS_M",
    "BLINK_TTL_S",
    "HOLD_S",
    "RETRY_AFTER_S",
    "BlinkPolicy",
    "BlinkSet",
    "CommandState",
    "CommandTracker",
    "Controller",
    "ControllerConfig",
    "Fix",
    "HoldBook",
    "HoldPolicy",
    "LampBlink",
    "LampCommand",
    "PositionPolicy",
    "Track",
    "Verdict",
    "advance",
    "blink_targets",
    "check_fix",
    "responsible_centre",
]
