"""One maintenance alert for device messages that never reached ingest (sequence gaps).

A device numbers its telemetry and events with one counter; a number that never arrives is a
message lost between the device and the database: past the broker's bound (``max_queued_messages``
while ingest is away), or on the device's own link. Ingest counts these gaps per device
(``ingest_seq_gaps_total``) and hands each batch's gaps here: the first opens one ``data_loss``
alert for the city centre, every later one counts into it (``count``: the messages missing; its
devices, up to ``MAX_DEVICES``; a timeline event at most every ``EVENT_EVERY_S``), so a fleet-wide
loss is one alert, not one per lamp. A loss is a fact, not a condition that clears: the alert stays
until an operator resolves it; a loss after that opens a new one.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime

from alerts._model import Alert, AlertKind, Event, EventAction, new_alert, require_aware, with_event
from alerts._storage import STORAGE_PLACE

DATA_LOSS_SOURCE = "ingest-seq-gaps"
DATA_LOSS_CODE = "seq_gaps"
MAX_DEVICES = 100  # devices named on the alert; the count covers them all
EVENT_EVERY_S = 60.0  # while losses go on, the timeline grows by one event per this at most


def _summary(gaps: Mapping[str, tuple[str, int]]) -> str:
    """``"950 messages missing from 20 devices (11230: 950)"``: per district, largest first."""
    by_district: Counter[str] = Counter()
    for district, n in gaps.values():
        by_district[district or "?"] += n
    districts = ", ".join(f"{d}: {n}" for d, n in by_district.most_common(10))
    more = f" and {len(by_district) - 10} more districts" if len(by_district) > 10 else ""
    total = sum(by_district.values())
    return f"{total} messages missing from {len(gaps)} devices ({districts}{more})"


def data_loss_update(
    active_alerts: Iterable[Alert],
    gaps: Mapping[str, tuple[str, int]],
    *,
    now: datetime,
    new_alert_id: str,
) -> tuple[Alert | None, Alert | None]:
    """(the alert to save, the stored alert it replaces) for a batch's sequence ``gaps``
    (device id -> (district code, messages missing)); (None, None) when there are none."""
    at = require_aware(now, "now")
    missing = sum(n for _district, n in gaps.values())
    if missing <= 0:
        return None, None
    summary = _summary(gaps)
    existing = next(
        (
            a
            for a in active_alerts
            if a.kind is AlertKind.DATA_LOSS and a.is_active and a.source_id == DATA_LOSS_SOURCE
        ),
        None,
    )
    devices = tuple(sorted(gaps))[:MAX_DEVICES]
    if existing is None:
        created = new_alert(
            alert_id=new_alert_id,
            kind=AlertKind.DATA_LOSS,
            place=STORAGE_PLACE,
            source_id=DATA_LOSS_SOURCE,
            now=at,
            note=summary,
            device_ids=devices,
            fault_code=DATA_LOSS_CODE,
        )
        return dataclasses.replace(created, count=missing), None
    named = tuple(sorted({*existing.device_ids, *devices}))[:MAX_DEVICES]
    count = existing.count + missing
    last_at = existing.timeline[-1].at if existing.timeline else existing.created_at
    if (at - last_at).total_seconds() < EVENT_EVERY_S:
        return dataclasses.replace(existing, count=count, device_ids=named), existing
    event = Event(at=at, actor="system", action=EventAction.REPEATED, note=summary)
    return with_event(existing, event, count=count, device_ids=named), existing
