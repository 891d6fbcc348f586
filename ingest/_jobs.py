"""The periodic jobs of ingest (silent and offline devices, mass outages, day/night faults, the
storage maintenance and its health): run by whichever worker holds the advisory lock, one at a time.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import Final

from alerts import AreaNamer, DayNightPolicy
from ingest._alerts import Locator, raise_daynight_alerts, raise_offline_alerts, raise_storage_job_alert
from ingest._metrics import IngestMetrics
from runtime.logs import get_logger
from store import RetentionPolicy, run_maintenance
from store.connections import connect
from store.errors import DatabaseError
from store.leases import try_session_lock
from store.types import Conn

log = get_logger(__name__)

# Arbitrary fixed key ("SLIJ") of the session advisory lock held by the worker running the jobs.
JOBS_LOCK_KEY: Final = 0x534C494A


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
        namer: AreaNamer | None = None,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.retention = retention  # the retention periods from the settings (docs/privacy.md)
        self.database_url = database_url
        self.daynight_every_s = daynight_every_s  # lamp on by day / dark at night: per lamp every 5 min
        self.silent_after_s = silent_after_s
        self.interval_s = interval_s
        self.maintenance_every_s = maintenance_every_s
        self.locate = locate
        self.namer = namer  # puts the alerts' places in words (the gazetteer's names)
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
            conn,
            now or datetime.now(UTC),
            silent_after_s=self.silent_after_s,
            locate=self.locate,
            namer=self.namer,
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
                    conn = connect(self.database_url, connect_timeout_s=5)
                    self.is_leader = False
                if not self.is_leader:
                    self.is_leader = try_session_lock(conn, JOBS_LOCK_KEY)
                    if self.is_leader:
                        log.info("periodic_jobs_leader", jobs=["silent", "offline", "outages"])
                if self.is_leader:
                    counts = self.run_once(conn)
                    self.runs += 1
                    if any(counts.values()):
                        log.info("maintenance_alerts", **counts)
                    if time.monotonic() - last_daynight >= self.daynight_every_s:
                        last_daynight = time.monotonic()
                        policy = DayNightPolicy(stale_after_s=self.silent_after_s)
                        log.info(
                            "daynight_alerts",
                            **raise_daynight_alerts(conn, datetime.now(UTC), policy=policy, namer=self.namer),
                        )
                    if time.monotonic() - last_maintenance >= self.maintenance_every_s:
                        last_maintenance = time.monotonic()
                        try:
                            run_maintenance(conn, policy=self.retention)
                        finally:
                            # After a failure too: the failure itself is what the alert reports.
                            if not conn.closed:
                                self.check_storage_jobs(conn)
            except DatabaseError as exc:
                log.warning("periodic_jobs_database_error", error=str(exc))
                if conn is not None:
                    conn.close()
                conn = None
            except Exception:
                log.exception("periodic_jobs_failed")
            self._stop.wait(self.interval_s)
        if conn is not None:
            conn.close()
