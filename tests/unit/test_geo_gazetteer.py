"""Point -> district and neighbourhood, against brute-force polygon scans and known places."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from shapely.geometry import mapping

from geo import BORDER_DISTANCE_M, SNAP_DISTANCE_M, Gazetteer, Location, load_areas, to_latlon, to_metric
from geo._gazetteer import DEFAULT_DISTRICTS_PATH, DEFAULT_DONGS_PATH

JUNG_GU = "11020"
JONGNO_GU = "11010"
YONGSAN_GU = "11030"
SEOCHO_GU = "11220"
GANGNAM_GU = "11230"


@pytest.fixture(scope="module")
def gaz() -> Gazetteer:
    return Gazetteer.load()


@pytest.fixture(scope="module")
def seoul_m(gaz: Gazetteer) -> shapely.Polygon:
    """Seoul's outline in metres with any interior holes filled (so a gap would show)."""
    union = shapely.union_all([a.polygon_m for a in gaz.districts])
    assert union.geom_type == "Polygon"
    return shapely.Polygon(union.exterior)


def _xy(lat: float, lon: float) -> tuple[float, float]:
    east, north = to_metric(lat, lon)
    return float(east), float(north)


def _latlon(x: float, y: float) -> tuple[float, float]:
    lat, lon = to_latlon(x, y)
    return float(lat), float(lon)


# --- the data -------------------------------------------------------------------------------


def test_vendored_data_has_25_districts_and_423_neighbourhoods(gaz: Gazetteer) -> None:
    assert len(gaz.districts) == 25
    assert len(gaz.dongs) == 423
    counts = {d.code: 0 for d in gaz.districts}
    for dong in gaz.dongs:
        counts[dong.district_code] += 1
    raw = json.loads(DEFAULT_DISTRICTS_PATH.read_text(encoding="utf-8"))
    assert counts == {f["properties"]["code"]: f["properties"]["dong_count"] for f in raw["features"]}


def test_every_district_is_the_union_of_its_neighbourhoods(gaz: Gazetteer) -> None:
    for district in gaz.districts:
        dongs = shapely.union_all([d.polygon_m for d in gaz.dongs if d.district_code == district.code])
        # Symmetric difference under 1 m² per district: only float noise from the union.
        assert shapely.symmetric_difference(dongs, district.polygon_m).area < 1.0, district.code


def test_districts_cover_seoul_without_gaps_or_overlaps_on_a_100_m_grid(
    gaz: Gazetteer, seoul_m: shapely.Polygon
) -> None:
    x0, y0, x1, y1 = seoul_m.bounds
    # A grid offset by a fraction of a metre so no sample lies exactly on a vertex.
    grid_x, grid_y = np.meshgrid(np.arange(x0 + 0.37, x1, 100.0), np.arange(y0 + 0.61, y1, 100.0))
    xs, ys = grid_x.ravel(), grid_y.ravel()
    in_seoul = shapely.contains_xy(seoul_m, xs, ys)
    hits = sum(shapely.contains_xy(d.polygon_m, xs, ys).astype(int) for d in gaz.districts)
    assert in_seoul.sum() > 50_000  # ~605 km² at 100 m spacing
    assert np.all(hits[in_seoul] == 1), "a point inside Seoul lies in no district or in two"
    assert np.all(hits[~in_seoul] == 0)
    dong_hits = sum(shapely.contains_xy(d.polygon_m, xs, ys).astype(int) for d in gaz.dongs)
    assert np.all(dong_hits[in_seoul] == 1), "a point inside Seoul lies in no neighbourhood or in two"


def _border_patch_centres(gaz: Gazetteer, per_pair: int) -> list[tuple[str, str, float, float]]:
    centres = []
    districts = gaz.districts
    for i, a in enumerate(districts):
        for b in districts[i + 1 :]:
            shared = shapely.intersection(a.polygon_m.boundary, b.polygon_m.boundary)
            if shared.length < 200.0:
                continue
            for fraction in np.linspace(0.1, 0.9, per_pair):
                p = shapely.line_interpolate_point(shapely.line_merge(shared), fraction, normalized=True)
                if p.is_empty:
                    continue
                pts = shapely.get_coordinates(p)
                centres.append((a.code, b.code, float(pts[0, 0]), float(pts[0, 1])))
    return centres


