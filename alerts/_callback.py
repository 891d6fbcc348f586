"""Call-back: a resident's phone number checked and written in E.164, who may see it and when, and
the calls an operator places recorded in the SOS's timeline.

Pure: the number is text in, text out; the encryption and the audit live in the store and the API
(docs/security.md). A timeline entry never carries the number, only how the call was placed
(``channel``: ``tel`` for the console's link, ``pbx`` for the centre's telephone system).
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from alerts._errors import InvalidAlertData, InvalidTransition
from alerts._model import Alert, AlertKind, Event, EventAction, require_aware, with_event

COUNTRY_CODE = "82"

# National significant numbers (the number without the trunk prefix 0) a resident may be called
# back on: mobile 010 (8 digits after it) and the older 011/016-019 (7 or 8), Seoul 02 and the
# other geographic area codes (7 or 8 digits), VoIP 070 (8). Representative numbers (1588-...),
# free phone (080) and premium ranges are refused: nobody answers an SOS call-back there.
_AREA_CODES = "31|32|33|41|42|43|44|51|52|53|54|55|61|62|63|64"
_NATIONAL = re.compile(
    rf"^(?:10[1-9]\d{{7}}|1[16-9][1-9]\d{{6,7}}|2[1-9]\d{{6,7}}|(?:{_AREA_CODES})[1-9]\d{{6,7}}|70[1-9]\d{{7}})$"
)
_SEPARATORS = re.compile(r"[\s\-.()/\u2010-\u2015]")


class InvalidPhoneNumber(InvalidAlertData):
    """Not a Korean number a resident can be called back on; the message says why."""


def normalise_phone(text: str) -> str:
    """A Korean phone number in any usual writing (``010-1234-5678``, ``02 123 4567``,
    ``+82 10 1234 5678``, ``+82 (0)10-...``, ``0082...``) as E.164 (``+821012345678``);
    InvalidPhoneNumber otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidPhoneNumber("a phone number is needed, e.g. 010-1234-5678")
    if len(text) > 40:
        raise InvalidPhoneNumber("a phone number has at most 40 characters")
    raw = text.strip()
    plus = raw.startswith("+")
    compact = _SEPARATORS.sub("", raw[1:] if plus else raw)
    if not compact.isascii() or not compact.isdigit():
        raise InvalidPhoneNumber("a phone number has digits, spaces, hyphens, dots or brackets only")
    if plus or compact.startswith("00"):
        international = compact[2:] if compact.startswith("00") and not plus else compact
        if not international.startswith(COUNTRY_CODE):
            raise InvalidPhoneNumber("only Korean numbers (+82) can be called back")
        national = international[len(COUNTRY_CODE) :]
        national = national[1:] if national.startswith("0") else national  # "+82 (0)10 ..."
    elif compact.startswith("0"):
        national = compact[1:]
    elif compact.startswith(COUNTRY_CODE) and len(compact) >= 11:
        national = compact[len(COUNTRY_CODE) :]  # "82 10 1234 5678" without the plus
    else:
        raise InvalidPhoneNumber("a Korean number starts with 0 (010-..., 02-...) or +82")
    if not _NATIONAL.match(national):
        raise InvalidPhoneNumber(
            "not a Korean mobile, geographic or 070 number (e.g. 010-1234-5678, 02-123-4567)"
        )
    return f"+{COUNTRY_CODE}{national}"


def tel_uri(e164: str) -> str:
    """The RFC 3966 ``tel:`` URI of an E.164 number (the console's call link)."""
    return f"tel:{e164}"


def callback_refusal(alert: Alert) -> str | None:
    """Why the resident of ``alert`` may not be called back now, or None: only an SOS, only while
    it is active (open, acknowledged or dispatched). The API adds who may ask (the alert's centre)."""
    if alert.kind is not AlertKind.SOS:
        return f"alert {alert.id} is not an SOS: there is no resident to call back"
    if not alert.is_active:
        return (
            f"alert {alert.id} is {alert.state.value}: the resident's number is shown only while it is open"
        )
    return None


class CallOutcome(StrEnum):
    """What an operator's call-back came to, as the timeline records it."""

    PLACED = "placed"
    ANSWERED = "answered"
    NO_ANSWER = "no_answer"


class CallChannel(StrEnum):
    """How the call was placed: the console's ``tel:`` link (the operator's own phone) or the
    centre's telephone system (PBX)."""

    TEL = "tel"
    PBX = "pbx"


_EVENT_OF: dict[CallOutcome, EventAction] = {
    CallOutcome.PLACED: EventAction.CALL_PLACED,
    CallOutcome.ANSWERED: EventAction.CALL_ANSWERED,
    CallOutcome.NO_ANSWER: EventAction.CALL_NO_ANSWER,
}


def open_call(alert: Alert) -> Event | None:
    """The latest ``call_placed`` event that has no answer or no-answer after it, or None."""
    placed: Event | None = None
    for event in alert.timeline:
        if event.action is EventAction.CALL_PLACED:
            placed = event
        elif event.action in (EventAction.CALL_ANSWERED, EventAction.CALL_NO_ANSWER):
            placed = None
    return placed


def record_call(
    alert: Alert,
    outcome: CallOutcome,
    now: datetime,
    actor: str,
    channel: CallChannel = CallChannel.TEL,
    note: str = "",
    call_id: str = "",
) -> Alert:
    """The alert with an operator's call-back step in its timeline: ``call_placed``, then
    ``call_answered`` or ``call_no_answer`` for the call placed last. An answer needs a call
    placed and not yet answered; every step needs an active SOS (InvalidTransition otherwise).
    The state does not change: calling the resident is handling the alert, not deciding it."""
    refusal = callback_refusal(alert)
    if refusal is not None:
        raise InvalidTransition(
            alert.id, f"record a call ({outcome.value})", alert.state.value, alert.state.value
        )
    at = require_aware(now, "now")
    details: tuple[tuple[str, str], ...] = (("channel", channel.value),)
    if outcome is not CallOutcome.PLACED:
        placed = open_call(alert)
        if placed is None:
            raise InvalidTransition(
                alert.id,
                f"record a call as {outcome.value} before placing it",
                alert.state.value,
                alert.state.value,
            )
        channel_of_call = placed.detail("channel") or channel.value
        details = (("channel", channel_of_call),)
        call_id = call_id or placed.detail("call_id") or ""
    if call_id:
        details = (*details, ("call_id", call_id))
    event = Event(at=at, actor=actor, action=_EVENT_OF[outcome], note=note, details=details)
    return with_event(alert, event)
