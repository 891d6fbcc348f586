"""The compact MQTT client's packets are MQTT 3.1.1 byte for byte."""

from __future__ import annotations

import struct

from firmware_sim.mqtt import Will, encode_connect, encode_publish, encode_subscribe


def _string(data: bytes, at: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", data, at)
    return data[at + 2 : at + 2 + n], at + 2 + n


def test_connect_carries_the_retained_qos1_will_and_credentials() -> None:
    will = Will("sl/v1/11230/lamp-1/state", b'{"state":"offline","bdseq":3}', qos=1, retain=True)
    packet = encode_connect("lamp-1", keepalive_s=60, username="lamp-1", password="s3cret", will=will)
    assert packet[0] == 0x10
    body = packet[2:]
    assert packet[1] == len(body)
    name, at = _string(body, 0)
    assert name == b"MQTT" and body[at] == 4
    flags = body[at + 1]
    assert flags == 0x80 | 0x40 | 0x20 | (1 << 3) | 0x04 | 0x02
    assert struct.unpack_from("!H", body, at + 2)[0] == 60
    at += 4
    fields = []
    for _ in range(5):
        value, at = _string(body, at)
        fields.append(value)
    assert fields == [b"lamp-1", will.topic.encode(), will.payload, b"lamp-1", b"s3cret"]


def test_anonymous_connect_has_no_credential_flags() -> None:
    packet = encode_connect("x", keepalive_s=30)
    assert packet[2 + 6 + 1] == 0x02


def test_publish_encodes_long_remaining_length_and_qos1_packet_id() -> None:
    payload = b"x" * 300
    packet = encode_publish("a/b", payload, qos=1, retain=True, packet_id=513)
    assert packet[0] == 0x30 | 0x02 | 0x01
    length = (packet[1] & 0x7F) + 128 * packet[2]
    assert packet[1] & 0x80 and length == 2 + 3 + 2 + 300 == len(packet) - 3
    assert packet[3:8] == b"\x00\x03a/b" and packet[8:10] == b"\x02\x01"


def test_subscribe_has_the_reserved_flags_and_requested_qos() -> None:
    packet = encode_subscribe(7, "sl/v1/11230/lamp-1/cmd", qos=1)
    assert packet[0] == 0x82
    assert packet.endswith(b"sl/v1/11230/lamp-1/cmd\x01")
