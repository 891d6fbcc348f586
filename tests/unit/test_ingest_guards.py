"""Ingest's guards against a device misusing its own credentials: the per-device rate bound and
what a birth may change in the registration (pure parts; the attacks themselves run against the
real broker and database in tests/integration/test_device_attacks.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import Birth, DeviceRateLimiter
from ingest._registration import POSITION_TOLERANCE_M, judge_birth

M_LAT = 1 / 111_000  # degrees of latitude per metre


T0 = 1000.0


def test_a_device_gets_its_burst_then_its_rate_and_the_rest_is_refused_and_counted() -> None:
    limiter = DeviceRateLimiter(rate_per_s=5, burst=100, now=T0)
    topic = "sl/v1/11140/L-1/telemetry"
    admitted = sum(limiter.admit(topic) for _ in range(50_000))
    assert admitted == 100 and limiter.limited == 49_900
    limiter.refill(T0 + 0.1)  # half a token: nothing yet
    assert not limiter.admit(topic)
    limiter.refill(T0 + 2.0)  # two seconds: ten more
    assert sum(limiter.admit(topic) for _ in range(1000)) == 10
    # Its other channels share the bucket; another device has its own.
    assert not limiter.admit("sl/v1/11140/L-1/event")
    assert limiter.admit("sl/v1/11140/L-2/telemetry")


def test_a_sustained_flood_is_one_episode_and_a_flood_after_a_quiet_spell_another() -> None:
    limiter = DeviceRateLimiter(rate_per_s=5, burst=10, now=T0)
    topic = "sl/v1/11140/L-1/event"
    t = T0
    for _ in range(200):  # 20 s of 100 msg/s
        for _ in range(10):
            limiter.admit(topic)
        t += 0.1
        limiter.refill(t)
    assert limiter.take_new_floods() == ["sl/v1/11140/L-1"]
    assert limiter.take_new_floods() == []
    limiter.refill(t + 2.0)  # the bucket is full again: the episode is over, the device forgotten
    assert len(limiter) == 0
    for _ in range(50):
        limiter.admit(topic)
    assert limiter.take_new_floods() == ["sl/v1/11140/L-1"]


@given(st.lists(st.tuples(st.integers(0, 30), st.floats(0, 0.5)), max_size=300))
def test_a_device_never_gets_more_than_its_burst_plus_its_rate_over_time(
    steps: list[tuple[int, float]],
) -> None:
    limiter = DeviceRateLimiter(rate_per_s=5, burst=20, now=T0)
    t, admitted = T0, 0
    for n, dt in steps:
        admitted += sum(limiter.admit("sl/v1/11140/L-1/telemetry") for _ in range(n))
        t += dt
        limiter.refill(t)
    assert admitted <= 20 + 5 * (t - T0) + 1e-6


def test_the_buckets_are_bounded_in_number() -> None:
    limiter = DeviceRateLimiter(max_devices=100, now=T0)
    for i in range(1000):
        limiter.admit(f"sl/v1/11140/L-{i}/telemetry")
    limiter.refill(T0 + 1.0)
    assert len(limiter) <= 100


def test_a_rate_of_zero_is_refused_as_a_setting() -> None:
    with pytest.raises(ValueError):
        DeviceRateLimiter(rate_per_s=0)


# ------------------------------------------------------------------ births


LAT, LON = 37.5650, 126.9800
REGISTERED: dict[str, Any] = {
    "kind": "lamp",
    "district_code": "11140",
    "lat": LAT,
    "lon": LON,
    "paired_device_id": "B-1",
}


def birth(**changes: Any) -> Birth:
    fields: dict[str, Any] = {
        "kind": "lamp",
        "firmware": "2.4.1",
        "model": "SL-LED-60",
        "lat": LAT,
        "lon": LON,
        "bdseq": 3,
        "paired": "B-1",
    }
    fields.update(changes)
    return Birth(**fields)


def test_a_birth_claiming_another_kind_a_far_position_and_a_foreign_pairing_changes_none_of_them() -> None:
    gangnam = (37.4979, 127.0276)
    verdict = judge_birth(
        REGISTERED, "11140", birth(kind="blinker", lat=gangnam[0], lon=gangnam[1], paired="L-far"), None
    )
    assert [c.split(":")[0] for c in verdict.conflicts] == ["kind", "position", "paired"]
    assert (verdict.lat, verdict.lon, verdict.paired) == (None, None, None)  # nothing to write


def test_a_birth_may_update_its_firmware_and_model_and_stand_within_gps_error() -> None:
    verdict = judge_birth(
        REGISTERED,
        "11140",
        birth(firmware="2.5.0", model="SL-LED-80", lat=LAT + (POSITION_TOLERANCE_M - 5) * M_LAT),
        None,
    )
    assert verdict.conflicts == ()
    assert (verdict.firmware, verdict.model) == ("2.5.0", "SL-LED-80")
    assert verdict.lat is None  # the registered position stays


def test_a_birth_in_another_district_than_registered_is_a_conflict() -> None:
    verdict = judge_birth(REGISTERED, "11110", birth(), None)
    assert verdict.conflicts == ("district: 11140 registered, 11110 claimed",)


def test_a_registration_without_position_or_pairing_takes_them_from_a_birth_pairing_only_nearby() -> None:
    bare = {**REGISTERED, "lat": None, "lon": None, "paired_device_id": None}
    near = {"lat": LAT + 10 * M_LAT, "lon": LON}
    verdict = judge_birth(bare, "11140", birth(paired="B-9"), near)
    assert verdict.conflicts == () and (verdict.lat, verdict.lon, verdict.paired) == (LAT, LON, "B-9")
    far = {"lat": LAT + 500 * M_LAT, "lon": LON}
    verdict = judge_birth(bare, "11140", birth(paired="B-9"), far)
    assert verdict.paired is None and verdict.conflicts[0].startswith("paired: B-9 is not")
    verdict = judge_birth(bare, "11140", birth(paired="B-unknown"), None)
    assert verdict.paired is None and verdict.conflicts


def test_a_share_groups_secret_is_never_in_a_logged_filter_nor_in_the_workers_config_repr() -> None:
    from pathlib import Path

    from broker import ConnectionParams
    from ingest import WorkerConfig, redact_group

    secret = "4adfcc86" * 4
    assert (
        redact_group(f"$share/ingest-{secret}/sl/v1/+/+/telemetry") == "$share/ingest-…/sl/v1/+/+/telemetry"
    )
    assert redact_group("$share/ingest/sl/v1/+/+/ack") == "$share/ingest/sl/v1/+/+/ack"
    assert redact_group("sl/v1/+/+/ack") == "sl/v1/+/+/ack"
    config = WorkerConfig(
        mqtt=ConnectionParams(host="127.0.0.1", port=1883),
        database_url="postgresql://x/y",
        spool_path=Path("/nonexistent"),
        share_group=f"ingest-{secret}",
        retired_filters=[f"$share/ingest-{secret[::-1]}/sl/v1/+/+/ack"],
    )
    assert any(secret in f for f in config.filters)
    assert secret not in repr(config) and secret[::-1] not in repr(config)
