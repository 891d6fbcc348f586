"""The controller: walk-along brightening, beacon sightings, SOS to control centres, blinking lamps,
escalation, and district leases for failover (docs/controller.md).

Pure decisions live in ``_positions`` (position checks), ``_holds`` (which lamps to command for
a walker, and when not again), ``_blink`` (SOS blink sets), ``_commands`` (ids, acks, retry),
``_leases`` (who takes which district), ``_guards`` (guard zones); the domain rules shared with
other services are the cores' (routing in ``alerts``, beacon sightings in ``geo``).

The service around them, one part per concern: ``_walks`` (walks and beacons), ``_sos`` (SOS,
blinking, escalation), ``_outbox`` + ``_writes`` (lamp commands and their rows),
``_publications`` (alerts to control centres, webhooks), ``_takeover`` (leases and
reconciliation); ``_service.Controller`` composes them and runs their tasks; ``config`` is what
it is told. Every query is ``store``'s (``store.notes``, ``store.listen``, ``store.commands``,
``store.leases``, ``store.reconcile``, ``store.dbthread``).
"""

from alerts import responsible_centre
from controller._blink import BLINK_RADIUS_M, BLINK_TTL_S, BlinkPolicy, BlinkSet, LampBlink, blink_targets
from controller._commands import RETRY_AFTER_S, CommandState, CommandTracker, LampCommand
from controller._holds import HOLD_S, HoldBook, HoldPolicy
from controller._positions import Fix, PositionPolicy, Track, Verdict, advance, check_fix
from controller._service import Controller
from controller.config import ControllerConfig

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
