"""Safe-village guards: is an SOS inside a guard patrol zone while the guards are on duty? (pure)

The seed's 15 guard zones are neighbourhoods (dongs), patrolled 21:00-02:30 Seoul time
(``geo.load_safety_zones``). The patrol runs past midnight, so the window wraps.
"""

from __future__ import annotations

import datetime as dt

from alerts import Alert, EventAction
from geo import SafetyZones, Zone

KST = dt.timezone(dt.timedelta(hours=9), "KST")  # Korea has no daylight saving time
GUARDS = "guards"  # the escalation detail naming a guard notification


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


def guards_notified(alert: Alert) -> bool:
    """True once the alert's timeline records the guard notification."""
    return any(e.action is EventAction.ESCALATED and e.detail("escalation") == GUARDS for e in alert.timeline)
