"""Ingest against a real broker and PostgreSQL: stored once, bad input kept, outages survived."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from alerts import AlertKind
from broker import parse_mqtt_url
from devkit.localservices import MqttService
from ingest import IngestWorker, RawMessage, SeqTracker, WorkerConfig, process, raise_fault_alerts
from ingest._alerts import raise_offline_alerts
from ingest._write import write_batch
from store import migrate
from store.alerts import active_alerts
from tests.conftest import skip_unless
from tests.helpers import count, running, wait_for

ROOT = Path(__file__).resolve().parents[2]
LAMP = (
    b'{"ts":%d,"seq":%d,"level":80,"power_w":36.4,"voltage_v":221.7,"current_a":0.164,'
    b'"temp_c":21.5,"lux":3.2,"faults":[]}'
)


def now_ms() -> int:
    return int(time.time() * 1000)


class PgProxy:
    """A TCP proxy in front of PostgreSQL that a test can cut and restore (fault injection)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            self._conns.append(client)
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            self._conns.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def cut(self) -> None:
        self.up = False
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


def with_port(url: str, port: int) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return parts._replace(netloc=f"{parts.username or 'postgres'}@127.0.0.1:{port}").geturl()


@pytest.fixture
def migrated(db_url: str) -> str:
    """The plain path, pinned (tests of ingest's own behaviour)."""
    migrate(db_url, timescale=False)
    return db_url


@pytest.fixture
def stored(storage_url: str) -> str:
    """Both storage paths (tests of what ingest leaves in the database)."""
    return storage_url


def publisher(svc: MqttService) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    client.connect(svc.host, svc.port)
    client.loop_start()
    return client


