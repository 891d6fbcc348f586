"""Ingest's MQTT read path (``BufferedReadClient``): packets cut from the read buffer by hand.

A socket pair stands in for the broker's connection, so every way a byte stream can be split
across reads is tried without a broker: the stream must come out as the same messages, in order,
whether a packet arrives whole, in pieces, or larger than one read.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import BufferedReadClient, ConnectionParams, paho_client
from broker._paho import _ReadBuffer

Message = tuple[str, bytes, int, int]


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def publish_packet(topic: str, payload: bytes, qos: int, mid: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH, written out independently of the code under test."""
    name = topic.encode()
    body = struct.pack("!H", len(name)) + name + (struct.pack("!H", mid) if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _remaining_length(len(body)) + body


PINGRESP = b"\xd0\x00"


Pair = tuple[BufferedReadClient, socket.socket, list[tuple[str, Message]]]


@contextlib.contextmanager
def connected_pair() -> Iterator[Pair]:
    """A client whose socket is one end of a pair; the test writes the broker's bytes to the other."""
    client = paho_client(
        ConnectionParams("127.0.0.1", 1883), "read-path", manual_ack=True, buffered_reads=True
    )
    assert isinstance(client, BufferedReadClient)
    got: list[tuple[str, Message]] = []
    client.set_publish_handler(lambda t, p, q, m, _r: got.append(("cut", (t, p, q, m))))
    client.on_message = lambda _c, _u, msg: got.append(("paho", (msg.topic, msg.payload, msg.qos, msg.mid)))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = _ReadBuffer(ours)
    try:
        yield client, theirs, got
    finally:
        ours.close()
        theirs.close()


def _feed(client: BufferedReadClient, theirs: socket.socket, stream: bytes, cuts: list[int]) -> None:
    edges = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    for a, b in itertools.pairwise(edges):
        theirs.sendall(stream[a:b])
        for _ in range(50):  # as paho's loop would call it while the socket is readable
            assert client.loop_read() == 0
    for _ in range(50):
        assert client.loop_read() == 0


messages = st.lists(
    st.tuples(
        st.sampled_from(["sl/v1/11230/L-1/telemetry", "sl/v1/11010/lamp_02/event", "sl/v1/11230/b/ack"]),
        st.binary(max_size=300),
        st.integers(0, 1),
        st.integers(1, 65535),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(0, 20_000), max_size=12), ping_at=st.integers(0, 40))
def test_any_split_of_the_stream_gives_the_same_messages_in_order(
    msgs: list[Message], cuts: list[int], ping_at: int
) -> None:
    expected = [(t, p, q, m if q else 0) for t, p, q, m in msgs]
    packets = [publish_packet(*m) for m in expected]
    packets.insert(min(ping_at, len(packets)), PINGRESP)  # a packet paho must handle in between
    with connected_pair() as (client, theirs, got):
        _feed(client, theirs, b"".join(packets), cuts)
    assert [m for _, m in got] == expected


def test_a_message_longer_than_a_read_goes_through_paho_and_the_rest_is_cut() -> None:
    topic = "sl/v1/11230/L-1/telemetry"
    big = bytes(range(256)) * 1200  # 307,200 bytes: more than the 256 KB read
    stream = b"".join(
        [
            publish_packet(topic, b"a", 1, 1),
            publish_packet(topic, big, 1, 2),
            publish_packet(topic, b"b", 0, 0),
        ]
    )
    with connected_pair() as (client, theirs, got):
        sender = threading.Thread(target=theirs.sendall, args=(stream,))
        sender.start()  # the pair's buffers are smaller than the stream
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            assert client.loop_read() == 0
        sender.join(5)
    assert [m for _, m in got] == [(topic, b"a", 1, 1), (topic, big, 1, 2), (topic, b"b", 0, 0)]
    ways = [way for way, _ in got]
    assert ways[0] == "cut" and "paho" in ways


def test_a_topic_that_is_not_utf8_is_named_so_and_the_stream_goes_on() -> None:
    bad = b"\x00\x04sl/\xff" + b"x"
    stream = (
        bytes([0x30]) + _remaining_length(len(bad)) + bad + publish_packet("sl/v1/a/b/telemetry", b"y", 0, 0)
    )
    with connected_pair() as (client, theirs, got):
        _feed(client, theirs, stream, [])
    assert [m for _, m in got] == [("<not utf-8>", b"x", 0, 0), ("sl/v1/a/b/telemetry", b"y", 0, 0)]


def test_a_handler_without_manual_ack_is_refused() -> None:
    client = paho_client(ConnectionParams("127.0.0.1", 1883), "read-path-2", buffered_reads=True)
    assert isinstance(client, BufferedReadClient)
    with pytest.raises(ValueError, match="manual_ack"):
        client.set_publish_handler(lambda *_a: None)


def test_the_publish_handler_is_told_which_messages_come_from_the_brokers_retained_store() -> None:
    client = paho_client(
        ConnectionParams("127.0.0.1", 1883), "read-path-retain", manual_ack=True, buffered_reads=True
    )
    assert isinstance(client, BufferedReadClient)
    got: list[tuple[str, bool]] = []
    client.set_publish_handler(lambda t, _p, _q, _m, retain: got.append((t, retain)))
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client._sock = _ReadBuffer(ours)
    try:
        live = publish_packet("sl/v1/11230/L-1/event", b"{}", 1, 7)
        stored = bytearray(publish_packet("sl/v1/11230/L-2/event", b"{}", 1, 8))
        stored[0] |= 0x01  # RETAIN
        theirs.sendall(live + bytes(stored))
        for _ in range(5):
            client.loop_read()
        assert got == [("sl/v1/11230/L-1/event", False), ("sl/v1/11230/L-2/event", True)]
    finally:
        ours.close()
        theirs.close()
