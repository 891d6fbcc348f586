"""CCTV cameras near a point: which way a camera faces (촬영방면정보 in words), the bearing from a
camera to a resident, and an index answering "cameras within r, nearest first, and do they look
towards this point".

촬영방면정보 in the national standard CCTV data (전국CCTV표준데이터) is free text. What is parsed:

* all around: ``360도``/``360°``/``360``, ``전방향``, ``전방위``, ``회전`` (a rotating dome),
  ``동서남북``;
* compass words, alone or as several separated by ``,`` ``/`` ``·`` ``.`` or spaces: ``동`` ``서``
  ``남`` ``북`` (a sector of ±45° around E, W, S, N), ``북동``/``동북``, ``남동``/``동남``,
  ``남서``/``서남``, ``북서``/``서북`` (±45° around NE, SE, SW, NW), a run of cardinals such as
  ``동서`` or ``남북`` (each of them), optionally followed by ``쪽``, ``방향``, ``방면``, ``측``
  or ``향`` (``동쪽``, ``서남방향``);
* anything else (a street name, a landmark, "사거리 방면", "45도": is that a bearing or a field of
  view?) is unknown: `parse_facing` answers None, and whether such a camera sees the resident is
  unknown too (never a guess).

A fixed camera's field of view is about 90°, hence ±45° around each direction named.

Bearings are taken on the EPSG:5186 grid (`geo._projection`); grid north differs from true north
by the meridian convergence, under 0.2° across Seoul, far inside a ±45° sector.

Timings (development machine, 2 vCPU shared, shapely 2.2): 110,000 cameras spread over Seoul, build
0.2-0.5 s; `CameraIndex.near` within 100 m 70-140 µs per query (docs/benchmarks.md, measured
by ``streetlight bench geo``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from numpy.typing import ArrayLike

from geo._lamps import LampIndex
from geo._projection import to_metric_point

# A fixed camera's horizontal field of view is about 90°: ±45° around the direction named.
SECTOR_HALF_WIDTH_DEG = 45.0
# Cameras listed for an SOS: within this distance of the resident unless configured otherwise.
CAMERA_RADIUS_M = 100.0
# Closer than this the bearing means nothing: the camera is where the resident is.
_SAME_PLACE_M = 1.0

_CARDINAL = {"북": 0.0, "동": 90.0, "남": 180.0, "서": 270.0}
_INTERCARDINAL = {
    "북동": 45.0,
    "동북": 45.0,
    "남동": 135.0,
    "동남": 135.0,
    "남서": 225.0,
    "서남": 225.0,
    "북서": 315.0,
    "서북": 315.0,
}
_ALL_AROUND = re.compile(r"^(?:360(?:도|°)?|전방향|전방위|전방면|회전(?:형|식)?|동서남북)$")
_SUFFIX = re.compile(r"(?:쪽|방향|방면|측|향)$")
_SEPARATORS = re.compile(r"[,/·.、\s]+")


@dataclass(frozen=True, slots=True)
class Facing:
    """Which way a camera looks: all around, or the sectors (centre bearing, degrees clockwise
    from north) each ±``half_width_deg``."""

    all_around: bool = False
    centres_deg: tuple[float, ...] = ()
    half_width_deg: float = SECTOR_HALF_WIDTH_DEG

    def covers(self, bearing_deg: float) -> bool:
        """True when a point at this bearing from the camera is inside one of its sectors."""
        if self.all_around:
            return True
        return any(angle_between(c, bearing_deg) <= self.half_width_deg + 1e-9 for c in self.centres_deg)


def _token(token: str) -> tuple[float, ...] | None:
    word = _SUFFIX.sub("", token)
    if word in _INTERCARDINAL:
        return (_INTERCARDINAL[word],)
    if word and all(ch in _CARDINAL for ch in word) and len(set(word)) == len(word):
        return tuple(_CARDINAL[ch] for ch in word)
    return None


def parse_facing(text: str | None) -> Facing | None:
    """The facing described by a 촬영방면정보 value, or None when it says nothing parseable (see the
    module's docstring). Never raises."""
    if text is None:
        return None
    value = text.strip()
    if not value:
        return None
    compact = re.sub(r"\s+", "", value)
    if _ALL_AROUND.match(compact) or _ALL_AROUND.match(_SUFFIX.sub("", compact)):
        return Facing(all_around=True)
    centres: list[float] = []
    for token in _SEPARATORS.split(value):
        if not token:
            continue
        found = _token(token)
        if found is None:
            return None  # free text: a wrong "looks towards" is worse than "unknown"
        centres.extend(c for c in found if c not in centres)
    if not centres:
        return None
    if len(centres) == 4:
        return Facing(all_around=True)
    return Facing(centres_deg=tuple(centres))


def angle_between(a_deg: float, b_deg: float) -> float:
    """The smaller angle between two bearings, in [0, 180]."""
    d = abs(a_deg - b_deg) % 360.0
    return 360.0 - d if d > 180.0 else d


def bearing_deg(from_lat: float, from_lon: float, to_lat: float, to_lon: float) -> float:
    """Grid bearing (degrees clockwise from north, [0, 360)) from one point to another."""
    x1, y1 = to_metric_point(from_lat, from_lon)
    x2, y2 = to_metric_point(to_lat, to_lon)
    return math.degrees(math.atan2(x2 - x1, y2 - y1)) % 360.0


def looks_towards(facing: Facing | None, bearing_to_point_deg: float, distance_m: float) -> bool | None:
    """Whether a camera with this facing sees a point at this bearing and distance from it; None
    when the facing is unknown. A point at the camera itself is seen by any camera."""
    if facing is None:
        return None
    if distance_m < _SAME_PLACE_M:
        return True
    return facing.covers(bearing_to_point_deg)


@dataclass(frozen=True, slots=True)
class CameraHit:
    """One camera near a point: its distance, the bearing from the camera to the point, and
    whether it looks that way (None: its facing is unknown)."""

    camera_id: str
    distance_m: float
    bearing_deg: float
    looks_towards: bool | None


class CameraIndex:
    """Immutable spatial index of cameras (an STRtree over EPSG:5186 metres, the lamp index's)."""

    def __init__(
        self,
        ids: Sequence[str],
        lat_deg: ArrayLike,
        lon_deg: ArrayLike,
        facings: Sequence[Facing | None],
    ) -> None:
        self._points = LampIndex(ids, lat_deg, lon_deg)
        if len(facings) != len(self._points):
            raise ValueError(f"{len(self._points)} cameras but {len(facings)} facings")
        self._facing = dict(zip(self._points.ids, facings, strict=True))

    def __len__(self) -> int:
        return len(self._points)

    def __contains__(self, camera_id: object) -> bool:
        return camera_id in self._points

    def facing(self, camera_id: str) -> Facing | None:
        """The parsed facing of a camera (KeyError if unknown)."""
        return self._facing[camera_id]

    def near(
        self, lat_deg: float, lon_deg: float, radius_m: float = CAMERA_RADIUS_M
    ) -> tuple[CameraHit, ...]:
        """Cameras at most ``radius_m`` from the point, nearest first (ties in index order), each
        with the bearing from the camera to the point and whether it looks towards it. ValueError
        for a point outside Korea or a negative radius."""
        hits = self._points.within(lat_deg, lon_deg, radius_m)
        x, y = to_metric_point(lat_deg, lon_deg)
        ex, ny = self._points.easting_m, self._points.northing_m
        rows = self._points.rows(hits.ids)
        out = []
        for camera_id, d, i in zip(hits.ids, hits.distances_m, rows, strict=True):
            b = math.degrees(math.atan2(x - float(ex[i]), y - float(ny[i]))) % 360.0
            out.append(CameraHit(camera_id, d, b, looks_towards(self._facing[camera_id], b, d)))
        return tuple(out)
