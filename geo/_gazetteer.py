"""District and neighbourhood polygons, and point -> district/neighbourhood lookup."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from numpy.typing import NDArray
from shapely.geometry import MultiPolygon, Polygon, shape

from geo._coords import check_latlon, great_circle_m
from geo._projection import to_metric, to_metric_point

DATA_DIR = Path(__file__).with_name("data")
DEFAULT_DISTRICTS_PATH = DATA_DIR / "seoul_districts.geojson"
DEFAULT_DONGS_PATH = DATA_DIR / "seoul_dongs.geojson"

# Issue 2: a point up to 200 m outside Seoul still belongs to the nearest district (GPS error,
# a walker on the far bank of a border stream); farther out it is outside the service area.
SNAP_DISTANCE_M = 200.0
# Points farther than this from the districts' lon/lat bounding box are answered without the
# projection (Transverse Mercator degrades far from 127° E and fails at the poles); 0.1° is
# at least 8.8 km at Seoul's latitude, far beyond any snap distance in use.
_FAR_MARGIN_DEG = 0.1

# Issue 2: within 50 m of a border the neighbouring district is reported too (an SOS there
# goes to both control centres).
BORDER_DISTANCE_M = 50.0

# Cell of the quick district lookup: small enough that most of Seoul's area is in cells wholly
# inside one district, large enough that a walk stays in a cell for a minute.
_CELL_M = 100.0


@dataclass(frozen=True, slots=True, eq=False)
class Area:
    """A district (gu) or neighbourhood (dong) with its polygon in lon/lat and in EPSG:5186 metres."""

    code: str
    name: str
    name_eng: str
    district_code: str  # a district's own code for a district
    polygon_lonlat: Polygon | MultiPolygon  # x = longitude, y = latitude, degrees
    polygon_m: Polygon | MultiPolygon  # x = easting, y = northing, EPSG:5186 metres


@dataclass(frozen=True, slots=True)
class Location:
    """Where a point is: district and neighbourhood, or outside the service area.

    ``inside`` is True inside Seoul and for points snapped to the nearest district (at most
    the snap distance outside); then ``snapped`` says which. ``inside`` False means outside
    the service area: every district and neighbourhood field is None.
    """

    lat_deg: float
    lon_deg: float
    inside: bool
    snapped: bool
    distance_outside_m: float  # 0.0 inside Seoul; distance to the nearest district otherwise
    district_code: str | None
    district: str | None
    district_eng: str | None
    dong_code: str | None
    dong: str | None
    dong_eng: str | None
    neighbours: tuple[str, ...]  # other district codes within the border distance, nearest first

    def to_json_dict(self) -> dict[str, object]:
        """The JSON object of ``streetlight locate``."""
        return {
            "district_code": self.district_code,
            "district": self.district,
            "district_eng": self.district_eng,
            "dong_code": self.dong_code,
            "dong": self.dong,
            "dong_eng": self.dong_eng,
            "inside": self.inside,
            "snapped": self.snapped,
            "distance_outside_m": round(self.distance_outside_m, 1),
            "neighbours": list(self.neighbours),
        }


def _project_lonlat_geometry(geom: Any) -> Any:
    def project(lonlat: NDArray[np.float64]) -> NDArray[np.float64]:
        easting_m, northing_m = to_metric(lonlat[:, 1], lonlat[:, 0])
        return np.column_stack((easting_m, northing_m))

    return shapely.transform(geom, project)


def load_areas(path: Path | str) -> tuple[Area, ...]:
    """Read a GeoJSON FeatureCollection of Polygon/MultiPolygon areas (properties code, name, name_eng)."""
    with Path(path).open(encoding="utf-8") as fh:
        doc = json.load(fh)
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise ValueError(f"{path}: not a GeoJSON FeatureCollection")
    areas: list[Area] = []
    for i, feature in enumerate(doc.get("features", [])):
        props = feature.get("properties") or {}
        geometry = feature.get("geometry") or {}
        if geometry.get("type") not in ("Polygon", "MultiPolygon"):
            raise ValueError(f"{path}: feature {i} has geometry {geometry.get('type')!r}, not a polygon")
        try:
            code = str(props["code"])
            name = str(props["name"])
            name_eng = str(props["name_eng"])
        except KeyError as exc:
            raise ValueError(f"{path}: feature {i} lacks property {exc.args[0]!r}") from exc
        polygon_lonlat = shape(geometry)
        lon_min, lat_min, lon_max, lat_max = polygon_lonlat.bounds
        if not (-180 <= lon_min <= lon_max <= 180 and -90 <= lat_min <= lat_max <= 90):
            raise ValueError(f"{path}: feature {i} ({code}) has coordinates outside lon/lat ranges")
        polygon_m = _project_lonlat_geometry(polygon_lonlat)
        shapely.prepare(polygon_m)  # point-in-polygon tests run on every locate
        areas.append(
            Area(
                code=code,
                name=name,
                name_eng=name_eng,
                district_code=str(props.get("district_code", code)),
                polygon_lonlat=polygon_lonlat,
                polygon_m=polygon_m,
            )
        )
    codes = [a.code for a in areas]
    if len(set(codes)) != len(codes):
        raise ValueError(f"{path}: duplicate area codes")
    return tuple(areas)


class Gazetteer:
    """Seoul's districts and neighbourhoods, indexed for point lookups (immutable once built)."""

    def __init__(self, districts: Sequence[Area], dongs: Sequence[Area]) -> None:
        if not districts:
            raise ValueError("a gazetteer needs at least one district")
        self._districts = tuple(districts)
        self._dongs = tuple(dongs)
        self._district_by_code = {a.code: a for a in self._districts}
        self._dong_by_code = {a.code: a for a in self._dongs}
        unknown = {a.district_code for a in self._dongs} - self._district_by_code.keys()
        if unknown:
            raise ValueError(f"neighbourhoods refer to unknown districts {sorted(unknown)}")
        self._district_polys = np.array([a.polygon_m for a in self._districts], dtype=object)
        self._district_tree = shapely.STRtree(self._district_polys)
        self._dong_polys = np.array([a.polygon_m for a in self._dongs], dtype=object)
        self._dong_tree = shapely.STRtree(self._dong_polys)
        self._dong_district = np.array([a.district_code for a in self._dongs], dtype=object)
        outline = shapely.union_all([a.polygon_lonlat for a in self._districts])
        self._outline_lonlat = shapely.get_coordinates(shapely.boundary(outline))
        self._bounds_lonlat = tuple(float(v) for v in outline.bounds)
        # Cells of _CELL_M wholly inside one district (and meeting no other) -> its code; None for
        # a cell on a border or outside. Filled as points arrive; a cache that never changes an
        # answer (see ``quick_district``), the gazetteer stays immutable to its users.
        self._cells: dict[tuple[int, int], str | None] = {}

    @classmethod
    def load(
        cls, districts_path: Path | str | None = None, dongs_path: Path | str | None = None
    ) -> Gazetteer:
        """Build from GeoJSON files; the vendored Seoul files by default."""
        return cls(
            load_areas(districts_path or DEFAULT_DISTRICTS_PATH),
            load_areas(dongs_path or DEFAULT_DONGS_PATH),
        )

    @property
    def districts(self) -> tuple[Area, ...]:
        """All districts, in file order."""
        return self._districts

    @property
    def dongs(self) -> tuple[Area, ...]:
        """All neighbourhoods, in file order."""
        return self._dongs

    def district(self, code: str) -> Area:
        """The district with this code (KeyError if none)."""
        return self._district_by_code[code]

    def dong(self, code: str) -> Area:
        """The neighbourhood with this code, with its polygons (KeyError if none)."""
        return self._dong_by_code[code]

    def quick_district(self, lat_deg: float, lon_deg: float) -> str | None:
        """The district code of a point well inside a district, answered from a grid of cells
        (~3 µs once the cell is known), or None when the point's cell touches a border or lies
        outside Seoul: then ``locate`` has the answer. Never a different district from
        ``locate``'s; ValueError for NaN, inf or out-of-range input, like ``locate``."""
        lat, lon = check_latlon(lat_deg, lon_deg)
        lon_min, lat_min, lon_max, lat_max = self._bounds_lonlat
        if not (lat_min <= lat <= lat_max and lon_min <= lon <= lon_max):
            return None
        x, y = to_metric_point(lat, lon)
        key = (math.floor(x / _CELL_M), math.floor(y / _CELL_M))
        try:
            return self._cells[key]
        except KeyError:
            code = self._cells[key] = self._cell_district(key)
            return code

    def _cell_district(self, key: tuple[int, int]) -> str | None:
        x0, y0 = key[0] * _CELL_M, key[1] * _CELL_M
        box = shapely.box(x0, y0, x0 + _CELL_M, y0 + _CELL_M)
        candidates = np.asarray(self._district_tree.query(box, predicate="intersects"), dtype=np.intp)
        if candidates.size != 1:
            return None  # outside, or on a border
        i = int(candidates[0])
        # contains_properly: the whole closed cell in the interior, so no point of it lies on the
        # district's own boundary either (where locate's tie-break could matter).
        return self._districts[i].code if shapely.contains_properly(self._district_polys[i], box) else None

    def locate(
        self,
        lat_deg: float,
        lon_deg: float,
        *,
        snap_m: float = SNAP_DISTANCE_M,
        border_m: float = BORDER_DISTANCE_M,
    ) -> Location:
        """District and neighbourhood of a point; ValueError for NaN, inf or out-of-range input."""
        lat, lon = check_latlon(lat_deg, lon_deg)
        # The far-away shortcut below must never cut a snap: 80 km is a degree of longitude at
        # Seoul's latitude (88 km), rounded down.
        if not 0.0 <= snap_m < _FAR_MARGIN_DEG * 80_000:
            raise ValueError(f"snap_m must be within [0, {_FAR_MARGIN_DEG * 80_000:g}), got {snap_m!r}")
        if not 0.0 <= border_m < math.inf:
            raise ValueError(f"border_m must be finite and >= 0, got {border_m!r}")
        lon_min, lat_min, lon_max, lat_max = self._bounds_lonlat
        if not (
            lat_min - _FAR_MARGIN_DEG <= lat <= lat_max + _FAR_MARGIN_DEG
            and lon_min - _FAR_MARGIN_DEG <= lon <= lon_max + _FAR_MARGIN_DEG
        ):
            return self._far_away(lat, lon)
        east, north = to_metric(lat, lon)
        x, y = float(east), float(north)
        point = shapely.Point(x, y)

        district_i = self._district_at(point, x, y)
        distance_outside_m = 0.0
        snapped = False
        if district_i is None:
            nearest, dist = self._district_tree.query_nearest(point, return_distance=True, all_matches=True)
            distance_outside_m = float(dist[0])
            if distance_outside_m > snap_m:
                return Location(
                    lat, lon, False, False, distance_outside_m, None, None, None, None, None, None, ()
                )
            snapped = True
            district_i = min((int(i) for i in nearest), key=lambda i: self._districts[i].code)
        district = self._districts[district_i]
        dong = self._dong_in(district.code, point, x, y)
        return Location(
            lat_deg=lat,
            lon_deg=lon,
            inside=True,
            snapped=snapped,
            distance_outside_m=distance_outside_m,
            district_code=district.code,
            district=district.name,
            district_eng=district.name_eng,
            dong_code=dong.code if dong else None,
            dong=dong.name if dong else None,
            dong_eng=dong.name_eng if dong else None,
            neighbours=self._neighbours(district.code, point, border_m),
        )

    def _far_away(self, lat: float, lon: float) -> Location:
        # The nearest outline vertex on a sphere: the error (half a boundary segment, 0.5 %)
        # does not matter kilometres away, and it works at the poles and across 180°.
        dist_m = great_circle_m(lat, lon, self._outline_lonlat[:, 1], self._outline_lonlat[:, 0])
        return Location(lat, lon, False, False, float(dist_m.min()), None, None, None, None, None, None, ())

    def _district_at(self, point: Any, x: float, y: float) -> int | None:
        candidates = np.asarray(self._district_tree.query(point), dtype=np.intp)
        if candidates.size == 0:
            return None
        # intersects, not contains: a point exactly on a border belongs somewhere, and the
        # lowest code wins so the answer is the same on every run.
        hits = candidates[shapely.intersects_xy(self._district_polys[candidates], x, y)]
        if hits.size == 0:
            return None
        return min((int(i) for i in hits), key=lambda i: self._districts[i].code)

    def _dong_in(self, district_code: str, point: Any, x: float, y: float) -> Area | None:
        candidates = np.asarray(self._dong_tree.query(point), dtype=np.intp)
        candidates = candidates[self._dong_district[candidates] == district_code]
        if candidates.size:
            hits = candidates[shapely.intersects_xy(self._dong_polys[candidates], x, y)]
            if hits.size:
                return min((self._dongs[int(i)] for i in hits), key=lambda a: a.code)
        # Snapped points (and float slivers between a district and its dongs): nearest dong
        # of the chosen district, so the neighbourhood never contradicts the district.
        own = np.flatnonzero(self._dong_district == district_code)
        if own.size == 0:
            return None
        dists = shapely.distance(self._dong_polys[own], point)
        return self._dongs[int(own[int(np.argmin(dists))])]

    def _neighbours(self, district_code: str, point: Any, border_m: float) -> tuple[str, ...]:
        near = np.asarray(
            self._district_tree.query(point, predicate="dwithin", distance=border_m), dtype=np.intp
        )
        found: list[tuple[float, str]] = []
        for i in near:
            area = self._districts[int(i)]
            if area.code != district_code:
                found.append((float(shapely.distance(area.polygon_m, point)), area.code))
        return tuple(code for _, code in sorted(found))
