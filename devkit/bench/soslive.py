"""``streetlight bench sos-live``: an operator's action on an SOS to the resident's live socket.

Deployment shape, each its own process: PostgreSQL (throwaway cluster), ``streetlight api``
(``--api-workers``, 2 by default, so the operator's request and the resident's socket are often
served by different processes and the change crosses ``NOTIFY sl_alert``). This process is the
client: ``--sos`` residents each raise an SOS (``POST /v1/sos``) and open its live socket
(``/v1/sos/{id}/live``, all open at once), then one ``city`` operator acknowledges and then
dispatches each (``POST /v1/alerts/{id}/acknowledge`` and ``/dispatch`` with a unit), one SOS
every ``--interval`` s, several in flight.

Latency of one action: the moment the resident's socket received the message showing it
(acknowledged, then dispatched with the unit), minus the moment just before this client wrote
the operator's request (``time.perf_counter``, same process). ``from_answer``: the same from the
moment the operator's 200 was read (the message may come first: NOTIFY fires at commit, before
the answer is written; those count 0). ``lost``: an action whose message never came within 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import psycopg
import websockets

from devkit.bench.brighten import LeanHttp, commit_ms, durability, percentile_ms, python_loop_s, say, services

HELP = "SOS live status: operator's acknowledge/dispatch -> the resident's /v1/sos/{id}/live (p50/p99)"

OPERATOR = "bench-live"
PASSWORD = "bench-sos-live-password"
_AT = (37.5610, 126.9940)  # Jung-gu, away from district borders (devkit/apiclient.py's JUNG)
TARGET_P99_MS = 200.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench sos-live``."""
    parser.add_argument("--sos", type=int, default=200, help="SOS, each with its resident's socket (200)")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between SOS handled (0.05)")
    parser.add_argument("--api-workers", type=int, default=2, help="streetlight api --workers (default 2)")
    parser.add_argument(
        "--fast-db",
        action="store_true",
        help="the private PostgreSQL with fsync and synchronous commit off (default: durable, as deployed)",
    )


def _prepare(db_url: str) -> None:
    from api.accounts import create_operator
    from api.security import password_hasher

    with psycopg.connect(db_url, autocommit=True) as conn:
        create_operator(conn, OPERATOR, PASSWORD, role="city", hasher=password_hasher(1, 8))


class Resident:
    """One resident's live socket, recording when each state first showed."""

    def __init__(self, base: str, token: str, alert_id: str) -> None:
        self.url = base.replace("http://", "ws://") + f"/v1/sos/{alert_id}/live"
        self.token = token
        self.alert_id = alert_id
        self.seen: dict[str, float] = {}
        self.first = asyncio.Event()
        self.closed_early = False

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with websockets.connect(self.url, additional_headers=headers, max_size=None) as ws:
            async for raw in ws:
                at = time.perf_counter()
                message = orjson.loads(raw)
                if message.get("type") != "status":
                    continue
                status = message["status"]
                if status["acknowledged"]:
                    self.seen.setdefault("acknowledged", at)
                if status["dispatched"] and status.get("unit"):
                    self.seen.setdefault("dispatched", at)
                self.first.set()


