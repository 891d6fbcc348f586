"""Maintenance planning: which device alerts to open, count, resolve or cancel, from plain rows.

Ingest reads what these functions need (``store.maintenance``), calls them, and saves the
changes they return in order (``store.alerts.save_alert``); the rules themselves are the
other modules' (``merge_fault``, ``merge_device_fault``, ``detect_mass_outages``,
``resolve_recovered``; the day/night pass is in ``alerts/_daynight.py``). Pure: rows and ``now``
in, a list of `AlertChange` out, alert ids from the caller's ``new_alert_id``.

- **Faults** (`fault_reports`, `plan_fault_alerts`): a batch's fault events, and fault codes in a
  lamp's telemetry it had not reported before, become reports; each is merged into the device's
  one active alert for its kind and code (codes the device chooses capped per device by
  ``merge_device_fault``), and ``fault_cleared`` resolves the matching ``lamp_fault`` alerts.
  Reports of one device are applied in their order (a fault then its clear in one batch).
- **Offline and silent** (`dark_devices`, `plan_offline_alerts`): a device offline by its will is
  dark since its state changed; an online one silent for ``silent_after_s`` is dark
  ``silent_after_s`` after its last message or reconnection, whichever is later. What came back is
  resolved first; then neighbourhood clusters become mass outages (superseding the single alerts
  they cover), and every other dark device gets one ``device_offline`` alert after ``grace_s``.
- **Power loss and outages** (one alert per outage, no per-device alert made by a cut): a
  ``power_loss`` (a lamp's last gasp, a blinker on battery) raises nothing when it arrives
  (`plan_fault_alerts` drops it; the event and the telemetry code record it). The offline pass
  gets the devices whose power loss is recorded and not cleared (`PowerLoss`) and raises one
  ``power_loss`` alert for each after ``power_loss_grace_s`` unless the device belongs to an
  active mass outage by then (`outage_of`: listed in it, or in one of its neighbourhoods: dong
  code, else the located one, else ``district:<code>``); when an outage ends, its devices still
  without power get theirs at once (the outage was their grace). A device with a power loss gets
  that alert instead of a ``device_offline`` one. A lamp that comes back (birth or ``online``)
  resolves its own ``power_loss`` (``back``).
- **District outages** (`plan_offline_alerts`): neighbourhood outages of one district that start
  within ``policy.window_s`` of each other, at least ``policy.district_min_areas`` (2) of them,
  are one ``mass_outage`` whose ``source_id`` is ``district:<code>``, its place the district (the
  centre of its lamps, no dong), its ``areas`` the neighbourhoods and its ``count`` its lamps; a
  neighbourhood outage opened earlier in that window is folded into it (cancelled as superseded,
  ``mass_outage_merged``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType

from alerts._dedup import (
    DEFAULT_MASS_OUTAGE,
    FAULT_FLOOD_CODE,
    MassOutagePolicy,
    OfflineReport,
    OutageCluster,
    covering_outage,
    detect_mass_outages,
    merge_device_fault,
    merge_fault,
    merge_mass_outage,
    suppress_covered,
)
from alerts._errors import InvalidAlertData
from alerts._lifecycle import CancelReason, cancel, resolve
from alerts._model import (
    Alert,
    AlertKind,
    Event,
    EventAction,
    Place,
    device_place_of,
    new_alert,
    require_aware,
    with_event,
)
from alerts._recovery import OUTAGE_RESTORED_FRACTION, resolve_recovered

# Where an alert is put when the device never sent a birth with its position: Seoul City Hall,
# so the alert still shows on the city map (its district code still routes it).
SEOUL_CITY_HALL = (37.5665, 126.9780)

# Event types that raise an alert, and its kind. A device over its message rate (``flood``), or a
# birth contradicting its registration (``registration``), may be in the hands of someone else: a
# tamper alert, so it is looked at as one (ingest names these two).
EVENT_ALERT_KIND: Mapping[str, AlertKind] = MappingProxyType(
    {
        "fault": AlertKind.LAMP_FAULT,
        "power_loss": AlertKind.LAMP_FAULT,
        "tamper": AlertKind.TAMPER,
        "flood": AlertKind.TAMPER,
        "registration": AlertKind.TAMPER,
    }
)
FAULT_CLEARED = "fault_cleared"
# Event types whose code the device chooses: capped per device (``merge_device_fault``).
DEVICE_REPORTED = frozenset({"fault", "power_loss", "tamper"})

# The fault code of a device whose mains failed (a lamp's last gasp, a blinker on battery): the one
# code an outage of the device's neighbourhood explains.
POWER_LOSS = "power_loss"

OFFLINE_COUNTS = (
    "mass_outage_new",
    "mass_outage_grown",
    "device_offline_new",
    "superseded",
    "mass_outage_merged",
    "mass_outage_resolved",
    "device_offline_resolved",
    "power_loss_new",
    "power_loss_folded",
    "power_loss_after_outage",
)


Locator = Callable[[float, float], tuple[str, str]]
"""(lat, lon) -> (district_code, dong_code); empty strings when unknown."""


@dataclass(frozen=True, slots=True)
class AlertChange:
    """One alert to save: ``alert`` replaces ``previous`` (None: a new alert). ``reason`` names
    the change for the caller's counters and logs (e.g. ``mass_outage_new``; "" when none)."""

    alert: Alert
    previous: Alert | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class DeviceRecord:
    """A device as the fault path needs it: where it is and the faults it reported last."""

    device_id: str
    kind: str = "lamp"
    district_code: str = ""
    dong_code: str = ""
    lat: float | None = None
    lon: float | None = None
    faults: frozenset[str] = frozenset()
    lamp_number: str = ""  # the number on the pole (the lamp register)
    address: str = ""


