"""One maintenance alert for the storage jobs: opened when a job fails or stalls, kept up to date
while the set of failing jobs changes, resolved when every job succeeds again.

The problems come in as short descriptions (e.g. ``"maintenance: failed"``); reading the jobs'
state is the caller's business (``store.jobs.storage_job_problems``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from alerts._lifecycle import resolve
from alerts._model import Alert, AlertKind, Event, EventAction, Place, new_alert, require_aware, with_event
from alerts._routing import CITY_CENTRE

STORAGE_SOURCE = "storage-jobs"
# The storage is the city's, not a district's: the alert goes to the city-level centre, placed
# at Seoul City Hall so the console's map can show it.
STORAGE_PLACE = Place(lat=37.5665, lon=126.9780, district_code=CITY_CENTRE)


def _summary(problems: Sequence[str]) -> str:
    return "; ".join(sorted(problems))


def storage_alert_update(
    active_alerts: Iterable[Alert], problems: Sequence[str], *, now: datetime, new_alert_id: str
) -> tuple[Alert | None, Alert | None]:
    """(the alert to save, the stored alert it replaces) for the current problems; (None, None)
    when nothing changes. At most one storage alert is ever active."""
    at = require_aware(now, "now")
    existing = next(
        (
            a
            for a in active_alerts
            if a.kind is AlertKind.STORAGE and a.is_active and a.source_id == STORAGE_SOURCE
        ),
        None,
    )
    summary = _summary(problems)
    if existing is None:
        if not problems:
            return None, None
        created = new_alert(
            alert_id=new_alert_id,
            kind=AlertKind.STORAGE,
            place=STORAGE_PLACE,
            source_id=STORAGE_SOURCE,
            now=at,
            note=summary,
            fault_code=summary[:200],
        )
        return created, None
    if not problems:
        return resolve(existing, at, "system", "every storage job succeeds again"), existing
    if existing.fault_code == summary[:200]:
        return None, None
    event = Event(at=at, actor="system", action=EventAction.REPEATED, note=summary)
    return with_event(existing, event, fault_code=summary[:200], count=existing.count + 1), existing
