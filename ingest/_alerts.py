"""Maintenance alerts from ingest: lamp faults, silent or offline devices, mass outages.

The decisions are the pure functions of ``alerts/`` (merge_fault, detect_mass_outages,
merge_mass_outage, suppress_covered); this module loads what they need, calls them and saves the
result with ``store.alertstore`` (which also NOTIFYs the console and the controller).

* Faults (in a batch's transaction): a ``fault``/``tamper``/``power_loss`` event, or a fault code
  that appears in a lamp's telemetry and was not in its stored state, is merged into the device's
  one active alert for that code (count + 1). ``fault_cleared`` resolves it. A device has at most
  8 open ``lamp_fault`` alerts and 8 from its ``tamper`` events (``alerts.merge_device_fault``):
  further new codes are folded into its one ``tamper`` alert ``fault_code_flood``, counted, logged.
* Offline (periodic, one worker): devices offline by their will, or silent for longer than
  ``silent_after_s``, are grouped by neighbourhood; a cluster within the policy window becomes one
  mass-outage alert (and supersedes the single ones it covers), the rest one alert each. The same
  pass resolves what came back (``alerts.resolve_recovered``): a device_offline alert when its
  device is online again (state ``online`` of a newer connection) or, for a silent device, reports
  again; a mass outage when 80 % of its lamps are back.
* Day/night (periodic, one worker, every few minutes): each lamp's latest reading (level, power,
  online, faults, an active override from ``commands``) is judged against the sun's elevation at
  its position at the reading's time (``alerts.observe``); day burning and dark at night become
  one ``lamp_fault`` alert per device and condition (``alerts.apply_observation``).
* Storage jobs (periodic, one worker, after each maintenance run): a failed or late storage job
  (``store.jobs.storage_job_problems``) keeps one ``storage`` alert open for the city centre
  until every job succeeds again (``alerts.storage_alert_update``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import dict_row

from alerts import (
    DARK_EXPLAINED_BY,
    DEFAULT_DAYNIGHT,
    DEFAULT_MASS_OUTAGE,
    FAULT_FLOOD_CODE,
    MAX_OPEN_FAULTS_PER_DEVICE,
    OUTAGE_RESTORED_FRACTION,
    Alert,
    AlertKind,
    DayNightPolicy,
    LampCondition,
    LampReading,
    MassOutagePolicy,
    Observation,
    OfflineReport,
    Place,
    apply_observation,
    covering_outage,
    detect_mass_outages,
    fleet_wide,
    merge_device_fault,
    merge_fault,
    merge_mass_outage,
    observe,
    resolve,
    resolve_recovered,
    storage_alert_update,
    suppress_covered,
)
from geo.solar import sun_elevation_deg
from ingest._process import Processed
from store.alertstore import active_alerts, save_alert
from store.jobs import JobProblem, storage_job_problems
from store.types import Conn

log = logging.getLogger(__name__)

# Where an alert is put when the device never sent a birth with its position: Seoul City Hall,
# so the alert still shows on the city map (its district code still routes it).
SEOUL_CITY_HALL = (37.5665, 126.9780)
# A device over its message rate, or a birth contradicting its registration, may be in the hands of
# someone else: a tamper alert, so it is looked at as one (ingest/_process.py names them).
_EVENT_KIND = {
    "fault": AlertKind.LAMP_FAULT,
    "power_loss": AlertKind.LAMP_FAULT,
    "tamper": AlertKind.TAMPER,
    "flood": AlertKind.TAMPER,
    "registration": AlertKind.TAMPER,
}

# Event types whose code the device chooses: capped per device (alerts.merge_device_fault).
_DEVICE_REPORTED = frozenset({"fault", "power_loss", "tamper"})

Locator = Callable[[float, float], tuple[str, str]]
"""(lat, lon) -> (district_code, dong_code); empty strings when unknown."""

SunElevation = Callable[[float, float, datetime], float]
"""(lat, lon, when) -> the sun's elevation in degrees; ``geo.solar.sun_elevation_deg``."""


