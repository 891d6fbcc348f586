"""Building blocks of the fault-injection scenarios: real processes, a counting publisher, counts.

Over 500 lines on purpose (barely): the process owner, the counting raw-socket publisher and
the counters are the fault scenarios' whole toolbox, used together by every scenario; not
product code.

Everything here starts real things (``streetlight ingest``/``controller``/``api`` as child
processes, a raw-socket MQTT publisher) and gives the scenario what it needs to break them:
the process to SIGKILL, the numbers to compare afterwards. ``Processes`` owns every child it
started and ends them all on exit, so a failed scenario never leaves a process behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg

from devkit.bench.fastpub import connect_packet, publish_packet, telemetry_payload
from devkit.localservices import free_port, tcp_reachable

ROOT = Path(__file__).resolve().parents[2]


def log(text: str) -> None:
    """Progress for a person watching (stderr; stdout is kept for the JSON result)."""
    sys.stderr.write(f"[faults] {text}\n")
    sys.stderr.flush()


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Wait for ``cond``; returns the seconds it took; raises TimeoutError naming ``what``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)
    return time.monotonic() - t0


def scalar(db_url: str, sql: str, *params: object) -> int:
    """One integer from the database (0 for NULL)."""
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def write_figures(out_dir: Path, name: str, figures: dict[str, Any]) -> Path:
    """Keep one scenario's figures as ``<out_dir>/<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(figures, indent=2, sort_keys=True, default=str) + "\n")
    return path


def rss_kib(pid: int) -> int:
    """Resident memory of a process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def metrics(port: int) -> dict[str, float]:
    """An ingest worker's /metrics, summed over labels, by metric name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{")[0]
        values[name] = values.get(name, 0.0) + float(value)
    return values


# --------------------------------------------------------------------------- processes


@dataclass
class Child:
    """One child process we started, and how to start it again."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Child:
        """Start (again); its output is appended to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye (the fault being injected)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL after the timeout; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


