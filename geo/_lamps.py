"""Lamp spatial index over EPSG:5186 metres: within a radius, k nearest, ahead of a walker.

Distances are planar in EPSG:5186; across Seoul its scale factor differs from 1 by less than
3e-5 (Transverse Mercator, k = 1 + x**2 / 2R**2 at x <= 40 km from the central meridian),
i.e. under 3 mm per 100 m.

Timings measured on the development machine (2 vCPU, shapely 2.2, GEOS 3.14) with 50,000
lamps in 100 dense zones across Seoul (~25 m apart), medians over 2,000 queries: build 42 ms;
``within`` 30 m 45 µs (5.5 hits), 100 m 64 µs (47 hits); ``nearest`` k=5 80 µs; ``ahead``
106 µs; ``within_many`` 1,000 points at 30 m 9.4 ms; ``with_lamps`` (a rebuild) 54 ms.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import shapely
from numpy.typing import ArrayLike, NDArray

from geo._coords import check_latlon, check_latlon_arrays
from geo._projection import to_latlon, to_metric, to_metric_point

# The tree answers "within r" with GEOS's distance; the exact answer is then taken from our own
# numpy distances, so this slack only has to cover float differences between the two.
_QUERY_SLACK_M = 1e-6

# Walk-along defaults (DESIGN.md §1: "lamps within about 30 m, and the next lamps ahead along
# the walking direction"). A typical walking speed of 1.4 m/s looks 45 s (~63 m) ahead;
# never less than 30 m (the stationary resident still sees the next lamp), never more than
# 80 m (about three lamp spacings on a Seoul alley).
AHEAD_HALF_WIDTH_M = 15.0
AHEAD_SECONDS_S = 45.0
AHEAD_MIN_REACH_M = 30.0
AHEAD_MAX_REACH_M = 80.0

# GRS80, for the local step that turns a true heading into a grid direction.
_A_M = 6_378_137.0
_E2 = (1.0 / 298.257222101) * (2.0 - 1.0 / 298.257222101)

# Where the lamp index works: South Korea with its islands (124.6-131.9° E, 33-38.6° N) and a
# margin. EPSG:5186 is a Transverse Mercator on 127° E: its scale error grows to ~0.2 % at
# 5° from that meridian, and it is meaningless on the other side of the globe.
_LAT_RANGE_DEG = (32.0, 44.0)
_LON_RANGE_DEG = (123.0, 132.0)

IntArray = NDArray[np.intp]
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class LampHits:
    """Lamp ids with their distances from the query point, nearest first (ties in index order)."""

    ids: tuple[str, ...]
    distances_m: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True, slots=True)
class LampsAhead:
    """Lamps in the corridor ahead of a walker, ordered by distance along the path."""

    ids: tuple[str, ...]
    along_m: tuple[float, ...]  # distance along the heading from the walker
    across_m: tuple[float, ...]  # signed offset from the path line, positive to the right
    reach_m: float  # how far ahead the corridor went

    def __len__(self) -> int:
        return len(self.ids)


def reach_for_speed(
    speed_mps: float,
    *,
    seconds_ahead_s: float = AHEAD_SECONDS_S,
    min_reach_m: float = AHEAD_MIN_REACH_M,
    max_reach_m: float = AHEAD_MAX_REACH_M,
) -> float:
    """How far ahead to look: speed times seconds ahead, clamped to [min_reach_m, max_reach_m]."""
    return min(max(speed_mps * seconds_ahead_s, min_reach_m), max_reach_m)


def grid_direction(lat_deg: float, lon_deg: float, heading_deg: float) -> tuple[float, float]:
    """Unit (east, north) vector in EPSG:5186 of a true heading (degrees clockwise from north)."""
    _checked_point(lat_deg, lon_deg)
    # Step 1 m along the heading on the ellipsoid and project both ends: this folds in the
    # meridian convergence (up to ~0.15° across Seoul) without a formula of its own.
    lat_rad = math.radians(lat_deg)
    w2 = 1.0 - _E2 * math.sin(lat_rad) ** 2
    meridional_m = _A_M * (1.0 - _E2) / w2**1.5
    parallel_m = _A_M / math.sqrt(w2) * math.cos(lat_rad)
    heading_rad = math.radians(heading_deg)
    step_m = 1.0
    lat2 = lat_deg + math.degrees(step_m * math.cos(heading_rad) / meridional_m)
    lon2 = lon_deg + math.degrees(step_m * math.sin(heading_rad) / parallel_m)
    x1, y1 = to_metric_point(lat_deg, lon_deg)
    x2, y2 = to_metric_point(lat2, lon2)
    de, dn = x2 - x1, y2 - y1
    norm = math.hypot(de, dn)
    return de / norm, dn / norm


def _check_in_korea(lat_deg: FloatArray, lon_deg: FloatArray) -> None:
    outside = ~(
        (lat_deg >= _LAT_RANGE_DEG[0])
        & (lat_deg <= _LAT_RANGE_DEG[1])
        & (lon_deg >= _LON_RANGE_DEG[0])
        & (lon_deg <= _LON_RANGE_DEG[1])
    )
    if outside.any():
        i = int(np.argmax(outside))
        raise ValueError(
            f"point ({lat_deg[i]!r}, {lon_deg[i]!r}) is outside the lamp index's area "
            f"(latitude {_LAT_RANGE_DEG}, longitude {_LON_RANGE_DEG})"
        )


def _checked_point(lat_deg: float, lon_deg: float) -> tuple[float, float]:
    lat, lon = check_latlon(lat_deg, lon_deg)
    if not (_LAT_RANGE_DEG[0] <= lat <= _LAT_RANGE_DEG[1] and _LON_RANGE_DEG[0] <= lon <= _LON_RANGE_DEG[1]):
        _check_in_korea(np.array([lat]), np.array([lon]))  # raises, with the same message
    return lat, lon


def _checked_points(lat_deg: ArrayLike, lon_deg: ArrayLike) -> tuple[FloatArray, FloatArray]:
    lat, lon = check_latlon_arrays(lat_deg, lon_deg)
    _check_in_korea(lat, lon)
    return lat, lon


def _check_radius(radius_m: float) -> float:
    r = float(radius_m)
    if not math.isfinite(r) or r < 0:
        raise ValueError(f"radius_m must be finite and >= 0, got {radius_m!r}")
    return r


class LampIndex:
    """Immutable spatial index of lamps; ``with_lamps``/``without_lamps`` return a new index."""

    def __init__(self, ids: Sequence[str], lat_deg: ArrayLike, lon_deg: ArrayLike) -> None:
        lat, lon = _checked_points(lat_deg, lon_deg)
        id_list = [str(i) for i in ids]
        if len(id_list) != lat.size:
            raise ValueError(f"{len(id_list)} ids but {lat.size} positions")
        if len(set(id_list)) != len(id_list):
            raise ValueError("lamp ids must be unique")
        self._ids = np.array(id_list, dtype=object)
        self._lat = lat
        self._lon = lon
        self._x, self._y = to_metric(lat, lon)
        self._row = {lamp_id: i for i, lamp_id in enumerate(id_list)}
        self._tree = shapely.STRtree(shapely.points(self._x, self._y))
        self._grid: _Grid | None = None  # built on the first walker query

    @classmethod
    def from_metric(cls, ids: Sequence[str], easting_m: ArrayLike, northing_m: ArrayLike) -> LampIndex:
        """Build from EPSG:5186 coordinates (e.g. a simulator's layout)."""
        lat, lon = to_latlon(easting_m, northing_m)
        return cls(ids, lat, lon)

    def __len__(self) -> int:
        return int(self._ids.size)

    def __contains__(self, lamp_id: object) -> bool:
        return lamp_id in self._row

    @property
    def ids(self) -> tuple[str, ...]:
        """Lamp ids in index order (the tie-break order of every query)."""
        return tuple(self._ids.tolist())

    @property
    def easting_m(self) -> FloatArray:
        """EPSG:5186 eastings of the lamps, in index order (a read-only view)."""
        view = self._x.view()
        view.flags.writeable = False
        return view

    @property
    def northing_m(self) -> FloatArray:
        """EPSG:5186 northings of the lamps, in index order (a read-only view)."""
        view = self._y.view()
        view.flags.writeable = False
        return view

    def position(self, lamp_id: str) -> tuple[float, float]:
        """(lat_deg, lon_deg) of a lamp (KeyError if unknown)."""
        i = self._row[lamp_id]
        return float(self._lat[i]), float(self._lon[i])

    def rows(self, ids: Iterable[str]) -> list[int]:
        """The index positions (into ``easting_m``/``northing_m``) of these ids (KeyError if unknown)."""
        return [self._row[i] for i in ids]

    def with_lamps(self, ids: Sequence[str], lat_deg: ArrayLike, lon_deg: ArrayLike) -> LampIndex:
        """A new index with these lamps added, or moved if their id is already indexed."""
        lat, lon = _checked_points(lat_deg, lon_deg)
        new_ids = [str(i) for i in ids]
        if len(new_ids) != lat.size:
            raise ValueError(f"{len(new_ids)} ids but {lat.size} positions")
        last = {lamp_id: j for j, lamp_id in enumerate(new_ids)}  # the last of repeated ids wins
        all_lat = self._lat.copy()
        all_lon = self._lon.copy()
        added_ids: list[str] = []
        added: list[int] = []
        for lamp_id, j in last.items():
            i = self._row.get(lamp_id)
            if i is None:
                added_ids.append(lamp_id)
                added.append(j)
            else:
                all_lat[i] = lat[j]
                all_lon[i] = lon[j]
        return LampIndex(
            self._ids.tolist() + added_ids,
            np.concatenate([all_lat, lat[added]]),
            np.concatenate([all_lon, lon[added]]),
        )

    def without_lamps(self, ids: Iterable[str]) -> LampIndex:
        """A new index without these lamps (unknown ids are ignored)."""
        drop = {self._row[i] for i in ids if i in self._row}
        keep = np.array([i for i in range(len(self)) if i not in drop], dtype=np.intp)
        return LampIndex(self._ids[keep].tolist(), self._lat[keep], self._lon[keep])

    def _hits(self, rows: IntArray, dist_m: FloatArray) -> LampHits:
        order = np.lexsort((rows, dist_m))
        return LampHits(tuple(self._ids[rows[order]].tolist()), tuple(dist_m[order].tolist()))

    def _within_xy(self, x: float, y: float, radius_m: float) -> tuple[IntArray, FloatArray]:
        rows = np.asarray(
            self._tree.query(shapely.Point(x, y), predicate="dwithin", distance=radius_m + _QUERY_SLACK_M),
            dtype=np.intp,
        )
        dist_m = np.hypot(self._x[rows] - x, self._y[rows] - y)
        keep = dist_m <= radius_m
        return rows[keep], dist_m[keep]

    def within(self, lat_deg: float, lon_deg: float, radius_m: float) -> LampHits:
        """Lamps at most radius_m from the point, nearest first."""
        lat, lon = _checked_point(lat_deg, lon_deg)
        r = _check_radius(radius_m)
        x, y = to_metric(lat, lon)
        return self._hits(*self._within_xy(float(x), float(y), r))

    def within_many(self, lat_deg: ArrayLike, lon_deg: ArrayLike, radius_m: float) -> list[LampHits]:
        """``within`` for a batch of points in one vectorised query; one result per point."""
        lat, lon = _checked_points(lat_deg, lon_deg)
        r = _check_radius(radius_m)
        x, y = to_metric(lat, lon)
        pairs = np.asarray(
            self._tree.query(shapely.points(x, y), predicate="dwithin", distance=r + _QUERY_SLACK_M),
            dtype=np.intp,
        ).reshape(2, -1)
        point_i, rows = pairs[0], pairs[1]
        dist_m = np.hypot(self._x[rows] - x[point_i], self._y[rows] - y[point_i])
        keep = dist_m <= r
        point_i, rows, dist_m = point_i[keep], rows[keep], dist_m[keep]
        order = np.lexsort((rows, dist_m, point_i))
        point_i, rows, dist_m = point_i[order], rows[order], dist_m[order]
        bounds = np.searchsorted(point_i, np.arange(lat.size + 1))
        ids = self._ids[rows]
        return [
            LampHits(tuple(ids[a:b].tolist()), tuple(dist_m[a:b].tolist()))
            for a, b in itertools.pairwise(bounds.tolist())
        ]

    def nearest(self, lat_deg: float, lon_deg: float, k: int) -> LampHits:
        """The k lamps nearest the point (fewer if the index is smaller), nearest first."""
        lat, lon = _checked_point(lat_deg, lon_deg)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k!r}")
        if len(self) == 0:
            return LampHits((), ())
        east, north = to_metric(lat, lon)
        x, y = float(east), float(north)
        if k >= len(self):
            rows = np.arange(len(self), dtype=np.intp)
            return self._hits(rows, np.hypot(self._x - x, self._y - y))
        # Grow a radius from the nearest lamp until it holds k lamps: every lamp outside it is
        # farther than the k-th inside, so the answer is exact (ties included).
        _, first = self._tree.query_nearest(shapely.Point(x, y), return_distance=True)
        radius_m = max(float(first[0]) * 2.0, 16.0)
        while True:
            rows, dist_m = self._within_xy(x, y, radius_m)
            if rows.size >= k:
                order = np.lexsort((rows, dist_m))[:k]
                return LampHits(tuple(self._ids[rows[order]].tolist()), tuple(dist_m[order].tolist()))
            radius_m *= 2.0

    def prepare_walker_grid(self) -> None:
        """Build now the grid ``lamps_for_walker`` answers from (otherwise the first walker query
        builds it: ~5 ms for 3,500 lamps, which a service would rather spend off its event loop)."""
        if self._grid is None:
            self._grid = _Grid(self._ids.tolist(), self._x.tolist(), self._y.tolist())

    def for_walker(
        self,
        lat_deg: float,
        lon_deg: float,
        heading_deg: float | None,
        speed_mps: float | None,
        *,
        radius_m: float = 30.0,
    ) -> tuple[str, ...]:
        """See ``lamps_for_walker``."""
        lat, lon = _checked_point(lat_deg, lon_deg)
        r = _check_radius(radius_m)
        self.prepare_walker_grid()
        grid = self._grid
        assert grid is not None
        x, y = to_metric_point(lat, lon)
        near = grid.near(x, y, r)
        if heading_deg is None or speed_mps is None or speed_mps <= 0.0 or not math.isfinite(heading_deg):
            return tuple(near)
        if not math.isfinite(speed_mps):
            raise ValueError(f"speed_mps must be finite, got {speed_mps!r}")
        ux, uy = grid_direction(lat, lon, heading_deg % 360.0)
        seen = set(near)
        ahead = grid.ahead(x, y, ux, uy, reach_for_speed(speed_mps), AHEAD_HALF_WIDTH_M)
        return (*near, *(i for i in ahead if i not in seen))

    def ahead(
        self,
        lat_deg: float,
        lon_deg: float,
        heading_deg: float,
        speed_mps: float,
        *,
        half_width_m: float = AHEAD_HALF_WIDTH_M,
        seconds_ahead_s: float = AHEAD_SECONDS_S,
        min_reach_m: float = AHEAD_MIN_REACH_M,
        max_reach_m: float = AHEAD_MAX_REACH_M,
    ) -> LampsAhead:
        """Lamps in the corridor ahead of a walker (heading clockwise from true north)."""
        lat, lon = _checked_point(lat_deg, lon_deg)
        for name, value in (
            ("heading_deg", heading_deg),
            ("speed_mps", speed_mps),
            ("half_width_m", half_width_m),
        ):
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if speed_mps < 0 or half_width_m < 0:
            raise ValueError("speed_mps and half_width_m must be >= 0")
        reach_m = reach_for_speed(
            speed_mps, seconds_ahead_s=seconds_ahead_s, min_reach_m=min_reach_m, max_reach_m=max_reach_m
        )
        ux, uy = grid_direction(lat, lon, heading_deg)
        east, north = to_metric(lat, lon)
        x, y = float(east), float(north)
        path = shapely.LineString([(x, y), (x + ux * reach_m, y + uy * reach_m)])
        rows = np.asarray(
            self._tree.query(path, predicate="dwithin", distance=half_width_m + _QUERY_SLACK_M),
            dtype=np.intp,
        )
        dx = self._x[rows] - x
        dy = self._y[rows] - y
        along_m = dx * ux + dy * uy
        across_m = dx * uy - dy * ux  # positive to the right of the heading
        keep = (along_m >= 0.0) & (along_m <= reach_m) & (np.abs(across_m) <= half_width_m)
        rows, along_m, across_m = rows[keep], along_m[keep], across_m[keep]
        order = np.lexsort((rows, along_m))
        return LampsAhead(
            ids=tuple(self._ids[rows[order]].tolist()),
            along_m=tuple(along_m[order].tolist()),
            across_m=tuple(across_m[order].tolist()),
            reach_m=reach_m,
        )


