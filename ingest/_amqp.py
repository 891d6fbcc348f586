"""An ingest worker consuming a RabbitMQ quorum queue over AMQP 0-9-1: competing consumers.

The MQTT worker (``ingest/_worker.py``) with another transport: the same flusher thread batches,
writes or spools and only then acknowledges, through the same code. What differs is the receive
side: this worker's own thread connects to the first live node of ``AmqpSource.urls`` (in turn,
starting after the one that failed), declares the durable quorum queue and its ``amq.topic``
bindings (broker/_amqp.py), and consumes it with a ``basic.qos`` prefetch. Every worker is one
consumer: RabbitMQ hands each message to one of them, so N workers split the stream without a
lease, and a worker's unacknowledged messages go to the others when its connection drops (or it
dies). A redelivered message that had been committed before is refused by the rows' dedup key
(``store/writer.py``: ``ON CONFLICT DO NOTHING`` on device, time, seq) and raises no alert twice
(``ingest/_write.py``).

pika's connection belongs to this thread: the flusher's acknowledgements are handed to it with
``add_callback_threadsafe`` and sent there, one ``multiple`` ack for the run of delivery tags that
closes the gap below and single acks for the rest (a message not stored, its spool full, stays
unacknowledged and comes back after a reconnect).

Sequence gaps raise no ``data_loss`` alert here (``_before_write``): each worker sees only a part
of each device's stream; the jobs leader checks the stored rows instead (ingest/_jobs.py).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from alerts import Locator
from broker import TOPIC_EXCHANGE, AmqpSource, backoff_delay_s, ingest_routing_keys, topic_of
from ingest._lease import ConsumerLease
from ingest._metrics import IngestMetrics
from ingest._process import Processed, SenderCheckFn
from ingest._worker import IngestWorker, WorkerConfig
from ingest._write import FaultHook
from runtime.logs import get_logger

log = get_logger(__name__)

QUORUM_QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


def declare_ingest_queue(channel: BlockingChannel, queue: str) -> None:
    """The durable quorum queue and its bindings for the uplink channels (idempotent)."""
    channel.queue_declare(queue, durable=True, arguments=QUORUM_QUEUE_ARGUMENTS)
    for key in ingest_routing_keys():
        channel.queue_bind(queue, TOPIC_EXCHANGE, routing_key=key)


def connect_first_live(urls: tuple[str, ...], start: int) -> tuple[pika.BlockingConnection, int]:
    """A connection to the first node that answers, trying ``urls`` in turn from ``start``;
    returns it and the index of its URL. pika's AMQPConnectionError when none answers."""
    order = [(start + i) % len(urls) for i in range(len(urls))]
    last: Exception | None = None
    for i in order:
        params = pika.URLParameters(urls[i])
        params.heartbeat = params.heartbeat if params.heartbeat is not None else 15
        params.socket_timeout = 3
        params.connection_attempts = 1
        try:
            return pika.BlockingConnection(params), i
        except pika.exceptions.AMQPConnectionError as exc:
            last = exc
    raise pika.exceptions.AMQPConnectionError(f"no AMQP node answers: {last}")


def _close_quietly(connection: pika.BlockingConnection) -> None:
    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
        if connection.is_open:
            connection.close()