async def _measure(args: argparse.Namespace, base: str) -> dict[str, Any]:
    http = LeanHttp(base, 16)
    residents: list[Resident] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        credentials = {"username": OPERATOR, "password": PASSWORD}
        status, login = await http.request("POST", "/v1/auth/login", credentials)
        if status != 200:
            raise RuntimeError(f"login failed: {status} {login}")
        op = {"Authorization": f"Bearer {login['token']}"}
        say(f"bench sos-live: {args.sos} SOS, each resident on its live socket")
        for i in range(args.sos):
            status, reg = await http.request("POST", "/v1/residents")
            if status != 201:
                raise RuntimeError(f"POST /v1/residents: {status}")
            token = str(reg["token"])
            body = {"lat": _AT[0] + (i % 7 - 3) * 0.0002, "lon": _AT[1] + (i % 5 - 2) * 0.0002}
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
            status, answer = await http.request("POST", "/v1/sos", body, headers)
            if status != 202:
                raise RuntimeError(f"POST /v1/sos: {status} {answer}")
            resident = Resident(base, token, str(answer["alert_id"]))
            residents.append(resident)
            tasks.append(asyncio.create_task(resident.run(), name=f"resident-{i}"))
        await asyncio.wait_for(asyncio.gather(*(r.first.wait() for r in residents)), 60)
        samples: dict[str, list[float]] = {"acknowledged": [], "dispatched": []}
        from_answer: list[float] = []
        before_answer = lost = 0
        http_s: list[float] = []

        async def act(resident: Resident, path: str, body: Any, state: str) -> None:
            nonlocal before_answer, lost
            t0 = time.perf_counter()
            status, _ = await http.request("POST", f"/v1/alerts/{resident.alert_id}/{path}", body, op)
            t1 = time.perf_counter()
            http_s.append(t1 - t0)
            if status != 200:
                raise RuntimeError(f"POST {path}: {status}")
            deadline = time.monotonic() + 5.0
            while state not in resident.seen and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.002)
            at = resident.seen.get(state)
            if at is None:
                lost += 1
                return
            samples[state].append(at - t0)
            before_answer += at < t1
            from_answer.append(max(0.0, at - t1))

        async def handle(resident: Resident, i: int) -> None:
            await act(resident, "acknowledge", {"note": "bench"}, "acknowledged")
            await act(resident, "dispatch", {"unit": f"unit-{i}"}, "dispatched")

        start = time.perf_counter()
        handling = []
        for i, resident in enumerate(residents):
            await asyncio.sleep(max(0.0, start + i * args.interval - time.perf_counter()))
            handling.append(asyncio.create_task(handle(resident, i)))
        await asyncio.gather(*handling)
        elapsed = time.perf_counter() - start
        every = samples["acknowledged"] + samples["dispatched"]
        return {
            "actions": len(every) + lost,
            "lost": lost,
            "p50_ms": percentile_ms(every, 50),
            "p95_ms": percentile_ms(every, 95),
            "p99_ms": percentile_ms(every, 99),
            "max_ms": percentile_ms(every, 100),
            "acknowledged_p99_ms": percentile_ms(samples["acknowledged"], 99),
            "dispatched_p99_ms": percentile_ms(samples["dispatched"], 99),
            "from_answer_p99_ms": percentile_ms(from_answer, 99),
            "before_answer": before_answer,
            "http_p50_ms": percentile_ms(http_s, 50),
            "http_p99_ms": percentile_ms(http_s, 99),
            "sockets": len(residents),
            "seconds": round(elapsed, 2),
        }
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await http.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start PostgreSQL and the API, measure, stop them."""
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    load_before = [round(x, 2) for x in os.getloadavg()]
    with (
        tempfile.TemporaryDirectory(prefix="bench-sos-live-") as tmp_name,
        services(
            Path(tmp_name),
            api_workers=args.api_workers,
            prepare=_prepare,
            controller=False,
            durable=not args.fast_db,
        ) as svc,
    ):
        machine = {
            "python_loop_10m_s": python_loop_s(),
            "commit_ms_p50": commit_ms(svc.db_url),
            "postgres": durability(svc.db_url),
        }
        say(f"machine: {json.dumps(machine)}")
        measured = asyncio.run(_measure(args, svc.api_base))
        kinds = svc.kinds
    say(f"sos-live: {json.dumps({k: measured[k] for k in ('p50_ms', 'p99_ms', 'lost')})}")
    p99 = measured["p99_ms"]
    return {
        "bench": "sos-live",
        **measured,
        "interval_s": args.interval,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "processes": {
            "api": f"streetlight api --workers {args.api_workers}",
            "client": "this process (residents' sockets + one operator over HTTP)",
            "postgres": kinds["database"],
        },
        "machine": machine,
        "target_p99_ms": TARGET_P99_MS,
        "met": measured["lost"] == 0 and p99 is not None and p99 <= TARGET_P99_MS,
        "ok": measured["lost"] == 0,
    }