def test_district_borders_have_no_gaps_or_overlaps_at_1_m_resolution(
    gaz: Gazetteer, seoul_m: shapely.Polygon
) -> None:
    centres = _border_patch_centres(gaz, per_pair=2)
    assert len(centres) > 50  # every adjacent pair of districts, twice
    offsets = np.arange(-20.0, 20.0, 1.0) + 0.5  # 40 x 40 samples at 1 m, off the border line
    dx, dy = np.meshgrid(offsets, offsets)
    for code_a, code_b, cx, cy in centres:
        xs, ys = (cx + dx).ravel(), (cy + dy).ravel()
        hits = sum(shapely.contains_xy(d.polygon_m, xs, ys).astype(int) for d in gaz.districts)
        inside = shapely.contains_xy(seoul_m, xs, ys)
        assert np.all(hits[inside] == 1), f"gap or overlap near the {code_a}/{code_b} border"
        # Both sides of the border are really sampled.
        a = shapely.contains_xy(gaz.district(code_a).polygon_m, xs, ys)
        b = shapely.contains_xy(gaz.district(code_b).polygon_m, xs, ys)
        assert a.any() and b.any()


# --- locate against a brute-force scan ------------------------------------------------------


def _brute_force(gaz: Gazetteer, lat: float, lon: float) -> tuple[str | None, str | None, float]:
    """(district code, dong code, distance outside) by scanning every lon/lat polygon."""
    dongs = [d for d in gaz.dongs if shapely.contains_xy(d.polygon_lonlat, lon, lat)]
    assert len(dongs) <= 1
    if dongs:
        return dongs[0].district_code, dongs[0].code, 0.0
    point = shapely.Point(*_xy(lat, lon))
    dists = [(float(shapely.distance(d.polygon_m, point)), d.code) for d in gaz.districts]
    dist, code = min(dists)
    if dist > SNAP_DISTANCE_M:
        return None, None, dist
    own = [
        (float(shapely.distance(d.polygon_m, point)), d.code) for d in gaz.dongs if d.district_code == code
    ]
    return code, min(own)[1], dist


def _near_an_edge(gaz: Gazetteer, lat: float, lon: float, margin_m: float = 0.01) -> bool:
    point = shapely.Point(*_xy(lat, lon))
    return any(shapely.distance(d.polygon_m.boundary, point) < margin_m for d in gaz.dongs)


@settings(max_examples=200, deadline=None)
@given(
    lat=st.floats(min_value=37.40, max_value=37.72),
    lon=st.floats(min_value=126.73, max_value=127.22),
)
def test_locate_agrees_with_a_brute_force_scan_of_all_polygons(
    gaz: Gazetteer, lat: float, lon: float
) -> None:
    assume(not _near_an_edge(gaz, lat, lon))
    district_code, dong_code, dist = _brute_force(gaz, lat, lon)
    assume(abs(dist - SNAP_DISTANCE_M) > 0.01)
    got = gaz.locate(lat, lon)
    assert got.district_code == district_code
    assert got.dong_code == dong_code
    assert got.inside == (district_code is not None)
    assert got.snapped == (dist > 0.0 and district_code is not None)
    assert got.distance_outside_m == pytest.approx(dist, abs=1e-6)
    if district_code is not None:
        assert got.district == gaz.district(district_code).name
        assert got.district_eng == gaz.district(district_code).name_eng
        assert dong_code is not None
        assert got.dong == gaz.dong(dong_code).name


