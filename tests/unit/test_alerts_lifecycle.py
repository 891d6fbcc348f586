"""Alert lifecycle: the full state x action matrix, audit events, timelines and the dict round trip."""

from __future__ import annotations

import json
from dataclasses import FrozenInstanceError
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import (
    ACTIVE_STATES,
    Action,
    Alert,
    AlertError,
    AlertKind,
    AlertState,
    CancelReason,
    EventAction,
    InvalidAlertData,
    InvalidTransition,
    NearestLamp,
    Place,
    Position,
    Severity,
    acknowledge,
    add_position,
    alert_from_dict,
    alert_to_dict,
    allowed_actions,
    can,
    cancel,
    dispatch,
    incident_timeline,
    is_active_state,
    merged_timeline,
    new_alert,
    place_in_words,
    resolve,
    transition,
)

T0 = datetime(2026, 11, 25, 13, 0, 0, tzinfo=UTC)
PLACE = Place(
    lat=37.5663,
    lon=126.9779,
    district_code="11140",
    district_name="중구",
    dong_code="1114052000",
    dong_name="소공동",
    district_name_en="Jung-gu",
    dong_name_en="Sogong-dong",
    nearest_lamps=(
        NearestLamp("lamp-42", "11020-03-0042", 12.2),
        NearestLamp("lamp-43", "11020-03-0043", 31.0),
    ),
)


def sos(alert_id: str = "sos-1") -> Alert:
    position = Position(PLACE.lat, PLACE.lon, T0, accuracy_m=8.0)
    return new_alert(
        alert_id=alert_id,
        kind=AlertKind.SOS,
        place=PLACE,
        source_id="resident-7",
        now=T0,
        actor="resident:resident-7",
        track=(position,),
    )


def in_state(state: AlertState, kind: AlertKind = AlertKind.SOS) -> Alert:
    alert = (
        sos()
        if kind is AlertKind.SOS
        else new_alert(
            alert_id="dev-1", kind=kind, place=PLACE, source_id="lamp-42", now=T0, device_ids=("lamp-42",)
        )
    )
    t = T0 + timedelta(seconds=5)
    if state is AlertState.ACKNOWLEDGED:
        alert = acknowledge(alert, t, "op-1")
    elif state is AlertState.DISPATCHED:
        alert = dispatch(acknowledge(alert, t, "op-1"), t, "op-1", unit="중부서 112-3")
    elif state is AlertState.RESOLVED:
        alert = resolve(acknowledge(alert, t, "op-1"), t, "op-1")
    elif state is AlertState.CANCELLED:
        alert = cancel(alert, t, "resident:resident-7", CancelReason.RESIDENT_CANCELLED)
    assert alert.state is state
    return alert


ALLOWED_FOR_SOS = {
    (AlertState.OPEN, Action.ACKNOWLEDGE): AlertState.ACKNOWLEDGED,
    (AlertState.OPEN, Action.DISPATCH): AlertState.DISPATCHED,
    (AlertState.OPEN, Action.CANCEL): AlertState.CANCELLED,
    (AlertState.ACKNOWLEDGED, Action.DISPATCH): AlertState.DISPATCHED,
    (AlertState.ACKNOWLEDGED, Action.RESOLVE): AlertState.RESOLVED,
    (AlertState.ACKNOWLEDGED, Action.CANCEL): AlertState.CANCELLED,
    (AlertState.DISPATCHED, Action.RESOLVE): AlertState.RESOLVED,
    (AlertState.DISPATCHED, Action.CANCEL): AlertState.CANCELLED,
}
MATRIX = [(state, action) for state in AlertState for action in Action]


