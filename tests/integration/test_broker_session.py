"""The connection helpers against a real broker: sessions survive restarts, dead devices leave a will."""

from __future__ import annotations

import asyncio
import queue
import subprocess
import sys
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest

from broker import (
    Birth,
    ConnectionLost,
    ConnectionParams,
    DeviceLink,
    InboundMessage,
    MqttSession,
    decode_birth,
    decode_state,
    device_filter,
    device_topic,
    paho_client,
)
from devkit.localservices import MqttService, terminate
from tests.conftest import ROOT

pytestmark = pytest.mark.integration
NOW_MS = 1_764_100_000_000

# A lamp in its own process, so that SIGKILL drops its TCP connection without an MQTT DISCONNECT,
# exactly like a lamp losing power.
DEVICE_SCRIPT = """
import sys
from broker import Birth, DeviceLink, paho_client, parse_mqtt_url
url, district, device_id, bdseq = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
params = parse_mqtt_url(url)
client = paho_client(params, device_id)
birth = lambda n: Birth("lamp", "1.0", "SL-60", 37.57, 126.98, n)
DeviceLink(client, district, device_id, birth, bdseq=bdseq)
client.connect(params.host, params.port, keepalive=60)
client.loop_forever()
"""


def lamp_birth(bdseq: int) -> Birth:
    return Birth("lamp", "1.0", "SL-60", 37.57, 126.98, bdseq)


def params_of(svc: MqttService) -> ConnectionParams:
    return ConnectionParams(svc.host, svc.port, svc.username, svc.password)


class Collector:
    """A paho subscriber that puts every message it receives on a queue."""

    def __init__(self, params: ConnectionParams, client_id: str, topic_filter: str) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = queue.Queue[bool]()
        self.client = paho_client(params, client_id)
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *_a: self._subscribed.put(True)
        self.client.on_connect = lambda c, *_a: c.subscribe(topic_filter, qos=1)
        self.client.connect(params.host, params.port)
        self.client.loop_start()
        assert self._subscribed.get(timeout=10)

    def next(self, timeout_s: float = 10) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout_s)

    def next_on(self, topic: str, timeout_s: float = 10) -> mqtt.MQTTMessage:
        while True:
            msg = self.next(timeout_s)
            if msg.topic == topic:
                return msg

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def start_device(url: str, district: str, device_id: str, bdseq: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", DEVICE_SCRIPT, url, district, device_id, str(bdseq)], cwd=ROOT
    )


def assert_will_is_retained_offline_with_bdseq(svc: MqttService, unique_id: str) -> None:
    """Shared by the Mosquitto and embedded-broker tests."""
    params = params_of(svc)
    device_id, district = f"L-{unique_id}", "11230"
    state_topic = device_topic(district, device_id, "state")
    watcher = Collector(params, f"watch-{unique_id}", device_filter(district, device_id, "#"))
    proc = start_device(svc.url, district, device_id, bdseq=41)
    try:
        birth = watcher.next_on(device_topic(district, device_id, "birth"), timeout_s=20)
        assert decode_birth(birth.payload, NOW_MS).bdseq == 41
        online = decode_state(watcher.next_on(state_topic).payload, NOW_MS)
        assert (online.state, online.bdseq) == ("online", 41)

        proc.kill()  # no DISCONNECT: the broker must publish the will
        proc.wait()
        offline = decode_state(watcher.next_on(state_topic, timeout_s=20).payload, NOW_MS)
        assert (offline.state, offline.bdseq) == ("offline", 41)

        late = Collector(params, f"late-{unique_id}", state_topic)
        retained = late.next_on(state_topic)
        assert retained.retain
        assert decode_state(retained.payload, NOW_MS).state == "offline"
        late.close()
    finally:
        terminate(proc)
        watcher.client.publish(state_topic, b"", qos=1, retain=True).wait_for_publish(5)  # clear retained
        watcher.close()


def test_a_dead_device_leaves_a_retained_offline_state_with_its_bdseq(
    mqtt_service: MqttService, unique_id: str
) -> None:
    assert_will_is_retained_offline_with_bdseq(mqtt_service, unique_id)


