"""Where a point is, in words: the gazetteer plus the lamps from the devices table; and the cameras
near it, from the cameras table."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from alerts import NearestLamp, Place, named_place
from geo import CameraIndex, Gazetteer, LampIndex, Location, parse_facing
from runtime.logs import get_logger
from store.cameras import camera_version, list_cameras
from store.devices import list_devices_with_state, placement_version
from store.types import Conn, Row

log = get_logger(__name__)

# An SOS names lamps a responder can find from the pole numbers; farther than this, a lamp
# number helps nobody find the resident.
NEAREST_LAMP_MAX_M = 300.0


@dataclass(frozen=True, slots=True)
class LampSnapshot:
    """The lamp index and the painted pole numbers, as read at one moment."""

    index: LampIndex
    numbers: dict[str, str]
    districts: dict[str, str]
    loaded_at: float  # monotonic seconds, when built
    addresses: dict[str, str] = field(default_factory=dict)  # the lamp register's, where known


def _empty() -> LampSnapshot:
    return LampSnapshot(LampIndex([], [], []), {}, {}, 0.0)


class LampDirectory:
    """The lamps' positions for walks and SOS places, rebuilt from the devices table now and then."""

    def __init__(self) -> None:
        self._snapshot = _empty()
        self._version: tuple[int, str] | None = None
        self._lock = threading.Lock()

    @property
    def snapshot(self) -> LampSnapshot:
        """The current index (replaced whole on refresh, so readers never see half of one)."""
        return self._snapshot

    def refresh(self, conn: Conn) -> int:
        """Re-read the lamps with a position when the devices changed; returns how many.

        Unchanged devices (`store.devices.placement_version`) keep the index: rebuilding it costs
        ~20-25 ms of CPU for 3,500 lamps, in every API process at once, holding the interpreter
        against the positions being answered meanwhile."""
        version = placement_version(conn)
        if version == self._version:
            return len(self._snapshot.index)
        rows = [r for r in list_devices_with_state(conn, kind="lamp") if r["lat"] is not None]
        ids = [str(r["device_id"]) for r in rows]
        index = LampIndex(ids, [float(r["lat"]) for r in rows], [float(r["lon"]) for r in rows])
        index.prepare_walker_grid()  # here, in the refresh thread, not in the next position's request
        numbers = {str(r["device_id"]): str(r["lamp_number"] or r["device_id"]) for r in rows}
        districts = {str(r["device_id"]): str(r["district_code"]) for r in rows}
        addresses = {str(r["device_id"]): str(r["address"]) for r in rows if r["address"]}
        with self._lock:
            self._snapshot = LampSnapshot(index, numbers, districts, time.monotonic(), addresses)
            self._version = version
        return len(ids)


@dataclass(frozen=True, slots=True)
class CameraSnapshot:
    """The camera index and the register's rows, as read at one moment."""

    index: CameraIndex
    rows: dict[str, Row]
    version: tuple[int, str]


class CameraDirectory:
    """The camera register in memory, rebuilt when the ``cameras`` table changes."""

    def __init__(self) -> None:
        self._snapshot = CameraSnapshot(CameraIndex([], [], [], []), {}, (0, ""))
        self._checked = -float("inf")
        self._lock = threading.Lock()

    def current(self, conn: Conn, max_age_s: float) -> CameraSnapshot:
        """The index, checked against the table when the last check is older than ``max_age_s``
        (one cheap count; the whole register is read again only when it changed)."""
        now = time.monotonic()
        if now - self._checked < max_age_s:
            return self._snapshot
        with self._lock:
            if now - self._checked < max_age_s:
                return self._snapshot
            version = camera_version(conn)
            if version != self._snapshot.version:
                started = time.perf_counter()
                rows = list_cameras(conn)
                index = CameraIndex(
                    [r["camera_id"] for r in rows],
                    [r["lat"] for r in rows],
                    [r["lon"] for r in rows],
                    [parse_facing(r["facing"]) for r in rows],
                )
                self._snapshot = CameraSnapshot(index, {r["camera_id"]: r for r in rows}, version)
                log.info(
                    "camera_index_built",
                    cameras=len(rows),
                    ms=round((time.perf_counter() - started) * 1000, 1),
                )
            self._checked = now
            return self._snapshot


def place_for(
    gazetteer: Gazetteer, lamps: LampSnapshot, lat: float, lon: float, k: int
) -> tuple[Location, Place]:
    """The location of a point and the alert `Place` naming it (district, dong, nearest lamps)."""
    loc = gazetteer.locate(lat, lon)
    nearest: list[NearestLamp] = []
    if len(lamps.index):
        hits = lamps.index.nearest(lat, lon, k)
        nearest = [
            NearestLamp(
                lamp_id=i,
                lamp_number=lamps.numbers.get(i, i),
                distance_m=round(d, 1),
                address=lamps.addresses.get(i, ""),
            )
            for i, d in zip(hits.ids, hits.distances_m, strict=True)
            if d <= NEAREST_LAMP_MAX_M
        ]
    place = Place(
        lat=lat,
        lon=lon,
        district_code=loc.district_code or "",
        district_name=loc.district or "",
        dong_code=loc.dong_code or "",
        dong_name=loc.dong or "",
        inside=loc.inside,
        neighbours=loc.neighbours,
        nearest_lamps=tuple(nearest),
        district_name_en=loc.district_eng or "",
        dong_name_en=loc.dong_eng or "",
    )
    return loc, named_place(place, None)  # the nearest lamp's address is the place's
