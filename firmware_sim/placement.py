"""Synthetic lamp placement: lamps and their paired blinkers along a street-like grid in the zones.

The 2022 smart-light zones (``geo.load_safety_zones``) name neighbourhoods (dongs), not lamp
positions, so positions are **synthetic**: in each zone's dong polygon a street grid is laid at
a seeded orientation, lamps are set along the streets every 20-35 m, and the lamps nearest the
dong's centre are kept, so a zone's lamps form one compact lit neighbourhood. No two lamps are
closer than 20 m and every lamp has a neighbour within 35 m. The same seed gives the same lamps.

When a dong cannot hold its share (tens of thousands of lamps), the rest spill into the other
dongs of the same district, nearest first, and keep the zone's number.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geo import Gazetteer, Zone, load_safety_zones, to_latlon

__all__ = [
    "DEFAULT_SEED",
    "MAX_SPACING_M",
    "MIN_SPACING_M",
    "PlacedLamp",
    "Placement",
    "export_geojson",
    "place_lamps",
    "zone_quotas",
]

DEFAULT_SEED = 2022  # the year the zones were selected; any integer works
# Issue 3: lamps along a street every 20-35 m (Seoul alley lamps stand about 25-30 m apart).
MIN_SPACING_M = 20.0
MAX_SPACING_M = 35.0
MEAN_SPACING_M = (MIN_SPACING_M + MAX_SPACING_M) / 2
# City blocks between parallel alleys: 50 m at the densest (the old hanok and villa quarters),
# up to 250 m when only a handful of lamps are asked for.
MIN_BLOCK_M = 50.0
MAX_BLOCK_M = 250.0
# Fewer lamps than this per zone: use fewer zones.
MIN_LAMPS_PER_ZONE = 5
# Generate this much more than needed, then keep the lamps nearest the centre.
HEADROOM = 1.25


@dataclass(frozen=True, slots=True)
class PlacedLamp:
    """One lamp position with its paired blinker; positions are synthetic."""

    lamp_id: str
    blinker_id: str
    lamp_number: str  # district code, zone number, sequence: "11230-01-0042"
    district_code: str
    dong_code: str
    zone: int  # 1-based number of the smart-light zone this lamp belongs to
    lat_deg: float
    lon_deg: float
    easting_m: float  # EPSG:5186
    northing_m: float


@dataclass(frozen=True, slots=True)
class Placement:
    """A whole synthetic fleet: lamps in zone order, then sequence order."""

    seed: int
    lamps: tuple[PlacedLamp, ...]
    zones: tuple[Zone, ...]

    def __len__(self) -> int:
        return len(self.lamps)

    def districts(self) -> tuple[str, ...]:
        """District codes that hold lamps, sorted."""
        return tuple(sorted({lamp.district_code for lamp in self.lamps}))

    def to_geojson(self) -> dict[str, Any]:
        """A FeatureCollection of Points, one per lamp and one per blinker, that ``provision`` imports."""
        features: list[dict[str, Any]] = []
        for lamp in self.lamps:
            for kind, device_id, paired in (
                ("lamp", lamp.lamp_id, lamp.blinker_id),
                ("blinker", lamp.blinker_id, lamp.lamp_id),
            ):
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [lamp.lon_deg, lamp.lat_deg]},
                        "properties": {
                            "id": device_id,
                            "kind": kind,
                            "district_code": lamp.district_code,
                            "dong_code": lamp.dong_code,
                            "lamp_number": lamp.lamp_number,
                            "paired": paired,
                            "zone": lamp.zone,
                            "synthetic": True,
                        },
                    }
                )
        return {
            "type": "FeatureCollection",
            "properties": {
                "source": "firmware_sim.placement (synthetic positions, not surveyed lamps)",
                "seed": self.seed,
                "lamps": len(self.lamps),
            },
            "features": features,
        }


def export_geojson(placement: Placement, path: Path) -> None:
    """Write the placement as GeoJSON (lamps and blinkers) for ``streetlight provision --devices``."""
    path.write_text(json.dumps(placement.to_geojson(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def zone_quotas(zones: Sequence[Zone], lamps: int, weights: Sequence[float]) -> list[int]:
    """Split `lamps` over zones in proportion to `weights` (largest remainder, so they sum exactly)."""
    if lamps < 0:
        raise ValueError(f"lamps must be >= 0, got {lamps}")
    total = sum(weights)
    exact = [lamps * w / total for w in weights]
    quotas = [math.floor(x) for x in exact]
    order = sorted(range(len(zones)), key=lambda i: (quotas[i] - exact[i], i))
    for i in order[: lamps - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _grid_points(polygon: Any, block_m: float, rng: random.Random) -> np.ndarray:
    """Candidate lamp positions (metres) along two crossing families of streets over the polygon."""
    angle = rng.uniform(0.0, math.pi / 2)
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-math.sin(angle), math.cos(angle)])
    centre = np.array(polygon.centroid.coords[0])
    coords = shapely.get_coordinates(polygon) - centre
    pu, pv = coords @ u, coords @ v
    points: list[np.ndarray] = []
    for along, across, a_rng, c_rng in ((u, v, pu, pv), (v, u, pv, pu)):
        offset = c_rng.min() + rng.uniform(0.0, block_m)
        while offset <= c_rng.max():
            line_offset = offset + rng.uniform(-0.1, 0.1) * block_m  # streets are not ruled lines
            t = a_rng.min() + rng.uniform(0.0, MAX_SPACING_M)
            steps = []
            while t <= a_rng.max():
                steps.append(t)
                t += rng.uniform(MIN_SPACING_M, MAX_SPACING_M)
            if steps:
                ts = np.array(steps)
                points.append(centre + np.outer(ts, along) + line_offset * across)
            offset += block_m
    if not points:
        return np.empty((0, 2))
    all_points = np.vstack(points)
    inside = shapely.contains_xy(polygon, all_points[:, 0], all_points[:, 1])
    return np.asarray(all_points[inside])


_Grid = dict[tuple[int, int], list[tuple[float, float]]]


def _thin(points: np.ndarray, placed: _Grid) -> np.ndarray:
    """Drop points closer than MIN_SPACING_M to one kept or `placed` before (where streets cross)."""
    cell = MIN_SPACING_M
    grid: _Grid = {k: list(v) for k, v in placed.items()}
    kept = []
    min2 = MIN_SPACING_M**2
    for x, y in points.tolist():
        cx, cy = int(x // cell), int(y // cell)
        near = (q for dx in (-1, 0, 1) for dy in (-1, 0, 1) for q in grid.get((cx + dx, cy + dy), ()))
        if any((x - qx) ** 2 + (y - qy) ** 2 < min2 for qx, qy in near):
            continue
        grid.setdefault((cx, cy), []).append((x, y))
        kept.append((x, y))
    return np.array(kept).reshape(-1, 2)


def _isolated(points: np.ndarray) -> np.ndarray:
    """Mask of points with no other point within MAX_SPACING_M."""
    if len(points) < 2:
        return np.ones(len(points), dtype=bool)
    tree = shapely.STRtree(shapely.points(points))
    pairs = tree.query(shapely.points(points), predicate="dwithin", distance=MAX_SPACING_M)
    counts = np.bincount(pairs[0], minlength=len(points))
    return np.asarray(counts <= 1)  # itself only


def _occupy(placed: _Grid, points: np.ndarray) -> None:
    for x, y in points.tolist():
        placed.setdefault((int(x // MIN_SPACING_M), int(y // MIN_SPACING_M)), []).append((x, y))


def _place_in(polygon: Any, wanted: int, rng: random.Random, placed: _Grid) -> np.ndarray:
    """Up to `wanted` positions in the polygon, nearest its centre first, clear of `placed`."""
    if wanted <= 0:
        return np.empty((0, 2))
    area = float(polygon.area)
    block = min(MAX_BLOCK_M, max(MIN_BLOCK_M, 2 * area / (wanted * HEADROOM * MEAN_SPACING_M)))
    for _ in range(5):
        candidates = _thin(_grid_points(polygon, block, rng), placed)
        if len(candidates) >= wanted * HEADROOM or block <= MIN_BLOCK_M:
            break
        block = max(MIN_BLOCK_M, block * max(len(candidates), 1) / (wanted * HEADROOM))
    centre = np.array(polygon.centroid.coords[0])
    order = np.argsort(np.hypot(*(candidates - centre).T), kind="stable")
    candidates = candidates[order]
    # Keep the nearest; drop any left without a neighbour within 35 m and let the next ones in.
    for _ in range(10):
        chosen = candidates[:wanted]
        lonely = _isolated(chosen)
        if not lonely.any() or wanted < 2:
            return chosen
        candidates = np.vstack([chosen[~lonely], candidates[wanted:]])
    chosen = candidates[:wanted]
    return np.asarray(chosen[~_isolated(chosen)])


def _spill_dongs(gazetteer: Gazetteer, zone: Zone, taken: set[str]) -> list[Any]:
    """Other dongs of the zone's district, nearest the zone first."""
    home = gazetteer.dong(zone.dong_code).polygon_m.centroid
    others = [a for a in gazetteer.dongs if a.district_code == zone.district_code and a.code not in taken]
    return sorted(others, key=lambda a: (a.polygon_m.centroid.distance(home), a.code))


