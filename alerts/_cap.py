"""CAP 1.2 rendering (OASIS Common Alerting Protocol 1.2, urn:oasis:names:tc:emergency:cap:1.2).

One CAP message per timeline event: the message describing the alert just after its k-th event
has identifier "<alert id>.<k>" and is `sent` at that event's time, so rendering is a pure
function of the alert and a re-send of the same state is the same message. msgType is `Alert`
for the first message, `Ack` after an acknowledgement, `Cancel` after a cancellation and
`Update` otherwise; later messages reference the first one and the one just before (a service
that does not publish a message for every event passes the `references` it did send).

scope is `Restricted` (with a <restriction>): an SOS carries a resident's live position, which
under Korea's Personal Information Protection Act goes to the control centres and police who
act on it, not to the public; maintenance alerts share the scope so one consumer path fits all.
Two <info> blocks carry the same content in Korean (ko-KR) and English (en-US).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from alerts._errors import InvalidAlertData
from alerts._model import Alert, AlertKind, EventAction, place_in_words, require_aware

CAP_NAMESPACE = "urn:oasis:names:tc:emergency:cap:1.2"
DEFAULT_SENDER = "urn:streetlight:seoul"

# Korea Standard Time is UTC+9 with no daylight saving since 1988, so a fixed offset is exact
# and avoids depending on a tz database being installed.
KST = timezone(timedelta(hours=9), "KST")

_RESTRICTION = "Seoul control centres and police only: contains a resident's location"
_MAX_HEADLINE = 160  # CAP 1.2 section 3.2.2: headline "SHOULD be less than 160 characters"
_MAX_LISTED_DEVICES = 20
GEOCODE_DISTRICT = "KOSTAT-SIGUNGU"  # <geocode> valueName of the district's code
GEOCODE_DONG = "KOSTAT-ADM-DONG"  # <geocode> valueName of the neighbourhood's code


class CapMsgType(StrEnum):
    """CAP 1.2 <msgType> values this system sends."""

    ALERT = "Alert"
    UPDATE = "Update"
    CANCEL = "Cancel"
    ACK = "Ack"


@dataclass(frozen=True, slots=True)
class CapReference:
    """One earlier CAP message, as a <references> entry names it."""

    sender: str
    identifier: str
    sent: datetime

    def __str__(self) -> str:
        return f"{self.sender},{self.identifier},{cap_time(self.sent)}"


@dataclass(frozen=True, slots=True)
class CapMessage:
    """A rendered CAP message and the reference later messages use for it."""

    xml: str
    msg_type: CapMsgType
    reference: CapReference


def cap_time(value: datetime) -> str:
    """A time as CAP 1.2 wants it: KST, whole seconds, e.g. "2026-11-26T06:43:23+09:00"."""
    return require_aware(value, "time").astimezone(KST).strftime("%Y-%m-%dT%H:%M:%S+09:00")


def _clean_token(value: str) -> str:
    # CAP 1.2 forbids spaces, commas and restricted XML characters in identifier and sender.
    return "".join("_" if ch.isspace() or ch in ",<&" else ch for ch in value)


def cap_msg_type(alert: Alert, message_number: int | None = None) -> CapMsgType:
    """The msgType of the message after the alert's `message_number`-th event (default: the last)."""
    number = len(alert.timeline) if message_number is None else message_number
    if not 1 <= number <= len(alert.timeline):
        raise InvalidAlertData(f"alert {alert.id} has no event number {number}")
    if number == 1:
        return CapMsgType.ALERT
    action = alert.timeline[number - 1].action
    if action is EventAction.ACKNOWLEDGED:
        return CapMsgType.ACK
    if action is EventAction.CANCELLED:
        return CapMsgType.CANCEL
    return CapMsgType.UPDATE


