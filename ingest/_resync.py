"""Devices' connectivity without relying on retained messages arriving on a wildcard subscription.

A device's ``state`` is retained (docs/protocol.md), and Mosquitto sends every retained state to a
new ``sl/v1/+/+/state`` subscription. RabbitMQ 3.10 does not: it delivers a retained message only
to a subscription naming its exact topic, so an ingest on a fresh session (first start, a session
the broker expired, a new group) would never learn that the lamps already online are online. So
ingest asks, once per process, for the retained state of every device it hears from without having
seen a state of it: it subscribes to that device's exact state topic (which every broker answers
with the retained copy, through the same write path, bdseq rules included) and unsubscribes once
the state arrived or after ``wait_s`` (a device that never published one). On Mosquitto the states
come with the wildcard subscription, so nothing is asked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from broker import device_topic

# How long an exact subscription waits for a retained state before it is dropped.
RESYNC_WAIT_S: Final = 10.0
# Topics per SUBSCRIBE/UNSUBSCRIBE packet: a fleet's first minute asks for thousands.
TOPICS_PER_PACKET: Final = 200
# Devices remembered as known; past it (ids invented by a flood) the memory starts again, which
# costs at most one more question per real device.
MAX_REMEMBERED: Final = 1_000_000


@dataclass
class StateResync:
    """Which exact state topics to subscribe and unsubscribe (pure; the worker does the MQTT)."""

    wait_s: float = RESYNC_WAIT_S
    _stated: set[str] = field(default_factory=set)  # devices whose state this process stored
    _asked: dict[str, tuple[str, float]] = field(default_factory=dict)  # device -> (topic, deadline)

    def after_batch(
        self, heard: Iterable[tuple[str, str]], stated: Iterable[str], now_s: float
    ) -> tuple[list[str], list[str]]:
        """(topics to subscribe, topics to unsubscribe) after a committed batch.

        ``heard``: (district, device) of every device a message came from; ``stated``: devices
        whose state message the batch held.
        """
        drop: list[str] = []
        if len(self._stated) > MAX_REMEMBERED:
            self._stated.clear()
        for device in stated:
            self._stated.add(device)
            asked = self._asked.pop(device, None)
            if asked is not None:
                drop.append(asked[0])
        ask: list[str] = []
        for district, device in heard:
            if device in self._stated or device in self._asked:
                continue
            topic = device_topic(district, device, "state")
            self._asked[device] = (topic, now_s + self.wait_s)
            ask.append(topic)
        return ask, drop + self.expired(now_s)

    def expired(self, now_s: float) -> list[str]:
        """Topics whose retained state did not come in time (no retained state): to unsubscribe."""
        late = [d for d, (_t, deadline) in self._asked.items() if deadline <= now_s]
        out = [self._asked.pop(d)[0] for d in late]
        self._stated.update(late)  # asked once per process; its next live state is stored anyway
        return out

    def forget_asked(self, topics: Iterable[str]) -> None:
        """The subscription could not be sent (no connection): ask again when heard again."""
        gone = set(topics)
        for device in [d for d, (t, _dl) in self._asked.items() if t in gone]:
            del self._asked[device]


def chunks(topics: list[str], size: int = TOPICS_PER_PACKET) -> list[list[str]]:
    """``topics`` cut into packets of at most ``size``."""
    return [topics[i : i + size] for i in range(0, len(topics), size)]
