"""``streetlight bench geo``: the per-position geometry against its straightforward form, same run.

Every walk position reaches ``geo`` twice (the API's answer and check, the controller's check and
commands), so its cost per call is a queue every position waits in. Measured here, each against
its baseline on the same points in the same process:

* ``lamps_for_walker`` (the grid in plain Python) against the tree form it replaced (the index's
  ``within`` then ``ahead``, GEOS + numpy), with the answers compared: ``mismatches`` must be 0;
* ``Gazetteer.quick_district`` (cached cells) against ``Gazetteer.locate``, with the share of
  points the cells answered and the answers compared;
* ``to_metric_point`` against ``to_metric`` on one point;
* ``CameraIndex.near`` (cameras within 100 m of an SOS, nearest first, with facing) over a register
  the size of Seoul's (110,000 cameras spread over the city), and the index's build time.

Lamps: the 2022 smart-light zones' placement (``firmware_sim.placement``); points: walkers near
random lamps (±45 m), heading and speed at random. Median microseconds per call.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

HELP = "geometry per walk position (walker lamps, quick district, projection) vs the straightforward forms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench geo``."""
    parser.add_argument("--queries", type=int, default=5000, help="points per measurement (default 5000)")
    parser.add_argument("--lamps", type=int, default=3500, help="lamps placed (default 3500, the 2022 zones)")
    parser.add_argument(
        "--cameras", type=int, default=110_000, help="cameras indexed (default 110000, Seoul)"
    )
    parser.add_argument("--seed", type=int, default=7)


def walker_lamps_by_tree(
    index: Any, lat: float, lon: float, heading: float | None, speed: float | None
) -> tuple[str, ...]:
    """``lamps_for_walker`` as first written: the index's ``within`` then its ``ahead`` (GEOS +
    numpy). The baseline here, and the reference the grid is tested against."""
    near: tuple[str, ...] = index.within(lat, lon, 30.0).ids
    if heading is None or speed is None or speed <= 0.0:
        return near
    seen = set(near)
    return (*near, *(i for i in index.ahead(lat, lon, heading % 360.0, speed).ids if i not in seen))


def _median_us(fn: Callable[[Any], object], args: Sequence[Any], rounds: int = 5) -> float:
    """Median over ``rounds`` passes of the mean µs per call over ``args``."""
    per_call = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for a in args:
            fn(a)
        per_call.append((time.perf_counter() - t0) / max(1, len(args)) * 1e6)
    return round(statistics.median(per_call), 2)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Measure; the result is the JSON line (DESIGN.md §7)."""
    from firmware_sim.placement import place_lamps
    from geo import Gazetteer, LampIndex, lamps_for_walker
    from geo._projection import to_metric, to_metric_point

    rng = random.Random(args.seed)
    gazetteer = Gazetteer.load()
    lamps = place_lamps(args.lamps, gazetteer=gazetteer).lamps
    index = LampIndex([p.lamp_id for p in lamps], [p.lat_deg for p in lamps], [p.lon_deg for p in lamps])
    index.prepare_walker_grid()
    points = []
    for _ in range(args.queries):
        lamp = lamps[rng.randrange(len(lamps))]
        points.append(
            (
                lamp.lat_deg + rng.uniform(-4e-4, 4e-4),
                lamp.lon_deg + rng.uniform(-5e-4, 5e-4),
                rng.choice([None, rng.uniform(0.0, 360.0)]),
                rng.uniform(0.0, 2.5),
            )
        )

    def tree(p: tuple[float, float, float | None, float]) -> tuple[str, ...]:
        return walker_lamps_by_tree(index, *p)

    def grid(p: tuple[float, float, float | None, float]) -> tuple[str, ...]:
        return lamps_for_walker(index, p[0], p[1], p[2], p[3])

    mismatches = sum(1 for p in points if grid(p) != tree(p))
    sys.stderr.write(f"[bench geo] {len(lamps)} lamps, {len(points)} points, {mismatches} mismatches\n")
    latlon = [(p[0], p[1]) for p in points]
    quick = [gazetteer.quick_district(lat, lon) for lat, lon in latlon]  # also fills the cells
    located = [gazetteer.locate(lat, lon) for lat, lon in latlon]
    district_mismatches = sum(
        1 for q, loc in zip(quick, located, strict=True) if q is not None and q != loc.district_code
    )
    walker_us = _median_us(grid, points)
    tree_us = _median_us(tree, points)
    quick_us = _median_us(lambda ll: gazetteer.quick_district(*ll), latlon)
    locate_us = _median_us(lambda ll: gazetteer.locate(*ll), latlon)
    point_us = _median_us(lambda ll: to_metric_point(*ll), latlon)
    array_us = _median_us(lambda ll: to_metric(*ll), latlon)
    cameras_build_s, camera_us, camera_hits = _cameras(args.cameras, latlon, rng)
    return {
        "bench": "geo",
        "lamps": len(lamps),
        "queries": len(points),
        "walker_us": walker_us,
        "walker_tree_us": tree_us,
        "walker_speedup": round(tree_us / walker_us, 1) if walker_us else None,
        "mismatches": mismatches,
        "quick_district_us": quick_us,
        "locate_us": locate_us,
        "quick_district_answered": round(sum(q is not None for q in quick) / len(quick), 3),
        "district_mismatches": district_mismatches,
        "to_metric_point_us": point_us,
        "to_metric_us": array_us,
        "cameras": args.cameras,
        "cameras_build_s": cameras_build_s,
        "cameras_near_us": camera_us,
        "cameras_near_hits": camera_hits,
        "ok": mismatches == 0 and district_mismatches == 0,
    }


def _cameras(n: int, points: Sequence[tuple[float, float]], rng: random.Random) -> tuple[float, float, float]:
    """Build a camera index of ``n`` cameras spread over Seoul's extent (a quarter of them with an
    unknown facing) and time ``near`` within 100 m of ``points``: (build s, µs per query, mean hits)."""
    from geo import CameraIndex, parse_facing

    words = ["동", "서", "남", "북", "서남", "360도", "사거리 방면", ""]
    lats = [rng.uniform(37.43, 37.70) for _ in range(n)]
    lons = [rng.uniform(126.80, 127.18) for _ in range(n)]
    facings = [parse_facing(rng.choice(words)) for _ in range(n)]
    t0 = time.perf_counter()
    index = CameraIndex([f"cam-{i}" for i in range(n)], lats, lons, facings)
    build_s = round(time.perf_counter() - t0, 3)
    hits = [len(index.near(lat, lon, 100.0)) for lat, lon in points]
    per_query_us = _median_us(lambda ll: index.near(ll[0], ll[1], 100.0), points)
    return build_s, per_query_us, round(statistics.mean(hits), 1)
