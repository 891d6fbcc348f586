"""Issue 23 item 3: the PostgreSQL primary SIGKILLed under load, its streaming standby promoted.

One scenario, :func:`db_failover`: a primary and a hot standby (``devkit.localservices.
start_pg_replicated``, synchronous replication unless told), ingest, the API and a controller all
given the one multi-host connection string (``host1:port1,host2:port2`` with
``target_session_attrs=read-write``), a QoS 1 stream from a sequence publisher and SOS raised by
residents before, during and after the switch. The primary's postmaster is killed, the standby is
promoted ``promote_after_s`` later (what a failover manager's detection takes; here the scenario
decides), and the figures say what the clients saw: the time from the kill to the first write each
service got accepted on the new primary, the telemetry accounting (sent, acknowledged by the
broker, stored, duplicates, lost after PUBACK), and every SOS a resident got 202 for, stored once.
It also measures the cost of a durable commit with the standby synchronous against a local one.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg

from devkit.faults.catalogue import (
    SOS_POINTS,
    CentreListener,
    Figures,
    SafetyApp,
    SosOutcome,
    _prefix,
    _wait_ingest_subscribed,
    _wait_stable,
    private_broker,
)
from devkit.faults.harness import Processes, SeqPublisher, check_stream, metrics, wait_api, wait_until
from devkit.localservices import PgReplicaSet, free_port, start_pg_replicated
from store import migrate


@contextlib.contextmanager
def replicated_database(*, synchronous: bool) -> Iterator[tuple[PgReplicaSet, str]]:
    """A primary and its standby, a migrated database ``faults`` on them, and its multi-host URL."""
    replicas = start_pg_replicated(
        Path(tempfile.mkdtemp(prefix="streetlight-faults-pgha-")), synchronous=synchronous
    )
    try:
        with psycopg.connect(replicas.primary.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")
        url = replicas.url("faults")
        migrate(url)
        yield replicas, url
    finally:
        replicas.stop()


def commit_cost_ms(url: str, commits: int = 150) -> dict[str, float]:
    """Median milliseconds of a one-row durable commit: waiting for the standby, and local only."""
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        # A logged table: a temporary one writes no WAL, so its commit waits for nothing.
        conn.execute("CREATE TABLE commit_probe (i int)")
        for mode in ("on", "local"):
            conn.execute(f"SET synchronous_commit = {mode}")
            times = []
            for i in range(commits):
                t = time.perf_counter()
                conn.execute("INSERT INTO commit_probe VALUES (%s)", (i,))
                times.append(time.perf_counter() - t)
            out["standby" if mode == "on" else "local"] = round(statistics.median(times) * 1000, 2)
        conn.execute("DROP TABLE commit_probe")
    return out


def _register(app: SafetyApp, deadline_s: float = 60.0) -> tuple[str, str]:
    """A new resident: (resident id, token)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        with contextlib.suppress(httpx.TransportError):
            r = app.client.post("/v1/residents", json={})
            if r.status_code == 201:
                return str(r.json()["resident_id"]), str(r.json()["token"])
        time.sleep(0.2)
    raise TimeoutError("could not register a resident")


def _first_ingest_write_after(port: int, since: float, stop: threading.Event, out: list[float]) -> None:
    """Poll ingest's metrics: the moment it reports the database down, then up again."""
    seen_down = False
    while not stop.is_set():
        with contextlib.suppress(OSError):
            up = metrics(port).get("ingest_database_up", 1.0) == 1.0
            if not up:
                seen_down = True
            elif seen_down:
                out.append(time.monotonic() - since)
                return
        time.sleep(0.05)


