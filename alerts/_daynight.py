"""Lamp on by day, dark at night: a lamp's light output judged against the astronomical schedule.

Pure: the caller gives the sun's elevation at the lamp (``geo.solar.sun_elevation_deg``), the
lamp's latest reading and ``now``; nothing here reads a clock or a database.

Rules (issue #4, "lamp on by day and dark at night"):

- The sky is judged with margins around sunrise and sunset, because a lamp legitimately switches
  at apparent sunset/sunrise (-0.833 deg) give or take a photocell and a minute of clock:
  elevation above ``day_above_deg`` (+3) is **day**, below ``night_below_deg`` (-3) is **night**,
  anything in between is **twilight**, where nothing is judged.
- Output: ``level > 0`` or power drawn above ``standby_w`` (a driver stuck on with a level of 0
  still draws power). Dark: level 0 and no more than standby power.
- **Day burning**: output by day. **Dark at night**: no output by night, the lamp online. The
  schedule may dim at night but never to 0, so a dark lamp at night is a fault.
- Nothing is judged for a lamp with an active override (walk, SOS, manual: an SOS blink reads
  level 0 half the time, an operator may switch a lamp off or on by day), an offline lamp, or a
  reading older than ``stale_after_s``. Dark at night is not raised when the lamp already
  reports a fault that explains it (``lamp_failure``, ``power_loss``): that fault has its alert.
- One alert per device and condition: a ``lamp_fault`` alert whose fault code is the condition
  (``day_burning`` / ``dark_at_night``), so a lamp that reports ``day_burning`` itself and is
  also judged day burning has one alert. A newer reading showing the condition again counts into
  it (count + 1, at most once per reading). It resolves itself when a conclusive reading (the
  right sky, fresh, no override) shows the condition absent and the condition was last seen at
  least ``clear_after_s`` before: a lamp that is dark by day cleared its day burning; a lamp
  that lights at night cleared its dark-at-night. A night reading says nothing about day
  burning, and a day reading nothing about darkness at night, so those alerts wait.
- When at least half of a pass's judged lamps (20 or more) show one condition, the sky or the
  clock is wrong, not the lamps (`fleet_wide`): no new alerts for it in that pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from alerts._dedup import merge_fault
from alerts._errors import InvalidAlertData
from alerts._lifecycle import resolve
from alerts._model import Alert, AlertKind, EventAction, Place, require_aware


class Sky(StrEnum):
    """The sky at a lamp, with margins: twilight is neither day nor night."""

    DAY = "day"
    TWILIGHT = "twilight"
    NIGHT = "night"


class LampCondition(StrEnum):
    """A lamp out of step with the sky; the value is the alert's fault code."""

    DAY_BURNING = "day_burning"
    DARK_AT_NIGHT = "dark_at_night"


# Faults that already explain a dark lamp; each has its own lamp_fault alert.
DARK_EXPLAINED_BY = frozenset({"lamp_failure", "power_loss"})


@dataclass(frozen=True, slots=True)
class DayNightPolicy:
    """Margins and timings of the day/night judgement."""

    day_above_deg: float = 3.0  # sun elevation above this: day
    night_below_deg: float = -3.0  # below this: night; in between: twilight, not judged
    standby_w: float = 2.0  # power at or below this is the driver's standby, not light
    stale_after_s: float = 180.0  # a reading older than this says nothing about now
    clear_after_s: float = 600.0  # absent this long after it was last seen: resolved
    # Most of the fleet out of step at once is the sky or the clock (a simulated sky, a skewed
    # server clock), not the lamps: no new alert for that condition in that pass.
    fleet_min_lamps: int = 20
    fleet_fraction: float = 0.5

    def __post_init__(self) -> None:
        if not (self.night_below_deg <= self.day_above_deg):
            raise InvalidAlertData("night_below_deg must not be above day_above_deg")
        for name in ("standby_w", "stale_after_s", "clear_after_s"):
            value = getattr(self, name)
            if not (value >= 0.0 and math.isfinite(value)):
                raise InvalidAlertData(f"{name} must be a finite number >= 0, got {value!r}")


DEFAULT_DAYNIGHT = DayNightPolicy()


@dataclass(frozen=True, slots=True)
class LampReading:
    """What the backend knows of one lamp's light: its latest telemetry and state."""

    device_id: str
    at: datetime  # when the reading was taken (the telemetry's time)
    level: int | None  # percent; None when the telemetry carried none
    power_w: float | None = None
    online: bool = True
    faults: frozenset[str] = frozenset()
    override: bool = False  # an active walk / SOS / manual override (blink included)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", require_aware(self.at, "LampReading.at"))


