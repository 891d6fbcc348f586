"""Wiring of the ingest service: subscription mode, sender checks, the periodic jobs' leader.

``streetlight ingest`` (streetlight/cli/ingest.py) calls these with values from Settings.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec
import paho.mqtt.client as mqtt
import psycopg

from alerts import DayNightPolicy
from broker import ConnectionParams, paho_client
from broker.security import Principal, Registered, Registry, check_sender
from ingest._alerts import Locator, raise_daynight_alerts, raise_offline_alerts, raise_storage_job_alert
from ingest._metrics import IngestMetrics
from ingest._process import SenderCheckFn
from store import run_maintenance
from store.types import Conn

log = logging.getLogger(__name__)

# Arbitrary fixed key ("SLIJ") of the session advisory lock held by the worker running the jobs.
JOBS_LOCK_KEY: Final = 0x534C494A
_PROBE_MESSAGES: Final = 20


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
        client.connect(params.host, params.port, keepalive=10)
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
        for i in range(_PROBE_MESSAGES):
            client.publish(probe_topic, str(i).encode(), qos=1)
        deadline = time.monotonic() + timeout_s
        while len(got) < _PROBE_MESSAGES and time.monotonic() < deadline:
            time.sleep(0.02)
        ok = len(got) >= _PROBE_MESSAGES
        return ok, f"shared-subscription probe delivered {len(got)} of {_PROBE_MESSAGES}"
    finally:
        client.loop_stop()
        client.disconnect()


class _IdInPayload(msgspec.Struct):
    device_id: str | None = None


_ID_DECODER: Final = msgspec.json.Decoder(_IdInPayload)


def sender_checker(lookup: Callable[[str], Registered | None]) -> SenderCheckFn:
    """The per-message identity check (DESIGN.md §3 and issue 7's second wall) over a registry lookup."""

    def check(device_id: str, district: str, payload: bytes) -> tuple[str | None, str | None, str]:
        claimed = None
        if b'"device_id"' in payload:  # v1 payloads carry no id; one that claims one must match
            try:
                claimed = _ID_DECODER.decode(payload).device_id
            except (msgspec.DecodeError, msgspec.ValidationError):
                claimed = None
        verdict = check_sender(device_id, district, lookup(device_id), None, payload_device_id=claimed)
        if not verdict.accepted:
            return verdict.reason, None, verdict.detail
        return None, (verdict.flags[0] if verdict.flags else None), verdict.detail

    return check


def file_registry_lookup(path: Path) -> Callable[[str], Principal | None]:
    """Look devices up in the provisioning registry file (re-read when it changes)."""
    state: dict[str, object] = {"mtime": -1.0, "registry": Registry()}

    def lookup(device_id: str) -> Principal | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = -1.0
        if mtime != state["mtime"]:
            state["registry"] = Registry.load(path)
            state["mtime"] = mtime
        registry = state["registry"]
        assert isinstance(registry, Registry)
        return registry.device(device_id)

    return lookup


def gazetteer_locator() -> Locator | None:
    """(lat, lon) -> (district, dong) from the vendored Seoul gazetteer, or None when geo cannot load."""
    try:
        from geo import Gazetteer

        gaz = Gazetteer.load()
    except Exception as exc:  # optional: alerts still work on district codes
        log.warning("gazetteer not available (%s); outages are grouped by district", exc)
        return None

    def locate(lat: float, lon: float) -> tuple[str, str]:
        where = gaz.locate(lat, lon)
        return where.district_code or "", where.dong_code or ""

    return locate


class JobsLeader:
    """Runs the periodic jobs in whichever worker holds the advisory lock (one at a time)."""

    def __init__(
        self,
        database_url: str,
        *,
        silent_after_s: float,
        interval_s: float = 15.0,
        maintenance_every_s: float = 600.0,
        locate: Locator | None = None,
        daynight_every_s: float = 300.0,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.database_url = database_url
        self.daynight_every_s = daynight_every_s  # lamp on by day / dark at night: per lamp every 5 min
        self.silent_after_s = silent_after_s
        self.interval_s = interval_s
        self.maintenance_every_s = maintenance_every_s
        self.locate = locate
        self.metrics = metrics  # the storage jobs' problems are exposed with this worker's metrics
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False
        self.runs = 0

    def start(self) -> JobsLeader:
        """Start the jobs thread."""
        self._thread = threading.Thread(target=self._loop, name="ingest-jobs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the jobs thread (the lock is released with its connection)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run_once(self, conn: Conn, now: datetime | None = None) -> dict[str, int]:
        """One pass of the offline/mass-outage job."""
        return raise_offline_alerts(
            conn, now or datetime.now(UTC), silent_after_s=self.silent_after_s, locate=self.locate
        )

    def check_storage_jobs(self, conn: Conn, now: datetime | None = None) -> int:
        """Raise, update or resolve the one storage alert and set the gauge; returns the problems."""
        problems = raise_storage_job_alert(conn, now or datetime.now(UTC))
        if self.metrics is not None:
            self.metrics.storage_job_problems = len(problems)
        return len(problems)

    def _loop(self) -> None:
        conn: Conn | None = None
        last_maintenance = last_daynight = 0.0
        while not self._stop.is_set():
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)
                    self.is_leader = False
                if not self.is_leader:
                    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (JOBS_LOCK_KEY,)).fetchone()
                    self.is_leader = bool(row and row[0])
                    if self.is_leader:
                        log.info("this ingest worker runs the periodic jobs (silent, offline, outages)")
                if self.is_leader:
                    counts = self.run_once(conn)
                    self.runs += 1
                    if any(counts.values()):
                        log.info("maintenance alerts: %s", counts)
                    if time.monotonic() - last_daynight >= self.daynight_every_s:
                        last_daynight = time.monotonic()
                        policy = DayNightPolicy(stale_after_s=self.silent_after_s)
                        log.info(
                            "day/night alerts: %s",
                            raise_daynight_alerts(conn, datetime.now(UTC), policy=policy),
                        )
                    if time.monotonic() - last_maintenance >= self.maintenance_every_s:
                        last_maintenance = time.monotonic()
                        try:
                            run_maintenance(conn)
                        finally:
                            # After a failure too: the failure itself is what the alert reports.
                            if not conn.closed:
                                self.check_storage_jobs(conn)
            except psycopg.Error as exc:
                log.warning("periodic jobs: database error (%s); retrying", exc)
                if conn is not None:
                    conn.close()
                conn = None
            except Exception:
                log.exception("periodic jobs failed; retrying next interval")
            self._stop.wait(self.interval_s)
        if conn is not None:
            conn.close()
