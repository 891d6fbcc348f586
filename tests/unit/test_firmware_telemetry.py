"""Device telemetry and events: physics, faults, beacon blinkers, malformed payloads, wire schema."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from datetime import datetime

import pytest

import broker
from firmware_sim import (
    KST,
    BlinkerFirmware,
    DeviceIdentity,
    Faults,
    LampFirmware,
    Message,
    malformed_payloads,
    physics,
)
from firmware_sim.firmware import BATTERY_CUTOFF_V, BATTERY_FLOAT_V, SIGHTING_COOLDOWN_MS
from firmware_sim.malformed import OVERSIZED_BYTES

SEOUL_LAT_DEG = 37.5665
SEOUL_LON_DEG = 126.9780
TOKEN_HASH = "3f" * 16


def kst_ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).replace(tzinfo=KST).timestamp() * 1000)


NOON_MS = kst_ms("2022-06-21T12:30")
NIGHT_MS = kst_ms("2022-06-21T21:30")
MIDNIGHT_MS = kst_ms("2022-06-22T00:00")


def make_lamp() -> LampFirmware:
    identity = DeviceIdentity("L-1", "11230", "lamp", SEOUL_LAT_DEG, SEOUL_LON_DEG, "SL-LED40", "B-1")
    return LampFirmware(identity)


def make_blinker() -> BlinkerFirmware:
    identity = DeviceIdentity("B-1", "11230", "blinker", SEOUL_LAT_DEG, SEOUL_LON_DEG, "BB-2", "L-1")
    return BlinkerFirmware(identity)


def set_level(lamp: LampFirmware, now_ms: int, level: int) -> None:
    payload = {
        "cmd_id": f"c{now_ms}-{level}",
        "ts": now_ms,
        "action": "set_level",
        "level": level,
        "ttl_s": 600,
        "priority": "manual",
        "source": "operator-1",
    }
    lamp.handle_command(payload, now_ms)


def num(payload: Mapping[str, object], key: str) -> float:
    value = payload[key]
    assert isinstance(value, int | float)
    return float(value)


def events_of(messages: list[Message]) -> list[dict[str, object]]:
    return [m.to_payload() for m in messages if m.channel == "event"]


# -- lamp physics ---------------------------------------------------------------------------


def test_power_rises_with_level_and_reaches_the_rated_wattage_at_full() -> None:
    powers_w = [physics.lamp_power_w(level, 40.0) for level in range(0, 101, 10)]
    assert powers_w == sorted(powers_w)
    assert powers_w[0] == physics.STANDBY_POWER_W
    assert powers_w[-1] == pytest.approx(40.0)
    # Roughly proportional: half level draws between 40 % and 60 % of full power.
    assert 0.4 * 40.0 < physics.lamp_power_w(50, 40.0) < 0.6 * 40.0


@pytest.mark.parametrize("level", [0, 20, 50, 80, 100])
def test_telemetry_power_voltage_and_current_are_consistent(level: int) -> None:
    lamp = make_lamp()
    set_level(lamp, NIGHT_MS, level)
    payload = lamp.telemetry(NIGHT_MS, random.Random(level)).to_payload()
    power_w, voltage_v, current_a = (num(payload, k) for k in ("power_w", "voltage_v", "current_a"))
    assert payload["level"] == level
    assert power_w == pytest.approx(physics.lamp_power_w(level, 40.0), abs=0.01)
    assert 207.0 <= voltage_v <= 233.0
    pf = physics.power_factor(power_w, 40.0)
    assert power_w == pytest.approx(voltage_v * current_a * pf, rel=0.01)
    assert voltage_v * current_a >= power_w  # apparent power is never below real power


def test_voltage_readings_scatter_around_220_volts() -> None:
    rng = random.Random(3)
    readings = [physics.mains_voltage_v(rng) for _ in range(2000)]
    mean = sum(readings) / len(readings)
    assert mean == pytest.approx(220.0, abs=0.2)
    assert 0.5 < (max(readings) - min(readings)) < 26.0


def test_driver_runs_warmer_at_full_power_than_dimmed() -> None:
    lamp = make_lamp()
    set_level(lamp, NIGHT_MS, 100)
    hot = lamp.telemetry(NIGHT_MS, random.Random(1)).payload["temp_c"]
    set_level(lamp, NIGHT_MS + 1, 10)
    cool = lamp.telemetry(NIGHT_MS + 1, random.Random(1)).payload["temp_c"]
    assert isinstance(hot, float) and isinstance(cool, float)
    assert hot - cool > 15.0


def test_ambient_lux_is_near_zero_at_midnight_and_high_at_noon() -> None:
    lamp = make_lamp()
    night_lux = lamp.telemetry(MIDNIGHT_MS, random.Random(1)).payload["lux"]
    noon_lux = lamp.telemetry(NOON_MS, random.Random(1)).payload["lux"]
    assert isinstance(night_lux, float) and isinstance(noon_lux, float)
    assert night_lux < 1.0
    assert noon_lux > 50_000.0


def test_ambient_lux_falls_steadily_through_dusk() -> None:
    minutes = range(0, 60, 5)
    readings = [
        physics.ambient_lux(
            SEOUL_LAT_DEG, SEOUL_LON_DEG, datetime.fromisoformat(f"2022-12-21T17:{m:02}:00+09:00")
        )
        for m in minutes
    ]
    assert readings == sorted(readings, reverse=True)
    assert 100.0 < readings[0] < 2000.0
    assert readings[-1] < 5.0


def test_lamp_telemetry_at_night_shows_the_schedule_level_and_no_faults() -> None:
    payload = make_lamp().telemetry(NIGHT_MS, random.Random(1)).to_payload()
    assert payload["level"] == 80
    assert payload["faults"] == []


# -- lamp faults ----------------------------------------------------------------------------


def test_lamp_failure_at_night_means_no_light_standby_power_and_a_fault_event() -> None:
    lamp = make_lamp()
    events = events_of(lamp.inject(Faults(lamp_failure=True), NIGHT_MS))
    assert [(e["type"], e["code"]) for e in events] == [("fault", "lamp_failure")]
    payload = lamp.telemetry(NIGHT_MS, random.Random(1)).to_payload()
    assert payload["level"] == 0
    assert num(payload, "power_w") < 1.0
    assert payload["faults"] == ["lamp_failure"]


def test_lamp_failure_goes_unnoticed_by_day_and_is_reported_at_dusk() -> None:
    lamp = make_lamp()
    assert lamp.inject(Faults(lamp_failure=True), NOON_MS) == []
    events = events_of(lamp.tick(NIGHT_MS))
    assert [e["code"] for e in events] == ["lamp_failure"]


def test_a_repaired_lamp_reports_the_fault_cleared() -> None:
    lamp = make_lamp()
    lamp.inject(Faults(lamp_failure=True), NIGHT_MS)
    events = events_of(lamp.inject(Faults(), NIGHT_MS + 1000))
    assert [(e["type"], e["code"]) for e in events] == [("fault_cleared", "lamp_failure")]


def test_supply_loss_sends_a_power_loss_event_and_reads_zero_volts() -> None:
    lamp = make_lamp()
    events = events_of(lamp.inject(Faults(supply_loss=True), NIGHT_MS))
    assert [e["type"] for e in events] == ["power_loss"]
    payload = lamp.telemetry(NIGHT_MS, random.Random(1)).to_payload()
    assert (payload["voltage_v"], payload["power_w"], payload["current_a"], payload["level"]) == (
        0.0,
        0.0,
        0.0,
        0,
    )
    restored = events_of(lamp.inject(Faults(), NIGHT_MS + 1000))
    assert [(e["type"], e["code"]) for e in restored] == [("fault_cleared", "power_loss")]


def test_a_day_burning_lamp_is_lit_by_day_and_says_so() -> None:
    lamp = make_lamp()
    events = events_of(lamp.inject(Faults(day_burning=True), NOON_MS))
    assert [e["code"] for e in events] == ["day_burning"]
    payload = lamp.telemetry(NOON_MS, random.Random(1)).to_payload()
    assert payload["level"] == 100
    assert num(payload, "power_w") > 35.0
    # At night a stuck output is indistinguishable from the schedule: no fault.
    assert [(e["type"], e["code"]) for e in events_of(lamp.tick(NIGHT_MS))] == [
        ("fault_cleared", "day_burning")
    ]


def test_clock_skew_shifts_the_timestamps_but_not_the_physics() -> None:
    lamp = make_lamp()
    lamp.inject(Faults(clock_skew_ms=-90_000), NOON_MS)
    payload = lamp.telemetry(NOON_MS, random.Random(1)).to_payload()
    assert payload["ts"] == NOON_MS - 90_000
    assert num(payload, "lux") > 50_000.0


# -- beacon blinker -------------------------------------------------------------------------


def test_rssi_falls_with_distance() -> None:
    distances_m = [0.5, 1, 2, 5, 10, 20, 30, 40, 80]
    rssi = [physics.rssi_at_distance_dbm(d) for d in distances_m]
    assert rssi == sorted(rssi, reverse=True)
    assert physics.rssi_at_distance_dbm(1.0) == pytest.approx(-59.0)
    assert 30.0 <= physics.beacon_detect_range_m() <= 40.0


def test_a_resident_within_range_causes_one_beacon_event_per_pass() -> None:
    blinker = make_blinker()
    rng = random.Random(5)
    first = events_of(blinker.observe(TOKEN_HASH, 8.0, NIGHT_MS, rng))
    assert len(first) == 1
    assert first[0]["type"] == "beacon"
    assert first[0]["token_hash"] == TOKEN_HASH
    assert -90.0 < num(first[0], "rssi_dbm") < -70.0
    # Still walking past, heard every second: no new event, one sighting.
    for k in range(1, 20):
        assert blinker.observe(TOKEN_HASH, 8.0 + k, NIGHT_MS + k * 1000, rng) == []
    assert blinker.sightings == 1
    # Back the next evening: a new pass.
    assert len(blinker.observe(TOKEN_HASH, 5.0, NIGHT_MS + 86_400_000, rng)) == 1
    assert blinker.sightings == 2


def test_a_resident_far_away_is_not_sensed() -> None:
    blinker = make_blinker()
    rng = random.Random(5)
    assert all(blinker.observe(TOKEN_HASH, 80.0, NIGHT_MS + k, rng) == [] for k in range(50))
    assert blinker.sightings == 0


def test_a_second_resident_is_a_separate_sighting() -> None:
    blinker = make_blinker()
    rng = random.Random(5)
    blinker.observe(TOKEN_HASH, 3.0, NIGHT_MS, rng)
    blinker.observe("ab" * 16, 3.0, NIGHT_MS + 10, rng)
    assert blinker.sightings == 2
    assert SIGHTING_COOLDOWN_MS > 10


def test_a_blinker_blinks_on_command_until_the_ttl_ends() -> None:
    blinker = make_blinker()
    payload = {"cmd_id": "b1", "ts": NIGHT_MS, "action": "blink", "ttl_s": 30, "source": "alert-9"}
    ack = blinker.handle_command(payload, NIGHT_MS)[0].to_payload()
    assert ack["status"] == "applied"
    assert blinker.telemetry(NIGHT_MS + 1000, random.Random(1)).payload["blinking"] is True
    assert blinker.telemetry(NIGHT_MS + 30_000, random.Random(1)).payload["blinking"] is False


def test_a_blinker_rejects_set_level() -> None:
    blinker = make_blinker()
    payload = {
        "cmd_id": "s1",
        "ts": NIGHT_MS,
        "action": "set_level",
        "level": 100,
        "ttl_s": 30,
        "priority": "walk",
        "source": "walk-1",
    }
    ack = blinker.handle_command(payload, NIGHT_MS)[0].to_payload()
    assert ack["status"] == "rejected"
    assert "blinker" in str(ack["reason"])


def test_blinker_battery_floats_on_mains_and_drains_without_it() -> None:
    blinker = make_blinker()
    assert blinker.battery_v(NIGHT_MS) == BATTERY_FLOAT_V
    blinker.inject(Faults(supply_loss=True), NIGHT_MS)
    two_hours_ms = 2 * 3_600_000
    assert blinker.battery_v(NIGHT_MS + two_hours_ms) == pytest.approx(BATTERY_FLOAT_V - 0.1)
    assert blinker.battery_v(NIGHT_MS + 100 * two_hours_ms) == BATTERY_CUTOFF_V
    blinker.inject(Faults(), NIGHT_MS + two_hours_ms)
    assert blinker.battery_v(NIGHT_MS + two_hours_ms) == BATTERY_FLOAT_V


def test_blinker_telemetry_carries_rssi_battery_blinking_and_sightings() -> None:
    blinker = make_blinker()
    blinker.observe(TOKEN_HASH, 2.0, NIGHT_MS, random.Random(1))
    payload = blinker.telemetry(NIGHT_MS, random.Random(1)).to_payload()
    assert set(payload) >= {"ts", "seq", "rssi_dbm", "battery_v", "blinking", "sightings"}
    assert payload["sightings"] == 1
    assert -100.0 < num(payload, "rssi_dbm") < -60.0


def test_a_blinker_uplink_rssi_is_stable_per_device() -> None:
    assert make_blinker().uplink_rssi_dbm == make_blinker().uplink_rssi_dbm


# -- wire schema ----------------------------------------------------------------------------


def _all_messages() -> list[Message]:
    lamp, blinker = make_lamp(), make_blinker()
    rng = random.Random(11)
    messages: list[Message] = [lamp.start_session(), blinker.start_session()]
    messages += lamp.on_connected(NIGHT_MS) + blinker.on_connected(NIGHT_MS)
    for now_ms in (NOON_MS, NIGHT_MS, MIDNIGHT_MS):
        messages += [lamp.telemetry(now_ms, rng), blinker.telemetry(now_ms, rng)]
    set_level(lamp, NIGHT_MS, 100)
    messages += lamp.handle_command({"cmd_id": "x1", "ts": NIGHT_MS, "action": "dance"}, NIGHT_MS)
    messages += lamp.handle_command({"cmd_id": "x1", "ts": NIGHT_MS, "action": "dance"}, NIGHT_MS)
    messages += lamp.handle_command(
        {"cmd_id": "x2", "ts": NIGHT_MS - 600_000, "action": "blink", "ttl_s": 5, "source": "a"}, NIGHT_MS
    )
    messages += lamp.handle_command(
        {"cmd_id": "x3", "ts": NIGHT_MS, "action": "clear", "source": "a"}, NIGHT_MS
    )
    messages += lamp.inject(Faults(lamp_failure=True), NIGHT_MS) + lamp.inject(
        Faults(supply_loss=True), NIGHT_MS
    )
    messages += [*lamp.inject(Faults(), NIGHT_MS), lamp.telemetry(NIGHT_MS, rng)]
    messages += blinker.observe(TOKEN_HASH, 4.0, NIGHT_MS, rng)
    return messages


def test_every_message_the_firmware_sends_passes_the_backend_schema() -> None:
    messages = _all_messages()
    assert {m.channel for m in messages} == {"birth", "state", "telemetry", "event", "ack"}
    for message in messages:
        raw = json.dumps(message.to_payload(), allow_nan=False).encode()
        broker.decode(message.channel, raw, MIDNIGHT_MS + 60_000)
        assert broker.parse_device_topic(message.topic).channel == message.channel


def test_every_malformed_payload_is_marked_and_refused_by_the_backend_schema() -> None:
    lamp = make_lamp()
    valid = lamp.telemetry(NIGHT_MS, random.Random(1)).to_payload()
    bad = list(malformed_payloads(valid))
    labels = [b.label for b in bad]
    assert len(labels) == len(set(labels))
    assert {"not_json", "missing_ts", "power_w_nan", "level_wrong_type", "oversized"} <= set(labels)
    for payload in bad:
        assert payload.raw.startswith(b"MALFORMED") or payload.label.encode() in payload.raw
        with pytest.raises(broker.PayloadError):
            broker.decode("telemetry", payload.raw, NIGHT_MS)
    oversized = next(b for b in bad if b.label == "oversized")
    assert len(oversized.raw) > OVERSIZED_BYTES


def test_malformed_payloads_carry_real_nan_and_infinity_literals() -> None:
    valid = make_lamp().telemetry(NIGHT_MS, random.Random(1)).to_payload()
    nan = next(b for b in malformed_payloads(valid) if b.label == "voltage_v_nan")
    assert math.isnan(json.loads(nan.raw)["voltage_v"])
