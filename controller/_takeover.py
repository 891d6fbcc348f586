"""Leases and reconciliation: which districts this controller acts for, and taking them up.

Every third of the lease time the controller renews its leases and its membership, and takes or
gives up districts as `controller._leases.plan_leases` says (`store.leases.lease_round`, one
database call). A district lost is dropped by every part at once (its alerts, blinks, walks and
commands in flight are the new owner's); a district taken is reconciled: its open alerts and
active walks are read from the tables (also after every reconnect of the database listener,
since anything notified while nobody listened is in the tables).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

from controller._leases import plan_leases
from controller._outbox import Outbox
from controller._sos import Sos
from controller._walks import Walks
from controller.config import ControllerConfig
from runtime.logs import get_logger
from store.dbthread import DbThread
from store.leases import lease_round, release_all

log = get_logger(__name__)


class Leases:
    """The district leases of one controller (``owned``, updated in place) and the takeover work."""

    def __init__(
        self,
        cfg: ControllerConfig,
        db: DbThread,
        owned: set[str],
        stats: Counter[str],
        *,
        sos: Sos,
        walks: Walks,
        outbox: Outbox,
    ) -> None:
        self._cfg = cfg
        self._db = db
        self.owned = owned
        self._stats = stats
        self._sos = sos
        self._walks = walks
        self._outbox = outbox
        self._ok_until = 0.0  # monotonic time until which the last renewal holds
        self._free_since: dict[str, float] = {}  # candidate district -> when first seen free
        self.renewed_once = False

    async def renew(self, *, reconcile_new: bool) -> None:
        """One lease round; districts lost are dropped, new ones reconciled (``reconcile_new``:
        the database listener is up, so nothing notified from now on is missed)."""
        cfg = self._cfg
        free_since = dict(self._free_since)

        def plan(holders: dict[str, str], members: int) -> tuple[Sequence[str], Sequence[str]]:
            p = plan_leases(
                cfg.owner, cfg.districts, holders, members, free_since, time.monotonic(), cfg.lease_ttl_s
            )
            return p.acquire, p.release

        try:
            got, holders = await self._db.call(lease_round, cfg.owner, cfg.lease_ttl_s, plan)
            self._ok_until = time.monotonic() + cfg.lease_ttl_s
        except Exception:
            if time.monotonic() < self._ok_until:
                raise
            got, holders = set(), {}  # cannot renew and the lease has run out: another may act now
            if self.owned:
                log.warning("leases_lost", reason="database_unreachable", districts=sorted(self.owned))
        mono = time.monotonic()
        for district in cfg.districts:
            if district in holders:
                self._free_since.pop(district, None)
            else:
                self._free_since.setdefault(district, mono)
        lost = self.owned - got
        new = got - self.owned
        if lost:
            log.info("districts_given_up", owner=cfg.owner, districts=sorted(lost))
            self._sos.drop(lost)
            self._walks.drop(lost)
            self._outbox.drop(lost)
        # In place (the parts and the metrics server hold this set), never empty in between.
        self.owned.difference_update(lost)
        self.owned.update(new)
        if new:
            log.info("districts_taken", owner=cfg.owner, districts=sorted(new))
            if reconcile_new:
                await self.reconcile(sorted(new))
        self.renewed_once = True

    async def reconcile(self, districts: list[str]) -> None:
        """Re-read what the tables say for these districts: open alerts and active walks."""
        if not districts:
            return
        await self._sos.reconcile(districts)
        await self._walks.reconcile(self._db, districts)
        self._stats["reconciled"] += 1

    async def release_all(self) -> None:
        """Give every lease and the membership up (a clean stop: another takes over at once)."""
        await self._db.call(release_all, sorted(self.owned), self._cfg.owner)
        self.owned.clear()
