"""What the services rely on from an MQTT 3.1.1 broker, checked on the embedded broker and Mosquitto alike.

Each scenario runs twice: on the lite broker (``broker.lite``, in this process) and on a private
Mosquitto started as the other tests start it (``start_mosquitto``) with the packet limits of the
deployed configuration (``deploy/mosquitto/mosquitto.conf``). A scenario that passes on one and not
the other is a difference the services would meet when moved from the demo to production.
The scenarios follow MQTT 3.1.1 (OASIS standard) behaviour: retained messages, wills, overlapping
subscriptions, redelivery on reconnect, zero-length client ids, keepalive, ``$`` topics,
unsubscribe, offline queueing; and the limits: packet and message sizes, a subscriber that stops
reading, a publisher that dies while one does.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.lite import LiteBroker
from devkit.localservices import start_mosquitto
from firmware_sim.mqtt import Will, encode_connect, encode_publish, encode_subscribe
from tests.conftest import ROOT, _have_mosquitto, skip_unless
from tests.integration.test_broker_lite import Paho, ThreadBroker, publish, raw_client, read_packet

pytestmark = pytest.mark.integration

DEPLOYED_CONF = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
# How soon a client silent past 1.5 x a keepalive of 1 or 2 s is cut and its will published: lite
# sweeps every 0.5 s; Mosquitto 2.0.11 sweeps more coarsely (4 to 8 s measured here for 2 s).
KEEPALIVE_2S_CUT_WITHIN_S = {"lite": 4.5, "mosquitto": 12.0}


DEPLOYED_KEYS = (
    "max_packet_size",
    "message_size_limit",
    "max_queued_messages",
    "max_queued_bytes",
    "queue_qos0_messages",
    "max_inflight_messages",
)


def deployed_settings() -> dict[str, str]:
    """The packet and queue settings of the deployed mosquitto.conf."""
    found = {}
    for line in DEPLOYED_CONF.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key in DEPLOYED_KEYS:
            found[key] = value.strip()
    assert set(found) == set(DEPLOYED_KEYS), found
    return found


def deployed_limits() -> dict[str, int]:
    """``max_packet_size`` and ``message_size_limit`` as the deployed mosquitto.conf sets them."""
    settings = deployed_settings()
    return {k: int(settings[k]) for k in ("max_packet_size", "message_size_limit")}


@dataclass
class Broker:
    kind: str
    port: int
    lite: LiteBroker | None  # the in-process lite broker, for its counters


@pytest.fixture(scope="module", params=["lite", "mosquitto"])
def broker(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The embedded broker with its defaults, or a private Mosquitto with the deployed limits."""
    if request.param == "lite":
        with ThreadBroker() as b:
            assert b.broker is not None
            yield Broker("lite", b.port, b.broker)
        return
    skip_unless(_have_mosquitto(), "mosquitto")
    # After start_mosquitto's own lines: Mosquitto keeps the last value of a repeated option.
    deployed = "".join(f"{k} {v}\n" for k, v in deployed_settings().items())
    svc = start_mosquitto(tmp_path_factory.mktemp("mosquitto") / "mosquitto", extra_config=deployed)
    try:
        yield Broker("mosquitto", svc.port, None)
    finally:
        svc.stop()


# -- raw client helpers --------------------------------------------------------------------------------


@dataclass
class Pub:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int


def parse_publish(first: int, body: bytes) -> Pub:
    assert first >> 4 == 3, f"expected PUBLISH, got {first:#04x}"
    qos = (first >> 1) & 3
    n = struct.unpack("!H", body[:2])[0]
    at = 2 + n
    pid = 0
    if qos:
        pid = struct.unpack("!H", body[at : at + 2])[0]
        at += 2
    return Pub(body[2 : 2 + n].decode(), body[at:], qos, bool(first & 1), bool(first & 8), pid)


def next_publish(s: socket.socket, timeout_s: float = 5) -> Pub:
    s.settimeout(timeout_s)
    first, body = read_packet(s)
    return parse_publish(first, body)


def nothing_arrives(s: socket.socket, wait_s: float = 0.5) -> bool:
    s.settimeout(wait_s)
    try:
        return not s.recv(1, socket.MSG_PEEK)  # b"" would mean closed: that is not "nothing"
    except TimeoutError:
        return True


