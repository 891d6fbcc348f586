"""A compact MQTT 3.1.1 client on asyncio, one per simulated device.

Why not paho or aiomqtt: both keep a paho client per connection (a socket pair, locks, buffers,
callback tables), which measured several times the memory and connect time of this one for
10,000 devices (docs/simulator.md, "Why a client of our own"). A device needs little: CONNECT
with a last will and credentials, PUBLISH at QoS 0 and 1 (PUBACK tracked, retried with DUP),
SUBSCRIBE to its own ``cmd`` topic, PUBACK for what it receives, PINGREQ keepalive, and two ways
to end: DISCONNECT (no will) or dropping the socket (the broker fires the will).

It is an ``asyncio.Protocol`` rather than streams, so a connection costs no reader task.

Errors::

    MqttError
    ├── ConnectRefused      the broker answered CONNACK with a non-zero return code
    └── ConnectionClosed    the connection ended (or never opened) before the operation finished
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = [
    "ConnectRefused",
    "ConnectionClosed",
    "MqttConnection",
    "MqttError",
    "Will",
    "connect",
    "encode_connect",
    "encode_publish",
    "encode_subscribe",
]

# MQTT 3.1.1 control packet types (OASIS standard, section 2.2.1).
CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14
PINGREQ_PACKET: Final = b"\xc0\x00"
DISCONNECT_PACKET: Final = b"\xe0\x00"
# CONNACK return codes, section 3.2.2.3.
CONNACK_REASONS: Final = {
    1: "unacceptable protocol version",
    2: "identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
# Resend an unacknowledged QoS 1 PUBLISH (with DUP) after this long; well under the 60 s keepalive.
RETRY_S: Final = 10.0


class MqttError(Exception):
    """Base of this client's errors."""


class ConnectRefused(MqttError):
    """The broker refused the CONNECT; ``return_code`` is the CONNACK code."""

    def __init__(self, return_code: int) -> None:
        self.return_code = return_code
        super().__init__(f"connection refused: {CONNACK_REASONS.get(return_code, 'unknown')} ({return_code})")


class ConnectionClosed(MqttError):
    """The connection is closed; ``reason`` says why when known."""

    def __init__(self, reason: str = "connection closed") -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True, slots=True)
