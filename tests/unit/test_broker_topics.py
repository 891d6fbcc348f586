"""Topics of the v1 namespace: builders refuse bad parts, the parser explains every refusal."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import (
    CHANNELS,
    INGEST_SHARED_FILTER,
    AlertsTopic,
    DeviceTopic,
    TopicError,
    alerts_filter,
    alerts_topic,
    device_filter,
    device_topic,
    ingest_filters,
    is_valid_device_id,
    parse_alerts_topic,
    parse_device_topic,
    parse_topic,
    shared,
    supports_shared_subscriptions,
    unshared,
)

valid_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
districts = st.from_regex(r"\A[0-9]{5}\Z")
channels = st.sampled_from(sorted(CHANNELS))


def test_a_device_topic_is_built_from_district_id_and_channel() -> None:
    assert device_topic("11230", "L-0001_a", "telemetry") == "sl/v1/11230/L-0001_a/telemetry"


def test_an_alerts_topic_is_built_for_a_district() -> None:
    assert alerts_topic("11230") == "cc/v1/11230/alerts"


@pytest.mark.parametrize(
    "bad_id",
    [
        "",
        "a/b",
        "a+b",
        "a#b",
        "+",
        "#",
        "-lead",
        "_lead",
        "a b",
        "a.b",
        "a" * 65,
        "가로등",
        "lamp٣",
        "l\n",
        "é",
    ],
)
def test_a_device_id_outside_the_pattern_is_refused_with_a_reason(bad_id: str) -> None:
    assert not is_valid_device_id(bad_id)
    with pytest.raises(TopicError, match="device id"):
        device_topic("11230", bad_id, "telemetry")


def test_a_device_id_of_64_characters_is_allowed() -> None:
    assert is_valid_device_id("a" * 64)
    assert parse_device_topic(f"sl/v1/11230/{'a' * 64}/state").device_id == "a" * 64


@pytest.mark.parametrize("bad_district", ["", "1123", "112300", "1123a", "١١٢٣٠", "+"])
def test_a_district_code_that_is_not_five_digits_is_refused(bad_district: str) -> None:
    with pytest.raises(TopicError, match="district"):
        device_topic(bad_district, "L1", "state")
    with pytest.raises(TopicError, match="district"):
        alerts_topic(bad_district)


def test_an_unknown_channel_is_refused() -> None:
    with pytest.raises(TopicError, match="channel"):
        device_topic("11230", "L1", "status")  # type: ignore[arg-type]


def test_a_device_topic_parses_into_its_parts() -> None:
    assert parse_device_topic("sl/v1/11230/L1/ack") == DeviceTopic("11230", "L1", "ack")
    assert parse_topic("sl/v1/11230/L1/ack") == DeviceTopic("11230", "L1", "ack")


def test_an_alerts_topic_parses_into_its_district() -> None:
    assert parse_alerts_topic("cc/v1/11230/alerts") == AlertsTopic("11230")
    assert parse_topic("cc/v1/11230/alerts") == AlertsTopic("11230")


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("sl/v2/11230/L1/state", "not a device topic"),
        ("sl/v1/11230/L1", "not a device topic"),
        ("sl/v1/11230/L1/state/extra", "not a device topic"),
        ("sl/v1/11230/a/b/state", "not a device topic"),
        ("sl/v1/11230/L1/status", "unknown channel"),
        ("sl/v1/1123/L1/state", "district"),
        ("sl/v1/11230/+/state", "device id"),
        ("sl/v1/11230//state", "device id is empty"),
        ("", "not a device topic"),
        ("cc/v1/11230/alert", "not a control-centre topic"),
        ("cc/v1/x/alerts", "district"),
    ],
)
def test_a_topic_outside_the_namespace_fails_to_parse_with_its_reason(topic: str, reason: str) -> None:
    with pytest.raises(TopicError, match=reason) as info:
        parse_topic(topic)
    assert info.value.topic == topic


@given(districts, valid_ids, channels)
def test_any_valid_device_topic_survives_a_build_parse_round_trip(
    district: str, device_id: str, ch: str
) -> None:
    topic = device_topic(district, device_id, ch)  # type: ignore[arg-type]
    assert parse_device_topic(topic) == DeviceTopic(district, device_id, ch)  # type: ignore[arg-type]


@given(st.text())
def test_parsing_any_text_raises_nothing_but_topic_error(text: str) -> None:
    try:
        parsed = parse_topic(text)
    except TopicError:
        return
    assert text in (device_topic(*parsed) if isinstance(parsed, DeviceTopic) else alerts_topic(*parsed),)


@given(
    st.lists(
        st.sampled_from(["sl", "v1", "cc", "11230", "L1", "alerts", "state", "+", "#", "", "é"]), max_size=7
    )
)
def test_parsing_topic_like_text_raises_nothing_but_topic_error(parts: list[str]) -> None:
    with contextlib.suppress(TopicError):
        parse_topic("/".join(parts))


def test_subscription_filters_use_wildcards_or_checked_values() -> None:
    assert device_filter() == "sl/v1/+/+/#"
    assert device_filter("11230", channel="telemetry") == "sl/v1/11230/+/telemetry"
    assert device_filter("11230", "L1", "cmd") == "sl/v1/11230/L1/cmd"
    assert alerts_filter() == "cc/v1/+/alerts"
    assert alerts_filter("11230") == "cc/v1/11230/alerts"
    with pytest.raises(TopicError):
        device_filter(device_id="a/b")
    with pytest.raises(TopicError):
        device_filter(channel="nope")


def test_the_ingest_shared_subscription_splits_device_topics_across_the_ingest_group() -> None:
    assert INGEST_SHARED_FILTER == "$share/ingest/sl/v1/+/+/#"
    assert shared("ingest", device_filter()) == INGEST_SHARED_FILTER
    assert unshared(INGEST_SHARED_FILTER) == "sl/v1/+/+/#"
    assert unshared("sl/v1/+/+/#") == "sl/v1/+/+/#"
    with pytest.raises(TopicError):
        shared("a/b", "x")


def test_ingest_filters_cover_the_uplink_channels_and_never_commands() -> None:
    plain = ingest_filters(shared_subscription=False)
    assert plain == [f"sl/v1/+/+/{c}" for c in ("birth", "state", "telemetry", "event", "ack")]
    assert all(f.startswith("$share/ingest/") for f in ingest_filters())


def test_every_broker_kind_delivers_shared_subscriptions() -> None:
    assert supports_shared_subscriptions("embedded")  # broker.lite
    assert supports_shared_subscriptions("mosquitto")
    assert supports_shared_subscriptions("configured")
