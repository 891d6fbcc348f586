"""Maintenance alerts from ingest: lamp faults, silent or offline devices, mass outages.

Each pass reads, plans and writes: ``store.maintenance`` reads the rows and takes the locks, the
pure planning of ``alerts/_maintenance.py`` (over merge_fault, detect_mass_outages,
merge_mass_outage, suppress_covered, observe, ...) decides which alerts change, and
``store.alerts.save_alert`` saves each change (and NOTIFYs the console and the controller).

* Faults (in a batch's transaction): a ``fault``/``tamper``/``power_loss`` event, or a fault code
  that appears in a lamp's telemetry and was not in its stored state, is merged into the device's
  one active alert for that code (count + 1). ``fault_cleared`` resolves it. A device has at most
  8 open ``lamp_fault`` alerts and 8 from its ``tamper`` events (``alerts.merge_device_fault``):
  further new codes are folded into its one ``tamper`` alert ``fault_code_flood``, counted, logged.
  A ``power_loss`` raises nothing here (the offline pass does, after its grace, unless an outage
  explains it); a lamp that connects again (birth or ``online``) resolves its open ``power_loss``
  alert.
* Offline (periodic, one worker): devices offline by their will, or silent for longer than
  ``silent_after_s``, are grouped by neighbourhood; a cluster within the policy window becomes one
  mass-outage alert (its count the number of its lamps; it supersedes the single ones), and
  neighbourhood outages of one district starting together one district outage; the devices whose
  power loss is recorded get one ``power_loss`` alert each after a grace unless an outage covers
  them; the rest one ``device_offline`` alert each. The same
  pass resolves what came back (``alerts.resolve_recovered``): a device_offline alert when its
  device is online again (state ``online`` of a newer connection) or, for a silent device, reports
  again; a mass outage when 80 % of its lamps are back.
* Day/night (periodic, one worker, every few minutes): each lamp's latest reading (level, power,
  online, faults, an active override from ``commands``) is judged against the sun's elevation at
  its position at the reading's time (``alerts.observe``); day burning and dark at night become
  one ``lamp_fault`` alert per device and condition (``alerts.apply_observation``).
* Lost messages: the sequence numbers a device skipped (messages dropped past the broker's bound
  while ingest was away, or lost on a device's link) are counted into the city's one open
  ``data_loss`` alert (``alerts.data_loss_update``), opened by the first gap after an operator
  resolved the last. A worker that sees every device's whole stream (a plain subscription, alone
  or in a lease group) counts its batch's gaps (``Processed.seq_gap_devices``) in the batch's
  transaction; with a shared subscription or the AMQP queue each worker sees only part of each
  stream, so the jobs leader checks the stored rows instead (``raise_stored_gap_alert``, periodic,
  one worker).
* Storage jobs (periodic, one worker, after each maintenance run): a failed or late storage job
  (``store.jobs.storage_job_problems``) keeps one ``storage`` alert open for the city centre
  until every job succeeds again (``alerts.storage_alert_update``).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta

from alerts import (
    DAYNIGHT_COUNTS,
    DEFAULT_DAYNIGHT,
    DEFAULT_MASS_OUTAGE,
    FAULT_FLOOD_CODE,
    MAX_OPEN_FAULTS_PER_DEVICE,
    OFFLINE_COUNTS,
    OUTAGE_RESTORED_FRACTION,
    POWER_LOSS,
    Alert,
    AlertChange,
    AlertKind,
    AreaNamer,
    DarkDevice,
    DayNightPolicy,
    MassOutagePolicy,
    SunElevation,
    alerting_reports,
    count_changes,
    dark_devices,
    data_loss_update,
    daynight_change,
    fault_reports,
    judge_lamps,
    named_place,
    plan_fault_alerts,
    plan_offline_alerts,
    storage_alert_update,
)
from alerts import (
    Locator as Locator,  # re-exported: ingest/_service.py imports it from here
)
from geo.solar import sun_elevation_deg
from ingest._process import Processed
from runtime.logs import get_logger
from store.alerts import active_alerts, save_alert
from store.jobs import JobProblem, storage_job_problems
from store.maintenance import (
    DATA_LOSS_ALERT_LOCK,
    OFFLINE_PASS_LOCK,
    STORAGE_ALERT_LOCK,
    dark_candidates,
    decisions,
    device_records,
    lamp_snapshots,
    lamps_per_dong,
    lock_decisions,
    power_losses,
    stored_seq_gaps,
)
from store.types import Conn

log = get_logger(__name__)

_DEVICE_KINDS = [AlertKind.LAMP_FAULT.value, AlertKind.TAMPER.value]

# How far back the offline pass reads power_loss events: a loss older than this that no pass
# raised (the jobs leader down that long) is left to the device's offline alert or telemetry.
POWER_LOSS_HORIZON = timedelta(hours=24)


def new_alert_id() -> str:
    """A fresh maintenance alert id."""
    return f"mnt-{uuid.uuid4().hex[:16]}"


def _named(change: AlertChange, namer: AreaNamer | None) -> Alert:
    """The change's alert with its place in words (district, neighbourhood, address, lamp number)."""
    alert = change.alert
    place = named_place(alert.place, namer, whole_district=len(alert.areas) > 1)
    return alert if place == alert.place else dataclasses.replace(alert, place=place)


