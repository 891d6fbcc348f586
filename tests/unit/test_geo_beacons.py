"""Beacon sightings: the blinker's paired lamp first, the lamps within 30 m, fresh sightings only."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from geo import BEACON_MAX_AGE_S, BEACON_RADIUS_M, LampIndex, beacon_is_fresh, lamps_for_beacon

LAT, LON = 37.5650, 126.9800
M_LAT = 1 / 111_000  # degrees of latitude per metre, near enough for test layouts
NOW = 1_764_100_000_000


def street(*metres_north: float) -> LampIndex:
    """Lamps at these distances north of (LAT, LON), named by their distance."""
    return LampIndex(
        [f"l{m:g}" for m in metres_north], [LAT + m * M_LAT for m in metres_north], [LON] * len(metres_north)
    )


def test_a_sighting_brightens_the_lamps_within_30_m_nearest_first() -> None:
    assert lamps_for_beacon(street(50, 25, 10, 0), LAT, LON) == ["l0", "l10", "l25"]
    assert BEACON_RADIUS_M == 30.0


def test_the_paired_lamp_comes_first_even_beyond_the_radius_and_only_once() -> None:
    index = street(0, 10, 80)
    assert lamps_for_beacon(index, LAT, LON, paired="l80") == ["l80", "l0", "l10"]
    assert lamps_for_beacon(index, LAT, LON, paired="l10") == ["l10", "l0"]


def test_a_paired_device_that_is_no_known_lamp_is_left_out() -> None:
    assert lamps_for_beacon(street(0), LAT, LON, paired="blinker-7") == ["l0"]
    assert lamps_for_beacon(street(0), LAT, LON, paired=None) == ["l0"]


def test_no_lamps_no_brightening() -> None:
    assert lamps_for_beacon(LampIndex([], [], []), LAT, LON, paired="l0") == []
    assert lamps_for_beacon(street(100), LAT, LON) == []


@given(st.lists(st.floats(0, 200), max_size=20), st.sampled_from([None, "n0", "n3", "x"]))
def test_every_lamp_named_is_within_the_radius_or_the_paired_lamp_and_none_twice(
    metres: list[float], paired: str | None
) -> None:
    index = LampIndex(
        [f"n{i}" for i in range(len(metres))], [LAT + m * M_LAT for m in metres], [LON] * len(metres)
    )
    lamps = lamps_for_beacon(index, LAT, LON, paired=paired)
    assert len(lamps) == len(set(lamps))
    near = set(index.within(LAT, LON, BEACON_RADIUS_M).ids)
    assert set(lamps) - near <= ({paired} if paired in index else set())
    assert near <= set(lamps)
    if paired in index:
        assert lamps[0] == paired


def test_a_sighting_older_than_30_s_is_stale() -> None:
    assert beacon_is_fresh(NOW - 29_000, NOW)
    assert beacon_is_fresh(NOW - int(BEACON_MAX_AGE_S * 1000), NOW)
    assert not beacon_is_fresh(NOW - 30_001, NOW)
    assert beacon_is_fresh(NOW + 5_000, NOW)  # a little ahead (the blinker's clock): still acted on
