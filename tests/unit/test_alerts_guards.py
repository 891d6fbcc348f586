"""Guards (pure): who is on duty at an instant, the notification, the guards' answers, their step
of the escalation chain."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import (
    CITY_CENTRE,
    POLICE,
    SEOUL,
    Alert,
    AlertKind,
    AlertState,
    EscalationKind,
    EscalationPolicy,
    EventAction,
    Guard,
    GuardShift,
    InvalidAlertData,
    InvalidTransition,
    Place,
    acknowledge,
    dispatch,
    due_escalations,
    format_weekdays,
    guard_acknowledge,
    guard_acknowledged,
    guard_arrive,
    guards_notified,
    guards_on_duty,
    guards_sent_to,
    new_alert,
    next_escalation_at,
    notify_guards,
    on_duty,
    parse_weekdays,
    record_escalation,
    resolve,
)

MON_FRI = frozenset(range(5))
NIGHT = GuardShift(dt.time(21, 0), dt.time(2, 30), MON_FRI)
ZONE = "1116055"


def kst(y: int, m: int, d: int, h: int, mi: int = 0) -> dt.datetime:
    return dt.datetime(y, m, d, h, mi, tzinfo=SEOUL)


# 2026-12-04 is a Friday, 12-05 a Saturday, 12-06 a Sunday, 12-07 a Monday.
def test_a_shift_crossing_midnight_belongs_to_the_weekday_it_started() -> None:
    assert kst(2026, 12, 4, 0, 0).weekday() == 4
    assert NIGHT.covers(kst(2026, 12, 4, 22))  # Friday 22:00
    assert NIGHT.covers(kst(2026, 12, 5, 1, 0))  # Saturday 01:00: Friday's shift
    assert NIGHT.started_on(kst(2026, 12, 5, 1, 0)) == dt.date(2026, 12, 4)
    assert not NIGHT.covers(kst(2026, 12, 5, 22))  # Saturday 22:00: no Saturday shift
    assert not NIGHT.covers(kst(2026, 12, 7, 1, 0))  # Monday 01:00 is Sunday's shift: none
    assert NIGHT.covers(kst(2026, 12, 8, 1, 0))  # Tuesday 01:00 is Monday's shift


def test_the_edges_of_a_shift_and_the_day_between() -> None:
    monday = [kst(2026, 12, 7, h, m) for h, m in ((20, 59), (21, 0), (23, 59))]
    assert [NIGHT.covers(t) for t in monday] == [False, True, True]
    tuesday = [kst(2026, 12, 8, h, m) for h, m in ((0, 0), (2, 29), (2, 30), (15, 0))]
    assert [NIGHT.covers(t) for t in tuesday] == [True, True, False, False]
    # 13:00 UTC is 22:00 in Seoul, whatever the caller's zone.
    assert NIGHT.covers(dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.UTC))
    day = GuardShift(dt.time(9, 0), dt.time(18, 0), frozenset({5}))
    assert day.covers(kst(2026, 12, 5, 9)) and not day.covers(kst(2026, 12, 5, 18))
    assert not day.covers(kst(2026, 12, 6, 10))


@given(
    st.datetimes(min_value=dt.datetime(2020, 1, 1), max_value=dt.datetime(2035, 1, 1)),
    st.times(),
    st.times(),
    st.frozensets(st.integers(0, 6), min_size=1),
)
def test_on_duty_means_inside_a_shift_started_on_a_duty_day(
    naive: dt.datetime, starts: dt.time, ends: dt.time, days: frozenset[int]
) -> None:
    starts, ends = starts.replace(microsecond=0), ends.replace(microsecond=0)
    if starts == ends:
        return
    at = naive.replace(tzinfo=dt.UTC)
    shift = GuardShift(starts, ends, days)
    local_day = at.astimezone(SEOUL).date()
    # The reference: the concrete shifts that started yesterday and today (Seoul), as intervals.
    inside = False
    for start_day in (local_day - dt.timedelta(days=1), local_day):
        begin = dt.datetime.combine(start_day, starts, SEOUL)
        end_day = start_day + dt.timedelta(days=1) if ends < starts else start_day
        end = dt.datetime.combine(end_day, ends, SEOUL)
        if begin <= at < end and start_day.weekday() in days:
            inside = True
    assert shift.covers(at) == inside


def test_the_guards_on_duty_are_those_of_the_zone_whose_shift_covers_the_instant() -> None:
    roster = [
        Guard("kim", ZONE, NIGHT),
        Guard("lee", ZONE, GuardShift(dt.time(21), dt.time(2, 30), frozenset({1, 2, 3, 4, 5}))),
        Guard("park", "1121064", NIGHT),
    ]
    monday_night = kst(2026, 12, 7, 22)
    saturday_night = kst(2026, 12, 5, 22)
    assert [g.username for g in guards_on_duty(roster, ZONE, monday_night)] == ["kim"]
    assert [g.username for g in guards_on_duty(roster, ZONE, saturday_night)] == ["lee"]
    assert guards_on_duty(roster, ZONE, kst(2026, 12, 7, 15)) == ()
    assert guards_on_duty(roster, "", monday_night) == ()
    assert on_duty(roster[2], monday_night)


def test_weekdays_are_read_as_names_and_ranges() -> None:
    assert parse_weekdays("mon-fri") == MON_FRI
    assert parse_weekdays("Sun-Thu") == frozenset({6, 0, 1, 2, 3})
    assert parse_weekdays("mon,wed, fri") == frozenset({0, 2, 4})
    assert parse_weekdays("friday-monday") == frozenset({4, 5, 6, 0})
    assert format_weekdays(MON_FRI) == "mon,tue,wed,thu,fri"
    for bad in ("", "xyz", "mon-", "mo"):
        with pytest.raises(InvalidAlertData):
            parse_weekdays(bad)
    with pytest.raises(InvalidAlertData):
        GuardShift(dt.time(21), dt.time(21), MON_FRI)
    with pytest.raises(InvalidAlertData):
        GuardShift(dt.time(21), dt.time(2), frozenset({7}))


# ------------------------------------------------------------------ the alert's side

T0 = dt.datetime(2026, 12, 7, 13, 0, tzinfo=dt.UTC)  # Monday 22:00 in Seoul
BOTH = [EventAction.GUARD_ACKNOWLEDGED, EventAction.GUARD_ARRIVED]
ON = (Guard("kim", ZONE, NIGHT), Guard("choi", ZONE, NIGHT))


def sos() -> Alert:
    place = Place(lat=37.55, lon=126.85, district_code="11160", dong_code=ZONE, dong_name="화곡본동")
    return new_alert(alert_id="SOS-1", kind=AlertKind.SOS, place=place, source_id="res", now=T0)


def sent() -> Alert:
    return notify_guards(sos(), ZONE, "화곡본동", ON, T0 + dt.timedelta(seconds=1), "controller:c")


def test_the_notification_names_the_guards_once() -> None:
    alert = sent()
    assert guards_notified(alert) and guards_sent_to(alert) == ("choi", "kim")
    event = alert.timeline[-1]
    assert event.action is EventAction.ESCALATED and event.detail("targets") == f"guards:{ZONE}"
    again = notify_guards(alert, ZONE, "화곡본동", ON[:1], T0, "controller:c")
    assert again is alert


def test_only_a_guard_it_was_sent_to_may_answer_and_answers_go_into_the_timeline() -> None:
    alert = sent()
    with pytest.raises(InvalidTransition):
        guard_acknowledge(alert, "park", T0)
    acked = guard_acknowledge(alert, "kim", T0 + dt.timedelta(seconds=20))
    assert acked.timeline[-1].action is EventAction.GUARD_ACKNOWLEDGED
    assert acked.timeline[-1].actor == "guard:kim"
    assert acked.state is AlertState.OPEN  # the centre's own state is the centre's
    assert guard_acknowledge(acked, "kim", T0) is acked
    assert guard_acknowledged(acked, "kim") and not guard_acknowledged(acked, "choi")
    there = guard_arrive(acked, "kim", T0 + dt.timedelta(seconds=200))
    assert [e.action for e in there.timeline[-2:]] == [
        EventAction.GUARD_ACKNOWLEDGED,
        EventAction.GUARD_ARRIVED,
    ]
    direct = guard_arrive(alert, "choi", T0 + dt.timedelta(seconds=50))
    assert [e.action for e in direct.timeline[-2:]] == [
        EventAction.GUARD_ACKNOWLEDGED,
        EventAction.GUARD_ARRIVED,
    ]
    closed = resolve(acknowledge(there, T0, "operator:x"), T0, "operator:x")
    with pytest.raises(InvalidTransition):
        guard_arrive(closed, "choi", T0)


def test_no_guard_acknowledging_in_time_takes_the_sos_up_the_chain() -> None:
    policy = EscalationPolicy(renotify_after_s=600.0, police_after_s=900.0, guard_ack_after_s=60.0)
    alert = sent()
    notified = T0 + dt.timedelta(seconds=1)
    assert next_escalation_at(alert, policy) == notified + dt.timedelta(seconds=60)
    assert due_escalations(alert, notified + dt.timedelta(seconds=59), policy) == ()
    (step,) = due_escalations(alert, notified + dt.timedelta(seconds=60), policy)
    assert step.kind is EscalationKind.GUARDS_UNANSWERED and step.targets == (CITY_CENTRE, POLICE)
    done = record_escalation(alert, step, notified + dt.timedelta(seconds=60))
    assert due_escalations(done, notified + dt.timedelta(seconds=120), policy) == ()
    # The centre's acknowledgement does not answer for the guards: the step still comes.
    centre_acked = acknowledge(alert, T0 + dt.timedelta(seconds=5), "operator:x")
    assert [s.kind for s in due_escalations(centre_acked, T0 + dt.timedelta(seconds=90), policy)] == [
        EscalationKind.GUARDS_UNANSWERED
    ]
    # A guard's acknowledgement, a dispatch, or no guard sent: no step.
    guard_acked = guard_acknowledge(alert, "choi", T0 + dt.timedelta(seconds=30))
    assert due_escalations(guard_acked, T0 + dt.timedelta(seconds=500), policy) == ()
    dispatched = dispatch(alert, T0 + dt.timedelta(seconds=5), "operator:x")
    assert due_escalations(dispatched, T0 + dt.timedelta(seconds=500), policy) == ()
    webhook_only = notify_guards(sos(), ZONE, "화곡본동", (), T0, "controller:c")
    assert EscalationKind.GUARDS_UNANSWERED not in [
        s.kind for s in due_escalations(webhook_only, T0 + dt.timedelta(seconds=5000), policy)
    ]
    with pytest.raises(InvalidAlertData):
        EscalationPolicy(guard_ack_after_s=0.0)
