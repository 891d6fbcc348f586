"""Escalation of unacknowledged alerts, as a pure function of the alert and `now`.

Done escalations are events in the alert's own timeline, so asking twice never repeats one and
a controller that takes over a district (after a crash) carries on from the stored alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from alerts._errors import InvalidAlertData
from alerts._guards import guard_acknowledged, guards_notified_at, guards_sent_to
from alerts._model import Alert, AlertKind, AlertState, Event, EventAction, require_aware, with_event
from alerts._routing import CITY_CENTRE, route

POLICE = "police"  # target of a direct police notification (the service posts CAP to a webhook)


class EscalationKind(StrEnum):
    """The escalation steps (issue #2 and #5)."""

    RENOTIFY = "renotify"  # send the alert again to its own centre(s)
    NOTIFY_CITY = "notify_city"  # tell the city-level centre
    POLICE = "police"  # flag for direct police notification
    GUARDS_UNANSWERED = "guards_unanswered"  # no guard acknowledged in time: the city centre and police


@dataclass(frozen=True, slots=True)
class EscalationPolicy:
    """When an alert nobody acknowledged escalates, counted from its creation."""

    # 30 s and 90 s are the figures of issues #2 and #5.
    renotify_after_s: float = 30.0
    police_after_s: float = 90.0
    # An SOS sent to guards that none of them acknowledged this long after: up the chain.
    guard_ack_after_s: float = 60.0
    kinds: frozenset[AlertKind] = frozenset({AlertKind.SOS})  # maintenance alerts wait for the shift

    def __post_init__(self) -> None:
        if not (0.0 <= self.renotify_after_s <= self.police_after_s):
            raise InvalidAlertData(
                "need 0 <= renotify_after_s <= police_after_s, "
                f"got {self.renotify_after_s} and {self.police_after_s}"
            )
        if not self.guard_ack_after_s > 0.0:
            raise InvalidAlertData(f"need guard_ack_after_s > 0, got {self.guard_ack_after_s}")


DEFAULT_ESCALATION = EscalationPolicy()


@dataclass(frozen=True, slots=True)
class EscalationAction:
    """One escalation step: what, when it was due, and to whom."""

    kind: EscalationKind
    due_at: datetime
    targets: tuple[str, ...]


def _plan(alert: Alert, policy: EscalationPolicy) -> tuple[EscalationAction, ...]:
    renotify_at = alert.created_at + timedelta(seconds=policy.renotify_after_s)
    police_at = alert.created_at + timedelta(seconds=policy.police_after_s)
    return (
        EscalationAction(EscalationKind.RENOTIFY, renotify_at, route(alert.place)),
        EscalationAction(EscalationKind.NOTIFY_CITY, renotify_at, (CITY_CENTRE,)),
        EscalationAction(EscalationKind.POLICE, police_at, (POLICE,)),
    )


def escalations_done(alert: Alert) -> frozenset[EscalationKind]:
    """The escalation steps already recorded in the alert's timeline."""
    done: set[EscalationKind] = set()
    for event in alert.timeline:
        if event.action is EventAction.ESCALATED:
            value = event.detail("escalation")
            for kind in EscalationKind:
                if kind.value == value:
                    done.add(kind)
    return frozenset(done)


def _guard_step(alert: Alert, policy: EscalationPolicy) -> EscalationAction | None:
    """The step due when the guards an SOS was sent to leave it unacknowledged: while the alert is
    open or acknowledged by the centre (nobody dispatched yet), `guard_ack_after_s` after the
    guards were notified, to the city centre and the police."""
    if alert.kind is not AlertKind.SOS or alert.state not in (AlertState.OPEN, AlertState.ACKNOWLEDGED):
        return None
    notified_at = guards_notified_at(alert)
    if notified_at is None or not guards_sent_to(alert) or guard_acknowledged(alert):
        return None
    due = notified_at + timedelta(seconds=policy.guard_ack_after_s)
    return EscalationAction(EscalationKind.GUARDS_UNANSWERED, due, (CITY_CENTRE, POLICE))


def _pending(alert: Alert, policy: EscalationPolicy) -> tuple[EscalationAction, ...]:
    done = escalations_done(alert)
    steps: list[EscalationAction] = []
    if alert.state is AlertState.OPEN and alert.kind in policy.kinds:
        steps.extend(_plan(alert, policy))
    guard_step = _guard_step(alert, policy)
    if guard_step is not None:
        steps.append(guard_step)
    return tuple(step for step in steps if step.kind not in done)


def due_escalations(
    alert: Alert, now: datetime, policy: EscalationPolicy = DEFAULT_ESCALATION
) -> tuple[EscalationAction, ...]:
    """The escalation steps due at `now` and not yet recorded: the centre's chain until an operator
    acknowledges, the guards' step until a guard does (or the alert is dispatched)."""
    at = require_aware(now, "now")
    return tuple(step for step in _pending(alert, policy) if step.due_at <= at)


def next_escalation_at(alert: Alert, policy: EscalationPolicy = DEFAULT_ESCALATION) -> datetime | None:
    """When the next not-yet-recorded step falls due (possibly in the past), or None."""
    pending = _pending(alert, policy)
    return min(step.due_at for step in pending) if pending else None


def record_escalation(alert: Alert, step: EscalationAction, now: datetime, actor: str = "system") -> Alert:
    """The alert with `step` recorded as done at `now`, so it is not due again."""
    event = Event(
        at=require_aware(now, "now"),
        actor=actor,
        action=EventAction.ESCALATED,
        details=(("escalation", step.kind.value), ("targets", " ".join(step.targets))),
    )
    return with_event(alert, event)
