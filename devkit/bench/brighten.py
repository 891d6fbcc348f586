"""``streetlight bench brighten``: walkers' positions through the real API to brighten commands at lamps.

Over 500 lines on purpose: a benchmark, not product code; the deployment it starts, the
walkers' client process, the simulated lamps and the figures it reports are one experiment,
read top to bottom when a figure in docs/benchmarks.md is questioned.

Deployment shape, each its own process: PostgreSQL (throwaway cluster), Mosquitto (private,
``set_tcp_nodelay true``), ``streetlight api`` (``--api-workers``), ``streetlight controller``
(``--districts all``), the walkers' HTTP client(s) (``python -m devkit.bench.brighten
client``, one asyncio loop each) and the simulated lamps (``python -m devkit.bench.brighten lamps``,
``--lamp-processes`` of them, districts dealt out between them: each a ``LampFleet``, one paho
client subscribed to its lamps' ``cmd`` topics, acking like the firmware and recording each
command's arrival). Real lamps each have their own connection; the lamps of one process share
one, so a burst of commands queues there, which is the bench's and not the deployment's.

Lamps: the synthetic placement of the 2022 smart-light zones (``firmware_sim.placement``), upserted
into ``devices``. Walkers: ``firmware_sim.residents.Walker`` along those streets (1.2-1.6 m/s, GPS
noise 5-15 m); each registers (``POST /v1/residents``), starts a walk (``POST /v1/walks``), then
reports a position once a second (``POST /v1/walks/{id}/positions``, or with ``--transport ws`` a
message on its ``/v1/walks/{id}/live`` WebSocket, one connection per walker, the ``websockets``
asyncio client without compression), walkers spread evenly over the second.

Latency of one position update: the first command for that walk (the command's ``source`` is the
walk id) that reaches a lamp after the update was sent and before the walk's next update was sent,
minus the moment the client had the API's answer (``time.perf_counter``, CLOCK_MONOTONIC, the same
clock in every process of the machine). A command can reach the lamp before the HTTP answer reaches
the client (the NOTIFY fires at commit, before the response is written); such samples count as 0 ms
and are reported in ``before_answer``. Updates that command nothing (the lamps are already held:
the controller commands lamps entered, not positions) have no latency; ``measured`` counts those
that do. ``idle`` is ``--idle-walkers`` walkers (20) spread over the second, measured first in the
same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import json
import logging
import math
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import psycopg

HELP = "walk positions through the API -> brighten command at the lamp (p50/p99 at N walkers vs one)"

PY = sys.executable
BROKER_CONFIG = "set_tcp_nodelay true\nautosave_interval 1800\n"


# The idle baseline: a few walkers spread over the second (2 % of the 1,000-walker load) for
# ~150-170 measured updates in 40 s, so its p99 is a p99; one walker gave ~10, whose "p99" was their
# maximum.
IDLE_WALKERS = 20
# The simulated lamps' processes, each one paho client for its districts' lamps. Real lamps each
# have their own connection; 3,500 behind one client in one thread made a burst of commands
# queue there (the bench's artefact, not the deployment's): the commands of different lamps are
# handled side by side by these.
LAMP_PROCESSES = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench brighten``."""
    parser.add_argument("--walkers", type=int, default=1000, help="simultaneous walkers (default 1000)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument(
        "--idle-duration", type=float, default=40.0, help="seconds of the idle baseline (default 40)"
    )
    parser.add_argument(
        "--idle-walkers",
        type=int,
        default=IDLE_WALKERS,
        help=f"walkers of the idle baseline, spread over the second (default {IDLE_WALKERS})",
    )
    parser.add_argument("--lamps", type=int, default=3500, help="lamps placed (default 3500, the 2022 zones)")
    parser.add_argument("--api-workers", type=int, default=2, help="streetlight api --workers (default 2)")
    parser.add_argument(
        "--clients", type=int, default=0, help="walker client processes (default: 1 per 1,000 walkers)"
    )
    parser.add_argument(
        "--transport",
        choices=("ws", "http"),
        # ws: the app's walk-along transport (one connection per walk, no request per position);
        # it meets both targets at 1,000 walkers on 2 cores (docs/benchmarks.md), HTTP does not.
        default="ws",
        help="positions over the walk's WebSocket (/v1/walks/{id}/live, default) or as HTTP POSTs",
    )
    parser.add_argument(
        "--fast-db",
        action="store_true",
        help="the private PostgreSQL with fsync and synchronous commit off (the tests' settings, "
        "not as deployed); default: durable",
    )
    parser.add_argument(
        "--lamp-processes",
        type=int,
        default=LAMP_PROCESSES,
        help=f"processes hosting the simulated lamps, by district (default {LAMP_PROCESSES})",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--dump",
        type=Path,
        default=None,
        help="a folder to write each phase's raw samples and lamp arrivals to (JSON, for analysis)",
    )


