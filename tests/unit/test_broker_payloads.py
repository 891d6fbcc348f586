"""Payload schemas: valid examples decode, every refusal names its field, nothing else ever escapes."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import (
    MAX_PAYLOAD_BYTES,
    Ack,
    AlertMessage,
    Birth,
    Cmd,
    Event,
    PayloadError,
    State,
    Telemetry,
    decode,
    decode_alert,
    decode_birth,
    decode_cmd,
    decode_telemetry,
    encode,
    encode_alert,
    offline_will,
    online_state,
)

NOW_MS = 1_764_100_000_000

EXAMPLES: dict[str, dict[str, Any]] = {
    "birth": {
        "kind": "lamp",
        "firmware": "2.4.1",
        "model": "SL-LED-60",
        "lat": 37.5665,
        "lon": 126.978,
        "paired": "B-11230-0001",
        "bdseq": 7,
    },
    "state": {"state": "online", "bdseq": 7},
    "telemetry": {
        "ts": NOW_MS,
        "seq": 42,
        "level": 80,
        "power_w": 36.4,
        "voltage_v": 221.7,
        "current_a": 0.164,
        "temp_c": 21.5,
        "lux": 3.2,
        "faults": [],
    },
    "event": {"ts": NOW_MS, "seq": 43, "type": "beacon", "token_hash": "9f86d081884c7d65", "rssi_dbm": -71},
    "cmd": {
        "cmd_id": "c-0001",
        "ts": NOW_MS,
        "action": "set_level",
        "level": 100,
        "ttl_s": 60,
        "priority": "walk",
        "source": "walk-77",
    },
    "ack": {"cmd_id": "c-0001", "ts": NOW_MS, "status": "applied", "effective_level": 100},
    "alert": {
        "alert_id": "A-1",
        "kind": "sos",
        "status": "open",
        "district_code": "11230",
        "ts": NOW_MS,
        "place": {"district": "동대문구", "lamps": [["L1", 12.5]]},
    },
}
BLINKER_TELEMETRY = {
    "ts": NOW_MS,
    "seq": 1,
    "rssi_dbm": -80.5,
    "battery_v": 3.6,
    "blinking": True,
    "sightings": 2,
}


def payload(kind: str, /, **changes: Any) -> bytes:
    doc = dict(EXAMPLES[kind])
    for key, value in changes.items():
        if value is ...:
            doc.pop(key, None)
        else:
            doc[key] = value
    return json.dumps(doc).encode()


def refused(kind: str, data: bytes) -> PayloadError:
    with pytest.raises(PayloadError) as info:
        decode(kind, data, NOW_MS)
    assert str(info.value) == f"{info.value.field}: {info.value.reason}"
    return info.value


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_documented_example_of_each_kind_decodes(kind: str) -> None:
    msg = decode(kind, payload(kind), NOW_MS)
    expected = {
        "birth": Birth,
        "state": State,
        "telemetry": Telemetry,
        "event": Event,
        "cmd": Cmd,
        "ack": Ack,
        "alert": AlertMessage,
    }[kind]
    assert isinstance(msg, expected)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_unknown_fields_are_ignored(kind: str) -> None:
    assert decode(kind, payload(kind, firmware_note="x", extra={"a": [1, 2]}), NOW_MS) is not None


def test_lamp_telemetry_is_told_from_blinker_telemetry_by_its_fields() -> None:
    lamp = decode_telemetry(payload("telemetry"), NOW_MS)
    blinker = decode_telemetry(json.dumps(BLINKER_TELEMETRY).encode(), NOW_MS)
    assert (lamp.kind, lamp.level, lamp.faults) == ("lamp", 80, ())
    assert (blinker.kind, blinker.rssi_dbm, blinker.blinking, blinker.sightings) == (
        "blinker",
        -80.5,
        True,
        2,
    )


def test_a_decoded_message_is_frozen() -> None:
    msg = decode_telemetry(payload("telemetry"), NOW_MS)
    with pytest.raises(AttributeError):
        msg.level = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kind", "changes", "field"),
    [
        # missing required fields
        ("telemetry", {"ts": ...}, "ts"),
        ("telemetry", {"seq": ...}, "seq"),
        ("telemetry", {"level": ...}, "level"),
        ("birth", {"kind": ...}, "kind"),
        ("birth", {"lat": ...}, "lat"),
        ("birth", {"bdseq": ...}, "bdseq"),
        ("state", {"bdseq": ...}, "bdseq"),
        ("cmd", {"cmd_id": ...}, "cmd_id"),
        ("cmd", {"ttl_s": ...}, "ttl_s"),
        ("cmd", {"level": ...}, "level"),
        ("cmd", {"priority": ...}, "priority"),
        ("ack", {"effective_level": ...}, "effective_level"),
        ("ack", {"status": "rejected", "effective_level": ...}, "reason"),
        ("event", {"token_hash": ...}, "token_hash"),
        ("event", {"rssi_dbm": ...}, "rssi_dbm"),
        ("event", {"type": "fault"}, "code"),
        ("event", {"type": "fault_cleared"}, "code"),
        ("alert", {"alert_id": ...}, "alert_id"),
        ("alert", {"district_code": ...}, "district_code"),
        # wrong types
        ("telemetry", {"level": "80"}, "level"),
        ("telemetry", {"level": 80.0}, "level"),
        ("telemetry", {"level": True}, "level"),
        ("telemetry", {"seq": 1.5}, "seq"),
        ("telemetry", {"ts": "2026-11-25T00:00:00Z"}, "ts"),
        ("telemetry", {"power_w": "36"}, "power_w"),
        ("telemetry", {"faults": "lamp_failure"}, "faults"),
        ("telemetry", {"faults": [1]}, "faults[0]"),
        ("state", {"state": "ONLINE"}, "state"),
        ("birth", {"kind": "pole"}, "kind"),
        ("birth", {"lat": None}, "lat"),
        ("cmd", {"action": "explode"}, "action"),
        ("cmd", {"priority": "vip"}, "priority"),
        ("event", {"type": "bang"}, "type"),
        ("alert", {"ts": "now"}, "ts"),
        # out of range
        ("telemetry", {"level": 101}, "level"),
        ("telemetry", {"level": -1}, "level"),
        ("telemetry", {"seq": -1}, "seq"),
        ("telemetry", {"ts": 0}, "ts"),
        ("telemetry", {"voltage_v": 301}, "voltage_v"),
        ("telemetry", {"power_w": -0.1}, "power_w"),
        ("telemetry", {"temp_c": 1000}, "temp_c"),
        ("telemetry", {"faults": ["Lamp Failure"]}, "faults[0]"),
        ("telemetry", {"faults": ["x"] * 33}, "faults"),
        ("birth", {"lat": 40.0}, "lat"),
        ("birth", {"lat": 32.9}, "lat"),
        ("birth", {"lon": 139.7}, "lon"),
        ("birth", {"lon": 123.9}, "lon"),
        ("birth", {"firmware": ""}, "firmware"),
        ("birth", {"paired": "B/1"}, "paired"),
        ("birth", {"bdseq": -1}, "bdseq"),
        ("event", {"rssi_dbm": 5}, "rssi_dbm"),
        ("event", {"token_hash": "NOT-HEX"}, "token_hash"),
        ("cmd", {"ttl_s": 0}, "ttl_s"),
        ("cmd", {"ttl_s": 86_401}, "ttl_s"),
        ("cmd", {"cmd_id": "a/b"}, "cmd_id"),
        ("cmd", {"source": ""}, "source"),
        ("ack", {"effective_level": 120}, "effective_level"),
        ("ack", {"reason": "x" * 257}, "reason"),
        ("alert", {"district_code": "1123"}, "district_code"),
        # from the future: more than 5 minutes ahead of now_ms
        ("telemetry", {"ts": NOW_MS + 300_001}, "ts"),
        ("event", {"ts": NOW_MS + 3_600_000}, "ts"),
        ("birth", {"ts": NOW_MS + 600_000}, "ts"),
        ("alert", {"ts": NOW_MS + 600_000}, "ts"),
    ],
)
def test_an_invalid_field_is_refused_and_named(kind: str, changes: dict[str, Any], field: str) -> None:
    assert refused(kind, payload(kind, **changes)).field == field


def test_a_timestamp_up_to_five_minutes_ahead_is_accepted() -> None:
    assert decode_telemetry(payload("telemetry", ts=NOW_MS + 300_000), NOW_MS).ts == NOW_MS + 300_000


def test_the_refusal_reason_shows_the_offending_value() -> None:
    assert refused("telemetry", payload("telemetry", level=101)).reason.endswith("got 101")


@pytest.mark.parametrize("big", [b"1e999", b"-1e999", b"1e400"])
@pytest.mark.parametrize("field", ["power_w", "voltage_v", "temp_c", "lux"])
def test_a_number_that_overflows_to_infinity_is_refused(big: bytes, field: str) -> None:
    data = payload("telemetry").replace(b"}", b', "' + field.encode() + b'": ' + big + b"}")
    assert refused("telemetry", data).field == field


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity_literals_are_not_json(literal: bytes) -> None:
    data = payload("telemetry").replace(b"}", b', "lux": ' + literal + b"}")
    assert refused("telemetry", data).field == "payload"


def test_lamp_and_blinker_fields_cannot_be_mixed() -> None:
    assert refused("telemetry", payload("telemetry", rssi_dbm=-60)).field == "rssi_dbm"
    for name in ("power_w", "voltage_v", "current_a", "temp_c", "lux"):
        mixed = dict(BLINKER_TELEMETRY, **{name: 0})
        assert refused("telemetry", json.dumps(mixed).encode()).field == name
    for name, value in (("battery_v", 0), ("blinking", False), ("sightings", 0)):
        assert refused("telemetry", payload("telemetry", **{name: value})).field == name


def test_blinkers_may_report_faults_too() -> None:
    doc = dict(BLINKER_TELEMETRY, faults=["battery_low"])
    assert decode_telemetry(json.dumps(doc).encode(), NOW_MS).faults == ("battery_low",)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b'{"ts": 1764100000000', "not valid JSON"),
        (b"[1, 2]", "expected `object`"),
        (b'"a string"', "expected `object`"),
        (b"null", "expected `object`"),
        (b"42", "expected `object`"),
        (b'{"ts": 1764100000000, "seq": 1, "level": 5, "x": "\xff\xfe"}', "UTF-8"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
    ],
)
def test_a_payload_that_is_not_a_json_object_is_refused_as_a_whole(data: bytes, reason: str) -> None:
    error = refused("telemetry", data)
    assert error.field == "payload"
    assert reason in error.reason


def test_a_payload_over_16_kib_is_refused_before_parsing() -> None:
    padding = "x" * MAX_PAYLOAD_BYTES
    error = refused("telemetry", payload("telemetry", note=padding))
    assert error.field == "payload"
    assert "16384" in error.reason


def test_a_payload_of_exactly_16_kib_is_accepted() -> None:
    base = payload("telemetry", note="")
    data = payload("telemetry", note="x" * (MAX_PAYLOAD_BYTES - len(base)))
    assert len(data) == MAX_PAYLOAD_BYTES
    assert decode_telemetry(data, NOW_MS).level == 80


@pytest.mark.parametrize("depth", [9, 100, 5000])
def test_deeply_nested_payloads_are_refused(depth: int) -> None:
    data = payload("telemetry").replace(b"}", b', "x": ' + b"[" * depth + b"]" * depth + b"}")
    error = refused("telemetry", data)
    assert (error.field, "nested") == ("payload", error.reason.split()[0])


def test_nesting_within_the_limit_in_an_unknown_field_is_ignored() -> None:
    data = payload("telemetry").replace(b"}", b', "x": [[[{"a": [1]}]]]}')
    assert decode_telemetry(data, NOW_MS).level == 80


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    data = payload("telemetry", note="[[[[[[[[[[[[{{{{{{{{{{")
    assert decode_telemetry(data, NOW_MS).level == 80


def test_an_unknown_message_kind_is_a_payload_error() -> None:
    assert refused("weather", b"{}").field == "kind"


def test_bytearray_and_memoryview_payloads_decode_like_bytes() -> None:
    data = payload("telemetry")
    assert decode_telemetry(bytearray(data), NOW_MS) == decode_telemetry(memoryview(data), NOW_MS)


def test_the_alert_message_keeps_the_whole_alert_object() -> None:
    msg = decode_alert(payload("alert"), NOW_MS)
    assert (msg.alert_id, msg.kind, msg.status, msg.district_code) == ("A-1", "sos", "open", "11230")
    assert msg.body["place"]["district"] == "동대문구"


def test_outgoing_commands_encode_compactly_and_decode_back() -> None:
    cmd = Cmd("c-2", NOW_MS, "blink", "alert-9", priority="sos", ttl_s=120)
    data = encode(cmd)
    assert b" " not in data
    assert b"level" not in data  # unset optional fields are omitted
    assert decode_cmd(data, NOW_MS) == cmd


def test_building_an_invalid_command_in_python_fails_the_same_rules() -> None:
    with pytest.raises(PayloadError) as info:
        Cmd("c-3", NOW_MS, "set_level", "walk-1", priority="walk", ttl_s=30)
    assert info.value.field == "level"


def test_alerts_encode_with_their_head_checked() -> None:
    data = encode_alert(EXAMPLES["alert"])
    assert decode_alert(data, NOW_MS).body == EXAMPLES["alert"]
    with pytest.raises(PayloadError) as info:
        encode_alert({k: v for k, v in EXAMPLES["alert"].items() if k != "status"})
    assert info.value.field == "status"
    with pytest.raises(PayloadError) as info:
        encode_alert(dict(EXAMPLES["alert"], extra=object()))
    assert info.value.field == "payload"


def test_online_and_offline_states_carry_the_connection_bdseq() -> None:
    assert msgspec.json.decode(offline_will(5)) == {"state": "offline", "bdseq": 5}
    assert msgspec.json.decode(online_state(5)) == {"state": "online", "bdseq": 5}


def test_birth_round_trips_through_encode() -> None:
    birth = decode_birth(payload("birth"), NOW_MS)
    assert decode_birth(encode(birth), NOW_MS) == birth
    assert birth.paired == "B-11230-0001"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
FIELD_NAMES = [
    "ts",
    "seq",
    "level",
    "power_w",
    "lux",
    "faults",
    "rssi_dbm",
    "blinking",
    "sightings",
    "kind",
    "lat",
    "lon",
    "bdseq",
    "state",
    "type",
    "code",
    "token_hash",
    "cmd_id",
    "action",
    "ttl_s",
    "priority",
    "source",
    "status",
    "effective_level",
    "reason",
    "alert_id",
    "district_code",
    "paired",
    "firmware",
    "model",
]
field_names = st.sampled_from(FIELD_NAMES)
kinds = st.sampled_from(sorted(EXAMPLES))


@settings(max_examples=300)
@given(kinds, st.binary(max_size=200))
def test_arbitrary_bytes_raise_nothing_but_payload_error(kind: str, data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode(kind, data, NOW_MS)


@settings(max_examples=500)
@given(kinds, st.dictionaries(field_names, json_values, max_size=10))
def test_arbitrary_json_objects_raise_nothing_but_payload_error(kind: str, doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()  # json.dumps writes NaN/Infinity literals, which must be refused too
    try:
        decode(kind, data, NOW_MS)
    except PayloadError as exc:
        assert exc.field
        assert exc.reason


@settings(max_examples=300)
@given(kinds, field_names, json_values)
def test_one_field_changed_to_anything_decodes_or_names_a_field(kind: str, name: str, value: Any) -> None:
    try:
        decode(kind, payload(kind, **{name: value}), NOW_MS)
    except PayloadError as exc:
        assert exc.field.split("[")[0].split(".")[0] in (name, "payload", *EXAMPLES[kind])
