"""Pure geography core: Seoul's districts and neighbourhoods, EPSG:5186, and a lamp index, a camera index.

No I/O besides reading the vendored data files in the loaders; no clocks; nothing mutable.
"""

from geo._beacons import (
    BEACON_MAX_AGE_S,
    BEACON_RADIUS_M,
    BEACON_SENSOR_KIND,
    beacon_is_fresh,
    lamps_for_beacon,
)
from geo._cameras import (
    CAMERA_RADIUS_M,
    CameraHit,
    CameraIndex,
    Facing,
    angle_between,
    bearing_deg,
    looks_towards,
    parse_facing,
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
    "CAMERA_RADIUS_M",
    "SNAP_DISTANCE_M",
    "WALK_RADIUS_M",
    "Area",
    "CameraHit",
    "CameraIndex",
    "Facing",
    "Gazetteer",
    "LampHits",
    "LampIndex",
    "LampsAhead",
    "Location",
    "SafetyZones",
    "SmartLightBatch",
    "Zone",
    "angle_between",
    "beacon_is_fresh",
    "bearing_deg",
    "check_latlon",
    "distance_m",
    "grid_direction",
    "lamps_for_beacon",
    "lamps_for_walker",
    "load_areas",
    "load_safety_zones",
    "looks_towards",
    "parse_facing",
    "point_distance_m",
    "reach_for_speed",
    "to_latlon",
    "to_metric",
]
