"""Which names may become MQTT client ids and usernames.

Topic strings are written here rather than imported from ``broker._topics`` because that module
was being written concurrently; TODO: switch to its builders once it is stable.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final

from broker.security._errors import InvalidIdentityError

# DESIGN.md §3: a device id is ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$. Account names follow the same rule
# so that no username can contain '+', '#' (MQTT wildcards: CVE-2017-7650 turned a %c/%u pattern
# ACL into a wildcard with them), '/' (a topic level separator) or '%' (the substitution marker).
IDENTITY_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
DISTRICT_RE: Final = re.compile(r"[0-9]{5}")
# One account per running backend instance: ROLE@INSTANCE (ingest@0, controller@north-a). The
# broker forces each connection's client id to its username (use_username_as_clientid), so two
# instances sharing one account would take each other's connection over. '@' is in no device id,
# so an instance account can never collide with a device, and it is no MQTT wildcard or separator.
SERVICE_ROLES: Final = ("ingest", "controller", "api")
SERVICE_INSTANCE_RE: Final = re.compile(r"(ingest|controller|api)@[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
DEVICE_PREFIX: Final = "sl/v1"
ALERTS_PREFIX: Final = "cc/v1"
# broker._topics.SHARE_CHECK_PREFIX: where an ingest worker checks its shared subscription.
SHARE_CHECK_PREFIX: Final = "svc/v1/sharecheck"
UPLINK_CHANNELS: Final = ("birth", "state", "telemetry", "event", "ack")
CITY_DISTRICT: Final = "11000"
# Seoul's 25 autonomous districts, statistical codes 11010 (Jongno-gu) .. 11250 (Gangdong-gu);
# the same list as geo/data/seoul_districts.geojson (checked by a unit test).
SEOUL_DISTRICTS: Final = tuple(str(code) for code in range(11010, 11251, 10))


def register_device_id(district_code: str, key: str) -> str:
    """The device id provisioning gives the pole ``key`` of a district's lamp register.

    ``lamp-{district}-{12 hex}``: the first 48 bits of SHA-256 over ``district|key``, so the same
    row imported again gets the same id, and the id is ASCII whatever the register's language.
    """
    check_district(district_code)
    digest = hashlib.sha256(f"{district_code}|{key}".encode()).hexdigest()[:12]
    return f"lamp-{district_code}-{digest}"


def identity_problem(name: str) -> str | None:
    """Why ``name`` may not be a client id / username, or None when it may."""
    for bad in "+#/%":
        if bad in name:
            return f"contains {bad!r}, which the broker could read as a wildcard, separator or pattern"
    # fullmatch, not match: '$' in a Python regex would accept a trailing newline.
    if IDENTITY_RE.fullmatch(name) is None:
        return "must match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$ (ASCII letters, digits, '-', '_'; max 64)"
    return None


def check_identity(name: str) -> str:
    """Return ``name`` when it is a safe identity; raise InvalidIdentityError otherwise."""
    problem = identity_problem(name)
    if problem is not None:
        raise InvalidIdentityError(name, problem)
    return name


def check_district(code: str) -> str:
    """Return ``code`` when it is a 5-digit district code; raise InvalidIdentityError otherwise."""
    if DISTRICT_RE.fullmatch(code) is None:
        raise InvalidIdentityError(code, "district code must be 5 ASCII digits")
    return code


def device_topic(district_code: str, device_id: str, channel: str) -> str:
    """``sl/v1/{d}/{id}/{channel}`` (DESIGN.md §3)."""
    return f"{DEVICE_PREFIX}/{district_code}/{device_id}/{channel}"


def alerts_topic(district_code: str) -> str:
    """``cc/v1/{d}/alerts`` (DESIGN.md §3)."""
    return f"{ALERTS_PREFIX}/{district_code}/alerts"


def check_service_account(name: str) -> str:
    """Return ``name`` when it is ``ingest``, ``controller``, ``api`` or ``ROLE@INSTANCE``."""
    if name in SERVICE_ROLES or SERVICE_INSTANCE_RE.fullmatch(name) is not None:
        return name
    raise InvalidIdentityError(
        name, "a service account is ingest, controller, api or ROLE@INSTANCE (e.g. ingest@0)"
    )


def service_role(name: str) -> str:
    """The role of a service account name (``ingest@0`` -> ``ingest``)."""
    return check_service_account(name).split("@", 1)[0]
