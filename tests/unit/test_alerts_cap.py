"""CAP 1.2 rendering: Alert, Update, Cancel and Ack messages valid against the OASIS schema."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import xmlschema
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts import (
    CAP_NAMESPACE,
    Alert,
    AlertKind,
    CancelReason,
    CapMsgType,
    CapReference,
    InvalidAlertData,
    NearestLamp,
    OfflineReport,
    Place,
    Position,
    acknowledge,
    add_position,
    cancel,
    cap_time,
    detect_mass_outages,
    dispatch,
    merge_mass_outage,
    new_alert,
    render_cap,
    resolve,
)

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "data" / "cap" / "CAP-v1.2.xsd"
NS = {"cap": CAP_NAMESPACE}
T0 = datetime(2026, 11, 25, 13, 0, 0, 750_000, tzinfo=UTC)  # 22:00:00.75 KST
PLACE = Place(
    lat=37.5663,
    lon=126.9779,
    district_code="11140",
    district_name="중구",
    dong_code="1114052000",
    dong_name="소공동",
    district_name_en="Jung-gu",
    dong_name_en="Sogong-dong",
    nearest_lamps=(NearestLamp("lamp-42", "11020-03-0042", 12.0),),
)


@pytest.fixture(scope="module")
def schema() -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(str(SCHEMA_PATH))


def sos() -> Alert:
    return new_alert(
        alert_id="sos-1",
        kind=AlertKind.SOS,
        place=PLACE,
        source_id="resident-7",
        now=T0,
        track=(Position(PLACE.lat, PLACE.lon, T0, accuracy_m=8.0),),
    )


def parse(xml: str) -> ET.Element:
    return ET.fromstring(xml.encode("utf-8"))


def text(root: ET.Element, path: str) -> str:
    found = root.findtext(path, namespaces=NS)
    assert found is not None, path
    return found


def test_a_new_sos_renders_as_a_valid_cap_alert_in_korean_and_english(schema: xmlschema.XMLSchema) -> None:
    message = render_cap(sos())
    schema.validate(message.xml)
    root = parse(message.xml)
    assert message.msg_type is CapMsgType.ALERT
    assert text(root, "cap:msgType") == "Alert"
    assert text(root, "cap:status") == "Actual"
    assert text(root, "cap:scope") == "Restricted" and text(root, "cap:restriction")
    assert root.find("cap:references", NS) is None
    infos = root.findall("cap:info", NS)
    assert [text(info, "cap:language") for info in infos] == ["ko-KR", "en-US"]
    korean = infos[0]
    assert text(korean, "cap:category") == "Safety"
    assert text(korean, "cap:urgency") == "Immediate"
    assert text(korean, "cap:severity") == "Severe"
    assert text(korean, "cap:certainty") == "Observed"
    assert "중구 소공동, 보안등 11020-03-0042 (12 m)" in text(korean, "cap:description")
    assert text(korean, "cap:area/cap:areaDesc") == "중구 소공동, 보안등 11020-03-0042 (12 m)"
    assert text(korean, "cap:area/cap:circle") == "37.566300,126.977900 0.050"


def test_sent_is_kst_in_whole_seconds_exactly_as_the_schema_pattern_demands() -> None:
    root = parse(render_cap(sos()).xml)
    assert text(root, "cap:sent") == "2026-11-25T22:00:00+09:00"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+09:00", cap_time(datetime.now(UTC)))


def test_an_update_references_the_first_message_and_has_its_own_identifier(
    schema: xmlschema.XMLSchema,
) -> None:
    first = render_cap(sos())
    moved = add_position(sos(), Position(37.5670, 126.9785, T0, accuracy_m=120.0), T0 + timedelta(seconds=5))
    update = render_cap(moved)
    schema.validate(update.xml)
    root = parse(update.xml)
    assert update.msg_type is CapMsgType.UPDATE
    assert text(root, "cap:references") == "urn:streetlight:seoul,sos-1.1,2026-11-25T22:00:00+09:00"
    assert text(root, "cap:identifier") == "sos-1.2" != text(parse(first.xml), "cap:identifier")
    assert text(root, "cap:info/cap:area/cap:circle") == "37.567000,126.978500 0.120"


def test_an_ack_references_the_alert_and_the_previous_message(schema: xmlschema.XMLSchema) -> None:
    alert = add_position(sos(), Position(37.5670, 126.9785, T0), T0 + timedelta(seconds=5))
    alert = acknowledge(alert, T0 + timedelta(seconds=9), "op-1", note="확인")
    message = render_cap(alert)
    schema.validate(message.xml)
    root = parse(message.xml)
    assert message.msg_type is CapMsgType.ACK
    assert text(root, "cap:references").split(" ") == [
        "urn:streetlight:seoul,sos-1.1,2026-11-25T22:00:00+09:00",
        "urn:streetlight:seoul,sos-1.2,2026-11-25T22:00:05+09:00",
    ]
    assert "op-1" in text(root, "cap:note") and "확인" in text(root, "cap:note")


def test_a_cancelled_alert_renders_as_cap_cancel_with_urgency_past(schema: xmlschema.XMLSchema) -> None:
    alert = cancel(sos(), T0 + timedelta(seconds=4), "resident:resident-7", CancelReason.RESIDENT_CANCELLED)
    message = render_cap(alert)
    schema.validate(message.xml)
    root = parse(message.xml)
    assert message.msg_type is CapMsgType.CANCEL
    assert text(root, "cap:references") == "urn:streetlight:seoul,sos-1.1,2026-11-25T22:00:00+09:00"
    assert text(root, "cap:info/cap:urgency") == "Past"


def test_dispatch_and_resolve_render_as_valid_updates(schema: xmlschema.XMLSchema) -> None:
    alert = dispatch(sos(), T0 + timedelta(seconds=20), "op-1", unit="중부서 112-3")
    resolved = resolve(alert, T0 + timedelta(minutes=9), "op-1", outcome="resident safe")
    for item in (alert, resolved):
        message = render_cap(item)
        schema.validate(message.xml)
        assert message.msg_type is CapMsgType.UPDATE


def test_every_message_of_a_lifecycle_has_a_unique_identifier() -> None:
    alert = sos()
    identifiers = {render_cap(alert).reference.identifier}
    steps: list[Callable[[Alert], Alert]] = [
        lambda a: add_position(a, Position(37.5, 127.0, T0), T0),
        lambda a: acknowledge(a, T0, "op-1"),
        lambda a: dispatch(a, T0, "op-1"),
        lambda a: resolve(a, T0, "op-1"),
    ]
    for step in steps:
        alert = step(alert)
        identifiers.add(render_cap(alert).reference.identifier)
    assert len(identifiers) == 5


def test_a_mass_outage_renders_as_a_valid_infra_alert_listing_its_lamps(schema: xmlschema.XMLSchema) -> None:
    reports = [OfflineReport(f"lamp-{i:03d}", "1114052000", T0) for i in range(200)]
    (cluster,) = detect_mass_outages(reports, T0)
    outage, _ = merge_mass_outage([], cluster, place=PLACE, now=T0, new_alert_id="mo-1")
    message = render_cap(outage)
    schema.validate(message.xml)
    info = parse(message.xml).find("cap:info", NS)
    assert info is not None
    assert text(info, "cap:category") == "Infra"
    assert "장치 (200)" in text(info, "cap:description")


def test_explicit_references_are_used_and_an_update_without_any_is_refused() -> None:
    alert = acknowledge(sos(), T0, "op-1")
    ref = CapReference("other.sender", "x-9", T0)
    root = parse(render_cap(alert, references=[ref]).xml)
    assert text(root, "cap:references") == "other.sender,x-9,2026-11-25T22:00:00+09:00"
    with pytest.raises(InvalidAlertData, match="needs references"):
        render_cap(alert, references=[])


def test_identifiers_and_senders_never_carry_spaces_or_commas(schema: xmlschema.XMLSchema) -> None:
    alert = new_alert(alert_id="a b,c", kind=AlertKind.TAMPER, place=PLACE, source_id="lamp-1", now=T0)
    message = render_cap(alert, sender="my sender")
    schema.validate(message.xml)
    assert message.reference.identifier == "a_b_c.1" and message.reference.sender == "my_sender"


def test_the_schema_check_is_real_a_fractional_sent_time_is_rejected(schema: xmlschema.XMLSchema) -> None:
    xml = render_cap(sos()).xml.replace("2026-11-25T22:00:00+09:00", "2026-11-25T22:00:00.750+09:00")
    assert not schema.is_valid(xml)


names = st.text(st.characters(categories=("L", "N", "Zs", "P")), max_size=12)


@settings(max_examples=25, deadline=None)
@given(
    district=names,
    dong=names,
    lamp_number=names,
    lat=st.floats(33.0, 39.0),
    lon=st.floats(124.0, 132.0),
    inside=st.booleans(),
)
def test_any_place_in_any_script_renders_a_valid_message(
    schema: xmlschema.XMLSchema,
    district: str,
    dong: str,
    lamp_number: str,
    lat: float,
    lon: float,
    inside: bool,
) -> None:
    place = Place(
        lat=lat,
        lon=lon,
        district_name=district,
        dong_name=dong,
        inside=inside,
        nearest_lamps=(NearestLamp("l-1", lamp_number, 7.4),),
    )
    alert = new_alert(alert_id="p-1", kind=AlertKind.LAMP_FAULT, place=place, source_id="l-1", now=T0)
    schema.validate(render_cap(alert).xml)
    schema.validate(render_cap(acknowledge(alert, T0, "op")).xml)


@given(note=st.text(max_size=40), unit=st.text(max_size=20))
@settings(max_examples=200, deadline=None)
def test_any_operator_note_or_unit_renders_well_formed_xml(note: str, unit: str) -> None:
    alert = acknowledge(sos(), T0 + timedelta(seconds=3), "op-1", note=note)
    for item in (alert, dispatch(alert, T0 + timedelta(seconds=9), "op-1", unit=unit, note=note)):
        parse(render_cap(item).xml)  # raises on a message that is not well-formed


def test_a_control_character_in_a_note_becomes_a_replacement_character() -> None:
    alert = acknowledge(sos(), T0 + timedelta(seconds=3), "op-1", note="seen \u0001\u000b\ud800 ok\tthere")
    note = text(parse(render_cap(alert).xml), "cap:note")
    assert "seen \ufffd\ufffd\ufffd ok\tthere" in note
