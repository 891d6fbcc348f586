"""Last wills: the retained ``offline`` state a device leaves behind when its connection dies."""

from __future__ import annotations

from dataclasses import dataclass

from broker._payloads import offline_will
from broker._topics import device_topic


@dataclass(frozen=True)
class Will:
    """A last will for either client library: topic, payload, QoS and retain flag."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


def device_will(district_code: str, device_id: str, bdseq: int) -> Will:
    """The will of one device connection: retained ``{"state":"offline","bdseq":n}`` on its state topic."""
    return Will(device_topic(district_code, device_id, "state"), offline_will(bdseq), qos=1, retain=True)