def _save(conn: Conn, changes: list[AlertChange], namer: AreaNamer | None = None) -> None:
    for change in changes:
        save_alert(conn, _named(change, namer), previous=change.previous)


def comebacks(batch: Processed) -> list[str]:
    """The devices a batch says are connected again: a birth or an ``online`` state."""
    back = [device_id for _district, device_id, _birth in batch.births]
    back += [device_id for device_id, state in batch.states if state.state == "online"]
    return list(dict.fromkeys(back))


def raise_fault_alerts(conn: Conn, batch: Processed, now: datetime, namer: AreaNamer | None = None) -> int:
    """Merge a batch's fault reports into device alerts (inside the batch transaction); returns changes.

    A ``power_loss`` raises nothing here (``raise_offline_alerts`` does, after its grace, unless an
    outage explains it); a lamp connected again resolves its open ``power_loss`` alert. The batch's
    sequence gaps count into the one ``data_loss`` alert (``raise_data_loss_alert``)."""
    lost = raise_data_loss_alert(conn, batch, now) if batch.seq_gap_devices else 0
    events = [(device_id, ev_type, code) for device_id, ev_type, code, _ts, _seq in batch.fault_events]
    telemetry = {d.device_id: d.faults for d in batch.devices.values() if d.faults}
    back_ids = comebacks(batch)
    # Only the returning devices with an open power_loss alert are read and locked.
    losses = (
        {a.source_id for a in active_alerts(conn, kinds=[AlertKind.LAMP_FAULT.value], fault_code=POWER_LOSS)}
        if back_ids
        else set()
    )
    back = [d for d in back_ids if d in losses]
    devices = device_records(conn, sorted({e[0] for e in events} | telemetry.keys() | set(back)))
    # A power loss is left to the offline pass: a district's 7,000 last gasps lock and read nothing.
    reports = alerting_reports(fault_reports(events, telemetry, {d: r.faults for d, r in devices.items()}))
    reporting = sorted({r.device_id for r in reports} | set(back))
    for device_id in reporting:  # in one order, so two workers' batches cannot wait on each other
        lock_decisions(conn, device_id)
    active = {d: active_alerts(conn, kinds=_DEVICE_KINDS, source_id=d) for d in reporting}
    changes = plan_fault_alerts(reports, active, devices, now=now, new_alert_id=new_alert_id, back=back)
    for change in changes:
        if change.reason == FAULT_FLOOD_CODE:
            log.warning(
                "fault_code_flood",
                device=change.alert.source_id,
                alert=change.alert.id,
                open_limit=MAX_OPEN_FAULTS_PER_DEVICE,
                folded_total=change.alert.count,
                new_alert=change.previous is None,
            )
        save_alert(conn, _named(change, namer), previous=change.previous)
    return len(changes) + lost


def raise_data_loss_alert(conn: Conn, batch: Processed, now: datetime) -> int:
    """Count a batch's sequence gaps into the city's one active ``data_loss`` alert (inside the
    batch transaction, before any device lock, in every batch alike); returns the changes saved (0 or 1)."""
    return count_data_loss(conn, batch.seq_gap_devices, now, source="batch")


def count_data_loss(conn: Conn, gaps: Mapping[str, tuple[str, int]], now: datetime, *, source: str) -> int:
    """Count ``gaps`` (device id -> (district, missing)) into the one active ``data_loss`` alert
    under its lock (in the caller's transaction); returns the changes saved (0 or 1)."""
    lock_decisions(conn, DATA_LOSS_ALERT_LOCK)
    active = active_alerts(conn, kinds=[AlertKind.DATA_LOSS.value])
    changed, previous = data_loss_update(active, gaps, now=now, new_alert_id=new_alert_id())
    if changed is None:
        return 0
    save_alert(conn, changed, previous=previous)
    if previous is None:
        log.warning(
            "data_loss_alert",
            alert=changed.id,
            missing=changed.count,
            devices=len(gaps),
            source=source,
            note=changed.timeline[-1].note,
        )
    return 1


@dataclasses.dataclass(frozen=True, slots=True)
class GapCheck:
    """One periodic check of the stored rows for missing sequence numbers."""

    since: datetime  # the rows read: device time in [since, until)
    closed_from: datetime  # the gaps counted: closed by a row in [closed_from, until)
    until: datetime
    devices: int  # devices with a message missing
    missing: int


def raise_stored_gap_alert(
    conn: Conn, *, since: datetime, closed_from: datetime, until: datetime, now: datetime
) -> GapCheck:
    """Count the gaps in the stored rows (``store.maintenance.stored_seq_gaps``) closed in
    [closed_from, until) into the one ``data_loss`` alert: the check that holds whatever the
    number of workers and however they split the devices' streams."""
    with decisions(conn, DATA_LOSS_ALERT_LOCK):
        gaps = stored_seq_gaps(conn, since=since, closed_from=closed_from, until=until)
        if gaps:
            count_data_loss(conn, gaps, now, source="stored_rows")
    return GapCheck(since, closed_from, until, len(gaps), sum(n for _d, n in gaps.values()))


