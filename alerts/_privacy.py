"""Privacy rules for residents' positions and the audit trail (docs/privacy.md): pure, no I/O.

- Coarsening: an exact position becomes one rounded to ``COARSE_DECIMALS`` decimal degrees
  (0.001 deg: ~111 m of latitude, ~88 m of longitude in Seoul), and the alert's place loses
  what would pin it again (the nearest lamps and their address); district and neighbourhood stay.
- Deadlines: a point is exact until its time plus the SOS retention; a deleted resident's closed
  alert is unlinked once its legal hold after the close has passed; an open one never is.
- Unlinking: the alert no longer names the resident (source, timeline actors) and every point
  is coarsened, whatever its age.
- Pseudonyms: audit rows name a resident by an HMAC of the id, never the id.
- The audit chain: each row's hash covers its content and the previous row's hash, so changing,
  removing or inserting a row breaks every later link (`verify_chain`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts._model import Alert, AlertKind, AlertState, Event, Place, Position

COARSE_DECIMALS = 3
COARSE_ACCURACY_M = 111.0  # metres one rounding step of latitude spans, about
DELETED_SOURCE = "deleted"  # an unlinked alert's source, and the resident named in its timeline
_RESIDENT_ACTOR = "resident:"
_POSITION_KEYS = ("lat", "lon")
CLOSED_STATES = (AlertState.RESOLVED, AlertState.CANCELLED)
GENESIS_HASH = "0" * 64  # the "previous hash" of the first audit row


def coarsen(value: float, decimals: int = COARSE_DECIMALS) -> float:
    """A coordinate rounded to ``decimals`` decimal degrees (idempotent)."""
    return round(float(value), decimals)


def is_coarse(value: float, decimals: int = COARSE_DECIMALS) -> bool:
    """True when the coordinate carries no more than ``decimals`` decimals."""
    return coarsen(value, decimals) == float(value)


def coarsen_place(place: Place, decimals: int = COARSE_DECIMALS) -> Place:
    """The place rounded, without the nearest lamps and their address (they would pin it)."""
    return replace(
        place,
        lat=coarsen(place.lat, decimals),
        lon=coarsen(place.lon, decimals),
        nearest_lamps=(),
        address="",
    )


def coarsen_details(details: Mapping[str, Any], decimals: int = COARSE_DECIMALS) -> dict[str, Any]:
    """A timeline event's details with its ``lat``/``lon`` rounded (strings stay strings)."""
    out = dict(details)
    for key in _POSITION_KEYS:
        value = out.get(key)
        if value is None:
            continue
        try:
            rounded = coarsen(float(value), decimals)
        except (TypeError, ValueError):
            out[key] = ""
            continue
        out[key] = f"{rounded:.{decimals}f}" if isinstance(value, str) else rounded
    return out


def coarsen_document(data: Any, decimals: int = COARSE_DECIMALS) -> Any:
    """Any JSON value with every ``lat``/``lon`` in it rounded and every ``nearest_lamps`` emptied
    (with the ``address`` beside a position): for a stored document the alert model cannot read,
    so no copy escapes coarsening because of its shape."""
    if isinstance(data, list):
        return [coarsen_document(v, decimals) for v in data]
    if not isinstance(data, dict):
        return data
    out = {k: coarsen_document(v, decimals) for k, v in data.items()}
    has_position = any(k in out for k in _POSITION_KEYS)
    for key in _POSITION_KEYS:
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = coarsen(value, decimals)
        elif isinstance(value, str):
            out.update({key: coarsen_details({key: value}, decimals)[key]})
    if "nearest_lamps" in out:
        out["nearest_lamps"] = []
    if has_position and isinstance(out.get("address"), str):
        out["address"] = ""
    return out


def _coarsen_event(event: Event, decimals: int) -> Event:
    if not any(k in _POSITION_KEYS for k, _ in event.details):
        return event
    details = coarsen_details(dict(event.details), decimals)
    return replace(event, details=tuple((k, str(v)) for k, v in details.items()))


def holds_positions(alert: Alert) -> bool:
    """True for alerts whose positions are a resident's (an SOS); a lamp's place is not personal."""
    return alert.kind is AlertKind.SOS


def coarsen_alert(alert: Alert, cutoff: datetime, decimals: int = COARSE_DECIMALS) -> Alert:
    """The alert with every position taken before ``cutoff`` coarsened: the place (taken at
    creation), track points and timeline events by their own time. Non-SOS alerts are returned
    unchanged, and so is an alert with nothing to coarsen (the same object)."""
    if not holds_positions(alert):
        return alert
    place = alert.place
    if alert.created_at < cutoff:
        place = coarsen_place(place, decimals)
    track = tuple(
        replace(
            p,
            lat=coarsen(p.lat, decimals),
            lon=coarsen(p.lon, decimals),
            accuracy_m=max(p.accuracy_m or 0.0, COARSE_ACCURACY_M),
        )
        if p.at < cutoff
        else p
        for p in alert.track
    )
    timeline = tuple(_coarsen_event(e, decimals) if e.at < cutoff else e for e in alert.timeline)
    if place == alert.place and track == alert.track and timeline == alert.timeline:
        return alert
    return replace(alert, place=place, track=track, timeline=timeline)


