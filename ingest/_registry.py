"""Ingest's view of the provisioned devices and its share group, both read from the database.

So a deployed ingest needs nothing passed: ``streetlight provision`` mirrors its registry into
the ``devices`` table, and every ingest instance that shares the database shares the group.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from broker import INGEST_GROUP
from runtime.logs import get_logger
from store.errors import StoreUnavailable
from store.registry import (
    ProvisionedDevice,
    provisioned_devices_at,
    retired_shared_secret_at,
    shared_secret_at,
)

log = get_logger(__name__)

# The group's secret part; 128 random bits in store_meta, never in a file, an argument or a log.
SHARE_GROUP_KEY: Final = "ingest_share_group"


@dataclass(frozen=True, slots=True)
class RegisteredDevice:
    """A provisioned device as ``broker.security.check_sender`` sees it."""

    name: str
    district_code: str | None
    revoked: bool
    role: str = "device"


def share_group(database_url: str) -> str:
    """The ingest share group: ``ingest-`` and a random secret every instance reads from the database.

    A device may SUBSCRIBE to any ``$share/...`` filter (Mosquitto's acl_file never refuses one);
    in a group whose name it knows it would take its turn of the messages and the read ACL would
    drop them. It cannot join a group whose name it cannot learn. Raises StoreUnavailable when the
    database cannot be read.
    """
    return f"{INGEST_GROUP}-{shared_secret_at(database_url, SHARE_GROUP_KEY)}"


def retired_share_group(database_url: str) -> str | None:
    """The group ``streetlight provision --rotate-share-group`` replaced last, or None.

    A restarted worker's persistent session still holds its subscriptions in that group: the worker
    unsubscribes them, so the devices that learnt the old name share nothing with it.
    """
    old = retired_shared_secret_at(database_url, SHARE_GROUP_KEY)
    return None if old is None else f"{INGEST_GROUP}-{old}"


def redact_group(topic_filter: str) -> str:
    """A filter fit for a log: the secret part of a ``$share/ingest-SECRET/`` group hidden."""
    if not topic_filter.startswith("$share/"):
        return topic_filter
    _share, group, rest = topic_filter.split("/", 2)
    public, dash, secret = group.partition("-")
    return f"$share/{public}{dash}{'…' if secret else ''}/{rest}"


class DatabaseRegistry:
    """Provisioned devices from the ``devices`` table, re-read every ``refresh_s`` and on a miss.

    A lookup never waits on the database longer than one query; when it cannot be read the last
    table stays in use (the broker refuses revoked devices on its own meanwhile).
    """

    def __init__(
        self,
        database_url: str,
        *,
        refresh_s: float = 30.0,
        miss_refresh_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.database_url = database_url
        self.refresh_s = refresh_s
        self.miss_refresh_s = miss_refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._devices: dict[str, ProvisionedDevice] = {}
        self._loaded_at = -float("inf")
        self._failing = False

    def load(self) -> int:
        """Read the table now; returns how many devices were ever provisioned (StoreUnavailable
        when the database cannot be read)."""
        devices = provisioned_devices_at(self.database_url)
        with self._lock:
            self._devices = devices
            self._loaded_at = self._clock()
        return len(devices)

    def active(self) -> bool:
        """Whether provisioning has registered any device yet (re-read every ``refresh_s``).

        ``--registry-check auto`` checks senders only then, so a development database without
        provisioning stores every device, and a deployed ingest turns the check on by itself once
        ``streetlight provision --database-url`` has run, without a restart.
        """
        if self._clock() - self._loaded_at >= self.refresh_s:
            was = bool(self._devices)
            with contextlib.suppress(StoreUnavailable):
                self.load()
            self._loaded_at = self._clock()
            if bool(self._devices) != was:
                log.info("registry_check", state="on" if self._devices else "off", count=len(self._devices))
        return bool(self._devices)

    def lookup(self, device_id: str) -> RegisteredDevice | None:
        """The registered device ``device_id``, or None when provisioning never registered it."""
        age = self._clock() - self._loaded_at
        miss_due = device_id not in self._devices and age >= self.miss_refresh_s and not self._failing
        if age >= self.refresh_s or miss_due:
            try:
                self.load()
                self._failing = False
            except StoreUnavailable as exc:
                # The database is down (ingest spools meanwhile): keep the table, and wait a full
                # interval, misses or not, so this thread does not stall on connects.
                self._loaded_at = self._clock()
                self._failing = True
                log.warning("registry_refresh_failed", count=len(self._devices), error=str(exc))
        d = self._devices.get(device_id)
        return None if d is None else RegisteredDevice(d.device_id, d.district_code, d.revoked)
