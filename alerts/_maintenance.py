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
- **Power loss and outages** (one alert per outage): a device's ``power_loss`` belongs to the
  active mass outage of its neighbourhood (its lamps, or its group: dong code, else
  ``district:<code>``). The fault path does not raise it there (`plan_fault_alerts` ``outages``);
  the offline pass folds the ones raised before the outage was recognised into it (cancelled as
  superseded); a lamp that comes back (birth or ``online``) resolves its own ``power_loss``
  (``back``); when an outage resolves, each device of it still reporting ``power_loss`` gets its own
  alert then (`plan_offline_alerts` ``faulty``).
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
from alerts._model import Alert, AlertKind, Place, device_place_of, require_aware
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
    "mass_outage_resolved",
    "device_offline_resolved",
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
    group (neighbourhood; a blinker on the same poles, a lamp not dark yet)."""
    active = [a for a in outages if a.kind is AlertKind.MASS_OUTAGE]
    listed = next((a for a in active if device_id in a.device_ids), None)
    return listed if listed is not None else next((a for a in active if a.source_id == group), None)


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
    outages: Sequence[Alert] = (),
    back: Collection[str] = (),
    locate: Locator | None = None,
) -> list[AlertChange]:
    """The alert changes a batch's reports make, in the order to save them.

    ``active`` holds each reporting (or returning) device's active ``lamp_fault`` and ``tamper``
    alerts, oldest first; ``devices`` where they are (a device without a row is placed at City
    Hall). Capped codes of a device are merged together (``merge_device_fault``) when the batch
    ends or just before the device's next uncapped report; a change that folds codes into the
    device's ``fault_code_flood`` alert has reason ``fault_code_flood``.

    A ``power_loss`` of a device that belongs to one of the active mass ``outages`` (`outage_of`;
    its group from ``locate`` when its row has no dong) raises nothing: the outage is its alert.
    The lamps in ``back`` (a birth or ``online`` in the batch) are powered again: their active
    ``power_loss`` alerts are resolved (reason ``power_loss_back_online``) whether or not they
    sent ``fault_cleared``.
    """
    at = require_aware(now, "now")
    groups: dict[str, str] = {}

    def in_outage(report: FaultReport) -> bool:
        if report.cleared or report.code != POWER_LOSS or not outages:
            return False
        group = groups.get(report.device_id)
        if group is None:
            record = devices.get(report.device_id)
            group = groups[report.device_id] = (
                device_group(record.dong_code, record.district_code, record.lat, record.lon, locate)
                if record is not None
                else ""
            )
        return outage_of(live_outages, report.device_id, group) is not None

    live_outages = [a for a in outages if a.is_active]
    reports = [r for r in reports if not in_outage(r)]
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
    faulty: Sequence[DeviceRecord] = (),
    locate: Locator | None = None,
) -> list[AlertChange]:
    """One offline pass: what came back is resolved, then mass outages, then single
    ``device_offline`` alerts after ``grace_s``. ``open_alerts`` are the active ``mass_outage`` and
    ``device_offline`` alerts, oldest first; reasons are the keys of ``OFFLINE_COUNTS``.

    One alert per outage: its ``count`` is the number of its lamps, its place the centre of the
    lamps it started with. A dark lamp of a neighbourhood whose outage is active joins it when it
    went dark within ``policy.window_s`` before the outage opened, or later. ``power_losses`` (the
    active ``lamp_fault``/``power_loss`` alerts) of the devices an active outage covers are folded
    into it (cancelled as superseded, reason ``power_loss_folded``). When an outage resolves, each
    device of it in ``faulty`` (online, ``power_loss`` still in its reported faults) without an
    active ``power_loss`` alert gets one (``power_loss_after_outage``). ``locate`` groups devices
    whose row has no dong code (`device_group`). A lamp of an outage that ends while it is still
    dark gets its ``device_offline`` alert in that pass, without waiting ``grace_s`` again.
    """
    at = require_aware(now, "now")
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
    if ended:
        for record in faulty:
            if POWER_LOSS not in record.faults or record.device_id in losses:
                continue
            group = device_group(record.dong_code, record.district_code, record.lat, record.lon, locate)
            if outage_of(ended, record.device_id, group) is None:
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
            changes.append(AlertChange(raised, None, "power_loss_after_outage"))
            losses[record.device_id] = raised
    remaining = [a for a in open_alerts if a.id not in resolved]
    outages = [a for a in remaining if a.kind is AlertKind.MASS_OUTAGE]
    offline = [a for a in remaining if a.kind is AlertKind.DEVICE_OFFLINE]
    if not dark and not outages:
        return changes
    by_id = {d.report.device_id: d.device for d in dark}
    lamp_reports = [d.report for d in dark if d.device.kind == "lamp"]
    clusters = list(detect_mass_outages(lamp_reports, at, lamps_per_dong, policy))
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
    covered: set[str] = set()
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
    for device_id, loss in losses.items():
        if loss.id not in stored:
            continue
        p = loss.place
        group = device_group(p.dong_code, p.district_code, p.lat, p.lon, locate)
        outage = outage_of(outages, device_id, group)
        if outage is not None:
            folded = cancel(loss, at, "system", CancelReason.SUPERSEDED, superseded_by=outage.id)
            changes.append(AlertChange(folded, loss, "power_loss_folded"))
    in_outages = {d for a in outages for d in a.device_ids}
    left_dark = {d for a in ended for d in a.device_ids}  # the outage was their grace
    for item in dark:
        report, device = item.report, item.device
        if report.device_id in covered:
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
