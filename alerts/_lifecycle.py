"""The lifecycle state machine: open -> acknowledged -> dispatched -> resolved, and cancelled.

Allowed transitions (anything else raises InvalidTransition):

    open          --acknowledge--> acknowledged
    open          --dispatch-----> dispatched    (records an implicit `acknowledged` event first:
                                                  an operator who sends police has seen the alert)
    acknowledged  --dispatch-----> dispatched
    acknowledged  --resolve------> resolved
    dispatched    --resolve------> resolved
    open          --resolve------> resolved      (device alerts only: a lamp that reports
                                                  fault_cleared or comes back online clears its own
                                                  alert; an SOS must be seen by a person first)
    open | acknowledged | dispatched --cancel--> cancelled   (resident cancels, false alarm,
                                                              or covered by a mass outage)

`resolved` and `cancelled` are terminal. A second dispatch is refused: a further unit is a
note on the dispatched alert, not a new state.

Bulk acknowledgement (`bulk_acknowledge`) is for maintenance alerts only: an SOS is a person in
danger and is acknowledged one at a time, after reading it; a bulk batch holding one is refused
for that item (`bulk_refusal` says why) and the others go ahead.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from alerts._errors import InvalidTransition
from alerts._model import (
    Alert,
    AlertKind,
    AlertState,
    Event,
    EventAction,
    Position,
    require_aware,
    with_event,
)


class Action(StrEnum):
    """What an operator, a resident or the system does to an alert."""

    ACKNOWLEDGE = "acknowledge"
    DISPATCH = "dispatch"
    RESOLVE = "resolve"
    CANCEL = "cancel"


class CancelReason(StrEnum):
    """Why an alert was cancelled (kept in the cancel event's details)."""

    RESIDENT_CANCELLED = "resident_cancelled"
    FALSE_ALARM = "false_alarm"
    SUPERSEDED = "superseded"  # merged into another alert, e.g. a mass outage


TARGET_STATE: dict[Action, AlertState] = {
    Action.ACKNOWLEDGE: AlertState.ACKNOWLEDGED,
    Action.DISPATCH: AlertState.DISPATCHED,
    Action.RESOLVE: AlertState.RESOLVED,
    Action.CANCEL: AlertState.CANCELLED,
}

_ALLOWED: frozenset[tuple[AlertState, Action]] = frozenset(
    {
        (AlertState.OPEN, Action.ACKNOWLEDGE),
        (AlertState.OPEN, Action.DISPATCH),
        (AlertState.ACKNOWLEDGED, Action.DISPATCH),
        (AlertState.ACKNOWLEDGED, Action.RESOLVE),
        (AlertState.DISPATCHED, Action.RESOLVE),
        (AlertState.OPEN, Action.CANCEL),
        (AlertState.ACKNOWLEDGED, Action.CANCEL),
        (AlertState.DISPATCHED, Action.CANCEL),
    }
)

_EVENT_FOR: dict[Action, EventAction] = {
    Action.ACKNOWLEDGE: EventAction.ACKNOWLEDGED,
    Action.DISPATCH: EventAction.DISPATCHED,
    Action.RESOLVE: EventAction.RESOLVED,
    Action.CANCEL: EventAction.CANCELLED,
}


def can(alert: Alert, action: Action) -> bool:
    """True if `action` is allowed in the alert's current state."""
    if (alert.state, action) in _ALLOWED:
        return True
    return alert.state is AlertState.OPEN and action is Action.RESOLVE and alert.kind is not AlertKind.SOS


def allowed_actions(alert: Alert) -> tuple[Action, ...]:
    """The actions the console may offer for this alert, in lifecycle order."""
    return tuple(action for action in Action if can(alert, action))


def transition(
    alert: Alert,
    action: Action,
    now: datetime,
    actor: str,
    note: str = "",
    details: tuple[tuple[str, str], ...] = (),
) -> Alert:
    """Apply `action` at `now`, returning the new alert with the event in its timeline."""
    if not can(alert, action):
        raise InvalidTransition(alert.id, action.value, alert.state.value, TARGET_STATE[action].value)
    at = require_aware(now, "now")
    if action is Action.DISPATCH and alert.state is AlertState.OPEN:
        implicit = Event(at=at, actor=actor, action=EventAction.ACKNOWLEDGED, note="implicit: dispatched")
        alert = with_event(alert, implicit, state=AlertState.ACKNOWLEDGED)
    event = Event(at=at, actor=actor, action=_EVENT_FOR[action], note=note, details=details)
    return with_event(alert, event, state=TARGET_STATE[action])


def acknowledge(alert: Alert, now: datetime, actor: str, note: str = "") -> Alert:
    """An operator has seen the alert; escalation stops."""
    return transition(alert, Action.ACKNOWLEDGE, now, actor, note)


def dispatch(alert: Alert, now: datetime, actor: str, note: str = "", unit: str = "") -> Alert:
    """Help is on its way (police `unit` if known); acknowledges implicitly when still open."""
    return transition(alert, Action.DISPATCH, now, actor, note, (("unit", unit),) if unit else ())


def resolve(alert: Alert, now: datetime, actor: str, note: str = "", outcome: str = "") -> Alert:
    """The incident is over (`outcome` in words, e.g. "resident safe")."""
    return transition(alert, Action.RESOLVE, now, actor, note, (("outcome", outcome),) if outcome else ())


def cancel(
    alert: Alert,
    now: datetime,
    actor: str,
    reason: CancelReason,
    note: str = "",
    superseded_by: str = "",
) -> Alert:
    """The alert should not have been raised, or another alert covers it."""
    details: tuple[tuple[str, str], ...] = (("reason", reason.value),)
    if superseded_by:
        details = (*details, ("superseded_by", superseded_by))
    return transition(alert, Action.CANCEL, now, actor, note, details)


def add_position(alert: Alert, position: Position, now: datetime, actor: str = "system") -> Alert:
    """Append a position to an active alert's track (the resident moved); terminal alerts refuse it."""
    if alert.state.is_terminal:
        raise InvalidTransition(alert.id, "add a position", alert.state.value, alert.state.value)
    event = Event(
        at=require_aware(now, "now"),
        actor=actor,
        action=EventAction.POSITION,
        details=(("lat", f"{position.lat:.6f}"), ("lon", f"{position.lon:.6f}")),
    )
    return with_event(alert, event, track=(*alert.track, position))


# The kinds an operator may acknowledge many at once: every maintenance kind, never an SOS.
BULK_ACK_KINDS: frozenset[AlertKind] = frozenset(k for k in AlertKind if k is not AlertKind.SOS)


def bulk_refusal(alert: Alert) -> str | None:
    """Why `alert` may not be acknowledged in a bulk batch (in words, for the operator), or None."""
    if alert.kind not in BULK_ACK_KINDS:
        return "an SOS is never acknowledged in bulk: open it and acknowledge it on its own"
    if not can(alert, Action.ACKNOWLEDGE):
        return f"alert is {alert.state.value}: only an open alert can be acknowledged"
    return None


def bulk_acknowledge(alert: Alert, now: datetime, actor: str, note: str = "") -> Alert:
    """Acknowledge a maintenance alert as part of a batch (the event's details say ``bulk``);
    raises InvalidTransition for an SOS or an alert that is not open (`bulk_refusal`)."""
    if bulk_refusal(alert) is not None:
        raise InvalidTransition(
            alert.id, "bulk acknowledge", alert.state.value, AlertState.ACKNOWLEDGED.value
        )
    return transition(alert, Action.ACKNOWLEDGE, now, actor, note, (("bulk", "true"),))
