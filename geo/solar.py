"""Sun position, sunrise, sunset and civil twilight: the astronomical clock of the lamps.

The formulas are the low-precision solar position equations that NOAA's Global Monitoring
Laboratory publishes with its solar calculator (after Jean Meeus, *Astronomical Algorithms*,
1991): accurate to about a minute for sunrise and sunset between latitudes 72 S and 72 N over
the years 1800-2100, which is what a street lamp needs.

Pure: every function takes the place and the date or instant and returns values; nothing reads
a clock. Instants are timezone-aware `datetime`s; results are in UTC.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

__all__ = [
    "CIVIL_TWILIGHT_ELEVATION_DEG",
    "SUNRISE_ELEVATION_DEG",
    "SunTimes",
    "solar_noon",
    "sun_elevation_deg",
    "sun_event",
    "sun_times",
]

# Apparent sunrise/sunset: the sun's upper limb touches the horizon. The centre is then
# 0.833 degrees below it (34' of standard refraction + 16' semidiameter; NOAA, USNO).
SUNRISE_ELEVATION_DEG = -0.833
# Civil dawn/dusk: the centre of the sun 6 degrees below the horizon (USNO definition).
CIVIL_TWILIGHT_ELEVATION_DEG = -6.0

_JULIAN_DAY_UNIX_EPOCH = 2440587.5  # Julian day of 1970-01-01T00:00Z
_JULIAN_DAY_J2000 = 2451545.0  # Julian day of 2000-01-01T12:00 TT, the epoch of the series
_DAYS_PER_JULIAN_CENTURY = 36525.0
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Three refinements move the estimate by under a second after the second pass.
_EVENT_ITERATIONS = 3


@dataclass(frozen=True)
class SunTimes:
    """Sun events of one local day; a field is None when the event does not happen that day."""

    day: date
    civil_dawn: datetime | None
    sunrise: datetime | None
    solar_noon: datetime
    sunset: datetime | None
    civil_dusk: datetime | None
    # "day" = the sun stays above the sunrise elevation all day (midnight sun), "night" = it
    # stays below (polar night), None = it rises and sets.
    polar: Literal["day", "night"] | None


@dataclass(frozen=True)
class _SunState:
    declination_rad: float
    equation_of_time_min: float


def _julian_century(when: datetime) -> float:
    seconds = (when - _UNIX_EPOCH).total_seconds()
    julian_day = _JULIAN_DAY_UNIX_EPOCH + seconds / 86400.0
    return (julian_day - _JULIAN_DAY_J2000) / _DAYS_PER_JULIAN_CENTURY


def _sun_state(when: datetime) -> _SunState:
    """Declination and equation of time at an instant (NOAA spreadsheet, columns G-V)."""
    t = _julian_century(when)
    mean_longitude_deg = (280.46646 + t * (36000.76983 + t * 0.0003032)) % 360.0
    mean_anomaly_deg = 357.52911 + t * (35999.05029 - 0.0001537 * t)
    eccentricity = 0.016708634 - t * (0.000042037 + 0.0000001267 * t)
    m = math.radians(mean_anomaly_deg)
    equation_of_centre_deg = (
        math.sin(m) * (1.914602 - t * (0.004817 + 0.000014 * t))
        + math.sin(2 * m) * (0.019993 - 0.000101 * t)
        + math.sin(3 * m) * 0.000289
    )
    true_longitude_deg = mean_longitude_deg + equation_of_centre_deg
    omega_rad = math.radians(125.04 - 1934.136 * t)
    apparent_longitude_deg = true_longitude_deg - 0.00569 - 0.00478 * math.sin(omega_rad)
    mean_obliquity_deg = 23.0 + (26.0 + (21.448 - t * (46.815 + t * (0.00059 - t * 0.001813))) / 60.0) / 60.0
    obliquity_rad = math.radians(mean_obliquity_deg + 0.00256 * math.cos(omega_rad))
    declination_rad = math.asin(math.sin(obliquity_rad) * math.sin(math.radians(apparent_longitude_deg)))
    y = math.tan(obliquity_rad / 2.0) ** 2
    l0 = math.radians(mean_longitude_deg)
    equation_of_time_rad = (
        y * math.sin(2 * l0)
        - 2 * eccentricity * math.sin(m)
        + 4 * eccentricity * y * math.sin(m) * math.cos(2 * l0)
        - 0.5 * y * y * math.sin(4 * l0)
        - 1.25 * eccentricity * eccentricity * math.sin(2 * m)
    )
    return _SunState(declination_rad, 4.0 * math.degrees(equation_of_time_rad))


def _check_place(lat_deg: float, lon_deg: float) -> None:
    if not (math.isfinite(lat_deg) and -90.0 <= lat_deg <= 90.0):
        raise ValueError(f"latitude out of range: {lat_deg!r}")
    if not (math.isfinite(lon_deg) and -180.0 <= lon_deg <= 180.0):
        raise ValueError(f"longitude out of range: {lon_deg!r}")


def _check_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"naive datetime, need an aware one: {when!r}")


def _utc_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def sun_elevation_deg(lat_deg: float, lon_deg: float, when: datetime) -> float:
    """Geometric elevation of the sun's centre above the horizon, in degrees (no refraction)."""
    _check_place(lat_deg, lon_deg)
    _check_aware(when)
    utc = when.astimezone(UTC)
    sun = _sun_state(utc)
    minutes_utc = (utc - _utc_midnight(utc.date())).total_seconds() / 60.0
    true_solar_time_min = (minutes_utc + sun.equation_of_time_min + 4.0 * lon_deg) % 1440.0
    hour_angle_rad = math.radians(true_solar_time_min / 4.0 - 180.0)
    lat = math.radians(lat_deg)
    cos_zenith = math.sin(lat) * math.sin(sun.declination_rad) + math.cos(lat) * math.cos(
        sun.declination_rad
    ) * math.cos(hour_angle_rad)
    return 90.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zenith))))