def new_alert_id() -> str:
    """A fresh maintenance alert id."""
    return f"mnt-{uuid.uuid4().hex[:16]}"


def _lock(conn: Conn, key: str) -> None:
    # Serialises alert decisions about one device (or dong) across workers until commit.
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


def _devices(conn: Conn, device_ids: list[str]) -> dict[str, dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT d.device_id, d.kind, d.district_code, d.dong_code, d.lamp_number, d.lat, d.lon, "
            "coalesce(s.faults, '{}') AS faults FROM devices d "
            "LEFT JOIN device_state s ON s.device_id = d.device_id WHERE d.device_id = ANY(%s)",
            (device_ids,),
        ).fetchall()
    return {r["device_id"]: r for r in rows}


def _place(row: dict[str, Any] | None, district: str) -> Place:
    if row is None or row.get("lat") is None or row.get("lon") is None:
        lat, lon = SEOUL_CITY_HALL
        return Place(lat=lat, lon=lon, district_code=district)
    return Place(
        lat=row["lat"],
        lon=row["lon"],
        district_code=row["district_code"] or district,
        dong_code=row.get("dong_code") or "",
    )


def raise_fault_alerts(conn: Conn, batch: Processed, now: datetime) -> int:
    """Merge a batch's fault reports into device alerts (inside the batch transaction); returns changes."""
    # (device, kind, code, cleared, capped): codes a device names are capped per device and kind;
    # ingest's own findings (message_flood, registration_mismatch) are not.
    reports: list[tuple[str, AlertKind, str, bool, bool]] = []
    for device_id, ev_type, code, _ts, _seq in batch.fault_events:
        if ev_type == "fault_cleared":
            reports.append((device_id, AlertKind.LAMP_FAULT, code, True, False))
        else:
            reports.append((device_id, _EVENT_KIND[ev_type], code, False, ev_type in _DEVICE_REPORTED))
    with_faults = [d for d in batch.devices.values() if d.faults]
    known = _devices(conn, sorted({r[0] for r in reports} | {d.device_id for d in with_faults}))
    for dev in with_faults:
        stored = set((known.get(dev.device_id) or {}).get("faults") or ())
        reports.extend(
            (dev.device_id, AlertKind.LAMP_FAULT, c, False, True) for c in dev.faults if c not in stored
        )
    changes = 0
    pending: dict[tuple[str, AlertKind], list[str]] = {}  # capped codes, merged per device and kind

    def flush(device_id: str) -> None:
        for kind in (AlertKind.LAMP_FAULT, AlertKind.TAMPER):
            codes = pending.pop((device_id, kind), None)
            if codes:
                merge_capped(device_id, kind, codes)

    def merge_capped(device_id: str, kind: AlertKind, codes: list[str]) -> None:
        nonlocal changes
        _lock(conn, device_id)
        active = active_alerts(
            conn, kinds=[AlertKind.LAMP_FAULT.value, AlertKind.TAMPER.value], source_id=device_id
        )
        row = known.get(device_id)
        for merged in merge_device_fault(
            active,
            device_id=device_id,
            fault_codes=codes,
            kind=kind,
            place=_place(row, row["district_code"] if row else ""),
            now=now,
            new_alert_id=new_alert_id,
        ):
            previous = next((a for a in active if a.id == merged.id), None)
            if merged.fault_code == FAULT_FLOOD_CODE:
                log.warning(
                    "fault_code_flood device=%s open_limit=%d folded_total=%d new_alert=%s",
                    device_id,
                    MAX_OPEN_FAULTS_PER_DEVICE,
                    merged.count,
                    previous is None,
                )
            save_alert(conn, merged, previous=previous)
            changes += 1

    for device_id, kind, code, cleared, capped in reports:
        if capped:
            pending.setdefault((device_id, kind), []).append(code)
            continue
        flush(device_id)  # in order: a fault then its clear in one batch
        _lock(conn, device_id)
        active = active_alerts(conn, kinds=[kind.value], source_id=device_id)
        if cleared:
            for alert in active:
                if alert.fault_code == code:
                    save_alert(
                        conn, resolve(alert, now, f"device:{device_id}", note="fault cleared"), previous=alert
                    )
                    changes += 1
            continue
        row = known.get(device_id)
        place = _place(row, row["district_code"] if row else "")
        merged, _is_new = merge_fault(
            active,
            kind=kind,
            device_id=device_id,
            fault_code=code,
            place=place,
            now=now,
            new_alert_id=new_alert_id(),
        )
        previous = next((a for a in active if a.id == merged.id), None)
        save_alert(conn, merged, previous=previous)
        changes += 1
    for device_id, _kind in list(pending):
        flush(device_id)
    return changes