def pump_until(client: mqtt.Client, done: Callable[[], bool], timeout_s: float = 10) -> None:
    """Run the paho network loop in this thread until ``done()`` (no loop thread to leak)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, "timed out"
        client.loop(timeout=0.05)


def test_a_device_link_starts_each_connection_with_a_new_bdseq(
    mqtt_service: MqttService, unique_id: str
) -> None:
    params = params_of(mqtt_service)
    device_id, district = f"L-{unique_id}", "11680"
    state_topic = device_topic(district, device_id, "state")
    watcher = Collector(params, f"watch-{unique_id}", state_topic)
    client = paho_client(params, device_id)
    link = DeviceLink(client, district, device_id, lamp_birth, bdseq=3)
    try:
        client.connect(params.host, params.port)
        pump_until(client, lambda: not watcher.messages.empty())
        assert decode_state(watcher.next().payload, NOW_MS).bdseq == 3
        client.disconnect()  # a clean disconnect: no will, but the next connection counts up
        pump_until(client, lambda: link.bdseq == 4)
        client.reconnect()
        pump_until(client, lambda: not watcher.messages.empty())
        assert decode_state(watcher.next().payload, NOW_MS).bdseq == 4
    finally:
        info = client.publish(state_topic, b"", qos=1, retain=True)  # clear the retained state
        pump_until(client, info.is_published)
        client.disconnect()
        client.loop(timeout=0.05)
        watcher.close()


async def next_message(session: MqttSession, timeout_s: float = 10) -> InboundMessage:
    async def first() -> InboundMessage:
        async for msg in session.messages():
            return msg
        raise AssertionError("message stream ended")

    return await asyncio.wait_for(first(), timeout_s)


async def test_a_session_receives_what_is_published_on_its_subscriptions(
    mqtt_service: MqttService, unique_id: str
) -> None:
    params = params_of(mqtt_service)
    topic = device_topic("11230", f"L-{unique_id}", "telemetry")
    async with MqttSession(params, client_id=f"sess-{unique_id}", subscriptions=[(topic, 1)]) as session:
        await session.wait_connected(10)
        await session.publish(topic, b'{"hello":"seoul"}', qos=1)
        msg = await next_message(session)
    assert (msg.topic, msg.payload, msg.qos, msg.retain) == (topic, b'{"hello":"seoul"}', 1, False)


async def test_publish_nowait_delivers_many_in_order_and_refuses_when_not_connected(
    mqtt_service: MqttService, unique_id: str
) -> None:
    # The controller hands walk commands to the connection without awaiting each PUBACK.
    params = params_of(mqtt_service)
    topic = device_topic("11230", f"L-{unique_id}", "cmd")
    async with MqttSession(params, client_id=f"sess-{unique_id}", subscriptions=[(topic, 1)]) as session:
        with pytest.raises(ConnectionLost):
            session.publish_nowait(topic, b"too early")  # not connected yet
        await session.wait_connected(10)
        for i in range(300):  # more than paho's in-flight window of 20
            session.publish_nowait(topic, str(i).encode())
        got = [(await next_message(session)).payload for _ in range(300)]
    assert got == [str(i).encode() for i in range(300)]


async def test_a_session_reconnects_and_resubscribes_after_the_broker_restarts(
    private_mosquitto: MqttService, unique_id: str
) -> None:
    params = params_of(private_mosquitto)
    topic = device_topic("11230", f"L-{unique_id}", "event")
    async with MqttSession(
        params,
        client_id=f"sess-{unique_id}",
        subscriptions=[(topic, 1)],
        clean_session=True,  # the broker forgets the subscription: only re-subscribing brings it back
        keepalive_s=5,
        backoff_base_s=0.1,
        backoff_cap_s=0.5,
    ) as session:
        await session.wait_connected(10)
        private_mosquitto.kill()
        await asyncio.to_thread(private_mosquitto.start_again)
        for _ in range(200):
            if session.connections >= 2 and session.connected:
                break
            await asyncio.sleep(0.05)
        assert session.connections == 2
        await session.publish(topic, b"after-restart", qos=1)
        msg = await next_message(session)
    assert msg.payload == b"after-restart"


def test_a_private_mosquitto_in_tmp_path_keeps_retained_and_queued_messages_across_kill_9(
    private_mosquitto: MqttService, unique_id: str
) -> None:
    """pytest's tmp_path sits under 0700 folders: the broker's store must still be written there."""
    svc = private_mosquitto
    topic = f"test/{unique_id}/persist"
    received: queue.Queue[mqtt.MQTTMessage] = queue.Queue()

    subscribed: queue.Queue[int] = queue.Queue()

    def client(client_id: str, *, clean: bool) -> mqtt.Client:
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311
        )
        c.on_message = lambda _c, _u, m: received.put(m)
        c.on_subscribe = lambda _c, _u, mid, _r, _p: subscribed.put(mid)
        c.connect(svc.host, svc.port)
        c.loop_start()
        return c

    session_id = f"persist-{unique_id}"
    sub = client(session_id, clean=False)
    sub.subscribe(topic, qos=1)
    subscribed.get(timeout=5)
    sub.disconnect()
    sub.loop_stop()
    pub = client(f"pub-{unique_id}", clean=True)
    pub.publish(f"{topic}/retained", b"kept", qos=1, retain=True).wait_for_publish(5)
    pub.publish(topic, b"queued", qos=1).wait_for_publish(5)
    pub.disconnect()
    pub.loop_stop()
    store = svc.workdir / "mosquitto.db" if svc.workdir else None
    published_at = time.time()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # autosave_interval 1: the store follows within a second or two
        if store is not None and store.exists() and store.stat().st_mtime > published_at + 0.1:
            break
        time.sleep(0.1)
    svc.kill()
    svc.start_again()

    sub = client(session_id, clean=False)
    try:
        queued = received.get(timeout=5)
    except queue.Empty:
        queued = None
    sub.disconnect()
    sub.loop_stop()
    assert queued is not None and queued.payload == b"queued", "the persistent session's QoS 1 message"
    fresh = client(f"late-{unique_id}", clean=True)
    fresh.subscribe(f"{topic}/retained", qos=1)
    try:
        retained = received.get(timeout=5)
    except queue.Empty:
        retained = None
    fresh.disconnect()
    fresh.loop_stop()
    assert retained is not None and retained.payload == b"kept" and retained.retain


def test_a_buffered_read_client_receives_small_and_large_messages_intact_and_in_order(
    lenient_mosquitto: MqttService, unique_id: str
) -> None:
    # Ingest's paho client reads the socket 256 KB at a time and serves paho's reads from that
    # buffer: packet boundaries that fall anywhere in a read, and a message larger than a read.
    from broker._paho import BufferedReadClient

    params = params_of(lenient_mosquitto)
    topic = device_topic("11230", f"L-{unique_id}", "telemetry")
    got: queue.Queue[bytes] = queue.Queue()
    sub = paho_client(params, f"sub-{unique_id}", buffered_reads=True)
    assert isinstance(sub, BufferedReadClient)
    sub.on_message = lambda _c, _u, msg: got.put(msg.payload)
    subscribed = queue.Queue[int]()
    sub.on_subscribe = lambda *_a: subscribed.put(1)
    sub.connect(params.host, params.port)
    sub.loop_start()
    try:
        sub.subscribe(topic, 1)
        subscribed.get(timeout=10)
        big = bytes(range(256)) * 2400  # 614,400 bytes: more than two reads
        sent = [b"%d" % i for i in range(3000)] + [big] + [b"x" * (i % 300) for i in range(500)]
        pub = paho_client(params, f"pub-{unique_id}")
        pub.connect(params.host, params.port)
        pub.loop_start()
        for payload in sent:
            pub.publish(topic, payload, qos=1)
        received = [got.get(timeout=20) for _ in sent]
        # A per-topic callback still gets its topic's messages (and on_message does not).
        alarms: queue.Queue[bytes] = queue.Queue()
        alarm_topic = device_topic("11230", f"B-{unique_id}", "event")
        sub.message_callback_add(alarm_topic, lambda _c, _u, msg: alarms.put(msg.payload))
        sub.subscribe(alarm_topic, 1)
        subscribed.get(timeout=10)
        pub.publish(alarm_topic, b"alarm", qos=1)
        pub.publish(topic, b"after", qos=1)
        assert alarms.get(timeout=10) == b"alarm"
        assert got.get(timeout=10) == b"after" and got.empty()
        pub.disconnect()
        pub.loop_stop()
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert received == sent


def test_a_publish_handler_gets_every_message_in_order_and_acked_ones_are_not_sent_again(
    lenient_mosquitto: MqttService, unique_id: str
) -> None:
    # Ingest's hot path: complete QoS 0/1 PUBLISH packets are cut from the read buffer and handed
    # over as (topic, payload, qos, mid); the rest (a message longer than a read) goes through
    # paho's on_message. Both end in one ordered stream, and the mids ack the right messages.
    from broker._paho import BufferedReadClient

    params = params_of(lenient_mosquitto)
    topic = device_topic("11230", f"L-{unique_id}", "telemetry")
    got: queue.Queue[tuple[str, bytes, int, int, str]] = queue.Queue()

    def subscriber() -> BufferedReadClient:
        sub = paho_client(
            params, f"fast-{unique_id}", clean_session=False, manual_ack=True, buffered_reads=True
        )
        assert isinstance(sub, BufferedReadClient)
        sub.set_publish_handler(lambda t, p, q, m, _r: got.put((t, p, q, m, "cut")))
        sub.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload, msg.qos, msg.mid, "paho"))
        subscribed = queue.Queue[int]()
        sub.on_connect = lambda c, *_a: c.subscribe(topic, 1)
        sub.on_subscribe = lambda *_a: subscribed.put(1)
        sub.connect(params.host, params.port)
        sub.loop_start()
        subscribed.get(timeout=10)
        return sub

    sub = subscriber()
    big = bytes(range(256)) * 2400
    sent = [b"%d" % i for i in range(3000)] + [big] + [b"y" * (i % 300) for i in range(500)]
    pub = paho_client(params, f"pub-{unique_id}")
    pub.connect(params.host, params.port)
    pub.loop_start()
    try:
        for payload in sent:
            pub.publish(topic, payload, qos=1)
        received = []
        for k in range(len(sent)):  # acked as they come (a broker sends ~20 unacked at a time)
            received.append(got.get(timeout=20))
            if k < len(sent) - 10:
                sub.ack_many([received[-1][3]])
        assert [r[1] for r in received] == sent
        assert {r[0] for r in received} == {topic} and {r[2] for r in received} == {1}
        ways = {r[4] for r in received}
        assert ways == {"cut", "paho"}, ways  # the big one through paho, most cut from the buffer
        time.sleep(0.5)
        sub.disconnect()
        sub.loop_stop()
        # The same session again: only the ten never acked come back.
        sub = subscriber()
        again = [got.get(timeout=10)[1] for _ in range(10)]
        assert again == sent[-10:]
        time.sleep(0.5)
        assert got.empty()
    finally:
        pub.disconnect()
        pub.loop_stop()
        sub.disconnect()
        sub.loop_stop()


async def test_a_session_may_keep_more_qos1_messages_in_flight_than_pahos_default(
    mqtt_service: MqttService, unique_id: str
) -> None:
    # The controller's commands: with paho's window of 20, a busy loop reading PUBACKs late held
    # the rest back (bench brighten at 2,000 walkers: up to 0.9 s between controller and lamp).
    params = params_of(mqtt_service)
    topic = device_topic("11230", f"L-{unique_id}", "cmd")
    async with MqttSession(
        params, client_id=f"sess-{unique_id}", subscriptions=[(topic, 1)], max_inflight=1000
    ) as session:
        await session.wait_connected(10)
        paho = session._client._client  # type: ignore[union-attr]
        assert paho.max_inflight_messages == 1000
        for i in range(300):
            session.publish_nowait(topic, str(i).encode())
        # All 300 went out at once, none waiting in paho for a PUBACK to make room.
        assert paho._inflight_messages == 300
        got = [(await next_message(session)).payload for _ in range(300)]
    assert got == [str(i).encode() for i in range(300)]
