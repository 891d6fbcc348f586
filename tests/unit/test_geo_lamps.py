"""Lamp index queries against brute-force references."""

from __future__ import annotations

import math
import time

import numpy as np
import pyproj
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devkit.bench.geo import walker_lamps_by_tree
from geo import LampIndex, distance_m, grid_direction, reach_for_speed, to_latlon, to_metric

# A ~550 m square in Jung-gu: small enough that random radii catch many lamps.
LAT_RANGE = (37.5600, 37.5650)
LON_RANGE = (126.9750, 126.9806)

lats = st.floats(min_value=LAT_RANGE[0], max_value=LAT_RANGE[1])
lons = st.floats(min_value=LON_RANGE[0], max_value=LON_RANGE[1])
GRS80 = pyproj.Geod(ellps="GRS80")
positions = st.lists(st.tuples(lats, lons), min_size=0, max_size=120)


def _index(points: list[tuple[float, float]]) -> LampIndex:
    ids = [f"lamp-{i:03d}" for i in range(len(points))]
    return LampIndex(ids, [p[0] for p in points], [p[1] for p in points])


def _brute_force_within(
    index: LampIndex, lat: float, lon: float, radius_m: float
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    x, y = to_metric(lat, lon)
    d = np.hypot(index.easting_m - x, index.northing_m - y)
    rows = np.flatnonzero(d <= radius_m)
    order = rows[np.lexsort((rows, d[rows]))]
    return tuple(index.ids[i] for i in order), tuple(d[order].tolist())


@pytest.fixture(scope="module")
def to_5186() -> pyproj.Transformer:
    return pyproj.Transformer.from_crs("EPSG:4326", "EPSG:5186", always_xy=True)


# --- within a radius ----------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(points=positions, lat=lats, lon=lons, radius_m=st.floats(min_value=0.0, max_value=400.0))
def test_within_equals_a_brute_force_scan_of_every_lamp(
    points: list[tuple[float, float]], lat: float, lon: float, radius_m: float
) -> None:
    index = _index(points)
    got = index.within(lat, lon, radius_m)
    assert (got.ids, got.distances_m) == _brute_force_within(index, lat, lon, radius_m)


@settings(max_examples=100, deadline=None)
@given(points=positions, lat=lats, lon=lons, radius_m=st.floats(min_value=0.0, max_value=400.0))
def test_within_agrees_with_pyproj_metres_and_geodesic_distances(
    to_5186: pyproj.Transformer, points: list[tuple[float, float]], lat: float, lon: float, radius_m: float
) -> None:
    index = _index(points)
    got = index.within(lat, lon, radius_m)
    lamp_lat = np.array([p[0] for p in points])
    lamp_lon = np.array([p[1] for p in points])
    ex, ey = to_5186.transform(lamp_lon, lamp_lat)
    qx, qy = to_5186.transform(lon, lat)
    metric = np.hypot(ex - qx, ey - qy)
    geodesic = distance_m(lat, lon, lamp_lat, lamp_lon)
    found = set(got.ids)
    for i, lamp_id in enumerate(f"lamp-{i:03d}" for i in range(len(points))):
        # Away from the rim (1 mm), pyproj's metres decide membership.
        if metric[i] < radius_m - 1e-3:
            assert lamp_id in found
        elif metric[i] > radius_m + 1e-3:
            assert lamp_id not in found
        # Grid metres are ground metres to the TM scale factor (< 3e-5 in Seoul).
        assert metric[i] == pytest.approx(geodesic[i], rel=3e-5, abs=1e-6)
    for lamp_id, d in zip(got.ids, got.distances_m, strict=True):
        assert d == pytest.approx(metric[int(lamp_id[5:])], abs=1e-6)


@settings(max_examples=100, deadline=None)
@given(
    points=positions,
    queries=st.lists(st.tuples(lats, lons), min_size=0, max_size=20),
    radius_m=st.floats(min_value=0.0, max_value=300.0),
)
def test_within_many_equals_within_for_each_point(
    points: list[tuple[float, float]], queries: list[tuple[float, float]], radius_m: float
) -> None:
    index = _index(points)
    got = index.within_many([q[0] for q in queries], [q[1] for q in queries], radius_m)
    assert got == [index.within(lat, lon, radius_m) for lat, lon in queries]


# --- k nearest ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(points=positions, lat=lats, lon=lons, k=st.integers(min_value=1, max_value=140))
def test_nearest_equals_the_first_k_of_a_full_sort(
    points: list[tuple[float, float]], lat: float, lon: float, k: int
) -> None:
    index = _index(points)
    got = index.nearest(lat, lon, k)
    want_ids, want_d = _brute_force_within(index, lat, lon, math.inf)
    assert (got.ids, got.distances_m) == (want_ids[:k], want_d[:k])


def test_nearest_with_ties_keeps_index_order() -> None:
    index = LampIndex(["b", "a", "c"], [37.56, 37.56, 37.561], [126.97, 126.97, 126.97])
    assert index.nearest(37.56, 126.97, 2).ids == ("b", "a")


# --- ahead of a walker ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    points=positions,
    lat=lats,
    lon=lons,
    heading_deg=st.floats(min_value=-360.0, max_value=720.0),
    speed_mps=st.floats(min_value=0.0, max_value=4.0),
    half_width_m=st.floats(min_value=0.0, max_value=40.0),
)
def test_ahead_equals_a_brute_force_corridor_scan(
    points: list[tuple[float, float]],
    lat: float,
    lon: float,
    heading_deg: float,
    speed_mps: float,
    half_width_m: float,
) -> None:
    index = _index(points)
    got = index.ahead(lat, lon, heading_deg, speed_mps, half_width_m=half_width_m)
    reach_m = reach_for_speed(speed_mps)
    ux, uy = grid_direction(lat, lon, heading_deg)
    x, y = to_metric(lat, lon)
    dx, dy = index.easting_m - x, index.northing_m - y
    along = dx * ux + dy * uy
    across = dx * uy - dy * ux
    rows = np.flatnonzero((along >= 0) & (along <= reach_m) & (np.abs(across) <= half_width_m))
    order = rows[np.lexsort((rows, along[rows]))]
    assert got.reach_m == reach_m
    assert got.ids == tuple(index.ids[i] for i in order)
    assert got.along_m == tuple(along[order].tolist())
    assert got.across_m == tuple(across[order].tolist())


