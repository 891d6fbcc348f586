"""Scale-out on one machine (issue #9): several ingest workers and several controllers against one
Mosquitto split the work, and a killed one is replaced without losing anything.

Real processes (`streetlight ingest --workers 2`, two `streetlight controller`), a private
mosquitto with persistence, a fresh database; SIGKILL for the faults.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from devkit.localservices import MqttService, free_port, start_mosquitto, terminate
from store import lease_owners, migrate

ALL_CENTRES = 26  # the 25 districts and the city centre


@pytest.fixture
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttService]:
    # Under /tmp, not pytest's private folder: mosquitto drops root and must reach its store.
    work = Path("/tmp") / f"sl-scale-{os.getpid()}-{time.monotonic_ns()}"
    svc = start_mosquitto(work)
    try:
        yield svc
    finally:
        svc.stop()


def _wait(what: str, cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _worker_pid(client_id: str, index: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ours = b"streetlight.cli.ingest" in argv and client_id.encode() in argv
        if ours and argv[argv.index(b"--index") + 1] == str(index).encode():
            return int(entry.name)
    return None


def _fastpub(broker: MqttService, count: int, prefix: str, rate: float) -> list[str]:
    return [
        *(sys.executable, "-m", "devkit.bench.fastpub", "--port", str(broker.port)),
        *("--count", str(count), "--lamps", "200", "--qos", "1", "--prefix", prefix, "--rate", str(rate)),
    ]


def _publish(broker: MqttService, count: int, prefix: str, rate: float) -> None:
    out = subprocess.run(
        _fastpub(broker, count, prefix, rate),
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert json.loads(out.stdout.decode().strip().splitlines()[-1])["sent"] == count


def _rows(db_url: str, prefix: str) -> tuple[int, int]:
    with psycopg.connect(db_url) as c:
        row = c.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry WHERE device_id LIKE %s",
            (prefix + "%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_two_ingest_workers_split_the_stream_and_a_killed_one_is_replaced_losing_nothing(
    broker: MqttService, db_url: str, unique_id: str
) -> None:
    env = {**os.environ, "MQTT_URL": broker.url, "DATABASE_URL": db_url}
    port = free_port()
    client_id = f"scale-{unique_id}"
    ingest = subprocess.Popen(
        [
            *(sys.executable, "-m", "streetlight.cli", "ingest", "--workers", "2", "--client-id", client_id),
            *("--metrics-port", str(port), "--no-jobs"),
        ],
        env=env,
    )
    try:
        for i in (0, 1):
            _wait(f"worker {i} subscribed", lambda i=i: _metric(port + i, "ingest_subscribed") == 1, 60)  # type: ignore[misc]
        prefix = f"s{unique_id}-"
        _publish(broker, 6000, prefix, rate=3000)
        _wait("6,000 rows", lambda: _rows(db_url, prefix)[1] == 6000, 60)
        split = [_metric(port + i, "ingest_messages_received_total") or 0 for i in (0, 1)]
        assert all(n > 1000 for n in split), f"the shared subscription did not split the work: {split}"

        victim = _worker_pid(client_id, 1)
        assert victim is not None
        second = f"t{unique_id}-"  # other lamps, so each batch is counted on its own
        publisher = subprocess.Popen(_fastpub(broker, 6000, second, 1500), stdout=subprocess.DEVNULL)
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)  # mid-stream
        assert publisher.wait(timeout=60) == 0
        _wait("worker 1 replaced", lambda: (_worker_pid(client_id, 1) or victim) != victim, 30)
        _wait("worker 1 subscribed again", lambda: _metric(port + 1, "ingest_subscribed") == 1, 60)
        _wait("6,000 more rows", lambda: _rows(db_url, second)[1] == 6000, 90)
        assert _rows(db_url, second) == (6000, 6000)  # 0 lost, 0 duplicates across the kill
        assert _rows(db_url, prefix) == (6000, 6000)
    finally:
        ingest.send_signal(signal.SIGTERM)
        try:
            ingest.wait(timeout=20)
        except subprocess.TimeoutExpired:
            ingest.kill()
            ingest.wait()
        for i in (0, 1):
            pid = _worker_pid(client_id, i)
            if pid:
                os.kill(pid, signal.SIGKILL)


def test_two_controllers_share_the_districts_and_one_takes_all_when_the_other_dies(
    mqtt_service: MqttService, db_url: str
) -> None:
    migrate(db_url, timescale=False)  # before either starts, so the first query finds the tables
    env = {**os.environ, "MQTT_URL": mqtt_service.url, "DATABASE_URL": db_url}
    args = [sys.executable, "-m", "streetlight.cli", "controller", "--districts", "all", "--lease-ttl-s", "3"]
    metrics = free_port()
    a = subprocess.Popen([*args, "--owner", "ctl-a"], env=env)
    b = subprocess.Popen([*args, "--owner", "ctl-b", "--metrics-port", str(metrics)], env=env)
    try:
        with psycopg.connect(db_url, autocommit=True) as conn:

            def shares() -> dict[str, int]:
                owners = [o for d, o in lease_owners(conn).items() if not d.startswith("member/")]
                return {o: owners.count(o) for o in set(owners)}

            _wait("all districts leased by both", lambda: sum(shares().values()) == ALL_CENTRES, 60)
            _wait("a fair split", lambda: sorted(shares().values()) == [13, 13], 30)
            a.send_signal(signal.SIGKILL)
            a.wait()
            killed_at = time.monotonic()
            _wait("ctl-b holding every district", lambda: shares() == {"ctl-b": ALL_CENTRES}, 30)
            takeover_s = time.monotonic() - killed_at
        assert takeover_s < 10.0, f"takeover took {takeover_s:.1f} s"
        # what monitoring sees: the survivor reports every district
        _wait(
            "metrics", lambda: _metric(metrics, "streetlight_controller_districts_owned") == ALL_CENTRES, 10
        )
    finally:
        for p in (a, b):
            if p.poll() is None:
                terminate(p)