def subscribe(s: socket.socket, topic: str, qos: int, packet_id: int = 1) -> int:
    """SUBSCRIBE on a raw socket; returns the granted QoS from the SUBACK."""
    s.sendall(encode_subscribe(packet_id, topic, qos))
    s.settimeout(5)
    first, body = read_packet(s)
    assert first == 0x90 and body[:2] == struct.pack("!H", packet_id), (first, body)
    return body[2]


def watcher(port: int, topic: str, client_id: str) -> Paho:
    w = Paho(port, client_id)
    w.subscribe(topic, 1)
    return w


# -- retained messages --------------------------------------------------------------------------------


def test_a_retained_message_reaches_each_new_subscriber_flagged_and_an_empty_one_clears_it(
    broker: Broker, unique_id: str
) -> None:
    topic = f"r{unique_id}/L-1/state"
    publish(broker.port, topic, b"online", qos=1, retain=True)
    for n in range(2):
        s, _ = raw_client(broker.port, f"rs{n}-{unique_id}")
        assert subscribe(s, f"r{unique_id}/+/state", 1) == 1
        got = next_publish(s)
        assert (got.topic, got.payload, got.retain, got.qos) == (topic, b"online", True, 1)
        s.close()
    live, _ = raw_client(broker.port, f"rl-{unique_id}")
    subscribe(live, topic, 1)
    next_publish(live)  # the retained one
    publish(broker.port, topic, b"offline", qos=1, retain=True)
    got = next_publish(live)
    assert (got.payload, got.retain) == (b"offline", False)  # a live message is not flagged retained
    publish(broker.port, topic, b"", qos=1, retain=True)  # an empty retained payload deletes it
    assert next_publish(live).payload == b""
    live.close()
    late, _ = raw_client(broker.port, f"rz-{unique_id}")
    subscribe(late, topic, 1)
    assert nothing_arrives(late)
    late.close()


def test_a_retained_message_comes_at_the_lower_of_its_qos_and_the_granted_qos(
    broker: Broker, unique_id: str
) -> None:
    topic = f"rq{unique_id}/t"
    publish(broker.port, topic, b"v", qos=1, retain=True)
    s, _ = raw_client(broker.port, f"rq-{unique_id}")
    assert subscribe(s, topic, 0) == 0
    assert next_publish(s).qos == 0
    s.close()
    publish(broker.port, topic, b"", qos=1, retain=True)


def test_a_new_shared_subscription_gets_the_retained_messages(broker: Broker, unique_id: str) -> None:
    # A fresh ingest instance subscribes with $share and learns every lamp's state this way
    # (Mosquitto 2.0.11 sends them; checked with mosquitto_sub on $share/g/...).
    topics = [f"sr{unique_id}/11230/L-{i}/state" for i in range(3)]
    for t in topics:
        publish(broker.port, t, b'{"state":"offline","bdseq":1}', qos=1, retain=True)
    s, _ = raw_client(broker.port, f"sr-{unique_id}")
    assert subscribe(s, f"$share/ingest/sr{unique_id}/+/+/state", 1) == 1
    got = sorted(next_publish(s).topic for _ in topics)
    assert got == sorted(topics)
    s.close()
    for t in topics:
        publish(broker.port, t, b"", qos=1, retain=True)


# -- wills and keepalive ------------------------------------------------------------------------------


def test_the_will_is_published_when_the_connection_drops_and_not_after_disconnect(
    broker: Broker, unique_id: str
) -> None:
    w = watcher(broker.port, f"w{unique_id}/+", f"ww-{unique_id}")
    try:
        dropped, _ = raw_client(broker.port, f"wd-{unique_id}", will=Will(f"w{unique_id}/dropped", b"off", 1))
        polite, _ = raw_client(broker.port, f"wp-{unique_id}", will=Will(f"w{unique_id}/polite", b"off", 1))
        polite.sendall(b"\xe0\x00")  # DISCONNECT: the will is discarded
        polite.close()
        dropped.close()  # no DISCONNECT
        msg = w.get()
        assert (msg.topic, msg.payload) == (f"w{unique_id}/dropped", b"off")
        assert w.drain(0.5) == []
    finally:
        w.close()


