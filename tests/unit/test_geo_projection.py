"""EPSG:5186 in numpy against pyproj, and distance_m against pyproj.Geod."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geo import distance_m, point_distance_m, to_latlon, to_metric

# Seoul's extent with a margin (the districts span 37.426-37.699 N, 126.766-127.186 E).
SEOUL_LAT = (37.38, 37.74)
SEOUL_LON = (126.70, 127.25)


@pytest.fixture(scope="module")
def to_5186() -> pyproj.Transformer:
    return pyproj.Transformer.from_crs("EPSG:4326", "EPSG:5186", always_xy=True)


def test_forward_projection_matches_pyproj_within_5_cm_over_seoul(to_5186: pyproj.Transformer) -> None:
    lat, lon = np.meshgrid(np.linspace(*SEOUL_LAT, 121), np.linspace(*SEOUL_LON, 121))
    want_e, want_n = to_5186.transform(lon, lat)
    got_e, got_n = to_metric(lat, lon)
    assert np.max(np.hypot(got_e - want_e, got_n - want_n)) < 0.05
    # The series is far better than the requirement; a regression would show here first.
    assert np.max(np.hypot(got_e - want_e, got_n - want_n)) < 1e-4


def test_inverse_projection_matches_pyproj_within_5_cm_over_seoul(to_5186: pyproj.Transformer) -> None:
    lat, lon = np.meshgrid(np.linspace(*SEOUL_LAT, 121), np.linspace(*SEOUL_LON, 121))
    east, north = to_5186.transform(lon, lat)
    got_lat, got_lon = to_latlon(east, north)
    # Back to metres with pyproj so the error is in metres, not degrees.
    back_e, back_n = to_5186.transform(got_lon, got_lat)
    assert np.max(np.hypot(back_e - east, back_n - north)) < 0.05


def test_projection_origin_is_the_false_origin() -> None:
    east, north = to_metric(38.0, 127.0)
    assert float(east) == pytest.approx(200_000.0, abs=1e-6)
    assert float(north) == pytest.approx(600_000.0, abs=1e-6)


@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(min_value=33.0, max_value=39.0),
    lon=st.floats(min_value=124.5, max_value=131.0),
)
def test_projection_round_trips_anywhere_in_korea(lat: float, lon: float) -> None:
    east, north = to_metric(lat, lon)
    back_lat, back_lon = to_latlon(east, north)
    assert float(back_lat) == pytest.approx(lat, abs=1e-9)
    assert float(back_lon) == pytest.approx(lon, abs=1e-9)


@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(min_value=SEOUL_LAT[0], max_value=SEOUL_LAT[1]),
    lon=st.floats(min_value=SEOUL_LON[0], max_value=SEOUL_LON[1]),
    azimuth_deg=st.floats(min_value=-180.0, max_value=180.0),
    length_m=st.floats(min_value=0.0, max_value=20_000.0),
)
def test_distance_matches_the_ellipsoidal_geodesic_at_city_scale(
    lat: float, lon: float, azimuth_deg: float, length_m: float
) -> None:
    geod = pyproj.Geod(ellps="GRS80")
    lon2, lat2, _ = geod.fwd(lon, lat, azimuth_deg, length_m)
    # The error grows with the cube of the length: ~1 mm at 10 km, ~7 mm at 20 km.
    assert float(distance_m(lat, lon, lat2, lon2)) == pytest.approx(length_m, abs=1e-3, rel=5e-7)


def test_distance_broadcasts_over_arrays() -> None:
    lat2 = np.array([37.5663, 37.5763, 37.5663])
    lon2 = np.array([126.9779, 126.9779, 126.9879])
    d = distance_m(37.5663, 126.9779, lat2, lon2)
    assert d.shape == (3,)
    assert d[0] == 0.0
    assert d[1] == pytest.approx(1109.3, abs=1.0)  # 0.01° of latitude at 37.6° N
    assert d[2] == pytest.approx(882.5, abs=1.0)  # 0.01° of longitude at 37.6° N


@settings(max_examples=300, deadline=None)
@given(
    lat=st.floats(min_value=33.0, max_value=38.6),
    lon=st.floats(min_value=124.5, max_value=131.9),
)
def test_the_one_point_projection_equals_the_array_one(lat: float, lon: float) -> None:
    from geo._projection import to_metric_point

    x, y = to_metric(lat, lon)
    px, py = to_metric_point(lat, lon)
    assert abs(px - float(x)) < 1e-6 and abs(py - float(y)) < 1e-6


@settings(max_examples=300, deadline=None)
@given(
    lat=st.floats(min_value=33.0, max_value=38.6),
    lon=st.floats(min_value=124.5, max_value=131.9),
    dlat=st.floats(min_value=-0.5, max_value=0.5),
    dlon=st.floats(min_value=-0.5, max_value=0.5),
)
def test_the_one_pair_distance_equals_the_array_one(lat: float, lon: float, dlat: float, dlon: float) -> None:
    one = point_distance_m(lat, lon, lat + dlat, lon + dlon)
    assert one == pytest.approx(float(distance_m(lat, lon, lat + dlat, lon + dlon)), rel=1e-12, abs=1e-9)
