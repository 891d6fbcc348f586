"""Cameras near a point (geo/_cameras.py): 촬영방면정보 parsed where it is parseable, the bearing from
a camera to the resident, the facing sector, and the index (nearest first, the same answer as a
brute-force scan)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo import CameraIndex, Facing, angle_between, bearing_deg, looks_towards, parse_facing, point_distance_m

LAT, LON = 37.5636, 126.9976  # 중구 필동
M_LAT = 1 / 111_000.0
M_LON = 1 / (111_000.0 * math.cos(math.radians(LAT)))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("동", Facing(centres_deg=(90.0,))),
        ("서쪽", Facing(centres_deg=(270.0,))),
        ("서남", Facing(centres_deg=(225.0,))),
        ("남서방향", Facing(centres_deg=(225.0,))),
        ("북동", Facing(centres_deg=(45.0,))),
        ("동서", Facing(centres_deg=(90.0, 270.0))),
        ("남, 북", Facing(centres_deg=(180.0, 0.0))),
        ("동/북서", Facing(centres_deg=(90.0, 315.0))),
        ("360도", Facing(all_around=True)),
        ("360°", Facing(all_around=True)),
        ("전방향", Facing(all_around=True)),
        ("회전형", Facing(all_around=True)),
        ("동서남북", Facing(all_around=True)),
        ("동,서,남,북", Facing(all_around=True)),
    ],
)
def test_parseable_facings(text: str, expected: Facing) -> None:
    assert parse_facing(text) == expected


@pytest.mark.parametrize(
    "text", [None, "", "  ", "동대문 방향", "사거리 방면", "45도", "학교 정문", "동쪽 도로", "북북동", "동동"]
)
def test_free_text_is_unknown(text: str | None) -> None:
    assert parse_facing(text) is None


@given(st.text(max_size=30))
def test_parse_facing_never_raises(text: str) -> None:
    facing = parse_facing(text)
    assert facing is None or facing.all_around or all(0 <= c < 360 for c in facing.centres_deg)


def test_bearings_point_the_right_way() -> None:
    assert bearing_deg(LAT, LON, LAT + 50 * M_LAT, LON) == pytest.approx(0.0, abs=0.5)
    assert bearing_deg(LAT, LON, LAT, LON + 50 * M_LON) == pytest.approx(90.0, abs=0.5)
    assert bearing_deg(LAT, LON, LAT - 50 * M_LAT, LON) == pytest.approx(180.0, abs=0.5)
    assert bearing_deg(LAT, LON, LAT, LON - 50 * M_LON) == pytest.approx(270.0, abs=0.5)


def test_looks_towards_is_the_sector_and_unknown_stays_unknown() -> None:
    east = parse_facing("동")
    assert looks_towards(east, 90.0, 30.0) is True
    assert looks_towards(east, 135.0, 30.0) is True  # the sector's edge
    assert looks_towards(east, 136.0, 30.0) is False
    assert looks_towards(east, 270.0, 30.0) is False
    assert looks_towards(east, 270.0, 0.5) is True  # the resident stands at the camera
    assert looks_towards(parse_facing("북"), 350.0, 30.0) is True  # across north
    assert looks_towards(parse_facing("360도"), 200.0, 30.0) is True
    assert looks_towards(None, 90.0, 30.0) is None


@given(st.floats(-720, 720), st.floats(-720, 720))
def test_angle_between_is_symmetric_and_bounded(a: float, b: float) -> None:
    d = angle_between(a, b)
    assert 0.0 <= d <= 180.0
    assert d == pytest.approx(angle_between(b, a), abs=1e-9)
    assert angle_between(a, a + 360.0) == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    st.floats(0, 359.99),
    st.floats(5, 90),
    st.sampled_from(["동", "서", "남", "북", "북동", "남동", "남서", "북서"]),
)
def test_a_camera_sees_a_resident_exactly_when_the_bearing_is_inside_its_sector(
    bearing: float, distance: float, word: str
) -> None:
    """A resident placed at a bearing and distance from a camera: the index's answer is the sector
    test on the true bearing (to within the grid's convergence, a fraction of a degree)."""
    facing = parse_facing(word)
    assert facing is not None
    rad = math.radians(bearing)
    lat = LAT + distance * math.cos(rad) * M_LAT
    lon = LON + distance * math.sin(rad) * M_LON
    index = CameraIndex(["c"], [LAT], [LON], [facing])
    (hit,) = index.near(lat, lon, 100.0)
    assert hit.distance_m == pytest.approx(distance, rel=0.01)
    assert angle_between(hit.bearing_deg, bearing) < 1.0
    edge = abs(angle_between(facing.centres_deg[0], bearing) - 45.0)
    if edge > 1.0:  # away from the sector's edge the true and grid bearings agree on the answer
        assert hit.looks_towards is (angle_between(facing.centres_deg[0], bearing) <= 45.0)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-300, 300), st.floats(-300, 300)), min_size=1, max_size=40),
    st.floats(0, 250),
)
def test_near_is_every_camera_within_the_radius_nearest_first(
    offsets: list[tuple[float, float]], radius: float
) -> None:
    ids = [f"cam-{i}" for i in range(len(offsets))]
    lats = [LAT + dn * M_LAT for dn, _ in offsets]
    lons = [LON + de * M_LON for _, de in offsets]
    index = CameraIndex(ids, lats, lons, [None] * len(ids))
    hits = index.near(LAT, LON, radius)
    dists = [h.distance_m for h in hits]
    assert dists == sorted(dists)
    brute = {
        i
        for i, la, lo in zip(ids, lats, lons, strict=True)
        if point_distance_m(LAT, LON, la, lo) <= radius - 0.05
    }
    assert brute <= {h.camera_id for h in hits}
    assert all(h.distance_m <= radius + 1e-6 and h.looks_towards is None for h in hits)


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="facings"):
        CameraIndex(["a", "b"], [LAT, LAT], [LON, LON], [None])
    index = CameraIndex(["a"], [LAT], [LON], [None])
    with pytest.raises(ValueError):
        index.near(LAT, LON, -1.0)
    with pytest.raises(ValueError):
        index.near(51.5, -0.1, 100.0)
    assert len(CameraIndex([], [], [], []).near(LAT, LON, 100.0)) == 0
