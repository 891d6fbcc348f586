"""``streetlight bench api``: the real API (``streetlight api`` in its own process, a real database)
under a closed loop of concurrent HTTP clients.

Measured in the same run: the baseline (``GET /healthz``, a trivial endpoint on the same
server), then SOS accepts (``POST /v1/sos``: auth, idempotency key, merge, alert row, events,
track, NOTIFY, commit) from many residents, then walk positions. Latency is measured per
request at the client, from send to answer; requests/s over the whole phase.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import psycopg

HELP = "API throughput and SOS accept latency (p50/p95/p99) vs a trivial endpoint on the same server"

# Inside Jung-gu, away from borders (see devkit/apiclient.py).
_AT = (37.5610, 126.9940)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench api``."""
    parser.add_argument("--requests", type=int, default=2000, help="requests per phase (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="clients in flight (default 16)")
    parser.add_argument(
        "--lamps", type=int, default=2000, help="lamps seeded around the point (default 2000)"
    )


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def _phase(
    base: str, concurrency: int, requests: Sequence[tuple[str, str, Mapping[str, Any] | None, dict[str, str]]]
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[tuple[str, str, Mapping[str, Any] | None, dict[str, str]]] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=30.0, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                method, path, body, headers = queue.get_nowait()
                start = time.perf_counter()
                resp = await client.request(method, path, json=body, headers=headers)
                latencies.append(time.perf_counter() - start)
                statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1

        started = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for i in range(concurrency):
                tg.create_task(worker(), name=f"client-{i}")
        elapsed = time.perf_counter() - started
    ms = [x * 1000 for x in latencies]
    return {
        "rps": round(len(ms) / elapsed, 1),
        "p50_ms": round(_percentile(ms, 0.50), 2),
        "p95_ms": round(_percentile(ms, 0.95), 2),
        "p99_ms": round(_percentile(ms, 0.99), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
    }


def _seed(url: str, lamps: int) -> None:
    from store.devices import upsert_device
    from store.schema import apply_migrations

    with psycopg.connect(url, autocommit=True) as conn:
        apply_migrations(conn)
        with conn.transaction():
            for i in range(lamps):
                # A grid around the point, ~11 m apart.
                lat = _AT[0] + ((i // 50) - 25) * 0.0001
                lon = _AT[1] + ((i % 50) - 25) * 0.000125
                upsert_device(conn, f"bench-l{i}", kind="lamp", district_code="11020", lat=lat, lon=lon)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streetlight api exited with status {proc.returncode}")
        try:
            if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError("streetlight api did not become ready")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a database and the API, run the three phases, stop everything."""
    from devkit.localservices import free_port, provide_pg, terminate
    from streetlight.settings import Settings

    settings = Settings.from_env()
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        pg = provide_pg(settings.database_url, Path(tmp))
        dbname = f"bench_api_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        url = pg.database_url(dbname)
        proc: subprocess.Popen[bytes] | None = None
        try:
            _seed(url, args.lamps)
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-m", "streetlight.cli", "api", "--port", str(port), "--database-url", url],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # Thousands of residents from this one host: no per-address registration limit.
                env={**os.environ, "STREETLIGHT_API_REGISTRATIONS_PER_HOUR": "0"},
            )
            base = f"http://127.0.0.1:{port}"
            _wait_ready(base, proc)
            n, c = args.requests, args.concurrency
            sys.stderr.write(f"bench api: {n} requests per phase, {c} clients, pg {pg.kind}\n")
            baseline = asyncio.run(_phase(base, c, [("GET", "/healthz", None, {})] * n))
            # 3 SOS per resident: the first opens an alert, the next two merge (all under the limit).
            tokens = [httpx.post(base + "/v1/residents").json()["token"] for _ in range((n + 2) // 3)]
            sos = [
                (
                    "POST",
                    "/v1/sos",
                    {"lat": _AT[0], "lon": _AT[1], "accuracy_m": 5.0},
                    {"Authorization": f"Bearer {tokens[i % len(tokens)]}", "Idempotency-Key": f"b{i}"},
                )
                for i in range(n)
            ]
            sos_figures = asyncio.run(_phase(base, c, sos))
            walkers = []
            for t in tokens[: max(1, n // 2)]:
                h = {"Authorization": f"Bearer {t}"}
                r = httpx.post(
                    base + "/v1/walks", json={"lat": _AT[0], "lon": _AT[1], "accuracy_m": 5.0}, headers=h
                )
                walkers.append((r.json()["walk_id"], h))
            # Two positions per walk: within the 2/s limit whatever the speed.
            positions = [
                (
                    "POST",
                    f"/v1/walks/{walkers[i % len(walkers)][0]}/positions",
                    {
                        "lat": _AT[0],
                        "lon": _AT[1] + 0.0001,
                        "accuracy_m": 5.0,
                        "heading_deg": 90.0,
                        "speed_mps": 1.4,
                    },
                    walkers[i % len(walkers)][1],
                )
                for i in range(min(n, 2 * len(walkers)))
            ]
            walk_figures = asyncio.run(_phase(base, c, positions))
        finally:
            if proc is not None:
                terminate(proc)
            with psycopg.connect(pg.url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            if pg.kind != "configured":
                pg.stop()
    return {
        "bench": "api",
        "requests": n,
        "concurrency": c,
        "lamps": args.lamps,
        "baseline_rps": baseline["rps"],
        "baseline_p50_ms": baseline["p50_ms"],
        "baseline_p99_ms": baseline["p99_ms"],
        "sos_rps": sos_figures["rps"],
        "sos_p50_ms": sos_figures["p50_ms"],
        "sos_p95_ms": sos_figures["p95_ms"],
        "sos_p99_ms": sos_figures["p99_ms"],
        "sos_statuses": sos_figures["statuses"],
        "sos_rps_vs_baseline": round(sos_figures["rps"] / baseline["rps"], 3),
        "walk_position_rps": walk_figures["rps"],
        "walk_position_p50_ms": walk_figures["p50_ms"],
        "walk_position_p99_ms": walk_figures["p99_ms"],
        "walk_statuses": walk_figures["statuses"],
        "ok": set(sos_figures["statuses"]) == {"202"} and set(walk_figures["statuses"]) == {"200"},
    }