def solar_noon(lon_deg: float, day: date) -> datetime:
    """Instant of local apparent noon (sun crossing the meridian) on the local date `day`."""
    _check_place(0.0, lon_deg)
    # Local mean noon as first guess, then correct by the equation of time at that instant.
    estimate = _utc_midnight(day) + timedelta(minutes=720.0 - 4.0 * lon_deg)
    for _ in range(_EVENT_ITERATIONS):
        eot_min = _sun_state(estimate).equation_of_time_min
        estimate = _utc_midnight(day) + timedelta(minutes=720.0 - 4.0 * lon_deg - eot_min)
    return estimate


def _hour_angle_deg(lat_deg: float, declination_rad: float, elevation_deg: float) -> float | None:
    """Hour angle at which the sun's centre is at `elevation_deg`; None if never, signed cos."""
    lat = math.radians(lat_deg)
    denominator = math.cos(lat) * math.cos(declination_rad)
    if abs(denominator) < 1e-12:  # at a pole the sun circles at constant elevation
        return None
    cos_ha = (math.sin(math.radians(elevation_deg)) - math.sin(lat) * math.sin(declination_rad)) / denominator
    if not -1.0 <= cos_ha <= 1.0:
        return None
    return math.degrees(math.acos(cos_ha))


def sun_event(
    lat_deg: float,
    lon_deg: float,
    day: date,
    *,
    rising: bool,
    elevation_deg: float = SUNRISE_ELEVATION_DEG,
) -> datetime | None:
    """When the sun's centre crosses `elevation_deg` rising (morning) or setting on local date `day`."""
    _check_place(lat_deg, lon_deg)
    noon = solar_noon(lon_deg, day)
    estimate = noon
    for _ in range(_EVENT_ITERATIONS):
        # The sun moves: recompute declination and equation of time at the current estimate.
        sun = _sun_state(estimate)
        hour_angle = _hour_angle_deg(lat_deg, sun.declination_rad, elevation_deg)
        if hour_angle is None:
            return None
        event_noon_min = 720.0 - 4.0 * lon_deg - sun.equation_of_time_min
        offset_min = -4.0 * hour_angle if rising else 4.0 * hour_angle
        estimate = _utc_midnight(day) + timedelta(minutes=event_noon_min + offset_min)
    return estimate


def sun_times(lat_deg: float, lon_deg: float, day: date) -> SunTimes:
    """Civil dawn, sunrise, solar noon, sunset and civil dusk on the local date `day`, in UTC.

    `day` is the calendar date at the place (for Seoul the KST date): the events are those
    around that date's solar noon, so a Seoul sunrise falls on the previous UTC date.
    """
    sunrise = sun_event(lat_deg, lon_deg, day, rising=True)
    sunset = sun_event(lat_deg, lon_deg, day, rising=False)
    noon = solar_noon(lon_deg, day)
    polar: Literal["day", "night"] | None = None
    if sunrise is None or sunset is None:
        polar = "day" if sun_elevation_deg(lat_deg, lon_deg, noon) > SUNRISE_ELEVATION_DEG else "night"
    return SunTimes(
        day=day,
        civil_dawn=sun_event(lat_deg, lon_deg, day, rising=True, elevation_deg=CIVIL_TWILIGHT_ELEVATION_DEG),
        sunrise=sunrise,
        solar_noon=noon,
        sunset=sunset,
        civil_dusk=sun_event(lat_deg, lon_deg, day, rising=False, elevation_deg=CIVIL_TWILIGHT_ELEVATION_DEG),
        polar=polar,
    )