def offline_reports(
    conn: Conn, now: datetime, *, silent_after_s: float, window_s: float, locate: Locator | None = None
) -> list[tuple[OfflineReport, dict[str, Any]]]:
    """Devices offline by their will or silent longer than ``silent_after_s``, with when they went dark."""
    silent_since = now - timedelta(seconds=silent_after_s)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT s.device_id, s.online, s.state_changed_at, s.last_seen,
                   d.district_code, d.dong_code, d.lat, d.lon, d.kind
            FROM device_state s JOIN devices d ON d.device_id = s.device_id
            WHERE (NOT s.online AND s.state_changed_at IS NOT NULL)
               OR (s.online AND s.last_seen IS NOT NULL
                   AND greatest(s.last_seen, s.state_changed_at) < %s)
            """,
            (silent_since,),
        ).fetchall()
    out: list[tuple[OfflineReport, dict[str, Any]]] = []
    for r in rows:
        # Silent: counted from the last message, or from the reconnection when that is later (a
        # lamp back online has a whole silent period to send its first telemetry).
        if r["online"]:
            heard = max(r["last_seen"], r["state_changed_at"] or r["last_seen"])
            dark_at = heard + timedelta(seconds=silent_after_s)
        else:
            dark_at = r["state_changed_at"]
        dong = r["dong_code"] or ""
        if not dong and locate is not None and r["lat"] is not None:
            r["district_code"], dong = locate(r["lat"], r["lon"])
            r["dong_code"] = dong
        out.append((OfflineReport(r["device_id"], dong or f"district:{r['district_code']}", dark_at), r))
    return out


def raise_offline_alerts(
    conn: Conn,
    now: datetime,
    *,
    silent_after_s: float,
    grace_s: float = 120.0,
    policy: MassOutagePolicy = DEFAULT_MASS_OUTAGE,
    locate: Locator | None = None,
    restored_fraction: float = OUTAGE_RESTORED_FRACTION,
) -> dict[str, int]:
    """One periodic pass: what came back is resolved, then mass outages, then single device_offline
    alerts after ``grace_s``."""
    counts = {
        "mass_outage_new": 0,
        "mass_outage_grown": 0,
        "device_offline_new": 0,
        "superseded": 0,
        "mass_outage_resolved": 0,
        "device_offline_resolved": 0,
    }
    with conn.transaction():
        _lock(conn, "ingest:offline-alerts")
        reports = offline_reports(
            conn, now, silent_after_s=silent_after_s, window_s=policy.window_s, locate=locate
        )
        still_dark = {rep.device_id for rep, _row in reports}
        open_alerts = active_alerts(conn, kinds=[AlertKind.MASS_OUTAGE.value, AlertKind.DEVICE_OFFLINE.value])
        for done in resolve_recovered(open_alerts, still_dark, now, restored_fraction):
            before = next(a for a in open_alerts if a.id == done.id)
            save_alert(conn, done, previous=before)
            counts[f"{done.kind.value}_resolved"] += 1
        if not reports:
            return counts
        by_id = {rep.device_id: row for rep, row in reports}
        per_dong: dict[str, int] = {}
        with conn.cursor() as cur:
            for dong, n in cur.execute(
                "SELECT dong_code, count(*) FROM devices WHERE kind = 'lamp' GROUP BY dong_code"
            ).fetchall():
                if dong:
                    per_dong[str(dong)] = int(n)
        lamp_reports = [rep for rep, row in reports if row["kind"] == "lamp"]
        outages = active_alerts(conn, kinds=[AlertKind.MASS_OUTAGE.value])
        offline = active_alerts(conn, kinds=[AlertKind.DEVICE_OFFLINE.value])
        covered: set[str] = set()
        for cluster in detect_mass_outages(lamp_reports, now, per_dong, policy):
            first = by_id[cluster.device_ids[0]]
            place = _place(first, first["district_code"])
            place = Place(
                place.lat, place.lon, district_code=place.district_code, dong_code=cluster.dong_code
            )
            merged, is_new = merge_mass_outage(
                outages, cluster, place=place, now=now, new_alert_id=new_alert_id()
            )
            previous = next((a for a in outages if a.id == merged.id), None)
            if merged is not previous:
                save_alert(conn, merged, previous=previous)
                counts["mass_outage_new" if is_new else "mass_outage_grown"] += 1
                outages = [a for a in outages if a.id != merged.id] + [merged]
            for cancelled in suppress_covered(offline, merged, now):
                before = next(a for a in offline if a.id == cancelled.id)
                save_alert(conn, cancelled, previous=before)
                counts["superseded"] += 1
            covered.update(merged.device_ids)
        for rep, row in reports:
            if rep.device_id in covered or (now - rep.at).total_seconds() < grace_s:
                continue
            if covering_outage(outages, rep.dong_code) is not None and rep.device_id in _all_ids(outages):
                continue
            if any(a.source_id == rep.device_id for a in offline):
                continue
            merged, _ = merge_fault(
                offline,
                kind=AlertKind.DEVICE_OFFLINE,
                device_id=rep.device_id,
                fault_code="offline" if not row["online"] else "silent",
                place=_place(row, row["district_code"]),
                now=now,
                new_alert_id=new_alert_id(),
            )
            save_alert(conn, merged)
            offline.append(merged)
            counts["device_offline_new"] += 1
    return counts


def _all_ids(alerts: list[Alert]) -> set[str]:
    return {d for a in alerts for d in a.device_ids}


_READINGS_SQL = """
SELECT d.device_id, d.district_code, d.dong_code, d.lat, d.lon,
       s.online, s.last_seen, s.level, coalesce(s.faults, '{}') AS faults,
       (s.last_telemetry->>'power_w')::float8 AS power_w,
       EXISTS (
           -- an override in force at (or just before) the reading: set_level or blink from a walk,
           -- an SOS or an operator, not refused, not cleared by a later clear of the same source
           SELECT 1 FROM commands c
           WHERE c.device_id = d.device_id AND c.action IN ('set_level', 'blink')
             AND c.priority <> 'schedule' AND c.status NOT IN ('rejected', 'expired')
             AND c.sent_at <= s.last_seen AND c.expires_at > s.last_seen - make_interval(secs => %(slack)s)
             AND NOT EXISTS (
                 SELECT 1 FROM commands k
                 WHERE k.device_id = c.device_id AND k.source = c.source AND k.action = 'clear'
                   AND k.sent_at > c.sent_at AND k.sent_at < s.last_seen - make_interval(secs => %(slack)s)
             )
       ) AS override
