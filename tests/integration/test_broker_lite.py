"""The lite broker (broker.lite) over real sockets: paho, aiomqtt, the simulator's client and raw bytes."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import queue
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import ConnectionParams
from broker.lite import LiteBroker
from devkit.localservices import free_port
from firmware_sim.mqtt import Will, connect, encode_connect, encode_publish, encode_subscribe
from ingest import probe_shared_subscriptions
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


class ThreadBroker:
    """A LiteBroker on its own event loop in a thread, so blocking clients (paho, raw sockets) can use it."""

    def __init__(self, port: int | None = None, **kwargs: Any) -> None:
        self.port = port or free_port()
        self.kwargs = kwargs
        self.broker: LiteBroker | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        self.broker = LiteBroker("127.0.0.1", self.port, **self.kwargs)
        try:
            loop.run_until_complete(self.broker.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        loop.run_forever()
        loop.run_until_complete(self.broker.stop())
        loop.close()

    def __enter__(self) -> ThreadBroker:
        self._thread.start()
        assert self._started.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive()


@pytest.fixture(scope="module")
def lite() -> Iterator[ThreadBroker]:
    with ThreadBroker() as b:
        yield b


# -- clients ------------------------------------------------------------------------------------------


class Paho:
    """A paho client (API v2) that queues what it receives."""

    def __init__(
        self, port: int, client_id: str, *, clean: bool = True, keepalive: int = 60, manual_ack: bool = False
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.subscribed: queue.Queue[object] = queue.Queue()
        self.connected: queue.Queue[tuple[bool, int]] = queue.Queue()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, manual_ack=manual_ack
        )
        self.client.on_message = lambda _c, _u, m: self.messages.put(m)
        self.client.on_subscribe = lambda *a: self.subscribed.put(a)
        self.client.on_connect = lambda _c, _u, flags, rc, _p: self.connected.put(
            (bool(flags.session_present), rc.value)
        )
        self.client.connect("127.0.0.1", port, keepalive=keepalive)
        self.client.loop_start()
        self.session_present, rc = self.connected.get(timeout=5)
        assert rc == 0

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.client.subscribe(topic, qos=qos)
        self.subscribed.get(timeout=5)

    def get(self, timeout: float = 5) -> mqtt.MQTTMessage:
        return self.messages.get(timeout=timeout)

    def drain(self, quiet_s: float = 0.3) -> list[mqtt.MQTTMessage]:
        out = []
        with_timeout = quiet_s
        while True:
            try:
                out.append(self.messages.get(timeout=with_timeout))
            except queue.Empty:
                return out

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def read_packet(s: socket.socket) -> tuple[int, bytes]:
    """One MQTT packet from a blocking socket: (first byte, body); (-1, b"") when the peer closed."""

    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError
            buf += chunk
        return buf

    try:
        first = exactly(1)[0]
        length, mult = 0, 1
        while True:
            byte = exactly(1)[0]
            length += (byte & 0x7F) * mult
            mult *= 128
            if not byte & 0x80:
                break
        return first, exactly(length)
    except (EOFError, ConnectionResetError):
        return -1, b""


def raw_client(port: int, client_id: str, **kwargs: Any) -> tuple[socket.socket, bytes]:
    """A raw socket that sent CONNECT; returns it and the CONNACK body."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(encode_connect(client_id, keepalive_s=kwargs.pop("keepalive_s", 60), **kwargs))
    first, body = read_packet(s)
    assert first == 0x20, (first, body)
    return s, body