class Processes:
    """The children of one scenario; every one is ended on exit, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(Exception):
                child.stop(10.0)

    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            STREETLIGHT_LOG_LEVEL="WARNING",
            STREETLIGHT_API_KDF_TIME_COST="1",
            STREETLIGHT_API_KDF_MEMORY_KIB="8",
            STREETLIGHT_DATA_DIR=str(self.workdir / "data"),
        )
        env.update(extra)
        return env

    def spawn(self, name: str, argv: Sequence[str], **env: str) -> Child:
        child = Child(name, list(argv), self._env(env), self.workdir / "logs" / f"{name}.log")
        self.children.append(child)
        return child.start()

    def ingest(
        self,
        mqtt_url: str,
        database_url: str,
        *,
        name: str = "ingest",
        client_id: str = "faults-ingest",
        metrics_port: int = 0,
        max_delay_ms: float = 50.0,
        extra: Sequence[str] = (),
    ) -> Child:
        """One ``streetlight ingest`` worker on a plain subscription with a persistent session."""
        argv = [
            sys.executable, "-m", "streetlight.cli.ingest", "--index", "0",
            "--subscription", "plain", "--no-jobs", "--client-id", client_id,
            "--max-delay-ms", str(max_delay_ms), "--metrics-port", str(metrics_port),
            "--mqtt-url", mqtt_url, "--database-url", database_url,
            # The scenarios stream load from a few lamp ids, far over one device's message rate.
            "--device-rate", "0", *extra,
        ]  # fmt: skip
        return self.spawn(name, argv)

    def controller(self, mqtt_url: str, database_url: str, *, districts: str = "all", **env: str) -> Child:
        """``streetlight controller`` for the districts given."""
        argv = [
            sys.executable, "-m", "streetlight.cli", "controller", "--districts", districts,
            "--mqtt-url", mqtt_url, "--database-url", database_url, "--lease-ttl-s", "3",
        ]  # fmt: skip
        return self.spawn("controller", argv, **env)

    def sim(
        self,
        mqtt_url: str,
        *,
        id_prefix: str,
        lamps: int = 1,
        keepalive_s: int = 60,
        interval_s: float = 1.0,
        name: str = "sim",
    ) -> Child:
        """``streetlight sim``: lamps of the simulated firmware (no blinkers), each its own connection.

        Each lamp registers its retained ``offline`` will with the connection's ``bdseq``; SIGKILL
        the child and the kernel closes the sockets, so the broker publishes the wills."""
        argv = [
            sys.executable, "-m", "streetlight.cli", "sim", "--lamps", str(lamps), "--no-blinkers",
            "--id-prefix", id_prefix, "--keepalive", str(keepalive_s), "--interval", str(interval_s),
            "--mqtt-url", mqtt_url,
        ]  # fmt: skip
        return self.spawn(name, argv)

    def api(self, database_url: str, port: int, **env: str) -> Child:
        """``streetlight api`` on 127.0.0.1:port."""
        argv = [
            sys.executable, "-m", "streetlight.cli", "api", "--host", "127.0.0.1", "--port", str(port),
            "--database-url", database_url,
        ]  # fmt: skip
        # The scenarios' residents all register from this host: no per-address registration limit.
        return self.spawn("api", argv, **{"STREETLIGHT_API_REGISTRATIONS_PER_HOUR": "0", **env})


def wait_api(port: int, timeout_s: float = 60.0) -> float:
    """Wait until the API answers /healthz (any status: it is up)."""

    def up() -> bool:
        if not tcp_reachable("127.0.0.1", port, 0.2):
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return True
        except OSError:
            return False

    return wait_until(up, timeout_s, f"the API on port {port}", 0.2)


# --------------------------------------------------------------------------- publisher


@dataclass
class PublisherStats:
    """What the publisher did: written to a socket, acknowledged by the broker, connections."""

    written: int = 0
    acked: int = 0
    write_failures: int = 0
    connections: int = 0
    unacked_at_disconnect: int = 0


class SeqPublisher:
    """QoS 1 telemetry from ``lamps`` lamps, each with its own ``seq``, over a raw socket.

    Message ``i`` is lamp ``i % lamps`` with seq ``i // lamps``. PUBACKs are tracked per message,
    so afterwards a scenario knows exactly which messages the broker acknowledged. When the
    connection breaks (the broker was killed) the publisher reconnects and goes on with the next
    message, like a device with a clean session: whatever was in flight is either stored or a
    ``seq`` gap that the backend must detect. It never sends a message twice.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        lamps: int,
        count: int,
        rate_per_s: float,
        prefix: str,
        district: str = "11230",
        ts_ms: int | None = None,
        chunk: int = 50,
    ) -> None:
        self.host, self.port = host, port
        self.lamps, self.count, self.rate = lamps, count, rate_per_s
        self.prefix, self.district = prefix, district
        self.ts_ms = ts_ms or int(time.time() * 1000)
        self.chunk = chunk
        self.acked = bytearray(count)
        self.written = bytearray(count)
        self.stats = PublisherStats()
        self._inflight: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="seq-publisher", daemon=True)
        self.next_index = 0
        self.done = threading.Event()

    def device(self, lamp: int) -> str:
        return f"{self.prefix}{lamp:05d}"

    def packet(self, i: int, packet_id: int) -> bytes:
        lamp, seq = i % self.lamps, i // self.lamps
        topic = f"sl/v1/{self.district}/{self.device(lamp)}/telemetry"
        return publish_packet(topic, telemetry_payload(seq, self.ts_ms + seq, 80), 1, packet_id)

    def start(self) -> SeqPublisher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def join(self, timeout_s: float) -> bool:
        return self.done.wait(timeout_s)

    def __enter__(self) -> SeqPublisher:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- socket

    def _connect(self) -> socket.socket | None:
        while not self._stop.is_set():
            try:
                sock = socket.create_connection((self.host, self.port), timeout=2)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(connect_packet(f"faultpub-{self.prefix}-{self.stats.connections}", 30))
                sock.settimeout(None)
                self.stats.connections += 1
                return sock
            except OSError:
                time.sleep(0.1)
        return None

    def _reader(self, sock: socket.socket, gone: threading.Event) -> None:
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                buf += data
                while len(buf) >= 2:
                    # every packet the broker sends us here is small: 1-byte remaining length
                    kind, length = buf[0] >> 4, buf[1]
                    if len(buf) < 2 + length:
                        break
                    if kind == 4 and length == 2:  # PUBACK
                        (pid,) = struct.unpack("!H", buf[2:4])
                        with self._lock:
                            i = self._inflight.pop(pid, None)
                        if i is not None and not self.acked[i]:
                            self.acked[i] = 1
                            self.stats.acked += 1
                    buf = buf[2 + length :]
        except OSError:
            pass
        finally:
            gone.set()

    def _run(self) -> None:
        try:
            self._publish_all()
        finally:
            self.done.set()

    def _publish_all(self) -> None:
        next_t = time.perf_counter()
        packet_id = 0
        sock: socket.socket | None = None
        gone = threading.Event()
        while self.next_index < self.count and not self._stop.is_set():
            if sock is None or gone.is_set():
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
                    with self._lock:
                        self.stats.unacked_at_disconnect += len(self._inflight)
                        self._inflight.clear()
                sock = self._connect()
                if sock is None:
                    return
                gone = threading.Event()
                threading.Thread(target=self._reader, args=(sock, gone), daemon=True).start()
            start = self.next_index
            end = min(start + self.chunk, self.count)
            parts = []
            with self._lock:
                for i in range(self.next_index, end):
                    packet_id = packet_id % 65535 + 1
                    self._inflight[packet_id] = i
                    parts.append(self.packet(i, packet_id))
            try:
                sock.sendall(b"".join(parts))
                for i in range(self.next_index, end):
                    self.written[i] = 1
                self.stats.written += end - self.next_index
            except OSError:
                self.stats.write_failures += 1
                gone.set()
            # Either way these messages had their one chance (a device does not queue telemetry).
            self.next_index = end
            if self.rate:  # may change while running (a burst)
                next_t += (end - start) / self.rate
                ahead = next_t - time.perf_counter()
                if ahead > 0:
                    time.sleep(ahead)
                elif ahead < -1.0:
                    next_t = time.perf_counter()  # after a stall (broker down) do not burst to catch up
        # Let the last PUBACKs come in, then leave cleanly.
        deadline = time.monotonic() + 5.0
        while sock is not None and not gone.is_set() and self._inflight and time.monotonic() < deadline:
            time.sleep(0.02)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")
            time.sleep(0.05)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class StreamCheck:
    """What the database holds of a SeqPublisher's stream."""

    sent: int
    acked_by_broker: int
    rows: int
    distinct: int
    lost: int
    lost_after_puback: int
    duplicates: int
    missing_detectable: int  # missing seqs below the device's highest stored seq
    missing_undetectable: int  # missing seqs above it (nothing later could reveal them)
    gaps_counted: int  # what ingest counted as seq gaps (device_state)
    lost_indices: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("lost_indices")
        return d


