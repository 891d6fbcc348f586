"""Delivery through the broker configuration that is deployed, not a benchmark's.

A real Mosquitto is started with exactly what `streetlight provision` writes (password file, ACL,
limits; deploy/mosquitto/mosquitto.conf is the same text), devices publish with their own
credentials, and ingest runs as the `streetlight ingest` command with the ingest account. The
design figure (docs/operations.md, "Broker queue"): ingest may be away for 10 minutes of the
city's traffic (~550 msg/s) without the broker dropping what arrives meanwhile.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.security import DeviceSpec, MosquittoOptions, Registry, write_mosquitto
from devkit.localservices import free_port, tcp_reachable, terminate
from ingest import JobsLeader
from tests.conftest import skip_unless
from tests.helpers import log_events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
RUN_AS = "root" if os.geteuid() == 0 else None  # pytest's 0700 tmp dirs are closed to 'mosquitto'
LAMPS = [DeviceSpec(f"lamp-q{i:02d}", "lamp", "11230") for i in range(20)]


@dataclass
class DeployedBroker:
    port: int
    secrets: dict[str, str]
    proc: subprocess.Popen[bytes]
    conf: str


@pytest.fixture
def deployed(tmp_path: Path) -> Iterator[DeployedBroker]:
    skip_unless(MOSQUITTO is not None, "mosquitto is not installed")
    assert MOSQUITTO is not None
    registry = Registry()
    report = registry.provision(LAMPS)
    port = free_port()
    # Only what a test host needs differs from the deployed options: the port, the log file and
    # the account to run as. Every limit is the default that provision writes.
    options = MosquittoOptions(dev_port=port, log_dest=f"file {tmp_path}/mosquitto.log", run_as=RUN_AS)
    files = write_mosquitto(registry, tmp_path, options)
    proc = subprocess.Popen([MOSQUITTO, "-c", str(files.conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not tcp_reachable("127.0.0.1", port, 0.2):
        assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
        assert time.monotonic() < deadline, "mosquitto did not listen"
        time.sleep(0.05)
    yield DeployedBroker(port, report.secrets, proc, files.conf.read_text())
    terminate(proc)


def _ingest(broker: DeployedBroker, db: str, data_dir: Path, client_id: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        MQTT_URL=f"mqtt://ingest:{broker.secrets['ingest']}@127.0.0.1:{broker.port}",
        DATABASE_URL=db,
        STREETLIGHT_DATA_DIR=str(data_dir),
    )
    # 20 lamps stand for the city here, each sending ~1,000 times its share in seconds: the
    # per-device rate bound would take them for floods. A real device queues ~10 messages in a
    # 10-minute outage (one a minute), far below the bound's burst of 100.
    cmd = [
        *(sys.executable, "-m", "streetlight.cli.ingest", "--no-jobs", "--client-id", client_id),
        *("--device-rate", "0"),
    ]
    with (data_dir / f"{client_id}.log").open("ab") as log:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=log)


def _rows(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT count(*) FROM telemetry WHERE device_id LIKE 'lamp-q%%'").fetchone()
    return int(row[0]) if row else 0


def _publish_from_every_lamp(broker: DeployedBroker, per_lamp: int, qos: int) -> None:
    """Each lamp publishes its own telemetry with its own credentials, as fast as the broker takes it."""
    ts = int(time.time() * 1000)
    clients = []
    for spec in LAMPS:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec.id)
        c.username_pw_set(spec.id, broker.secrets[spec.id])
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        clients.append(c)
    infos = []
    for n in range(per_lamp):
        for spec, c in zip(LAMPS, clients, strict=True):
            body = {"ts": ts + n, "seq": n, "level": 80, "power_w": 36.0, "faults": []}
            infos.append(c.publish(f"sl/v1/11230/{spec.id}/telemetry", json.dumps(body), qos=qos))
    for info in infos:
        info.wait_for_publish(60)
    for c in clients:
        c.disconnect()
        c.loop_stop()


def test_what_arrives_while_ingest_is_down_waits_at_the_deployed_broker_and_is_all_stored(
    deployed: DeployedBroker, migrated: str, tmp_path: Path
) -> None:
    # 20,000 QoS 1 and 2,000 QoS 0 messages: 40 s of the city's traffic, 20x the old queue bound.
    client_id = "ingest-q"
    ingest = _ingest(deployed, migrated, tmp_path, client_id)
    try:
        deadline = time.monotonic() + 30
        while _rows(migrated) == 0:  # once one is stored, ingest's persistent session exists
            assert time.monotonic() < deadline, "ingest never stored a message"
            _publish_from_every_lamp(deployed, 1, qos=1)
            time.sleep(0.5)
    finally:
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(30)
    before = _rows(migrated)
    _publish_from_every_lamp(deployed, 1000, qos=1)
    _publish_from_every_lamp(deployed, 100, qos=0)
    started = time.monotonic()
    ingest = _ingest(deployed, migrated, tmp_path, client_id)
    try:
        want = before + len(LAMPS) * 1100
        deadline = time.monotonic() + 120
        while (have := _rows(migrated)) < want and time.monotonic() < deadline:
            time.sleep(0.2)
        drained_s = time.monotonic() - started
    finally:
        ingest.send_signal(signal.SIGTERM)
        ingest.wait(30)
    log = (tmp_path / f"{client_id}.log").read_text()[-3000:]
    assert have == want, f"{want - have} of {want} messages lost with the deployed limits; ingest:\n{log}"
    assert drained_s < 120


# -- past the bound: counted and alerted, never silent ----------------------------------------------

BOUND = 50  # the session's max_queued_messages here, so a short outage overflows it


def _publish_seqs(port: int, secrets: dict[str, str], lamps: list[DeviceSpec], seqs: range) -> None:
    """Each lamp publishes QoS 1 telemetry numbered ``seqs`` with its own credentials."""
    ts = int(time.time() * 1000)
    clients = []
    for spec in lamps:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=spec.id)
        c.username_pw_set(spec.id, secrets[spec.id])
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        clients.append(c)
    infos = [
        c.publish(
            f"sl/v1/11230/{spec.id}/telemetry",
            json.dumps({"ts": ts + n, "seq": n, "level": 80, "power_w": 36.0, "faults": []}),
            qos=1,
        )
        for n in seqs
        for spec, c in zip(lamps, clients, strict=True)
    ]
    for info in infos:
        info.wait_for_publish(60)
    for c in clients:
        c.disconnect()
        c.loop_stop()


@pytest.mark.parametrize("instances", [1, 2], ids=["one-worker", "two-shared-workers"])
def test_messages_dropped_past_the_brokers_bound_are_counted_per_device_and_raise_one_alert(
    migrated: str, tmp_path: Path, instances: int
) -> None:
    skip_unless(MOSQUITTO is not None, "mosquitto is not installed")
    assert MOSQUITTO is not None
    lamps = [DeviceSpec(f"lamp-b{i:02d}", "lamp", "11230") for i in range(20)]
    registry = Registry()
    # Two instances in one $share group, each with its own account (the systemd ingest@0/ingest@1).
    accounts = ["ingest"] if instances == 1 else [f"ingest@{i}" for i in range(instances)]
    secrets = registry.provision(lamps, services=accounts).secrets
    port = free_port()
    options = MosquittoOptions(
        dev_port=port, log_dest=f"file {tmp_path}/mosquitto.log", run_as=RUN_AS, max_queued_messages=BOUND
    )
    broker = subprocess.Popen(
        [MOSQUITTO, "-c", str(write_mosquitto(registry, tmp_path, options).conf)], stderr=subprocess.DEVNULL
    )
    cmd = [sys.executable, "-m", "streetlight.cli.ingest", "--no-jobs", "--device-rate", "0"]

    def start(phase: str) -> list[tuple[subprocess.Popen[bytes], Path]]:
        started = []
        for account in accounts:
            env = dict(
                os.environ,
                MQTT_URL=f"mqtt://{quote(account, safe='')}:{secrets[account]}@127.0.0.1:{port}",
                DATABASE_URL=migrated,
                STREETLIGHT_DATA_DIR=str(tmp_path / account),
                STREETLIGHT_LOG_FORMAT="json",
            )
            (tmp_path / account).mkdir(exist_ok=True)
            log = tmp_path / f"{phase}-{account}.log"
            with log.open("wb") as fh:
                started.append(
                    (subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT), log)
                )
        return started

    def stop(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
        for proc, _log in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, _log in procs:
            proc.wait(30)

    def rows() -> int:
        with psycopg.connect(migrated) as conn:
            row = conn.execute("SELECT count(DISTINCT (device_id, seq)) FROM telemetry").fetchone()
        return int(row[0]) if row else 0

    def settle(want: int, timeout_s: float) -> int:
        deadline, last, since = time.monotonic() + timeout_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            have = rows()
            if have >= want or (have == last and time.monotonic() - since > 3):
                return have
            if have != last:
                last, since = have, time.monotonic()
            time.sleep(0.2)
        return rows()

    try:
        deadline = time.monotonic() + 10
        while not tcp_reachable("127.0.0.1", port, 0.2):
            assert time.monotonic() < deadline, "mosquitto did not listen"
            time.sleep(0.05)
        ingest = start("first")
        try:
            deadline = time.monotonic() + 30
            while rows() < len(lamps):  # seq 0 of every lamp stored: the sessions exist
                assert time.monotonic() < deadline, ingest[0][1].read_text()[-3000:]
                _publish_seqs(port, secrets, lamps, range(1))
                time.sleep(0.5)
        finally:
            stop(ingest)
        # Ingest away: 30 messages a lamp, 600 in all, for sessions that hold 50 each.
        _publish_seqs(port, secrets, lamps, range(1, 31))
        ingest = start("second")
        try:
            drained = settle(len(lamps) * 31, 30)
            # One more message each shows the tail each lamp lost (seq 31 after its last stored).
            _publish_seqs(port, secrets, lamps, range(31, 32))
            settle(drained + len(lamps), 30)
        finally:
            stop(ingest)
    finally:
        terminate(broker)
    stored = rows()  # once the workers have stopped: what they committed before their stop lines
    lost = len(lamps) * 32 - stored
    assert lost >= len(lamps) * 30 - BOUND * instances, (
        f"the bound did not drop what it should ({stored} stored)"
    )
    # Counted: the workers' stop lines (and ingest_seq_gaps_total) count the gaps each saw; with one
    # worker on the whole stream that is exactly how many are missing.
    stop_lines = [events[-1] for _proc, log in ingest if (events := log_events(log, "ingest_worker_stopped"))]
    assert len(stop_lines) == instances, ingest[0][1].read_text()[-3000:]
    if instances == 1:
        assert stop_lines[0]["metrics"]["seq_gaps"] == lost
    # Workers on a shared subscription raise no alert from their batches: the jobs leader's check
    # of the stored rows does, once a minute of device time has passed (here: asked for now).
    with psycopg.connect(migrated) as conn:
        assert conn.execute("SELECT count(*) FROM alerts WHERE kind = 'data_loss'").fetchone() == (0,)
    leader = JobsLeader(migrated, silent_after_s=180, seq_gap_check=True)
    with psycopg.connect(migrated, autocommit=True) as conn:
        checked = leader.check_seq_gaps(conn, datetime.now(UTC) + leader.gap_lag)
        assert (checked.devices, checked.missing) == (len(lamps), lost)
        # The next check overlaps this one's rows and counts nothing again.
        assert leader.check_seq_gaps(conn, datetime.now(UTC) + leader.gap_lag).missing == 0
    # Alerted: one data_loss alert for the city centre, not one per lamp, counting every message.
    with psycopg.connect(migrated) as conn:
        alerts = conn.execute(
            "SELECT status, data FROM alerts WHERE kind = 'data_loss' ORDER BY created_at"
        ).fetchall()
    assert len(alerts) == 1, alerts
    status, data = alerts[0]
    assert status == "open" and data["count"] == lost
    assert sorted(data["device_ids"]) == [s.id for s in lamps]
