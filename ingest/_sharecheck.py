"""Does a broker share subscriptions? ``probe_shared_subscriptions`` answers for
``--subscription auto`` without an account; ``shared_subscriptions_ignored`` is the check behind
``--subscription shared`` without one; ``ShareSelfCheck`` is every shared worker's own check in
its session, the only one made with an account (no extra login: where the broker binds client ids
to usernames a probe login would take the worker's persistent session over).

A broker without shared subscriptions may accept ``$share/g/topic`` as a literal topic filter
(RabbitMQ 3.10 does) and then deliver nothing to it: an ingest forced onto it would consume
nothing, in silence. Two probe clients tell the cases apart: one subscribes to ``T`` plainly, the
other to ``$share/g/T``; the first publishes to ``T``. The plain subscriber getting the messages
and the shared one none proves the broker ignores ``$share``; the plain one getting none means
the probe could not publish (an ACL that forbids the account to publish) and proves nothing.
A broker that names itself Mosquitto or EMQX on ``$SYS`` (both share) is not probed further, so
a deployment whose broker binds client ids to usernames never sees the two probe clients (one
account) take each other's connection.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Final

import paho.mqtt.client as mqtt

from broker import ConnectionParams, FailoverClient, paho_client, share_check_topic, shared
from runtime.logs import get_logger

log = get_logger(__name__)

_PROBE_MESSAGES: Final = 5
# Where Mosquitto and EMQX say who they are (retained or periodic).
_VERSION_TOPICS: Final = ("$SYS/broker/version", "$SYS/brokers/+/version")


def shared_subscriptions_ignored(params: ConnectionParams, timeout_s: float = 3.0) -> str | None:
    """Why the broker is proven to ignore ``$share`` subscriptions, or None (it shares, or cannot tell)."""
    token = uuid.uuid4().hex[:12]
    topic = f"streetlight/probe/{token}"
    got: dict[str, int] = {"plain": 0, "shared": 0}
    version: list[str] = []
    subscribed = threading.Semaphore(0)
    clients: dict[str, FailoverClient] = {}
    filters = {
        "shared": [(f"$share/probe-{token}/{topic}", 1), *((t, 0) for t in _VERSION_TOPICS)],
        "plain": [(topic, 1)],
    }
    for name, topic_filters in filters.items():
        client = paho_client(params, f"streetlight-sharecheck-{name}-{token}")

        def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage, name: str = name) -> None:
            if msg.topic.startswith("$SYS"):
                version.append(msg.payload.decode("utf-8", "replace"))
            else:
                got[name] += 1

        client.on_message = on_message
        client.on_subscribe = lambda *_a: subscribed.release()
        client.on_connect = lambda c, *_a, f=topic_filters: c.subscribe(f)
        clients[name] = client
    try:
        for name, client in clients.items():
            client.connect_any(keepalive=10)
            client.loop_start()
            if not subscribed.acquire(timeout=timeout_s):
                return None  # no SUBACK: not this check's business (the worker will say so)
            if name == "shared":
                deadline = time.monotonic() + timeout_s / 3
                while not version and time.monotonic() < deadline:
                    time.sleep(0.02)
                if version and any(b in version[0].lower() for b in ("mosquitto", "emqx")):
                    return None
        for i in range(_PROBE_MESSAGES):
            clients["plain"].publish(topic, str(i).encode(), qos=1)
        deadline = time.monotonic() + timeout_s
        while got["shared"] < _PROBE_MESSAGES and time.monotonic() < deadline:
            time.sleep(0.02)
        if got["plain"] >= _PROBE_MESSAGES and got["shared"] == 0:
            return (
                f"the broker accepted the subscription {'$share/...'!r} but delivered 0 of "
                f"{_PROBE_MESSAGES} probe messages to it (and all of them to a plain subscriber): "
                "it does not implement shared subscriptions"
            )
        return None
    except OSError:
        return None  # unreachable: the worker's own connection loop reports and retries
    finally:
        for client in clients.values():
            client.loop_stop()
            client.disconnect()


# Probe messages a broker that names itself neither Mosquitto nor EMQX must all deliver through
# a shared subscription before ingest runs several workers on it.
_SHARE_PROBE_MESSAGES: Final = 20


def probe_shared_subscriptions(params: ConnectionParams, timeout_s: float = 2.0) -> tuple[bool, str]:
    """Does this broker deliver ``$share/...`` subscriptions? Returns (answer, how we know).

    Mosquitto (>= 1.6) and EMQX say who they are on ``$SYS``; otherwise (e.g. amqtt, which
    delivered 1 of 100 shared messages, DESIGN.md §5) send probe messages through a shared
    subscription and require every one of them back.
    """
    got: list[bytes] = []
    version: list[str] = []
    subscribed = threading.Event()
    probe_topic = f"streetlight/probe/{uuid.uuid4().hex[:12]}"

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.startswith("$SYS"):
            version.append(msg.payload.decode("utf-8", "replace"))
        else:
            got.append(bytes(msg.payload))

    client = paho_client(params, f"streetlight-probe-{uuid.uuid4().hex[:8]}")
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    try:
        client.connect_any(keepalive=10)
    except OSError as exc:
        return False, f"broker unreachable ({exc}); assuming no shared subscriptions"
    client.loop_start()
    try:
        client.subscribe([("$SYS/broker/version", 0), ("$SYS/brokers/+/version", 0)])
        deadline = time.monotonic() + timeout_s / 2
        while not version and time.monotonic() < deadline:
            time.sleep(0.02)
        if version:
            text = version[0].lower()
            if "mosquitto" in text or "emqx" in text:
                return True, f"broker says {version[0]!r}"
        subscribed.clear()
        client.subscribe(f"$share/probe/{probe_topic}", qos=1)
        subscribed.wait(timeout_s / 2)
        for i in range(_SHARE_PROBE_MESSAGES):
            client.publish(probe_topic, str(i).encode(), qos=1)
        deadline = time.monotonic() + timeout_s
        while len(got) < _SHARE_PROBE_MESSAGES and time.monotonic() < deadline:
            time.sleep(0.02)
        ok = len(got) >= _SHARE_PROBE_MESSAGES
        return ok, f"shared-subscription probe delivered {len(got)} of {_SHARE_PROBE_MESSAGES}"
    finally:
        client.loop_stop()
        client.disconnect()


# The in-session check of a worker with an account (and of every shared worker).
SELF_CHECK_QUIET_S: Final = 5.0
SELF_CHECK_GIVE_UP_S: Final = 600.0


class ShareSelfCheck:
    """A shared worker's proof, in its own session, that the broker delivers its ``$share`` filters.

    No extra login: after the worker's SUBACK it subscribes ``$share/<group>/<its probe topic>``
    (``broker.share_check_topic(client_id)``, granted to the ingest account alone) and publishes one
    QoS 1 probe there. The probe coming back proves sharing; the filter is then unsubscribed. A
    probe the broker acknowledged (PUBACK) that has not come back after ``quiet_s`` in which the
    worker received nothing else either proves the broker ignores ``$share`` (RabbitMQ 3.10 takes
    it as a literal filter), or that its ACL drops the probe (Mosquitto acknowledges a publish its
    ACL denies): ``on_fail`` gets the reason. While other messages keep arriving (a backlog queued
    ahead of the probe) the verdict waits, up to ``give_up_s``, then the check gives up with a
    warning: the subscription delivers, the probe alone does not.

    The worker calls ``after_subscribed`` from each SUBACK, ``on_suback`` first (True: the probe's
    own SUBACK, nothing else to do), ``is_probe`` for each message's topic and ``on_probe`` for a
    probe's payload, from paho's thread; the verdict is reached on a thread of its own.
    """

    def __init__(
        self,
        client: mqtt.Client,
        client_id: str,
        group: str,
        *,
        received: Callable[[], int],
        on_fail: Callable[[str], None],
        quiet_s: float = SELF_CHECK_QUIET_S,
        give_up_s: float = SELF_CHECK_GIVE_UP_S,
    ) -> None:
        self.topic = share_check_topic(client_id)
        self._filter = shared(group, self.topic)
        self._client = client
        self._received = received
        self._on_fail = on_fail
        self._quiet_s = quiet_s
        self._give_up_s = give_up_s
        self._lock = threading.Lock()
        self._round = 0  # one round per connection until the check is done
        self._sub_mid: int | None = None
        self._token = b""
        self._echoed = threading.Event()
        self.done = False
        self.passed = False

    def after_subscribed(self, generation: int) -> None:
        """Start the check on connection ``generation`` (once per connection, until it is done)."""
        with self._lock:
            if self.done or self._round == generation:
                return
            self._round = generation
            self._token = uuid.uuid4().hex.encode()
            self._echoed.clear()
            result, mid = self._client.subscribe(self._filter, qos=1)
            self._sub_mid = mid if result == mqtt.MQTT_ERR_SUCCESS else None

    def on_suback(self, mid: int, refused: bool) -> bool:
        """True when ``mid`` is the probe filter's SUBACK (then the probe is sent)."""
        with self._lock:
            if mid != self._sub_mid or self.done:
                return False
            self._sub_mid = None
            round_ = self._round
            if refused:
                self.done = True
                log.warning(
                    "share_check_unavailable",
                    reason="probe subscription refused",
                    topic=self.topic,
                    hint="re-run streetlight provision: the ingest account needs the probe topic",
                )
                return True
            info = self._client.publish(self.topic, self._token, qos=1)
        threading.Thread(
            target=self._judge, args=(round_, info), name="ingest-share-check", daemon=True
        ).start()
        return True

    def is_probe(self, topic: str) -> bool:
        """Is this message the check's (never stored; acknowledged by the worker)?"""
        return topic == self.topic

    def on_probe(self, payload: bytes) -> None:
        """A probe came back; the current one proves the broker shares."""
        if payload == self._token:
            self._echoed.set()

    def _judge(self, round_: int, info: mqtt.MQTTMessageInfo) -> None:
        started = time.monotonic()
        seen = self._received()
        quiet_from: float | None = None
        while True:
            if self._echoed.wait(0.1):
                self._finish(round_, passed=True)
                return
            now = time.monotonic()
            with self._lock:
                if self._round != round_ or self.done:
                    return  # a new connection started its own round, or the check is over
            if info.is_published():  # else no PUBACK yet (the next connection checks again)
                count = self._received()
                if quiet_from is None or count != seen:
                    seen, quiet_from = count, now
                if now - quiet_from >= self._quiet_s:
                    self._finish(round_, passed=False)
                    return
            if now - started >= self._give_up_s:
                with self._lock:
                    self.done = True
                log.warning(
                    "share_check_inconclusive",
                    topic=self.topic,
                    waited_s=round(now - started),
                    why="messages arrive but the probe did not come back",
                )
                self._client.unsubscribe(self._filter)
                return

    def _finish(self, round_: int, *, passed: bool) -> None:
        with self._lock:
            if self._round != round_ or self.done:
                return
            self.done = True
            self.passed = passed
        self._client.unsubscribe(self._filter)
        if passed:
            log.info("share_check_passed", topic=self.topic)
            return
        self._on_fail(
            f"the broker acknowledged a probe sent to {self.topic!r} but did not deliver it to this "
            f"worker's shared subscription ($share/…/{self.topic}) within {self._quiet_s:g} s: it "
            "does not implement shared subscriptions (RabbitMQ takes $share/... as a literal topic), "
            "or its ACL drops the probe (re-run streetlight provision). Nothing would be consumed: "
            "use --subscription plain --group NAME"
        )