def db_failover(
    workdir: Path,
    *,
    rate: float,
    before_s: float,
    promote_after_s: float,
    after_s: float,
    sos: int,
    synchronous: bool = True,
) -> Figures:
    """Kill the primary during a QoS 1 stream and an SOS series; promote the standby; account."""
    prefix = _prefix("ha")
    mport, aport = free_port(), free_port()
    count = int(rate * (before_s + promote_after_s + after_s))
    with (
        private_broker(workdir) as broker,
        replicated_database(synchronous=synchronous) as (replicas, url),
        Processes(workdir) as procs,
    ):
        commit_ms = commit_cost_ms(url)
        procs.ingest(broker.url, url, client_id=f"ing-{prefix}", metrics_port=mport)
        procs.api(url, aport)
        procs.controller(broker.url, url, districts="all")
        _wait_ingest_subscribed(mport)
        wait_api(aport)
        centre = CentreListener(broker.url, f"cc-{prefix}")
        app = SafetyApp(f"http://127.0.0.1:{aport}")
        try:
            residents = [_register(app) for _ in range(sos)]
            outcomes: list[SosOutcome] = []
            raised: list[tuple[float, SosOutcome]] = []
            lock = threading.Lock()

            def raise_sos(i: int) -> None:
                lat, lon = SOS_POINTS[i % len(SOS_POINTS)]
                started = time.monotonic()
                one = app.sos(residents[i][1], lat + i * 1e-4, lon, deadline_s=120)
                with lock:
                    outcomes.append(one)
                    raised.append((started, one))

            # The SOS series spans the switch: a third before the kill, a third while no server
            # accepts writes, a third after the promotion.
            span = 1.0 + promote_after_s + 2.0
            starts = [before_s - 1.0 + span * i / max(1, sos - 1) for i in range(sos)]
            pub = SeqPublisher(
                broker.host, broker.port, lamps=300, count=count, rate_per_s=rate, prefix=prefix
            )
            ingest_back: list[float] = []
            stop_probe = threading.Event()
            t0 = time.monotonic()
            with pub:
                threads = []
                for i, at in enumerate(starts):
                    timer = threading.Timer(max(0.0, t0 + at - time.monotonic()), raise_sos, (i,))
                    timer.start()
                    threads.append(timer)
                time.sleep(max(0.0, t0 + before_s - time.monotonic()))
                replicas.kill_primary()
                killed_at = time.monotonic()
                probe = threading.Thread(
                    target=_first_ingest_write_after,
                    args=(mport, killed_at, stop_probe, ingest_back),
                    daemon=True,
                )
                probe.start()
                time.sleep(promote_after_s)
                promote_t = time.monotonic()
                replicas.promote()
                promoted_at = time.monotonic()
                for timer in threads:
                    timer.join(150)
                wait_until(
                    lambda: (
                        metrics(mport).get("ingest_spool_bytes", 1.0) == 0.0
                        and metrics(mport).get("ingest_database_up", 0.0) == 1.0
                    ),
                    120,
                    "the spool to drain into the new primary",
                    0.1,
                )
                drained_at = time.monotonic()
                pub.join(count / rate * 3 + 60)
            stop_probe.set()
            _wait_stable(url, prefix, count, timeout_s=60)
            check = check_stream(url, pub)
            m = metrics(mport)
            accepted = {o.alert_id for o in outcomes if o.alert_id}
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: centre.seen(accepted) == len(accepted), 60, "the SOS at the centre")
            with psycopg.connect(url, connect_timeout=5) as conn:
                in_recovery = bool(conn.execute("SELECT pg_is_in_recovery()").fetchone()[0])  # type: ignore[index]
                stored = conn.execute(
                    "SELECT resident_id, alert_id FROM alerts WHERE kind = 'sos' AND resident_id = ANY(%s)",
                    ([r for r, _ in residents],),
                ).fetchall()
            after_kill = [
                o.accepted_at - killed_at for o in outcomes if o.alert_id and o.accepted_at > killed_at
            ]
            switched = [o for o in outcomes if o.accepted_at > killed_at and 503 in o.statuses]
        finally:
            app.close()
            centre.close()
    stored_ids = [str(a) for _, a in stored]
    per_resident: dict[str, int] = {}
    for resident, _ in stored:
        per_resident[str(resident)] = per_resident.get(str(resident), 0) + 1
    return {
        "scenario": "db_failover",
        "replication": "synchronous" if synchronous else "asynchronous",
        "rate_per_s": rate,
        "commit_ms_standby": commit_ms["standby"],
        "commit_ms_local": commit_ms["local"],
        "promote_after_s": promote_after_s,
        "promote_s": round(promoted_at - promote_t, 2),
        "new_primary_in_recovery": in_recovery,
        **check.as_dict(),
        "spooled": int(m.get("ingest_spooled_total", 0)),
        "replayed": int(m.get("ingest_replayed_total", 0)),
        "dropped": int(m.get("ingest_dropped_total", 0)),
        "ingest_first_write_s_after_kill": round(ingest_back[0], 2) if ingest_back else None,
        "spool_drained_s_after_promote": round(drained_at - promoted_at, 2),
        "sos_raised": sos,
        "sos_accepted": len(accepted),
        "sos_statuses": sorted({s for o in outcomes for s in o.statuses}),
        "sos_refused_503_then_accepted": len(switched),
        "sos_retry_after_header": all(o.retry_after_seen for o in switched) and bool(switched),
        "sos_first_accepted_s_after_kill": round(min(after_kill), 2) if after_kill else None,
        "sos_stored": len(stored_ids),
        "sos_stored_twice": sum(1 for n in per_resident.values() if n > 1),
        "sos_accepted_missing": len(accepted - set(stored_ids)),
        "sos_at_centre": centre.seen(accepted),
        "sos_timeline": [  # per SOS: raised and accepted (s after the kill), the answers it got
            {
                "raised_s": round(at - killed_at, 2),
                "accepted_s": round(o.accepted_at - killed_at, 2) if o.alert_id else None,
                "statuses": list(o.statuses),
            }
            for at, o in sorted(raised, key=lambda r: r[0])
        ],
        "seconds": round(time.monotonic() - t0, 1),
    }