@pytest.mark.parametrize(("state", "action"), MATRIX, ids=[f"{s.value}-{a.value}" for s, a in MATRIX])
def test_every_state_and_action_of_an_sos_is_allowed_or_refused_by_the_table(
    state: AlertState, action: Action
) -> None:
    alert = in_state(state)
    now = T0 + timedelta(seconds=20)
    expected = ALLOWED_FOR_SOS.get((state, action))
    assert can(alert, action) is (expected is not None)
    if expected is None:
        with pytest.raises(InvalidTransition) as caught:
            transition(alert, action, now, "op-2")
        message = str(caught.value)
        assert alert.id in message and f"'{state.value}'" in message
        assert caught.value.from_state == state.value
        assert caught.value.to_state in message
        return
    after = transition(alert, action, now, "op-2", note="checked")
    assert after.state is expected
    assert after.timeline[-1].actor == "op-2" and after.timeline[-1].at == now
    assert after.timeline[-1].note == "checked"
    assert alert.state is state  # the original is untouched


@pytest.mark.parametrize("kind", [AlertKind.LAMP_FAULT, AlertKind.DEVICE_OFFLINE, AlertKind.TAMPER])
def test_a_device_alert_may_resolve_straight_from_open_when_the_device_clears_it(kind: AlertKind) -> None:
    alert = in_state(AlertState.OPEN, kind)
    resolved = resolve(alert, T0 + timedelta(minutes=3), "system", outcome="fault_cleared")
    assert resolved.state is AlertState.RESOLVED
    assert resolved.timeline[-1].detail("outcome") == "fault_cleared"


def test_an_open_sos_cannot_be_resolved_without_a_person_seeing_it() -> None:
    with pytest.raises(InvalidTransition, match=r"sos-1.*'open'.*'resolved'"):
        resolve(sos(), T0, "op-1")


@pytest.mark.parametrize("state", list(AlertState), ids=[s.value for s in AlertState])
def test_an_alert_is_active_exactly_when_its_state_is_one_of_the_active_states(state: AlertState) -> None:
    alert = in_state(state)
    assert alert.is_active is (state in ACTIVE_STATES) is (not state.is_terminal)
    assert alert.is_active is bool(allowed_actions(alert))


def test_the_active_states_are_the_non_terminal_ones_in_lifecycle_order() -> None:
    assert ACTIVE_STATES == (AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.DISPATCHED)


def test_dispatching_an_open_alert_records_an_implicit_acknowledgement_first() -> None:
    now = T0 + timedelta(seconds=12)
    alert = dispatch(sos(), now, "op-1", unit="중부서 112-3")
    assert [e.action for e in alert.timeline] == [
        EventAction.CREATED,
        EventAction.ACKNOWLEDGED,
        EventAction.DISPATCHED,
    ]
    assert alert.acknowledged_at == now
    assert alert.timeline[-1].detail("unit") == "중부서 112-3"


def test_terminal_states_offer_no_actions_and_open_offers_all_but_resolve_for_sos() -> None:
    assert allowed_actions(in_state(AlertState.RESOLVED)) == ()
    assert allowed_actions(in_state(AlertState.CANCELLED)) == ()
    assert allowed_actions(sos()) == (Action.ACKNOWLEDGE, Action.DISPATCH, Action.CANCEL)


def test_the_full_lifecycle_leaves_an_audit_trail_with_time_actor_note_and_details() -> None:
    alert = sos()
    alert = acknowledge(alert, T0 + timedelta(seconds=9), "op-1", note="calling resident")
    alert = dispatch(alert, T0 + timedelta(seconds=40), "op-1", unit="중부서 112-3")
    alert = resolve(alert, T0 + timedelta(minutes=7), "op-2", outcome="resident safe")
    trail = [(e.action, e.actor, e.note) for e in alert.timeline]
    assert trail == [
        (EventAction.CREATED, "resident:resident-7", ""),
        (EventAction.ACKNOWLEDGED, "op-1", "calling resident"),
        (EventAction.DISPATCHED, "op-1", ""),
        (EventAction.RESOLVED, "op-2", ""),
    ]
    assert alert.timeline[-1].detail("outcome") == "resident safe"