def fully_coarse(alert: Alert, cutoff: datetime) -> bool:
    """True when nothing of the alert can still become coarser: its last change is before
    ``cutoff`` (so `coarsen_alert` with that cutoff has coarsened every point)."""
    last = max([alert.created_at, *(e.at for e in alert.timeline), *(p.at for p in alert.track)])
    return last < cutoff


def closed_at(alert: Alert) -> datetime | None:
    """When the incident closed (resolved or cancelled), None while it is open."""
    if alert.state not in CLOSED_STATES:
        return None
    return alert.timeline[-1].at if alert.timeline else alert.created_at


def unlink_due(alert: Alert, hold: timedelta, now: datetime) -> bool:
    """True when a deleted resident's alert may be unlinked: closed, and its hold has passed."""
    closed = closed_at(alert)
    return closed is not None and closed + hold <= now


def unlink_alert(alert: Alert, resident_id: str, decimals: int = COARSE_DECIMALS) -> Alert:
    """The alert no longer tied to ``resident_id``: its source and the timeline's actors name
    `DELETED_SOURCE` (notes mentioning the id lose it) and every position is coarsened."""
    far = datetime.max.replace(tzinfo=UTC)
    coarse = coarsen_alert(alert, far, decimals)
    actor = _RESIDENT_ACTOR + resident_id
    timeline = tuple(
        replace(
            e,
            actor=_RESIDENT_ACTOR + DELETED_SOURCE if e.actor == actor else e.actor,
            note=e.note.replace(resident_id, DELETED_SOURCE),
            details=tuple((k, v.replace(resident_id, DELETED_SOURCE)) for k, v in e.details),
        )
        for e in coarse.timeline
    )
    source = DELETED_SOURCE if coarse.source_id == resident_id else coarse.source_id
    return replace(coarse, source_id=source, timeline=timeline)


def coarse_track(track: Iterable[Position], decimals: int = COARSE_DECIMALS) -> tuple[Position, ...]:
    """Every point of a track coarsened."""
    return tuple(replace(p, lat=coarsen(p.lat, decimals), lon=coarsen(p.lon, decimals)) for p in track)


# --------------------------------------------------------------------------- pseudonyms


def resident_pseudonym(key: bytes, resident_id: str) -> str:
    """How audit rows name a resident: an HMAC-SHA256 of the id under ``key`` (never the id)."""
    digest = hmac.new(key, b"audit-subject:" + resident_id.encode(), hashlib.sha256).hexdigest()
    return "rp_" + digest[:32]


# --------------------------------------------------------------------------- the audit chain


def _canonical_time(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def audit_row_hash(
    prev_hash: str,
    *,
    ts: datetime,
    actor: str,
    action: str,
    subject_kind: str,
    subject_id: str,
    details: Mapping[str, Any],
) -> str:
    """The hash of one audit row: SHA-256 over the previous row's hash and this row's content
    (time to the microsecond in UTC, details as canonical JSON)."""
    body = json.dumps(
        [
            prev_hash,
            _canonical_time(ts),
            actor,
            action,
            subject_kind,
            subject_id,
            details,
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=str,
    )
    return hashlib.sha256(body.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit row as stored, for `verify_chain`."""

    id: int
    ts: datetime
    actor: str
    action: str
    subject_kind: str
    subject_id: str
    details: Mapping[str, Any]
    prev_hash: str | None
    row_hash: str | None


@dataclass(frozen=True, slots=True)
class ChainReport:
    """What `verify_chain` found: rows checked, and the first broken row (None: intact)."""

    rows: int
    broken_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_at is None


def verify_chain(rows: Iterable[AuditRow], *, anchor: str | None = None) -> ChainReport:
    """Check rows in id order: each links to the previous row's hash and its own hash matches its
    content. ``anchor``: the hash the first row must link to (None: whatever the first row says,
    so a trail whose oldest rows were deleted by retention still verifies from where it starts)."""
    expected_prev = anchor
    count = 0
    for row in rows:
        count += 1
        if row.prev_hash is None or row.row_hash is None:
            return ChainReport(count, row.id, "row has no hash")
        if expected_prev is not None and row.prev_hash != expected_prev:
            return ChainReport(count, row.id, "does not link to the previous row (a row removed or inserted)")
        computed = audit_row_hash(
            row.prev_hash,
            ts=row.ts,
            actor=row.actor,
            action=row.action,
            subject_kind=row.subject_kind,
            subject_id=row.subject_id,
            details=row.details,
        )
        if computed != row.row_hash:
            return ChainReport(count, row.id, "content does not match its hash (row changed)")
        expected_prev = row.row_hash
    return ChainReport(count)
