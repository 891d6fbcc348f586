"""Astronomical clock: Seoul sunrise and sunset against published figures, twilight, polar days."""

from __future__ import annotations

import ast
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import geo.solar
from geo.solar import (
    CIVIL_TWILIGHT_ELEVATION_DEG,
    SUNRISE_ELEVATION_DEG,
    sun_elevation_deg,
    sun_event,
    sun_times,
)

SEOUL_LAT_DEG = 37.5665
SEOUL_LON_DEG = 126.9780
KST = timezone(timedelta(hours=9))
TOLERANCE = timedelta(minutes=2)

# Published sunrise/sunset for Seoul (KASI / timeanddate.com), KST, rounded to the minute.
PUBLISHED_SEOUL = [
    ("2022-06-21", "05:11", "19:57"),
    ("2022-12-21", "07:43", "17:17"),
    ("2022-03-20", "06:35", "18:45"),
    ("2022-09-23", "06:21", "18:29"),
]


def _kst(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00").replace(tzinfo=KST)


@pytest.mark.parametrize(("day", "sunrise_kst", "sunset_kst"), PUBLISHED_SEOUL)
def test_seoul_sunrise_and_sunset_match_published_times_within_two_minutes(
    day: str, sunrise_kst: str, sunset_kst: str
) -> None:
    times = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date.fromisoformat(day))
    assert times.sunrise is not None
    assert times.sunset is not None
    assert abs(times.sunrise - _kst(day, sunrise_kst)) <= TOLERANCE
    assert abs(times.sunset - _kst(day, sunset_kst)) <= TOLERANCE
    assert times.polar is None


def test_results_are_aware_utc_datetimes() -> None:
    times = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date(2022, 6, 21))
    for instant in (times.civil_dawn, times.sunrise, times.solar_noon, times.sunset, times.civil_dusk):
        assert instant is not None
        assert instant.utcoffset() == timedelta(0)


def test_a_seoul_sunrise_falls_on_the_previous_utc_date() -> None:
    sunrise = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date(2022, 6, 21)).sunrise
    assert sunrise is not None
    assert sunrise.date() == date(2022, 6, 20)
    assert sunrise.astimezone(KST).date() == date(2022, 6, 21)


def test_civil_twilight_brackets_sunrise_and_sunset_by_about_half_an_hour() -> None:
    times = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date(2022, 12, 21))
    assert times.civil_dawn is not None and times.sunrise is not None
    assert times.sunset is not None and times.civil_dusk is not None
    assert timedelta(minutes=24) < times.sunrise - times.civil_dawn < timedelta(minutes=36)
    assert timedelta(minutes=24) < times.civil_dusk - times.sunset < timedelta(minutes=36)


def test_elevation_at_computed_events_equals_the_defining_elevation() -> None:
    times = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date(2022, 9, 23))
    assert times.sunset is not None and times.civil_dusk is not None
    assert sun_elevation_deg(SEOUL_LAT_DEG, SEOUL_LON_DEG, times.sunset) == pytest.approx(
        SUNRISE_ELEVATION_DEG, abs=0.02
    )
    assert sun_elevation_deg(SEOUL_LAT_DEG, SEOUL_LON_DEG, times.civil_dusk) == pytest.approx(
        CIVIL_TWILIGHT_ELEVATION_DEG, abs=0.02
    )


def test_seoul_noon_elevation_follows_the_seasons() -> None:
    summer_noon = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date(2022, 6, 21)).solar_noon
    winter_noon = sun_times(SEOUL_LAT_DEG, SEOUL_LON_DEG, date(2022, 12, 21)).solar_noon
    # 90 - latitude +/- obliquity (23.44 degrees).
    assert sun_elevation_deg(SEOUL_LAT_DEG, SEOUL_LON_DEG, summer_noon) == pytest.approx(75.87, abs=0.1)
    assert sun_elevation_deg(SEOUL_LAT_DEG, SEOUL_LON_DEG, winter_noon) == pytest.approx(29.0, abs=0.1)


def test_midnight_sun_and_polar_night_have_no_sunrise_or_sunset() -> None:
    svalbard_summer = sun_times(78.22, 15.65, date(2022, 6, 21))
    svalbard_winter = sun_times(78.22, 15.65, date(2022, 12, 21))
    assert svalbard_summer.polar == "day"
    assert svalbard_winter.polar == "night"
    for times in (svalbard_summer, svalbard_winter):
        assert times.sunrise is None and times.sunset is None


def test_a_pole_is_handled_without_dividing_by_zero() -> None:
    assert sun_times(90.0, 0.0, date(2022, 6, 21)).polar == "day"
    assert sun_times(-90.0, 0.0, date(2022, 6, 21)).polar == "night"


def test_naive_datetimes_and_impossible_coordinates_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        sun_elevation_deg(SEOUL_LAT_DEG, SEOUL_LON_DEG, datetime(2022, 6, 21, 12))
    with pytest.raises(ValueError, match="latitude"):
        sun_times(91.0, 0.0, date(2022, 6, 21))
    with pytest.raises(ValueError, match="longitude"):
        sun_event(0.0, float("nan"), date(2022, 6, 21), rising=True)


@given(
    lat_deg=st.floats(min_value=-60.0, max_value=60.0),
    lon_deg=st.floats(min_value=-180.0, max_value=180.0),
    day=st.dates(min_value=date(1990, 1, 1), max_value=date(2090, 12, 31)),
)
def test_outside_polar_circles_the_day_is_ordered_dawn_sunrise_noon_sunset_dusk(
    lat_deg: float, lon_deg: float, day: date
) -> None:
    times = sun_times(lat_deg, lon_deg, day)
    assert times.civil_dawn is not None and times.sunrise is not None
    assert times.sunset is not None and times.civil_dusk is not None
    assert times.civil_dawn < times.sunrise < times.solar_noon < times.sunset < times.civil_dusk
    # The sun is up between sunrise and sunset and down just outside.
    minute = timedelta(minutes=1)
    assert sun_elevation_deg(lat_deg, lon_deg, times.solar_noon) > SUNRISE_ELEVATION_DEG
    assert sun_elevation_deg(lat_deg, lon_deg, times.sunrise - minute) < SUNRISE_ELEVATION_DEG
    assert sun_elevation_deg(lat_deg, lon_deg, times.sunset + minute) < SUNRISE_ELEVATION_DEG


@given(
    when=st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))
)
def test_elevation_is_between_minus_and_plus_ninety_degrees(when: datetime) -> None:
    assert -90.0 <= sun_elevation_deg(SEOUL_LAT_DEG, SEOUL_LON_DEG, when) <= 90.0


def test_the_solar_module_imports_only_the_standard_library() -> None:
    source = Path(geo.solar.__file__).read_text(encoding="utf-8")
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}