def test_cancelling_records_the_reason_and_what_superseded_it() -> None:
    alert = cancel(sos(), T0, "system", CancelReason.SUPERSEDED, superseded_by="outage-1")
    assert alert.timeline[-1].detail("reason") == "superseded"
    assert alert.timeline[-1].detail("superseded_by") == "outage-1"


def test_alerts_are_frozen_values() -> None:
    alert = sos()
    with pytest.raises(FrozenInstanceError):
        alert.state = AlertState.RESOLVED  # type: ignore[misc]


def test_a_naive_now_is_refused_and_an_aware_one_is_kept_in_utc() -> None:
    with pytest.raises(InvalidAlertData, match="timezone-aware"):
        acknowledge(sos(), datetime(2026, 11, 25, 22, 0, 0), "op-1")
    kst = timezone(timedelta(hours=9))
    alert = acknowledge(sos(), datetime(2026, 11, 25, 22, 0, 5, tzinfo=kst), "op-1")
    assert alert.timeline[-1].at == T0 + timedelta(seconds=5)
    assert alert.timeline[-1].at.tzinfo is UTC


@pytest.mark.parametrize(("lat", "lon"), [(float("nan"), 127.0), (91.0, 127.0), (37.5, 181.0)])
def test_impossible_coordinates_are_refused(lat: float, lon: float) -> None:
    with pytest.raises(InvalidAlertData, match="coordinates"):
        Place(lat=lat, lon=lon)


def test_positions_are_appended_to_the_track_of_an_active_sos_only() -> None:
    moved = Position(37.5665, 126.9781, T0 + timedelta(seconds=10), accuracy_m=15.0)
    alert = add_position(sos(), moved, T0 + timedelta(seconds=10))
    assert alert.track[-1] == moved and len(alert.track) == 2
    assert alert.last_position == (37.5665, 126.9781)
    with pytest.raises(InvalidTransition):
        add_position(in_state(AlertState.RESOLVED), moved, T0 + timedelta(seconds=10))


def test_the_place_reads_in_korean_and_english_with_the_nearest_lamp_numbers() -> None:
    assert place_in_words(PLACE, "ko") == "중구 소공동, 보안등 11020-03-0042 (12 m), 11020-03-0043 (31 m)"
    assert place_in_words(PLACE, "en") == (
        "Jung-gu, Sogong-dong, security light 11020-03-0042 (12 m), 11020-03-0043 (31 m)"
    )
    outside = Place(lat=37.7, lon=127.3, inside=False)
    assert place_in_words(outside, "ko").startswith("서울시 관할 구역 밖 (37.70000, 127.30000)")
    assert place_in_words(outside, "en").startswith("outside the Seoul service area")


def test_sos_defaults_to_cap_severe_and_a_lamp_fault_to_minor() -> None:
    assert sos().severity is Severity.SEVERE
    assert in_state(AlertState.OPEN, AlertKind.LAMP_FAULT).severity is Severity.MINOR


def test_the_incident_timeline_is_chronological_with_elapsed_seconds() -> None:
    alert = dispatch(
        acknowledge(sos(), T0 + timedelta(seconds=9), "op-1"), T0 + timedelta(seconds=40), "op-1"
    )
    entries = incident_timeline(alert)
    assert [e.elapsed_s for e in entries] == [0.0, 9.0, 40.0]
    other = acknowledge(sos("sos-2"), T0 + timedelta(seconds=20), "op-3")
    merged = merged_timeline([alert, other])
    assert [e.at for e in merged] == sorted(e.at for e in merged)
    assert [e.alert_id for e in merged] == ["sos-1", "sos-2", "sos-1", "sos-2", "sos-1"]


def test_an_alert_survives_a_json_round_trip_exactly() -> None:
    alert = sos()
    alert = add_position(alert, Position(37.5665, 126.9781, T0 + timedelta(seconds=3, microseconds=250)), T0)
    alert = dispatch(alert, T0 + timedelta(seconds=40), "op-1", unit="중부서 112-3")
    data = json.loads(json.dumps(alert_to_dict(alert), ensure_ascii=False))
    assert alert_from_dict(data) == alert
    assert data["centres"] == ["11140"]
    assert data["place_text_ko"].startswith("중구 소공동")