FROM devices d JOIN device_state s ON s.device_id = d.device_id
WHERE d.kind = 'lamp' AND d.lat IS NOT NULL AND d.lon IS NOT NULL
  AND s.last_seen >= %(fresh)s AND s.last_seen <= %(now)s
"""

_CONDITIONS = {c.value for c in LampCondition}


def raise_daynight_alerts(
    conn: Conn,
    now: datetime,
    *,
    policy: DayNightPolicy = DEFAULT_DAYNIGHT,
    sun: SunElevation = sun_elevation_deg,
    override_slack_s: float = 60.0,
) -> dict[str, int]:
    """One day/night pass over every lamp with a fresh reading; returns counts of what changed.

    The sun's elevation is computed once per lamp position (to 0.01 deg, about 1 km) and minute
    of reading, not per message. ``sun`` is injectable (tests, a simulated sky).
    """
    counts = {"lamps_judged": 0, "daynight_new": 0, "daynight_repeated": 0, "daynight_resolved": 0}
    fresh = now - timedelta(seconds=policy.stale_after_s)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_READINGS_SQL, {"fresh": fresh, "now": now, "slack": override_slack_s}).fetchall()
    known: dict[str, list[Alert]] = {}
    explained: dict[str, set[str]] = {}  # a dark lamp whose failure is alerted already (event or telemetry)
    for alert in active_alerts(conn, kinds=[AlertKind.LAMP_FAULT.value]):
        if alert.fault_code in _CONDITIONS:
            known.setdefault(alert.source_id, []).append(alert)
        elif alert.fault_code in DARK_EXPLAINED_BY:
            explained.setdefault(alert.source_id, set()).add(alert.fault_code)
    elevations: dict[tuple[float, float, int], float] = {}
    seen_all: list[tuple[dict[str, Any], Observation]] = []
    for r in rows:
        at: datetime = r["last_seen"]
        key = (round(r["lat"], 2), round(r["lon"], 2), int(at.timestamp() // 60))
        elevation = elevations.get(key)
        if elevation is None:
            elevation = elevations[key] = sun(r["lat"], r["lon"], at)
        reading = LampReading(
            r["device_id"],
            at,
            r["level"],
            r["power_w"],
            online=bool(r["online"]),
            faults=frozenset(r["faults"] or ()) | explained.get(r["device_id"], set()),
            override=bool(r["override"]),
        )
        seen = observe(reading, elevation, now, policy)
        if seen is not None:
            seen_all.append((r, seen))
    counts["lamps_judged"] = len(seen_all)
    suspect = fleet_wide((o for _r, o in seen_all), policy)
    if suspect:
        log.warning(
            "day/night: %s in most of %d lamps judged: the sky or the clock, not the lamps; no new alerts",
            ", ".join(sorted(suspect)),
            len(seen_all),
        )
    for r, seen in seen_all:
        device_id = r["device_id"]
        has_alert = any(a.fault_code == seen.condition.value for a in known.get(device_id, []))
        if seen.present and seen.condition in suspect and not has_alert:
            continue
        place = _place(r, r["district_code"])
        if apply_observation(
            known.get(device_id, []), seen, device_id=device_id, place=place, now=now,
            new_alert_id="probe", policy=policy,
        ) is None:  # fmt: skip
            continue
        # A change: decide again under the device's lock with what is stored now (the batch's
        # fault path may have merged the lamp's own day_burning report meanwhile).
        with conn.transaction():
            _lock(conn, device_id)
            active = [
                a
                for a in active_alerts(conn, kinds=[AlertKind.LAMP_FAULT.value], source_id=device_id)
                if a.fault_code in _CONDITIONS
            ]
            changed = apply_observation(
                active,
                seen,
                device_id=device_id,
                place=place,
                now=now,
                new_alert_id=new_alert_id(),
                policy=policy,
            )
            if changed is None:
                continue
            previous = next((a for a in active if a.id == changed.id), None)
            save_alert(conn, changed, previous=previous)
            if previous is None:
                counts["daynight_new"] += 1
            elif changed.is_active:
                counts["daynight_repeated"] += 1
            else:
                counts["daynight_resolved"] += 1
    return counts


def raise_storage_job_alert(conn: Conn, now: datetime) -> list[JobProblem]:
    """Keep the one storage alert in step with the storage jobs' health; returns the problems."""
    problems = storage_job_problems(conn, now=now)
    with conn.transaction():
        _lock(conn, "ingest:storage-alert")
        active = active_alerts(conn, kinds=[AlertKind.STORAGE.value])
        changed, previous = storage_alert_update(
            active, [f"{p.job}: {p.problem}" for p in problems], now=now, new_alert_id=new_alert_id()
        )
        if changed is not None:
            save_alert(conn, changed, previous=previous)
            log.warning(
                "storage jobs alert %s: %s",
                changed.state.value,
                [p.as_dict() for p in problems],
            )
    return problems