@dataclass(frozen=True, slots=True)
class DeviceLiveness:
    """A device's connectivity as stored: its state, when it changed and when it was last heard."""

    device_id: str
    online: bool
    state_changed_at: datetime | None
    last_seen: datetime | None
    kind: str = "lamp"
    district_code: str = ""
    dong_code: str = ""
    lat: float | None = None
    lon: float | None = None
    lamp_number: str = ""
    address: str = ""

    def __post_init__(self) -> None:
        for name in ("state_changed_at", "last_seen"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, require_aware(value, f"DeviceLiveness.{name}"))


@dataclass(frozen=True, slots=True)
class DarkDevice:
    """A device offline or silent: its report (dong, since when) and its row (located)."""

    report: OfflineReport
    device: DeviceLiveness


@dataclass(frozen=True, slots=True)
class PowerLoss:
    """A device whose mains failed, as recorded and not cleared: since its ``power_loss`` event
    (``since``), or known from its telemetry only (``since`` None: due at once)."""

    device: DeviceRecord
    since: datetime | None = None

    def __post_init__(self) -> None:
        if self.since is not None:
            object.__setattr__(self, "since", require_aware(self.since, "PowerLoss.since"))


@dataclass(frozen=True, slots=True)
class FaultReport:
    """One report about a device: a fault code raised (or cleared); ``capped`` when the device
    chose the code (bounded per device), not when ingest found it."""

    device_id: str
    kind: AlertKind
    code: str
    cleared: bool = False
    capped: bool = False


def device_place(lat: float | None, lon: float | None, district_code: str = "", dong_code: str = "") -> Place:
    """Where a device's alert is put: its position, else Seoul City Hall (district kept)."""
    if lat is None or lon is None:
        return Place(lat=SEOUL_CITY_HALL[0], lon=SEOUL_CITY_HALL[1], district_code=district_code)
    return Place(lat=lat, lon=lon, district_code=district_code, dong_code=dong_code)


def _record_place(record: DeviceRecord | None) -> Place:
    if record is None:
        return device_place(None, None)
    place = device_place(record.lat, record.lon, record.district_code, record.dong_code)
    return device_place_of(place, record.device_id, record.lamp_number, record.address, None)


def device_group(
    dong_code: str, district_code: str, lat: float | None, lon: float | None, locate: Locator | None = None
) -> str:
    """The neighbourhood a device is grouped by for outages (a mass outage's ``source_id``): its dong
    code, else the one ``locate`` gives its position, else ``district:<code>``."""
    if not dong_code and locate is not None and lat is not None and lon is not None:
        district_code, dong_code = locate(lat, lon)
    return dong_code or f"district:{district_code}"


