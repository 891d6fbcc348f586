"""Checks on a resident's reported positions before any lamp is commanded for them (pure).

A position is refused (never acted on) or down-weighted (acted on for the lamps around it only,
not for the corridor ahead, because its heading or place is not trusted), always with a reason
that is stored next to it. A walk keeps its last accepted fix; an implied speed above
``max_speed_mps`` from it is an impossible jump and is refused, unless the new place persists:
after ``reanchor_after`` refused fixes that agree with each other the walk re-anchors there.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

from geo import Gazetteer, point_distance_m

# Seoul lies at 37.4-37.7 N, 126.7-127.2 E; the box is South Korea (same as broker payloads), a
# cheap first check before the gazetteer's answer on the service area.
LAT_RANGE = (33.0, 39.0)
LON_RANGE = (124.0, 132.0)


@functools.cache
def service_area() -> Gazetteer:
    """The vendored Seoul gazetteer, loaded once (about 0.2 s) on the first position checked."""
    return Gazetteer.load()


@dataclass(frozen=True, slots=True)
class PositionPolicy:
    """Limits on positions; the figures are those of issue #5 unless said otherwise."""

    max_speed_mps: float = 15.0  # issue #5: faster than 15 m/s sustained is impossible on foot
    max_accuracy_m: float = 100.0  # issue #5: accuracy worse than 100 m is refused
    near_only_accuracy_m: float = 50.0  # worse than this: near lamps only (heading unreliable)
    max_age_s: float = 30.0  # older than the walk hold time: the lamps would be wrong already
    near_only_age_s: float = 10.0  # a late fix: the walker has moved on, skip the corridor
    max_future_s: float = 30.0  # phone clocks drift a little; more is a broken clock
    reanchor_after: int = 3  # refused jumps in a row that agree with each other: re-anchor


@dataclass(frozen=True, slots=True)
class Fix:
    """One reported position of a walker."""

    lat: float
    lon: float
    ts_ms: int
    accuracy_m: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a fix: refuse it, or use it (maybe only for the lamps around it)."""

    accepted: bool
    near_only: bool = False  # down-weighted: brighten the lamps around it, not the corridor ahead
    reason: str | None = None

    @property
    def use_corridor(self) -> bool:
        """True when heading and speed may be used for the lamps ahead."""
        return self.accepted and not self.near_only


@dataclass(frozen=True, slots=True)
class Track:
    """What a walk remembers of its positions: the anchor and the refused jumps since."""

    anchor: Fix | None = None
    candidate: Fix | None = None  # the last refused jump
    refused_in_row: int = 0


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _implied_speed_mps(a: Fix, b: Fix) -> float:
    """Speed between two fixes, after giving each its reported accuracy as slack."""
    dt_s = (b.ts_ms - a.ts_ms) / 1000.0
    slack_m = (a.accuracy_m or 0.0) + (b.accuracy_m or 0.0)
    moved_m = max(0.0, point_distance_m(a.lat, a.lon, b.lat, b.lon) - slack_m)
    if dt_s <= 0.0:
        return math.inf if moved_m > 0.0 else 0.0
    return moved_m / dt_s


def check_fix(
    fix: Fix,
    now_ms: int,
    policy: PositionPolicy = PositionPolicy(),
    area: Gazetteer | None = None,
    *,
    placed: bool = False,
) -> Verdict:
    """The checks that need no history: finite, in the service area, accurate enough, not stale or future.

    The service area is the gazetteer's (``area``, the vendored Seoul one by default): a point
    inside a district or snapped to one (``Location.inside``), the same rule as the API's.
    ``placed``: the API has already placed the fix in a district by that rule (a position it
    stored names its district), so the gazetteer is not asked again.
    """
    if not (_finite(fix.lat) and _finite(fix.lon)):
        return Verdict(False, reason="position is not a finite number")
    if not (LAT_RANGE[0] <= fix.lat <= LAT_RANGE[1] and LON_RANGE[0] <= fix.lon <= LON_RANGE[1]):
        return Verdict(False, reason="position outside the service country")
    gazetteer = area or service_area()
    # Near a border or outside: the full answer.
    if not placed and gazetteer.quick_district(fix.lat, fix.lon) is None:
        loc = gazetteer.locate(fix.lat, fix.lon)
        if not loc.inside:
            return Verdict(
                False,
                reason=f"position outside the service area (Seoul): {loc.distance_outside_m:.0f} m "
                "from the nearest district",
            )
    if fix.accuracy_m is not None and not (_finite(fix.accuracy_m) and fix.accuracy_m >= 0.0):
        return Verdict(False, reason="accuracy is not a non-negative number")
    if fix.accuracy_m is not None and fix.accuracy_m > policy.max_accuracy_m:
        return Verdict(
            False, reason=f"accuracy {fix.accuracy_m:.0f} m worse than {policy.max_accuracy_m:.0f} m"
        )
    age_s = (now_ms - fix.ts_ms) / 1000.0
    if age_s > policy.max_age_s:
        return Verdict(False, reason=f"stale: {age_s:.0f} s old")
    if -age_s > policy.max_future_s:
        return Verdict(False, reason=f"timestamp {-age_s:.0f} s in the future")
    reasons: list[str] = []
    if fix.accuracy_m is not None and fix.accuracy_m > policy.near_only_accuracy_m:
        reasons.append(f"accuracy {fix.accuracy_m:.0f} m: near lamps only")
    if age_s > policy.near_only_age_s:
        reasons.append(f"late by {age_s:.0f} s: near lamps only")
    moving = fix.heading_deg is not None or fix.speed_mps is not None
    if moving and not (_finite(fix.heading_deg) and _finite(fix.speed_mps)):
        reasons.append("heading or speed missing or not finite: near lamps only")
    elif fix.speed_mps is not None and not (0.0 <= fix.speed_mps <= policy.max_speed_mps):
        reasons.append(f"reported speed {fix.speed_mps:.1f} m/s: near lamps only")
    if reasons:
        return Verdict(True, near_only=True, reason="; ".join(reasons))
    return Verdict(True)


def advance(
    track: Track,
    fix: Fix,
    now_ms: int,
    policy: PositionPolicy = PositionPolicy(),
    area: Gazetteer | None = None,
    *,
    placed: bool = False,
) -> tuple[Track, Verdict]:
    """Check `fix` against itself and the walk's history; returns the new track and the verdict
    (``placed``: see `check_fix`)."""
    verdict = check_fix(fix, now_ms, policy, area, placed=placed)
    if not verdict.accepted:
        return track, verdict
    anchor = track.anchor
    if anchor is not None and fix.ts_ms < anchor.ts_ms:
        return track, Verdict(False, reason="older than the last accepted position")
    if anchor is None or _implied_speed_mps(anchor, fix) <= policy.max_speed_mps:
        return Track(anchor=fix), verdict
    speed = _implied_speed_mps(anchor, fix)
    agrees = track.candidate is not None and _implied_speed_mps(track.candidate, fix) <= policy.max_speed_mps
    refused = track.refused_in_row + 1 if agrees else 1
    if refused >= policy.reanchor_after:
        reason = f"re-anchored after {refused} positions away from the last one: near lamps only"
        return Track(anchor=fix), Verdict(True, near_only=True, reason=reason)
    jump = Verdict(False, reason=f"impossible jump: {speed:.0f} m/s from the last accepted position")
    return replace(track, candidate=fix, refused_in_row=refused), jump