@settings(max_examples=150, deadline=None)
@given(
    lat=st.floats(min_value=37.42, max_value=37.70),
    lon=st.floats(min_value=126.76, max_value=127.19),
    border_m=st.sampled_from([10.0, BORDER_DISTANCE_M, 200.0]),
)
def test_neighbours_are_exactly_the_other_districts_within_the_border_distance(
    gaz: Gazetteer, lat: float, lon: float, border_m: float
) -> None:
    got = gaz.locate(lat, lon, border_m=border_m)
    assume(got.inside)
    point = shapely.Point(*_xy(lat, lon))
    dists = {d.code: float(shapely.distance(d.polygon_m, point)) for d in gaz.districts}
    assume(all(abs(v - border_m) > 1e-6 for v in dists.values()))
    want = sorted((v, k) for k, v in dists.items() if v <= border_m and k != got.district_code)
    assert got.neighbours == tuple(k for _, k in want)


@settings(max_examples=400, deadline=None)
@given(
    lat=st.floats(min_value=37.40, max_value=37.72),
    lon=st.floats(min_value=126.73, max_value=127.22),
)
def test_the_quick_district_never_disagrees_with_locate(gaz: Gazetteer, lat: float, lon: float) -> None:
    # The API and the controller check every walk position with quick_district first; an answer
    # from it must be locate's district, and it must not claim points outside Seoul.
    quick = gaz.quick_district(lat, lon)
    if quick is not None:
        got = gaz.locate(lat, lon)
        assert got.inside and not got.snapped
        assert got.district_code == quick


def test_the_quick_district_answers_inside_and_defers_on_borders_and_outside(gaz: Gazetteer) -> None:
    # 300 m or more inside Jung-gu: a cell wholly in one district
    a, b = gaz.district(JUNG_GU).polygon_m, gaz.district(JONGNO_GU).polygon_m
    deep = a.buffer(-300.0).representative_point()
    assert gaz.quick_district(*_latlon(deep.x, deep.y)) == JUNG_GU
    # 1 m from the Jung-gu / Jongno-gu border, and outside Seoul: None, the caller asks locate
    on_border = shapely.intersection(a.boundary, b.boundary).representative_point()
    assert gaz.quick_district(*_latlon(on_border.x + 1.0, on_border.y)) is None
    assert gaz.quick_district(37.3, 127.5) is None and not gaz.locate(37.3, 127.5).inside
    for lat, lon in ((math.nan, 127.0), (37.5, math.inf), (91.0, 127.0)):
        with pytest.raises(ValueError):
            gaz.quick_district(lat, lon)


# --- well-known places ------------------------------------------------------------------------


def test_seoul_city_hall_is_in_jung_gu_next_to_jongno(gaz: Gazetteer) -> None:
    got = gaz.locate(37.5663, 126.9779)
    assert (got.district_code, got.district, got.district_eng) == (JUNG_GU, "중구", "Jung-gu")
    # The 2013 census line puts this point in 명동, 38 m from 소공동 (see data/ATTRIBUTION.md).
    assert got.dong_code == "1102055"
    assert got.dong == "명동"
    assert got.inside and not got.snapped
    assert got.neighbours == (JONGNO_GU,)  # Jongno-gu is 31 m away


def test_the_plaza_in_front_of_city_hall_is_sogong_dong(gaz: Gazetteer) -> None:
    got = gaz.locate(37.5657, 126.9769)
    assert (got.district_code, got.dong) == (JUNG_GU, "소공동")


def test_gangnam_station_is_on_the_seocho_gangnam_border(gaz: Gazetteer) -> None:
    got = gaz.locate(37.4979, 127.0276)
    # Gangnam-daero is the border; in these polygons the station's point is 68 m into Seocho-gu.
    assert got.district_code == SEOCHO_GU
    assert GANGNAM_GU not in got.neighbours
    assert gaz.locate(37.4979, 127.0276, border_m=100.0).neighbours == (GANGNAM_GU,)
    # The station's east exits, on the road, report both districts.
    east_exit = gaz.locate(37.4981, 127.0280)
    assert east_exit.district_code == SEOCHO_GU
    assert GANGNAM_GU in east_exit.neighbours