def select_zones(selectors: Iterable[str] | None = None) -> tuple[list[Zone], list[float]]:
    """Smart-light zones matching any selector, with each zone's share of its batch's lamps.

    A selector is a batch (``batch1``), a 1-based zone number (``3``), a district or dong code,
    or a district or dong name (``마포구``, ``연남동``).
    """
    zones_doc = load_safety_zones()
    all_zones: list[tuple[int, Zone, float, int]] = []
    number = 0
    for batch in zones_doc.smart_light_batches:
        for zone in batch.zones:
            number += 1
            all_zones.append((number, zone, batch.lamp_count / len(batch.zones), batch.batch))
    wanted = [s.strip() for s in (selectors or ()) if s.strip()]
    if not wanted:
        return [z for _, z, _, _ in all_zones], [w for _, _, w, _ in all_zones]
    picked = [
        (z, w)
        for n, z, w, b in all_zones
        if any(s in (str(n), f"batch{b}", z.district_code, z.dong_code, z.district, z.dong) for s in wanted)
    ]
    if not picked:
        raise ValueError(f"no smart-light zone matches {wanted}; try batch1, batch2, 1-14, a code or a name")
    return [z for z, _ in picked], [w for _, w in picked]


def zone_number(zone: Zone) -> int:
    """The 1-based number of a smart-light zone, in file order (batch 1 first)."""
    zones = load_safety_zones().smart_light_zones
    return next(i for i, z in enumerate(zones, 1) if z.dong_code == zone.dong_code)