@settings(max_examples=100, deadline=None)
@given(lat=lats, lon=lons, heading_deg=st.floats(min_value=0.0, max_value=360.0))
def test_grid_direction_points_where_the_geodesic_heading_goes(
    lat: float, lon: float, heading_deg: float
) -> None:
    to_5186 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:5186", always_xy=True)
    lon2, lat2, _ = pyproj.Geod(ellps="GRS80").fwd(lon, lat, heading_deg, 50.0)
    (x1, x2), (y1, y2) = to_5186.transform([lon, lon2], [lat, lat2])
    ux, uy = grid_direction(lat, lon, heading_deg)
    assert math.hypot(ux, uy) == pytest.approx(1.0)
    # Over 50 m the end points agree to a millimetre.
    assert math.hypot(x1 + 50.0 * ux - x2, y1 + 50.0 * uy - y2) < 1e-3


def _lamps_around(lat: float, lon: float, offsets_m: dict[str, tuple[float, float]]) -> LampIndex:
    x, y = to_metric(lat, lon)
    ids = list(offsets_m)
    east = [float(x) + offsets_m[i][0] for i in ids]
    north = [float(y) + offsets_m[i][1] for i in ids]
    return LampIndex.from_metric(ids, east, north)


def test_a_walker_heading_east_sees_the_lamps_ahead_in_path_order() -> None:
    lat, lon = 37.5550, 126.9700
    # (east, north) offsets in grid metres from the walker; the walker heads grid-east, which
    # is true 90° plus the meridian convergence (~0.02° here), negligible at these margins.
    index = _lamps_around(
        lat,
        lon,
        {
            "far": (70.0, 0.0),  # beyond the reach of a 1.4 m/s walker (63 m)
            "second": (50.0, -10.0),  # 10 m to the right (south) of the path
            "first": (20.0, 2.0),
            "behind": (-10.0, 0.0),
            "wide": (30.0, 20.0),  # outside the 15 m half-width
            "third": (60.0, 14.0),
        },
    )
    got = index.ahead(lat, lon, 90.0, 1.4)
    assert got.reach_m == pytest.approx(63.0)
    assert got.ids == ("first", "second", "third")
    assert got.along_m == pytest.approx((20.0, 50.0, 60.0), abs=0.05)
    assert got.across_m == pytest.approx((-2.0, 10.0, -14.0), abs=0.05)
    # Faster walkers look farther, up to the cap; a standing one still sees 30 m.
    assert index.ahead(lat, lon, 90.0, 3.0).ids == ("first", "second", "third", "far")
    assert index.ahead(lat, lon, 90.0, 0.0).ids == ("first",)
    # Turning round shows what was behind.
    assert index.ahead(lat, lon, 270.0, 1.4).ids == ("behind",)