class Will:
    """The last will registered at CONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_connect(
    client_id: str,
    *,
    keepalive_s: int,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
) -> bytes:
    """A CONNECT packet (protocol level 4)."""
    flags = 0x02 if clean_session else 0
    payload = _str(client_id.encode())
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        payload += _str(will.topic.encode()) + _str(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _str(username.encode())
        if password is not None:
            flags |= 0x40
            payload += _str(password.encode())
    body = _str(b"MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive_s) + payload
    return bytes([CONNECT << 4]) + _remaining_length(len(body)) + body


def encode_publish(
    topic: str, payload: bytes, *, qos: int = 0, retain: bool = False, packet_id: int = 0, dup: bool = False
) -> bytes:
    """A PUBLISH packet at QoS 0 or 1."""
    header = (PUBLISH << 4) | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    variable = _str(topic.encode())
    if qos:
        variable += struct.pack("!H", packet_id)
    body_len = len(variable) + len(payload)
    return bytes([header]) + _remaining_length(body_len) + variable + payload


def encode_subscribe(packet_id: int, topic: str, qos: int = 1) -> bytes:
    """A SUBSCRIBE packet for one topic filter."""
    body = struct.pack("!H", packet_id) + _str(topic.encode()) + bytes([qos])
    return bytes([(SUBSCRIBE << 4) | 0x02]) + _remaining_length(len(body)) + body


MessageHandler = Callable[[str, bytes], None]


class MqttConnection(asyncio.Protocol):
    """One MQTT connection; create it with :func:`connect`."""

    __slots__ = (
        "_buffer",
        "_connack",
        "_keepalive_s",
        "_last_in",
        "_last_out",
        "_loop",
        "_next_id",
        "_on_message",
        "_pending",
        "_ping_timer",
        "_retry_timer",
        "_transport",
        "close_reason",
        "closed",
    )

    def __init__(self, on_message: MessageHandler | None, keepalive_s: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self._keepalive_s = keepalive_s
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._connack: asyncio.Future[int] = self._loop.create_future()
        # packet id -> (packet, future); PUBLISH awaits PUBACK, SUBSCRIBE awaits SUBACK
        self._pending: dict[int, tuple[bytes, asyncio.Future[int]]] = {}
        self._next_id = 0
        self._last_in = self._last_out = self._loop.time()
        self._ping_timer: asyncio.TimerHandle | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.close_reason = ""

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._last_in = self._loop.time()
        buf = self._buffer
        buf += data
        while len(buf) >= 2:
            length, multiplier, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return
                byte = buf[i]
                length += (byte & 0x7F) * multiplier
                multiplier *= 128
                i += 1
                if not byte & 0x80:
                    break
                if i > 4:
                    self._fail("malformed remaining length")
                    return
            end = i + length
            if len(buf) < end:
                return
            first, body = buf[0], bytes(buf[i:end])
            del buf[:end]
            self._handle(first, body)

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.close_reason or (f"connection lost: {exc}" if exc else "connection closed by broker")
        self.close_reason = reason
        for timer in (self._ping_timer, self._retry_timer):
            if timer is not None:
                timer.cancel()
        error = ConnectionClosed(reason)
        if not self._connack.done():
            self._connack.set_exception(error)
            self._connack.exception()  # retrieved: nobody may be waiting any more
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(error)
                future.exception()
        self._pending.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- incoming -------------------------------------------------------------------------

    def _handle(self, first: int, body: bytes) -> None:
        kind = first >> 4
        if kind == PUBLISH:
            qos = (first >> 1) & 0x03
            topic_len = struct.unpack_from("!H", body)[0]
            topic = body[2 : 2 + topic_len].decode("utf-8", "replace")
            at = 2 + topic_len
            if qos:
                packet_id = struct.unpack_from("!H", body, at)[0]
                at += 2
                # We subscribe at QoS 1 at most, so QoS 2 never arrives; ack QoS 1 before handling.
                self._write(bytes([PUBACK << 4, 2]) + struct.pack("!H", packet_id))
            if self._on_message is not None:
                self._on_message(topic, body[at:])
        elif kind in (PUBACK, SUBACK):
            packet_id = struct.unpack_from("!H", body)[0]
            entry = self._pending.pop(packet_id, None)
            if entry is not None and not entry[1].done():
                entry[1].set_result(body[2] if kind == SUBACK and len(body) > 2 else 0)
        elif kind == CONNACK:
            if not self._connack.done():
                self._connack.set_result(body[1] if len(body) > 1 else 255)
        elif kind == PINGRESP:
            pass
        else:
            self._fail(f"unexpected packet type {kind}")

    def _fail(self, reason: str) -> None:
        self.close_reason = reason
        if self._transport is not None:
            self._transport.abort()

    # -- outgoing -------------------------------------------------------------------------

    def _write(self, packet: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ConnectionClosed(self.close_reason or "connection closed")
        self._transport.write(packet)
        self._last_out = self._loop.time()

    def _packet_id(self) -> int:
        for _ in range(65535):
            self._next_id = self._next_id % 65535 + 1
            if self._next_id not in self._pending:
                return self._next_id
        raise MqttError("65535 packets in flight")

    async def wait_connack(self) -> None:
        """Wait for CONNACK; raise ConnectRefused on a non-zero code."""
        code = await self._connack
        if code != 0:
            self._fail(f"connection refused ({code})")
            raise ConnectRefused(code)
        self._schedule_ping()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[int]:
        """Send a PUBLISH; the future completes on PUBACK (QoS 1) or at once (QoS 0)."""
        future: asyncio.Future[int] = self._loop.create_future()
        if qos == 0:
            self._write(encode_publish(topic, payload, retain=retain))
            future.set_result(0)
            return future
        packet_id = self._packet_id()
        packet = encode_publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id)
        self._write(packet)
        self._pending[packet_id] = (packet, future)
        if self._retry_timer is None:
            self._retry_timer = self._loop.call_later(RETRY_S, self._retry)
        return future

    def subscribe(self, topic: str, qos: int = 1) -> asyncio.Future[int]:
        """Send a SUBSCRIBE; the future completes with the granted QoS (0x80: refused)."""
        future: asyncio.Future[int] = self._loop.create_future()
        packet_id = self._packet_id()
        self._write(encode_subscribe(packet_id, topic, qos))
        self._pending[packet_id] = (b"", future)
        return future

    def _retry(self) -> None:
        self._retry_timer = None
        if self._transport is None or self._transport.is_closing():
            return
        for packet, future in list(self._pending.values()):
            if packet and not future.done():
                self._write(bytes([packet[0] | 0x08]) + packet[1:])  # DUP flag set
        if self._pending:
            self._retry_timer = self._loop.call_later(RETRY_S, self._retry)

    def _schedule_ping(self) -> None:
        if self._keepalive_s > 0:
            self._ping_timer = self._loop.call_later(self._keepalive_s / 2, self._ping)

    def _ping(self) -> None:
        now = self._loop.time()
        if now - self._last_in > self._keepalive_s * 1.5:
            self._fail("keepalive: nothing from the broker for 1.5 keepalive periods")
            return
        if now - self._last_out >= self._keepalive_s / 2:
            with contextlib.suppress(ConnectionClosed):
                self._write(PINGREQ_PACKET)
        self._schedule_ping()

    @property
    def is_open(self) -> bool:
        """True until the connection closes."""
        return self._transport is not None and not self._transport.is_closing()

    @property
    def in_flight(self) -> int:
        """QoS 1 publishes and subscriptions awaiting their acknowledgement."""
        return len(self._pending)

    def disconnect(self) -> None:
        """Clean end: DISCONNECT, then close (the broker discards the will)."""
        self.close_reason = "disconnected"
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(DISCONNECT_PACKET)
            self._transport.close()

    def abort(self) -> None:
        """Silent death: drop the socket without DISCONNECT, so the broker publishes the will."""
        self._fail("aborted (silent death)")


async def connect(
    host: str,
    port: int,
    client_id: str,
    *,
    keepalive_s: int = 60,
    clean_session: bool = True,
    username: str | None = None,
    password: str | None = None,
    will: Will | None = None,
    on_message: MessageHandler | None = None,
    timeout_s: float = 30.0,
) -> MqttConnection:
    """Open a TCP connection, send CONNECT and wait for a successful CONNACK."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(
                lambda: MqttConnection(on_message, keepalive_s), host, port
            )
            conn._write(
                encode_connect(
                    client_id,
                    keepalive_s=keepalive_s,
                    clean_session=clean_session,
                    username=username,
                    password=password,
                    will=will,
                )
            )
            try:
                await conn.wait_connack()
            except BaseException:
                conn.abort()
                raise
    except OSError as exc:
        raise ConnectionClosed(f"cannot connect to {host}:{port}: {exc}") from exc
    except TimeoutError as exc:
        raise ConnectionClosed(f"no CONNACK from {host}:{port} within {timeout_s} s") from exc
    return conn
