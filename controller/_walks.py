"""Walk-along brightening and beacon sightings: the lamps around (and ahead of) a resident.

A walk's positions come from the API (`store.notes`: a walk's start, end, and batches of
positions with the lamps the API answered with); each is checked against the walk's track
(`controller._positions`), its verdict written when it has a reason, and its lamps brightened
for the hold time, each (walk, lamp) not again while more than half its hold is left
(`controller._holds`). A blinker's beacon sighting brightens the lamps around it the same way,
keyed by the beacon (`geo.lamps_for_beacon`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller._clock import now_ms
from controller._holds import HoldBook
from controller._outbox import Outbox
from controller._positions import Fix, Track, advance
from controller.config import ControllerConfig
from geo import BEACON_SENSOR_KIND, beacon_is_fresh, lamps_for_beacon, lamps_for_walker
from runtime.logs import get_logger
from store.commands import PositionVerdict
from store.dbthread import DbThread
from store.notes import WalkEnded, WalkNote, WalkPositions
from store.reconcile import active_walks

log = get_logger(__name__)

# Expired holds and idle walks are dropped this often.
HOUSEKEEPING_EVERY_MS = 5_000
# A walk with no position for this long is forgotten (the API ends or expires it in the table).
WALK_IDLE_S = 900.0


@dataclass
class _Walk:
    district: str
    track: Track = field(default_factory=Track)
    last_ms: int = 0


def beacon_source(token_hash: str) -> str:
    """The override key of a beacon's brightening on the lamps."""
    return f"bcn-{token_hash[:32]}"