WALK_RADIUS_M = 30.0  # lamps this close to a resident in safe-walk mode brighten (issue #5)

# Cell of the walker grid: a 30 m circle covers 1-4 cells, an 80 m corridor 2-9.
_GRID_CELL_M = 50.0


class _Grid:
    """The lamps bucketed in square cells, as plain Python floats: a walker's query touches a
    few dozen lamps, where numpy and GEOS cost more per call than the arithmetic itself."""

    __slots__ = ("cells", "ids", "xs", "ys")

    def __init__(self, ids: Sequence[str], xs: Sequence[float], ys: Sequence[float]) -> None:
        self.ids = list(ids)
        self.xs = [float(v) for v in xs]
        self.ys = [float(v) for v in ys]
        cells: dict[tuple[int, int], list[int]] = {}
        for row, (x, y) in enumerate(zip(self.xs, self.ys, strict=True)):
            cells.setdefault((math.floor(x / _GRID_CELL_M), math.floor(y / _GRID_CELL_M)), []).append(row)
        self.cells = cells

    def rows_in(self, x0: float, y0: float, x1: float, y1: float) -> list[int]:
        """Rows of the lamps in the cells that meet the box [x0, x1] x [y0, y1] (a superset)."""
        cells = self.cells
        rows: list[int] = []
        for i in range(math.floor(x0 / _GRID_CELL_M), math.floor(x1 / _GRID_CELL_M) + 1):
            for j in range(math.floor(y0 / _GRID_CELL_M), math.floor(y1 / _GRID_CELL_M) + 1):
                found = cells.get((i, j))
                if found:
                    rows.extend(found)
        return rows

    def near(self, x: float, y: float, radius_m: float) -> list[str]:
        """Ids within radius_m of (x, y), nearest first, ties in index order (as ``within``)."""
        xs, ys = self.xs, self.ys
        hits = []
        for row in self.rows_in(x - radius_m, y - radius_m, x + radius_m, y + radius_m):
            d = math.hypot(xs[row] - x, ys[row] - y)
            if d <= radius_m:
                hits.append((d, row))
        hits.sort()
        ids = self.ids
        return [ids[row] for _, row in hits]

    def ahead(
        self, x: float, y: float, ux: float, uy: float, reach_m: float, half_width_m: float
    ) -> list[str]:
        """Ids in the corridor ahead, by distance along the path, ties in index order (as ``ahead``)."""
        ex, ey = x + ux * reach_m, y + uy * reach_m
        rows = self.rows_in(
            min(x, ex) - half_width_m,
            min(y, ey) - half_width_m,
            max(x, ex) + half_width_m,
            max(y, ey) + half_width_m,
        )
        xs, ys = self.xs, self.ys
        hits = []
        for row in rows:
            dx, dy = xs[row] - x, ys[row] - y
            along = dx * ux + dy * uy
            if 0.0 <= along <= reach_m and abs(dx * uy - dy * ux) <= half_width_m:
                hits.append((along, row))
        hits.sort()
        ids = self.ids
        return [ids[row] for _, row in hits]


def lamps_for_walker(
    index: LampIndex,
    lat_deg: float,
    lon_deg: float,
    heading_deg: float | None,
    speed_mps: float | None,
    *,
    radius_m: float = WALK_RADIUS_M,
) -> tuple[str, ...]:
    """The lamps to brighten for a walker: those within `radius_m`, nearest first, then those in
    the corridor ahead (when heading and speed are known and the walker moves), by distance along
    the path. Each lamp appears once.

    The same answer as ``index.within`` followed by ``index.ahead`` (a test holds them equal),
    computed on the index's grid in plain Python: ~25 µs against ~140 µs for a walker with a
    heading over the 3,500 lamps of the 2022 zones; it runs for every position reported."""
    return index.for_walker(lat_deg, lon_deg, heading_deg, speed_mps, radius_m=radius_m)
