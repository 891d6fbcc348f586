"""A small, fast MQTT 3.1.1 broker on asyncio, stdlib only: the embedded broker's default.

Over 500 lines on purpose: it is one MQTT 3.1.1 implementation (packet codec, sessions,
subscriptions and retained messages, delivery with QoS 1 in-flight windows) whose parts follow
the standard's sections and call one another on every packet; the hot read path is kept in one
module so its inlining stays visible, and the conformance tests read against it section by
section.

``python -m broker.embedded`` runs it (``--data-dir`` keeps retained messages across restarts).
It exists because amqtt connected 1,160 of 7,000 simulated devices in 75 s and does not deliver
shared subscriptions; this one is written for the demo's load (thousands of device connections,
a few hundred to thousands of messages per second) on a machine with only Python.

What it does (MQTT 3.1.1, OASIS standard; protocol level 4, and level 3 ``MQIsdp``):

- CONNECT/CONNACK with the session-present flag; wrong protocol level -> return code 1, empty
  client id with clean session 0 -> return code 2, then close; a malformed CONNECT closes the
  connection. User name and password are accepted and ignored (an anonymous development broker,
  loopback by default). An empty client id with clean session gets a generated id.
- Client-id takeover: a second connection with the same id closes the first one. The first did
  not send DISCONNECT, so its will is published (3.1.2.5), before the new CONNACK.
- Last will (topic, payload, QoS, retain) published when a connection ends without DISCONNECT:
  socket closed, protocol error, takeover, or no packet for 1.5 x keepalive. Not on broker stop.
- PUBLISH QoS 0 and 1 in both directions. QoS 2 is downgraded: SUBSCRIBE at QoS 2 is granted 1;
  an incoming QoS 2 PUBLISH is answered per the spec (PUBREC, then PUBCOMP on PUBREL; a repeated
  packet id before PUBREL is not delivered twice) and forwarded at QoS 1 at most.
- Per-session QoS 1 inflight window (``max_inflight``, default 1000) with a queue behind it;
  unacknowledged messages are resent with DUP when a persistent session reconnects.
- SUBSCRIBE/UNSUBSCRIBE with ``+``/``#`` and ``$share/{group}/{filter}``: a shared message goes
  to one member (round robin over online members; when every member is an offline persistent
  session, QoS 1 messages queue on one of them). Wildcards at the first level do not match
  ``$`` topics. A new subscription gets the matching retained messages, a shared one too (as
  Mosquitto 2.0.11 does: a fresh ingest instance learns every lamp's state this way).
- Retained messages (empty payload deletes), delivered on subscribe with the retain flag, and
  with ``data_dir`` saved to ``retained.bin`` every ``save_interval_s`` and on a clean stop, and
  loaded at start (the backend relies on the lamps' retained ``offline`` wills).
- Persistent sessions (clean session 0): subscriptions and queued messages are kept **in
  memory only**: a broker restart loses sessions (not retained messages). While a persistent
  session is offline its QoS 0 messages are queued too (``queue_qos0``, as the deployed
  Mosquitto's queue_qos0_messages), within the same bound.
- Slow and dead subscribers, as Mosquitto treats them: a publisher is never held back for a
  subscriber. Each session has a bounded queue behind its inflight window, online or offline:
  ``max_queued`` messages and ``max_queued_bytes`` (topics and payloads), by default the deployed
  Mosquitto's 400,000 and 256 MiB (ten minutes of the city's traffic for ingest). A message that
  finds the queue full is dropped (the newest, as Mosquitto's max_queued_messages), and QoS 0 to
  a connected client whose socket backlog is over ``drop_qos0_above`` (default 8 MiB) is dropped.
  Both are counted (``dropped``) and logged as one warning per client per ``warn_interval_s``
  with the count. A dead client's keepalive ends it as usual.
- The production limits by default (deploy/mosquitto/mosquitto.conf): ``max_packet_size``
  17,408 (counted as Mosquitto 2.0.11 counts it, remaining length + 1; larger closes the
  connection, will published) and ``message_size_limit`` 16,384 (a larger PUBLISH payload is
  acknowledged and dropped, the connection stays); both logged at warning with the client id.
- ``max_connections`` (default: RLIMIT_NOFILE minus 32 reserved descriptors): a client beyond
  it, or arriving when descriptors run out anyway (a spare one is kept for this), is accepted
  and closed at once; one warning per burst with the count (``refused_connections``).
- PINGREQ/PINGRESP, DISCONNECT. Any malformed packet closes that connection only.
- ``$SYS/broker/version`` is a retained message naming this broker; clients cannot publish to
  ``$SYS/...`` (ignored, acknowledged).

How it is fast enough: each connection is an ``asyncio.Protocol`` (no task per connection);
routing looks exact topics up in a dict and walks a trie only for wildcard filters, with a
bounded topic -> matches cache; a QoS 0 PUBLISH is forwarded as the bytes received when it can
be; writes are gathered per connection and flushed once per event-loop iteration. A
subscriber's socket backlog is only looked at once it passes ``high_water`` (1 MiB).

Measured on the 2-core development machine in the same run as Mosquitto (docs/architecture.md,
"Embedded broker (lite)"; ``python -m tests.integration.test_broker_lite``): 7,000 simulated
devices connect in 1.06 s (Mosquitto 1.10 s); fan-in from one publisher to one paho subscriber
74k msg/s at QoS 0 and 38k msg/s at QoS 1 (Mosquitto 72k and 27k; both bound by the subscriber);
broker CPU 1.6 us per QoS 0 message (Mosquitto 5.0 us). The fan-in figures date from when lite
held a publisher back for a slow subscriber; now QoS 0 past the subscriber's backlog is dropped.
"""