def outage_of(outages: Iterable[Alert], device_id: str, group: str) -> Alert | None:
    """The mass outage among ``outages`` a device belongs to: the one listing it, else the one of its
    group (neighbourhood, or a district's outage listing it among its ``areas``; a blinker on the
    same poles, a lamp not dark yet)."""
    active = [a for a in outages if a.kind is AlertKind.MASS_OUTAGE]
    listed = next((a for a in active if device_id in a.device_ids), None)
    if listed is not None:
        return listed
    return next((a for a in active if a.source_id == group or group in a.areas), None)


def _outage_finder(outages: Iterable[Alert]) -> Callable[[str, str], Alert | None]:
    """`outage_of` over fixed ``outages``, indexed once (a district's cut: thousands of devices)."""
    listed: dict[str, Alert] = {}
    by_group: dict[str, Alert] = {}
    for alert in outages:
        if alert.kind is not AlertKind.MASS_OUTAGE:
            continue
        for device_id in alert.device_ids:
            listed.setdefault(device_id, alert)
        for group in (alert.source_id, *alert.areas):
            by_group.setdefault(group, alert)

    def find(device_id: str, group: str) -> Alert | None:
        found = listed.get(device_id)
        return found if found is not None else by_group.get(group)

    return find


def count_changes(changes: Iterable[AlertChange], keys: Iterable[str]) -> dict[str, int]:
    """How many changes of each reason, every key of ``keys`` present (0 when none)."""
    counts = dict.fromkeys(keys, 0)
    for change in changes:
        if change.reason in counts:
            counts[change.reason] += 1
    return counts


# -- faults


def fault_reports(
    events: Iterable[tuple[str, str, str]],
    telemetry_faults: Mapping[str, Iterable[str]],
    stored_faults: Mapping[str, Collection[str]],
) -> list[FaultReport]:
    """A batch's reports: its fault events ``(device_id, type, code)`` in order, then each fault
    code in a device's telemetry that is not in its stored faults."""
    reports: list[FaultReport] = []
    for device_id, ev_type, code in events:
        if ev_type == FAULT_CLEARED:
            reports.append(FaultReport(device_id, AlertKind.LAMP_FAULT, code, cleared=True))
            continue
        kind = EVENT_ALERT_KIND.get(ev_type)
        if kind is None:
            raise InvalidAlertData(f"event type {ev_type!r} raises no alert")
        reports.append(FaultReport(device_id, kind, code, capped=ev_type in DEVICE_REPORTED))
    for device_id, codes in telemetry_faults.items():
        stored = stored_faults.get(device_id, ())
        reports.extend(
            FaultReport(device_id, AlertKind.LAMP_FAULT, c, capped=True) for c in codes if c not in stored
        )
    return reports


def alerting_reports(reports: Iterable[FaultReport]) -> list[FaultReport]:
    """The reports the fault path acts on: all but a raised ``power_loss`` (the offline pass raises
    that one after its grace, unless an outage explains it; its clear still counts)."""
    return [r for r in reports if r.cleared or r.code != POWER_LOSS]


class _DeviceAlerts:
    """A device's active alerts while a plan is made: what is stored, then each planned change."""

    def __init__(self, stored: Iterable[Alert]) -> None:
        self.latest: dict[str, Alert] = {a.id: a for a in stored}  # oldest first, as stored

    def active(self, *kinds: AlertKind) -> list[Alert]:
        return [a for a in self.latest.values() if a.is_active and a.kind in kinds]

    def change(self, alert: Alert, reason: str = "") -> AlertChange:
        previous = self.latest.get(alert.id)
        self.latest[alert.id] = alert
        return AlertChange(alert, previous, reason)