def cap_reference(alert: Alert, message_number: int, sender: str = DEFAULT_SENDER) -> CapReference:
    """The reference of the message after the alert's `message_number`-th event."""
    if not 1 <= message_number <= len(alert.timeline):
        raise InvalidAlertData(f"alert {alert.id} has no event number {message_number}")
    return CapReference(
        sender=_clean_token(sender),
        identifier=_clean_token(f"{alert.id}.{message_number}"),
        sent=alert.timeline[message_number - 1].at,
    )


_EVENT_NAMES: dict[AlertKind, tuple[str, str]] = {
    AlertKind.SOS: ("비상벨 SOS", "SOS from a resident"),
    AlertKind.LAMP_FAULT: ("보안등 고장", "Security light fault"),
    AlertKind.DEVICE_OFFLINE: ("장치 통신 두절", "Device offline"),
    AlertKind.MASS_OUTAGE: ("보안등 집단 장애", "Mass outage of security lights"),
    AlertKind.TAMPER: ("장치 훼손 감지", "Device tampering detected"),
    AlertKind.STORAGE: ("저장소 작업 장애", "Storage job failing"),
    AlertKind.DATA_LOSS: ("장치 메시지 유실", "Device messages lost"),
}

# CAP 1.2 categories: Safety "general emergency and public safety", Infra "utility,
# telecommunication, other non-transport infrastructure".
_CATEGORY: dict[AlertKind, str] = {
    AlertKind.SOS: "Safety",
    AlertKind.TAMPER: "Safety",
    AlertKind.LAMP_FAULT: "Infra",
    AlertKind.DEVICE_OFFLINE: "Infra",
    AlertKind.MASS_OUTAGE: "Infra",
    AlertKind.STORAGE: "Infra",
    AlertKind.DATA_LOSS: "Infra",
}

# Circle radius: the phone's reported accuracy for an SOS, else a lamp's or a dong's scale.
_MIN_RADIUS_KM = 0.05
_OUTAGE_RADIUS_KM = 0.5


def _radius_km(alert: Alert) -> float:
    if alert.kind is AlertKind.MASS_OUTAGE:
        return _OUTAGE_RADIUS_KM
    if alert.track and alert.track[-1].accuracy_m is not None:
        return max(_MIN_RADIUS_KM, alert.track[-1].accuracy_m / 1000.0)
    return _MIN_RADIUS_KM


def _description(alert: Alert, korean: bool) -> str:
    lines = [place_in_words(alert.place, "ko" if korean else "en")]
    if alert.kind is AlertKind.SOS and alert.count > 1:
        lines.append(f"SOS {alert.count}회" if korean else f"SOS pressed {alert.count} times")
    if alert.fault_code:
        lines.append(f"{'고장 코드' if korean else 'fault code'}: {alert.fault_code}")
    if alert.kind in (AlertKind.LAMP_FAULT, AlertKind.TAMPER) and alert.count > 1:
        lines.append(f"{alert.count}회 보고" if korean else f"reported {alert.count} times")
    if alert.device_ids:
        shown = ", ".join(alert.device_ids[:_MAX_LISTED_DEVICES])
        more = len(alert.device_ids) - _MAX_LISTED_DEVICES
        if more > 0:
            shown += f" (+{more})"
        label = "장치" if korean else "devices"
        lines.append(f"{label} ({len(alert.device_ids)}): {shown}")
    lines.append(f"{'상태' if korean else 'state'}: {alert.state.value}")
    return "\n".join(lines)