def test_n_seoul_tower_is_on_namsan_between_jung_gu_and_yongsan_gu(gaz: Gazetteer) -> None:
    got = gaz.locate(37.5512, 126.9882)
    # Its address is in Yongsan-gu; the 2013 census line runs 60 m south of the point.
    assert got.district_code == JUNG_GU
    assert got.dong == "필동"
    assert gaz.locate(37.5512, 126.9882, border_m=100.0).neighbours == (YONGSAN_GU,)


def test_incheon_airport_is_outside_the_service_area(gaz: Gazetteer) -> None:
    got = gaz.locate(37.46, 126.44)
    assert got == Location(
        lat_deg=37.46,
        lon_deg=126.44,
        inside=False,
        snapped=False,
        distance_outside_m=got.distance_outside_m,
        district_code=None,
        district=None,
        district_eng=None,
        dong_code=None,
        dong=None,
        dong_eng=None,
        neighbours=(),
    )
    assert 25_000 < got.distance_outside_m < 40_000


@pytest.mark.parametrize(("lat", "lon"), [(37.55, 126.55), (37.85, 127.0), (37.30, 127.35)])
def test_far_away_points_report_about_their_distance_from_seoul(
    gaz: Gazetteer, lat: float, lon: float
) -> None:
    # Beyond 0.1° of Seoul's bounding box the distance comes from a sphere, not the projection.
    point = shapely.Point(*_xy(lat, lon))
    want = min(float(shapely.distance(d.polygon_m, point)) for d in gaz.districts)
    got = gaz.locate(lat, lon)
    assert not got.inside and got.district_code is None
    assert got.distance_outside_m == pytest.approx(want, rel=0.01)


def test_snap_and_border_distances_must_be_sane(gaz: Gazetteer) -> None:
    for snap_m in (-1.0, math.nan, 1e6):
        with pytest.raises(ValueError, match="snap_m"):
            gaz.locate(37.5663, 126.9779, snap_m=snap_m)
    for border_m in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="border_m"):
            gaz.locate(37.5663, 126.9779, border_m=border_m)


def _ring_around_seoul(seoul_m: shapely.Polygon, distance_m: float, count: int) -> list[tuple[float, float]]:
    ring = seoul_m.buffer(distance_m, quad_segs=32).exterior
    points = [ring.interpolate(f, normalized=True) for f in np.linspace(0.0, 1.0, count, endpoint=False)]
    return [_latlon(p.x, p.y) for p in points]


def test_points_100_m_outside_seoul_snap_to_the_nearest_district(
    gaz: Gazetteer, seoul_m: shapely.Polygon
) -> None:
    for lat, lon in _ring_around_seoul(seoul_m, 100.0, 24):
        got = gaz.locate(lat, lon)
        assert got.inside and got.snapped, (lat, lon)
        # GEOS simplifies a buffer's input by 1 % of the distance, hence the 1 m band.
        assert 99.0 < got.distance_outside_m < 101.0
        want, want_dong, _ = _brute_force(gaz, lat, lon)
        assert (got.district_code, got.dong_code) == (want, want_dong)


def test_points_300_m_outside_seoul_are_outside_the_service_area(
    gaz: Gazetteer, seoul_m: shapely.Polygon
) -> None:
    for lat, lon in _ring_around_seoul(seoul_m, 300.0, 24):
        got = gaz.locate(lat, lon)
        assert not got.inside and not got.snapped
        assert got.district_code is None and got.dong_code is None and got.neighbours == ()
        assert got.distance_outside_m > SNAP_DISTANCE_M


def test_to_json_dict_has_the_cli_fields(gaz: Gazetteer) -> None:
    got = gaz.locate(37.5663, 126.9779).to_json_dict()
    assert {"district_code", "district", "dong_code", "dong", "inside", "neighbours"} <= got.keys()
    assert json.loads(json.dumps(got)) == got


