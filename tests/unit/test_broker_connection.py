"""Connection helpers: URLs become parameters, backoff stays within its capped, jittered bounds."""

from __future__ import annotations

import random
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from broker import (
    BrokerAddress,
    ConnectionLost,
    ConnectionParams,
    MqttSession,
    MqttUrlError,
    backoff_delay_s,
    device_will,
    next_address,
    paho_client,
    parse_mqtt_url,
)
from devkit.localservices import free_port


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://localhost", ConnectionParams("localhost", 1883)),
        ("mqtt://127.0.0.1:1884", ConnectionParams("127.0.0.1", 1884)),
        ("mqtts://broker.example.kr", ConnectionParams("broker.example.kr", 8883, tls=True)),
        ("mqtt://ingest:s%40cret@h:1883/", ConnectionParams("h", 1883, "ingest", "s@cret")),
        ("mqtts://user@h:9999", ConnectionParams("h", 9999, "user", None, True)),
        ("mqtt://[::1]:1883", ConnectionParams("::1", 1883)),
    ],
)
def test_an_mqtt_url_becomes_connection_parameters(url: str, expected: ConnectionParams) -> None:
    assert parse_mqtt_url(url) == expected


@pytest.mark.parametrize(
    "url", ["http://h", "h:1883", "mqtt://", "mqtt://h:notaport", "mqtt://h/topic", "mqtt://h?x=1", ""]
)
def test_a_url_that_names_no_broker_is_refused(url: str) -> None:
    with pytest.raises(MqttUrlError):
        parse_mqtt_url(url)


def test_a_refused_url_never_shows_its_password() -> None:
    with pytest.raises(MqttUrlError) as info:
        parse_mqtt_url("http://user:hunter2@h")
    assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(parse_mqtt_url("mqtt://user:hunter2@h"))


def test_a_list_of_urls_names_a_clusters_nodes_tried_in_that_order() -> None:
    params = parse_mqtt_url("mqtt://ingest@10.0.0.1:1883, mqtt://ingest@10.0.0.2,mqtt://ingest@[::1]:1884")
    assert (params.host, params.port, params.username) == ("10.0.0.1", 1883, "ingest")
    assert params.addresses == (
        BrokerAddress("10.0.0.1", 1883),
        BrokerAddress("10.0.0.2", 1883),
        BrokerAddress("::1", 1884),
    )
    # a device's home node first, the others after it in ring order
    assert params.starting_at(2).addresses == (
        BrokerAddress("::1", 1884),
        BrokerAddress("10.0.0.1", 1883),
        BrokerAddress("10.0.0.2", 1883),
    )
    assert parse_mqtt_url("mqtt://h:1").addresses == (BrokerAddress("h", 1),)


def test_the_next_node_after_a_dead_one_wraps_around_the_list() -> None:
    ring = parse_mqtt_url("mqtt://a:1,mqtt://b:2").addresses
    assert next_address(ring, ring[0]) == ring[1]
    assert next_address(ring, ring[1]) == ring[0]
    assert next_address(ring, BrokerAddress("elsewhere", 9)) == ring[0]


@pytest.mark.parametrize(
    ("urls", "reason"),
    [
        ("mqtt://a,", "address 2 of 2 is empty"),
        ("mqtt://a,http://b", "address 2 of 2: scheme must be mqtt:// or mqtts://"),
        ("mqtt://a,mqtts://b", "address 2 has another scheme or user"),
        ("mqtt://u@a,mqtt://v@b", "address 2 has another scheme or user"),
        ("mqtt://u:one@a,mqtt://u:two@b", "address 2 has another scheme or user"),
        ("mqtt://a,mqtt://a:1883", "address 2 (a:1883) is listed twice"),
        ("mqtt://a,mqtt://b/topic", "address 2 of 2: an MQTT URL has no path"),
    ],
)
def test_a_list_with_a_bad_url_is_refused_saying_which_one(urls: str, reason: str) -> None:
    with pytest.raises(MqttUrlError, match=re.escape(reason)):
        parse_mqtt_url(urls)


