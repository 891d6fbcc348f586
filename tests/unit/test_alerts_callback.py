"""Call-back in the alerts core: Korean numbers to E.164, who may be called when, and the calls
placed / answered / not answered in an SOS's timeline (never the number)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from alerts import (
    AlertKind,
    CallChannel,
    CallOutcome,
    EventAction,
    InvalidPhoneNumber,
    InvalidTransition,
    Place,
    acknowledge,
    alert_from_dict,
    alert_to_dict,
    callback_refusal,
    new_alert,
    normalise_phone,
    record_call,
    resolve,
    tel_uri,
)

T0 = datetime(2026, 5, 1, 21, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "e164"),
    [
        ("010-1234-5678", "+821012345678"),
        ("01012345678", "+821012345678"),
        ("010 1234 5678", "+821012345678"),
        ("010.1234.5678", "+821012345678"),
        ("+82 10-1234-5678", "+821012345678"),
        ("+82 (0)10 1234 5678", "+821012345678"),
        ("+821012345678", "+821012345678"),
        ("0082-10-1234-5678", "+821012345678"),
        ("82 10 1234 5678", "+821012345678"),
        ("011-234-5678", "+82112345678"),
        ("019-2345-6789", "+821923456789"),
        ("02-123-4567", "+8221234567"),
        ("(02) 1234-5678", "+82212345678"),
        ("031-123-4567", "+82311234567"),
        ("064-712-3456", "+82647123456"),
        ("070-1234-5678", "+827012345678"),
        (" 010-9876-5432 ", "+821098765432"),
    ],
)
def test_korean_numbers_become_e164(text: str, e164: str) -> None:
    assert normalise_phone(text) == e164


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "needed"),
        ("   ", "needed"),
        ("010-1234-567", "not a Korean"),  # one digit short
        ("010-1234-56789", "not a Korean"),  # one too many
        ("010-0234-5678", "not a Korean"),  # a subscriber number never starts with 0
        ("1588-1234", "starts with 0"),  # a representative number: nobody answers an SOS call-back
        ("080-123-4567", "not a Korean"),  # free phone
        ("030-123-4567", "not a Korean"),  # no such area
        ("+1 212 555 0100", r"\(\+82\)"),
        ("+44 20 7946 0958", r"\(\+82\)"),
        ("010-1234-567８", "digits"),  # a full-width digit
        ("010-1234-5678; DROP", "digits"),
        ("tel:+821012345678", "digits"),
        ("1" * 41, "40 characters"),
        ("12345678", "starts with 0"),
    ],
)
def test_other_text_is_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(InvalidPhoneNumber, match=why):
        normalise_phone(text)
    assert issubclass(InvalidPhoneNumber, ValueError)  # the API's 422


def test_tel_uri() -> None:
    assert tel_uri("+821012345678") == "tel:+821012345678"


def _sos() -> object:
    return new_alert(
        alert_id="sos-1",
        kind=AlertKind.SOS,
        place=Place(37.5665, 126.978, "11140"),
        source_id="res-1",
        now=T0,
    )


def test_only_an_active_sos_may_be_called_back() -> None:
    sos = _sos()
    assert callback_refusal(sos) is None  # type: ignore[arg-type]
    assert callback_refusal(acknowledge(sos, T0, "operator:a")) is None  # type: ignore[arg-type]
    done = resolve(acknowledge(sos, T0, "operator:a"), T0, "operator:a")  # type: ignore[arg-type]
    assert "resolved" in (callback_refusal(done) or "")
    fault = new_alert(
        alert_id="f-1", kind=AlertKind.LAMP_FAULT, place=Place(37.5, 127.0), source_id="lamp-1", now=T0
    )
    assert "not an SOS" in (callback_refusal(fault) or "")


def test_placed_then_answered_is_in_the_timeline_without_the_number() -> None:
    sos = acknowledge(_sos(), T0, "operator:a")  # type: ignore[arg-type]
    placed = record_call(
        sos, CallOutcome.PLACED, T0 + timedelta(seconds=5), "operator:a", CallChannel.PBX, call_id="c1"
    )
    answered = record_call(placed, CallOutcome.ANSWERED, T0 + timedelta(seconds=15), "operator:a")
    assert [e.action for e in answered.timeline[-2:]] == [EventAction.CALL_PLACED, EventAction.CALL_ANSWERED]
    assert answered.timeline[-1].details == (("channel", "pbx"), ("call_id", "c1"))  # the call placed
    assert answered.state is sos.state  # a call decides nothing
    assert "+82" not in str(alert_to_dict(answered)) and "010" not in str(alert_to_dict(answered))
    assert alert_from_dict(alert_to_dict(answered)) == answered  # the new actions round-trip


def test_no_answer_then_a_second_call() -> None:
    sos = _sos()
    first = record_call(sos, CallOutcome.PLACED, T0, "operator:a")  # type: ignore[arg-type]
    missed = record_call(first, CallOutcome.NO_ANSWER, T0 + timedelta(seconds=30), "operator:a")
    again = record_call(missed, CallOutcome.PLACED, T0 + timedelta(seconds=40), "operator:a")
    answered = record_call(again, CallOutcome.ANSWERED, T0 + timedelta(seconds=45), "operator:a")
    actions = [e.action for e in answered.timeline[1:]]
    assert actions == [
        EventAction.CALL_PLACED,
        EventAction.CALL_NO_ANSWER,
        EventAction.CALL_PLACED,
        EventAction.CALL_ANSWERED,
    ]
    assert answered.timeline[-1].details == (("channel", "tel"),)


def test_an_answer_needs_a_call_placed_and_not_yet_answered() -> None:
    sos = _sos()
    with pytest.raises(InvalidTransition, match="before placing"):
        record_call(sos, CallOutcome.ANSWERED, T0, "operator:a")  # type: ignore[arg-type]
    placed = record_call(sos, CallOutcome.PLACED, T0, "operator:a")  # type: ignore[arg-type]
    answered = record_call(placed, CallOutcome.ANSWERED, T0, "operator:a")
    with pytest.raises(InvalidTransition):
        record_call(answered, CallOutcome.NO_ANSWER, T0, "operator:a")


def test_no_call_on_a_closed_alert_or_with_a_naive_time() -> None:
    done = resolve(acknowledge(_sos(), T0, "operator:a"), T0, "operator:a")  # type: ignore[arg-type]
    with pytest.raises(InvalidTransition):
        record_call(done, CallOutcome.PLACED, T0, "operator:a")
    with pytest.raises(ValueError, match="timezone"):
        record_call(_sos(), CallOutcome.PLACED, datetime(2026, 5, 1), "operator:a")  # type: ignore[arg-type]
