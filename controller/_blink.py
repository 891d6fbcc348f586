"""Which lamps blink for an SOS, refreshing, confirming and replacing them (pure).

The lamps within ``radius_m`` of the resident's latest position blink (priority ``sos``, keyed
by the alert) until the alert is resolved or cancelled. A blink has a time to live, so a lamp
never blinks forever if the controller dies; the controller sends it again when less than half
of it is left. A lamp that acks ``applied`` is confirmed (once, into the alert's timeline); one
that rejects, or never answers after its retry, is reported and the next nearest lamp is added.
When the resident moves, lamps left behind get ``clear`` and the new ones blink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

# issue #5: "the lamps within 50 m blink"
BLINK_RADIUS_M = 50.0
# Long enough that two refreshes can be lost, short enough that a dead controller's blinking
# stops within a minute.
BLINK_TTL_S = 60
# With no lamp within the radius, the nearest ones still mark the place.
FALLBACK_LAMPS = 2
# A bound on one alert's blink set (replacements included), so a dark area cannot grow it
# without limit.
MAX_LAMPS = 16

Nearest = Callable[[float, float, int], Sequence[str]]
"""(lat, lon, k) -> the k nearest lamp ids, nearest first."""
Within = Callable[[float, float, float], Sequence[str]]
"""(lat, lon, radius_m) -> lamp ids within the radius, nearest first."""


@dataclass(frozen=True, slots=True)
class BlinkPolicy:
    """Radius, time to live and limits of SOS blinking."""

    radius_m: float = BLINK_RADIUS_M
    ttl_s: int = BLINK_TTL_S
    fallback_lamps: int = FALLBACK_LAMPS
    max_lamps: int = MAX_LAMPS
    level: int = 100


class LampBlink(StrEnum):
    """Where a lamp of a blink set stands."""

    SENT = "sent"
    CONFIRMED = "confirmed"
    FAILED = "failed"  # rejected, or unanswered after the retry


@dataclass
class BlinkSet:
    """One alert's blinking lamps."""

    alert_id: str
    source: str
    lamps: dict[str, LampBlink] = field(default_factory=dict)
    sent_ms: dict[str, int] = field(default_factory=dict)
    at: tuple[float, float] | None = None  # the position the set was chosen for
    # Not yet written to the alert's timeline:
    new_confirmed: list[str] = field(default_factory=list)
    new_failed: list[str] = field(default_factory=list)
    new_added: list[str] = field(default_factory=list)

    @property
    def active(self) -> list[str]:
        """Lamps that should be blinking (failed ones are still asked, in case they come back)."""
        return list(self.lamps)

    def has_news(self) -> bool:
        """True when confirmations, failures or additions wait to be recorded."""
        return bool(self.new_confirmed or self.new_failed or self.new_added)

    def take_news(self) -> tuple[tuple[str, str], ...]:
        """The details of a ``lamps_confirmed`` timeline event, and forget them."""
        details = tuple(
            (key, " ".join(ids))
            for key, ids in (
                ("confirmed", self.new_confirmed),
                ("unconfirmed", self.new_failed),
                ("added", self.new_added),
            )
            if ids
        )
        self.new_confirmed, self.new_failed, self.new_added = [], [], []
        return details


def blink_targets(within: Within, nearest: Nearest, lat: float, lon: float, policy: BlinkPolicy) -> list[str]:
    """The lamps that should blink for a resident at (lat, lon)."""
    ids = list(within(lat, lon, policy.radius_m))[: policy.max_lamps]
    if not ids:
        ids = list(nearest(lat, lon, policy.fallback_lamps))
    return ids


@dataclass(frozen=True, slots=True)
class BlinkChange:
    """Commands a blink-set change asks for."""

    blink: tuple[str, ...] = ()
    clear: tuple[str, ...] = ()


def move_to(blinks: BlinkSet, targets: Iterable[str], now_ms: int) -> BlinkChange:
    """Make the blink set `targets` (first call, or the resident moved): blink new, clear left."""
    wanted = list(dict.fromkeys(targets))
    left = tuple(lamp for lamp in blinks.lamps if lamp not in wanted)
    new = tuple(lamp for lamp in wanted if lamp not in blinks.lamps)
    for lamp in left:
        del blinks.lamps[lamp]
        blinks.sent_ms.pop(lamp, None)
    for lamp in new:
        blinks.lamps[lamp] = LampBlink.SENT
        blinks.sent_ms[lamp] = now_ms
    return BlinkChange(blink=new, clear=left)


def refresh_due(blinks: BlinkSet, now_ms: int, policy: BlinkPolicy) -> list[str]:
    """Lamps whose blink has less than half its time to live left; marks them sent now."""
    half_ms = policy.ttl_s * 1000 // 2
    due = [lamp for lamp in blinks.lamps if now_ms - blinks.sent_ms.get(lamp, 0) >= half_ms]
    for lamp in due:
        blinks.sent_ms[lamp] = now_ms
    return due


def confirm(blinks: BlinkSet, lamp_id: str) -> bool:
    """A lamp acked ``applied``; True the first time (a confirmation to record)."""
    state = blinks.lamps.get(lamp_id)
    if state is None or state is LampBlink.CONFIRMED:
        return False
    blinks.lamps[lamp_id] = LampBlink.CONFIRMED
    blinks.new_confirmed.append(lamp_id)
    return True


def fail(
    blinks: BlinkSet, lamp_id: str, nearest: Nearest, lat: float, lon: float, policy: BlinkPolicy, now_ms: int
) -> str | None:
    """A lamp did not confirm: report it, and add the next nearest lamp not yet in the set."""
    state = blinks.lamps.get(lamp_id)
    if state is None or state is LampBlink.FAILED:
        return None
    blinks.lamps[lamp_id] = LampBlink.FAILED
    blinks.new_failed.append(lamp_id)
    if len(blinks.lamps) >= policy.max_lamps:
        return None
    for candidate in nearest(lat, lon, len(blinks.lamps) + 1):
        if candidate not in blinks.lamps:
            blinks.lamps[candidate] = LampBlink.SENT
            blinks.sent_ms[candidate] = now_ms
            blinks.new_added.append(candidate)
            return candidate
    return None
