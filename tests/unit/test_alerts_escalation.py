"""Escalation: due steps at 29 s / 30 s / 90 s, done once, stopped by an acknowledgement."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from alerts import (
    CITY_CENTRE,
    DEFAULT_ESCALATION,
    POLICE,
    Alert,
    AlertKind,
    CancelReason,
    EscalationKind,
    EscalationPolicy,
    InvalidAlertData,
    Place,
    Position,
    acknowledge,
    alert_from_dict,
    alert_to_dict,
    cancel,
    dispatch,
    due_escalations,
    escalations_done,
    new_alert,
    next_escalation_at,
    record_escalation,
)

T0 = datetime(2026, 11, 25, 13, 0, 0, tzinfo=UTC)
BORDER = Place(lat=37.5663, lon=126.9779, district_code="11140", neighbours=("11110",))


def sos() -> Alert:
    return new_alert(
        alert_id="sos-1",
        kind=AlertKind.SOS,
        place=BORDER,
        source_id="resident-7",
        now=T0,
        track=(Position(BORDER.lat, BORDER.lon, T0),),
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def kinds(
    alert: Alert, seconds: float, policy: EscalationPolicy = DEFAULT_ESCALATION
) -> list[EscalationKind]:
    return [step.kind for step in due_escalations(alert, at(seconds), policy)]


def do_all(alert: Alert, seconds: float) -> Alert:
    for step in due_escalations(alert, at(seconds)):
        alert = record_escalation(alert, step, at(seconds))
    return alert


def test_nothing_is_due_at_29_s() -> None:
    assert kinds(sos(), 29.999) == []


def test_at_30_s_the_alert_is_renotified_to_its_centres_and_the_city_centre_is_told() -> None:
    steps = due_escalations(sos(), at(30))
    assert [(s.kind, s.targets, s.due_at) for s in steps] == [
        (EscalationKind.RENOTIFY, ("11140", "11110"), at(30)),
        (EscalationKind.NOTIFY_CITY, (CITY_CENTRE,), at(30)),
    ]


def test_at_90_s_the_alert_is_flagged_for_direct_police_notification() -> None:
    alert = do_all(sos(), 30)
    assert kinds(alert, 89) == []
    steps = due_escalations(alert, at(90))
    assert [(s.kind, s.targets) for s in steps] == [(EscalationKind.POLICE, (POLICE,))]


def test_a_late_first_look_at_95_s_returns_all_three_steps_at_once() -> None:
    assert kinds(sos(), 95) == [EscalationKind.RENOTIFY, EscalationKind.NOTIFY_CITY, EscalationKind.POLICE]


def test_recorded_steps_are_not_due_again_so_calling_twice_repeats_nothing() -> None:
    alert = do_all(sos(), 30)
    assert kinds(alert, 31) == []
    alert = do_all(alert, 90)
    assert kinds(alert, 500) == []
    # Every step of the centre's chain; the guards' step needs guards that were sent the SOS.
    assert escalations_done(alert) == frozenset(EscalationKind) - {EscalationKind.GUARDS_UNANSWERED}
    assert next_escalation_at(alert) is None


def test_recorded_steps_survive_storage_so_a_new_controller_does_not_repeat_them() -> None:
    alert = alert_from_dict(alert_to_dict(do_all(sos(), 30)))
    assert kinds(alert, 40) == []
    assert next_escalation_at(alert) == at(90)


def test_next_escalation_at_names_the_timer_for_each_step() -> None:
    alert = sos()
    assert next_escalation_at(alert) == at(30)
    assert next_escalation_at(do_all(alert, 30)) == at(90)


@pytest.mark.parametrize(
    "stop",
    [
        lambda a: acknowledge(a, at(10), "op-1"),
        lambda a: dispatch(a, at(10), "op-1"),
        lambda a: cancel(a, at(10), "resident", CancelReason.RESIDENT_CANCELLED),
    ],
    ids=["acknowledged", "dispatched", "cancelled"],
)
def test_an_acknowledged_dispatched_or_cancelled_alert_does_not_escalate(
    stop: Callable[[Alert], Alert],
) -> None:
    alert = stop(sos())
    assert due_escalations(alert, at(200)) == ()
    assert next_escalation_at(alert) is None


def test_acknowledging_after_the_first_step_stops_the_police_step() -> None:
    alert = acknowledge(do_all(sos(), 30), at(45), "op-1")
    assert kinds(alert, 120) == []


def test_maintenance_alerts_do_not_escalate_by_default_but_can_be_configured_to() -> None:
    alert = new_alert(alert_id="t-1", kind=AlertKind.TAMPER, place=BORDER, source_id="lamp-1", now=T0)
    assert kinds(alert, 500) == []
    policy = EscalationPolicy(kinds=frozenset({AlertKind.TAMPER}))
    assert EscalationKind.POLICE in kinds(alert, 500, policy)


def test_the_escalation_times_are_configurable() -> None:
    policy = EscalationPolicy(renotify_after_s=10, police_after_s=20)
    assert kinds(sos(), 10, policy) == [EscalationKind.RENOTIFY, EscalationKind.NOTIFY_CITY]
    assert next_escalation_at(sos(), policy) == at(10)
    with pytest.raises(InvalidAlertData):
        EscalationPolicy(renotify_after_s=60, police_after_s=30)


def test_an_escalation_is_an_audit_event_naming_the_step_and_targets() -> None:
    alert = do_all(sos(), 30)
    event = alert.timeline[-2]
    assert event.detail("escalation") == "renotify" and event.detail("targets") == "11140 11110"
    assert alert.timeline[-1].detail("targets") == CITY_CENTRE