def offline_reports(
    conn: Conn, now: datetime, *, silent_after_s: float, locate: Locator | None = None
) -> list[DarkDevice]:
    """Devices offline by their will or silent longer than ``silent_after_s``, with when they went dark."""
    silent_since = now - timedelta(seconds=silent_after_s)
    rows = dark_candidates(conn, silent_since=silent_since)
    return dark_devices(rows, now, silent_after_s=silent_after_s, locate=locate)


def raise_offline_alerts(
    conn: Conn,
    now: datetime,
    *,
    silent_after_s: float,
    grace_s: float = 120.0,
    power_loss_grace_s: float | None = None,
    policy: MassOutagePolicy = DEFAULT_MASS_OUTAGE,
    locate: Locator | None = None,
    restored_fraction: float = OUTAGE_RESTORED_FRACTION,
    namer: AreaNamer | None = None,
) -> dict[str, int]:
    """One periodic pass: what came back is resolved, then mass outages (one per district for
    neighbourhoods out together), then the power losses no outage explains after
    ``power_loss_grace_s`` (default ``grace_s``), then single device_offline alerts after
    ``grace_s``. Power losses are read back ``POWER_LOSS_HORIZON`` (events older are not raised)."""
    with decisions(conn, OFFLINE_PASS_LOCK):
        dark = offline_reports(conn, now, silent_after_s=silent_after_s, locate=locate)
        open_alerts = active_alerts(conn, kinds=[AlertKind.MASS_OUTAGE.value, AlertKind.DEVICE_OFFLINE.value])
        changes = plan_offline_alerts(
            dark,
            open_alerts,
            lamps_per_dong(conn) if dark else {},
            now=now,
            new_alert_id=new_alert_id,
            grace_s=grace_s,
            policy=policy,
            restored_fraction=restored_fraction,
            power_losses=active_alerts(conn, kinds=[AlertKind.LAMP_FAULT.value], fault_code=POWER_LOSS),
            pending=power_losses(conn, since=now - POWER_LOSS_HORIZON),
            power_loss_grace_s=power_loss_grace_s,
            locate=locate,
        )
        _save(conn, changes, namer)
    return count_changes(changes, OFFLINE_COUNTS)


def raise_daynight_alerts(
    conn: Conn,
    now: datetime,
    *,
    policy: DayNightPolicy = DEFAULT_DAYNIGHT,
    sun: SunElevation = sun_elevation_deg,
    override_slack_s: float = 60.0,
    namer: AreaNamer | None = None,
) -> dict[str, int]:
    """One day/night pass over every lamp with a fresh reading; returns counts of what changed.

    ``sun`` is injectable (tests, a simulated sky).
    """
    fresh = now - timedelta(seconds=policy.stale_after_s)
    lamps = lamp_snapshots(conn, fresh_since=fresh, now=now, override_slack_s=override_slack_s)
    judged = judge_lamps(
        lamps, active_alerts(conn, kinds=[AlertKind.LAMP_FAULT.value]), now, sun=sun, policy=policy
    )
    if judged.suspect:
        # The sky or the clock is wrong, not the lamps: no new alerts from this pass.
        log.warning("daynight_suspect", suspect=sorted(judged.suspect), count=judged.judged)
    changes: list[AlertChange] = []
    for candidate in judged.candidates:
        # Decide again under the device's lock with what is stored now (the batch's fault path may
        # have merged the lamp's own day_burning report meanwhile).
        with decisions(conn, candidate.device_id):
            stored = active_alerts(conn, kinds=[AlertKind.LAMP_FAULT.value], source_id=candidate.device_id)
            change = daynight_change(stored, candidate, now=now, new_alert_id=new_alert_id(), policy=policy)
            if change is not None:
                save_alert(conn, _named(change, namer), previous=change.previous)
                changes.append(change)
    return {"lamps_judged": judged.judged, **count_changes(changes, DAYNIGHT_COUNTS)}


def raise_storage_job_alert(conn: Conn, now: datetime) -> list[JobProblem]:
    """Keep the one storage alert in step with the storage jobs' health; returns the problems."""
    problems = storage_job_problems(conn, now=now)
    with decisions(conn, STORAGE_ALERT_LOCK):
        active = active_alerts(conn, kinds=[AlertKind.STORAGE.value])
        changed, previous = storage_alert_update(
            active, [f"{p.job}: {p.problem}" for p in problems], now=now, new_alert_id=new_alert_id()
        )
        if changed is not None:
            save_alert(conn, changed, previous=previous)
            log.warning(
                "storage_jobs_alert",
                alert=changed.id,
                state=changed.state.value,
                problems=[p.as_dict() for p in problems],
            )
    return problems
