"""The lamp's own schedule: dusk-to-dawn from the astronomical clock, with a night dimming profile.

Dusk and dawn are apparent sunset and sunrise (sun's upper limb on the horizon, -0.833 deg), not
civil twilight: an alley lamp must be lit when the street gets dark, and at civil dusk an alley
between buildings is already dark. Times of day for the dimming profile are Korean Standard Time,
fixed UTC+9 (Korea has no daylight saving time).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone

from geo.solar import sun_times

__all__ = ["KST", "NightProfile", "is_dark", "ms_to_datetime", "schedule_level"]

KST = timezone(timedelta(hours=9), "KST")


@dataclass(frozen=True)
class NightProfile:
    """Levels (percent) the lamp runs at by night when no override is active."""

    night_level: int = 80
    # Reduced level for the late night, or None for no late dimming. The late window runs
    # from `late_from` (KST) until `late_until` (KST) or, when that is None, until dawn.
    late_level: int | None = None
    late_from: time = time(23, 0)
    late_until: time | None = None

    def __post_init__(self) -> None:
        for name, level in (("night_level", self.night_level), ("late_level", self.late_level)):
            if level is not None and not 0 <= level <= 100:
                raise ValueError(f"{name} must be 0-100, got {level!r}")


def ms_to_datetime(ts_ms: int) -> datetime:
    """Aware UTC datetime of an epoch-milliseconds timestamp."""
    return datetime.fromtimestamp(ts_ms / 1000.0, tz=UTC)


def _local_solar_date(lon_deg: float, when: datetime) -> date:
    # The date whose solar noon is nearest: the night before dawn belongs to the same day's
    # sunrise, the evening after noon to the same day's sunset.
    return (when + timedelta(hours=lon_deg / 15.0)).date()


@functools.lru_cache(maxsize=4096)
def _dark_interval_bounds(
    lat_deg: float, lon_deg: float, day: date
) -> tuple[datetime | None, datetime | None, bool]:
    times = sun_times(lat_deg, lon_deg, day)
    return times.sunrise, times.sunset, times.polar == "night"


def is_dark(lat_deg: float, lon_deg: float, now_ms: int) -> bool:
    """True between sunset and the next sunrise at the place (the lamp's dusk-to-dawn window)."""
    when = ms_to_datetime(now_ms)
    sunrise, sunset, polar_night = _dark_interval_bounds(lat_deg, lon_deg, _local_solar_date(lon_deg, when))
    if sunrise is None or sunset is None:
        return polar_night
    return when < sunrise or when >= sunset


def _in_late_window(profile: NightProfile, local: time) -> bool:
    # Without an end, the window ends at dawn; noon is a safe stand-in because by then the
    # lamp is off anyway.
    until = profile.late_until if profile.late_until is not None else time(12, 0)
    if profile.late_from <= until:
        return profile.late_from <= local < until
    return local >= profile.late_from or local < until


def schedule_level(lat_deg: float, lon_deg: float, now_ms: int, profile: NightProfile) -> int:
    """Level (percent) the schedule asks for at `now_ms`: 0 by day, the night profile by night."""
    if not is_dark(lat_deg, lon_deg, now_ms):
        return 0
    local = ms_to_datetime(now_ms).astimezone(KST).time()
    if profile.late_level is not None and _in_late_window(profile, local):
        return profile.late_level
    return profile.night_level