# The machine's speed figure: this loop in a fresh interpreter (best of three), so results from
# machines of different speed can be read side by side (issue 18: 1.49 s on a slow one).
SPEED_LOOP = (
    "import time\nt = time.perf_counter()\nx = 0\n"
    "for i in range(10_000_000):\n    x += i\nprint(time.perf_counter() - t)"
)


def python_loop_s() -> float:
    """Seconds a fresh CPython takes for a 10-million-iteration ``x += i`` loop (best of three)."""
    runs = [subprocess.run([PY, "-c", SPEED_LOOP], capture_output=True, text=True, check=True) for _ in "abc"]
    return round(min(float(run.stdout) for run in runs), 3)


def commit_ms(db_url: str, count: int = 200) -> float:
    """Median milliseconds of one small committed transaction on the bench's database: how fast
    this machine's PostgreSQL makes a commit durable (its disk's flush, with fsync on)."""
    times: list[float] = []
    with psycopg.connect(db_url, autocommit=True) as conn:
        # A logged table: a temporary one writes no WAL, and its commit waits for no flush.
        conn.execute("CREATE TABLE bench_speed_probe (n int)")
        for n in range(count):
            t = time.perf_counter()
            conn.execute("INSERT INTO bench_speed_probe VALUES (%s)", (n,))
            times.append(time.perf_counter() - t)
        conn.execute("DROP TABLE bench_speed_probe")
    times.sort()
    return round(times[len(times) // 2] * 1000, 3)


def durability(db_url: str) -> dict[str, str]:
    """The server's ``fsync`` and ``synchronous_commit`` (on and on: durable, as deployed)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')"
        ).fetchall()
    return {str(name): str(value) for name, value in rows}


def say(text: str) -> None:
    """Progress on stderr (stdout's last line is the JSON)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def percentile_ms(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of seconds, in ms; None without samples."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] * 1000, 2)


# --------------------------------------------------------------------------- processes and CPU


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live descendants."""
    tree = _children()
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


class CpuMeter:
    """CPU used by named process trees between ``start()`` and ``stop()``, in cores."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._c0: dict[str, float] = {}
        self.cores: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._c0 = {name: tree_cpu_s(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        span = max(1e-9, time.monotonic() - self._t0)
        self.cores = {
            name: round((tree_cpu_s(pid) - self._c0.get(name, 0.0)) / span, 2)
            for name, pid in self.pids.items()
        }
        return self.cores


def postmaster_pid(pg: Any) -> int | None:
    """The PostgreSQL server's pid when we started it (pg_ctl cluster)."""
    datadir = getattr(pg, "datadir", None)
    if datadir is None:
        return None
    try:
        return int((Path(datadir) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Services:
    """The services under test, each in its own process."""

    db_url: str
    mqtt_url: str
    api_base: str
    procs: dict[str, subprocess.Popen[bytes]]
    pids: dict[str, int]
    kinds: dict[str, str]


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Wait for a 200 from ``url`` (the API's /readyz)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with status {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready")


def wait_leases(
    db_url: str, districts: Sequence[str], proc: subprocess.Popen[bytes], timeout_s: float = 30.0
) -> None:
    """Wait until the controller holds a lease on every district."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(db_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"controller exited with status {proc.returncode}")
            rows = conn.execute(
                "SELECT district_code FROM controller_leases WHERE expires_at > now()"
            ).fetchall()
            if set(districts) <= {str(r[0]) for r in rows}:
                return
            time.sleep(0.2)
    raise TimeoutError("the controller did not take every district")


def _log(tmp: Path, name: str) -> int:
    """A service's stderr goes to a file in the run's folder (kept off the benchmark's output);
    the descriptor is closed in this process by ``services`` once the child has it."""
    fd = os.open(tmp / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _LOG_FDS.append(fd)
    return fd


_LOG_FDS: list[int] = []


@contextlib.contextmanager
def services(
    tmp: Path,
    *,
    api_workers: int,
    prepare: Callable[[str], None] | None = None,
    controller: bool = True,
    ingest_metrics_port: int | None = None,
    extra_env: dict[str, str] | None = None,
    durable: bool = False,
    ingest_jobs: bool = False,
) -> Iterator[Services]:
    """PostgreSQL, Mosquitto, the API and (optionally) the controller and ingest, each a process.

    ``durable``: a private PostgreSQL flushes every commit to disk, as deployed (fsync and
    synchronous commit on); otherwise it runs with the tests' settings.

    ``prepare(database_url)`` runs after the migrations and before the services start (lamps)."""
    from devkit.localservices import free_port, provide_mqtt, provide_pg, start_mosquitto, terminate
    from store import migrate
    from streetlight.settings import Settings

    settings = Settings.from_env()
    try:
        # Nagle off on the broker side too (bench controller: 43 ms -> 2.5 ms); a latency deployment
        # sets it. The development config saves the broker's store every second (tests kill it
        # and count on its sessions): Mosquitto does that in its one thread, so every message in
        # flight waits. A deployment keeps Mosquitto's default (every 30 min, and at shutdown).
        mqtt_svc = start_mosquitto(tmp / "mosquitto", extra_config=BROKER_CONFIG)
    except FileNotFoundError:
        mqtt_svc = provide_mqtt(None, tmp)
    pg = provide_pg(settings.database_url, tmp, durable=durable)
    dbname = f"bench_{uuid.uuid4().hex[:8]}"
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with psycopg.connect(pg.url, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{dbname}"')
        db_url = pg.database_url(dbname)
        migrate(db_url)
        if prepare is not None:
            prepare(db_url)
        port = free_port()
        # Every simulated resident registers from this one host: no per-address registration limit.
        env = {
            **os.environ,
            "STREETLIGHT_LOG_LEVEL": "WARNING",
            "STREETLIGHT_API_REGISTRATIONS_PER_HOUR": "0",
            **(extra_env or {}),
        }
        cli = [PY, "-m", "streetlight.cli"]
        api_argv = [*cli, "api", "--port", str(port), "--database-url", db_url]
        api_argv += ["--workers", str(api_workers)]
        procs["api"] = subprocess.Popen(api_argv, env=env, stdout=subprocess.DEVNULL, stderr=_log(tmp, "api"))
        if controller:
            procs["controller"] = subprocess.Popen(
                [
                    *cli,
                    "controller",
                    "--districts",
                    "all",
                    "--mqtt-url",
                    mqtt_svc.url,
                    "--database-url",
                    db_url,
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=_log(tmp, "controller"),
            )
        if ingest_metrics_port is not None:
            ingest_flags = ["--no-migrate", "--metrics-port", str(ingest_metrics_port)]
            if not ingest_jobs:  # the periodic passes (offline, mass outages) only when asked
                ingest_flags.insert(1, "--no-jobs")
            # The background stream comes from 500 lamp ids at up to 20 msg/s each, far over one
            # device's message rate: without this, ingest would refuse most of it as floods.
            ingest_flags += ["--device-rate", "0"]
            procs["ingest"] = subprocess.Popen(
                [*cli, "ingest", "--mqtt-url", mqtt_svc.url, "--database-url", db_url, *ingest_flags],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=_log(tmp, "ingest"),
            )
        while _LOG_FDS:
            os.close(_LOG_FDS.pop())
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/readyz", procs["api"])
        pids = {name: p.pid for name, p in procs.items()}
        if (pm := postmaster_pid(pg)) is not None:
            pids["postgres"] = pm
        if mqtt_svc.proc is not None:
            pids["mosquitto"] = mqtt_svc.proc.pid
        yield Services(
            db_url, mqtt_svc.url, base, procs, pids, {"database": pg.kind, "broker": mqtt_svc.kind}
        )
    finally:
        for proc in procs.values():
            terminate(proc)
        with contextlib.suppress(psycopg.Error), psycopg.connect(pg.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        pg.stop()
        mqtt_svc.stop()


# --------------------------------------------------------------------------- the walkers' client


def _placement(lamps: int, seed: int) -> Any:
    from firmware_sim.placement import place_lamps

    return place_lamps(lamps, seed=seed, id_prefix="b")


def _tell(word: str) -> None:
    sys.stdout.write(word + "\n")
    sys.stdout.flush()


# uvicorn closes a keep-alive connection idle for 5 s; one idle longer than this is not reused.
IDLE_REUSE_S = 3.0


class _Conn:
    """One keep-alive HTTP/1.1 connection (requests one at a time)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.used = time.monotonic()


class LeanHttp:
    """A minimal HTTP/1.1 client over a pool of keep-alive connections.

    httpx costs about 3 ms of CPU per request here (measured: one client process at 0.63 core for
    212 requests/s), so with it the load generator, not the API, set the pace. This one writes a
    request and reads a Content-Length answer, nothing more (uvicorn always sends the length).
    """

    def __init__(self, base: str, size: int) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._free: asyncio.LifoQueue[_Conn] = asyncio.LifoQueue()
        self._size = size
        self._opened = 0
        self.conns: list[_Conn] = []

    async def _get(self) -> _Conn:
        if self._free.empty() and self._opened < self._size:
            self._opened += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self._opened -= 1
                raise
            conn = _Conn(reader, writer)
            self.conns.append(conn)
            return conn
        conn = await self._free.get()
        if time.monotonic() - conn.used > IDLE_REUSE_S:  # the server may have closed it (keep-alive 5 s)
            conn.writer.close()
            self._opened -= 1
            self.conns.remove(conn)
            return await self._get()
        return conn

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One request; returns (status, decoded JSON or None). A kept-alive connection the server
        closed before answering a byte is replaced and the request sent once more on a new one,
        as HTTP clients do for a connection closed without an answer."""
        try:
            return await self._request(method, path, body, headers)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise
            return await self._request(method, path, body, headers)

    async def _request(
        self, method: str, path: str, body: Any, headers: dict[str, str] | None
    ) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        conn = await self._get()
        try:
            conn.writer.write(head.encode() + b"\r\n" + data)
            raw = await conn.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            payload = await conn.reader.readexactly(length) if length else b""
        except BaseException:
            conn.writer.close()
            self._opened -= 1
            self.conns.remove(conn)
            raise
        conn.used = time.monotonic()
        self._free.put_nowait(conn)
        return status, (orjson.loads(payload) if payload else None)

    async def close(self) -> None:
        """Close every connection."""
        for conn in self.conns:
            conn.writer.close()
        self.conns.clear()


async def _client(args: argparse.Namespace) -> None:
    """The walkers of one client process; prints ``ready``, waits for ``go``, writes samples to --out."""
    from websockets.exceptions import ConnectionClosed

    from firmware_sim.residents import StreetGraph, Walker

    graph = StreetGraph(_placement(args.lamps, args.seed))
    rng = random.Random(f"{args.seed}:{args.first}")
    walkers = [Walker.start(args.first + i, graph, rng) for i in range(args.walkers)]
    client = LeanHttp(args.base, args.connections)
    gate = asyncio.Semaphore(32)

    async def register(walker: Walker) -> tuple[str, dict[str, str]]:
        async with gate:
            status, answer = await client.request("POST", "/v1/residents")
            if status != 201:
                raise RuntimeError(f"POST /v1/residents: {status} {answer}")
            headers = {"Authorization": f"Bearer {answer['token']}"}
            status, answer = await client.request("POST", "/v1/walks", walker.gps_fix().as_json(), headers)
            if status != 201:
                raise RuntimeError(f"POST /v1/walks: {status} {answer}")
            return str(answer["walk_id"]), headers

    walks = await asyncio.gather(*(register(w) for w in walkers))
    sockets: list[Any] = []
    if args.transport == "ws":
        from websockets.asyncio.client import connect

        ws_base = args.base.replace("http://", "ws://", 1)

        async def open_live(walk_id: str, headers: dict[str, str]) -> Any:
            async with gate:
                # No permessage-deflate: positions are ~100 bytes, compressing them only costs CPU.
                ws = await connect(
                    f"{ws_base}/v1/walks/{walk_id}/live", additional_headers=headers, compression=None
                )
                hello = orjson.loads(await ws.recv())
                if hello.get("status") != "live":
                    raise RuntimeError(f"live socket refused: {hello}")
                return ws

        sockets = list(await asyncio.gather(*(open_live(w, h) for w, h in walks)))
    _tell("ready")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    # The measuring tool must not add pauses of its own: no cyclic collection during the phase
    # (it holds at most a few thousand samples per walker-minute; everything is freed at exit).
    gc.collect()
    gc.freeze()
    gc.disable()
    samples: list[tuple[str, float, float, int]] = []
    t0 = time.perf_counter() + 0.2
    end = t0 + args.duration

    async def send_http(walk_id: str, headers: dict[str, str], body: dict[str, Any]) -> int:
        status, _ = await client.request("POST", f"/v1/walks/{walk_id}/positions", body, headers)
        return status

    async def send_ws(ws: Any, body: dict[str, Any]) -> int:
        await ws.send(orjson.dumps(body).decode())
        answer = orjson.loads(await ws.recv())
        return 200 if "lamps" in answer else int(answer.get("status") or 0)

    async def walk(k: int, walker: Walker, walk_id: str, headers: dict[str, str]) -> None:
        due = t0 + k / len(walkers)
        ws = sockets[k] if sockets else None
        while due < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            walker.step(1.0)
            body = walker.gps_fix().as_json()
            sent = time.perf_counter()
            try:
                status = await (send_ws(ws, body) if ws is not None else send_http(walk_id, headers, body))
            except ConnectionClosed:
                samples.append((walk_id, sent, time.perf_counter(), 0))
                return
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
            samples.append((walk_id, sent, time.perf_counter(), status))
            due = max(due + 1.0, time.perf_counter())

    await asyncio.gather(
        *(walk(k, w, walk_id, h) for k, (w, (walk_id, h)) in enumerate(zip(walkers, walks, strict=True)))
    )
    for ws in sockets:
        with contextlib.suppress(Exception):
            await ws.send('{"op":"end"}')
            await ws.recv()
            await ws.close()
    if not sockets:
        for walk_id, headers in walks:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError, ValueError):
                await client.request("POST", f"/v1/walks/{walk_id}/end", None, headers)
    await client.close()
    await asyncio.to_thread(Path(args.out).write_text, json.dumps(samples))
    _tell("done")


def tap_main(argv: list[str] | None = None) -> int:
    """``python -m devkit.bench.brighten tap --mqtt-url URL --out FILE``: with ``--dump``, a second
    subscriber to every lamp's commands (QoS 0, its own process, doing nothing but stamping each
    arrival), so a command's time from the broker can be told from the lamps' own client's; writes
    ``[[perf_counter, cmd_id], ...]`` when told ``stop`` on stdin."""
    from broker import paho_client, parse_mqtt_url
    from devkit.bench.controller import nodelay

    p = argparse.ArgumentParser(prog="devkit.bench.brighten tap")
    p.add_argument("--mqtt-url", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    params = parse_mqtt_url(args.mqtt_url)
    seen: list[tuple[float, str]] = []
    subscribed = threading.Event()
    client = paho_client(params, f"brighten-tap-{uuid.uuid4().hex[:8]}")

    def on_connect(c: Any, *_a: Any) -> None:
        nodelay(c)
        c.subscribe("sl/v1/+/+/cmd", 0)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        at = time.perf_counter()
        seen.append((at, str(orjson.loads(msg.payload).get("cmd_id"))))

    client.on_connect = on_connect
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    client.connect(params.host, params.port, keepalive=30)
    client.loop_start()
    subscribed.wait(10)
    gc.disable()
    _tell("ready")
    sys.stdin.readline()
    client.disconnect()
    client.loop_stop()
    Path(args.out).write_text(json.dumps(seen))
    _tell("done")
    return 0


def lamps_main(argv: list[str] | None = None) -> int:
    """``python -m devkit.bench.brighten lamps ...``: one process of simulated lamps (a
    ``LampFleet`` for some districts). Prints ``ready`` once subscribed; on ``dump FILE`` writes
    the commands received since the last dump (``[[perf_counter, device_id, payload], ...]``)
    and prints ``ok``; ends on ``stop`` or end of input."""
    from broker import parse_mqtt_url
    from devkit.bench.controller import LampFleet, LampSpec

    p = argparse.ArgumentParser(prog="devkit.bench.brighten lamps")
    p.add_argument("--mqtt-url", required=True)
    p.add_argument("--lamps", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--districts", required=True, help="comma-separated district codes")
    args = p.parse_args(argv)
    mine = set(args.districts.split(","))
    specs = [
        LampSpec(lp.lamp_id, lp.district_code, lp.lat_deg, lp.lon_deg)
        for lp in _placement(args.lamps, args.seed).lamps
        if lp.district_code in mine
    ]
    with LampFleet(parse_mqtt_url(args.mqtt_url), specs, buffered_reads=True) as fleet:
        # A short-lived process: its objects stay; no collector pause while it records arrivals.
        gc.collect()
        gc.freeze()
        gc.disable()
        _tell("ready")
        done = 0
        for line in sys.stdin:
            word, _, rest = line.strip().partition(" ")
            if word == "dump":
                got = fleet.received[done:]  # the paho thread only appends
                done += len(got)
                Path(rest).write_bytes(orjson.dumps([(r.at, r.device_id, r.payload) for r in got]))
                _tell("ok")
            elif word == "stop":
                break
    return 0


class LampProcesses:
    """The simulated lamps in ``count`` processes (``lamps_main``), districts dealt out so each
    hosts about as many lamps; ``received()`` gathers what they got since the last call."""

    def __init__(self, mqtt_url: str, placement: Any, args: argparse.Namespace, tmp: Path) -> None:
        per_district: dict[str, int] = {}
        for lamp in placement.lamps:
            per_district[lamp.district_code] = per_district.get(lamp.district_code, 0) + 1
        count = max(1, min(args.lamp_processes, len(per_district)))
        groups: list[list[str]] = [[] for _ in range(count)]
        sizes = [0] * count
        for district, n in sorted(per_district.items(), key=lambda kv: -kv[1]):
            k = sizes.index(min(sizes))
            groups[k].append(district)
            sizes[k] += n
        self._tmp = tmp
        self._argv = [
            [
                *(PY, "-m", "devkit.bench.brighten", "lamps", "--mqtt-url", mqtt_url),
                *("--lamps", str(args.lamps), "--seed", str(args.seed), "--districts", ",".join(g)),
            ]
            for g in groups
        ]
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> LampProcesses:
        for argv in self._argv:
            self.procs.append(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            )
        for proc in self.procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"lamp process exited with {proc.wait()}")
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            with contextlib.suppress(OSError, ValueError):
                assert proc.stdin is not None
                proc.stdin.write("stop\n")
                proc.stdin.close()
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    @property
    def pids(self) -> dict[str, int]:
        """The lamp processes, for the CPU meter."""
        return {f"lamps{i}": proc.pid for i, proc in enumerate(self.procs)}

    def received(self) -> list[Any]:
        """The commands every lamp received since the last call, by arrival."""
        from devkit.bench.controller import Received

        got: list[Any] = []
        for i, proc in enumerate(self.procs):
            assert proc.stdin is not None and proc.stdout is not None
            out = self._tmp / f"lamps-{i}.json"
            proc.stdin.write(f"dump {out}\n")
            proc.stdin.flush()
            if proc.stdout.readline().strip() != "ok":
                raise RuntimeError(f"lamp process failed ({proc.wait()})")
            got += [
                Received(float(at), str(dev), payload) for at, dev, payload in orjson.loads(out.read_bytes())
            ]
        got.sort(key=lambda r: r.at)
        return got


def client_main(argv: list[str] | None = None) -> int:
    """``python -m devkit.bench.brighten client ...``: one process of walkers."""
    p = argparse.ArgumentParser(prog="devkit.bench.brighten client")
    p.add_argument("--base", required=True)
    p.add_argument("--walkers", type=int, required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--lamps", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--connections", type=int, default=100)
    p.add_argument("--out", required=True)
    p.add_argument("--transport", choices=("ws", "http"), default="http")
    args = p.parse_args(argv)
    try:
        import uvloop

        uvloop.run(_client(args))
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        asyncio.run(_client(args))
    return 0


# --------------------------------------------------------------------------- the run


def _phase(
    svc: Services,
    tmp: Path,
    fleet: LampProcesses,
    args: argparse.Namespace,
    walkers: int,
    duration: float,
    name: str,
) -> dict[str, Any]:
    clients = max(1, args.clients or math.ceil(walkers / 1000))
    per = [walkers // clients + (1 if i < walkers % clients else 0) for i in range(clients)]
    procs: list[tuple[subprocess.Popen[str], Path]] = []
    first = 0 if name == "idle" else args.idle_walkers
    for i, n in enumerate(per):
        out = tmp / f"{name}-{i}.json"
        argv = [PY, "-m", "devkit.bench.brighten", "client", "--base", svc.api_base]
        argv += ["--walkers", str(n), "--first", str(first), "--duration", str(duration)]
        argv += ["--lamps", str(args.lamps), "--seed", str(args.seed), "--out", str(out)]
        argv += ["--connections", str(max(1, min(200, n // 5))), "--transport", args.transport]
        first += n
        procs.append((subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True), out))
    try:
        for proc, _ in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"walker client exited with {proc.wait()}")
        # Let the walk starts' commands settle, so the phase measures positions: 1,000 walks
        # started within seconds command ~5,000 lamps, and their commands, acks and rows keep the
        # controller busy for a few seconds after the last walk started.
        settle_s = _settle(fleet, walkers)
        meter = CpuMeter(
            {**svc.pids, **fleet.pids, **{f"client{i}": p.pid for i, (p, _) in enumerate(procs)}}
        )
        meter.start()
        for proc, _ in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc, _ in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != "done":
                raise RuntimeError(f"walker client failed ({proc.wait()})")
        cores = meter.stop()
        cores["lamps"] = round(sum(cores.pop(name) for name in fleet.pids), 2)
        time.sleep(1.0)  # the last commands in flight
    finally:
        for proc, _ in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()
    samples: list[tuple[str, float, float, int]] = []
    for _, out in procs:
        samples += [(str(w), float(a), float(b), int(c)) for w, a, b, c in json.loads(out.read_text())]
    received = fleet.received()
    if args.dump is not None:
        args.dump.mkdir(parents=True, exist_ok=True)
        raw = {
            "epoch_offset_s": time.time() - time.perf_counter(),
            "samples": samples,
            "received": [(r.at, r.device_id, r.payload) for r in received],
        }
        (args.dump / f"{name}.json").write_text(json.dumps(raw))
    return {**_figures(samples, received, cores, duration), "settled_s": settle_s}


# The walk starts have settled when the lamps receive no more than this share of the walkers in
# commands over SETTLE_WINDOW_S (the walks' own positions have not started yet), checked for at
# most SETTLE_MAX_S.
SETTLE_SHARE = 0.01
SETTLE_WINDOW_S = 0.5
SETTLE_MAX_S = 30.0


def _settle(fleet: LampProcesses, walkers: int) -> float:
    """Wait until the walk starts' commands have stopped reaching the lamps (and a window
    more, for their acks and rows); returns the seconds waited."""
    t0 = time.monotonic()
    time.sleep(1.0)
    fleet.received()  # the walk starts' commands so far
    while time.monotonic() - t0 < SETTLE_MAX_S:
        time.sleep(SETTLE_WINDOW_S)
        if len(fleet.received()) <= max(1, walkers * SETTLE_SHARE):
            break
    time.sleep(SETTLE_WINDOW_S)
    fleet.received()
    return round(time.monotonic() - t0, 1)


def _figures(
    samples: list[tuple[str, float, float, int]],
    received: Sequence[Any],
    cores: dict[str, float],
    duration: float,
) -> dict[str, Any]:
    arrivals: dict[str, list[float]] = {}
    stamped: dict[tuple[str, float], int] = {}  # (walk, arrival) -> the controller's ts (epoch ms)
    commands = 0
    for r in received:
        source = str(r.payload.get("source"))
        if r.payload.get("priority") == "walk":
            arrivals.setdefault(source, []).append(r.at)
            stamped[(source, r.at)] = int(r.payload.get("ts") or 0)
            commands += 1
    # perf_counter is CLOCK_MONOTONIC, the same in every process; the command's ts is the
    # controller's wall clock: this offset puts both on one axis (to the millisecond).
    epoch_offset_s = time.time() - time.perf_counter()
    splits: list[tuple[float, float, float]] = []  # (latency, answer -> controller, controller -> lamp) ms
    by_walk: dict[str, list[tuple[float, float]]] = {}
    statuses: dict[str, int] = {}
    for walk_id, sent, answered, status in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status == 200:
            by_walk.setdefault(walk_id, []).append((sent, answered))
    latencies: list[float] = []
    from_send: list[float] = []
    slow_at: list[float] = []  # when (answer time) the updates over 50 ms were answered
    before_answer = 0
    for walk_id, updates in by_walk.items():
        updates.sort()
        times = sorted(arrivals.get(walk_id, []))
        for k, (sent, answered) in enumerate(updates):
            nxt = updates[k + 1][0] if k + 1 < len(updates) else math.inf
            first = next((a for a in times if sent <= a < nxt), None)
            if first is None:
                continue
            if first < answered:
                before_answer += 1
            latencies.append(max(0.0, first - answered))
            ts_ms = stamped.get((walk_id, first), 0)
            if ts_ms:
                to_controller_ms = ts_ms - (answered + epoch_offset_s) * 1000.0
                to_lamp_ms = (first + epoch_offset_s) * 1000.0 - ts_ms
                splits.append((latencies[-1] * 1000.0, to_controller_ms, to_lamp_ms))
            from_send.append(first - sent)
            if first - answered > 0.05:
                slow_at.append(answered)
    updates_ok = sum(len(u) for u in by_walk.values())
    # Where the slow ones are: a burst (the hold renewals every half hold) or spread over the run.
    start = min((sent for _, sent, _, _ in samples), default=0.0)
    per_second: dict[int, int] = {}
    for at in slow_at:
        per_second[int(at - start)] = per_second.get(int(at - start), 0) + 1
    arrivals_per_second: dict[int, int] = {}
    for times in arrivals.values():
        for at in times:
            if at >= start:
                arrivals_per_second[int(at - start)] = arrivals_per_second.get(int(at - start), 0) + 1
    http = [answered - sent for _, sent, answered, status in samples if status == 200]
    # Where the slowest 1 % spent their time: until the controller stamped the command (API,
    # PostgreSQL's NOTIFY, the controller's queue and work), then broker and lamp.
    splits.sort()
    tail = splits[-max(1, len(splits) // 100) :] if splits else []
    tail_split = {
        "answer_to_controller_ms_p50": percentile_ms([t[1] / 1000.0 for t in tail], 50),
        "controller_to_lamp_ms_p50": percentile_ms([t[2] / 1000.0 for t in tail], 50),
    }
    return {
        "updates": len(samples),
        "updates_ok": updates_ok,
        "updates_per_s": round(len(samples) / duration, 1),
        "measured": len(latencies),
        "before_answer": before_answer,
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "p99_ms": percentile_ms(latencies, 99),
        "max_ms": percentile_ms(latencies, 100),
        "from_send_p99_ms": percentile_ms(from_send, 99),
        "http_p50_ms": percentile_ms(http, 50),
        "http_p99_ms": percentile_ms(http, 99),
        "commands": commands,
        "commands_per_update": round(commands / max(1, updates_ok), 3),
        "statuses": statuses,
        "cpu_cores": cores,
        "over_50ms_by_second": dict(sorted(per_second.items())),
        "commands_peak_per_s": max(arrivals_per_second.values(), default=0),
        "slowest_1pct": tail_split,
    }


def seed_lamps(db_url: str, placement: Any) -> None:
    """Upsert the placed lamps into ``devices`` (what births through ingest would do)."""
    from store.devices import upsert_device

    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        for lamp in placement.lamps:
            upsert_device(
                conn,
                lamp.lamp_id,
                kind="lamp",
                district_code=lamp.district_code,
                dong_code=lamp.dong_code,
                lamp_number=lamp.lamp_number,
                lat=lamp.lat_deg,
                lon=lamp.lon_deg,
            )


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, measure the idle walkers, then ``--walkers``; stop everything."""

    logging.basicConfig(level="WARNING", stream=sys.stderr)
    load_before = [round(x, 2) for x in os.getloadavg()]  # how quiet the machine was (1, 5, 15 min)
    placement = _placement(args.lamps, args.seed)
    districts = sorted({lamp.district_code for lamp in placement.lamps})
    with tempfile.TemporaryDirectory(prefix="bench-brighten-") as tmp_name:
        tmp = Path(tmp_name)
        prepare = functools.partial(seed_lamps, placement=placement)
        with services(tmp, api_workers=args.api_workers, prepare=prepare, durable=not args.fast_db) as svc:
            wait_leases(svc.db_url, districts, svc.procs["controller"])
            machine = {
                "python_loop_10m_s": python_loop_s(),
                "commit_ms_p50": commit_ms(svc.db_url),
                "postgres": durability(svc.db_url),
            }
            say(f"machine: {json.dumps(machine)}")
            with LampProcesses(svc.mqtt_url, placement, args, tmp) as fleet, _tap(svc, args) as tapped:
                _await_lamps(svc, len(placement.lamps))
                idle_walkers = args.idle_walkers
                say(f"bench brighten: {len(placement.lamps)} lamps; idle: {idle_walkers} walkers")
                idle = _phase(svc, tmp, fleet, args, idle_walkers, args.idle_duration, "idle")
                say(f"idle: {json.dumps({k: idle[k] for k in ('measured', 'p50_ms', 'p99_ms')})}")
                say(f"load: {args.walkers} walkers for {args.duration:g} s")
                load = _phase(svc, tmp, fleet, args, args.walkers, args.duration, "load")
                say(f"load: {json.dumps({k: load[k] for k in ('measured', 'p50_ms', 'p99_ms')})}")
            kinds = svc.kinds
        if tapped is not None and args.dump is not None:
            (args.dump / "tap.json").write_text(tapped.read_text())
    p99, idle99 = load["p99_ms"], idle["p99_ms"]
    # What each process costs per 1,000 positions a second: comparable across runs and machines.
    per_1000 = 1000.0 / max(1.0, load["updates_per_s"])
    cores_per_1000 = {name: round(c * per_1000, 3) for name, c in load["cpu_cores"].items()}
    kept_up = load["updates_per_s"] >= 0.95 * args.walkers and (load["http_p99_ms"] or 0) <= 1000
    clients = max(1, args.clients or math.ceil(args.walkers / 1000))
    return {
        "bench": "brighten",
        "transport": args.transport,
        "walkers": args.walkers,
        "updates": load["updates"],
        "p50_ms": load["p50_ms"],
        "p99_ms": p99,
        "idle_p99_ms": idle99,
        "commands_per_update": load["commands_per_update"],
        "measured": load["measured"],
        "p95_ms": load["p95_ms"],
        "max_ms": load["max_ms"],
        "before_answer": load["before_answer"],
        "from_send_p99_ms": load["from_send_p99_ms"],
        "updates_per_s": load["updates_per_s"],
        "http_p50_ms": load["http_p50_ms"],
        "http_p99_ms": load["http_p99_ms"],
        "statuses": load["statuses"],
        "settled_s": load["settled_s"],
        "idle_walkers": args.idle_walkers,
        "idle_measured": idle["measured"],
        "idle_p50_ms": idle["p50_ms"],
        "duration_s": args.duration,
        "lamps": args.lamps,
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "processes": {
            "api": f"streetlight api --workers {args.api_workers}",
            "controller": "streetlight controller --districts all",
            "walker_clients": clients,
            "lamps": f"{len(fleet.procs)} processes (a LampFleet each, one paho client per process)",
            "postgres": kinds["database"],
            "broker": kinds["broker"],
        },
        "cpu_cores_during_load": load["cpu_cores"],
        "cpu_cores_per_1000_positions_per_s": cores_per_1000,
        # The machine it ran on: a fixed Python loop (seconds) and a durable commit (ms), to read
        # results from different machines side by side.
        "machine": machine,
        "over_50ms_by_second": load["over_50ms_by_second"],
        "commands_peak_per_s": load["commands_peak_per_s"],
        "slowest_1pct": load["slowest_1pct"],
        "target_p99_ms": 50,
        "idle_from_send_p99_ms": idle["from_send_p99_ms"],
        # Met only when the API also kept up with the offered rate (an API answering late makes
        # every command "arrive before the answer", which is not a fast system).
        "kept_up": kept_up,
        "met": kept_up and p99 is not None and idle99 is not None and p99 <= 50 and p99 <= 2 * idle99,
    }


@contextlib.contextmanager
def _tap(svc: Services, args: argparse.Namespace) -> Iterator[Path | None]:
    """With ``--dump``: the tap process (``tap_main``) while the phases run; yields its output file."""
    if args.dump is None:
        yield None
        return
    out = Path(tempfile.mkdtemp(prefix="brighten-tap-")) / "tap.json"
    argv = [PY, "-m", "devkit.bench.brighten", "tap", "--mqtt-url", svc.mqtt_url, "--out", str(out)]
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise RuntimeError(f"tap exited with {proc.wait()}")
    try:
        yield out
    finally:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.stdout.readline()
        proc.wait(timeout=30)


def _await_lamps(svc: Services, count: int, timeout_s: float = 40.0) -> None:
    """The API's lamp index is rebuilt every 30 s; the controller's too. Wait until the API has them."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            if httpx.get(svc.api_base + "/readyz", timeout=2.0).json().get("lamps", 0) >= count:
                return
        time.sleep(0.5)
    raise TimeoutError("the API did not load the lamps")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        sys.exit(client_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "lamps":
        sys.exit(lamps_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "tap":
        sys.exit(tap_main(sys.argv[2:]))
    sys.exit(2)