def test_reach_is_speed_times_seconds_clamped() -> None:
    assert reach_for_speed(0.0) == 30.0
    assert reach_for_speed(1.4) == pytest.approx(63.0)
    assert reach_for_speed(10.0) == 80.0
    assert reach_for_speed(1.0, seconds_ahead_s=10.0, min_reach_m=5.0, max_reach_m=50.0) == 10.0


# --- updates --------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    points=positions,
    moves=st.lists(st.tuples(st.integers(min_value=0, max_value=200), lats, lons), max_size=30),
    removed=st.sets(st.integers(min_value=0, max_value=200), max_size=20),
    lat=lats,
    lon=lons,
)
def test_an_updated_index_answers_like_one_built_from_scratch(
    points: list[tuple[float, float]],
    moves: list[tuple[int, float, float]],
    removed: set[int],
    lat: float,
    lon: float,
) -> None:
    index = _index(points)
    final = {f"lamp-{i:03d}": p for i, p in enumerate(points)}
    ids = [f"lamp-{i:03d}" for i, _, _ in moves]
    for lamp_id, (_, mlat, mlon) in zip(ids, moves, strict=True):
        final[lamp_id] = (mlat, mlon)  # a later move of the same lamp wins
    # Half the moves one by one, the rest in one call (where repeated ids also resolve to the last).
    half = len(moves) // 2
    updated = index
    for lamp_id, (_, mlat, mlon) in zip(ids[:half], moves[:half], strict=True):
        updated = updated.with_lamps([lamp_id], [mlat], [mlon])
    updated = updated.with_lamps(ids[half:], [m[1] for m in moves[half:]], [m[2] for m in moves[half:]])
    gone = [f"lamp-{i:03d}" for i in removed]
    updated = updated.without_lamps(gone)
    for lamp_id in gone:
        final.pop(lamp_id, None)
    fresh = LampIndex(list(final), [p[0] for p in final.values()], [p[1] for p in final.values()])
    assert updated.ids == fresh.ids
    assert updated.within(lat, lon, 150.0) == fresh.within(lat, lon, 150.0)
    assert updated.nearest(lat, lon, 5) == fresh.nearest(lat, lon, 5)
    assert all(updated.position(i) == fresh.position(i) for i in fresh.ids)
    assert len(index) == len(points)  # the original is untouched


def test_with_lamps_moves_known_ids_and_appends_new_ones() -> None:
    index = LampIndex(["a", "b"], [37.56, 37.561], [126.97, 126.97])
    moved = index.with_lamps(["b", "c"], [37.562, 37.563], [126.971, 126.972])
    assert moved.ids == ("a", "b", "c")
    assert moved.position("b") == (37.562, 126.971)
    assert index.position("b") == (37.561, 126.97)
    assert "c" in moved and "c" not in index


# --- invalid input ------------------------------------------------------------------------------


def test_invalid_lamp_input_is_refused_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="unique"):
        LampIndex(["a", "a"], [37.56, 37.56], [126.97, 126.97])
    with pytest.raises(ValueError, match="2 ids but 1 positions"):
        LampIndex(["a", "b"], [37.56], [126.97])
    with pytest.raises(ValueError, match="latitude at index 1"):
        LampIndex(["a", "b"], [37.56, math.nan], [126.97, 126.97])
    with pytest.raises(ValueError, match="outside the lamp index's area"):
        LampIndex(["a"], [51.5], [-0.12])
    index = LampIndex(["a"], [37.56], [126.97])
    with pytest.raises(ValueError, match="radius_m"):
        index.within(37.56, 126.97, -1.0)
    with pytest.raises(ValueError, match="radius_m"):
        index.within(37.56, 126.97, math.nan)
    with pytest.raises(ValueError, match="k must be"):
        index.nearest(37.56, 126.97, 0)
    with pytest.raises(ValueError, match="latitude must be finite"):
        index.within(math.inf, 126.97, 10.0)
    with pytest.raises(ValueError, match="heading_deg"):
        index.ahead(37.56, 126.97, math.nan, 1.0)
    with pytest.raises(ValueError, match="speed_mps"):
        index.ahead(37.56, 126.97, 0.0, -1.0)


def test_an_empty_index_answers_every_query_with_nothing() -> None:
    index = LampIndex([], [], [])
    assert len(index.within(37.56, 126.97, 100.0)) == 0
    assert len(index.nearest(37.56, 126.97, 3)) == 0
    assert len(index.ahead(37.56, 126.97, 0.0, 1.0)) == 0
    assert index.within_many([37.56], [126.97], 10.0)[0].ids == ()


# --- speed -------------------------------------------------------------------------------------


