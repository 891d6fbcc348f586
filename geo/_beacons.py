"""Which lamps a beacon sighting brightens (pure).

A blinker senses the safety app's Bluetooth beacon and reports the sighting (an ``event`` of type
``beacon``); the lamps within ``BEACON_RADIUS_M`` of the blinker brighten as for a walker, with
the blinker's paired lamp first (the one mounted with it, issue #5: "within 30 m"). Only a
blinker's sighting counts: a lamp's would command its neighbours. A sighting older than
``BEACON_MAX_AGE_S`` describes a resident who has moved on and brightens nothing.
"""

from __future__ import annotations

from geo._lamps import LampIndex

# issue #5: a beacon sighting brightens the lamps "within 30 m" of the blinker.
BEACON_RADIUS_M = 30.0
# A beacon event older than this describes a resident who has moved on.
BEACON_MAX_AGE_S = 30.0
# The device kind whose sightings count.
BEACON_SENSOR_KIND = "blinker"


def beacon_is_fresh(seen_ms: int, now_ms: int, max_age_s: float = BEACON_MAX_AGE_S) -> bool:
    """True when a sighting at `seen_ms` (epoch ms) is recent enough to act on at `now_ms`."""
    return now_ms - seen_ms <= max_age_s * 1000


def lamps_for_beacon(
    index: LampIndex,
    lat: float,
    lon: float,
    paired: str | None = None,
    radius_m: float = BEACON_RADIUS_M,
) -> list[str]:
    """The lamps a sighting by the blinker at (lat, lon) brightens: its paired lamp first (when it
    is a lamp of `index`, however far), then the lamps within `radius_m`, nearest first, each once."""
    lamps = list(index.within(lat, lon, radius_m).ids) if len(index) else []
    if paired and paired in index:
        lamps = [paired, *(lamp for lamp in lamps if lamp != paired)]
    return lamps
