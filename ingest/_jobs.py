"""The periodic jobs of ingest (silent and offline devices, mass outages, day/night faults, the
storage maintenance and its health, lost messages in the stored rows): run by whichever worker
holds the advisory lock, one at a time.

The lost-messages check (``check_seq_gaps``, on when the workers share the devices' streams) reads
the stored rows of the last ``gap_lookback_s`` of device time up to ``gap_lag_s`` ago, and counts
each gap once: by the row that closes it, if that row lies after the end of the previous check
(the first check of a leader counts the whole look-back).
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Final

from alerts import AreaNamer, DayNightPolicy
from ingest._alerts import (
    GapCheck,
    Locator,
    raise_daynight_alerts,
    raise_offline_alerts,
    raise_storage_job_alert,
    raise_stored_gap_alert,
)
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
        seq_gap_check: bool = False,
        gap_every_s: float = 60.0,
        gap_lookback_s: float = 600.0,
        gap_lag_s: float = 60.0,
    ) -> None:
        # Lost messages from the stored rows: on when the workers each see part of every device's
        # stream (a shared subscription, the AMQP queue), whose batches raise no data_loss alert.
        self.seq_gap_check = seq_gap_check
        self.gap_every_s = gap_every_s
        self.gap_lookback = timedelta(seconds=gap_lookback_s)  # a loss longer than this is not seen
        self.gap_lag = timedelta(seconds=gap_lag_s)  # rows not yet stored (batches, spools) are not gaps
        self._gaps_checked_until: datetime | None = None
        self._spool_seen_s: float | None = None  # when this worker last had a spool or no database
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

    def spool_settling(self, now_s: float | None = None) -> bool:
        """True while this worker spools or replays, and for a look-back after: rows that wait in a
        spool (this worker's or, in the same database outage, another's) are late, not lost, and
        must not be counted as gaps. A deferred check does not move the window's counted start,
        so the gaps it would have counted are counted by the first check after."""
        now_s = time.monotonic() if now_s is None else now_s
        m = self.metrics
        if m is not None and (m.spool_bytes > 0 or not m.db_up):
            self._spool_seen_s = now_s
        if self._spool_seen_s is None:
            return False
        return now_s - self._spool_seen_s < (self.gap_lookback + self.gap_lag).total_seconds()

    def check_seq_gaps(self, conn: Conn, now: datetime | None = None) -> GapCheck:
        """Count the messages missing from the stored rows since the last check into the one
        ``data_loss`` alert; returns what was checked and found."""
        at = now or datetime.now(UTC)
        until = at - self.gap_lag
        since = until - self.gap_lookback
        closed_from = since if self._gaps_checked_until is None else max(since, self._gaps_checked_until)
        checked = raise_stored_gap_alert(conn, since=since, closed_from=closed_from, until=until, now=at)
        self._gaps_checked_until = max(until, self._gaps_checked_until or until)
        return checked

    def _loop(self) -> None:
        conn: Conn | None = None
        last_maintenance = last_daynight = last_gaps = 0.0
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
                    if self.seq_gap_check and time.monotonic() - last_gaps >= self.gap_every_s:
                        last_gaps = time.monotonic()
                        if self.spool_settling():
                            log.info("stored_seq_gaps_check_deferred", reason="spool_replaying")
                        else:
                            checked = self.check_seq_gaps(conn)
                            if checked.missing:
                                log.warning(
                                    "stored_seq_gaps", devices=checked.devices, missing=checked.missing
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