def test_a_device_alert_round_trips_with_its_devices_fault_and_count() -> None:
    alert = new_alert(
        alert_id="f-1",
        kind=AlertKind.LAMP_FAULT,
        place=Place(lat=37.5, lon=127.0, inside=False),
        source_id="lamp-9",
        now=T0,
        device_ids=("lamp-9",),
        fault_code="lamp_failure",
    )
    assert alert_from_dict(alert_to_dict(alert)) == alert


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("kind", "flood", "unknown value 'flood'"),
        ("count", True, "'count' has wrong type bool"),
        ("created_at", "2026-11-25T13:00:00", "timezone-aware"),
        ("created_at", "yesterday", "not an ISO 8601 time"),
        ("track", "nope", "'track' has wrong type"),
    ],
)
def test_a_malformed_dict_is_refused_naming_the_field(field: str, value: object, message: str) -> None:
    data = alert_to_dict(sos())
    data[field] = value
    with pytest.raises(InvalidAlertData, match=message):
        alert_from_dict(data)


def test_a_dict_missing_a_field_is_refused_naming_it() -> None:
    data = alert_to_dict(sos())
    del data["state"]
    with pytest.raises(InvalidAlertData, match="missing field 'state'"):
        alert_from_dict(data)


@given(
    kind=st.sampled_from(AlertKind),
    actions=st.lists(st.sampled_from(Action), max_size=8),
)
def test_any_sequence_of_actions_follows_the_reference_table_and_only_grows_the_audit_trail(
    kind: AlertKind, actions: list[Action]
) -> None:
    alert = new_alert(alert_id="p-1", kind=kind, place=PLACE, source_id="x", now=T0)
    expected_state = AlertState.OPEN
    for n, action in enumerate(actions, start=1):
        allowed = ALLOWED_FOR_SOS.get((expected_state, action))
        if (
            allowed is None
            and kind is not AlertKind.SOS
            and (expected_state, action)
            == (
                AlertState.OPEN,
                Action.RESOLVE,
            )
        ):
            allowed = AlertState.RESOLVED
        before = alert
        try:
            alert = transition(alert, action, T0 + timedelta(seconds=n), "op")
        except InvalidTransition:
            assert allowed is None
            continue
        assert allowed is not None and alert.state is allowed
        assert alert.timeline[: len(before.timeline)] == before.timeline
        assert len(alert.timeline) > len(before.timeline)
        expected_state = allowed
    assert alert.state is expected_state
    assert alert.timeline[0].action is EventAction.CREATED
    assert [e.at for e in alert.timeline] == sorted(e.at for e in alert.timeline)


def test_the_errors_form_one_tree_and_carry_their_facts() -> None:
    assert issubclass(InvalidTransition, AlertError) and issubclass(InvalidAlertData, AlertError)
    assert issubclass(InvalidAlertData, ValueError)
    with pytest.raises(InvalidTransition) as caught:
        acknowledge(in_state(AlertState.RESOLVED), T0, "op-1")
    assert (caught.value.alert_id, caught.value.action) == ("sos-1", "acknowledge")
    assert (caught.value.from_state, caught.value.to_state) == ("resolved", "acknowledged")
    assert str(caught.value) == "alert sos-1: cannot acknowledge from state 'resolved' to 'acknowledged'"


def test_one_list_says_which_states_are_active_and_the_others_are_terminal() -> None:
    assert {s.value for s in ACTIVE_STATES} == {"open", "acknowledged", "dispatched"}
    for state in AlertState:
        active = state in ACTIVE_STATES
        assert state.is_active is active and state.is_terminal is not active
        assert is_active_state(state.value) is active
    assert not is_active_state("closed")
