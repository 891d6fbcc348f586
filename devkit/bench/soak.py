"""``streetlight bench soak --minutes N``: the fault scenarios of issue #8 at full size, with figures.

Runs, in order and each on its own private Mosquitto (and a throwaway PostgreSQL cluster, or a
database on DATABASE_URL's server where PostgreSQL is not stopped): broker SIGKILLed 5 times in a
100k QoS 1 stream from 500 lamps; ingest SIGKILLed 10 times; PostgreSQL stopped 60 s at 1,000
msg/s; an impaired link; 1,000 SOS with API, controller and broker each killed once; a lamp
process SIGKILLed, a power-cut (silent) lamp and a stale death; a burst of ten times the rate.
``--minutes`` is the budget: scenarios that would not fit in what is left are skipped and listed.
The tests in ``tests/faults/`` run the same functions small and assert the figures; this command
only measures and reports.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from devkit.faults import catalogue, failover
from devkit.localservices import start_pg_cluster
from store import migrate

HELP = "fault-injection soak: full-size broker/ingest/PostgreSQL kills, impaired link, SOS kills (figures)"

# Rough wall time of each scenario at full size on this 2-core machine (seconds), for the budget.
PLAN: list[tuple[str, float]] = [
    ("broker_kills", 190),
    ("ingest_kills", 130),
    ("db_outage", 150),
    ("db_failover", 60),
    ("impaired_link", 90),
    ("sos_with_kills", 150),
    ("lamp_offline", 50),
    ("burst", 60),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench soak``."""
    parser.add_argument("--minutes", type=float, default=15.0, help="time budget (default 15)")
    parser.add_argument(
        "--only", default="", help=f"comma-separated scenarios to run (of {', '.join(n for n, _ in PLAN)})"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="size factor (1 = the issue's sizes)")


def _say(text: str) -> None:
    sys.stderr.write(f"[bench soak] {text}\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run what fits in the budget; returns the figures of each scenario."""
    scale = float(args.scale)
    chosen = {s.strip() for s in args.only.split(",") if s.strip()}
    budget_s = float(args.minutes) * 60
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="streetlight-soak-"))
    pg = start_pg_cluster(work / "pg")
    results: dict[str, Any] = {}
    skipped: list[str] = []

    def fresh_db() -> str:
        name = f"soak_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        url = pg.database_url(name)
        migrate(url)
        return url

    def n(x: float) -> int:
        return max(1, int(x * scale))

    runs: dict[str, Callable[[Path], dict[str, Any]]] = {
        "broker_kills": lambda w: catalogue.broker_kills(
            w, fresh_db(), count=n(100_000), lamps=500, kills=5, rate=1000
        ),
        "ingest_kills": lambda w: catalogue.ingest_kills(
            w, fresh_db(), count=n(100_000), lamps=500, kills=10, rate=1000
        ),
        "db_outage": lambda w: catalogue.db_outage(
            w, rate=1000, before_s=10, outage_s=60 * scale, after_s=20
        ),
        "db_failover": lambda w: failover.db_failover(
            w, rate=1000, before_s=10, promote_after_s=max(1.0, 10 * scale), after_s=20, sos=n(30)
        ),
        "impaired_link": lambda w: catalogue.impaired_link(
            w, fresh_db(), count=n(20_000), lamps=500, rate=500, cuts=5
        ),
        "sos_with_kills": lambda w: catalogue.sos_with_kills(
            w, fresh_db(), sos=n(1000), escalate_after_s=10.0
        ),
        "lamp_offline": lambda w: catalogue.lamp_offline(w, fresh_db(), keepalive_s=10),
        "burst": lambda w: catalogue.burst(
            w, fresh_db(), lamps=500, rate=1000, sustained_s=10, burst_s=5, factor=10
        ),
    }
    try:
        for name, estimate_s in PLAN:
            if chosen and name not in chosen:
                continue
            left = budget_s - (time.monotonic() - t0)
            if estimate_s * max(scale, 0.2) > left:
                skipped.append(name)
                _say(f"{name}: skipped ({left:.0f} s left of the budget)")
                continue
            _say(f"{name}: running")
            started = time.monotonic()
            try:
                results[name] = runs[name](work / name)
            except Exception as exc:  # a scenario that breaks is a figure too
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            results[name]["wall_s"] = round(time.monotonic() - started, 1)
            _say(f"{name}: {results[name]}")
    finally:
        pg.stop("immediate")
        shutil.rmtree(work, ignore_errors=True)
    return {
        "bench": "soak",
        "minutes_budget": args.minutes,
        "scale": scale,
        "seconds": round(time.monotonic() - t0, 1),
        "skipped": skipped,
        "scenarios": results,
        "ok": all("error" not in r for r in results.values()),
    }