def test_within_30_m_over_50000_lamps_takes_well_under_a_millisecond() -> None:
    rng = np.random.default_rng(20220303)
    # 50,000 lamps in 100 dense clusters (alley zones, ~25 m apart) across Seoul.
    cx, cy = to_metric(rng.uniform(37.45, 37.68, 100), rng.uniform(126.82, 127.15, 100))
    east = np.repeat(cx, 500) + rng.uniform(-280.0, 280.0, 50_000)
    north = np.repeat(cy, 500) + rng.uniform(-280.0, 280.0, 50_000)
    lat, lon = to_latlon(east, north)
    index = LampIndex([f"L{i}" for i in range(50_000)], lat, lon)
    queries = rng.integers(0, 50_000, 300)
    timings = []
    hits = 0
    for i in queries:
        start = time.perf_counter()
        hits += len(index.within(float(lat[i]), float(lon[i]), 30.0))
        timings.append(time.perf_counter() - start)
    assert hits >= 300  # each query point is itself a lamp
    assert float(np.median(timings)) < 1e-3


def test_a_walker_gets_the_lamps_around_then_the_lamps_ahead_once_each() -> None:
    from geo import LampIndex, lamps_for_walker, to_latlon

    # lamps every 20 m along a street running north from a point in Jung-gu, one 25 m behind
    e0, n0 = 198_000.0, 551_000.0
    norths = [n0 - 25.0, *[n0 + 20.0 * k for k in range(0, 6)]]
    lat, lon = to_latlon([e0] * len(norths), norths)
    ids = ["behind", *[f"L{k}" for k in range(6)]]
    index = LampIndex(ids, lat, lon)
    here_lat, here_lon = to_latlon(e0, n0)
    standing = lamps_for_walker(index, float(here_lat), float(here_lon), None, None)
    assert standing == ("L0", "L1", "behind")
    walking = lamps_for_walker(index, float(here_lat), float(here_lon), 0.0, 1.4)
    assert walking[:3] == ("L0", "L1", "behind")
    assert walking[3:] == ("L2", "L3")  # reach 1.4 m/s x 45 s = 63 m; each lamp once
    assert "behind" in walking and len(set(walking)) == len(walking)


@settings(max_examples=300, deadline=None)
@given(
    points=st.lists(st.tuples(lats, lons), min_size=1, max_size=150),
    lat=lats,
    lon=lons,
    heading=st.none() | st.floats(min_value=-720.0, max_value=720.0),
    speed=st.none() | st.floats(min_value=0.0, max_value=20.0),
)
def test_the_walker_grid_answers_exactly_as_the_tree_queries(
    points: list[tuple[float, float]], lat: float, lon: float, heading: float | None, speed: float | None
) -> None:
    # lamps_for_walker runs on a grid in plain Python for speed (every reported position); it
    # must give the same lamps in the same order as the tree's within + ahead.
    from geo import lamps_for_walker

    index = _index(points)
    assert lamps_for_walker(index, lat, lon, heading, speed) == walker_lamps_by_tree(
        index, lat, lon, heading, speed
    )


def test_the_walker_grid_agrees_with_the_tree_on_the_2022_zones() -> None:
    from firmware_sim.placement import place_lamps
    from geo import lamps_for_walker

    lamps = place_lamps().lamps
    index = LampIndex([p.lamp_id for p in lamps], [p.lat_deg for p in lamps], [p.lon_deg for p in lamps])
    rng = np.random.default_rng(5)
    picks = rng.integers(0, len(lamps), 400)
    queries = [
        (
            lamps[i].lat_deg + rng.uniform(-4e-4, 4e-4),
            lamps[i].lon_deg + rng.uniform(-4e-4, 4e-4),
            rng.uniform(0, 360),
        )
        for i in picks
    ]
    answers = [lamps_for_walker(index, la, lo, h, 1.4) for la, lo, h in queries]
    assert answers == [walker_lamps_by_tree(index, la, lo, h, 1.4) for la, lo, h in queries]
    assert sum(len(a) for a in answers) > len(queries)  # real neighbourhoods, not empty answers


def test_a_walker_query_refuses_bad_numbers_like_the_tree_queries() -> None:
    from geo import lamps_for_walker

    index = _index([(37.562, 126.977)])
    for lat, lon in ((math.nan, 126.977), (37.562, math.inf), (0.0, 0.0), (91.0, 126.977)):
        with pytest.raises(ValueError):
            lamps_for_walker(index, lat, lon, None, None)
    with pytest.raises(ValueError):
        lamps_for_walker(index, 37.562, 126.977, 0.0, math.inf)
