"""Simulated residents: walkers moving along the lamp grid, with GPS noise and a Safety-app beacon.

A walker goes from lamp to neighbouring lamp (the grid's streets) at 1.2-1.6 m/s, mostly straight
on, sometimes turning. Its GPS fix is its true position plus noise of 5-15 m. Its app advertises a
beacon token; blinkers in range hear it (``BlinkerFirmware.observe``). Pure: no sockets, no clock;
time advances by the ``dt_s`` given to ``step``.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

import numpy as np
import shapely

from geo import to_latlon

from .placement import MAX_SPACING_M, Placement

__all__ = ["GpsFix", "StreetGraph", "Walker"]

# Issue 3: walkers at 1.1-1.6 m/s; the brief for safe-walk residents narrows it to 1.2-1.6 m/s.
SPEED_RANGE_MPS = (1.2, 1.6)
# Phone GPS in alleys between buildings: 5-15 m accuracy.
GPS_ERROR_RANGE_M = (5.0, 15.0)
# Chance of turning at a lamp where the street allows it.
TURN_PROBABILITY = 0.2


@dataclass(frozen=True, slots=True)
class GpsFix:
    """What the app reports: a noisy position, its accuracy, heading and speed."""

    lat: float
    lon: float
    accuracy_m: float
    heading_deg: float
    speed_mps: float

    def as_json(self) -> dict[str, float]:
        """The body of ``POST /v1/walks`` and ``/positions``."""
        return {
            "lat": round(self.lat, 7),
            "lon": round(self.lon, 7),
            "accuracy_m": round(self.accuracy_m, 1),
            "heading_deg": round(self.heading_deg % 360.0, 1),
            "speed_mps": round(self.speed_mps, 2),
        }


class StreetGraph:
    """Lamps as nodes, neighbours within 35 m as the streets between them."""

    def __init__(self, placement: Placement) -> None:
        self.placement = placement
        self.xy = np.array([[lamp.easting_m, lamp.northing_m] for lamp in placement.lamps]).reshape(-1, 2)
        self.neighbours: list[list[int]] = [[] for _ in range(len(self.xy))]
        if len(self.xy) > 1:
            points = shapely.points(self.xy)
            left, right = shapely.STRtree(points).query(
                points, predicate="dwithin", distance=MAX_SPACING_M + 1
            )
            for a, b in zip(left.tolist(), right.tolist(), strict=True):
                if a != b:
                    self.neighbours[a].append(b)

    def __len__(self) -> int:
        return len(self.xy)

    def distances_from(self, x: float, y: float) -> np.ndarray:
        """Distance (m) from a point to every lamp."""
        return np.asarray(np.hypot(self.xy[:, 0] - x, self.xy[:, 1] - y))


@dataclass
class Walker:
    """One resident on foot with the Safety app open in safe-walk mode."""

    number: int
    graph: StreetGraph
    rng: random.Random
    at: int  # lamp index the walker last passed
    x: float = 0.0
    y: float = 0.0
    target: int = -1
    speed_mps: float = 0.0
    gps_error_m: float = 0.0
    walked_m: float = 0.0
    token: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    @classmethod
    def start(cls, number: int, graph: StreetGraph, rng: random.Random, at: int | None = None) -> Walker:
        """A walker at a lamp (random unless given), with its own speed, GPS quality and app token."""
        if len(graph) == 0:
            raise ValueError("no lamps to walk along")
        where = rng.randrange(len(graph)) if at is None else at
        walker = cls(number, graph, rng, where)
        walker.x, walker.y = (float(v) for v in graph.xy[where])
        walker.speed_mps = rng.uniform(*SPEED_RANGE_MPS)
        walker.gps_error_m = rng.uniform(*GPS_ERROR_RANGE_M)
        walker.token = f"{rng.getrandbits(128):032x}"
        walker.target = walker._next_target(None)
        return walker

    @property
    def token_hash(self) -> str:
        """What blinkers report: a hash of the app's beacon token, never the token."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:32]

    @property
    def heading_deg(self) -> float:
        """Compass heading towards the next lamp (0 = grid north, clockwise)."""
        if self.target < 0:
            return 0.0
        tx, ty = self.graph.xy[self.target]
        return math.degrees(math.atan2(tx - self.x, ty - self.y)) % 360.0

    def _next_target(self, came_from: int | None) -> int:
        options = [n for n in self.graph.neighbours[self.at] if n != came_from]
        if not options:
            return came_from if came_from is not None else -1
        if came_from is None or self.rng.random() < TURN_PROBABILITY:
            return self.rng.choice(options)
        # Straight on: the neighbour most in line with the way we came.
        fx, fy = self.graph.xy[self.at] - self.graph.xy[came_from]
        norm = math.hypot(fx, fy) or 1.0

        def straightness(n: int) -> float:
            dx, dy = self.graph.xy[n] - self.graph.xy[self.at]
            return float((dx * fx + dy * fy) / ((math.hypot(dx, dy) or 1.0) * norm))

        return max(options, key=straightness)

    def step(self, dt_s: float) -> None:
        """Walk for `dt_s` seconds along the streets."""
        remaining = self.speed_mps * dt_s
        while remaining > 0 and self.target >= 0:
            tx, ty = (float(v) for v in self.graph.xy[self.target])
            gap = math.hypot(tx - self.x, ty - self.y)
            if gap > remaining:
                self.x += (tx - self.x) * remaining / gap
                self.y += (ty - self.y) * remaining / gap
                self.walked_m += remaining
                return
            self.x, self.y = tx, ty
            self.walked_m += gap
            remaining -= gap
            came_from, self.at = self.at, self.target
            self.target = self._next_target(came_from)

    def true_latlon(self) -> tuple[float, float]:
        """Where the walker really is."""
        lat, lon = to_latlon(self.x, self.y)
        return float(lat), float(lon)

    def gps_fix(self) -> GpsFix:
        """The app's position report: the true position plus GPS noise."""
        sigma = self.gps_error_m / 2  # accuracy is reported as about 2 sigma
        lat, lon = to_latlon(self.x + self.rng.gauss(0, sigma), self.y + self.rng.gauss(0, sigma))
        return GpsFix(float(lat), float(lon), self.gps_error_m, self.heading_deg, self.speed_mps)