def test_a_client_silent_past_one_and_a_half_keepalives_is_cut_and_its_will_published(
    broker: Broker, unique_id: str
) -> None:
    w = watcher(broker.port, f"k{unique_id}/will", f"kw-{unique_id}")
    try:
        pinger, _ = raw_client(broker.port, f"kp-{unique_id}", keepalive_s=1)
        silent, _ = raw_client(
            broker.port, f"ks-{unique_id}", keepalive_s=1, will=Will(f"k{unique_id}/will", b"gone", 1)
        )
        t0 = time.monotonic()
        for _ in range(5):  # a client that pings stays connected
            pinger.sendall(b"\xc0\x00")
            pinger.settimeout(5)
            assert read_packet(pinger) == (0xD0, b"")
            time.sleep(0.5)
        assert w.get(timeout=15).payload == b"gone"
        assert 1.4 < time.monotonic() - t0 < KEEPALIVE_2S_CUT_WITHIN_S[broker.kind]
        silent.settimeout(5)
        assert read_packet(silent) == (-1, b"")  # the broker closed it
        pinger.close()
        silent.close()
    finally:
        w.close()


# -- subscriptions ------------------------------------------------------------------------------------


def test_overlapping_subscriptions_deliver_a_message_once_at_the_highest_granted_qos(
    broker: Broker, unique_id: str
) -> None:
    s, _ = raw_client(broker.port, f"ov-{unique_id}")
    assert subscribe(s, f"ov{unique_id}/#", 0, 1) == 0
    assert subscribe(s, f"ov{unique_id}/+/telemetry", 1, 2) == 1
    publish(broker.port, f"ov{unique_id}/L-1/telemetry", b"t", qos=1)
    got = next_publish(s)
    assert (got.payload, got.qos) == (b"t", 1)
    s.sendall(b"\x40\x02" + struct.pack("!H", got.packet_id))
    assert nothing_arrives(s)
    s.close()


def test_wildcards_at_the_first_level_do_not_match_dollar_topics(broker: Broker, unique_id: str) -> None:
    s, _ = raw_client(broker.port, f"dl-{unique_id}")
    subscribe(s, f"+/d{unique_id}", 0, 2)
    subscribe(s, f"$d{unique_id}/#", 0, 3)
    subscribe(s, "#", 0, 1)  # last: the retained messages of other tests follow its SUBACK
    deadline = time.monotonic() + 3
    while not nothing_arrives(s, 0.3) and time.monotonic() < deadline:  # other tests' retained messages
        next_publish(s)
    publish(broker.port, f"$d{unique_id}/x", b"dollar", qos=0)
    publish(broker.port, f"$x/d{unique_id}", b"dollar-plus", qos=0)
    got = next_publish(s)
    assert (got.topic, got.payload) == (f"$d{unique_id}/x", b"dollar")  # only by its explicit filter
    deadline = time.monotonic() + 1
    while time.monotonic() < deadline and not nothing_arrives(s, 0.3):
        assert next_publish(s).payload != b"dollar-plus"
    s.close()


def test_after_unsubscribe_nothing_more_arrives_and_an_unknown_filter_is_acknowledged(
    broker: Broker, unique_id: str
) -> None:
    topic = f"un{unique_id}/t"
    s, _ = raw_client(broker.port, f"un-{unique_id}")
    subscribe(s, topic, 1)
    publish(broker.port, topic, b"before", qos=0)
    assert next_publish(s).payload == b"before"
    for pid, f in ((7, topic), (8, f"never{unique_id}/+")):
        body = struct.pack("!H", pid) + struct.pack("!H", len(f)) + f.encode()
        s.sendall(bytes([0xA2, len(body)]) + body)
        s.settimeout(5)
        assert read_packet(s) == (0xB0, struct.pack("!H", pid))
    publish(broker.port, topic, b"after", qos=1)
    assert nothing_arrives(s)
    s.close()


# -- sessions -----------------------------------------------------------------------------------------


def test_unacknowledged_qos1_is_resent_with_dup_when_the_persistent_session_reconnects(
    broker: Broker, unique_id: str
) -> None:
    topic = f"rd{unique_id}/t"
    cid = f"rd-{unique_id}"
    s, connack = raw_client(broker.port, cid, clean_session=False)
    assert connack == b"\x00\x00"
    subscribe(s, topic, 1)
    publish(broker.port, topic, b"hello", qos=1)
    first = next_publish(s)
    assert (first.payload, first.dup) == (b"hello", False)
    s.close()  # no PUBACK
    s, connack = raw_client(broker.port, cid, clean_session=False)
    assert connack == b"\x01\x00"  # session present
    again = next_publish(s)
    assert (again.payload, again.dup, again.packet_id) == (b"hello", True, first.packet_id)
    s.sendall(b"\x40\x02" + struct.pack("!H", again.packet_id))
    assert nothing_arrives(s)
    s.sendall(b"\xe0\x00")
    s.close()
    s, _ = raw_client(broker.port, cid, clean_session=True)  # a clean session ends the stored one
    s.close()


