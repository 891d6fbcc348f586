"""Who may publish and subscribe where: one neutral rule list rendered for Mosquitto and EMQX.

Every grant is a literal topic or a filter fixed by the generator; no rule is built from a name
at connect time (no ``pattern`` / ``%c`` / ``%u``, no ``${clientid}``), so a client id such as
``#`` could never widen a rule (CVE-2017-7650) even if the identity check were bypassed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from broker.security._errors import UnsafeAclError
from broker.security._ids import (
    ALERTS_PREFIX,
    CITY_DISTRICT,
    DEVICE_PREFIX,
    SHARE_CHECK_PREFIX,
    UPLINK_CHANNELS,
    alerts_topic,
    device_topic,
)
from broker.security._registry import Principal, Registry

Access = Literal["read", "write"]
"""``read``: subscribe and receive; ``write``: publish (Mosquitto acl_file vocabulary)."""


@dataclass(frozen=True, slots=True)
class Grant:
    """One allowed (access, topic filter) for one principal."""

    access: Access
    topic: str


_ALL_DEVICES = f"{DEVICE_PREFIX}/+/+"


def grants_for(p: Principal) -> tuple[Grant, ...]:
    """The topics ``p`` may use; empty for a revoked principal."""
    if p.revoked:
        return ()
    if p.role == "device":
        if p.district_code is None:
            raise UnsafeAclError(f"device {p.name!r} has no district")
        own = [Grant("write", device_topic(p.district_code, p.name, ch)) for ch in UPLINK_CHANNELS]
        return (*own, Grant("read", device_topic(p.district_code, p.name, "cmd")))
    if p.role == "ingest":
        # Everything devices say (and the commands, to store them); never a publish to them. The
        # $share lines are for EMQX; Mosquitto's acl_file never checks a SUBSCRIBE and checks a
        # shared delivery against the message's own topic (measured on 2.0.11, docs/security.md).
        # No $SYS: an ingest with an account does not probe the broker (streetlight/cli/ingest.py).
        # Its one publish is the in-session share check, to a topic of its own that it reads back
        # through its share group (ingest/_sharecheck.py); Mosquitto would PUBACK and drop it
        # without the write grant, and the worker would take that for a broker without $share.
        check = f"{SHARE_CHECK_PREFIX}/{p.name}"
        return (
            Grant("read", f"{_ALL_DEVICES}/#"),
            Grant("read", f"$share/ingest/{_ALL_DEVICES}/#"),
            Grant("write", check),
            Grant("read", check),
            Grant("read", f"$share/ingest/{check}"),
        )
    if p.role == "controller":
        return (
            Grant("write", f"{_ALL_DEVICES}/cmd"),
            Grant("write", f"{ALERTS_PREFIX}/+/alerts"),
            *(Grant("read", f"{_ALL_DEVICES}/{ch}") for ch in ("birth", "state", "event", "ack")),
            *(Grant("read", f"$share/controller/{_ALL_DEVICES}/{ch}") for ch in ("event", "ack")),
        )
    if p.role == "api":
        # The console shows alerts and which lamps are online; telemetry comes from the database.
        return (Grant("read", f"{ALERTS_PREFIX}/+/alerts"), Grant("read", f"{_ALL_DEVICES}/state"))
    if p.role == "control_centre":
        if p.district_code == CITY_DISTRICT:
            return (Grant("read", f"{ALERTS_PREFIX}/+/alerts"),)
        if p.district_code is None:
            raise UnsafeAclError(f"control centre {p.name!r} has no district")
        return (Grant("read", alerts_topic(p.district_code)),)
    raise UnsafeAclError(f"no ACL rule for role {p.role!r}")


def acl_table(registry: Registry) -> dict[str, tuple[Grant, ...]]:
    """Grants per active principal; refuses a table that grants nothing."""
    table = {p.name: grants_for(p) for p in registry if not p.revoked}
    if not any(table.values()):
        # Mosquitto before 1.5.3 treated an ACL file without rules as no ACL at all, i.e. allow
        # everything (CVE-2018-12550). Never produce one, whatever the broker version.
        raise UnsafeAclError("the ACL would contain no rules; refusing to write it")
    return table
