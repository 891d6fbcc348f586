"""Ingest from a quorum queue on a three-node RabbitMQ cluster (issue 23): competing consumers split
the stream, a worker SIGKILLed mid-stream loses nothing the broker acknowledged and stores nothing
twice, and a worker whose node is SIGKILLed moves to a live node; the node comes back and rejoins.

Lamps publish QoS 1 telemetry over MQTT to the nodes; RabbitMQ answers PUBACK once the quorum queue
has the message on a majority of its replicas, so "acknowledged" below is what a lamp was told is
safe. One cluster serves the module (~20 s to boot and join); each test has its own queue.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
import psycopg
import pytest

from broker import AmqpSource
from devkit.apiclient import seed
from devkit.bench.fastpub import telemetry_payload
from devkit.localservices import RabbitCluster, free_port
from ingest import AmqpIngestWorker, WorkerConfig, raise_fault_alerts

pytestmark = pytest.mark.integration
DISTRICT = "11230"
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def figures(output_dir: Path) -> Iterator[dict[str, object]]:
    """What the tests measured, in ``.test-output/rabbitmq_cluster.json`` (docs/reliability.md)."""
    yield FIGURES
    if FIGURES:
        (output_dir / "rabbitmq_cluster.json").write_text(json.dumps(FIGURES, indent=2) + "\n")


@dataclass
class Publisher:
    """QoS 1 telemetry from ``lamps`` lamps through one node's MQTT listener, paced at ``rate`` msg/s."""

    mqtt_port: int
    prefix: str
    count: int
    lamps: int = 20
    rate: float = 1000.0
    infos: list[tuple[str, int, mqtt.MQTTMessageInfo]] = field(default_factory=list)

    def run(self) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{self.prefix}")
        client.max_inflight_messages_set(100)
        client.connect("127.0.0.1", self.mqtt_port, keepalive=30)
        client.loop_start()
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        for i in range(self.count):
            device, seq = f"{self.prefix}{i % self.lamps:03d}", i // self.lamps
            topic = f"sl/v1/{DISTRICT}/{device}/telemetry"
            info = client.publish(topic, telemetry_payload(seq, now_ms + seq, 80), qos=1)
            self.infos.append((device, seq, info))
            ahead = started + (i + 1) / self.rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        deadline = time.monotonic() + 30
        while not all(info.is_published() for _d, _s, info in self.infos) and time.monotonic() < deadline:
            time.sleep(0.05)
        client.disconnect()
        client.loop_stop()

    def acked(self) -> set[tuple[str, int]]:
        """(device, seq) of every message the broker answered PUBACK to."""
        return {(d, s) for d, s, info in self.infos if info.is_published()}


Acked = set[tuple[str, int]]


def publish_all(publishers: list[Publisher], during: Callable[[], None] | None = None) -> Acked:
    """Run the publishers at once (``during`` on this thread meanwhile); the acknowledged messages."""
    threads = [threading.Thread(target=p.run, daemon=True) for p in publishers]
    for t in threads:
        t.start()
    if during is not None:
        during()
    for t in threads:
        t.join(90)
    return set().union(*(p.acked() for p in publishers))


def stored(db_url: str, prefix: str) -> tuple[int, set[tuple[str, int]]]:
    """(rows, distinct (device, seq)) of the telemetry of lamps named ``prefix...``."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, seq FROM telemetry WHERE device_id LIKE %s", (prefix + "%",)
        ).fetchall()
    return len(rows), {(str(d), int(s)) for d, s in rows}


def wait_stored(db_url: str, prefix: str, want: set[tuple[str, int]], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not want <= stored(db_url, prefix)[1]:
        if time.monotonic() > deadline:
            missing = len(want - stored(db_url, prefix)[1])
            raise AssertionError(f"{missing} acknowledged messages not stored within {timeout_s} s")
        time.sleep(0.2)


def until(what: str, cond: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(0.1)


def consumers(cluster: RabbitCluster, queue: str, node: int = 1) -> int:
    """Consumers of the queue right now, asked through ``node``'s AMQP listener."""
    with contextlib.closing(pika.BlockingConnection(pika.URLParameters(cluster.amqp_urls[node]))) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).method.consumer_count)


def amqp_worker(
    cluster: RabbitCluster, db_url: str, tmp: Path, queue: str, index: int, **kwargs: Any
) -> AmqpIngestWorker:
    config = WorkerConfig(
        mqtt=None,
        amqp=AmqpSource(tuple(cluster.amqp_urls), queue=queue, prefetch=200),
        database_url=db_url,
        spool_path=tmp / f"amqp-{index}.spool",
        index=index,
        shared=False,
        max_delay_s=0.05,
        state_resync=False,
        device_rate_per_s=0,
    )
    return AmqpIngestWorker(config, **kwargs)