def check_stream(db_url: str, pub: SeqPublisher) -> StreamCheck:
    """Compare the publisher's stream with the telemetry rows of its lamps."""
    like = f"{pub.prefix}%"
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT device_id, seq, count(*) FROM telemetry WHERE device_id LIKE %s GROUP BY 1, 2", (like,)
        ).fetchall()
        gaps_row = conn.execute(
            "SELECT coalesce(sum(seq_gaps), 0) FROM device_state WHERE device_id LIKE %s", (like,)
        ).fetchone()
    stored: dict[str, set[int]] = {}
    total = 0
    for device, seq, n in rows:
        stored.setdefault(str(device), set()).add(int(seq))
        total += int(n)
    distinct = sum(len(s) for s in stored.values())
    lost_idx: list[int] = []
    detectable = undetectable = lost_acked = 0
    sent_n = pub.next_index
    for i in range(sent_n):
        lamp, seq = i % pub.lamps, i // pub.lamps
        seqs = stored.get(pub.device(lamp), set())
        if seq in seqs:
            continue
        lost_idx.append(i)
        if pub.acked[i]:
            lost_acked += 1
        if seqs and seq < max(seqs):
            detectable += 1
        else:
            undetectable += 1
    return StreamCheck(
        sent=sent_n,
        acked_by_broker=pub.stats.acked,
        rows=total,
        distinct=distinct,
        lost=len(lost_idx),
        lost_after_puback=lost_acked,
        duplicates=total - distinct,
        missing_detectable=detectable,
        missing_undetectable=undetectable,
        gaps_counted=int(gaps_row[0]) if gaps_row else 0,
        lost_indices=lost_idx,
    )


def stored_rows(db_url: str, prefix: str) -> int:
    return scalar(db_url, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", f"{prefix}%")


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    t0 = time.monotonic()
    yield lambda: time.monotonic() - t0


__all__ = [
    "ROOT",
    "Child",
    "Processes",
    "PublisherStats",
    "SeqPublisher",
    "StreamCheck",
    "check_stream",
    "free_port",
    "log",
    "metrics",
    "rss_kib",
    "scalar",
    "stored_rows",
    "timed",
    "wait_api",
    "wait_until",
    "write_figures",
]