from __future__ import annotations

import asyncio
import errno
import os
import resource
import socket
import struct
import time
import uuid
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from broker._errors import BrokerError
from runtime.logs import get_logger

__all__ = ["LiteBroker"]

log = get_logger("broker.lite")

VERSION: Final = "streetlight-lite 1.0"

# Control packet types, MQTT 3.1.1 section 2.2.1.
_CONNECT, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP = 1, 3, 4, 5, 6, 7
_SUBSCRIBE, _UNSUBSCRIBE, _PINGREQ, _DISCONNECT = 8, 10, 12, 14
_PINGRESP: Final = b"\xd0\x00"
_RETAINED_MAGIC: Final = b"SLRETAIN1\n"
_SMALL_VARINT: Final = [bytes([n]) for n in range(128)]
# The production limits (deploy/mosquitto/mosquitto.conf, written by `streetlight provision`): a
# 16 KiB payload (DESIGN.md §3, broker.MAX_PAYLOAD_BYTES) and 1 KiB of headroom for the rest of
# the packet. The demo broker enforces the same, so what works on it works in production.
MAX_PACKET_SIZE: Final = 17_408
MESSAGE_SIZE_LIMIT: Final = 16_384
# Descriptors kept out of max_connections' default (RLIMIT_NOFILE minus these): the listener,
# the event loop's own, the spare one, log and retained files.
_RESERVED_FDS: Final = 32
# Warning lines naming one client each, per warn interval; beyond, one summed line per event.
_LINES_PER_INTERVAL: Final = 20


def _open_spare() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


class _ProtocolError(Exception):
    """The peer broke MQTT 3.1.1; its connection is closed (and its will published)."""


