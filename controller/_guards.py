"""A guard zone without a roster: is an SOS inside one of the data's zones during its patrol hours?

The seed's 15 guard zones are neighbourhoods (dongs), patrolled 21:00-02:30 Seoul time
(``geo.load_safety_zones``). The patrol runs past midnight, so the window wraps. A zone with a
roster follows its guards' shifts instead (`alerts.guards_on_duty`); this is the rule of the
guards' webhook for a zone nobody provisioned.
"""

from __future__ import annotations

import datetime as dt

from alerts import GUARDS, Alert, guards_notified
from alerts import SEOUL as KST
from geo import SafetyZones, Zone

__all__ = ["GUARDS", "KST", "guard_zone", "guards_notified", "on_patrol"]


def on_patrol(at: dt.datetime, start: dt.time, end: dt.time) -> bool:
    """True when `at` (aware) falls in the local patrol window [start, end), which may wrap midnight."""
    local = at.astimezone(KST).time()
    if start <= end:
        return start <= local < end
    return local >= start or local < end


def guard_zone(alert: Alert, zones: SafetyZones, at: dt.datetime) -> Zone | None:
    """The guard zone whose guards an SOS should reach now, or None."""
    if not alert.place.dong_code or not on_patrol(at, zones.patrol_start_local, zones.patrol_end_local):
        return None
    for zone in zones.guard_zones:
        if zone.dong_code == alert.place.dong_code:
            return zone
    return None
