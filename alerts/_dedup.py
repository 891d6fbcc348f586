"""Dedup and correlation: one alert per incident, not one per message.

- A second SOS from the same resident within 120 s of the previous one updates that alert
  (issue #2); later ones open a new alert.
- A repeated fault of one device (same kind, device and fault code) updates its one active
  alert with a count (issue #2, #4); there is no time window, the alert lives until resolved.
- A device has at most ``MAX_OPEN_FAULTS_PER_DEVICE`` (8) active alerts of a kind it reports codes
  for (``lamp_fault``; ``tamper`` events with a code): a new code beyond them is folded into the
  device's one ``tamper`` alert ``fault_code_flood`` (its count says how many codes were folded),
  so a device naming ever new codes cannot bury the console.
- Many lamps of one neighbourhood going offline within 2 minutes (issue #4) become one
  `mass_outage` alert listing them, its ``count`` the number of its lamps; the device_offline
  alerts it covers are cancelled as superseded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from alerts._errors import InvalidAlertData
from alerts._lifecycle import CancelReason, cancel
from alerts._model import (
    DEVICE_KINDS,
    Alert,
    AlertKind,
    Event,
    EventAction,
    Place,
    Position,
    new_alert,
    require_aware,
    with_event,
)

# Issue #2: "a second SOS from the same resident within 120 s updates the open alert".
SOS_REPEAT_WINDOW_S = 120.0


def _last_report_at(alert: Alert) -> datetime:
    for event in reversed(alert.timeline):
        if event.action in (EventAction.CREATED, EventAction.REPEATED):
            return event.at
    return alert.created_at


def merge_sos(
    active_alerts: Iterable[Alert],
    *,
    resident_id: str,
    position: Position,
    place: Place,
    now: datetime,
    new_alert_id: str,
    window_s: float = SOS_REPEAT_WINDOW_S,
) -> tuple[Alert, bool]:
    """Fold an SOS into the resident's active SOS from the last `window_s`, or open one; True if new."""
    at = require_aware(now, "now")
    since = at - timedelta(seconds=window_s)
    candidates = [
        alert
        for alert in active_alerts
        if alert.kind is AlertKind.SOS
        and alert.is_active
        and alert.source_id == resident_id
        and since <= _last_report_at(alert) <= at
    ]
    actor = f"resident:{resident_id}"
    if candidates:
        alert = max(candidates, key=_last_report_at)
        event = Event(at=at, actor=actor, action=EventAction.REPEATED, note=f"SOS #{alert.count + 1}")
        merged = with_event(alert, event, track=(*alert.track, position), place=place, count=alert.count + 1)
        return merged, False
    created = new_alert(
        alert_id=new_alert_id,
        kind=AlertKind.SOS,
        place=place,
        source_id=resident_id,
        now=at,
        actor=actor,
        track=(position,),
    )
    return created, True


def fold_sos_press(alert: Alert, *, position: Position, place: Place) -> Alert:
    """A press over the app's rate limit folded into its open SOS: one more press and the latest
    position, without a timeline entry (the operator needs where, not one line per press)."""
    return replace(alert, track=(*alert.track, position), place=place, count=alert.count + 1)


def merge_fault(
    active_alerts: Iterable[Alert],
    *,
    kind: AlertKind,
    device_id: str,
    fault_code: str,
    place: Place,
    now: datetime,
    new_alert_id: str,
) -> tuple[Alert, bool]:
    """Count a device report into its one active alert (same kind, device, fault code), or open one."""
    if kind not in DEVICE_KINDS:
        raise InvalidAlertData(f"merge_fault takes a device alert kind, got {kind.value!r}")
    at = require_aware(now, "now")
    for alert in active_alerts:
        if (
            alert.kind is kind
            and alert.is_active
            and alert.source_id == device_id
            and alert.fault_code == fault_code
        ):
            event = Event(at=at, actor=f"device:{device_id}", action=EventAction.REPEATED, note=fault_code)
            return with_event(alert, event, count=alert.count + 1), False
    created = new_alert(
        alert_id=new_alert_id,
        kind=kind,
        place=place,
        source_id=device_id,
        now=at,
        actor=f"device:{device_id}",
        device_ids=(device_id,),
        fault_code=fault_code,
    )
    return created, True


