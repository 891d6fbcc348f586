"""paho-mqtt 2 helpers for devices and the high-rate ingest path (threaded, callback API v2)."""

from __future__ import annotations

import random
import ssl
import struct
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion, _ConnectionState

from broker._connection import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    BrokerAddress,
    ConnectionParams,
    next_address,
)
from broker._payloads import Birth, encode, online_state
from broker._topics import device_topic
from broker._will import Will, device_will
from runtime.logs import get_logger

log = get_logger(__name__)

_PUBACK = struct.Struct("!BBH")

RawPublishHandler = Callable[[str, bytes, int, int, bool], None]
"""``(topic, payload, qos, mid, retain)`` of a received PUBLISH (``BufferedReadClient.set_publish_handler``).
``retain`` is the packet's RETAIN flag: set by the broker only on a message from its retained store
(sent because a subscription was made), never on a live one (MQTT 3.1.1 §3.3.1.3)."""


class _ReadBuffer:
    """A connected socket whose ``recv`` is served from one large read (see ``BufferedReadClient``)."""

    READ_SIZE = 256 * 1024

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, buffer_size: int) -> bytes:
        buf, pos = self._buf, self._pos
        if pos >= len(buf):
            buf = bytes(self._sock.recv(self.READ_SIZE))  # BlockingIOError, TLS, OS errors: as before
            if not buf:
                return buf  # the peer closed
            self._buf, pos = buf, 0
        self._pos = pos + buffer_size
        return buf[pos : pos + buffer_size]

    def fill(self) -> bool:
        """Read the socket into the (used up) buffer; False when it has nothing yet. An end of file
        or an error is left for paho's next read, which reports it."""
        try:
            data = self._sock.recv(self.READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if data:
            self._buf, self._pos = bytes(data), 0
        return True

    def buffered(self) -> bool:
        """Bytes read from the socket that paho has not taken yet."""
        return self._pos < len(self._buf)

    def pending(self) -> int:
        """Bytes read from the socket that paho has not taken yet (and TLS's own, if any)."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return max(0, len(self._buf) - self._pos) + int(inner)

    def send(self, buffer: bytes | bytearray) -> int:
        return int(self._sock.send(buffer))

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


# States in which paho's next ``reconnect`` follows a failure (a lost connection, a refused or
# unreachable broker) rather than a first connect or a disconnect the client asked for.
_NOT_A_FAILURE = frozenset(
    {
        _ConnectionState.MQTT_CS_NEW,
        _ConnectionState.MQTT_CS_CONNECT_ASYNC,
        _ConnectionState.MQTT_CS_DISCONNECTING,
        _ConnectionState.MQTT_CS_DISCONNECTED,
    }
)


class FailoverClient(mqtt.Client):
    """A paho client that knows every node of a cluster and moves to the next one on failure.

    paho's own loop reconnects to the host it last used; this client's ``reconnect`` goes to the
    next address of ``addresses`` instead when the previous connection died or the previous attempt
    failed (paho's back-off, ``reconnect_delay_set``, still paces the attempts). A reconnect the
    client asked for (after its own ``disconnect``) stays on the same node: a persistent session's
    queued messages are there. ``connect_any`` makes the first connection to the first node that
    answers.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.addresses: tuple[BrokerAddress, ...] = ()

    @property
    def address(self) -> BrokerAddress | None:
        """The node connected to (or last tried); None before the first connect."""
        return BrokerAddress(self._host, self._port) if self._host else None

    def reconnect(self) -> MQTTErrorCode:
        current = self.address
        if len(self.addresses) > 1 and current is not None and self._state not in _NOT_A_FAILURE:
            following = next_address(self.addresses, current)
            self._host, self._port = following.host, following.port
            client_id = self._client_id.decode()
            log.info("mqtt_failover", client_id=client_id, left=str(current), to=str(following))
        return super().reconnect()

    def connect_any(self, keepalive: int = 60) -> BrokerAddress:
        """Connect to the first node that accepts, from the current one (the first at the start)
        in ring order; raises the last OSError when none does."""
        ring = self.addresses or ((self.address,) if self.address else ())
        if not ring:
            raise ValueError("no broker address")
        start = ring.index(self.address) if self.address in ring else 0
        error: OSError | None = None
        for address in ring[start:] + ring[:start]:
            try:
                self.connect(address.host, address.port, keepalive=keepalive)
                return address
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    def connect_async_current(self, keepalive: int = 60) -> None:
        """``connect_async`` to the current node (the first at the start): paho's thread connects
        and, on failure, moves along the addresses."""
        address = self.address or (self.addresses[0] if self.addresses else None)
        if address is None:
            raise ValueError("no broker address")
        self.connect_async(address.host, address.port, keepalive=keepalive)


class BufferedReadClient(FailoverClient):
    """A paho client that reads the socket in large chunks.

    paho reads a packet with one ``recv`` for its first byte, one per remaining-length byte and one
    for the rest: three system calls for a small telemetry message, which made paho's thread the
    ingest worker's bottleneck (py-spy: two thirds of a worker's samples). This client reads up to
    256 KB at once and serves paho's reads from that buffer, handles every packet already buffered
    without a ``select`` each and sends a batch of QoS 1 acks as one write (``ack_many``). With
    ``set_publish_handler`` it also cuts QoS 0/1 PUBLISH packets from the buffer itself; every
    other packet is paho's to handle.
    """

    DRAIN_PACKETS = 256  # packets handled per wake-up before paho's loop writes acks and pings
    DRAIN_READS = 8  # socket reads per wake-up on the publish handler's path (2 MB)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._publish_handler: RawPublishHandler | None = None

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        if self._transport == "websockets":
            return sock
        return _ReadBuffer(sock)

    def set_publish_handler(self, handler: RawPublishHandler | None) -> None:
        """Receive PUBLISH packets as ``handler(topic, payload, qos, mid, retain)`` instead of ``on_message``.

        For the ingest hot path: MQTT 3.1.1 PUBLISH packets at QoS 0 or 1 that lie complete in the
        read buffer are cut out of it directly, without paho's per-packet work (a packet dict, a
        ``MQTTMessage`` with its ``threading.Condition``, two ``struct`` unpacks): about half of a
        worker's receive time. Everything else (CONNACK, SUBACK, PINGRESP, QoS 2, MQTT 5, a
        packet split across reads) goes through paho as before. No acknowledgement is sent: the
        client must use ``manual_ack`` for QoS 1 (``ack_many``). A topic that is not UTF-8 arrives
        as ``"<not utf-8>"``.
        """
        if handler is not None and not self._manual_ack:
            raise ValueError("a publish handler needs manual_ack=True (QoS 1 is acked by the caller)")
        self._publish_handler = handler

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read what the socket has: the packets in the buffer without a ``select`` each (stock paho
        reads one packet per ``select``: about 14 % of an ingest worker's time at 60k messages/s),
        up to ``DRAIN_PACKETS`` handled by paho; with a publish handler, PUBLISH packets are cut
        from the buffer first (``set_publish_handler``)."""
        sock = self._sock
        if not isinstance(sock, _ReadBuffer):
            return super().loop_read(max_packets)
        fast = self._publish_handler is not None and self._protocol != MQTTProtocolVersion.MQTTv5
        budget, reads = self.DRAIN_PACKETS, self.DRAIN_READS
        while budget:
            budget -= 1
            if fast and self._in_packet["command"] == 0:
                if not sock.buffered():
                    if not reads or not sock.fill():
                        return mqtt.MQTT_ERR_SUCCESS  # nothing more to read now, or enough for once
                    reads -= 1
                if sock.buffered():
                    self._cut_publishes(sock)
                    if not sock.buffered():
                        continue
            elif budget < self.DRAIN_PACKETS - 1 and not sock.buffered():
                break  # paho's next read would go to the socket: let its loop select first
            # One packet through paho: not a QoS 0/1 PUBLISH, one split across reads, or the
            # socket's end of file or error (which paho reports).
            rc = self._packet_read()
            if rc == mqtt.MQTT_ERR_AGAIN:
                return mqtt.MQTT_ERR_SUCCESS
            if rc > 0:
                return self._loop_rc_handle(rc)
            if self._sock is not sock:
                break
        return mqtt.MQTT_ERR_SUCCESS

    def _cut_publishes(self, sock: _ReadBuffer) -> int:
        """Hand every complete QoS 0/1 PUBLISH at the front of the buffer to the handler; returns
        how many. Stops at anything else, which paho reads next."""
        if self._in_packet["command"] != 0:
            return 0  # paho is in the middle of a packet
        handler = self._publish_handler
        assert handler is not None
        buf, pos = sock._buf, sock._pos
        end = len(buf)
        n = 0
        while pos + 4 <= end:
            first = buf[pos]
            qos = (first >> 1) & 3
            if first & 0xF0 != 0x30 or qos > 1:
                break
            i, length, shift = pos + 1, 0, 0
            while i < end and shift <= 21:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if byte < 0x80:
                    break
            else:
                break  # the length continues past the buffer (or is malformed: paho refuses it)
            stop = i + length
            if stop > end or length < 2:
                break
            topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            head_end = topic_end + 2 * qos
            if topic_end == i + 2 or head_end > stop:
                break  # an empty topic or a short packet: paho's error path
            try:
                topic = buf[i + 2 : topic_end].decode()
            except UnicodeDecodeError:
                topic = "<not utf-8>"
            mid = (buf[topic_end] << 8) | buf[topic_end + 1] if qos else 0
            pos = stop
            n += 1
            try:
                handler(topic, buf[head_end:stop], qos, mid, bool(first & 1))
            except Exception as err:  # as paho treats an on_message that raises
                self._easy_log(mqtt.MQTT_LOG_ERR, "Caught exception in the publish handler: %s", err)
                if not self.suppress_exceptions:
                    sock._pos = pos
                    raise
        if n:
            sock._pos = pos
            with self._msgtime_mutex:
                self._last_bytes_received = mqtt.time_func()
        return n

    def ack_many(self, mids: list[int]) -> None:
        """Acknowledge QoS 1 messages (``manual_ack``) with one queued write for all their PUBACKs.

        paho's ``ack`` queues one packet per message and wakes its loop for each (two system calls
        per message); a batch of acks is one ``send``. MQTT 5 allows the same short PUBACK (reason
        code success implied by a remaining length of 2).
        """
        if not self._manual_ack or not mids:
            return
        pack = _PUBACK.pack
        self._packet_queue(mqtt.PUBACK, b"".join([pack(mqtt.PUBACK, 2, mid) for mid in mids]), 0, 1)


def paho_client(
    params: ConnectionParams,
    client_id: str,
    *,
    clean_session: bool = True,
    will: Will | None = None,
    manual_ack: bool = False,
    reconnect_base_s: float = BACKOFF_BASE_S,
    reconnect_cap_s: float = BACKOFF_CAP_S,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    rng: random.Random | None = None,
    buffered_reads: bool = False,
) -> FailoverClient:
    """A configured, unconnected paho client (callback API v2); call ``connect_any`` (or ``connect``)
    and a loop yourself. It is a ``FailoverClient`` holding ``params.addresses``: paho's reconnect
    loop moves to the next node when one dies.

    ``manual_ack=True`` leaves QoS 1 acknowledgement to the caller (``client.ack(mid, qos)``), so
    ingest can acknowledge only after a message is durable. ``buffered_reads=True``: a
    ``BufferedReadClient`` (high-rate subscribers).
    """
    rng = rng or random.Random()
    client = (BufferedReadClient if buffered_reads else FailoverClient)(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session if protocol != MQTTProtocolVersion.MQTTv5 else None,
        protocol=protocol,
        manual_ack=manual_ack,
    )
    client.addresses = params.addresses
    if params.username is not None:
        client.username_pw_set(params.username, params.password)
    if params.tls:
        client.tls_set_context(ssl.create_default_context())
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    # paho's own reconnect loop doubles from min_delay up to max_delay with no jitter; drawing both
    # per client spreads 16k lamps reconnecting after a broker restart over the window instead of
    # in lockstep waves (the thundering herd that full jitter avoids in the asyncio session).
    min_delay = rng.randint(1, max(1, round(2 * reconnect_base_s)))
    cap = max(min_delay, round(reconnect_cap_s))
    max_delay = rng.randint(max(min_delay, cap // 2), cap)
    client.reconnect_delay_set(min_delay=min_delay, max_delay=max_delay)
    return client


class DeviceLink:
    """A device's connection lifecycle on a paho client: will per connection, birth and online after connect.

    Each connection has its own ``bdseq``: the will set before connecting carries it, the birth and
    the retained ``online`` state after CONNACK repeat it, and a disconnect increments it and sets the
    next will before paho reconnects. So the backend can tell a stale ``offline`` from a fresh one.
    """

    def __init__(
        self,
        client: mqtt.Client,
        district_code: str,
        device_id: str,
        birth: Callable[[int], Birth],
        *,
        bdseq: int = 0,
        on_connected: Callable[[mqtt.Client], None] | None = None,
    ) -> None:
        self.client = client
        self.district_code = district_code
        self.device_id = device_id
        self.bdseq = bdseq
        self._birth = birth
        self._on_connected = on_connected
        self.cmd_topic = device_topic(district_code, device_id, "cmd")
        self._set_will()
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect

    def _set_will(self) -> None:
        will = device_will(self.district_code, self.device_id, self.bdseq)
        self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("device_connect_refused", device=self.device_id, reason=str(reason))
            return
        client.subscribe(self.cmd_topic, qos=1)
        topic = device_topic(self.district_code, self.device_id, "birth")
        client.publish(topic, encode(self._birth(self.bdseq)), qos=1)
        state = device_topic(self.district_code, self.device_id, "state")
        client.publish(state, online_state(self.bdseq), qos=1, retain=True)
        if self._on_connected is not None:
            self._on_connected(client)

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        self.bdseq += 1
        self._set_will()
