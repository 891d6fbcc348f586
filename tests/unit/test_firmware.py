"""Lamp firmware: schedule, override model, command validation and acks, sessions and seq."""

from __future__ import annotations

import itertools
import random
from datetime import datetime, time, timedelta
from typing import Any

import pytest

from firmware_sim import (
    KST,
    MAX_TTL_S,
    DeviceIdentity,
    LampConfig,
    LampFirmware,
    Message,
    NightProfile,
    schedule_level,
)

SEOUL_LAT_DEG = 37.5665
SEOUL_LON_DEG = 126.9780
_cmd_ids = itertools.count(1)


def kst_ms(iso: str) -> int:
    """Epoch ms of a KST wall-clock time like '2022-06-21T12:00'."""
    return int(datetime.fromisoformat(iso).replace(tzinfo=KST).timestamp() * 1000)


NOON_MS = kst_ms("2022-06-21T12:30")
NIGHT_MS = kst_ms("2022-06-21T21:30")


def make_lamp(profile: NightProfile | None = None) -> LampFirmware:
    identity = DeviceIdentity(
        device_id="L-11230-A-0001",
        district_code="11230",
        kind="lamp",
        lat_deg=SEOUL_LAT_DEG,
        lon_deg=SEOUL_LON_DEG,
        model="SL-LED40",
        paired_device_id="B-11230-A-0001",
    )
    return LampFirmware(identity, LampConfig(profile=profile or NightProfile()))


def cmd(ts_ms: int, action: str = "set_level", **fields: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {"cmd_id": f"c{next(_cmd_ids)}", "ts": ts_ms, "action": action}
    if action in ("set_level", "blink"):
        payload.setdefault("ttl_s", 60)
    if action == "set_level":
        payload.update(level=100, priority="walk")
    if action != "config":
        payload["source"] = "walk-1"
    payload.update(fields)
    return payload


def ack_of(messages: list[Message]) -> dict[str, object]:
    acks = [m for m in messages if m.channel == "ack"]
    assert len(acks) == 1
    return acks[0].to_payload()


def send(lamp: LampFirmware, now_ms: int, action: str = "set_level", **fields: Any) -> dict[str, object]:
    return ack_of(lamp.handle_command(cmd(now_ms, action, **fields), now_ms))


# -- schedule -------------------------------------------------------------------------------

# Published Seoul sunrise/sunset (KST), the same figures test_solar checks the clock against.
SEOUL_DAYS = [
    ("2022-06-21", "05:11", "19:57"),
    ("2022-12-21", "07:43", "17:17"),
    ("2022-03-20", "06:35", "18:45"),
    ("2022-09-23", "06:21", "18:29"),
]
FIVE_MIN_MS = 5 * 60 * 1000


@pytest.mark.parametrize(("day", "sunrise", "sunset"), SEOUL_DAYS)
def test_lamp_is_off_five_minutes_before_sunset_and_on_five_minutes_after(
    day: str, sunrise: str, sunset: str
) -> None:
    lamp = make_lamp()
    sunset_ms = kst_ms(f"{day}T{sunset}")
    assert lamp.output(sunset_ms - FIVE_MIN_MS).level == 0
    assert lamp.output(sunset_ms + FIVE_MIN_MS).level == 80


@pytest.mark.parametrize(("day", "sunrise", "sunset"), SEOUL_DAYS)
def test_lamp_is_on_five_minutes_before_sunrise_and_off_five_minutes_after(
    day: str, sunrise: str, sunset: str
) -> None:
    lamp = make_lamp()
    sunrise_ms = kst_ms(f"{day}T{sunrise}")
    assert lamp.output(sunrise_ms - FIVE_MIN_MS).level == 80
    assert lamp.output(sunrise_ms + FIVE_MIN_MS).level == 0


def test_lamp_is_dark_all_day_and_lit_all_night() -> None:
    profile = NightProfile()
    day_levels = {
        schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, kst_ms(f"2022-12-21T{h:02}:00"), profile)
        for h in range(8, 17)
    }
    night_levels = {
        schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, kst_ms(f"2022-12-21T{h:02}:30"), profile)
        for h in (18, 20, 22)
    }
    assert day_levels == {0}
    assert night_levels == {80}


def test_night_dimming_lowers_the_level_after_23_00_until_dawn() -> None:
    profile = NightProfile(night_level=80, late_level=50)

    def level_at(iso: str) -> int:
        return schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, kst_ms(iso), profile)

    assert level_at("2022-12-21T22:59") == 80
    assert level_at("2022-12-21T23:01") == 50
    assert level_at("2022-12-22T03:00") == 50
    assert level_at("2022-12-22T07:35") == 50
    assert level_at("2022-12-22T12:00") == 0
    assert level_at("2022-12-22T18:00") == 80


