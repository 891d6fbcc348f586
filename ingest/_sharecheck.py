"""Does a broker share subscriptions? ``probe_shared_subscriptions`` answers for
``--subscription auto`` (several workers or one); ``shared_subscriptions_ignored`` is the check
behind ``--subscription shared`` (issue 16).

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
from typing import Final

import paho.mqtt.client as mqtt

from broker import ConnectionParams, FailoverClient, paho_client

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