@dataclass(frozen=True, slots=True)
class Observation:
    """A conclusive reading: whether `condition` is present (the only condition the sky lets us judge)."""

    condition: LampCondition
    present: bool
    at: datetime


def sky_at(elevation_deg: float, policy: DayNightPolicy = DEFAULT_DAYNIGHT) -> Sky:
    """Day, night or twilight for a sun elevation (degrees); NaN is twilight (not judged)."""
    if elevation_deg > policy.day_above_deg:
        return Sky.DAY
    if elevation_deg < policy.night_below_deg:
        return Sky.NIGHT
    return Sky.TWILIGHT


def lamp_output(reading: LampReading, policy: DayNightPolicy = DEFAULT_DAYNIGHT) -> bool | None:
    """True when the lamp gives light (level > 0 or power above standby), None when unknown."""
    if reading.level is None and reading.power_w is None:
        return None
    if reading.level is not None and reading.level > 0:
        return True
    return reading.power_w is not None and reading.power_w > policy.standby_w


def observe(
    reading: LampReading, elevation_deg: float, now: datetime, policy: DayNightPolicy = DEFAULT_DAYNIGHT
) -> Observation | None:
    """What the reading says about the lamp's light versus the sky; None when it says nothing.

    `elevation_deg` is the sun's elevation at the lamp at the reading's time.
    """
    at = require_aware(now, "now")
    if not reading.online or reading.override:
        return None
    if (at - reading.at).total_seconds() > policy.stale_after_s:
        return None
    output = lamp_output(reading, policy)
    if output is None:
        return None
    sky = sky_at(elevation_deg, policy)
    if sky is Sky.DAY:
        return Observation(LampCondition.DAY_BURNING, output, reading.at)
    if sky is Sky.NIGHT:
        if not output and reading.faults & DARK_EXPLAINED_BY:
            return None  # the lamp said why it is dark: that fault is alerted already
        return Observation(LampCondition.DARK_AT_NIGHT, not output, reading.at)
    return None


def fleet_wide(
    observations: Iterable[Observation], policy: DayNightPolicy = DEFAULT_DAYNIGHT
) -> frozenset[LampCondition]:
    """Conditions seen in at least `fleet_fraction` of a pass's judged lamps (at least `fleet_min_lamps`
    of them): not raised per lamp (existing alerts still count and resolve)."""
    judged: dict[LampCondition, int] = {}
    present: dict[LampCondition, int] = {}
    for o in observations:
        judged[o.condition] = judged.get(o.condition, 0) + 1
        if o.present:
            present[o.condition] = present.get(o.condition, 0) + 1
    return frozenset(
        c
        for c, n in judged.items()
        if n >= policy.fleet_min_lamps and present.get(c, 0) >= policy.fleet_fraction * n
    )


def _last_seen_at(alert: Alert) -> datetime:
    for event in reversed(alert.timeline):
        if event.action in (EventAction.CREATED, EventAction.REPEATED):
            return event.at
    return alert.created_at


def _matching(active_alerts: Iterable[Alert], device_id: str, condition: LampCondition) -> Alert | None:
    for alert in active_alerts:
        if (
            alert.kind is AlertKind.LAMP_FAULT
            and alert.is_active
            and alert.source_id == device_id
            and alert.fault_code == condition.value
        ):
            return alert
    return None


def apply_observation(
    active_alerts: Iterable[Alert],
    observation: Observation,
    *,
    device_id: str,
    place: Place,
    now: datetime,
    new_alert_id: str,
    policy: DayNightPolicy = DEFAULT_DAYNIGHT,
) -> Alert | None:
    """The device's alert for the observed condition after this observation, or None when unchanged.

    Present: open an alert, or count a reading newer than the last one counted (count + 1).
    Absent: resolve the alert when the condition was last seen ``clear_after_s`` or more before
    the reading. The result is a new Alert to save (compare ids with `active_alerts`).
    """
    at = require_aware(now, "now")
    existing = _matching(active_alerts, device_id, observation.condition)
    if observation.present:
        if existing is not None and observation.at <= _last_seen_at(existing):
            return None  # this reading was counted already
        merged, _ = merge_fault(
            [existing] if existing is not None else [],
            kind=AlertKind.LAMP_FAULT,
            device_id=device_id,
            fault_code=observation.condition.value,
            place=place,
            now=at,
            new_alert_id=new_alert_id,
        )
        return merged
    if existing is None:
        return None
    if observation.at - _last_seen_at(existing) < timedelta(seconds=policy.clear_after_s):
        return None
    return resolve(
        existing,
        at,
        f"device:{device_id}",
        note=f"{observation.condition.value} not seen since the last report",
    )