def test_a_refused_list_never_shows_a_password() -> None:
    for urls in ("mqtt://u:hunter2@a,mqtt://u:hunter2@b/x", "mqtt://u:hunter2@a,mqtt://b"):
        with pytest.raises(MqttUrlError) as info:
            parse_mqtt_url(urls)
        assert "hunter2" not in str(info.value)
    assert "hunter2" not in repr(parse_mqtt_url("mqtt://u:hunter2@a,mqtt://u:hunter2@b"))


def test_a_paho_client_holds_every_node_and_connects_to_the_first_that_answers() -> None:
    live = socket.socket()
    live.bind(("127.0.0.1", 0))
    live.listen()
    try:
        dead_port, live_port = free_port(), live.getsockname()[1]
        client = paho_client(
            parse_mqtt_url(f"mqtt://127.0.0.1:{dead_port},mqtt://127.0.0.1:{live_port}"), "c"
        )
        assert client.addresses == (
            BrokerAddress("127.0.0.1", dead_port),
            BrokerAddress("127.0.0.1", live_port),
        )
        assert client.connect_any(keepalive=5) == BrokerAddress("127.0.0.1", live_port)
        client.disconnect()
    finally:
        live.close()


@given(st.integers(min_value=-5, max_value=10_000), st.floats(0.01, 10), st.floats(0.01, 600))
def test_backoff_stays_between_zero_and_the_capped_exponential(
    attempt: int, base_s: float, cap_s: float
) -> None:
    delay = backoff_delay_s(attempt, base_s=base_s, cap_s=cap_s)
    assert 0 <= delay <= min(cap_s, base_s * 1.5 ** min(10, max(0, attempt)))


def test_backoff_grows_with_attempts_and_stops_growing_at_the_cap() -> None:
    rng = random.Random(1)
    ceilings = [max(backoff_delay_s(n, base_s=1, cap_s=30, rng=rng) for _ in range(2000)) for n in (0, 3, 20)]
    assert ceilings[0] <= 1.0
    assert 2.5 < ceilings[1] <= 1.5**3
    assert 29 < ceilings[2] <= 30


def test_backoff_is_jittered_so_clients_do_not_reconnect_in_lockstep() -> None:
    delays = {backoff_delay_s(5, rng=random.Random(seed)) for seed in range(50)}
    assert len(delays) == 50


def test_a_device_will_is_its_retained_offline_state_with_the_connection_bdseq() -> None:
    will = device_will("11230", "L-1", 9)
    assert (will.topic, will.payload, will.qos, will.retain) == (
        "sl/v1/11230/L-1/state",
        b'{"state":"offline","bdseq":9}',
        1,
        True,
    )


def test_a_paho_client_gets_the_v2_callback_api_and_jittered_reconnect_delays() -> None:
    params = parse_mqtt_url("mqtt://dev:pw@127.0.0.1:1883")
    spreads = set()
    for seed in range(20):
        client = paho_client(params, f"c{seed}", manual_ack=True, rng=random.Random(seed), reconnect_cap_s=60)
        assert client._callback_api_version == CallbackAPIVersion.VERSION2
        assert client._manual_ack
        assert 1 <= client._reconnect_min_delay <= client._reconnect_max_delay <= 60
        spreads.add((client._reconnect_min_delay, client._reconnect_max_delay))
    assert len(spreads) > 1


async def test_a_session_without_a_broker_keeps_retrying_and_refuses_to_publish() -> None:
    params = ConnectionParams("127.0.0.1", free_port())
    session = MqttSession(params, client_id="nobody-home", backoff_base_s=0.01, backoff_cap_s=0.05)
    async with session:
        with pytest.raises(ConnectionLost, match="not connected"):
            await session.wait_connected(0.3)
        with pytest.raises(ConnectionLost, match="not published"):
            await session.publish("sl/v1/11230/L1/cmd", b"{}")
        assert session.connections == 0
        assert not session.connected
