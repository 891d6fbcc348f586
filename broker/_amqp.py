"""The device topics as RabbitMQ routes them to AMQP 0-9-1: the ingest quorum queue and its bindings.

RabbitMQ's MQTT plugin publishes every MQTT message to the ``amq.topic`` exchange with the topic
as routing key, ``/`` and ``.`` swapped (``sl/v1/11/lamp-1/telemetry`` is routed as
``sl.v1.11.lamp-1.telemetry``). A durable quorum queue bound there for the uplink channels is
replicated on the cluster's nodes (a majority keeps it) and split among its consumers, which
RabbitMQ's MQTT side cannot do (no ``$share``). With QoS 1 the plugin answers PUBACK only once
every queue the message was routed to has confirmed it: a quorum queue confirms after a majority
of its replicas wrote it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from broker._errors import BrokerError
from broker._topics import DEVICE_PREFIX, UPLINK_CHANNELS

INGEST_QUEUE: Final = "streetlight.ingest"
TOPIC_EXCHANGE: Final = "amq.topic"
AMQP_PREFETCH: Final = 2000


class AmqpUrlError(BrokerError, ValueError):
    """An AMQP address that does not name a broker."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{_without_secret(url)!r}: {reason}")


def _without_secret(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable>"
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@dataclass(frozen=True, slots=True)
class AmqpSource:
    """Where ingest consumes over AMQP 0-9-1: the nodes' addresses (any live one serves), the queue
    and how many unacknowledged messages one consumer may hold (its ``basic.qos`` prefetch)."""

    urls: tuple[str, ...]
    queue: str = INGEST_QUEUE
    prefetch: int = AMQP_PREFETCH

    def __post_init__(self) -> None:
        if not self.urls:
            raise AmqpUrlError("", "no AMQP address given")
        if not 1 <= self.prefetch <= 65535:
            raise AmqpUrlError(self.urls[0], f"prefetch must be 1..65535, got {self.prefetch}")


def parse_amqp_urls(spec: str) -> tuple[str, ...]:
    """``amqp://user:secret@host:port/vhost[,amqp://...]`` into a tuple; AmqpUrlError when one is not."""
    urls = tuple(u.strip() for u in spec.split(",") if u.strip())
    if not urls:
        raise AmqpUrlError(spec, "no AMQP address given")
    for url in urls:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise AmqpUrlError(url, str(exc)) from exc
        if parts.scheme not in ("amqp", "amqps"):
            raise AmqpUrlError(url, "the scheme must be amqp:// or amqps://")
        if not parts.hostname:
            raise AmqpUrlError(url, "no host")
        del port
    return urls


def ingest_routing_keys() -> list[str]:
    """The ``amq.topic`` binding keys of the uplink channels (``sl.v1.*.*.telemetry``, ...)."""
    prefix = DEVICE_PREFIX.replace("/", ".")
    return [f"{prefix}.*.*.{channel}" for channel in UPLINK_CHANNELS]


def topic_of(routing_key: str) -> str:
    """The MQTT topic of a message routed with ``routing_key`` (``.`` and ``/`` swapped back)."""
    return routing_key.translate(_SWAP)


_SWAP: Final = str.maketrans({".": "/", "/": "."})
