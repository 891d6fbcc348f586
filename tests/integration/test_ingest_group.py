"""Several ingest instances on a broker without shared subscriptions (issue 16): the instances of
one group take turns on the group's lease, exactly one consumes, and a killed consumer is replaced
by a standby without losing or duplicating a row.

Real processes (``python -m streetlight.cli.ingest --subscription plain --group G``) on a
private RabbitMQ node (which has no ``$share``) and on a private Mosquitto forced to plain
subscriptions; SIGKILL for the fault.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from broker import parse_mqtt_url
from devkit.localservices import MqttService, free_port, start_mosquitto, terminate
from ingest import ConsumerLease, IngestWorker, RawMessage, SeqTracker, WorkerConfig, process, write_batch
from store import lease_owners, migrate
from tests.conftest import ROOT, _have_mosquitto, skip_unless
from tests.integration.test_scale_out import _wait


@pytest.fixture(params=["rabbitmq", "mosquitto"])
def plain_broker(request: pytest.FixtureRequest) -> Iterator[MqttService]:
    """The session's RabbitMQ node, or a private Mosquitto of the test's own."""
    if request.param == "rabbitmq":
        yield request.getfixturevalue("rabbitmq_service")
        return
    skip_unless(_have_mosquitto(), "mosquitto")
    # Under /tmp: see tests/integration/test_scale_out.py.
    svc = start_mosquitto(Path("/tmp") / f"sl-group-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield svc
    finally:
        svc.stop()


def _metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _fastpub(broker: MqttService, count: int, prefix: str, rate: float) -> list[str]:
    return [
        *(sys.executable, "-m", "devkit.bench.fastpub", "--port", str(broker.port)),
        *("--count", str(count), "--lamps", "100", "--qos", "1", "--prefix", prefix, "--rate", str(rate)),
    ]


def _rows(db_url: str, prefix: str) -> tuple[int, int]:
    with psycopg.connect(db_url) as c:
        row = c.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry WHERE device_id LIKE %s",
            (prefix + "%",),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_two_ingest_instances_of_one_group_store_every_message_once_and_a_standby_replaces_a_killed_consumer(
    plain_broker: MqttService, db_url: str, unique_id: str, tmp_path: Path
) -> None:
    migrate(db_url, timescale=False)
    group = f"grp-{unique_id}"
    ports = {"a": free_port(), "b": free_port()}
    env = {
        **os.environ,
        "MQTT_URL": plain_broker.url,
        "DATABASE_URL": db_url,
        "STREETLIGHT_DATA_DIR": str(tmp_path),
    }

    def start(name: str) -> subprocess.Popen[bytes]:
        argv = [
            *(sys.executable, "-m", "streetlight.cli.ingest", "--subscription", "plain"),
            *("--group", group, "--lease-ttl-s", "3", "--client-id", f"{name}-{unique_id}"),
            *("--metrics-port", str(ports[name]), "--no-jobs", "--no-migrate", "--max-delay-ms", "50"),
        ]
        return subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)

    procs = {"a": start("a")}
    try:
        _wait("a consuming", lambda: _metric(ports["a"], "ingest_subscribed") == 1, 60)
        procs["b"] = start("b")
        _wait("b up", lambda: _metric(ports["b"], "ingest_subscribed") == 0, 60)
        first = f"g{unique_id}-"
        n = 3000
        out = subprocess.run(
            _fastpub(plain_broker, n, first, 3000), capture_output=True, check=True, timeout=120
        )
        assert json.loads(out.stdout.decode().strip().splitlines()[-1])["sent"] == n
        _wait(f"{n} rows", lambda: _rows(db_url, first)[1] == n, 60)
        time.sleep(1.0)  # anything more (a duplicate) would have arrived by now
        assert _rows(db_url, first) == (n, n)
        assert [_metric(ports[k], "ingest_standby") for k in ("a", "b")] == [0, 1]
        received = {k: _metric(p, "ingest_messages_received_total") for k, p in ports.items()}
        assert received["b"] == 0 and received["a"] >= n, f"exactly one instance consumes: {received}"
        with psycopg.connect(db_url, autocommit=True) as conn:
            assert lease_owners(conn)[f"ingest/{group}"] == f"a-{unique_id}-0"

        second = f"h{unique_id}-"
        publisher = subprocess.Popen(_fastpub(plain_broker, n, second, 1000), stdout=subprocess.DEVNULL)
        _wait("some of the second burst stored", lambda: _rows(db_url, second)[1] > 300, 30)
        procs["a"].kill()  # the consumer, mid-stream
        procs["a"].wait()
        killed_at = time.monotonic()
        _wait("b consuming", lambda: _metric(ports["b"], "ingest_subscribed") == 1, 30)
        takeover_s = time.monotonic() - killed_at
        assert takeover_s < 3 + 1 + 3, f"takeover took {takeover_s:.1f} s (lease 3 s, renewed every 1 s)"
        assert publisher.wait(timeout=60) == 0
        _wait(f"{n} more rows", lambda: _rows(db_url, second)[1] == n, 90)
        time.sleep(1.0)
        assert _rows(db_url, second) == (n, n)  # 0 lost, 0 duplicated across the takeover
        assert _rows(db_url, first) == (n, n)
    finally:
        for p in procs.values():
            if p.poll() is None:
                terminate(p)


def test_messages_written_by_two_instances_during_a_takeover_overlap_are_stored_once(
    db_url: str, unique_id: str
) -> None:
    """The outgoing holder commits a batch it has not acked; the new one gets it again: the dedup
    key (device, ts, seq, bdseq 0) comes from the message alone, so the second write adds nothing."""
    migrate(db_url, timescale=False)
    dev, ts = f"ov{unique_id}", 1_765_000_000_000
    messages = [
        RawMessage(f"sl/v1/11140/{dev}/telemetry", b'{"ts":%d,"seq":%d,"level":80}' % (ts + i, i), 1)
        for i in range(1, 6)
    ] + [
        RawMessage(f"sl/v1/11140/{dev}/event", b'{"ts":%d,"seq":9,"type":"tamper"}' % (ts + 9), 1),
    ]
    now = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=True) as conn:
        first = write_batch(conn, process(messages, ts, SeqTracker()), messages, now)
        again = write_batch(conn, process(messages, ts, SeqTracker()), messages, now)  # another process
        stored = conn.execute(
            "SELECT (SELECT count(*) FROM telemetry WHERE device_id = %s) + "
            "(SELECT count(*) FROM events WHERE device_id = %s)",
            (dev, dev),
        ).fetchone()
    assert (first.inserted, again.inserted, again.offered) == (6, 0, 6)
    assert stored == (6,)


def _group_worker(
    svc: MqttService, db_url: str, tmp: Path, group: str, name: str, ttl_s: float
) -> tuple[IngestWorker, threading.Thread]:
    config = WorkerConfig(
        mqtt=parse_mqtt_url(svc.url),
        database_url=db_url,
        spool_path=tmp / f"{name}.spool",
        client_id=group,
        shared=False,
        max_delay_s=0.05,
    )
    worker = IngestWorker(config, lease=ConsumerLease(db_url, group, name, ttl_s))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def test_a_stopped_consumer_hands_its_group_over_at_once_and_one_that_lost_its_lease_stands_by_until_free(
    mqtt_service: MqttService, db_url: str, unique_id: str, tmp_path: Path
) -> None:
    migrate(db_url, timescale=False)
    group, ttl_s = f"hand-{unique_id}", 3.0
    a, a_thread = _group_worker(mqtt_service, db_url, tmp_path, group, "a", ttl_s)
    workers = [(a, a_thread)]
    try:
        _wait("a consuming", lambda: a.metrics.subscribed, 20)
        b, b_thread = _group_worker(mqtt_service, db_url, tmp_path, group, "b", ttl_s)
        workers.append((b, b_thread))
        _wait("b standing by", lambda: b.metrics.standby, 20)
        assert not b.metrics.subscribed
        a.stop()
        a_thread.join(20)
        stopped_at = time.monotonic()
        _wait("b consuming", lambda: b.metrics.subscribed, 20)
        # Released on the way out: b takes it at its next try, not when the lease runs out.
        assert time.monotonic() - stopped_at < ttl_s
        with psycopg.connect(db_url, autocommit=True) as conn:
            # Another instance holds the lease now (as after b was cut off for a whole lease).
            conn.execute(
                "UPDATE controller_leases SET owner = 'other', expires_at = now() + interval '1 hour' "
                "WHERE district_code = %s",
                (f"ingest/{group}",),
            )
        _wait("b standing by", lambda: b.metrics.standby and not b.metrics.subscribed, ttl_s + 2)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("DELETE FROM controller_leases WHERE district_code = %s", (f"ingest/{group}",))
        _wait("b consuming again", lambda: b.metrics.subscribed and not b.metrics.standby, ttl_s + 5)
    finally:
        for w, t in workers:
            w.stop()
            t.join(20)
