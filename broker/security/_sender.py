"""The backend's second wall: is the sender of a message who the topic says it is?

Pure functions for the ingest path. The broker ACL already pins each device to its own topics;
these checks catch what the broker cannot know (a registry out of date, a misconfigured broker, a
payload naming another device) and turn it into counted refusals instead of stored lies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol


class Registered(Protocol):
    """What the check needs to know of a registered identity (a ``Principal`` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def district_code(self) -> str | None: ...
    @property
    def revoked(self) -> bool: ...


Refusal = Literal[
    "unknown_device", "revoked_device", "not_a_device", "username_mismatch", "payload_id_mismatch"
]
Flag = Literal["district_mismatch"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Accept or refuse one message; ``flags`` are accepted anomalies worth an alert."""

    accepted: bool
    reason: Refusal | None = None
    flags: tuple[Flag, ...] = ()
    detail: str = ""


def check_sender(
    topic_device_id: str,
    topic_district: str,
    registry_entry: Registered | None,
    client_username: str | None,
    *,
    payload_device_id: str | None = None,
) -> Verdict:
    """Check a message on ``sl/v1/{topic_district}/{topic_device_id}/...`` against the registry."""
    if registry_entry is None:
        return Verdict(False, "unknown_device", detail=f"{topic_device_id!r} is not registered")
    if registry_entry.role != "device" or registry_entry.name != topic_device_id:
        return Verdict(False, "not_a_device", detail=f"{registry_entry.name!r} is a {registry_entry.role}")
    if registry_entry.revoked:
        return Verdict(False, "revoked_device", detail=f"{topic_device_id!r} is revoked")
    if client_username is not None and client_username != topic_device_id:
        return Verdict(False, "username_mismatch", detail=f"{client_username!r} wrote as {topic_device_id!r}")
    if payload_device_id is not None and payload_device_id != topic_device_id:
        return Verdict(False, "payload_id_mismatch", detail=f"payload claims {payload_device_id!r}")
    if registry_entry.district_code != topic_district:
        # Accepted but flagged: a lamp re-registered in another district, or a registry out of date.
        return Verdict(
            True,
            flags=("district_mismatch",),
            detail=f"registered in {registry_entry.district_code}, speaks in {topic_district}",
        )
    return Verdict(True)