def test_a_persistent_session_gets_what_was_sent_while_it_was_offline_qos0_included_in_order(
    broker: Broker, unique_id: str
) -> None:
    # queue_qos0_messages true (deployed) and lite's queue_qos0: ingest's QoS 0 telemetry waits
    # for it through a restart, within the session's queue bound.
    topic = f"oq{unique_id}/t"
    cid = f"oq-{unique_id}"
    s, _ = raw_client(broker.port, cid, clean_session=False)
    subscribe(s, topic, 1)
    s.sendall(b"\xe0\x00")
    s.close()
    publish(broker.port, topic, b"1", qos=1)
    publish(broker.port, topic, b"zero", qos=0)
    publish(broker.port, topic, b"2", qos=1)
    publish(broker.port, topic, b"3", qos=1)
    s, connack = raw_client(broker.port, cid, clean_session=False)
    assert connack == b"\x01\x00"
    got = []
    for _ in range(4):
        p = next_publish(s)
        got.append((p.payload, p.qos))
        if p.qos:
            s.sendall(b"\x40\x02" + struct.pack("!H", p.packet_id))
    assert got == [(b"1", 1), (b"zero", 0), (b"2", 1), (b"3", 1)]
    assert nothing_arrives(s)
    s.sendall(b"\xe0\x00")
    s.close()
    s, _ = raw_client(broker.port, cid, clean_session=True)
    s.close()


def test_a_zero_length_client_id_is_accepted_with_a_clean_session_and_refused_without(broker: Broker) -> None:
    s, connack = raw_client(broker.port, "", clean_session=True)
    assert connack == b"\x00\x00"
    s.sendall(b"\xc0\x00")
    assert read_packet(s) == (0xD0, b"")
    s.close()
    s, connack = raw_client(broker.port, "", clean_session=False)
    assert connack == b"\x00\x02"  # identifier rejected
    assert read_packet(s) == (-1, b"")
    s.close()


# -- limits: the deployed ones ------------------------------------------------------------------------


def test_a_payload_over_the_message_size_limit_is_acknowledged_and_not_delivered(
    broker: Broker, unique_id: str
) -> None:
    limit = deployed_limits()["message_size_limit"]
    topic = f"ms{unique_id}/t"
    sub, _ = raw_client(broker.port, f"mss-{unique_id}")
    subscribe(sub, topic, 0)
    s, _ = raw_client(broker.port, f"msp-{unique_id}")
    s.settimeout(5)
    s.sendall(encode_publish(topic, b"x" * limit, qos=1, packet_id=1))
    assert read_packet(s) == (0x40, b"\x00\x01")
    assert len(next_publish(sub).payload) == limit
    s.sendall(encode_publish(topic, b"x" * (limit + 1), qos=1, packet_id=2))
    assert read_packet(s) == (0x40, b"\x00\x02")  # acknowledged, so the client does not resend it
    assert nothing_arrives(sub)
    s.sendall(b"\xc0\x00")  # the connection stays up
    assert read_packet(s) == (0xD0, b"")
    s.close()
    sub.close()


def publish_of_size(topic: str, total: int) -> bytes:
    """A QoS 1 PUBLISH of exactly ``total`` bytes (three-byte remaining length)."""
    packet = encode_publish(topic, b"x" * (total - 1 - 3 - 2 - len(topic) - 2), qos=1, packet_id=3)
    assert len(packet) == total
    return packet


