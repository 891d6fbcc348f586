"""What a controller is told at start: its broker, database, candidate districts and policies."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from alerts import DEFAULT_ESCALATION, EscalationPolicy
from broker import DEVICE_BURST, DEVICE_RATE_PER_S, ConnectionParams
from controller._blink import BlinkPolicy
from controller._holds import HoldPolicy
from controller._positions import PositionPolicy
from geo import Gazetteer, SafetyZones

# issue #5: "another takes over its districts within 10 s"; renewed every third of it.
LEASE_TTL_S = 6.0


@dataclass(frozen=True)
class ControllerConfig:
    """Everything a controller needs; built from the settings by ``streetlight.bootstrap``."""

    mqtt: ConnectionParams
    database_url: str
    districts: tuple[str, ...]  # candidate districts (a lease is taken for each)
    owner: str  # this controller's name in the leases, unique among the running controllers
    lease_ttl_s: float = LEASE_TTL_S
    tick_s: float = 0.2
    lamps_refresh_s: float = 30.0
    retry_after_s: float = 5.0
    holds: HoldPolicy = field(default_factory=HoldPolicy)
    blink: BlinkPolicy = field(default_factory=BlinkPolicy)
    positions: PositionPolicy = field(default_factory=PositionPolicy)
    escalation: EscalationPolicy = DEFAULT_ESCALATION
    police_webhook_url: str | None = None
    guard_webhook_url: str | None = None
    safety_zones: SafetyZones | None = None  # None: the vendored seed file
    # The instant the guards' shifts are read at (aware); None: the wall clock. Tests set it.
    clock: Callable[[], datetime] | None = None
    gazetteer: Gazetteer | None = None  # the service area of the position checks; None: the vendored one
    # Per-device bound on acks and events taken from MQTT (as ingest's); 0 turns it off.
    device_rate_per_s: float = DEVICE_RATE_PER_S
    device_burst: float = DEVICE_BURST
