"""The lamps and blinkers a controller knows, with their spatial index (reloaded periodically)."""

from __future__ import annotations

from collections.abc import Sequence

from geo import LampIndex
from runtime.logs import get_logger
from store.dbthread import DbThread
from store.devices import placement_version
from store.reconcile import CommandTarget, LampRow, load_command_target, load_devices
from store.types import Conn

log = get_logger(__name__)


class Devices:
    """Every device with a position (``get``), and the lamps among them as a `geo.LampIndex`."""

    def __init__(self) -> None:
        self.index = LampIndex([], [], [])
        self._rows: dict[str, LampRow] = {}
        self._version: tuple[int, str] | None = None  # of the devices as last loaded

    async def reload(self, db: DbThread) -> None:
        """Read the devices again; the index is rebuilt only when they changed."""
        # Read and build in the database thread: a rebuilt index (STRtree, walker grid) costs
        # ~10-20 ms for 3,500 lamps, a stall of every position if done on the loop. The periodic
        # reload finds the same devices almost every time: PostgreSQL's hash of them says so
        # (`store.devices.placement_version`), without reading 3,500 rows into objects (~20 ms
        # of that thread holding the interpreter against the loop's commands).
        loaded = await db.call(_load_lamps, self._version)
        if loaded is None:
            return
        self._version, self.index, self._rows = loaded
        log.debug("lamps_loaded", count=len(self.index))

    async def fresh(self, db: DbThread, device_id: str) -> CommandTarget | None:
        """One device read now (None: no such device), for an operator's command: a lamp
        provisioned since the last reload is known from here on (it joins the spatial index at
        the next reload, which finds the devices changed)."""
        target = await db.call(load_command_target, device_id)
        if target is not None and target.lamp is not None:
            self._rows[device_id] = target.lamp
        return target

    def get(self, device_id: str) -> LampRow | None:
        """The device, or None when it is unknown (or has no position)."""
        return self._rows.get(device_id)

    def district_near(self, lat: float | None, lon: float | None) -> str:
        """The district of the nearest lamp, for a walk the API could not place (e.g. just outside)."""
        if lat is None or lon is None or not len(self.index):
            return ""
        try:
            ids = self.index.nearest(float(lat), float(lon), 1).ids
        except ValueError:
            return ""
        return self._rows[ids[0]].district if ids else ""

    def within(self, lat: float, lon: float, radius_m: float) -> Sequence[str]:
        """Lamp ids within the radius, nearest first."""
        return self.index.within(lat, lon, radius_m).ids

    def nearest(self, lat: float, lon: float, k: int) -> Sequence[str]:
        """The k nearest lamp ids, nearest first."""
        return self.index.nearest(lat, lon, k).ids if len(self.index) else ()


def _load_lamps(
    conn: Conn, previous: tuple[int, str] | None
) -> tuple[tuple[int, str], LampIndex, dict[str, LampRow]] | None:
    """The devices' version with their lamp index, or None when the version is ``previous``."""
    version = placement_version(conn)
    if version == previous:
        return None
    rows = load_devices(conn)
    lamps = [r for r in rows if r.kind == "lamp"]
    index = LampIndex([r.device_id for r in lamps], [r.lat for r in lamps], [r.lon for r in lamps])
    index.prepare_walker_grid()
    return version, index, {r.device_id: r for r in rows}
