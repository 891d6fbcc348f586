"""``streetlight locate``: which district and neighbourhood a point is in."""

from __future__ import annotations

import argparse
import functools
import json
import sys

from geo import Gazetteer

HELP = "Print the district and neighbourhood of a latitude/longitude as one JSON object."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare --lat and --lon (strings, so a bad value gets our own message and exit 2)."""
    parser.add_argument("--lat", required=True, help="latitude in degrees (WGS84), e.g. 37.5663")
    parser.add_argument("--lon", required=True, help="longitude in degrees (WGS84), e.g. 126.9779")


@functools.cache
def _gazetteer() -> Gazetteer:
    # Loading takes ~0.2 s; one process (a test session) that locates many points loads once.
    return Gazetteer.load()


def _parse_degrees(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    """Locate the point; exit 0 inside or outside Seoul, 2 for invalid coordinates."""
    try:
        lat = _parse_degrees("latitude", args.lat)
        lon = _parse_degrees("longitude", args.lon)
        location = _gazetteer().locate(lat, lon)
    except ValueError as exc:
        print(f"streetlight locate: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(location.to_json_dict(), ensure_ascii=False))
    return 0