def test_night_dimming_can_end_before_dawn() -> None:
    profile = NightProfile(night_level=80, late_level=50, late_until=time(5, 0))
    assert schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, kst_ms("2022-12-22T04:59"), profile) == 50
    assert schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, kst_ms("2022-12-22T05:30"), profile) == 80


def test_without_a_late_level_the_lamp_keeps_its_night_level_all_night() -> None:
    assert schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, kst_ms("2022-12-22T02:00"), NightProfile()) == 80


def test_a_profile_with_an_impossible_level_is_refused() -> None:
    with pytest.raises(ValueError, match="late_level"):
        NightProfile(late_level=120)


# -- override model -------------------------------------------------------------------------


def test_a_set_level_command_overrides_the_schedule_until_its_ttl_ends() -> None:
    lamp = make_lamp()
    ack = send(lamp, NIGHT_MS, level=100, ttl_s=30)
    assert ack["status"] == "applied"
    assert ack["effective_level"] == 100
    assert lamp.output(NIGHT_MS + 29_999).level == 100
    assert lamp.output(NIGHT_MS + 30_000).level == 80


def test_the_highest_priority_wins_even_when_dimmer() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=100, priority="walk", source="walk-1")
    send(lamp, NIGHT_MS, level=30, priority="sos", source="alert-7")
    send(lamp, NIGHT_MS, level=90, priority="manual", source="operator-3")
    assert lamp.output(NIGHT_MS).level == 30
    assert lamp.output(NIGHT_MS).source == "alert-7"


def test_within_equal_priority_the_brightest_wins() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=90, priority="walk", source="walk-1")
    send(lamp, NIGHT_MS, level=100, priority="walk", source="walk-2")
    send(lamp, NIGHT_MS, level=95, priority="walk", source="walk-3")
    assert lamp.output(NIGHT_MS).level == 100


def test_two_walkers_do_not_fight_when_one_walk_expires() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=100, ttl_s=10, source="walk-1")
    send(lamp, NIGHT_MS, level=100, ttl_s=60, source="walk-2")
    assert lamp.output(NIGHT_MS + 20_000).level == 100
    assert lamp.output(NIGHT_MS + 60_000).level == 80


def test_when_the_last_override_expires_the_lamp_returns_to_its_schedule() -> None:
    lamp = make_lamp()
    send(lamp, NOON_MS, level=100, ttl_s=5, priority="manual", source="operator-1")
    assert lamp.output(NOON_MS + 1000).level == 100
    assert lamp.output(NOON_MS + 5000).level == 0
    lamp.tick(NOON_MS + 5000)
    assert lamp.overrides == {}


def test_a_higher_priority_expiring_hands_back_to_the_lower_one() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=100, ttl_s=60, priority="walk", source="walk-1")
    send(lamp, NIGHT_MS, level=20, ttl_s=10, priority="sos", source="alert-1")
    assert lamp.output(NIGHT_MS + 5000).level == 20
    assert lamp.output(NIGHT_MS + 10_000).level == 100


def test_blink_wins_over_every_level_override() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=100, priority="sos", source="alert-1")
    ack = send(lamp, NIGHT_MS, "blink", source="alert-2", level=70)
    assert ack["status"] == "applied"
    output = lamp.output(NIGHT_MS)
    assert output.blinking
    assert output.level == 70
    assert output.source == "alert-2"


def test_a_blinking_lamp_alternates_between_full_and_dark_every_half_second() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, "blink", source="alert-1")
    start_ms = NIGHT_MS - NIGHT_MS % 1000
    levels = [lamp.actual_level(start_ms + k * 500) for k in range(4)]
    assert levels == [100, 0, 100, 0]


def test_clear_removes_only_the_override_of_its_source() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=100, priority="sos", source="alert-1")
    send(lamp, NIGHT_MS, level=90, priority="walk", source="walk-1")
    ack = send(lamp, NIGHT_MS + 1, "clear", source="alert-1")
    assert ack["status"] == "applied"
    assert ack["effective_level"] == 90
    assert set(lamp.overrides) == {"walk-1"}


def test_clear_of_the_last_override_returns_the_lamp_to_its_schedule() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, "blink", source="alert-1")
    assert send(lamp, NIGHT_MS + 1, "clear", source="alert-1")["effective_level"] == 80
    assert not lamp.output(NIGHT_MS + 1).blinking


def test_a_new_command_from_the_same_source_replaces_its_override() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS, level=100, source="walk-1")
    send(lamp, NIGHT_MS + 1, level=40, source="walk-1")
    assert lamp.output(NIGHT_MS + 1).level == 40