# A device's open lamp_fault alerts are bounded: honest lamps report a handful of distinct faults; a
# device naming ever new codes (each one a valid code) is folded into one tamper alert.
MAX_OPEN_FAULTS_PER_DEVICE = 8
FAULT_FLOOD_CODE = "fault_code_flood"
# While the flood goes on its alert's count grows with every fold, its timeline by one event per
# this many seconds at most (the alert stays small however long the flood lasts).
FAULT_FLOOD_EVENT_EVERY_S = 60.0


def merge_device_fault(
    active_alerts: Iterable[Alert],
    *,
    device_id: str,
    fault_codes: Iterable[str],
    place: Place,
    now: datetime,
    new_alert_id: Callable[[], str],
    kind: AlertKind = AlertKind.LAMP_FAULT,
    cap: int = MAX_OPEN_FAULTS_PER_DEVICE,
) -> list[Alert]:
    """Count a device's reported codes into its alerts of ``kind``, at most ``cap`` of them open.

    ``active_alerts`` are the device's active alerts (``kind`` and tamper at least). Each code with
    an open alert counts into it; a new code opens one while fewer than ``cap`` are open; the codes
    beyond are folded into the device's ``tamper``/``fault_code_flood`` alert (opened once, then its
    count grows by the number folded; a timeline event naming them at most every
    ``FAULT_FLOOD_EVENT_EVERY_S``). Returns the changed
    or new alerts, each once, in the order they should be saved.
    """
    at = require_aware(now, "now")
    current = {a.id: a for a in active_alerts if a.is_active and a.source_id == device_id}
    changed: dict[str, Alert] = {}
    folded: list[str] = []
    for code in fault_codes:
        faults = [a for a in current.values() if a.kind is kind and a.fault_code != FAULT_FLOOD_CODE]
        if len(faults) >= cap and not any(a.fault_code == code for a in faults):
            folded.append(code)
            continue
        merged, _ = merge_fault(
            current.values(),
            kind=kind,
            device_id=device_id,
            fault_code=code,
            place=place,
            now=at,
            new_alert_id=new_alert_id(),
        )
        current[merged.id] = changed[merged.id] = merged
    if folded:
        flood = next(
            (a for a in current.values() if a.kind is AlertKind.TAMPER and a.fault_code == FAULT_FLOOD_CODE),
            None,
        )
        shown = ", ".join(folded[:8]) + (f" and {len(folded) - 8} more" if len(folded) > 8 else "")
        note = f"{len(folded)} more fault codes beyond {cap} open: {shown}"
        actor = f"device:{device_id}"
        if flood is None:
            created = new_alert(
                alert_id=new_alert_id(),
                kind=AlertKind.TAMPER,
                place=place,
                source_id=device_id,
                now=at,
                actor=actor,
                device_ids=(device_id,),
                fault_code=FAULT_FLOOD_CODE,
            )
            flood = with_event(
                created,
                Event(at=at, actor=actor, action=EventAction.REPEATED, note=note),
                count=len(folded),
            )
        elif at - _last_report_at(flood) < timedelta(seconds=FAULT_FLOOD_EVENT_EVERY_S):
            flood = replace(flood, count=flood.count + len(folded))
        else:
            event = Event(at=at, actor=actor, action=EventAction.REPEATED, note=note)
            flood = with_event(flood, event, count=flood.count + len(folded))
        changed[flood.id] = flood
    return list(changed.values())


@dataclass(frozen=True, slots=True)
class OfflineReport:
    """A lamp seen going offline (last will, or silent too long)."""

    device_id: str
    dong_code: str
    at: datetime

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", require_aware(self.at, "OfflineReport.at"))


@dataclass(frozen=True, slots=True)
class MassOutagePolicy:
    """When offline lamps of one neighbourhood count as a mass outage."""

    window_s: float = 120.0  # issue #4: "many lamps of one neighbourhood go offline within 2 minutes"
    min_lamps: int = 10  # this many lamps is an outage whatever the neighbourhood's size
    min_fraction: float = 0.3  # ... or this share of the neighbourhood's lamps,
    min_lamps_for_fraction: int = 3  # but never fewer than this many (2 of 5 lamps is not an outage)
    district_min_areas: int = 2  # neighbourhood outages of one district starting together: one alert


DEFAULT_MASS_OUTAGE = MassOutagePolicy()