def plan_fault_alerts(
    reports: Sequence[FaultReport],
    active: Mapping[str, Sequence[Alert]],
    devices: Mapping[str, DeviceRecord],
    *,
    now: datetime,
    new_alert_id: Callable[[], str],
    back: Collection[str] = (),
) -> list[AlertChange]:
    """The alert changes a batch's reports make, in the order to save them.

    ``active`` holds each reporting (or returning) device's active ``lamp_fault`` and ``tamper``
    alerts, oldest first; ``devices`` where they are (a device without a row is placed at City
    Hall). Capped codes of a device are merged together (``merge_device_fault``) when the batch
    ends or just before the device's next uncapped report; a change that folds codes into the
    device's ``fault_code_flood`` alert has reason ``fault_code_flood``.

    A ``power_loss`` (event or telemetry code) raises nothing here: the offline pass raises it
    after its grace unless an outage explains it (`plan_offline_alerts` ``pending``).
    The lamps in ``back`` (a birth or ``online`` in the batch) are powered again: their active
    ``power_loss`` alerts are resolved (reason ``power_loss_back_online``) whether or not they
    sent ``fault_cleared``.
    """
    at = require_aware(now, "now")
    reports = alerting_reports(reports)
    returning = [d for d in dict.fromkeys(back) if (r := devices.get(d)) is not None and r.kind == "lamp"]
    state = {
        d: _DeviceAlerts(active.get(d, ()))
        for d in dict.fromkeys([*(r.device_id for r in reports), *returning])
    }
    pending: dict[tuple[str, AlertKind], list[str]] = {}  # capped codes, per device and kind
    changes: list[AlertChange] = []

    def flush(device_id: str) -> None:
        alerts = state[device_id]
        for kind in (AlertKind.LAMP_FAULT, AlertKind.TAMPER):
            codes = pending.pop((device_id, kind), None)
            if not codes:
                continue
            for merged in merge_device_fault(
                alerts.active(AlertKind.LAMP_FAULT, AlertKind.TAMPER),
                device_id=device_id,
                fault_codes=codes,
                kind=kind,
                place=_record_place(devices.get(device_id)),
                now=at,
                new_alert_id=new_alert_id,
            ):
                folded = merged.fault_code == FAULT_FLOOD_CODE
                changes.append(alerts.change(merged, FAULT_FLOOD_CODE if folded else ""))

    for report in reports:
        device_id = report.device_id
        if report.capped:
            pending.setdefault((device_id, report.kind), []).append(report.code)
            continue
        flush(device_id)  # in order: a fault then its clear in one batch
        alerts = state[device_id]
        if report.cleared:
            for alert in alerts.active(report.kind):
                if alert.fault_code == report.code:
                    resolved = resolve(alert, at, f"device:{device_id}", note="fault cleared")
                    changes.append(alerts.change(resolved))
            continue
        merged, _is_new = merge_fault(
            alerts.active(report.kind),
            kind=report.kind,
            device_id=device_id,
            fault_code=report.code,
            place=_record_place(devices.get(device_id)),
            now=at,
            new_alert_id=new_alert_id(),
        )
        changes.append(alerts.change(merged))
    for device_id, _kind in list(pending):
        flush(device_id)
    for device_id in returning:
        alerts = state[device_id]
        for alert in alerts.active(AlertKind.LAMP_FAULT):
            if alert.fault_code == POWER_LOSS:
                resolved = resolve(alert, at, f"device:{device_id}", note="back online: power restored")
                changes.append(alerts.change(resolved, "power_loss_back_online"))
    return changes


# -- offline, silent, mass outage


def dark_devices(
    rows: Iterable[DeviceLiveness], now: datetime, *, silent_after_s: float, locate: Locator | None = None
) -> list[DarkDevice]:
    """The devices offline by their will or silent longer than ``silent_after_s``, with when they
    went dark; a device without a dong code gets the one ``locate`` gives its position."""
    silent_since = require_aware(now, "now") - timedelta(seconds=silent_after_s)
    out: list[DarkDevice] = []
    for row in rows:
        if not row.online:
            if row.state_changed_at is None:
                continue
            dark_at = row.state_changed_at
        else:
            if row.last_seen is None:
                continue
            # Silent: counted from the last message, or from the reconnection when that is later
            # (a lamp back online has a whole silent period to send its first telemetry).
            heard = max(row.last_seen, row.state_changed_at or row.last_seen)
            if heard >= silent_since:
                continue
            dark_at = heard + timedelta(seconds=silent_after_s)
        device = row
        if not row.dong_code and locate is not None and row.lat is not None and row.lon is not None:
            district, dong = locate(row.lat, row.lon)
            device = dataclasses.replace(row, district_code=district, dong_code=dong)
        group = device.dong_code or f"district:{device.district_code}"
        out.append(DarkDevice(OfflineReport(device.device_id, group, dark_at), device))
    return out


