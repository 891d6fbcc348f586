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

A pass (ingest reads, these plan, ingest writes): `judge_lamps` judges every lamp's latest reading
(`LampSnapshot`) and keeps the lamps whose alert would change by what was read; `daynight_change`
decides again on the device's alerts as stored under its lock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from alerts._dedup import merge_fault
from alerts._errors import InvalidAlertData
from alerts._lifecycle import resolve
from alerts._maintenance import AlertChange, device_place
from alerts._model import Alert, AlertKind, EventAction, Place, device_place_of, require_aware


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


# -- a pass over the fleet

DAYNIGHT_COUNTS = ("daynight_new", "daynight_repeated", "daynight_resolved")

SunElevation = Callable[[float, float, datetime], float]
"""(lat, lon, when) -> the sun's elevation in degrees (``geo.solar.sun_elevation_deg``)."""


@dataclass(frozen=True, slots=True)
class LampSnapshot:
    """A lamp's latest reading with its position: what the day/night pass judges."""

    device_id: str
    lat: float
    lon: float
    at: datetime  # the reading's time (last_seen)
    level: int | None
    power_w: float | None = None
    online: bool = True
    faults: frozenset[str] = frozenset()
    override: bool = False  # a walk / SOS / operator override in force at the reading
    district_code: str = ""
    dong_code: str = ""
    lamp_number: str = ""  # the number on the pole (the lamp register)
    address: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", require_aware(self.at, "LampSnapshot.at"))


@dataclass(frozen=True, slots=True)
class DayNightCandidate:
    """A lamp whose day/night alert changes by its observation (decide again under its lock)."""

    device_id: str
    observation: Observation
    place: Place


@dataclass(frozen=True, slots=True)
class DayNightPass:
    """What one pass judged: how many lamps, the conditions blamed on the sky, the candidates."""

    judged: int
    suspect: frozenset[LampCondition]
    candidates: tuple[DayNightCandidate, ...]


_CONDITIONS = frozenset(c.value for c in LampCondition)


def is_daynight_alert(alert: Alert) -> bool:
    """A ``lamp_fault`` alert whose fault code is a day/night condition."""
    return alert.kind is AlertKind.LAMP_FAULT and alert.fault_code in _CONDITIONS


def judge_lamps(
    lamps: Iterable[LampSnapshot],
    lamp_faults: Iterable[Alert],
    now: datetime,
    *,
    sun: SunElevation,
    policy: DayNightPolicy = DEFAULT_DAYNIGHT,
) -> DayNightPass:
    """Judge each lamp's reading against the sky and keep the lamps whose alert would change.

    ``lamp_faults`` are the active ``lamp_fault`` alerts: the day/night ones are the lamps' current
    alerts, a ``lamp_failure``/``power_loss`` one explains a dark lamp. The sun's elevation is
    computed once per position (to 0.01 deg, about 1 km) and minute of reading, not per lamp.
    """
    at = require_aware(now, "now")
    known: dict[str, list[Alert]] = {}
    explained: dict[str, set[str]] = {}  # a dark lamp whose failure is alerted already
    for alert in lamp_faults:
        if alert.kind is not AlertKind.LAMP_FAULT or not alert.is_active:
            continue
        if alert.fault_code in _CONDITIONS:
            known.setdefault(alert.source_id, []).append(alert)
        elif alert.fault_code in DARK_EXPLAINED_BY:
            explained.setdefault(alert.source_id, set()).add(alert.fault_code)
    elevations: dict[tuple[float, float, int], float] = {}
    seen_all: list[tuple[LampSnapshot, Observation]] = []
    for lamp in lamps:
        key = (round(lamp.lat, 2), round(lamp.lon, 2), int(lamp.at.timestamp() // 60))
        elevation = elevations.get(key)
        if elevation is None:
            elevation = elevations[key] = sun(lamp.lat, lamp.lon, lamp.at)
        reading = LampReading(
            lamp.device_id,
            lamp.at,
            lamp.level,
            lamp.power_w,
            online=lamp.online,
            faults=lamp.faults | explained.get(lamp.device_id, set()),
            override=lamp.override,
        )
        seen = observe(reading, elevation, at, policy)
        if seen is not None:
            seen_all.append((lamp, seen))
    suspect = fleet_wide((o for _lamp, o in seen_all), policy)
    candidates: list[DayNightCandidate] = []
    for lamp, seen in seen_all:
        alerts = known.get(lamp.device_id, [])
        has_alert = any(a.fault_code == seen.condition.value for a in alerts)
        if seen.present and seen.condition in suspect and not has_alert:
            continue
        place = device_place_of(
            device_place(lamp.lat, lamp.lon, lamp.district_code, lamp.dong_code),
            lamp.device_id,
            lamp.lamp_number,
            lamp.address,
            None,
        )
        probe = apply_observation(
            alerts, seen, device_id=lamp.device_id, place=place, now=at, new_alert_id="probe", policy=policy
        )
        if probe is not None:
            candidates.append(DayNightCandidate(lamp.device_id, seen, place))
    return DayNightPass(len(seen_all), suspect, tuple(candidates))


def daynight_change(
    device_alerts: Iterable[Alert],
    candidate: DayNightCandidate,
    *,
    now: datetime,
    new_alert_id: str,
    policy: DayNightPolicy = DEFAULT_DAYNIGHT,
) -> AlertChange | None:
    """The candidate's change on the device's active alerts as stored now, or None; reasons are
    the keys of ``DAYNIGHT_COUNTS``."""
    active = [a for a in device_alerts if is_daynight_alert(a)]
    changed = apply_observation(
        active,
        candidate.observation,
        device_id=candidate.device_id,
        place=candidate.place,
        now=now,
        new_alert_id=new_alert_id,
        policy=policy,
    )
    if changed is None:
        return None
    previous = next((a for a in active if a.id == changed.id), None)
    if previous is None:
        reason = "daynight_new"
    elif changed.is_active:
        reason = "daynight_repeated"
    else:
        reason = "daynight_resolved"
    return AlertChange(changed, previous, reason)