# What XML 1.0 cannot carry, even escaped (section 2.2): C0 controls but tab, newline and carriage
# return, surrogates, U+FFFE and U+FFFF. An operator's note or a unit may hold them.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """`text` with every character XML 1.0 forbids replaced by U+FFFD, so the message stays
    well-formed whatever an operator typed."""
    return _NOT_XML.sub("\N{REPLACEMENT CHARACTER}", text)


def _sub(parent: ET.Element, name: str, text: str) -> ET.Element:
    element = ET.SubElement(parent, f"{{{CAP_NAMESPACE}}}{name}")
    element.text = xml_text(text)
    return element


def _info(root: ET.Element, alert: Alert, korean: bool) -> None:
    info = ET.SubElement(root, f"{{{CAP_NAMESPACE}}}info")
    event_ko, event_en = _EVENT_NAMES[alert.kind]
    event_name = event_ko if korean else event_en
    place_text = place_in_words(alert.place, "ko" if korean else "en")
    _sub(info, "language", "ko-KR" if korean else "en-US")
    _sub(info, "category", _CATEGORY[alert.kind])
    _sub(info, "event", event_name)
    if alert.state.is_terminal:
        urgency = "Past"
    elif alert.kind is AlertKind.SOS:
        urgency = "Immediate"
    else:
        urgency = "Expected"
    _sub(info, "urgency", urgency)
    _sub(info, "severity", alert.severity.value)
    _sub(info, "certainty", "Observed")
    _sub(info, "senderName", "서울시 스마트 보안등 관제" if korean else "Seoul smart security lights")
    _sub(info, "headline", f"{event_name}: {place_text}"[:_MAX_HEADLINE])
    _sub(info, "description", _description(alert, korean))
    for name, value in (
        ("alertId", alert.id),
        ("kind", alert.kind.value),
        ("state", alert.state.value),
        ("count", str(alert.count)),
    ):
        parameter = ET.SubElement(info, f"{{{CAP_NAMESPACE}}}parameter")
        _sub(parameter, "valueName", name)
        _sub(parameter, "value", value)
    area = ET.SubElement(info, f"{{{CAP_NAMESPACE}}}area")
    _sub(area, "areaDesc", place_text)
    lat, lon = alert.last_position
    _sub(area, "circle", f"{lat:.6f},{lon:.6f} {_radius_km(alert):.3f}")
    # The administrative codes of the place (KOSTAT's statistical codes, as in the gazetteer): the
    # district's 5 digits, the neighbourhood's 7.
    for value_name, code in (
        (GEOCODE_DISTRICT, alert.place.district_code),
        (GEOCODE_DONG, alert.place.dong_code),
    ):
        if code:
            geocode = ET.SubElement(area, f"{{{CAP_NAMESPACE}}}geocode")
            _sub(geocode, "valueName", value_name)
            _sub(geocode, "value", code)


def render_cap(
    alert: Alert,
    *,
    sender: str = DEFAULT_SENDER,
    references: Sequence[CapReference] | None = None,
) -> CapMessage:
    """The CAP 1.2 message for the alert's current state (after its latest event)."""
    number = len(alert.timeline)
    msg_type = cap_msg_type(alert, number)
    me = cap_reference(alert, number, sender)
    if references is None:
        earlier = sorted({1, number - 1} - {0, number})
        references = [cap_reference(alert, n, sender) for n in earlier]
    if msg_type is not CapMsgType.ALERT and not references:
        raise InvalidAlertData(f"alert {alert.id}: a CAP {msg_type.value} needs references")
    event = alert.timeline[number - 1]

    root = ET.Element(f"{{{CAP_NAMESPACE}}}alert")
    _sub(root, "identifier", me.identifier)
    _sub(root, "sender", me.sender)
    _sub(root, "sent", cap_time(me.sent))
    _sub(root, "status", "Actual")
    _sub(root, "msgType", msg_type.value)
    _sub(root, "scope", "Restricted")
    _sub(root, "restriction", _RESTRICTION)
    details = ", ".join(f"{key}={value}" for key, value in event.details)
    note = " ".join(x for x in (event.action.value, f"by {event.actor}", event.note, details) if x)
    _sub(root, "note", note)
    if references:
        _sub(root, "references", " ".join(str(ref) for ref in references))
    _sub(root, "incidents", _clean_token(alert.id))
    if msg_type is not CapMsgType.ACK:
        # An Ack only acknowledges the referenced messages (CAP 1.2 section 3.2.1); it has no info.
        _info(root, alert, korean=True)
        _info(root, alert, korean=False)
    xml = ET.tostring(root, encoding="unicode", default_namespace=CAP_NAMESPACE, xml_declaration=True)
    return CapMessage(xml=xml, msg_type=msg_type, reference=me)