def test_an_older_command_redelivered_after_a_newer_one_is_rejected_as_stale() -> None:
    lamp = make_lamp()
    send(lamp, NIGHT_MS + 1000, level=100, source="walk-1")
    ack = send(lamp, NIGHT_MS, "clear", source="walk-1")
    assert ack["status"] == "rejected"
    assert "stale" in str(ack["reason"])
    assert lamp.output(NIGHT_MS + 1000).level == 100


def test_a_command_stamped_in_the_future_lasts_no_longer_than_its_ttl() -> None:
    lamp = make_lamp()
    lamp.handle_command(cmd(NIGHT_MS + 3_600_000, ttl_s=10), NIGHT_MS)
    assert lamp.output(NIGHT_MS + 10_000).level == 80


def test_config_changes_the_night_profile() -> None:
    lamp = make_lamp()
    ack = send(lamp, NIGHT_MS, "config", config={"night_level": 60, "late_level": 40, "late_from": "22:00"})
    assert ack["status"] == "applied"
    assert lamp.output(kst_ms("2022-06-21T21:30")).level == 60
    assert lamp.output(kst_ms("2022-06-21T22:30")).level == 40


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"brightness": 3}, "unknown config key 'brightness'"),
        ({"night_level": 130}, "config.night_level out of range"),
        ({"late_from": "25:00"}, "config.late_from must be 'HH:MM'"),
        ({"night_level": None}, "config.night_level must be an integer"),
    ],
)
def test_an_invalid_config_is_rejected_and_the_profile_kept(config: dict[str, Any], reason: str) -> None:
    lamp = make_lamp()
    ack = send(lamp, NIGHT_MS, "config", config=config)
    assert ack["status"] == "rejected"
    assert reason in str(ack["reason"])
    assert lamp.config.profile == NightProfile()


# -- validation, expiry, duplicates ---------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ({"action": "dance"}, "unknown action"),
        ({"level": 101}, "level out of range"),
        ({"level": -1}, "level out of range"),
        ({"level": "bright"}, "level must be an integer"),
        ({"level": True}, "level must be an integer"),
        ({"level": 50.5}, "level must be an integer"),
        ({"ttl_s": None}, "missing ttl_s"),
        ({"ttl_s": 0}, "ttl_s must be a positive number"),
        ({"ttl_s": float("nan")}, "ttl_s must be a positive number"),
        ({"ttl_s": MAX_TTL_S + 1}, "cap"),
        ({"priority": "urgent"}, "bad priority"),
        ({"priority": None}, "missing priority"),
        ({"source": ""}, "source must be a string"),
        ({"source": None}, "source must be a string"),
        ({"ts": "now"}, "ts must be"),
        ({"ts": -5}, "ts must be"),
    ],
)
def test_an_invalid_command_is_rejected_with_a_reason_naming_the_problem(
    payload: dict[str, Any], reason: str
) -> None:
    lamp = make_lamp()
    ack = ack_of(lamp.handle_command(cmd(NIGHT_MS, **payload), NIGHT_MS))
    assert ack["status"] == "rejected"
    assert reason in str(ack["reason"])
    assert lamp.overrides == {}
    assert ack["effective_level"] == 80


def test_missing_fields_are_each_rejected_by_name() -> None:
    lamp = make_lamp()
    for field_name in ("ts", "source", "level", "ttl_s", "priority"):
        payload = cmd(NIGHT_MS)
        del payload[field_name]
        ack = ack_of(lamp.handle_command(payload, NIGHT_MS))
        assert ack["status"] == "rejected"
        assert ack["reason"] == f"missing {field_name}"


def test_a_command_without_a_usable_cmd_id_gets_no_ack_and_changes_nothing() -> None:
    lamp = make_lamp()
    assert lamp.handle_command(["set_level", 100], NIGHT_MS) == []
    assert lamp.handle_command(cmd(NIGHT_MS, cmd_id=""), NIGHT_MS) == []
    assert lamp.overrides == {}


def test_a_blink_without_priority_or_level_is_an_sos_blink_at_full() -> None:
    lamp = make_lamp()
    payload = {"cmd_id": "b1", "ts": NIGHT_MS, "action": "blink", "ttl_s": 60, "source": "alert-1"}
    assert ack_of(lamp.handle_command(payload, NIGHT_MS))["status"] == "applied"
    assert lamp.overrides["alert-1"].level == 100
    assert lamp.overrides["alert-1"].priority.wire_name == "sos"


def test_a_command_that_arrives_after_its_expiry_is_acked_expired_and_not_applied() -> None:
    lamp = make_lamp()
    sent_ms = NIGHT_MS - 120_000
    ack = ack_of(lamp.handle_command(cmd(sent_ms, ttl_s=60), NIGHT_MS))
    assert ack["status"] == "expired"
    assert ack["effective_level"] == 80
    assert lamp.overrides == {}