def test_a_packet_over_max_packet_size_closes_the_connection_and_publishes_the_will(
    broker: Broker, unique_id: str
) -> None:
    limit = deployed_limits()["max_packet_size"]
    w = watcher(broker.port, f"mp{unique_id}/will", f"mpw-{unique_id}")
    try:
        # Mosquitto 2.0.11 counts remaining length + 1 (measured): 17,411 bytes on the wire pass.
        s, _ = raw_client(broker.port, f"mpa-{unique_id}")
        s.settimeout(5)
        s.sendall(publish_of_size(f"mp{unique_id}/t", limit + 3))
        assert read_packet(s) == (0x40, b"\x00\x03")
        s.close()
        s, _ = raw_client(broker.port, f"mpb-{unique_id}", will=Will(f"mp{unique_id}/will", b"cut", 1))
        s.settimeout(5)
        s.sendall(publish_of_size(f"mp{unique_id}/t", limit + 4))
        assert read_packet(s) == (-1, b"")
        assert w.get().payload == b"cut"
        s.close()
    finally:
        w.close()


# -- a subscriber that stops reading --------------------------------------------------------------------


def never_reading_subscriber(port: int, client_id: str, topic: str, qos: int) -> socket.socket:
    """A subscriber whose process hangs: subscribed, then never reads its socket again."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(encode_connect(client_id, keepalive_s=600))
    s.settimeout(5)
    assert read_packet(s)[0] == 0x20
    assert subscribe(s, topic, qos) == qos
    return s


def test_a_subscriber_that_never_reads_stalls_neither_the_publisher_nor_the_other_subscribers(
    broker: Broker, unique_id: str
) -> None:
    count, payload = 3000, b"p" * 8000  # 24 MB: far more than the socket buffers hold
    topic = f"sl{unique_id}/L-1/telemetry"
    stuck = never_reading_subscriber(broker.port, f"stuck-{unique_id}", f"sl{unique_id}/#", 1)
    healthy = Paho(broker.port, f"healthy-{unique_id}")
    healthy.subscribe(topic, 1)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique_id}")
    pub.connect("127.0.0.1", broker.port)
    pub.loop_start()
    try:
        infos = [pub.publish(topic, payload, qos=1) for _ in range(count)]
        deadline = time.monotonic() + 60
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        assert all(info.is_published() for info in infos), sum(i.is_published() for i in infos)
        got = 0
        while got < count:
            healthy.get(timeout=10)
            got += 1
        # The publisher's connection still answers at once (its PINGREQ used to go unanswered).
        t0 = time.monotonic()
        pub.publish(f"sl{unique_id}/L-1/ping", b"", qos=1).wait_for_publish(5)
        assert time.monotonic() - t0 < 2
    finally:
        pub.disconnect()
        pub.loop_stop()
        healthy.close()
        stuck.close()


@pytest.mark.parametrize("death", ["socket closed", "keepalive expired"])
def test_a_publisher_that_dies_while_a_subscriber_is_stuck_still_gets_its_will_published(
    broker: Broker, unique_id: str, death: str
) -> None:
    base = f"wd{unique_id}"
    stuck = never_reading_subscriber(broker.port, f"stuck-{unique_id}", f"{base}/data/#", 0)
    w = watcher(broker.port, f"{base}/will", f"ww-{unique_id}")
    lamp, _ = raw_client(
        broker.port, f"lamp-{unique_id}", keepalive_s=2, will=Will(f"{base}/will", b"offline", 1)
    )
    try:
        packet = encode_publish(f"{base}/data/telemetry", b"d" * 8000)
        lamp.settimeout(3)
        sent = 0
        try:
            while sent < 3000:  # 24 MB, the stuck subscriber's share of which it never reads
                lamp.sendall(packet)
                sent += 1
        except TimeoutError:
            pass  # the broker stopped reading this publisher: the old fault
        t0 = time.monotonic()
        if death == "socket closed":
            lamp.close()  # power lost: no DISCONNECT
        msg = w.get(timeout=20)
        elapsed = time.monotonic() - t0
        assert msg.payload == b"offline", sent
        bound = 2.0 if death == "socket closed" else KEEPALIVE_2S_CUT_WITHIN_S[broker.kind]
        assert elapsed < bound, (sent, elapsed)
    finally:
        lamp.close()
        w.close()
        stuck.close()


def test_the_embedded_broker_defaults_to_the_deployed_limits_and_queue_bounds() -> None:
    lite = LiteBroker()
    deployed = deployed_settings()
    assert lite.max_packet_size == int(deployed["max_packet_size"])
    assert lite.message_size_limit == int(deployed["message_size_limit"])
    assert lite.max_queued == int(deployed["max_queued_messages"])
    assert lite.max_queued_bytes == int(deployed["max_queued_bytes"])
    assert lite.queue_qos0 == (deployed["queue_qos0_messages"] == "true")
