"""A reconnecting asyncio MQTT session over aiomqtt, for the asyncio services (controller, API).

It connects, re-subscribes after every reconnect, waits a jittered capped backoff between attempts
(``broker.backoff_delay_s``), and hands received messages to one bounded queue read through
:meth:`MqttSession.messages`. When the queue is full the reader waits, so the broker's TCP window
holds the rest (backpressure) instead of memory growing without bound.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import NamedTuple, Self

import aiomqtt
from paho.mqtt import client as mqtt_client

from broker._connection import BACKOFF_BASE_S, BACKOFF_CAP_S, ConnectionParams, backoff_delay_s
from broker._errors import ConnectionLost
from broker._will import Will
from runtime.logs import get_logger

log = get_logger(__name__)


class InboundMessage(NamedTuple):
    """One received message."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class MqttSession:
    """A reconnecting session: ``async with MqttSession(...) as s: async for m in s.messages(): ...``."""

    def __init__(
        self,
        params: ConnectionParams,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]] = (),
        will: Will | None = None,
        clean_session: bool = True,
        keepalive_s: int = 30,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        queue_size: int = 10_000,
        max_inflight: int | None = None,
    ) -> None:
        self.params = params
        # QoS 1 publishes awaiting their PUBACK before paho holds the next ones back (None: paho's 20).
        self._max_inflight = max_inflight
        self.client_id = client_id
        self._subscriptions: dict[str, int] = dict(subscriptions)
        self._will = will
        self._clean_session = clean_session
        self._keepalive_s = keepalive_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._queue: asyncio.Queue[InboundMessage] = asyncio.Queue(maxsize=queue_size)
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self.connections = 0  # successful connects so far; a reconnect makes it > 1

    @property
    def connected(self) -> bool:
        """True while a connection is up and subscribed."""
        return self._connected.is_set()

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-session-{self.client_id}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
            self._runner = None

    async def wait_connected(self, timeout_s: float) -> None:
        """Wait until connected and subscribed; raises ConnectionLost after ``timeout_s``."""
        try:
            await asyncio.wait_for(self._connected.wait(), timeout_s)
        except TimeoutError as exc:
            where = f"{self.params.host}:{self.params.port}"
            raise ConnectionLost(f"not connected to {where} after {timeout_s} s") from exc

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now (when connected) and again after every reconnect."""
        self._subscriptions[topic_filter] = qos
        client = self._client
        if client is not None and self.connected:
            try:
                await client.subscribe(topic_filter, qos)
            except aiomqtt.MqttError as exc:
                # The filter is remembered: the next connection subscribes it.
                raise ConnectionLost(f"subscribe {topic_filter!r}: {exc}") from exc

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Publish once; raises ConnectionLost when not connected (the caller decides to retry)."""
        client = self._client
        if client is None or not self.connected:
            raise ConnectionLost(f"not connected; {topic!r} not published")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise ConnectionLost(f"publish {topic!r}: {exc}") from exc

    def publish_nowait(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> None:
        """Hand a message to the connection without waiting for the broker's PUBACK; raises
        ConnectionLost when not connected or the client refuses it.

        For messages whose delivery the caller tracks end to end anyway (a lamp command: the
        lamp's ``ack``, retried once when missing): aiomqtt's ``publish`` costs an Event, a
        ``wait_for`` and two scans of every pending call per message, which at hundreds of
        commands a second was a fifth of the controller's time. paho still resends an
        unacknowledged QoS 1 message on the same session.
        """
        client = self._client
        if client is None or not self.connected:
            raise ConnectionLost(f"not connected; {topic!r} not published")
        # aiomqtt drives the paho client from this event loop; publishing through it directly
        # is what aiomqtt's own publish does first.
        info = client._client.publish(topic, payload, qos, retain)
        if info.rc != mqtt_client.MQTT_ERR_SUCCESS:
            raise ConnectionLost(f"publish {topic!r}: {mqtt_client.error_string(info.rc)}")

    async def messages(self) -> AsyncIterator[InboundMessage]:
        """Every message received on any subscription, across reconnects, in arrival order."""
        while True:
            yield await self._queue.get()

    def _new_client(self) -> aiomqtt.Client:
        will = None
        if self._will is not None:
            w = self._will
            will = aiomqtt.Will(w.topic, w.payload, qos=w.qos, retain=w.retain)
        return aiomqtt.Client(
            self.params.host,
            self.params.port,
            username=self.params.username,
            password=self.params.password,
            identifier=self.client_id,
            will=will,
            clean_session=self._clean_session,
            keepalive=self._keepalive_s,
            tls_context=ssl.create_default_context() if self.params.tls else None,
            # Without TCP_NODELAY a publish queued behind our own unacknowledged PUBACK waits for
            # the broker's delayed ACK: 40 ms on Linux (measured: controller QoS 1 publish p50
            # 42 ms with, 0.5 ms without, see docs/controller.md).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            max_inflight_messages=self._max_inflight,
        )

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                async with self._new_client() as client:
                    for topic_filter, qos in list(self._subscriptions.items()):
                        await client.subscribe(topic_filter, qos)
                    self._client = client
                    self.connections += 1
                    attempt = 0
                    self._connected.set()
                    log.info("mqtt_connected", client_id=self.client_id, connections=self.connections)
                    async for msg in client.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
                        await self._queue.put(InboundMessage(msg.topic.value, payload, msg.qos, msg.retain))
            except aiomqtt.MqttError as exc:
                log.warning("mqtt_connection_lost", client_id=self.client_id, attempt=attempt, error=str(exc))
            finally:
                self._connected.clear()
                self._client = None
            delay_s = backoff_delay_s(attempt, base_s=self._backoff_base_s, cap_s=self._backoff_cap_s)
            attempt += 1
            await asyncio.sleep(delay_s)