def test_a_late_command_still_within_its_ttl_is_applied_for_the_remaining_time_only() -> None:
    lamp = make_lamp()
    ack = ack_of(lamp.handle_command(cmd(NIGHT_MS - 50_000, ttl_s=60), NIGHT_MS))
    assert ack["status"] == "applied"
    assert lamp.output(NIGHT_MS + 9_999).level == 100
    assert lamp.output(NIGHT_MS + 10_000).level == 80


def test_a_duplicate_cmd_id_is_acked_again_without_being_applied_twice() -> None:
    lamp = make_lamp()
    first = cmd(NIGHT_MS, level=100, source="walk-1", ttl_s=10)
    assert ack_of(lamp.handle_command(first, NIGHT_MS))["status"] == "applied"
    # The redelivery comes late: applying it again would extend the override.
    again = ack_of(lamp.handle_command(first, NIGHT_MS + 5000))
    assert again["status"] == "applied"
    assert again["cmd_id"] == first["cmd_id"]
    assert again["duplicate"] is True
    assert lamp.overrides["walk-1"].expires_ms == NIGHT_MS + 10_000


def test_a_duplicate_of_an_expired_command_is_acked_expired_again() -> None:
    lamp = make_lamp()
    stale = cmd(NIGHT_MS - 120_000, ttl_s=60)
    lamp.handle_command(stale, NIGHT_MS)
    assert ack_of(lamp.handle_command(stale, NIGHT_MS + 1))["status"] == "expired"


def test_a_skewed_device_clock_decides_expiry_by_its_own_time() -> None:
    from firmware_sim import Faults

    lamp = make_lamp()
    lamp.inject(Faults(clock_skew_ms=120_000), NIGHT_MS)
    ack = ack_of(lamp.handle_command(cmd(NIGHT_MS, ttl_s=60), NIGHT_MS))
    assert ack["status"] == "expired"
    assert ack["ts"] == NIGHT_MS + 120_000


# -- sessions, birth, seq ------------------------------------------------------------------


def test_every_connect_increments_bdseq_and_the_will_carries_it() -> None:
    lamp = make_lamp()
    first_will = lamp.start_session()
    second_will = lamp.start_session()
    assert first_will.to_payload() == {"state": "offline", "bdseq": 1}
    assert second_will.to_payload() == {"state": "offline", "bdseq": 2}
    assert second_will.retain
    assert second_will.topic == "sl/v1/11230/L-11230-A-0001/state"


def test_birth_comes_first_then_a_retained_online_state() -> None:
    lamp = make_lamp()
    lamp.start_session()
    birth, state = lamp.on_connected(NOON_MS)
    assert birth.topic == "sl/v1/11230/L-11230-A-0001/birth"
    assert birth.to_payload() == {
        "ts": NOON_MS,
        "seq": 1,
        "kind": "lamp",
        "firmware": "sim-1.0.0",
        "model": "SL-LED40",
        "lat": SEOUL_LAT_DEG,
        "lon": SEOUL_LON_DEG,
        "paired": "B-11230-A-0001",
        "bdseq": 1,
    }
    assert state.to_payload() == {"state": "online", "bdseq": 1}
    assert state.retain


def test_seq_increases_by_one_on_every_numbered_message_across_reconnects() -> None:
    lamp = make_lamp()
    rng = random.Random(7)
    seqs: list[object] = []
    for session in range(3):
        lamp.start_session()
        now_ms = NIGHT_MS + session * 60_000
        messages = [*lamp.on_connected(now_ms), lamp.telemetry(now_ms, rng)]
        messages += lamp.handle_command(cmd(now_ms), now_ms)
        seqs += [m.payload["seq"] for m in messages if m.channel not in ("state", "ack")]
    assert seqs == list(range(1, len(seqs) + 1))


def test_timestamps_are_epoch_milliseconds_of_the_device_clock() -> None:
    lamp = make_lamp()
    telemetry = lamp.telemetry(NOON_MS, random.Random(1))
    assert telemetry.payload["ts"] == NOON_MS
    assert telemetry.topic.endswith("/telemetry")
    assert datetime.fromtimestamp(NOON_MS / 1000, KST).hour == 12
    assert timedelta(milliseconds=NOON_MS).days > 19_000


def test_an_ack_carries_no_seq_and_spends_no_number_of_the_telemetry_counter() -> None:
    lamp = make_lamp()
    rng = random.Random(1)
    before = lamp.telemetry(NIGHT_MS, rng).to_payload()["seq"]
    ack = ack_of(lamp.handle_command(cmd(NIGHT_MS, level=100, source="walk-1", ttl_s=10), NIGHT_MS))
    assert "seq" not in ack
    after = lamp.telemetry(NIGHT_MS + 1000, rng).to_payload()["seq"]
    assert after == before + 1  # type: ignore[operator]
