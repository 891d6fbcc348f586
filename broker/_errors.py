"""The messaging layer's exceptions; every library error is translated into one of these.

::

    BrokerError                      base of everything raised by ``broker``
    ├── TopicError(topic, reason)    a topic that is not DESIGN.md §3 (also ValueError)
    ├── PayloadError(field, reason)  a payload refused at the boundary (also ValueError);
    │                                ``str(exc) == f"{field}: {reason}"``, ready for a dead letter
    ├── MqttUrlError(url, reason)    an MQTT URL we cannot connect with (also ValueError)
    └── ConnectionLost(reason)       the broker went away during an operation that needed it
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base class of the messaging layer's errors."""


class TopicError(BrokerError, ValueError):
    """A topic (or a part of one, such as a device id) outside the v1 namespace."""

    def __init__(self, topic: str, reason: str) -> None:
        super().__init__(f"{topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class PayloadError(BrokerError, ValueError):
    """A payload refused by validation; ``field`` names where, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MqttUrlError(BrokerError, ValueError):
    """An ``mqtt://`` / ``mqtts://`` URL that does not name a broker."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url!r}: {reason}")
        self.url = url
        self.reason = reason


class ConnectionLost(BrokerError):
    """The broker connection is down (or went down) while an operation needed it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