class _PacketTooLarge(_ProtocolError):
    """A packet over ``max_packet_size`` (whole packet, as Mosquitto counts it); the connection is closed."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"packet of {size} bytes over the limit of {limit}")
        self.size = size
        self.limit = limit


class _Tally:
    """Counts repeated warnings and logs each (event, client id) at most once per ``interval_s``.

    One misbehaving client, or a flood of refused connections, costs one log line per interval
    with a count, not a line (or a traceback) per occurrence; past ``_LINES_PER_INTERVAL`` lines
    in an interval (many clients at once, e.g. one attacker with many client ids) the rest are
    summed into one line per event.
    """

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._counts: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._logged_at: dict[tuple[str, str], float] = {}
        self._window_start = 0.0
        self._lines = 0

    def add(self, event: str, client_id: str, n: int = 1, **detail: Any) -> None:
        """Count ``n`` occurrences of ``event`` for ``client_id``; the line shows the last ``detail``."""
        key = (event, client_id or "?")
        count, _ = self._counts.get(key, (0, detail))
        self._counts[key] = (count + n, detail)

    def report(self, now: float, *, final: bool = False) -> None:
        """Log what was counted since the last line of each key, for keys quiet for ``interval_s``.

        ``final``: everything still counted, whenever its last line was (the broker is stopping).
        """
        if now - self._window_start >= self.interval_s:
            self._window_start, self._lines = now, 0
        overflow: dict[str, tuple[int, int]] = {}  # event -> (clients, count)
        for key, (count, detail) in list(self._counts.items()):
            if not final and now - self._logged_at.get(key, now - self.interval_s) < self.interval_s:
                continue
            del self._counts[key]
            self._logged_at[key] = now
            event, client_id = key
            if self._lines < _LINES_PER_INTERVAL:
                self._lines += 1
                log.warning(event, client_id=client_id, count=count, **detail)
            else:
                clients, total = overflow.get(event, (0, 0))
                overflow[event] = (clients + 1, total + count)
        for event, (clients, total) in overflow.items():
            log.warning(event, client_id="*", clients=clients, count=total)  # more clients than lines
        if len(self._logged_at) > 10_000:  # forget clients quiet for a whole interval
            self._logged_at = {k: t for k, t in self._logged_at.items() if now - t < self.interval_s}


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINT[n]
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        out.append(digit | 0x80 if n else digit)
        if not n:
            return bytes(out)


def _utf8(body: bytes, at: int) -> tuple[str, int]:
    """A length-prefixed UTF-8 string at ``at``: (text, offset after it)."""
    end = at + 2 + int.from_bytes(body[at : at + 2], "big")
    if at + 2 > len(body) or end > len(body):
        raise _ProtocolError("string runs past the packet")
    text = body[at + 2 : end].decode()  # UnicodeDecodeError is a ValueError: malformed
    if "\x00" in text:
        raise _ProtocolError("NUL in a string")
    return text, end


def _binary(body: bytes, at: int) -> tuple[bytes, int]:
    end = at + 2 + int.from_bytes(body[at : at + 2], "big")
    if at + 2 > len(body) or end > len(body):
        raise _ProtocolError("field runs past the packet")
    return body[at + 2 : end], end


def _valid_filter(f: str) -> bool:
    if not f:
        return False
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _split_shared(f: str) -> tuple[str | None, str]:
    """``$share/g/a/b`` -> ("g", "a/b"); a plain filter -> (None, filter). Raises ValueError."""
    if not f.startswith("$share/"):
        return None, f
    group, _, rest = f[len("$share/") :].partition("/")
    if not group or "+" in group or "#" in group or not rest:
        raise ValueError(f)
    return group, rest


class _Msg:
    """One message on its way out: encoded lazily, once per QoS."""

    __slots__ = ("_q0", "_q1", "payload", "qos", "retain", "topic", "topic_b")

    def __init__(self, topic: str, topic_b: bytes, payload: bytes, qos: int, retain: bool = False) -> None:
        self.topic = topic
        self.topic_b = topic_b
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self._q0: bytes | None = None
        self._q1: bytes | None = None

    def q0(self) -> bytes:
        if self._q0 is None:
            tb = self.topic_b
            self._q0 = b"".join(
                (
                    b"\x31" if self.retain else b"\x30",
                    _varint(2 + len(tb) + len(self.payload)),
                    len(tb).to_bytes(2, "big"),
                    tb,
                    self.payload,
                )
            )
        return self._q0

    def q1(self, pid: int, dup: bool) -> bytes:
        if self._q1 is None:
            tb = self.topic_b
            self._q1 = b"".join((_varint(4 + len(tb) + len(self.payload)), len(tb).to_bytes(2, "big"), tb))
        first = 0x32 | (0x08 if dup else 0) | (0x01 if self.retain else 0)
        return b"".join((first.to_bytes(1, "big"), self._q1, pid.to_bytes(2, "big"), self.payload))


class _Session:
    __slots__ = (
        "clean",
        "client_id",
        "conn",
        "dropped",
        "inflight",
        "next_pid",
        "qos2_in",
        "queue",
        "queued_bytes",
        "subs",
    )

    def __init__(self, client_id: str, clean: bool) -> None:
        self.client_id = client_id
        self.clean = clean
        self.subs: dict[str, int] = {}  # full filter (with any $share prefix) -> granted QoS
        self.conn: _Conn | None = None
        self.inflight: dict[int, _Msg] = {}
        self.queue: deque[tuple[_Msg, int]] = deque()  # (message, QoS to send it at)
        self.queued_bytes = 0  # topics and payloads in ``queue``
        self.next_pid = 1
        self.qos2_in: set[int] = set()
        self.dropped = 0

    def alloc_pid(self) -> int:
        pid = self.next_pid
        while pid in self.inflight:
            pid = pid % 65535 + 1
        self.next_pid = pid % 65535 + 1
        return pid


class _Group:
    """The members of one ``$share/{group}/{filter}``."""

    __slots__ = ("members", "order", "rr")

    def __init__(self) -> None:
        self.members: dict[_Session, int] = {}
        self.order: list[_Session] = []
        self.rr = 0

    def pick(self) -> tuple[_Session, int] | None:
        n = len(self.order)
        if not n:
            return None
        start = self.rr
        for k in range(n):
            s = self.order[(start + k) % n]
            if s.conn is not None:
                self.rr = (start + k + 1) % n
                return s, self.members[s]
        s = self.order[start % n]  # all offline (persistent sessions): queue on the next in turn
        self.rr = (start + 1) % n
        return s, self.members[s]


class _Entry:
    """Who subscribed to one filter: plain subscribers and shared groups."""

    __slots__ = ("shared", "subs")

    def __init__(self) -> None:
        self.subs: dict[_Session, int] = {}
        self.shared: dict[str, _Group] = {}

    def empty(self) -> bool:
        return not self.subs and not self.shared


class _Node:
    __slots__ = ("children", "entry")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.entry: _Entry | None = None


class _Conn(asyncio.Protocol):
    """One client connection."""

    def __init__(self, broker: LiteBroker) -> None:
        self.b = broker
        self.transport: asyncio.Transport | None = None
        self.session: _Session | None = None
        self.client_id = ""
        self.keepalive = 0
        self.last_rx = time.monotonic()
        self.opened = self.last_rx
        self.will: _Msg | None = None
        self.closing = False
        self.out: list[bytes] = []
        self.out_bytes = 0  # in ``out``: written at the end of this event-loop iteration
        self.pending: list[bytes] = []
        self.pending_len = 0
        self.need = 0
        self.write_paused = False  # the transport holds more than ``high_water`` unsent bytes

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=self.b.high_water, low=self.b.high_water // 4)
        self.b._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.b._conns.discard(self)
        self.out.clear()
        self.out_bytes = 0
        self.b._detach(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False

    def backlog_bytes(self) -> int:
        """Bytes accepted for this client and not yet taken by its socket."""
        buffered = self.transport.get_write_buffer_size() if self.transport is not None else 0
        return buffered + self.out_bytes

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_rx = time.monotonic()
        if self.pending:
            self.pending.append(data)
            self.pending_len += len(data)
            if self.pending_len < self.need:
                return
            data = b"".join(self.pending)
            self.pending.clear()
            self.pending_len = self.need = 0
        try:
            self._parse(data)
        except _PacketTooLarge as exc:
            self.b._tally.add("packet_too_large", self.client_id, bytes=exc.size, limit=exc.limit)
            self.abort()
        except (_ProtocolError, ValueError, IndexError, struct.error) as exc:
            log.debug("connection_closed_protocol_error", client_id=self.client_id or "?", error=str(exc))
            self.abort()
        except Exception:
            log.exception("connection_closed_internal_error", client_id=self.client_id or "?")
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost publishes the will

    # -- framing -------------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        pos, n, limit = 0, len(data), self.b.max_packet_size
        while n - pos >= 2 and not self.closing:
            first = data[pos]
            if (self.session is None and first != 0x10) or first < 0x10 or first >= 0xF0:
                raise _ProtocolError(f"unexpected first byte {first:#04x}")  # before waiting for a body
            rl, mult, i = 0, 1, pos + 1
            while True:
                if i >= n:
                    self._keep(data, pos, 0)
                    return
                byte = data[i]
                rl += (byte & 0x7F) * mult
                i += 1
                if not byte & 0x80:
                    break
                mult <<= 7
                if mult > 0x200000:
                    raise _ProtocolError("malformed remaining length")
            if rl + 1 > limit:  # counted as Mosquitto 2.0.11 does: remaining length + 1 (measured)
                raise _PacketTooLarge(i - pos + rl, limit)
            end = i + rl
            if end > n:
                self._keep(data, pos, end - pos)
                return
            self._packet(first, data, pos, i, end)
            pos = end
        if pos < n and not self.closing:
            self._keep(data, pos, 0)

    def _keep(self, data: bytes, pos: int, need: int) -> None:
        rest = data[pos:]
        self.pending = [rest]
        self.pending_len = len(rest)
        self.need = need or len(rest) + 1

    # -- writing ---------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        if self.closing:
            return
        if not self.out:
            self.b._dirty.append(self)
            if not self.b._flush_scheduled:
                self.b._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self.b._flush)
        self.out.append(data)
        self.out_bytes += len(data)

    def flush(self) -> None:
        if self.out and not self.closing and self.transport is not None:
            data = self.out[0] if len(self.out) == 1 else b"".join(self.out)
            self.out.clear()
            self.out_bytes = 0
            self.transport.write(data)

    def close(self) -> None:
        """Send what is queued, then close (the will is published unless DISCONNECT removed it)."""
        self.flush()
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        self.out.clear()
        self.out_bytes = 0
        if self.transport is not None:
            self.transport.abort()

    # -- packets ---------------------------------------------------------------------------------

    def _packet(self, first: int, data: bytes, start: int, body_at: int, end: int) -> None:
        kind = first >> 4
        b = self.b
        if self.session is None:
            if kind != _CONNECT:
                raise _ProtocolError(f"packet type {kind} before CONNECT")
            b._connect(self, first, data[body_at:end])
            return
        if kind == _PUBLISH:
            b._on_publish(self, first, data, start, body_at, end)
        elif kind == _PUBACK:
            if first != 0x40 or end - body_at != 2:
                raise _ProtocolError("malformed PUBACK")
            b._on_puback(self.session, int.from_bytes(data[body_at:end], "big"))
        elif kind == _PUBREL:
            if first != 0x62 or end - body_at != 2:
                raise _ProtocolError("malformed PUBREL")
            pid = data[body_at:end]
            self.session.qos2_in.discard(int.from_bytes(pid, "big"))
            self.send(b"\x70\x02" + pid)
        elif kind == _SUBSCRIBE:
            if first != 0x82:
                raise _ProtocolError("SUBSCRIBE flags must be 0010")
            b._on_subscribe(self, data[body_at:end])
        elif kind == _UNSUBSCRIBE:
            if first != 0xA2:
                raise _ProtocolError("UNSUBSCRIBE flags must be 0010")
            b._on_unsubscribe(self, data[body_at:end])
        elif kind == _PINGREQ:
            self.send(_PINGRESP)
        elif kind == _DISCONNECT:
            self.will = None
            self.close()
        elif kind == _CONNECT:
            raise _ProtocolError("second CONNECT")
        else:  # PUBREC/PUBCOMP (we never send QoS 2), server-to-client types, reserved 0 and 15
            raise _ProtocolError(f"unexpected packet type {kind}")


class LiteBroker:
    """The lite broker in this event loop: ``async with LiteBroker(host, port, data_dir=...)``.

    ``port=0`` picks a free port; ``.port`` is the bound one after ``start()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        data_dir: Path | str | None = None,
        max_packet_size: int = MAX_PACKET_SIZE,
        message_size_limit: int = MESSAGE_SIZE_LIMIT,
        max_inflight: int = 1000,
        max_queued: int = 400_000,
        max_queued_bytes: int = 256 << 20,
        queue_qos0: bool = True,
        max_connections: int | None = None,
        save_interval_s: float = 5.0,
        high_water: int = 1 << 20,
        drop_qos0_above: int = 8 << 20,
        warn_interval_s: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.max_packet_size = max_packet_size
        self.message_size_limit = message_size_limit
        self.max_inflight = max_inflight
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.queue_qos0 = queue_qos0
        self.max_connections = max_connections
        self.save_interval_s = save_interval_s
        self.high_water = high_water
        self.drop_qos0_above = drop_qos0_above
        self.dropped = 0  # messages not delivered: full session queues, QoS 0 to clients that do not read
        self.refused_connections = 0  # closed at accept: max_connections reached or out of descriptors
        self.refused_messages = 0  # PUBLISH payloads over message_size_limit (acknowledged, not routed)
        self._tally = _Tally(warn_interval_s)
        self._listeners: list[socket.socket] = []
        self._spare_fd: int | None = None  # closed to accept-and-close a client when descriptors run out
        self._accept_paused = False
        self._accepting: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._conns: set[_Conn] = set()
        self._sessions: dict[str, _Session] = {}
        self._exact: dict[str, _Entry] = {}
        self._root = _Node()
        self._wild = 0
        self._cache: dict[str, list[_Entry]] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._retained_dirty = False
        self._dirty: list[_Conn] = []
        self._flush_scheduled = False

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load retained messages and listen; raises BrokerError when it cannot (e.g. port in use)."""
        loop = asyncio.get_running_loop()
        self._load_retained()
        self._retained["$SYS/broker/version"] = (VERSION.encode(), 0)
        if self.max_connections is None:
            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
            self.max_connections = max(1, soft - _RESERVED_FDS) if soft != resource.RLIM_INFINITY else 1 << 20
        try:
            self._listeners = await self._listen(loop)
        except OSError as exc:
            raise BrokerError(f"embedded broker on {self.host}:{self.port} did not start: {exc}") from exc
        self._spare_fd = _open_spare()
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)
        self._task = asyncio.create_task(self._housekeeping(), name="lite-broker-housekeeping")
        log.info(
            "broker_listening",
            impl="lite",
            url=f"mqtt://{self.host}:{self.port}",
            max_connections=self.max_connections,
            max_packet_size=self.max_packet_size,
        )

    async def _listen(self, loop: asyncio.AbstractEventLoop) -> list[socket.socket]:
        """A listening socket per address ``host`` resolves to (as asyncio's create_server), one port."""
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        listeners: list[socket.socket] = []
        seen: set[tuple[int, str]] = set()
        try:
            for family, _, _, _, address in infos:
                key = (int(family), str(address[0]))
                if key in seen:
                    continue
                seen.add(key)
                sock = socket.socket(family, socket.SOCK_STREAM)
                listeners.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                port = listeners[0].getsockname()[1] if len(listeners) > 1 else self.port
                sock.bind((address[0], port, *address[2:]))
                sock.listen(4096)
                sock.setblocking(False)
        except OSError:
            for sock in listeners:
                sock.close()
            raise
        self.port = listeners[0].getsockname()[1]
        return listeners

    async def stop(self) -> None:
        """Close every connection (no wills), save retained messages, forget sessions."""
        listeners, self._listeners = self._listeners, []
        if not listeners:
            return
        loop = asyncio.get_running_loop()
        for sock in listeners:
            if not self._accept_paused:
                loop.remove_reader(sock.fileno())
            sock.close()
        if self._spare_fd is not None:
            os.close(self._spare_fd)
            self._spare_fd = None
        for task in [*self._accepting, *([self._task] if self._task is not None else [])]:
            task.cancel()
        await asyncio.gather(
            *self._accepting, *([self._task] if self._task is not None else []), return_exceptions=True
        )
        self._tally.report(time.monotonic(), final=True)
        for conn in list(self._conns):
            conn.will = None
            conn.abort()
        await asyncio.sleep(0)
        self._save_retained()
        self._sessions.clear()

    # -- accepting -------------------------------------------------------------------------------

    def _accept(self, sock: socket.socket) -> None:
        """Accept what the listen queue holds; refuse (close at once) past max_connections or out of fds."""
        loop = asyncio.get_running_loop()
        limit = self.max_connections or 0
        for _ in range(256):  # a bounded batch per wake-up, so clients already connected get served too
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if self._refuse_without_fd(sock, exc):
                        continue
                    self._pause_accepting(exc)
                else:
                    self._tally.add("accept_failed", "?", error=exc.strerror)
                return
            if len(self._conns) + len(self._accepting) >= limit:
                client.close()
                self._refuse("max_connections")
                continue
            client.setblocking(False)
            task = loop.create_task(self._attach(client))
            self._accepting.add(task)
            task.add_done_callback(self._accepting.discard)

    async def _attach(self, client: socket.socket) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: _Conn(self), client)
        except OSError as exc:
            client.close()
            self._tally.add("accept_failed", "?", error=exc.strerror)

    def _refuse(self, reason: str, n: int = 1) -> None:
        self.refused_connections += n
        self._tally.add("connections_refused", "?", n, reason=reason, limit=self.max_connections)

    def _refuse_without_fd(self, sock: socket.socket, exc: OSError) -> bool:
        """Out of descriptors: free the spare one, accept a client on it and close it, take it back.

        False when that did not refuse anyone (no spare, or the freed descriptor went elsewhere):
        the caller then pauses accepting instead of spinning on a listener that stays readable.
        """
        if self._spare_fd is None:
            return False
        os.close(self._spare_fd)
        self._spare_fd = None
        refused = False
        try:
            client, _ = sock.accept()
        except OSError:
            pass
        else:
            client.close()
            refused = True
            self._refuse(errno.errorcode.get(exc.errno or 0, "out_of_descriptors"))
        self._spare_fd = _open_spare()
        return refused and self._spare_fd is not None

    def _pause_accepting(self, exc: OSError) -> None:
        """No spare descriptor left either: stop accepting for a second, as asyncio's own server does."""
        if self._accept_paused:
            return
        self._tally.add("accepting_paused", "?", error=exc.strerror, connections=len(self._conns))
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())
        self._accept_paused = True
        loop.call_later(1.0, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if not self._listeners or not self._accept_paused:
            return
        self._accept_paused = False
        if self._spare_fd is None:
            self._spare_fd = _open_spare()
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._accept, sock)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def connections(self) -> int:
        return len(self._conns)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty, self._dirty = self._dirty, []
        for conn in dirty:
            conn.flush()

    async def _housekeeping(self) -> None:
        """Keepalive expiry (1.5 x), CONNECT timeout, retained saves, warnings with counts."""
        last_save = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for conn in list(self._conns):
                if conn.closing:
                    continue
                if conn.session is None:
                    if now - conn.opened > 10.0:
                        conn.abort()
                elif conn.keepalive and now - conn.last_rx > 1.5 * conn.keepalive:
                    log.debug("keepalive_expired", client_id=conn.client_id)
                    conn.abort()
            self._tally.report(now)
            if self._retained_dirty and self.data_dir is not None and now - last_save >= self.save_interval_s:
                last_save = now
                snapshot = self._retained_snapshot()
                self._retained_dirty = False
                try:
                    await asyncio.to_thread(self._write_retained, snapshot)
                except OSError as exc:
                    log.warning("retained_save_failed", error=str(exc))

    # -- retained persistence --------------------------------------------------------------------

    def _retained_snapshot(self) -> list[tuple[str, bytes, int]]:
        return [(t, p, q) for t, (p, q) in self._retained.items() if not t.startswith("$SYS/")]

    def _write_retained(self, items: list[tuple[str, bytes, int]]) -> None:
        assert self.data_dir is not None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        parts = [_RETAINED_MAGIC, len(items).to_bytes(4, "big")]
        for topic, payload, qos in items:
            tb = topic.encode()
            parts += [struct.pack(">HIB", len(tb), len(payload), qos), tb, payload]
        path = self.data_dir / "retained.bin"
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            f.write(b"".join(parts))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _save_retained(self) -> None:
        if self.data_dir is None:
            return
        try:
            self._write_retained(self._retained_snapshot())
            self._retained_dirty = False
        except OSError as exc:
            log.warning("retained_save_failed", error=str(exc))

    def _load_retained(self) -> None:
        if self.data_dir is None:
            return
        path = self.data_dir / "retained.bin"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return
        loaded: dict[str, tuple[bytes, int]] = {}
        try:
            if not data.startswith(_RETAINED_MAGIC):
                raise ValueError("not a retained-messages file")
            at = len(_RETAINED_MAGIC)
            count = int.from_bytes(data[at : at + 4], "big")
            at += 4
            for _ in range(count):
                tl, pl, qos = struct.unpack_from(">HIB", data, at)
                at += 7
                topic = data[at : at + tl].decode()
                payload = data[at + tl : at + tl + pl]
                if len(payload) != pl:
                    raise ValueError("truncated")
                at += tl + pl
                loaded[topic] = (payload, qos)
        except (ValueError, struct.error) as exc:
            log.warning("retained_file_unreadable", path=str(path), error=str(exc))
            return
        self._retained.update(loaded)
        log.info("retained_loaded", count=len(loaded), path=str(path))

    # -- sessions --------------------------------------------------------------------------------

    def _connect(self, conn: _Conn, first: int, body: bytes) -> None:
        if first != 0x10:
            raise _ProtocolError("CONNECT flags must be 0")
        name, at = _utf8(body, 0)
        if name not in ("MQTT", "MQIsdp"):
            raise _ProtocolError(f"protocol name {name!r}")
        level, flags = body[at], body[at + 1]
        conn.keepalive = int.from_bytes(body[at + 2 : at + 4], "big")
        if len(body) < at + 4:
            raise _ProtocolError("short CONNECT")
        at += 4
        if (name, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            conn.send(b"\x20\x02\x00\x01")  # unacceptable protocol level
            conn.close()
            return
        if flags & 0x01:
            raise _ProtocolError("reserved CONNECT flag set")
        clean = bool(flags & 0x02)
        will_flag, will_qos, will_retain = flags & 0x04, (flags >> 3) & 0x03, bool(flags & 0x20)
        if will_qos == 3 or (not will_flag and (will_qos or will_retain)):
            raise _ProtocolError("bad will flags")
        if flags & 0x40 and not flags & 0x80:
            raise _ProtocolError("password without user name")
        client_id, at = _utf8(body, at)
        will: _Msg | None = None
        if will_flag:
            will_topic, at = _utf8(body, at)
            will_payload, at = _binary(body, at)
            if not will_topic or "+" in will_topic or "#" in will_topic:
                raise _ProtocolError("bad will topic")
            will = _Msg(will_topic, will_topic.encode(), will_payload, will_qos, will_retain)
        if flags & 0x80:
            _, at = _utf8(body, at)
        if flags & 0x40:
            _, at = _binary(body, at)
        if at != len(body):
            raise _ProtocolError("trailing bytes in CONNECT")
        if not client_id:
            if not clean:
                conn.send(b"\x20\x02\x00\x02")  # identifier rejected
                conn.close()
                return
            client_id = f"auto-{uuid.uuid4().hex}"
        conn.client_id = client_id
        conn.will = will

        session = self._sessions.get(client_id)
        if session is not None and session.conn is not None:
            old = session.conn  # takeover: the old connection did not DISCONNECT, so its will goes out
            old.session = None
            session.conn = None
            if old.will is not None:
                w, old.will = old.will, None
                self._publish_msg(w)
            old.abort()
        present = False
        if session is not None and (clean or session.clean):
            self._discard(session)
            session = None
        if session is None:
            session = _Session(client_id, clean)
            self._sessions[client_id] = session
        else:
            present = True
        session.conn = conn
        conn.session = session
        conn.send(b"\x20\x02\x01\x00" if present else b"\x20\x02\x00\x00")
        for pid, msg in session.inflight.items():
            conn.send(msg.q1(pid, True))
        self._pump(session)

    def _detach(self, conn: _Conn) -> None:
        """The connection is gone: publish its will, drop a clean session, keep a persistent one."""
        session, conn.session = conn.session, None
        if conn.will is not None:
            w, conn.will = conn.will, None
            self._publish_msg(w)
        if session is None or session.conn is not conn:
            return
        session.conn = None
        if session.clean:
            self._discard(session)

    def _discard(self, session: _Session) -> None:
        for f in list(session.subs):
            self._unsubscribe(session, f)
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
        session.inflight.clear()
        session.queue.clear()
        session.queued_bytes = 0

    # -- subscriptions ---------------------------------------------------------------------------

    def _entry(self, f: str, create: bool) -> _Entry | None:
        if "+" not in f and "#" not in f:
            e = self._exact.get(f)
            if e is None and create:
                e = self._exact[f] = _Entry()
                self._cache.pop(f, None)
            return e
        node = self._root
        for level in f.split("/"):
            nxt = node.children.get(level)
            if nxt is None:
                if not create:
                    return None
                nxt = node.children[level] = _Node()
            node = nxt
        if node.entry is None and create:
            node.entry = _Entry()
            self._wild += 1
            self._cache.clear()
        return node.entry

    def _drop_entry(self, f: str) -> None:
        if "+" not in f and "#" not in f:
            del self._exact[f]
            self._cache.pop(f, None)
            return
        path = [self._root]
        levels = f.split("/")
        for level in levels:
            path.append(path[-1].children[level])
        path[-1].entry = None
        self._wild -= 1
        self._cache.clear()
        for i in range(len(levels), 0, -1):
            node = path[i]
            if node.children or node.entry is not None:
                break
            del path[i - 1].children[levels[i - 1]]

    def _subscribe(self, session: _Session, full: str, qos: int) -> None:
        group, f = _split_shared(full)
        entry = self._entry(f, True)
        assert entry is not None
        if group is None:
            entry.subs[session] = qos
        else:
            g = entry.shared.get(group)
            if g is None:
                g = entry.shared[group] = _Group()
            if session not in g.members:
                g.order.append(session)
            g.members[session] = qos
        session.subs[full] = qos

    def _unsubscribe(self, session: _Session, full: str) -> None:
        if session.subs.pop(full, None) is None:
            return
        group, f = _split_shared(full)
        entry = self._entry(f, False)
        if entry is None:
            return
        if group is None:
            entry.subs.pop(session, None)
        else:
            g = entry.shared.get(group)
            if g is not None and g.members.pop(session, None) is not None:
                g.order.remove(session)
                if not g.members:
                    del entry.shared[group]
        if entry.empty():
            self._drop_entry(f)

    def _on_subscribe(self, conn: _Conn, body: bytes) -> None:
        session = conn.session
        assert session is not None
        pid = body[0:2]
        at = 2
        if len(body) <= at:
            raise _ProtocolError("SUBSCRIBE without filters")
        codes = bytearray()
        granted: list[tuple[str, int]] = []
        while at < len(body):
            f, at = _utf8(body, at)
            if at >= len(body):
                raise _ProtocolError("SUBSCRIBE filter without QoS")
            req = body[at]
            at += 1
            if req > 2:
                raise _ProtocolError("bad requested QoS")
            try:
                _, plain = _split_shared(f)
            except ValueError:
                codes.append(0x80)
                continue
            if not _valid_filter(plain):
                codes.append(0x80)
                continue
            qos = min(req, 1)
            self._subscribe(session, f, qos)
            codes.append(qos)
            granted.append((plain, qos))  # shared ones too: Mosquitto 2.0.11 sends them retained messages
        conn.send(b"\x90" + _varint(2 + len(codes)) + pid + bytes(codes))
        for f, qos in granted:
            self._send_retained(session, f, qos)

    def _on_unsubscribe(self, conn: _Conn, body: bytes) -> None:
        session = conn.session
        assert session is not None
        pid = body[0:2]
        at = 2
        if len(body) <= at:
            raise _ProtocolError("UNSUBSCRIBE without filters")
        while at < len(body):
            f, at = _utf8(body, at)
            self._unsubscribe(session, f)
        conn.send(b"\xb0\x02" + pid)

    def _send_retained(self, session: _Session, f: str, qos: int) -> None:
        if "+" not in f and "#" not in f:
            hit = self._retained.get(f)
            items = [(f, hit)] if hit is not None else []
        else:
            pattern = f.split("/")
            items = [(t, v) for t, v in self._retained.items() if _matches(pattern, t)]
        for topic, (payload, mq) in items:
            msg = _Msg(topic, topic.encode(), payload, mq, True)
            self._deliver(session, msg, min(mq, qos))

    # -- routing ---------------------------------------------------------------------------------

    def _match(self, topic: str) -> list[_Entry]:
        hit = self._cache.get(topic)
        if hit is not None:
            return hit
        out: list[_Entry] = []
        e = self._exact.get(topic)
        if e is not None:
            out.append(e)
        if self._wild:
            _walk(self._root, topic.split("/"), 0, out, topic.startswith("$"))
        if len(self._cache) >= 100_000:
            self._cache.clear()
        self._cache[topic] = out
        return out

    def _on_publish(self, conn: _Conn, first: int, data: bytes, start: int, at: int, end: int) -> None:
        qos = (first >> 1) & 0x03
        retain = first & 0x01
        tl = int.from_bytes(data[at : at + 2], "big")
        p = at + 2 + tl
        topic_b = data[at + 2 : p]
        if p > end or qos == 3:
            raise _ProtocolError("malformed PUBLISH")
        topic = topic_b.decode()
        if not topic or "+" in topic or "#" in topic or "\x00" in topic:
            raise _ProtocolError(f"bad topic name {topic!r}")
        pid = b""
        if qos:
            pid = data[p : p + 2]
            p += 2
            if p > end:
                raise _ProtocolError("PUBLISH without packet id")
        payload = data[p:end]
        if len(payload) > self.message_size_limit:
            # As Mosquitto's message_size_limit: acknowledged (so the client does not resend it
            # forever), not routed, not retained; counted and logged with the client id.
            self.refused_messages += 1
            self._tally.add(
                "message_over_size_limit",
                conn.client_id,
                topic=topic,
                bytes=len(payload),
                limit=self.message_size_limit,
            )
        elif topic.startswith("$SYS/"):
            pass  # the broker's own topics
        elif qos == 2:
            session = conn.session
            assert session is not None
            n = int.from_bytes(pid, "big")
            if n not in session.qos2_in:
                session.qos2_in.add(n)
                self._publish(topic, topic_b, payload, 1, bool(retain), None)
        else:
            raw = data[start:end] if qos == 0 and not retain else None
            self._publish(topic, topic_b, payload, qos, bool(retain), raw)
        if qos == 1:
            conn.send(b"\x40\x02" + pid)
        elif qos == 2:
            conn.send(b"\x50\x02" + pid)

    def _publish_msg(self, msg: _Msg) -> None:
        self._publish(msg.topic, msg.topic_b, msg.payload, min(msg.qos, 1), msg.retain, None)

    def _publish(
        self,
        topic: str,
        topic_b: bytes,
        payload: bytes,
        qos: int,
        retain: bool,
        raw: bytes | None,
    ) -> None:
        if retain:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
            self._retained_dirty = True
        entries = self._match(topic)
        if not entries:
            return
        msg = _Msg(topic, topic_b, payload, qos)
        if raw is not None:
            msg._q0 = raw
        if len(entries) == 1 and not entries[0].shared:
            for session, sq in entries[0].subs.items():
                self._deliver(session, msg, sq if sq < qos else qos)
            return
        targets: dict[_Session, int] = {}
        for e in entries:
            for session, sq in e.subs.items():
                if targets.get(session, -1) < sq:
                    targets[session] = sq
            for g in e.shared.values():
                picked = g.pick()
                if picked is not None and targets.get(picked[0], -1) < picked[1]:
                    targets[picked[0]] = picked[1]
        for session, sq in targets.items():
            self._deliver(session, msg, sq if sq < qos else qos)

    def _deliver(self, session: _Session, msg: _Msg, qos: int) -> None:
        """Send or queue one message for one session; what a slow or absent client cannot take is dropped.

        Never pushes back on the publisher: one client that stops reading costs its own messages,
        not everyone else's (MQTT 3.1.1 lets a server drop QoS 0; QoS 1 beyond the session's bounded
        queue is dropped and counted, as Mosquitto does with max_queued_messages).
        """
        conn = session.conn
        if not qos and conn is not None:
            if (
                conn.write_paused or conn.out_bytes > self.high_water
            ) and conn.backlog_bytes() > self.drop_qos0_above:
                self._drop(session, "qos0_not_read")
                return
            conn.send(msg.q0())
            return
        if not qos and not self.queue_qos0:
            return  # offline and queue_qos0 off: QoS 0 is not kept
        if qos and conn is not None and not session.queue and len(session.inflight) < self.max_inflight:
            pid = session.alloc_pid()
            session.inflight[pid] = msg
            conn.send(msg.q1(pid, False))
            return
        size = len(msg.topic_b) + len(msg.payload)
        if len(session.queue) >= self.max_queued or session.queued_bytes + size > self.max_queued_bytes:
            self._drop(session, "queue_full")
            return
        session.queue.append((msg, qos))
        session.queued_bytes += size

    def _drop(self, session: _Session, reason: str) -> None:
        session.dropped += 1
        self.dropped += 1
        self._tally.add(
            "messages_dropped",
            session.client_id,
            reason=reason,
            queued=len(session.queue),
            inflight=len(session.inflight),
            session_dropped=session.dropped,
        )

    def _on_puback(self, session: _Session, pid: int) -> None:
        session.inflight.pop(pid, None)
        if session.queue:
            self._pump(session)

    def _pump(self, session: _Session) -> None:
        conn = session.conn
        if conn is None:
            return
        queue, inflight = session.queue, session.inflight
        while queue:
            msg, qos = queue[0]
            if qos and len(inflight) >= self.max_inflight:
                break  # a QoS 0 message never waits for the window; one behind a QoS 1 waits its turn
            queue.popleft()
            session.queued_bytes -= len(msg.topic_b) + len(msg.payload)
            if not qos:
                conn.send(msg.q0())
                continue
            pid = session.alloc_pid()
            inflight[pid] = msg
            conn.send(msg.q1(pid, False))


def _walk(node: _Node, levels: list[str], i: int, out: list[_Entry], dollar: bool) -> None:
    """Collect the entries of wildcard filters in the trie under ``node`` matching ``levels[i:]``."""
    children = node.children
    if i == len(levels):
        if node.entry is not None:
            out.append(node.entry)
        h = children.get("#")  # "a/#" also matches "a"
        if h is not None and h.entry is not None:
            out.append(h.entry)
        return
    if not (dollar and i == 0):
        h = children.get("#")
        if h is not None and h.entry is not None:
            out.append(h.entry)
        p = children.get("+")
        if p is not None:
            _walk(p, levels, i + 1, out, dollar)
    c = children.get(levels[i])
    if c is not None:
        _walk(c, levels, i + 1, out, dollar)


def _matches(pattern: list[str], topic: str) -> bool:
    """Does a topic name match a (split) filter; ``$`` topics are not matched by a leading wildcard."""
    levels = topic.split("/")
    if topic.startswith("$") and pattern[0] in ("+", "#"):
        return False
    for i, p in enumerate(pattern):
        if p == "#":
            return True
        if i >= len(levels):
            return False
        if p != "+" and p != levels[i]:
            return False
    return len(levels) == len(pattern)