class Walks:
    """The walks of the districts this controller owns, and their lamps' holds."""

    def __init__(
        self,
        cfg: ControllerConfig,
        outbox: Outbox,
        stats: Counter[str],
        reasons: Counter[str],
        owned: set[str],
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._devices = outbox.devices
        self._stats = stats
        self._reasons = reasons
        self._owned = owned
        self.walks: dict[str, _Walk] = {}
        self.holds = HoldBook(cfg.holds)
        self._housekeeping_due_ms = 0

    async def on_note(self, note: WalkNote | WalkPositions) -> None:
        """A walk started, moved or ended, or a batch of positions was stored."""
        if isinstance(note, WalkPositions):
            await self._on_positions(note)
            return
        district = note.district or self._devices.district_near(note.lat, note.lon)
        if district not in self._owned:
            return
        if isinstance(note, WalkEnded):
            self.walks.pop(note.walk_id, None)
            self._stats["walks_ended"] += 1
            return
        if note.lat is None or note.lon is None:
            self.walks.setdefault(note.walk_id, _Walk(district))
            return
        fix = Fix(
            note.lat, note.lon, note.ts_ms or now_ms(), note.accuracy_m, note.heading_deg, note.speed_mps
        )
        await self.position(note.walk_id, district, fix, lamps=note.lamps)

    async def _on_positions(self, note: WalkPositions) -> None:
        """A batch of positions from the API, in their order (entries that could not be read
        are counted; the rest of the batch goes on)."""
        if note.unreadable:
            self._stats["notify_handler_errors"] += note.unreadable
            log.warning("walk_positions_dropped", count=note.unreadable)
        for p in note.positions:
            # A district in the entry: the API placed the position in the service area already.
            district = p.district or self._devices.district_near(p.lat, p.lon)
            if district not in self._owned:
                continue
            fix = Fix(p.lat, p.lon, p.ts_ms, p.accuracy_m, p.heading_deg, p.speed_mps)
            await self.position(p.walk_id, district, fix, placed=bool(p.district), lamps=p.lamps)

    async def position(
        self,
        walk_id: str,
        district: str,
        fix: Fix,
        *,
        placed: bool = False,
        lamps: Sequence[str] | None = None,
    ) -> int:
        """Check a position and brighten its lamps. ``lamps``: the API's answer for this position
        (the same rule with the heading), used when the verdict keeps the corridor."""
        walk = self.walks.setdefault(walk_id, _Walk(district))
        now = now_ms()
        walk.track, verdict = advance(
            walk.track, fix, now, self._cfg.positions, self._cfg.gazetteer, placed=placed
        )
        walk.last_ms = now
        self._stats["walk_positions"] += 1
        if verdict.reason:
            # The reason is counted and stored with the position; the coordinates are not logged.
            self._reasons[verdict.reason.split(":")[0]] += 1
            self._outbox.writes.put(PositionVerdict(walk_id, fix.ts_ms, verdict.accepted, verdict.reason))
            log.debug("walk_position", walk=walk_id, accepted=verdict.accepted, reason=verdict.reason)
        if not verdict.accepted:
            self._stats["walk_positions_refused"] += 1
            return 0
        if lamps is None or not verdict.use_corridor:
            heading = fix.heading_deg if verdict.use_corridor else None
            speed = fix.speed_mps if verdict.use_corridor else None
            index = self._devices.index
            lamps = lamps_for_walker(index, fix.lat, fix.lon, heading, speed) if len(index) else ()
        return await self.brighten(walk_id, lamps)

    async def on_beacon(self, blinker_id: str, token_hash: str, ts_ms: int, now: int) -> None:
        """A blinker sensed a resident's beacon: brighten the lamps around it."""
        device = self._devices.get(blinker_id)
        if device is None:
            self._stats["beacon_unknown_device"] += 1
            return
        if device.kind != BEACON_SENSOR_KIND:
            # Only a blinker senses the app's beacon; a lamp's sighting would command its neighbours.
            self._stats["beacon_not_blinker"] += 1
            log.warning("beacon_refused_not_a_blinker", device=blinker_id, kind=device.kind)
            return
        if not beacon_is_fresh(ts_ms, now):
            self._reasons["beacon stale"] += 1
            return
        lamps = lamps_for_beacon(self._devices.index, device.lat, device.lon, device.paired)
        self._stats["beacon_sightings"] += 1
        await self.brighten(beacon_source(token_hash), lamps)

    async def brighten(self, source: str, lamp_ids: Sequence[str]) -> int:
        """Command the lamps among `lamp_ids` whose hold for `source` needs (re)newing."""
        policy = self._cfg.holds
        cmds = [
            self._outbox.command(lamp_id, "set_level", "walk", source, policy.hold_s, policy.level)
            for lamp_id in self.holds.plan(source, lamp_ids, now_ms())
        ]
        await self._outbox.send_many(cmds, wait=False)
        return sum(1 for cmd in cmds if cmd is not None)

    async def lamp_back(self, lamp_id: str) -> int:
        """A lamp came (back) online, maybe on another broker node: its live walk and beacon
        holds are sent again for the time they have left (the commands of its gap were lost);
        returns how many."""
        level = self._cfg.holds.level
        cmds = [
            self._outbox.command(lamp_id, "set_level", "walk", source, left_s, level)
            for source, left_s in self.holds.on_lamp(lamp_id, now_ms())
        ]
        await self._outbox.send_many(cmds, wait=False)
        return sum(1 for cmd in cmds if cmd is not None)

    async def housekeeping(self) -> None:
        """Every few seconds: drop expired holds and walks idle for long."""
        now = now_ms()
        # Expired holds are harmless (a lamp whose hold ran out is commanded again either way) and
        # a pass over them costs ~1 ms at 1,000 walks: every few seconds, not every tick.
        if now < self._housekeeping_due_ms:
            return
        self._housekeeping_due_ms = now + HOUSEKEEPING_EVERY_MS
        self.holds.prune(now)
        idle_ms = WALK_IDLE_S * 1000
        for walk_id in [w for w, walk in self.walks.items() if walk.last_ms and now - walk.last_ms > idle_ms]:
            del self.walks[walk_id]

    def drop(self, districts: set[str]) -> None:
        """Forget the walks of districts given up."""
        for walk_id in [w for w, walk in self.walks.items() if walk.district in districts]:
            del self.walks[walk_id]

    async def reconcile(self, db: DbThread, districts: list[str]) -> None:
        """Take up the active walks of these districts from the tables (their latest position)."""
        for w in await db.call(active_walks, districts, float(self._cfg.holds.hold_s)):
            if w.district is None:
                continue
            self.walks.setdefault(w.walk_id, _Walk(w.district))
            if w.lat is not None and w.lon is not None and w.ts_ms is not None:
                fix = Fix(w.lat, w.lon, w.ts_ms, w.accuracy_m, w.heading_deg, w.speed_mps)
                await self.position(w.walk_id, w.district, fix)
