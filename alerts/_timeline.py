"""Incident timelines for the console: events in time order, one alert or several."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from alerts._model import Alert, EventAction


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One line of an incident timeline."""

    alert_id: str
    at: datetime
    elapsed_s: float  # since the alert was created
    actor: str
    action: EventAction
    note: str
    details: tuple[tuple[str, str], ...]


def incident_timeline(alert: Alert) -> tuple[TimelineEntry, ...]:
    """The alert's events in time order (ties keep their recorded order)."""
    entries = (
        TimelineEntry(
            alert_id=alert.id,
            at=event.at,
            elapsed_s=(event.at - alert.created_at).total_seconds(),
            actor=event.actor,
            action=event.action,
            note=event.note,
            details=event.details,
        )
        for event in alert.timeline
    )
    # sorted() is stable: events recorded at the same instant keep their causal order.
    return tuple(sorted(entries, key=lambda entry: entry.at))


def merged_timeline(alerts: Iterable[Alert]) -> tuple[TimelineEntry, ...]:
    """The events of several alerts (e.g. a mass outage and what it superseded) in one time order."""
    entries = [entry for alert in alerts for entry in incident_timeline(alert)]
    return tuple(sorted(entries, key=lambda entry: entry.at))