def _liveness_place(device: DeviceLiveness) -> Place:
    place = device_place(device.lat, device.lon, device.district_code, device.dong_code)
    return device_place_of(place, device.device_id, device.lamp_number, device.address, None)


def _centre(devices: Iterable[DeviceLiveness]) -> tuple[float, float] | None:
    placed = [(d.lat, d.lon) for d in devices if d.lat is not None and d.lon is not None]
    if not placed:
        return None
    return sum(p[0] for p in placed) / len(placed), sum(p[1] for p in placed) / len(placed)


def _district_outages(
    clusters: list[OutageCluster],
    outages: list[Alert],
    by_id: Mapping[str, DeviceLiveness],
    *,
    at: datetime,
    policy: MassOutagePolicy,
    new_alert_id: Callable[[], str],
) -> tuple[list[OutageCluster], list[Alert], list[AlertChange]]:
    """Neighbourhood outages of one district starting together as one district outage.

    The clusters no active outage covers are grouped by district; with the district's active
    outages that opened within ``policy.window_s`` of their first lamp going dark, they make one
    ``mass_outage`` (``source_id`` ``district:<code>``) when they span at least
    ``policy.district_min_areas`` neighbourhoods, or when one of those outages is the district's
    already. Returns the clusters left to the neighbourhood path, the active outages and the
    changes (the district outage new or grown, the neighbourhood outages it folds cancelled)."""
    window = timedelta(seconds=policy.window_s)
    by_district: dict[str, list[OutageCluster]] = {}
    for cluster in clusters:
        if covering_outage(outages, cluster.dong_code) is not None:
            continue
        district = by_id[cluster.device_ids[0]].district_code
        if district:
            by_district.setdefault(district, []).append(cluster)
    changes: list[AlertChange] = []
    taken: set[str] = set()
    for district, group in sorted(by_district.items()):
        key = f"district:{district}"
        first = min(c.first_at for c in group)
        concurrent = [
            a
            for a in outages
            if a.kind is AlertKind.MASS_OUTAGE
            and a.is_active
            and a.place.district_code == district
            and abs(a.created_at - first) <= window
        ]
        existing = next((a for a in concurrent if a.source_id == key), None)
        folded = [a for a in concurrent if a is not existing]
        areas = {c.dong_code for c in group if not c.dong_code.startswith("district:")}
        for alert in concurrent:
            areas.update(
                alert.areas or ([] if alert.source_id.startswith("district:") else [alert.source_id])
            )
        if existing is None and len(areas) < policy.district_min_areas:
            continue
        lamps = {d for c in group for d in c.device_ids} | {d for a in concurrent for d in a.device_ids}
        names = ", ".join(sorted(areas))
        if existing is None:
            centre = _centre(by_id[d] for d in sorted(lamps) if d in by_id)
            if centre is None:
                centre = (concurrent[0].place.lat, concurrent[0].place.lon) if concurrent else SEOUL_CITY_HALL
            created = new_alert(
                alert_id=new_alert_id(),
                kind=AlertKind.MASS_OUTAGE,
                place=Place(centre[0], centre[1], district_code=district),
                source_id=key,
                now=at,
                note=f"{len(lamps)} lamps offline in {len(areas)} neighbourhoods since {first.isoformat()}: "
                + names,
                device_ids=tuple(sorted(lamps)),
            )
            outage = dataclasses.replace(created, count=len(lamps), areas=tuple(sorted(areas)))
            changes.append(AlertChange(outage, None, "mass_outage_new"))
        else:
            added = sorted(lamps - set(existing.device_ids))
            grown_areas = tuple(sorted(areas | set(existing.areas)))
            if not added and grown_areas == existing.areas:
                outage = existing
            else:
                event = Event(
                    at=at,
                    actor="system",
                    action=EventAction.LAMPS_ADDED,
                    note=f"{len(added)} more lamps offline",
                )
                every = tuple(sorted({*existing.device_ids, *added}))
                outage = with_event(existing, event, device_ids=every, count=len(every), areas=grown_areas)
                changes.append(AlertChange(outage, existing, "mass_outage_grown"))
        for alert in folded:
            merged = cancel(alert, at, "system", CancelReason.SUPERSEDED, superseded_by=outage.id)
            changes.append(AlertChange(merged, alert, "mass_outage_merged"))
        gone = {a.id for a in concurrent}
        outages = [a for a in outages if a.id not in gone] + [outage]
        taken.update(c.dong_code for c in group)
    return [c for c in clusters if c.dong_code not in taken], outages, changes