class AmqpIngestWorker(IngestWorker):
    """Consume ``config.amqp``'s quorum queue, batch, write (or spool), then acknowledge."""

    def __init__(
        self,
        config: WorkerConfig,
        metrics: IngestMetrics | None = None,
        *,
        check_sender: SenderCheckFn | None = None,
        on_faults: FaultHook | None = None,
        on_batch: Callable[[Processed], None] | None = None,
        lease: ConsumerLease | None = None,
        locate: Locator | None = None,
    ) -> None:
        if config.amqp is None:
            raise ValueError("AmqpIngestWorker needs WorkerConfig.amqp")
        if lease is not None:
            raise ValueError("AMQP consumers share the queue: no lease")
        super().__init__(
            config, metrics, check_sender=check_sender, on_faults=on_faults, on_batch=on_batch, locate=locate
        )

    def _init_transport(self) -> None:
        assert self.config.amqp is not None
        self.source: AmqpSource = self.config.amqp
        self._amqp: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._node = -1  # the index of the URL connected to
        # The I/O thread's record of what it acknowledged on the current channel: every tag below
        # ``_acked_below`` and those in ``_acked_single``.
        self._acked_below = 1
        self._acked_single: set[int] = set()
        self._io_thread: threading.Thread | None = None

    @property
    def node(self) -> int:
        """The index in ``AmqpSource.urls`` of the node this worker consumes from (-1: none)."""
        return self._node if self._connected.is_set() else -1

    # -- the connection's thread

    def _run_alone(self) -> None:
        self._io_thread = threading.current_thread()
        start = self.config.index % len(self.source.urls)  # workers spread over the nodes
        attempt = 0
        while not self._stop.is_set():
            try:
                connection, self._node = connect_first_live(self.source.urls, start)
            except pika.exceptions.AMQPConnectionError as exc:
                delay = backoff_delay_s(attempt, base_s=0.2, cap_s=5.0)
                log.warning("amqp_unreachable", error=str(exc), retry_in_s=round(delay, 2))
                attempt += 1
                self._stop.wait(delay)
                continue
            try:
                self._consume(connection)
                attempt = 0
            except (pika.exceptions.AMQPError, OSError) as exc:
                log.warning(
                    "ingest_connection_lost", node=self._node, error=type(exc).__name__, detail=str(exc)
                )
                start = self._node + 1  # the next node first: this one may be gone
                attempt += 1
                self._stop.wait(backoff_delay_s(attempt, base_s=0.05, cap_s=2.0))
            finally:
                self._connected.clear()
                self.metrics.subscribed = False
                self._channel = None
                self._amqp = None
                _close_quietly(connection)

    def _consume(self, connection: pika.BlockingConnection) -> None:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.source.prefetch)
        declare_ingest_queue(channel, self.source.queue)
        self._generation += 1  # messages of an earlier channel are never acked on this one
        self._acked_below = 1
        self._acked_single = set()
        self._amqp, self._channel = connection, channel
        tag = channel.basic_consume(self.source.queue, self._on_delivery)
        self._connected.set()
        self.metrics.subscribed = True
        log.info("ingest_consuming", node=self._node, queue=self.source.queue, prefetch=self.source.prefetch)
        while not self._stop.is_set():
            if self._reconnect_wanted:
                # Messages not stored were left unacknowledged: a new channel gets them again.
                self._reconnect_wanted = False
                log.warning("reconnecting_for_redelivery")
                return
            connection.process_data_events(time_limit=0.2)
        # Stopping: no new deliveries; the flusher's last batch is committed and acknowledged here.
        channel.basic_cancel(tag)
        flusher = self._flusher
        deadline = time.monotonic() + 30
        while flusher is not None and flusher.is_alive() and time.monotonic() < deadline:
            connection.process_data_events(time_limit=0.05)
        connection.process_data_events(time_limit=0)

    def _on_delivery(
        self,
        _channel: BlockingChannel,
        method: pika.spec.Basic.Deliver,
        _properties: pika.spec.BasicProperties,
        body: bytes,
    ) -> None:
        if method.redelivered:
            self.metrics.redelivered += 1
        self._on_publish(topic_of(method.routing_key or ""), body, 1, int(method.delivery_tag or 0))

    def _send_acks(self, mids: list[int], generation: int) -> None:
        connection = self._amqp
        if not mids or connection is None:
            return
        if threading.current_thread() is self._io_thread:
            self._ack_now(generation, mids)
            return
        try:
            connection.add_callback_threadsafe(functools.partial(self._ack_now, generation, mids))
        except (pika.exceptions.AMQPError, OSError, AttributeError):
            # The connection is gone: the queue redelivers these; committed ones are not stored twice.
            log.info("acks_dropped_with_connection", count=len(mids))

    def _ack_now(self, generation: int, tags: list[int]) -> None:
        channel = self._channel
        if generation != self._generation or channel is None or not channel.is_open:
            return
        below, single = self._acked_below, self._acked_single
        fresh = sorted({t for t in tags if t >= below and t not in single})
        if not fresh:
            return
        fresh_set = set(fresh)
        top = 0
        while below in fresh_set or below in single:
            if below in fresh_set:
                top = below
            else:
                single.discard(below)
            below += 1
        self._acked_below = below
        if top:
            channel.basic_ack(top, multiple=True)
        for t in fresh:
            if t >= below:
                channel.basic_ack(t)
                single.add(t)

    def _close_transport(self) -> None:
        if self._amqp is not None:
            _close_quietly(self._amqp)

    # -- what MQTT has and a queue has not

    def _before_write(self, batch: Processed) -> None:
        """No ``data_loss`` alert from this worker's sequence gaps: the queue hands each device's
        messages to whichever consumer is free, so a worker sees gaps that another fills, and
        the queue itself drops nothing (no length limit). The gaps stay counted per worker in
        ``ingest_seq_gaps_total``; the jobs leader's check of the stored rows raises the alert."""
        batch.seq_gap_devices.clear()

    def _resync_states(self, batch: Processed, messages: Any) -> None:
        """No retained states on a queue: the devices' states come as they are published."""

    def _resync_subscriptions(self, ask: list[str], drop: list[str]) -> None:
        """No subscriptions to change on a queue."""