def publish(port: int, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
    """Publish with paho and wait for the broker's acknowledgement."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, payload, qos=qos, retain=retain).wait_for_publish(5)
    c.disconnect()
    c.loop_stop()


# -- pub/sub ---------------------------------------------------------------------------------------------


def test_wildcards_route_each_message_once_and_hide_dollar_topics(lite: ThreadBroker, unique_id: str) -> None:
    sub = Paho(lite.port, f"sub-{unique_id}")
    try:
        sub.subscribe(f"w{unique_id}/+/telemetry", 1)
        sub.subscribe(f"w{unique_id}/#", 0)  # overlaps the first: one delivery, at the higher QoS
        sub.subscribe("#", 0)
        sub.drain()
        publish(lite.port, f"w{unique_id}/L-1/telemetry", b"a", qos=1)
        publish(lite.port, f"w{unique_id}/L-1/state", b"b", qos=0)
        publish(lite.port, f"w{unique_id}/L-1/x/telemetry", b"c", qos=0)
        publish(lite.port, "$SYS/anything", b"d", qos=0)
        got = [(m.topic, m.payload, m.qos) for m in sub.drain(0.5) if m.topic.startswith(f"w{unique_id}")]
        assert sorted(got) == [
            (f"w{unique_id}/L-1/state", b"b", 0),
            (f"w{unique_id}/L-1/telemetry", b"a", 1),
            (f"w{unique_id}/L-1/x/telemetry", b"c", 0),
        ]
    finally:
        sub.close()


async def test_aiomqtt_round_trip_and_qos2_downgraded(lite: ThreadBroker, unique_id: str) -> None:
    topic = f"a{unique_id}/t"
    async with aiomqtt.Client("127.0.0.1", lite.port, identifier=f"aio-{unique_id}") as c:
        await c.subscribe(topic, qos=2)
        await c.publish(topic, b"two", qos=2)  # PUBREC / PUBREL / PUBCOMP, forwarded at QoS 1
        msg = await asyncio.wait_for(anext(aiter(c.messages)), 5)
        assert (msg.payload, msg.qos) == (b"two", 1)
        await c.publish(topic, b"zero", qos=0)
        msg = await asyncio.wait_for(anext(aiter(c.messages)), 5)
        assert msg.payload == b"zero"


def test_a_repeated_qos2_packet_id_is_delivered_once(lite: ThreadBroker, unique_id: str) -> None:
    topic = f"q2{unique_id}/t"
    sub = Paho(lite.port, f"sub-{unique_id}")
    s, _ = raw_client(lite.port, f"raw-{unique_id}")
    try:
        sub.subscribe(topic, 1)
        body = struct.pack("!H", len(topic)) + topic.encode() + b"\x00\x07" + b"x"
        packet = bytes([0x34, len(body)]) + body
        s.sendall(packet)
        assert read_packet(s) == (0x50, b"\x00\x07")  # PUBREC
        s.sendall(bytes([0x3C, len(body)]) + body)  # DUP resend before PUBREL
        assert read_packet(s) == (0x50, b"\x00\x07")
        s.sendall(b"\x62\x02\x00\x07")
        assert read_packet(s) == (0x70, b"\x00\x07")  # PUBCOMP
        assert [m.payload for m in sub.drain()] == [b"x"]
    finally:
        s.close()
        sub.close()


# -- retained --------------------------------------------------------------------------------------------


def test_retained_messages_survive_a_restart_with_a_data_dir(tmp_path: Path, unique_id: str) -> None:
    port = free_port()
    topic = f"sl/v1/11230/L-{unique_id}/state"
    with ThreadBroker(port, data_dir=tmp_path):
        publish(port, topic, b'{"state":"offline"}', qos=1, retain=True)
        publish(port, topic + "x", b"gone", qos=0, retain=True)
        publish(port, topic + "x", b"", qos=0, retain=True)  # an empty payload deletes it
        sub = Paho(port, f"sub-{unique_id}")
        sub.subscribe(f"sl/v1/11230/L-{unique_id}/+", 1)
        msgs = sub.drain()
        assert [(m.topic, m.payload, m.retain) for m in msgs] == [(topic, b'{"state":"offline"}', True)]
        publish(port, topic, b"live", qos=1)
        live = sub.get()
        assert (live.payload, live.retain) == (b"live", False)
        sub.close()
    assert (tmp_path / "retained.bin").exists()
    with ThreadBroker(port, data_dir=tmp_path):
        sub = Paho(port, f"sub2-{unique_id}")
        sub.subscribe(topic, 1)
        msg = sub.get()
        assert (msg.topic, msg.payload, msg.retain) == (topic, b'{"state":"offline"}', True)
        sub.subscribe(topic + "x", 1)
        assert sub.drain() == []
        sub.close()


# -- wills -----------------------------------------------------------------------------------------------


async def test_will_fires_on_socket_close_and_keepalive_expiry_but_not_on_disconnect(
    lite: ThreadBroker, unique_id: str
) -> None:
    base = f"will{unique_id}"
    got: list[tuple[str, bytes]] = []
    watcher = await connect(
        "127.0.0.1", lite.port, f"watch-{unique_id}", on_message=lambda t, p: got.append((t, p))
    )
    await watcher.subscribe(f"{base}/+", 1)

    def will(name: str) -> Will:
        return Will(f"{base}/{name}", b"offline", 1, True)

    dropped = await connect("127.0.0.1", lite.port, f"d-{unique_id}", will=will("dropped"))
    polite = await connect("127.0.0.1", lite.port, f"p-{unique_id}", will=will("polite"))
    silent, _ = raw_client(lite.port, f"s-{unique_id}", will=will("silent"), keepalive_s=1)  # never pings
    t0 = time.monotonic()
    dropped.abort()
    polite.disconnect()
    for _ in range(60):
        if len(got) >= 2:
            break
        await asyncio.sleep(0.1)
    assert sorted(got) == [(f"{base}/dropped", b"offline"), (f"{base}/silent", b"offline")]
    assert 1.4 < time.monotonic() - t0 < 4.0  # the silent one: 1.5 x keepalive (swept every 0.5 s)
    silent.close()
    watcher.disconnect()


def test_takeover_closes_the_first_connection_and_publishes_its_will(
    lite: ThreadBroker, unique_id: str
) -> None:
    sub = Paho(lite.port, f"sub-{unique_id}")
    sub.subscribe(f"to{unique_id}/will", 1)
    first, _ = raw_client(lite.port, f"dev-{unique_id}", will=Will(f"to{unique_id}/will", b"offline"))
    second, connack = raw_client(lite.port, f"dev-{unique_id}")
    try:
        assert connack == b"\x00\x00"
        assert read_packet(first) == (-1, b"")
        assert sub.get().payload == b"offline"
        second.sendall(b"\xc0\x00")
        assert read_packet(second) == (0xD0, b"")
    finally:
        first.close()
        second.close()
        sub.close()


# -- persistent sessions ---------------------------------------------------------------------------


def test_a_persistent_session_gets_what_was_published_while_it_was_away(
    lite: ThreadBroker, unique_id: str
) -> None:
    topic = f"ps{unique_id}/sl/v1/11230/L-1/birth"
    c = Paho(lite.port, f"ingest-{unique_id}", clean=False)
    assert not c.session_present
    c.subscribe(f"ps{unique_id}/sl/v1/+/+/birth", 1)
    c.close()
    for i in range(5):
        publish(lite.port, topic, str(i).encode(), qos=1)
    c = Paho(lite.port, f"ingest-{unique_id}", clean=False)
    try:
        assert c.session_present
        assert [m.payload for m in c.drain()] == [b"0", b"1", b"2", b"3", b"4"]
    finally:
        c.close()


def test_unacknowledged_qos1_is_redelivered_with_dup_after_reconnect(
    lite: ThreadBroker, unique_id: str
) -> None:
    topic = f"re{unique_id}/t"
    s, connack = raw_client(lite.port, f"r-{unique_id}", clean_session=False)
    assert connack == b"\x00\x00"
    s.sendall(encode_subscribe(1, topic, 1))
    assert read_packet(s) == (0x90, b"\x00\x01\x01")
    publish(lite.port, topic, b"hello", qos=1)
    first, body = read_packet(s)
    assert first == 0x32
    s.close()  # no PUBACK
    s, connack = raw_client(lite.port, f"r-{unique_id}", clean_session=False)
    try:
        assert connack == b"\x01\x00"  # session present
        again, body2 = read_packet(s)
        assert again == 0x3A  # PUBLISH, QoS 1, DUP
        assert body2 == body  # same packet id and payload
        s.sendall(b"\x40\x02" + body2[-7:-5])  # PUBACK that id
        s.sendall(b"\xe0\x00")
    finally:
        s.close()
    s, connack = raw_client(lite.port, f"r-{unique_id}", clean_session=True)  # clean: drops the session
    s.close()


# -- shared subscriptions --------------------------------------------------------------------------


def test_a_shared_subscription_gives_each_message_to_exactly_one_member(
    lite: ThreadBroker, unique_id: str
) -> None:
    a = Paho(lite.port, f"a-{unique_id}", clean=False)
    b = Paho(lite.port, f"b-{unique_id}", clean=False)
    solo = Paho(lite.port, f"solo-{unique_id}")
    try:
        for c in (a, b):
            c.subscribe(f"$share/ingest/sh{unique_id}/+/+/birth", 1)
        solo.subscribe(f"sh{unique_id}/+/+/birth", 1)  # a plain subscriber still gets every message
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique_id}")
        pub.connect("127.0.0.1", lite.port)
        pub.loop_start()
        infos = [pub.publish(f"sh{unique_id}/11230/L-{i}/birth", str(i).encode(), qos=1) for i in range(100)]
        for info in infos:
            info.wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        got_a = [m.payload for m in a.drain(0.5)]
        got_b = [m.payload for m in b.drain(0.1)]
        assert got_a and got_b
        assert sorted(got_a + got_b, key=int) == [str(i).encode() for i in range(100)]
        assert len(solo.drain(0.1)) == 100
    finally:
        for c in (a, b, solo):
            c.close()


def test_shared_messages_wait_for_an_offline_persistent_member(lite: ThreadBroker, unique_id: str) -> None:
    m = Paho(lite.port, f"m-{unique_id}", clean=False)
    m.subscribe(f"$share/g/off{unique_id}/#", 1)
    m.close()
    for i in range(3):
        publish(lite.port, f"off{unique_id}/t", str(i).encode(), qos=1)
    m = Paho(lite.port, f"m-{unique_id}", clean=False)
    try:
        assert [x.payload for x in m.drain()] == [b"0", b"1", b"2"]
    finally:
        m.close()


def test_ingest_probe_finds_shared_subscriptions(lite: ThreadBroker) -> None:
    ok, why = probe_shared_subscriptions(ConnectionParams(host="127.0.0.1", port=lite.port))
    assert ok, why


# -- robustness -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x00",  # reserved packet type
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x10\xff\xff\xff\xff\x7f",  # remaining length of five bytes
        b"\x30\x05\x00\x01a",  # PUBLISH before CONNECT
        b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x09ab",  # client id runs past the packet
    ],
)
def test_garbage_closes_only_that_connection(lite: ThreadBroker, unique_id: str, garbage: bytes) -> None:
    ok, _ = raw_client(lite.port, f"ok-{unique_id}")
    bad = socket.create_connection(("127.0.0.1", lite.port), timeout=5)
    try:
        bad.sendall(garbage)
        assert read_packet(bad) == (-1, b"")
        ok.sendall(b"\xc0\x00")
        assert read_packet(ok) == (0xD0, b"")
    finally:
        ok.close()
        bad.close()


def test_connect_return_codes_and_packet_size_limit(unique_id: str) -> None:
    with ThreadBroker(max_packet_size=1024) as b:
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)
        s.sendall(b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x00\x00")  # protocol level 5
        assert read_packet(s) == (0x20, b"\x00\x01")
        assert read_packet(s) == (-1, b"")
        s.close()
        s, connack = raw_client(b.port, "", clean_session=False)  # empty id, persistent: rejected
        assert connack == b"\x00\x02"
        s.close()
        s = socket.create_connection(("127.0.0.1", b.port), timeout=5)  # MQTT 3.1 (MQIsdp, level 3)
        s.sendall(b"\x10\x10\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x02v3")
        assert read_packet(s) == (0x20, b"\x00\x00")
        s.close()
        s, _ = raw_client(b.port, f"big-{unique_id}")
        s.sendall(encode_publish("t", b"x" * 2000))
        assert read_packet(s) == (-1, b"")
        s.close()


async def test_two_thousand_devices_connect_at_once(lite: ThreadBroker, unique_id: str) -> None:
    async def one(i: int) -> Any:
        c = await connect(
            "127.0.0.1",
            lite.port,
            f"L-{unique_id}-{i}",
            will=Will(f"m{unique_id}/L-{i}/state", b"offline", 1, True),
        )
        await c.subscribe(f"m{unique_id}/L-{i}/cmd", 1)
        return c

    t0 = time.monotonic()
    conns = await asyncio.gather(*(one(i) for i in range(2000)))
    elapsed = time.monotonic() - t0
    for c in conns:
        c.disconnect()
    assert elapsed < 10, f"2,000 connections took {elapsed:.1f} s"


# -- slow subscribers, limits, descriptors -----------------------------------------------------------


def stuck_subscriber(port: int, client_id: str, topic: str, qos: int) -> socket.socket:
    """Subscribed, then never reads its socket (a hung process); a small receive buffer fills fast."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(encode_connect(client_id, keepalive_s=600))
    s.settimeout(5)
    assert read_packet(s)[0] == 0x20
    s.sendall(encode_subscribe(1, topic, qos))
    assert read_packet(s) == (0x90, bytes([0, 1, qos]))
    return s


def wait_until(cond: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    """The fields of the structured events ``name`` captured (``runtime.logs``: a record's msg)."""
    return [dict(r.msg) for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == name]


def test_past_its_queue_a_stuck_subscriber_loses_the_newest_qos1_messages_counted_and_logged_once(
    unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"dq{unique_id}/t"
    cid = f"stuck-{unique_id}"
    with (
        caplog.at_level(logging.WARNING, logger="broker.lite"),
        ThreadBroker(max_inflight=10, max_queued=100) as b,
    ):
        assert b.broker is not None
        s = stuck_subscriber(b.port, cid, topic, 1)
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique_id}")
        pub.connect("127.0.0.1", b.port)
        pub.loop_start()
        infos = [pub.publish(topic, str(i).encode(), qos=1) for i in range(500)]
        for info in infos:
            info.wait_for_publish(10)  # every publish acknowledged: the publisher is not held back
        pub.disconnect()
        pub.loop_stop()
        assert b.broker.dropped == 500 - 10 - 100
        wait_until(lambda: bool(events(caplog, "messages_dropped")))
        # The subscriber wakes up: it gets the ten in flight and the hundred queued, the oldest ones,
        # as from Mosquitto (max_queued_messages drops what arrives at a full queue).
        got: list[int] = []
        s.settimeout(5)
        while len(got) < 110:
            first, body = read_packet(s)
            assert first & 0xF6 == 0x32, first
            got.append(int(body[2 + len(topic) + 2 :]))
            s.sendall(b"\x40\x02" + body[2 + len(topic) : 2 + len(topic) + 2])
        assert got == list(range(110))
        s.close()
    lines = events(caplog, "messages_dropped")
    assert 1 <= len(lines) <= 2 and all(e["client_id"] == cid for e in lines), lines  # the rest at stop
    assert sum(e["count"] for e in lines) == 390, lines
    assert all(e["reason"] and e["session_dropped"] > 0 for e in lines), lines


def test_qos0_for_a_subscriber_that_does_not_read_is_dropped_past_a_bounded_backlog(unique_id: str) -> None:
    topic = f"d0{unique_id}/t"
    with ThreadBroker(high_water=64 << 10, drop_qos0_above=256 << 10) as b:
        assert b.broker is not None
        stuck = stuck_subscriber(b.port, f"stuck-{unique_id}", topic, 0)
        pub, _ = raw_client(b.port, f"pub-{unique_id}")
        pub.settimeout(5)
        packet = encode_publish(topic, b"z" * 8000)
        for _ in range(2000):  # 16 MB
            pub.sendall(packet)
        pub.sendall(b"\xc0\x00")
        assert read_packet(pub) == (0xD0, b"")  # the publisher is answered at once
        session = b.broker._sessions[f"stuck-{unique_id}"]
        assert session.conn is not None
        assert session.conn.backlog_bytes() <= (256 << 10) + len(packet)
        assert b.broker.dropped > 1000
        pub.close()
        stuck.close()


def test_oversized_packets_and_payloads_are_refused_with_a_warning_naming_the_client(
    unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="broker.lite"), ThreadBroker() as b:
        assert b.broker is not None
        s, _ = raw_client(b.port, f"fat-{unique_id}")
        for pid in (1, 2, 3):
            s.sendall(encode_publish("t", b"x" * 16_385, qos=1, packet_id=pid))
            assert read_packet(s) == (0x40, bytes([0, pid]))
        s.sendall(encode_publish("t", b"x" * 20_000))
        assert read_packet(s) == (-1, b"")
        s.close()
        assert b.broker.refused_messages == 3
        kinds = ("message_over_size_limit", "packet_too_large")
        wait_until(
            lambda: (
                len([e for k in kinds for e in events(caplog, k) if e["client_id"] == f"fat-{unique_id}"])
                == 2
            )
        )
    over_limit = events(caplog, "message_over_size_limit")
    too_large = events(caplog, "packet_too_large")
    assert 1 <= len(over_limit) <= 2 and all(e["limit"] == 16384 for e in over_limit), over_limit
    assert sum(e["count"] for e in over_limit) == 3 and over_limit[0]["bytes"] == 16_385
    assert (
        len(too_large) == 1
        and too_large[0]["limit"] == 17408
        and too_large[0]["client_id"] == f"fat-{unique_id}"
    )


def test_many_clients_misbehaving_at_once_cost_at_most_twenty_named_lines_and_a_sum(
    unique_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    # One attacker, many client ids: the log stays small whatever the number of clients.
    with caplog.at_level(logging.WARNING, logger="broker.lite"), ThreadBroker() as b:
        for i in range(60):
            s, _ = raw_client(b.port, f"big{i}-{unique_id}")
            s.sendall(encode_publish("t", b"x" * 20_000))
            assert read_packet(s) == (-1, b"")
            s.close()
        time.sleep(1.2)  # two housekeeping rounds
    lines = events(caplog, "packet_too_large")
    named = [e for e in lines if e["client_id"].endswith(f"-{unique_id}")]
    summed = [e for e in lines if e["client_id"] == "*"]
    assert len(named) == 20, lines
    assert sum(e["clients"] for e in summed) == 40, lines


# The broker in a process of its own with few file descriptors, logging to stderr.
FD_LIMIT = 64
LOW_FD_BROKER = """
import asyncio, json, sys
from broker.lite import LiteBroker
from runtime import logs
logs.configure("INFO", "json")
async def main() -> None:
    broker = LiteBroker("127.0.0.1", int(sys.argv[1]), **json.loads(sys.argv[2]))
    await broker.start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def _low_fd_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"max_connections": 100_000}],
    ids=["max_connections from RLIMIT_NOFILE", "out of file descriptors"],
)
def test_clients_beyond_the_descriptor_limit_are_closed_at_once_with_one_warning_per_burst(
    kwargs: dict[str, int], tmp_path: Path
) -> None:
    port = free_port()
    stderr_path = tmp_path / "broker.stderr"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", LOW_FD_BROKER, str(port), json.dumps(kwargs)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=stderr,
            preexec_fn=_low_fd_limit,
        )
    socks: list[socket.socket] = []
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        for i in range(150):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(encode_connect(f"fd-{i}", keepalive_s=60))
            socks.append(s)
        deadline = time.monotonic() + 5
        answers: list[int] = []
        for s in socks:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                answers.append(read_packet(s)[0])
            except TimeoutError:
                answers.append(0)  # neither a CONNACK nor a close: left waiting
        assert answers.count(0x20) + answers.count(-1) == 150, answers
        assert answers.count(0x20) >= 16 and answers.count(-1) >= 50
        for s in socks:
            s.close()
        socks.clear()
        time.sleep(0.5)
        s, connack = raw_client(port, "after-the-burst")  # served again once descriptors are free
        assert connack == b"\x00\x00"
        s.close()
        time.sleep(1.0)  # the warning of the burst comes from the 0.5 s housekeeping
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    log_text = stderr_path.read_text()
    assert "Traceback" not in log_text
    lines = [json.loads(line) for line in log_text.splitlines()]  # one JSON object per line
    refusals = [e for e in lines if e["event"] == "connections_refused"]
    assert 1 <= len(refusals) <= 2, log_text[-3000:]
    assert refusals[0]["level"] == "warning" and refusals[0]["logger"] == "broker.lite", refusals
    assert refusals[0]["reason"] in ("max_connections", "EMFILE"), refusals
    # Refusals after the burst's line wait for the next interval (10 s), past this test's end.
    assert 0 < sum(e["count"] for e in refusals) <= answers.count(-1)


def test_the_embedded_broker_command_takes_other_packet_limits(unique_id: str) -> None:
    from devkit.localservices import tcp_reachable, terminate

    port = free_port()
    argv = [sys.executable, "-m", "broker.embedded", "--port", str(port), "--max-packet-size", "1024"]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not tcp_reachable("127.0.0.1", port, 0.2):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        s, _ = raw_client(port, f"small-{unique_id}")
        s.sendall(encode_publish("t", b"x" * 1000, qos=1, packet_id=1))
        assert read_packet(s) == (0x40, b"\x00\x01")
        s.sendall(encode_publish("t", b"x" * 2000, qos=1, packet_id=2))
        assert read_packet(s) == (-1, b"")
        s.close()
    finally:
        terminate(proc)


# -- by-hand benchmark: lite vs mosquitto in the same run --------------------------------------------
# .venv/bin/python -m tests.integration.test_broker_lite [N]   (N devices, default 7000)
# Prints one JSON line per broker: connect storm (N sim clients, will + SUBSCRIBE each), a 10 s hold
# at ~900 msg/s QoS 1 from those devices, and fan-in of fastpub -> baseline at QoS 0 and QoS 1, with
# the broker's CPU seconds from /proc. Figures are recorded in docs/architecture.md.


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _storm_and_hold(port: int, n: int, pid: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(1000)

    async def one(i: int) -> Any:
        async with sem:
            c = await connect(
                "127.0.0.1",
                port,
                f"L-bench-{i:05d}",
                will=Will(f"sl/v1/11230/L-bench-{i:05d}/state", b"offline"),
            )
            await c.subscribe(f"sl/v1/11230/L-bench-{i:05d}/cmd", 1)
            return c

    t0 = time.perf_counter()
    conns = await asyncio.gather(*(one(i) for i in range(n)))
    connect_s = time.perf_counter() - t0
    got = [0]

    def count(_t: str, _p: bytes) -> None:
        got[0] += 1

    watcher = await connect("127.0.0.1", port, "bench-watch", on_message=count)
    await watcher.subscribe("sl/v1/+/+/telemetry", 1)
    cpu0, t1, sent = _cpu_s(pid), time.perf_counter(), 0
    for tick in range(10):
        for i, c in enumerate(conns):
            if i % 7 == tick % 7:
                c.publish(f"sl/v1/11230/L-bench-{i:05d}/telemetry", b'{"lux":12}', qos=1)
                sent += 1
        await asyncio.sleep(1)
    await asyncio.sleep(1)
    hold_s = time.perf_counter() - t1
    cpu = _cpu_s(pid) - cpu0
    for c in [watcher, *conns]:
        c.disconnect()
    return {
        "connect": {"devices": n, "seconds": round(connect_s, 2), "per_s": round(n / connect_s)},
        "hold": {
            "sent": sent,
            "received": got[0],
            "msg_s": round(sent / hold_s),
            "cpu_pct": round(100 * cpu / hold_s),
        },
    }


def _fan_in(port: int, count: int, qos: int, pid: int) -> dict[str, Any]:
    py = sys.executable
    base = subprocess.Popen(
        [py, "-m", "devkit.bench.baseline", "--port", str(port), "--count", str(count),
         "--qos", str(qos), "--idle-s", "5"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert base.stdout is not None and base.stdout.readline().strip() == "ready"
    cpu0 = _cpu_s(pid)
    pub = subprocess.run(
        [py, "-m", "devkit.bench.fastpub", "--port", str(port), "--count", str(count), "--lamps", "500",
         "--qos", str(qos)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    sub = json.loads(base.communicate(timeout=120)[0].strip().splitlines()[-1])
    cpu = _cpu_s(pid) - cpu0
    return {
        "publisher_s": json.loads(pub.stdout.strip().splitlines()[-1])["seconds"],
        "received": sub.get("received"),
        "subscriber_msg_s": sub.get("rate_msgs_s"),
        "broker_cpu_us_per_msg": round(cpu / count * 1e6, 1),
    }


def _bench(n: int) -> None:
    import tempfile

    from devkit.localservices import start_mosquitto, tcp_reachable, terminate

    for kind in ("lite", "mosquitto"):
        port = free_port()
        stop: Callable[[], object]
        if kind == "lite":
            proc = subprocess.Popen([sys.executable, "-m", "broker.embedded", "--port", str(port)])
            while not tcp_reachable("127.0.0.1", port, 0.2):
                time.sleep(0.05)
            pid, stop = proc.pid, functools.partial(terminate, proc)
        else:
            svc = start_mosquitto(Path(tempfile.mkdtemp()) / "mosquitto", port=port)
            assert svc.proc is not None
            pid, stop = svc.proc.pid, svc.stop
        try:
            result = asyncio.run(_storm_and_hold(port, n, pid))
            time.sleep(1)
            result["fan_in_qos0"] = _fan_in(port, 200_000, 0, pid)
            result["fan_in_qos1"] = _fan_in(port, 100_000, 1, pid)
        finally:
            stop()
        print(kind, json.dumps(result), flush=True)


if __name__ == "__main__":
    _bench(int(sys.argv[1]) if len(sys.argv) > 1 else 7000)
