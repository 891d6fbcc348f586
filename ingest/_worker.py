"""One ingest worker: an MQTT subscriber whose messages are committed (or spooled) before they are acked.

Over 500 lines on purpose: the MQTT callbacks, the flusher loop and the spool replay share
one piece of state (the deque of received messages, the connection generation, the spool's
order) whose invariant, committed or spooled before acked, is checked by reading them
together; the decoding, writing, spooling and lease rules are already in their own modules
(``_process``, ``_write``, ``_spool``, ``_lease``).

Two threads do the work:

* paho's network thread receives; ``on_message`` only appends ``(topic, payload, qos, mid,
  connection)`` to a deque (the bare minimum a subscriber does, so the receive rate stays close to
  a bare paho client's);
* the flusher thread takes what arrived when the batch is full (``max_rows``), old
  (``max_delay_s``) or the stream paused (``idle_s``: the broker stops sending QoS 1 messages once
  its in-flight window is unacknowledged, so waiting longer would only stall it), decodes and
  validates the batch, writes it in one transaction, then acknowledges its QoS 1 messages.

When the database is unreachable a batch goes to the spool (fsynced) and is acked; the spool is
replayed, in order, once the database answers again, and new batches queue behind it in the
spool meanwhile. A batch that can be neither committed nor spooled is not acked: the broker keeps
its QoS 1 messages and sends them again when this worker reconnects.

With a ``lease`` (a plain subscription shared by a group of instances, ingest/_lease.py) the
worker connects to the broker only while it holds the group's lease, and steps down (disconnects,
dropping what it has not committed: the next holder gets it again) when another instance holds it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from alerts import Locator
from broker import (
    DEVICE_BURST,
    DEVICE_RATE_PER_S,
    INGEST_GROUP,
    AmqpSource,
    BufferedReadClient,
    ConnectionParams,
    DeviceRateLimiter,
    TopicError,
    backoff_delay_s,
    ingest_filters,
    paho_client,
    parse_device_topic,
)
from ingest._lease import ConsumerLease
from ingest._metrics import IngestMetrics
from ingest._process import Processed, RawMessage, SenderCheckFn, SeqTracker, add_flood, process
from ingest._registry import redact_group
from ingest._resync import StateResync, chunks
from ingest._spool import Spool, SpoolFull
from ingest._write import FaultHook, write_batch
from runtime.logs import bind_context, bound_context, get_logger
from store import StoreUnavailable
from store.connections import close_quietly, connect_or_unavailable
from store.types import Conn

log = get_logger(__name__)

Item = tuple[str, bytes, int, int, int]  # topic, payload, qos, mid, connection generation


@dataclass
class WorkerConfig:
    """How one worker connects, batches and spools."""

    mqtt: ConnectionParams | None
    """The MQTT broker to subscribe on; None with ``amqp`` (the AMQP worker, ingest/_amqp.py)."""
    database_url: str
    spool_path: Path
    index: int = 0
    shared: bool = True
    client_id: str = ""
    qos: int = 1
    max_rows: int = 5000
    max_delay_s: float = 0.2
    idle_s: float = 0.005
    spool_max_bytes: int = 1 << 30
    clean_session: bool = False
    # The group's name is a secret (ingest/_registry.py): kept out of reprs and logs.
    share_group: str = field(default=INGEST_GROUP, repr=False)
    filters: list[str] = field(default_factory=list, repr=False)
    retired_filters: list[str] = field(default_factory=list, repr=False)
    """Filters of a rotated-out share group, unsubscribed on every connect (a persistent session
    keeps the old group's subscriptions, in which devices that learnt its name take turns)."""
    # Per-device bound in the receive path (broker/_ratelimit.py); 0 turns it off.
    device_rate_per_s: float = DEVICE_RATE_PER_S
    device_burst: float = DEVICE_BURST
    state_resync: bool = True
    """Ask for the retained state of devices heard without one (ingest/_resync.py)."""
    amqp: AmqpSource | None = None
    """Consume the quorum queue of a RabbitMQ cluster over AMQP 0-9-1 instead (``AmqpIngestWorker``)."""

    def __post_init__(self) -> None:
        if not self.client_id:
            self.client_id = f"streetlight-ingest-{self.index}"
        if not self.filters:
            self.filters = ingest_filters(shared_subscription=self.shared, group=self.share_group)


class IngestWorker:
    """Subscribe, batch, write, acknowledge; ``run`` until ``stop`` is called."""

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
        self.config = config
        self._locate = locate  # a birth's neighbourhood code (the gazetteer's), for its registration
        self._lease = lease
        self.metrics = metrics or IngestMetrics(worker=config.index)
        self._check_sender = check_sender
        self._on_faults = on_faults
        self._on_batch = on_batch
        self._queue: deque[Item] = deque()
        self._first_at = 0.0
        self._generation = 0
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._reconnect_wanted = False
        self._unacked_dropped = False
        self._seqs = SeqTracker()  # live and replayed messages alike, in the order stored
        self._limiter = (
            DeviceRateLimiter(config.device_rate_per_s, config.device_burst)
            if config.device_rate_per_s > 0
            else None
        )
        self._admit = self._limiter.admit if self._limiter is not None else None
        # QoS 1 messages refused in the receive path (over the rate, retained): (mid, connection).
        # They are acknowledged without being stored, by the flusher, many in one write.
        self._refused_acks: deque[tuple[int, int]] = deque()
        self._replayed_from_spool = 0  # messages of the current spool already committed by a replay
        self._conn: Conn | None = None
        self._db_retry_at = 0.0
        self._db_failures = 0
        self._resync = StateResync()
        self.spool = Spool(config.spool_path, config.spool_max_bytes)
        self.metrics.spool_bytes = self.spool.size_bytes
        self._flusher: threading.Thread | None = None
        self._init_transport()

    def _init_transport(self) -> None:
        """The MQTT client (paho); ``AmqpIngestWorker`` has its own transport instead."""
        config = self.config
        self.client = paho_client(
            self._mqtt,
            config.client_id,
            clean_session=config.clean_session,
            manual_ack=True,
            buffered_reads=True,
        )
        # Let the broker send as much as its own in-flight limit allows; we ack after commit.
        self.client.max_inflight_messages_set(65_535)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        if isinstance(self.client, BufferedReadClient):
            self.client.set_publish_handler(self._on_publish)
        self.client.on_subscribe = self._on_subscribe

    @property
    def _mqtt(self) -> ConnectionParams:
        if self.config.mqtt is None:
            raise ValueError("IngestWorker subscribes over MQTT: WorkerConfig.mqtt is required")
        return self.config.mqtt

    # -- MQTT side (paho's thread)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("ingest_connect_refused", worker=self.config.index, reason=str(reason))
            return
        self._generation += 1
        retired = [f for f in self.config.retired_filters if f not in self.config.filters]
        if retired:
            client.unsubscribe(retired)
        client.subscribe([(f, self.config.qos) for f in self.config.filters])
        # paho's thread: the worker is a key of each event, not bound context.
        log.info(
            "ingest_connected",
            worker=self.config.index,
            session_present=getattr(flags, "session_present", None),
            filters=[redact_group(f) for f in self.config.filters],
            retired_filters=len(retired),  # of a retired share group, unsubscribed
        )

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        refused = [r for r in reasons if r.is_failure]
        if refused:
            log.error(
                "ingest_subscription_refused", worker=self.config.index, reasons=[str(r) for r in refused]
            )
            return
        self.metrics.subscribed = True
        self._connected.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._connected.clear()
        self.metrics.subscribed = False
        if not self._stop.is_set():
            # paho reconnects.
            log.warning("ingest_connection_lost", worker=self.config.index, reason=str(reason))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # The packets paho handles itself (one split across reads, or without the publish handler).
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # a topic that is not UTF-8; brokers refuse these, but never crash
            topic = "<not utf-8>"
        self._on_publish(topic, bytes(msg.payload), msg.qos, msg.mid, bool(msg.retain))

    def _on_publish(self, topic: str, payload: bytes, qos: int, mid: int, retain: bool = False) -> None:
        if retain and not topic.endswith("/state"):
            self._refuse_retained(topic, qos, mid)
            return
        admit = self._admit
        if admit is not None and not admit(topic):
            if qos:
                self._refused_acks.append((mid, self._generation))
            return
        queue = self._queue
        if not queue:
            self._first_at = time.monotonic()
        queue.append((topic, payload, qos, mid, self._generation))

    def _refuse_retained(self, topic: str, qos: int, mid: int) -> None:
        # Only ``state`` is retained in the protocol; anything else from the broker's retained
        # store is an old message replayed at every (re)subscription (a retained ``tamper``
        # would raise its alert again after every reconnect): counted, logged, never stored.
        self.metrics.retained_ignored += 1
        log.warning("retained_message_ignored", topic=topic, worker=self.config.index)
        if qos:
            self._refused_acks.append((mid, self._generation))

    # -- lifecycle

    def run(self) -> None:
        """Connect and work until :meth:`stop`; flushes what was received before returning."""
        with bound_context(worker=self.config.index):
            self._run()

    def _run(self) -> None:
        flusher = threading.Thread(
            target=self._flush_loop, name=f"ingest-flush-{self.config.index}", daemon=True
        )
        flusher.start()
        self._flusher = flusher
        try:
            if self._lease is not None:
                self._run_leased(self._lease)
            else:
                self._run_alone()
        finally:
            flusher.join(timeout=30)
            self._close_transport()
            self.spool.close()
            if self._conn is not None:
                self._conn.close()
            if self._lease is not None:
                self._lease.release()  # after the last batch is committed and acked

    def _close_transport(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _run_alone(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.client.connect_any(keepalive=30)  # the first node that answers
                break
            except OSError as exc:
                delay = backoff_delay_s(attempt, cap_s=10.0)
                log.warning("broker_unreachable", error=str(exc), retry_in_s=round(delay, 1))
                attempt += 1
                self._stop.wait(delay)
        self.client.loop_start()
        while not self._stop.wait(0.2):
            self._maybe_reconnect()

    def _maybe_reconnect(self) -> None:
        if self._reconnect_wanted:
            # Unacked QoS 1 messages were dropped (spool full): a new connection makes the
            # broker send them again, now that there is room.
            self._reconnect_wanted = False
            log.warning("reconnecting_for_redelivery")
            self.client.disconnect()
            self._loop_stop()
            self.client.reconnect()
            self.client.loop_start()

    def _run_leased(self, lease: ConsumerLease) -> None:
        """Consume only while holding the group's lease; the spool is replayed either way."""
        active = False
        confirmed_at = -1e9
        next_round = 0.0
        self.metrics.standby = True
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_round:
                next_round = now + lease.ttl_s / 3
                held = lease.try_hold()
                if held:
                    confirmed_at = now
                if held and not active:
                    log.info("ingest_lease_taken", key=lease.key, owner=lease.owner, consuming=True)
                    self.client.connect_async_current(keepalive=30)
                    self.client.loop_start()
                    active = True
                    self.metrics.standby = False
                elif held is False and active:
                    self._step_down(lease, "another instance holds the lease")
                    active = False
                elif (
                    held is None
                    and active
                    and not self._connected.is_set()
                    and now - confirmed_at > lease.ttl_s
                ):
                    # Cut off from the database and from the broker: another instance may hold
                    # the lease by now, and reconnecting would take its connection over.
                    self._step_down(lease, "lease unconfirmed while the broker is away")
                    active = False
            if active:
                self._maybe_reconnect()
            self._stop.wait(0.2)

    def _loop_stop(self) -> None:
        """Stop paho's network thread and close its wake-up socket pair: paho 2.2's ``loop_start``
        opens a new pair each time and ``loop_stop`` leaves the old one open."""
        self.client.loop_stop()
        self.client._reset_sockets(sockpair_only=True)

    def _step_down(self, lease: ConsumerLease, why: str) -> None:
        log.warning("ingest_lease_lost", key=lease.key, owner=lease.owner, why=why, standing_by=True)
        self.client.disconnect()
        self._loop_stop()
        self._connected.clear()
        self.metrics.subscribed = False
        self.metrics.standby = True
        # Not committed, so not acknowledged: the lease holder gets these again from the session.
        self._queue.clear()

    def stop(self) -> None:
        """Ask the worker to finish its last batch and return from :meth:`run`."""
        self._stop.set()

    def wait_connected(self, timeout_s: float) -> bool:
        """True once connected and subscribed (for tests and the benchmark)."""
        return self._connected.wait(timeout_s)

    # -- flusher thread

    def _take(self) -> list[Item]:
        queue = self._queue
        n = len(queue)
        return [queue.popleft() for _ in range(n)]

    def _wait_batch(self) -> bool:
        """Sleep until a batch is due; False when stopping with nothing queued."""
        cfg = self.config
        queue = self._queue
        while not queue:
            if self._stop.is_set():
                return False
            self._ack_refused()
            self._maybe_replay()
            if self.config.state_resync:
                self._resync_subscriptions([], self._resync.expired(time.monotonic()))
            time.sleep(0.02)
        seen = len(queue)
        while seen < cfg.max_rows and not self._stop.is_set():
            age = time.monotonic() - self._first_at
            if age >= cfg.max_delay_s:
                break
            time.sleep(min(cfg.idle_s, cfg.max_delay_s - age))
            now_len = len(queue)
            if now_len == seen:
                break  # the stream paused: flush now rather than stall the broker's window
            seen = now_len
        return True

    def _flush_loop(self) -> None:
        bind_context(worker=self.config.index)  # the flusher's own thread
        while True:
            try:
                if not self._wait_batch():
                    return
                first_at = self._first_at
                items = self._take()
                if items:
                    self._handle(items, first_at)
            except Exception:
                # Never let the flusher die: a bug here would stop all acks. Items of the failed
                # batch stay unacked; the broker redelivers them after a reconnect.
                log.exception("batch_failed")
                self._unacked_dropped = True
                self._request_redelivery()
                time.sleep(1.0)

    def _handle(self, items: list[Item], first_at: float) -> None:
        m = self.metrics
        m.received += len(items)
        self._ack_refused()  # whatever the batch's fate (written, spooled), the buckets refill
        messages = [RawMessage(t, p, q) for t, p, q, _mid, _gen in items]
        if self.spool.size_bytes:
            self._to_spool(items, messages)
            self._maybe_replay()
            return
        if time.monotonic() < self._db_retry_at:
            self._to_spool(items, messages)
            return
        try:
            self._write(messages, self._seqs)
        except StoreUnavailable as exc:
            self._db_down(exc)
            self._to_spool(items, messages)
            return
        self._ack(items)
        m.observe_batch(time.monotonic() - first_at)
        m.pending = len(self._queue)

    def _write(self, messages: Sequence[RawMessage], seqs: SeqTracker) -> None:
        m = self.metrics
        now = datetime.now(UTC)
        # The tracker keeps only what was committed: a batch that is not goes to the spool and
        # comes back through this same tracker at replay, in order, so an outage is no gap.
        seqs.begin()
        limiter = self._limiter
        floods = limiter.take_new_floods() if limiter is not None else []
        try:
            now_ms = int(now.timestamp() * 1000)
            batch = process(messages, now_ms, seqs, check_sender=self._check_sender)
            for prefix in floods:
                add_flood(batch, prefix, now_ms)
            conn = self._connection()
            result = write_batch(conn, batch, messages, now, on_faults=self._on_faults, locate=self._locate)
        except BaseException:
            seqs.rollback()
            if limiter is not None:
                limiter.new_floods.extend(floods)  # reported with the next batch that commits
            raise
        seqs.commit()
        m.last_commit_unix_s = time.time()
        m.db_up = True
        self._db_failures = 0
        m.stored_rows += result.inserted
        m.offered_rows += result.offered
        m.duplicates += result.offered - result.inserted
        m.stale_states += result.stale_states
        for d in batch.dead:
            m.dead_letters[d.kind] += 1
            log.info("dead_letter", topic=d.topic, reason=d.reason)
        for f in batch.flags:
            m.flags[f.flag] += 1
            log.warning(
                "device_flagged", device=f.device_id, district=f.district_code, flag=f.flag, detail=f.detail
            )
        m.seq_gaps += batch.event_seq_gaps
        m.seq_repeats += batch.event_seq_repeats
        for dev in batch.devices.values():
            m.seq_gaps += dev.seq_gaps
            m.seq_repeats += dev.seq_duplicates
            if dev.last_ts_ms > 0:
                m.lag_ms_last = now.timestamp() * 1000 - dev.last_ts_ms
        if limiter is not None:
            for prefix in floods:
                log.warning(
                    "device_over_message_rate",
                    device=prefix.rsplit("/", 1)[-1],
                    topic=prefix,
                    limited_total=limiter.limited,
                )
        m.births += len(batch.births)
        m.states += len(batch.states)
        m.acks_seen += batch.acks
        if self._on_batch is not None:
            self._on_batch(batch)
        if self.config.state_resync:
            self._resync_states(batch, messages)

    def _resync_states(self, batch: Processed, messages: Sequence[RawMessage]) -> None:
        heard: dict[str, str] = {}
        known = batch.devices.keys() | {device for _d, device, _b in batch.births}
        for message in messages:
            try:
                parsed = parse_device_topic(message.topic)
            except TopicError:
                continue
            if parsed.device_id in known:
                heard.setdefault(parsed.device_id, parsed.district_code)
        stated = [device for device, _state in batch.states]
        ask, drop = self._resync.after_batch(((d, dev) for dev, d in heard.items()), stated, time.monotonic())
        self._resync_subscriptions(ask, drop)

    def _resync_subscriptions(self, ask: list[str], drop: list[str]) -> None:
        for topics in chunks(drop):
            self.client.unsubscribe(topics)
        for topics in chunks(ask):
            result, _mid = self.client.subscribe([(t, 1) for t in topics])
            if result != mqtt.MQTT_ERR_SUCCESS:
                self._resync.forget_asked(topics)
            else:
                self.metrics.state_resyncs += len(topics)

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = connect_or_unavailable(self.config.database_url, connect_timeout_s=5)
        return self._conn

    def _db_down(self, exc: Exception) -> None:
        m = self.metrics
        if m.db_up:
            log.error("database_unreachable_spooling", spool=str(self.spool.path), error=str(exc))
        m.db_up = False
        m.db_failures += 1
        self._db_failures += 1
        close_quietly(self._conn)
        self._conn = None
        self._db_retry_at = time.monotonic() + backoff_delay_s(self._db_failures, base_s=0.5, cap_s=5.0) + 0.2

    def _to_spool(self, items: list[Item], messages: list[RawMessage]) -> None:
        m = self.metrics
        try:
            self.spool.append(messages)
        except SpoolFull as exc:
            m.dropped += len(items)
            log.error("messages_not_stored", count=len(items), error=str(exc))
            if any(q for _t, _p, q, _mid, _g in items):
                self._unacked_dropped = True
            return
        except OSError as exc:
            m.dropped += len(items)
            log.error("spool_not_written", spool=str(self.spool.path), count=len(items), error=str(exc))
            self._unacked_dropped = True
            return
        m.spooled += len(items)
        m.spool_bytes = self.spool.size_bytes
        self._ack(items)

    def _maybe_replay(self) -> None:
        """Replay the spool into the database once it answers; new batches wait behind it."""
        if not self.spool.size_bytes or time.monotonic() < self._db_retry_at or self._stop.is_set():
            return
        m = self.metrics
        # Through the live tracker: the spool holds, in order, exactly what came after the last
        # committed message (live batches queue behind it), so a replayed message is no gap. A
        # replay cut short resumes after what it committed, so nothing is seen twice.
        done = self._replayed_from_spool
        position = 0
        try:
            for _offset, messages in self.spool.batches():
                for start in range(0, len(messages), self.config.max_rows):
                    chunk = messages[start : start + self.config.max_rows]
                    position += len(chunk)
                    if position <= done:
                        continue
                    self._write(chunk, self._seqs)
                    self._replayed_from_spool = position
                    m.replayed += len(chunk)
                # Live traffic arriving meanwhile goes behind the replay, in the spool.
                if len(self._queue) >= self.config.max_rows:
                    items = self._take()
                    m.received += len(items)
                    self._to_spool(items, [RawMessage(t, p, q) for t, p, q, _mid, _gen in items])
        except StoreUnavailable as exc:
            self._db_down(exc)
            return
        log.info("spool_replayed", count=m.replayed, database="back")
        self.spool.clear()
        self._replayed_from_spool = 0
        m.spool_bytes = 0
        if self._unacked_dropped:
            self._unacked_dropped = False
            self._request_redelivery()

    def _request_redelivery(self) -> None:
        self._reconnect_wanted = True

    def _ack_refused(self) -> None:
        """Refill the devices' buckets and acknowledge the QoS 1 messages refused in the receive
        path (of this connection)."""
        if self._limiter is not None:
            self._limiter.refill(time.monotonic())
            self.metrics.rate_limited = self._limiter.limited
        refused = self._refused_acks
        if not refused:
            return
        generation = self._generation
        mids = [mid for mid, gen in (refused.popleft() for _ in range(len(refused))) if gen == generation]
        self._send_acks(mids, generation)

    def _send_acks(self, mids: list[int], _generation: int) -> None:
        """Acknowledge these QoS 1 messages of connection ``_generation`` (the flusher's thread)."""
        client = self.client
        if isinstance(client, BufferedReadClient):
            client.ack_many(mids)
        else:
            for mid in mids:
                client.ack(mid, 1)

    def _ack(self, items: list[Item]) -> None:
        generation = self._generation
        # A message from an earlier connection is redelivered on the new one (persistent session)
        # and acked then; acking its old mid now could ack a different message. Ingest subscribes
        # at QoS 0 or 1 (QoS 1 acks go out in one write; a QoS 2 one alone).
        mids = [mid for _t, _p, qos, mid, gen in items if qos == 1 and gen == generation]
        self._send_acks(mids, generation)
        if self.config.qos == 2:  # MQTT only: a queue's acks all went through _send_acks
            client = self.client
            for _t, _p, qos, mid, gen in items:
                if qos == 2 and gen == generation:
                    client.ack(mid, 2)