@contextlib.contextmanager
def running(*workers: AmqpIngestWorker) -> Iterator[None]:
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        for w in workers:
            assert w.wait_connected(30), "the ingest worker did not start consuming"
        yield
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)


def test_two_workers_on_the_quorum_queue_split_the_stream_of_lamps_on_three_nodes(
    rabbitmq_cluster: RabbitCluster, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    seed(db_url)
    queue, prefix = f"t.split.{unique_id}", f"sp{unique_id}"
    a = amqp_worker(rabbitmq_cluster, db_url, tmp_path, queue, 0, on_faults=raise_fault_alerts)
    b = amqp_worker(rabbitmq_cluster, db_url, tmp_path, queue, 1, on_faults=raise_fault_alerts)
    with running(a, b):
        assert {a.node, b.node} == {0, 1}, "worker i starts at node i"
        pubs = [Publisher(n.mqtt_port, f"{prefix}n{i}-", 600) for i, n in enumerate(rabbitmq_cluster.nodes)]
        acked = publish_all(pubs)
        assert len(acked) == 1800, "no node died: every message is acknowledged"
        wait_stored(db_url, prefix, acked)
    rows, distinct = stored(db_url, prefix)
    assert rows == len(distinct) == 1800
    assert a.metrics.stored_rows + b.metrics.stored_rows == 1800
    # The queue split the stream: each consumer stored a good part of it.
    shares = (a.metrics.stored_rows, b.metrics.stored_rows)
    assert min(shares) >= 300, shares
    # Each worker saw gaps in every lamp's seq that the other filled: no message was lost, so no
    # data_loss alert.
    assert a.metrics.seq_gaps > 0 and b.metrics.seq_gaps > 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM alerts WHERE kind = 'data_loss'").fetchone() == (0,)


def test_a_batch_committed_and_not_acknowledged_comes_back_and_is_not_stored_twice(
    rabbitmq_cluster: RabbitCluster, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    seed(db_url)
    queue, prefix = f"t.redeliver.{unique_id}", f"rd{unique_id}"
    crashed: list[int] = []

    def crash_after_the_first_commit(_batch: object) -> None:
        # Runs after the batch's commit and before its acknowledgement: a worker dying right there.
        if not crashed:
            crashed.append(1)
            raise RuntimeError("crash between commit and acknowledgement")

    w = amqp_worker(rabbitmq_cluster, db_url, tmp_path, queue, 0, on_batch=crash_after_the_first_commit)
    with running(w):
        acked = publish_all([Publisher(rabbitmq_cluster.nodes[2].mqtt_port, prefix, 600)])
        wait_stored(db_url, prefix, acked)
        until("the committed batch redelivered", lambda: w.metrics.redelivered > 0, 15)
    rows, distinct = stored(db_url, prefix)
    assert len(acked) == 600 and rows == len(distinct) == 600
    assert w.metrics.duplicates > 0, "the redelivered rows met the dedup key"
    assert f'ingest_redelivered_total{{worker="0"}} {w.metrics.redelivered}' in w.metrics.exposition()


def test_an_ingest_process_sigkilled_mid_stream_loses_nothing_acknowledged_and_stores_nothing_twice(
    rabbitmq_cluster: RabbitCluster, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    seed(db_url)
    queue, prefix = f"t.kill.{unique_id}", f"kw{unique_id}"
    env = dict(os.environ, STREETLIGHT_DATA_DIR=str(tmp_path / "victim"), STREETLIGHT_LOG_LEVEL="WARNING")
    victim = subprocess.Popen(
        [
            sys.executable, "-m", "streetlight.cli.ingest", "--source", "amqp",
            "--amqp-url", ",".join(rabbitmq_cluster.amqp_urls), "--queue", queue, "--prefetch", "500",
            "--database-url", db_url, "--no-jobs", "--no-migrate", "--registry-check", "off",
            "--max-delay-ms", "300", "--device-rate", "0", "--client-id", "victim",
        ],
        env=env,
    )  # fmt: skip
    survivor = amqp_worker(rabbitmq_cluster, db_url, tmp_path, queue, 1)
    try:
        with running(survivor):
            until("both consumers on the queue", lambda: consumers(rabbitmq_cluster, queue) == 2, 60)

            def kill_the_victim() -> None:
                time.sleep(1.5)
                victim.send_signal(signal.SIGKILL)
                victim.wait()

            nodes = rabbitmq_cluster.nodes
            # ~4 s of 1,500 msg/s; the victim dies 1.5 s in, holding what it has not acknowledged.
            pubs = [Publisher(n.mqtt_port, f"{prefix}n{i}-", 2000, rate=500) for i, n in enumerate(nodes)]
            acked = publish_all(pubs, during=kill_the_victim)
            wait_stored(db_url, prefix, acked)
            until("the victim's messages redelivered", lambda: survivor.metrics.redelivered > 0, 15)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    rows, distinct = stored(db_url, prefix)
    assert victim.returncode == -signal.SIGKILL
    assert len(acked) == 6000, "the broker stayed up: every message is acknowledged"
    assert acked <= distinct and rows == len(distinct), f"{rows - len(distinct)} stored twice"
    # The survivor got what the victim held unacknowledged, and stored it: some of it had been
    # committed by the victim already (the dedup key refused those), the rest was new.
    assert survivor.metrics.redelivered > 0
    FIGURES["worker_sigkilled"] = {
        "sent": 6000,
        "acknowledged": len(acked),
        "stored": len(distinct),
        "rows": rows,
        "redelivered_to_survivor": survivor.metrics.redelivered,
        "refused_by_dedup_key": survivor.metrics.duplicates,
    }


def test_the_ingest_moves_to_a_live_node_when_its_node_is_sigkilled_and_the_node_rejoins(
    rabbitmq_cluster: RabbitCluster, db_url: str, tmp_path: Path, unique_id: str
) -> None:
    seed(db_url)
    queue, prefix = f"t.node.{unique_id}", f"nd{unique_id}"
    w = amqp_worker(rabbitmq_cluster, db_url, tmp_path, queue, 0)
    moved_after: list[float] = []
    with running(w):
        assert w.node == 0

        def kill_node_0() -> None:
            time.sleep(1.0)
            killed_at = time.monotonic()
            rabbitmq_cluster.kill(0)
            until("ingest on a live node", lambda: w.node in (1, 2), 30)
            moved_after.append(time.monotonic() - killed_at)

        ports = [rabbitmq_cluster.nodes[i].mqtt_port for i in (1, 2)]
        pubs = [Publisher(port, f"{prefix}n{i}-", 1500, rate=500) for i, port in enumerate(ports, 1)]
        acked = publish_all(pubs, during=kill_node_0)
        wait_stored(db_url, prefix, acked)
        assert len(acked) == 3000, "the lamps' nodes stayed up: every message is acknowledged"
        rows, distinct = stored(db_url, prefix)
        assert acked <= distinct and rows == len(distinct)
        assert moved_after[0] < 10, f"ingest moved to a live node after {moved_after[0]:.1f} s"

        restarted = time.monotonic()
        rabbitmq_cluster.start_again(0)
        until("node 0 back in the cluster", lambda: len(rabbitmq_cluster.running_nodes(1)) == 3, 60)
        rejoined_after = time.monotonic() - restarted
        again = publish_all([Publisher(rabbitmq_cluster.nodes[0].mqtt_port, f"{prefix}back-", 300)])
        assert len(again) == 300
        wait_stored(db_url, f"{prefix}back-", again)
    FIGURES["node_sigkilled"] = {
        "sent": 3000,
        "acknowledged": len(acked),
        "stored": len(distinct),
        "rows": rows,
        "ingest_on_a_live_node_after_s": round(moved_after[0], 2),
        "node_restarted_and_rejoined_after_s": round(rejoined_after, 1),
        "redelivered": w.metrics.redelivered,
        "refused_by_dedup_key": w.metrics.duplicates,
    }


def test_up_cluster_runs_the_city_on_three_nodes_and_ctrl_c_stops_them(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_URL", "AMQP_URL")}
    env.update(
        STREETLIGHT_DATA_DIR=str(tmp_path),
        DATABASE_URL=db_url,
        STREETLIGHT_API_PORT=str(free_port()),
        STREETLIGHT_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "up.log"
    with log.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "streetlight.cli", "up", "--cluster", "--lamps", "30"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def online() -> int:
            with contextlib.suppress(psycopg.Error), psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT count(*) FROM device_state WHERE online").fetchone()
                return int(row[0]) if row else 0
            return 0

        # 30 lamps and their 30 blinkers, spread over the nodes, stored by ingest from the queue.
        until("the simulated city online through the cluster", lambda: online() == 60, 120)
        assert "broker:   rabbitmq cluster of 3 nodes" in log.read_text()
    finally:
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            up.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    assert up.returncode == 0, log.read_text()[-3000:]
    # Its nodes were stopped with it (their names carry its pid): no VM is left, nor their files.
    left = subprocess.run(["pgrep", "-f", f"sl-{up.pid}-"], capture_output=True, check=False)
    assert left.returncode == 1, left.stdout
    assert not (tmp_path / "rabbitmq-cluster").exists()