def make_worker(svc: MqttService, db: str, tmp: Path, uid: str, **kw: object) -> IngestWorker:
    config = WorkerConfig(
        mqtt=parse_mqtt_url(svc.url),
        database_url=db,
        spool_path=tmp / f"{uid}.spool",
        client_id=f"ingest-{uid}",
        shared=bool(kw.pop("shared", False)),
        max_delay_s=0.05,
        # These tests stream load from a few device ids; the per-device bound has its own tests
        # (test_device_attacks.py).
        device_rate_per_s=float(kw.pop("device_rate_per_s", 0)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
    return IngestWorker(config, on_faults=raise_fault_alerts)


def test_every_message_kind_is_stored_and_bad_input_is_dead_lettered(
    mqtt_service: MqttService, stored: str, tmp_path: Path, unique_id: str
) -> None:
    migrated = stored
    dev = f"L{unique_id}"
    base = f"sl/v1/11230/{dev}"
    ts = now_ms()
    started = time.time()
    with running(make_worker(mqtt_service, migrated, tmp_path, unique_id)) as worker:
        pub = publisher(mqtt_service)
        msgs = [
            (
                f"{base}/birth",
                b'{"kind":"lamp","firmware":"1.2","model":"SL-40","lat":37.5636,"lon":126.9826,"bdseq":1}',
            ),
            (f"{base}/state", b'{"state":"online","bdseq":1}'),
            (f"{base}/telemetry", LAMP % (ts, 1)),
            (f"{base}/telemetry", b'{"ts":%d,"seq":2,"level":"bright"}' % ts),
            (f"{base}/telemetry", b"\xff\xfe not json"),
            (f"{base}/event", b'{"ts":%d,"seq":3,"type":"tamper"}' % ts),
            (f"{base}/ack", b'{"cmd_id":"c-%s","ts":%d,"status":"expired"}' % (unique_id.encode(), ts)),
            (f"{base}/telemetry", LAMP % (ts + 4, 4)),
        ]
        for topic, payload in msgs:
            pub.publish(topic, payload, qos=1).wait_for_publish(5)
        wait_for(lambda: count(migrated, "SELECT count(*) FROM telemetry WHERE device_id = %s", dev) == 2)
        wait_for(lambda: count(migrated, "SELECT count(*) FROM dead_letters") >= 2)
        pub.loop_stop()
        assert worker.metrics.dead_letters["payload"] >= 2
        # The freshness gauge operators alert on moved to the last commit.
        assert started <= worker.metrics.last_commit_unix_s <= time.time()
        assert "ingest_last_commit_timestamp_seconds{" in worker.metrics.exposition()
    assert count(migrated, "SELECT count(*) FROM devices WHERE device_id = %s AND firmware = '1.2'", dev) == 1
    assert count(migrated, "SELECT count(*) FROM device_state WHERE device_id = %s AND online", dev) == 1
    assert count(migrated, "SELECT count(*) FROM events WHERE device_id = %s", dev) == 2
    assert count(migrated, "SELECT count(*) FROM dead_letters WHERE reason LIKE 'level:%%'") == 1
    assert count(migrated, "SELECT count(*) FROM dead_letters WHERE payload = %s", b"\xff\xfe not json") == 1
    with psycopg.connect(migrated) as conn:
        alerts = active_alerts(conn, kinds=["tamper"], source_id=dev)
    assert len(alerts) == 1, "a tamper event raises one maintenance alert"


def test_database_outage_is_spooled_and_replayed_once_each(
    mqtt_service: MqttService, stored: str, tmp_path: Path, unique_id: str
) -> None:
    migrated = stored
    from urllib.parse import urlsplit

    parts = urlsplit(migrated)
    # The outage is a TCP proxy between ingest and PostgreSQL; the embedded one has no TCP port.
    skip_unless(bool(parts.hostname), "PostgreSQL over TCP (the embedded one listens on a socket only)")
    proxy = PgProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    db = with_port(migrated, proxy.port)
    dev = f"L{unique_id}"
    ts = now_ms()
    try:
        with running(make_worker(mqtt_service, db, tmp_path, unique_id)) as worker:
            pub = publisher(mqtt_service)
            for seq in range(300):
                pub.publish(f"sl/v1/11230/{dev}/telemetry", LAMP % (ts + seq, seq), qos=1)
            wait_for(lambda: worker.metrics.stored_rows >= 300)
            proxy.cut()
            for seq in range(300, 900):
                pub.publish(f"sl/v1/11230/{dev}/telemetry", LAMP % (ts + seq, seq), qos=1)
                if seq % 100 == 0:
                    time.sleep(0.05)
            wait_for(lambda: worker.metrics.spooled >= 600)
            assert not worker.metrics.db_up and worker.spool.size_bytes > 0
            proxy.restore()
            wait_for(lambda: worker.spool.size_bytes == 0 and worker.metrics.replayed >= 600)
            pub.loop_stop()
    finally:
        proxy.close()
    assert count(migrated, "SELECT count(*) FROM telemetry WHERE device_id = %s", dev) == 900
    assert count(migrated, "SELECT count(DISTINCT seq) FROM telemetry WHERE device_id = %s", dev) == 900


def test_messages_replayed_from_the_spool_are_not_counted_as_seq_gaps(
    mqtt_service: MqttService, pg_service: object, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    """Before, after and during a database outage the seqs are complete: 0 gaps; a real one: 1."""
    from urllib.parse import urlsplit

    parts = urlsplit(migrated)
    # The outage is a TCP proxy between ingest and PostgreSQL; the embedded one has no TCP port.
    skip_unless(bool(parts.hostname), "PostgreSQL over TCP (the embedded one listens on a socket only)")
    proxy = PgProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    db = with_port(migrated, proxy.port)
    devices = [f"G{unique_id}{k}" for k in range(5)]
    skipped = (devices[0], 450)  # the one message that never arrives
    ts = now_ms()

    def send(pub: mqtt.Client, seqs: range) -> None:
        for seq in seqs:
            for dev in devices:
                if (dev, seq) != skipped:
                    pub.publish(f"sl/v1/11230/{dev}/telemetry", LAMP % (ts + seq, seq), qos=1)
            if seq % 20 == 0:
                time.sleep(0.01)

    try:
        with running(make_worker(mqtt_service, db, tmp_path, unique_id)) as worker:
            pub = publisher(mqtt_service)
            send(pub, range(100))
            wait_for(lambda: worker.metrics.stored_rows >= 500)
            proxy.cut()
            send(pub, range(100, 300))
            wait_for(lambda: worker.metrics.spooled >= 1000)
            proxy.restore()
            wait_for(lambda: worker.spool.size_bytes == 0 and worker.metrics.replayed >= 1000)
            send(pub, range(300, 500))
            wait_for(lambda: worker.metrics.stored_rows >= 2499)
            pub.loop_stop()
            gaps, repeats = worker.metrics.seq_gaps, worker.metrics.seq_repeats
    finally:
        proxy.close()
    like = f"G{unique_id}%"
    assert count(migrated, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", like) == 2499
    assert (gaps, repeats) == (1, 0), "only the message that never arrived is a gap"
    stored = count(migrated, "SELECT sum(seq_gaps) FROM device_state WHERE device_id LIKE %s", like)
    assert stored == 1
    assert count(migrated, "SELECT seq_gaps FROM device_state WHERE device_id = %s", skipped[0]) == 1


def test_two_workers_on_a_shared_subscription_store_each_message_once(
    mqtt_service: MqttService, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    a = make_worker(mqtt_service, migrated, tmp_path, f"a{unique_id}", shared=True, index=0)
    b = make_worker(mqtt_service, migrated, tmp_path, f"b{unique_id}", shared=True, index=1)
    ts = now_ms()
    with running(a), running(b):
        pub = publisher(mqtt_service)
        for i in range(2000):
            pub.publish(f"sl/v1/11230/S{unique_id}{i % 20}/telemetry", LAMP % (ts + i, i), qos=1)
        wait_for(lambda: a.metrics.stored_rows + b.metrics.stored_rows >= 2000)
        pub.loop_stop()
    assert a.metrics.stored_rows > 0 and b.metrics.stored_rows > 0, "both workers took a share"
    like = f"S{unique_id}%"
    assert count(migrated, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", like) == 2000


def test_kill_9_of_a_worker_loses_nothing_acknowledged(
    mqtt_service: MqttService, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    skip_unless(mqtt_service.kind != "embedded", "needs Mosquitto's persistent sessions at speed")
    env = dict(
        os.environ, MQTT_URL=mqtt_service.url, DATABASE_URL=migrated, STREETLIGHT_DATA_DIR=str(tmp_path)
    )
    cmd = [
        sys.executable,
        "-m",
        "streetlight.cli.ingest",
        "--index",
        "0",
        "--subscription",
        "plain",
        "--no-jobs",
        "--client-id",
        f"kill-{unique_id}",
        "--max-delay-ms",
        "50",
        "--device-rate",
        "0",  # load from a few device ids, not a device's traffic
    ]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)

    proc = start()
    prefix = f"K{unique_id}"
    n = 20_000
    try:
        time.sleep(1.5)  # subscribed (the persistent session keeps what arrives meanwhile anyway)
        pub = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "devkit.bench.fastpub",
                "--port",
                str(mqtt_service.port),
                "--count",
                str(n),
                "--lamps",
                "50",
                "--qos",
                "1",
                "--prefix",
                prefix,
                "--rate",
                "10000",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        like = f"{prefix}%"
        wait_for(
            lambda: count(migrated, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", like) > 2000
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        pub.wait(60)
        proc = start()
        wait_for(
            lambda: count(migrated, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", like) >= n, 60
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert count(migrated, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", like) == n
    assert (
        count(
            migrated, "SELECT count(DISTINCT (device_id, seq)) FROM telemetry WHERE device_id LIKE %s", like
        )
        == n
    )


def test_200_lamps_of_one_neighbourhood_going_dark_raise_one_mass_outage_alert(
    migrated: str, unique_id: str
) -> None:
    ts = now_ms()
    births = [
        RawMessage(
            f"sl/v1/11140/M{unique_id}{i:03d}/birth",
            b'{"kind":"lamp","firmware":"1","model":"X","lat":%.5f,"lon":%.5f,"bdseq":1}'
            % (37.5636 + (i % 20) * 0.00002, 126.9826 + (i // 20) * 0.00002),
        )
        for i in range(200)
    ]
    dong = "1114055000"
    wills = [
        RawMessage(f"sl/v1/11140/M{unique_id}{i:03d}/state", b'{"state":"offline","bdseq":1,"ts":%d}' % ts)
        for i in range(200)
    ]
    now = datetime.now(UTC)
    with psycopg.connect(migrated, autocommit=True) as conn:
        for batch in (births, wills):
            write_batch(conn, process(batch, ts, SeqTracker()), batch, now)
        conn.execute("UPDATE devices SET dong_code = %s WHERE device_id LIKE %s", (dong, f"M{unique_id}%"))
        counts = raise_offline_alerts(conn, now, silent_after_s=180)
        again = raise_offline_alerts(conn, now, silent_after_s=180)
        outages = active_alerts(conn, kinds=[AlertKind.MASS_OUTAGE.value])
        singles = active_alerts(conn, kinds=[AlertKind.DEVICE_OFFLINE.value])
    assert counts["mass_outage_new"] == 1 and again["mass_outage_new"] == 0
    assert len(outages) == 1 and len(outages[0].device_ids) == 200
    assert singles == [], "the lamps of the outage get no alert each"


def test_repeated_lamp_faults_count_into_one_alert_and_a_clear_resolves_it(
    migrated: str, unique_id: str
) -> None:
    dev = f"F{unique_id}"
    ts = now_ms()
    fault = b'{"ts":%d,"seq":%d,"type":"fault","code":"lamp_failure"}'
    batches = [
        [RawMessage(f"sl/v1/11230/{dev}/event", fault % (ts, 1))],
        [RawMessage(f"sl/v1/11230/{dev}/event", fault % (ts + 1, 2))],
    ]
    now = datetime.now(UTC)
    with psycopg.connect(migrated, autocommit=True) as conn:
        for msgs in batches:
            write_batch(conn, process(msgs, ts, SeqTracker()), msgs, now, on_faults=raise_fault_alerts)
        active = active_alerts(conn, kinds=["lamp_fault"], source_id=dev)
        assert len(active) == 1 and active[0].count == 2
        cleared = [
            RawMessage(
                f"sl/v1/11230/{dev}/event",
                b'{"ts":%d,"seq":3,"type":"fault_cleared","code":"lamp_failure"}' % (ts + 2),
            )
        ]
        write_batch(conn, process(cleared, ts, SeqTracker()), cleared, now, on_faults=raise_fault_alerts)
        assert active_alerts(conn, kinds=["lamp_fault"], source_id=dev) == []


def test_telemetry_received_hours_late_reaches_the_hourly_aggregates_once_the_jobs_have_run(
    mqtt_service: MqttService, stored: str, tmp_path: Path, unique_id: str
) -> None:
    from store import upsert_device, write_telemetry
    from tests.helpers import run_storage_jobs

    dev = f"LATE{unique_id}"
    hour_ms = 3_600_000
    base = (now_ms() // hour_ms - 12) * hour_ms  # twelve hours ago: beyond every regular look-back
    with psycopg.connect(stored, autocommit=True) as conn:
        upsert_device(conn, dev, kind="lamp", district_code="11230", lat=37.57, lon=127.04, firmware="1")
        # An hour already materialised two hours ago, so the late hour lies below the aggregates'
        # watermark (where TimescaleDB's real-time aggregation no longer looks at raw rows).
        recent = (now_ms() // hour_ms - 2) * hour_ms
        write_telemetry(
            conn, [(recent, dev, 0, 0, 80, 36.4, 221.7, 0.16, 21.5, 3.2, [], None, None, None, None)]
        )
        run_storage_jobs(conn)
        with running(make_worker(mqtt_service, stored, tmp_path, unique_id)) as worker:
            pub = publisher(mqtt_service)
            for seq in range(30):  # a gateway's buffer, delivered now: two minutes apart, an hour's worth
                pub.publish(f"sl/v1/11230/{dev}/telemetry", LAMP % (base + seq * 120_000, seq), qos=1)
            wait_for(lambda: worker.metrics.stored_rows >= 30)
            pub.loop_stop()
        run_storage_jobs(conn)
        row = conn.execute(
            "SELECT samples FROM telemetry_hourly_lamp WHERE device_id = %s AND bucket = to_timestamp(%s)",
            (dev, base // 1000),
        ).fetchone()
        district = conn.execute(
            "SELECT lamps_online FROM telemetry_hourly_district WHERE district_code = '11230' "
            "AND bucket = to_timestamp(%s)",
            (base // 1000,),
        ).fetchone()
    assert row == (30,)
    assert district == (1,)


def test_two_ingest_instances_with_one_client_id_never_share_a_spool_the_second_exits_saying_why(
    mqtt_service: MqttService, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    env = dict(
        os.environ, MQTT_URL=mqtt_service.url, DATABASE_URL=migrated, STREETLIGHT_DATA_DIR=str(tmp_path)
    )

    def cmd(client_id: str) -> list[str]:
        return [
            *(sys.executable, "-m", "streetlight.cli.ingest", "--subscription", "plain"),
            *("--no-jobs", "--client-id", client_id),
        ]

    first = subprocess.Popen(cmd(f"one-{unique_id}"), env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    try:
        spool = tmp_path / "spool" / f"one-{unique_id}-0.spool"
        wait_for(spool.exists)
        time.sleep(0.5)
        same = subprocess.run(cmd(f"one-{unique_id}"), env=env, cwd=ROOT, capture_output=True, timeout=60)
        assert same.returncode == 2
        assert b"held by another running ingest instance" in same.stderr
        assert first.poll() is None, "the first instance keeps running"
        other = subprocess.Popen(cmd(f"two-{unique_id}"), env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            wait_for((tmp_path / "spool" / f"two-{unique_id}-0.spool").exists)
            time.sleep(0.5)
            assert other.poll() is None, "an instance with its own client id runs beside the first"
        finally:
            other.send_signal(signal.SIGTERM)
            other.wait(30)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)