def plan_offline_alerts(
    dark: Sequence[DarkDevice],
    open_alerts: Sequence[Alert],
    lamps_per_dong: Mapping[str, int],
    *,
    now: datetime,
    new_alert_id: Callable[[], str],
    grace_s: float = 120.0,
    policy: MassOutagePolicy = DEFAULT_MASS_OUTAGE,
    restored_fraction: float = OUTAGE_RESTORED_FRACTION,
    power_losses: Sequence[Alert] = (),
    pending: Sequence[PowerLoss] = (),
    power_loss_grace_s: float | None = None,
    locate: Locator | None = None,
) -> list[AlertChange]:
    """One offline pass: what came back is resolved, then mass outages, then power losses, then
    single ``device_offline`` alerts after ``grace_s``. ``open_alerts`` are the active
    ``mass_outage`` and ``device_offline`` alerts, oldest first; reasons are the keys of
    ``OFFLINE_COUNTS``.

    One alert per outage: its ``count`` is the number of its lamps, its place the centre of the
    lamps it started with. A dark lamp of a neighbourhood whose outage is active joins it when it
    went dark within ``policy.window_s`` before the outage opened, or later. Neighbourhood outages
    of one district starting together are one district outage (`_district_outages`).

    ``pending`` are the devices whose power loss is recorded and not cleared: each one no active
    outage covers gets one ``power_loss`` alert (``power_loss_new``) once ``power_loss_grace_s``
    (default ``grace_s``) has passed since its loss, or at once when an outage it belonged to ends
    in this pass (``power_loss_after_outage``); a device with an active ``power_loss`` alert
    (``power_losses``) gets none. Such a device gets no ``device_offline`` alert: its power loss is
    its alert. ``power_losses`` of devices an active outage covers are folded into it (cancelled as
    superseded, ``power_loss_folded``). ``locate`` groups devices whose row has no dong code
    (`device_group`). A lamp of an outage that ends while it is still dark gets its
    ``device_offline`` alert in that pass, without waiting ``grace_s`` again.
    """
    at = require_aware(now, "now")
    loss_grace = grace_s if power_loss_grace_s is None else power_loss_grace_s
    changes: list[AlertChange] = []
    still_dark = {d.report.device_id for d in dark}
    resolved: set[str] = set()
    ended: list[Alert] = []
    for done in resolve_recovered(open_alerts, still_dark, at, restored_fraction):
        before = next(a for a in open_alerts if a.id == done.id)
        changes.append(AlertChange(done, before, f"{done.kind.value}_resolved"))
        resolved.add(done.id)
        if done.kind is AlertKind.MASS_OUTAGE:
            ended.append(done)
    losses = {a.source_id: a for a in power_losses if a.is_active and a.fault_code == POWER_LOSS}
    remaining = [a for a in open_alerts if a.id not in resolved]
    outages = [a for a in remaining if a.kind is AlertKind.MASS_OUTAGE]
    offline = [a for a in remaining if a.kind is AlertKind.DEVICE_OFFLINE]
    by_id = {d.report.device_id: d.device for d in dark}
    lamp_reports = [d.report for d in dark if d.device.kind == "lamp"]
    clusters = list(detect_mass_outages(lamp_reports, at, lamps_per_dong, policy)) if dark else []
    # Lamps of a neighbourhood in outage that went dark since it began join it (a late will).
    clustered = {d for c in clusters for d in c.device_ids}
    joining: dict[str, list[OfflineReport]] = {}
    for report in lamp_reports:
        outage = covering_outage(outages, report.dong_code)
        if outage is None or report.device_id in clustered or report.device_id in outage.device_ids:
            continue
        if report.at >= outage.created_at - timedelta(seconds=policy.window_s):
            joining.setdefault(report.dong_code, []).append(report)
    for dong, reports in sorted(joining.items()):
        times = [r.at for r in reports]
        ids = tuple(sorted({r.device_id for r in reports}))
        clusters.append(OutageCluster(dong, ids, min(times), max(times)))
    clusters, outages, district_changes = _district_outages(
        clusters, outages, by_id, at=at, policy=policy, new_alert_id=new_alert_id
    )
    changes.extend(district_changes)
    covered: set[str] = set()
    for change in district_changes:
        if change.alert.is_active:
            for cancelled in suppress_covered(offline, change.alert, at):
                before = next(a for a in offline if a.id == cancelled.id)
                changes.append(AlertChange(cancelled, before, "superseded"))
            covered.update(change.alert.device_ids)
    for cluster in clusters:
        first = _liveness_place(by_id[cluster.device_ids[0]])
        centre = _centre(by_id[d] for d in cluster.device_ids) or (first.lat, first.lon)
        place = Place(centre[0], centre[1], district_code=first.district_code, dong_code=cluster.dong_code)
        merged, is_new = merge_mass_outage(outages, cluster, place=place, now=at, new_alert_id=new_alert_id())
        previous = next((a for a in outages if a.id == merged.id), None)
        if merged is not previous:
            reason = "mass_outage_new" if is_new else "mass_outage_grown"
            changes.append(AlertChange(merged, previous, reason))
            outages = [a for a in outages if a.id != merged.id] + [merged]
        for cancelled in suppress_covered(offline, merged, at):
            before = next(a for a in offline if a.id == cancelled.id)
            changes.append(AlertChange(cancelled, before, "superseded"))
        covered.update(merged.device_ids)
    stored = {a.id for a in power_losses}
    for device_id, loss in list(losses.items()):
        if loss.id not in stored:
            continue
        p = loss.place
        group = device_group(p.dong_code, p.district_code, p.lat, p.lon, locate)
        outage = outage_of(outages, device_id, group)
        if outage is not None:
            folded = cancel(loss, at, "system", CancelReason.SUPERSEDED, superseded_by=outage.id)
            changes.append(AlertChange(folded, loss, "power_loss_folded"))
            del losses[device_id]
    held: set[str] = set()  # devices whose power loss is (or will be) their alert
    in_active, in_ended = _outage_finder(outages), _outage_finder(ended)
    for loss_item in pending:
        record = loss_item.device
        group = device_group(record.dong_code, record.district_code, record.lat, record.lon, locate)
        if in_active(record.device_id, group) is not None:
            continue  # the outage is its alert
        held.add(record.device_id)
        if record.device_id in losses:
            continue
        after_outage = in_ended(record.device_id, group) is not None
        since = loss_item.since
        if not after_outage and since is not None and (at - since).total_seconds() < loss_grace:
            continue
        raised, _ = merge_fault(
            (),
            kind=AlertKind.LAMP_FAULT,
            device_id=record.device_id,
            fault_code=POWER_LOSS,
            place=_record_place(record),
            now=at,
            new_alert_id=new_alert_id(),
        )
        changes.append(
            AlertChange(raised, None, "power_loss_after_outage" if after_outage else "power_loss_new")
        )
        losses[record.device_id] = raised
    in_outages = {d for a in outages for d in a.device_ids}
    left_dark = {d for a in ended for d in a.device_ids}  # the outage was their grace
    for item in dark:
        report, device = item.report, item.device
        if report.device_id in covered or report.device_id in held:
            continue
        if (at - report.at).total_seconds() < grace_s and report.device_id not in left_dark:
            continue
        if covering_outage(outages, report.dong_code) is not None and report.device_id in in_outages:
            continue
        if any(a.source_id == report.device_id for a in offline):
            continue
        merged, _ = merge_fault(
            offline,
            kind=AlertKind.DEVICE_OFFLINE,
            device_id=report.device_id,
            fault_code="offline" if not device.online else "silent",
            place=_liveness_place(device),
            now=at,
            new_alert_id=new_alert_id(),
        )
        changes.append(AlertChange(merged, None, "device_offline_new"))
        offline.append(merged)
    return changes