# --- invalid input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        (math.nan, 126.97, "latitude must be finite"),
        (37.56, math.nan, "longitude must be finite"),
        (math.inf, 126.97, "latitude must be finite"),
        (37.56, -math.inf, "longitude must be finite"),
        (90.000001, 126.97, "latitude 90.000001 is outside"),
        (-91.0, 126.97, "latitude -91.0 is outside"),
        (37.56, 180.5, "longitude 180.5 is outside"),
        ("37.56", 126.97, "latitude must be a number"),
        (True, 126.97, "latitude must be a number"),
        (None, 126.97, "latitude must be a number"),
    ],
)
def test_invalid_coordinates_raise_a_value_error_naming_them(
    gaz: Gazetteer, lat: object, lon: object, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        gaz.locate(lat, lon)  # type: ignore[arg-type]


def test_the_poles_and_the_antimeridian_are_valid_and_outside(gaz: Gazetteer) -> None:
    for lat, lon in [(90.0, 0.0), (-90.0, 180.0), (0.0, -180.0)]:
        assert not gaz.locate(lat, lon).inside


# --- loader -----------------------------------------------------------------------------------


def test_the_loader_accepts_multipolygons_and_finds_points_in_either_part(tmp_path: Path) -> None:
    districts = load_areas(DEFAULT_DISTRICTS_PATH)
    jung, yongsan = (next(d for d in districts if d.code == c) for c in (JUNG_GU, YONGSAN_GU))
    merged = shapely.MultiPolygon([jung.polygon_lonlat, yongsan.polygon_lonlat])
    features = [
        {
            "type": "Feature",
            "properties": {"code": "99999", "name": "중구와 용산구", "name_eng": "Jung-Yongsan"},
            "geometry": mapping(merged),
        }
    ]
    path = tmp_path / "two.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")
    gaz = Gazetteer(load_areas(path), ())
    for lat, lon in [(37.5663, 126.9779), (37.5326, 126.9905)]:  # City Hall; Itaewon (Yongsan-gu)
        got = gaz.locate(lat, lon)
        assert got.district_code == "99999" and not got.snapped
        assert got.dong_code is None  # this file has no neighbourhoods
    assert gaz.locate(37.5172, 127.0473).district_code is None  # COEX, Gangnam-gu: far away


def test_the_loader_refuses_points_and_missing_properties(tmp_path: Path) -> None:
    point = {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [127, 37]}}
    path = tmp_path / "p.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [point]}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a polygon"):
        load_areas(path)
    square = {"type": "Polygon", "coordinates": [[[127, 37], [127.1, 37], [127.1, 37.1], [127, 37]]]}
    path.write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [{"type": "Feature", "properties": {}, "geometry": square}],
            }
        ),
        encoding="utf-8",
    )
    with pytest.raises(ValueError, match="lacks property 'code'"):
        load_areas(path)


def test_a_neighbourhood_polygon_is_available_by_code_in_degrees_and_metres(gaz: Gazetteer) -> None:
    dong = gaz.dong("1123052")  # 논현1동, a 2022 smart-light zone
    assert (dong.name, dong.district_code) == ("논현1동", GANGNAM_GU)
    lon, lat = dong.polygon_lonlat.representative_point().coords[0]
    assert gaz.locate(lat, lon).dong_code == "1123052"
    # The metric polygon is the projected lon/lat one: same area as pyproj would give, ~1 km².
    assert 0.3e6 < dong.polygon_m.area < 3e6
    x, y = _xy(lat, lon)
    assert dong.polygon_m.contains(shapely.Point(x, y))
    with pytest.raises(KeyError):
        gaz.dong("0000000")


def test_the_default_paths_are_the_vendored_files() -> None:
    assert DEFAULT_DISTRICTS_PATH.is_file() and DEFAULT_DONGS_PATH.is_file()
    assert (DEFAULT_DISTRICTS_PATH.parent / "ATTRIBUTION.md").is_file()