def place_lamps(
    lamps: int | None = None,
    *,
    zones: Iterable[str] | None = None,
    seed: int = DEFAULT_SEED,
    id_prefix: str = "",
    gazetteer: Gazetteer | None = None,
) -> Placement:
    """Place `lamps` lamps (default: the 3,500 of the 2022 zones) over the selected zones.

    Ids are ``{id_prefix}lamp-{district}-{zone}-{seq}`` and ``{id_prefix}bk-...`` for the blinker.
    """
    selected, weights = select_zones(zones)
    if lamps is None:
        lamps = round(sum(weights))
    if lamps < MIN_LAMPS_PER_ZONE * len(selected):
        # A handful of lamps make one or two small lit neighbourhoods, not 14 lone lamps.
        keep = max(1, lamps // MIN_LAMPS_PER_ZONE)
        selected, weights = selected[:keep], weights[:keep]
    gaz = gazetteer or Gazetteer.load()
    quotas = zone_quotas(selected, lamps, weights)
    placed: list[PlacedLamp] = []
    zone_dongs = {z.dong_code for z in load_safety_zones().smart_light_zones}
    occupied: _Grid = {}
    for zone, quota in zip(selected, quotas, strict=True):
        number = zone_number(zone)
        areas = [gaz.dong(zone.dong_code), *_spill_dongs(gaz, zone, zone_dongs)]
        seq = 0
        for area in areas:
            if seq >= quota:
                break
            rng = random.Random(f"{seed}:{area.code}:{zone.dong_code}")
            points = _place_in(area.polygon_m, quota - seq, rng, occupied)
            if len(points) == 0:
                continue
            _occupy(occupied, points)
            lat, lon = to_latlon(points[:, 0], points[:, 1])
            for (x, y), la, lo in zip(points.tolist(), lat.tolist(), lon.tolist(), strict=True):
                seq += 1
                tail = f"{zone.district_code}-{number:02d}-{seq:04d}"
                placed.append(
                    PlacedLamp(
                        lamp_id=f"{id_prefix}lamp-{tail}",
                        blinker_id=f"{id_prefix}bk-{tail}",
                        lamp_number=tail,
                        district_code=zone.district_code,
                        dong_code=area.code,
                        zone=number,
                        lat_deg=round(la, 7),
                        lon_deg=round(lo, 7),
                        easting_m=x,
                        northing_m=y,
                    )
                )
        if seq < quota:
            raise ValueError(f"zone {number} ({zone.dong}) and its district hold only {seq} of {quota} lamps")
    return Placement(seed, tuple(placed), tuple(selected))