@dataclass(frozen=True, slots=True)
class OutageCluster:
    """Lamps of one neighbourhood that went offline together."""

    dong_code: str
    device_ids: tuple[str, ...]  # sorted, distinct
    first_at: datetime
    last_at: datetime


def detect_mass_outages(
    reports: Iterable[OfflineReport],
    now: datetime,
    lamps_per_dong: Mapping[str, int] | None = None,
    policy: MassOutagePolicy = DEFAULT_MASS_OUTAGE,
) -> tuple[OutageCluster, ...]:
    """The neighbourhoods whose lamps went offline in the `policy.window_s` before `now`, by dong code.

    `reports` are the lamps still offline (drop a lamp's report when it comes back); a lamp
    reported twice counts once, and reports later than `now` are ignored. A neighbourhood is
    in outage with `min_lamps` lamps, or with `min_fraction` of `lamps_per_dong[dong]` lamps
    (at least `min_lamps_for_fraction`). Once an outage alert is open, `merge_mass_outage`
    keeps adding lamps to it; `covering_outage` tells ingest not to open single alerts.
    """
    at = require_aware(now, "now")
    since = at - timedelta(seconds=policy.window_s)
    latest: dict[str, dict[str, datetime]] = {}
    for report in reports:
        if since <= report.at <= at:
            per_dong = latest.setdefault(report.dong_code, {})
            previous = per_dong.get(report.device_id)
            per_dong[report.device_id] = report.at if previous is None else max(previous, report.at)
    clusters: list[OutageCluster] = []
    for dong_code in sorted(latest):
        devices = latest[dong_code]
        count = len(devices)
        total = (lamps_per_dong or {}).get(dong_code, 0)
        by_fraction = (
            total > 0 and count >= policy.min_lamps_for_fraction and count >= policy.min_fraction * total
        )
        if count >= policy.min_lamps or by_fraction:
            clusters.append(
                OutageCluster(
                    dong_code=dong_code,
                    device_ids=tuple(sorted(devices)),
                    first_at=min(devices.values()),
                    last_at=max(devices.values()),
                )
            )
    return tuple(clusters)


def covering_outage(active_alerts: Iterable[Alert], dong_code: str) -> Alert | None:
    """The active mass outage of a neighbourhood, if there is one: its own (``source_id``), or a
    district's outage listing it among its ``areas``."""
    for alert in active_alerts:
        if (
            alert.kind is AlertKind.MASS_OUTAGE
            and alert.is_active
            and (alert.source_id == dong_code or dong_code in alert.areas)
        ):
            return alert
    return None


def merge_mass_outage(
    active_alerts: Iterable[Alert],
    cluster: OutageCluster,
    *,
    place: Place,
    now: datetime,
    new_alert_id: str,
) -> tuple[Alert, bool]:
    """Add a cluster's lamps to the neighbourhood's active mass outage, or open one; True if new.
    The outage's ``count`` is the number of lamps it lists."""
    at = require_aware(now, "now")
    existing = covering_outage(active_alerts, cluster.dong_code)
    if existing is not None:
        added = sorted(set(cluster.device_ids) - set(existing.device_ids))
        if not added:
            return existing, False
        event = Event(
            at=at, actor="system", action=EventAction.LAMPS_ADDED, note=f"{len(added)} more lamps offline"
        )
        lamps = tuple(sorted((*existing.device_ids, *added)))
        return with_event(existing, event, device_ids=lamps, count=len(lamps)), False
    created = new_alert(
        alert_id=new_alert_id,
        kind=AlertKind.MASS_OUTAGE,
        place=place,
        source_id=cluster.dong_code,
        now=at,
        note=f"{len(cluster.device_ids)} lamps offline since {cluster.first_at.isoformat()}",
        device_ids=cluster.device_ids,
    )
    areas = () if cluster.dong_code.startswith("district:") else (cluster.dong_code,)
    return replace(created, count=len(cluster.device_ids), areas=areas), True


def suppress_covered(active_alerts: Iterable[Alert], outage: Alert, now: datetime) -> tuple[Alert, ...]:
    """The active device_offline alerts covered by `outage`, cancelled as superseded by it."""
    covered = set(outage.device_ids)
    return tuple(
        cancel(alert, now, "system", CancelReason.SUPERSEDED, superseded_by=outage.id)
        for alert in active_alerts
        if alert.kind is AlertKind.DEVICE_OFFLINE and alert.is_active and alert.source_id in covered
    )
