"""Pure geography core: Seoul's districts and neighbourhoods, EPSG:5186, and a lamp index.

No I/O besides reading the vendored data files in the loaders; no clocks; nothing mutable.
"""

from geo._beacons import (
    BEACON_MAX_AGE_S,
    BEACON_RADIUS_M,
    BEACON_SENSOR_KIND,
    beacon_is_fresh,
    lamps_for_beacon,
)
from geo._coords import check_latlon, distance_m, point_distance_m
from geo._gazetteer import BORDER_DISTANCE_M, SNAP_DISTANCE_M, Area, Gazetteer, Location, load_areas
from geo._lamps import (
    WALK_RADIUS_M,
    LampHits,
    LampIndex,
    LampsAhead,
    grid_direction,
    lamps_for_walker,
    reach_for_speed,
)
from geo._projection import to_latlon, to_metric
from geo._zones import SafetyZones, SmartLightBatch, Zone, load_safety_zones

__all__ = [
    "BEACON_MAX_AGE_S",
    "BEACON_RADIUS_M",
    "BEACON_SENSOR_KIND",
    "BORDER_DISTANCE_M",
    "SNAP_DISTANCE_M",
    "WALK_RADIUS_M",
    "Area",
    "Gazetteer",
    "LampHits",
    "LampIndex",
    "LampsAhead",
    "Location",
    "SafetyZones",
    "SmartLightBatch",
    "Zone",
    "beacon_is_fresh",
    "check_latlon",
    "distance_m",
    "grid_direction",
    "lamps_for_beacon",
    "lamps_for_walker",
    "load_areas",
    "load_safety_zones",
    "point_distance_m",
    "reach_for_speed",
    "to_latlon",
    "to_metric",
]
