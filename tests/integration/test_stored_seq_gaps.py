"""Lost messages counted from the stored rows, whatever the number of ingest workers.

Workers on a shared subscription each see part of every device's stream, so their batches raise no
``data_loss`` alert; the jobs leader's check of the stored rows (``store.maintenance.stored_seq_gaps``
through ``JobsLeader.check_seq_gaps``) does. Real PostgreSQL (both storage paths for the query) and
the session's broker for the two shared workers.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker import parse_mqtt_url
from devkit.localservices import MqttService
from ingest import (
    IngestMetrics,
    IngestWorker,
    JobsLeader,
    RawMessage,
    SeqTracker,
    WorkerConfig,
    process,
    raise_fault_alerts,
)
from ingest._write import write_batch
from store import migrate
from store.maintenance import stored_seq_gaps
from tests.helpers import count, running, wait_for

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # within every retention


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _telemetry(dev: str, at: datetime, seq: int) -> RawMessage:
    body = {"ts": _ms(at), "seq": seq, "level": 80, "power_w": 36.0, "faults": []}
    return RawMessage(f"sl/v1/11230/{dev}/telemetry", json.dumps(body).encode())


def _event(dev: str, at: datetime, seq: int) -> RawMessage:
    body = {"ts": _ms(at), "seq": seq, "type": "fault", "code": "driver"}
    return RawMessage(f"sl/v1/11230/{dev}/event", json.dumps(body).encode())


def _ack(dev: str, at: datetime) -> RawMessage:
    body = {"ts": _ms(at), "cmd_id": "c-1", "status": "applied", "effective_level": 80}
    return RawMessage(f"sl/v1/11230/{dev}/ack", json.dumps(body).encode())


def _birth(dev: str) -> RawMessage:
    body = b'{"kind":"lamp","firmware":"1","model":"X","lat":37.5665,"lon":126.978,"bdseq":1}'
    return RawMessage(f"sl/v1/11230/{dev}/birth", body)


def _store(db: str, msgs: list[RawMessage]) -> None:
    with psycopg.connect(db) as conn:
        batch = process(msgs, _ms(T0 + timedelta(hours=1)), SeqTracker())
        assert not batch.dead, batch.dead
        write_batch(conn, batch, msgs, datetime.now(UTC))
        conn.commit()


def _minute(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def _hand_made_gaps() -> list[RawMessage]:
    msgs = [_birth("lamp-a")]
    # lamp-a: telemetry and events share the counter; 4 is lost, then 6 and 7 (closed by 8 at 8 min).
    msgs += [_telemetry("lamp-a", _minute(n), n) for n in (0, 1, 2, 5, 8)]
    msgs += [_event("lamp-a", _minute(3), 3), _ack("lamp-a", _minute(4.5))]  # the ack has no seq
    # lamp-b: no gap; its seq restarts with a new connection (a step back in device time).
    msgs += [_telemetry("lamp-b", _minute(n), 10 + n) for n in range(5)]
    msgs += [_telemetry("lamp-b", _minute(5 + n), n) for n in range(4)]
    # lamp-c: a gap closed at 1.5 min, before the part a later check counts.
    msgs += [_telemetry("lamp-c", _minute(n), s) for n, s in ((0, 0), (1.5, 3), (2, 4))]
    return msgs


def test_the_stored_rows_query_counts_each_gap_by_the_row_that_closes_it(storage_url: str) -> None:
    _store(storage_url, _hand_made_gaps())
    with psycopg.connect(storage_url) as conn:
        everything = stored_seq_gaps(conn, since=T0, closed_from=T0, until=_minute(10))
        later = stored_seq_gaps(conn, since=T0, closed_from=_minute(2), until=_minute(10))
        before_the_second = stored_seq_gaps(conn, since=T0, closed_from=T0, until=_minute(7))
    # lamp-a's district comes from its birth; lamp-c sent none (no devices row).
    assert everything == {"lamp-a": ("11230", 3), "lamp-c": ("", 2)}
    assert later == {"lamp-a": ("11230", 3)}
    assert before_the_second == {"lamp-a": ("11230", 1), "lamp-c": ("", 2)}


@pytest.fixture
def migrated(db_url: str) -> str:
    migrate(db_url, timescale=False)
    return db_url


def _data_loss(db: str) -> list[tuple[str, int]]:
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT status, data FROM alerts WHERE kind = 'data_loss'").fetchall()
    return [(status, int(data["count"])) for status, data in rows]


def test_overlapping_checks_of_the_jobs_leader_count_a_gap_once(migrated: str) -> None:
    _store(migrated, _hand_made_gaps())
    leader = JobsLeader(migrated, silent_after_s=180, seq_gap_check=True, gap_lookback_s=600, gap_lag_s=60)
    with psycopg.connect(migrated, autocommit=True) as conn:
        first = leader.check_seq_gaps(conn, _minute(7))  # rows up to 6 min: lamp-a's 4, lamp-c's 2
        assert (first.devices, first.missing) == (2, 3)
        assert _data_loss(migrated) == [("open", 3)]
        second = leader.check_seq_gaps(conn, _minute(8))  # the same rows again: nothing new
        assert second.missing == 0
        third = leader.check_seq_gaps(conn, _minute(10))  # lamp-a's 8 closes the gap of 6 and 7
        assert (third.devices, third.missing) == (1, 2)
    assert _data_loss(migrated) == [("open", 5)]


LAMP = '{"ts":%d,"seq":%d,"level":80,"power_w":36.0,"faults":[]}'


def _shared_worker(svc: MqttService, db: str, tmp: Path, name: str, index: int, group: str) -> IngestWorker:
    # A group of the test's own: the session's broker keeps earlier tests' persistent sessions,
    # and Mosquitto deals a shared subscription's messages to offline members of the group too.
    config = WorkerConfig(
        share_group=group,
        mqtt=parse_mqtt_url(svc.url),
        database_url=db,
        spool_path=tmp / f"{name}.spool",
        client_id=f"ingest-{name}",
        shared=True,
        index=index,
        max_delay_s=0.05,
        device_rate_per_s=0,
    )
    return IngestWorker(config, on_faults=raise_fault_alerts)


def test_two_shared_workers_storing_a_gap_free_stream_raise_no_data_loss_alert(
    mqtt_service: MqttService, migrated: str, tmp_path: Path, unique_id: str
) -> None:
    group = f"ingest-{unique_id}"
    a = _shared_worker(mqtt_service, migrated, tmp_path, f"a{unique_id}", 0, group)
    b = _shared_worker(mqtt_service, migrated, tmp_path, f"b{unique_id}", 1, group)
    # An odd number of devices: the broker's turns alternate, so each device's stream is split.
    devices, per_device = 21, 60
    ts = int(time.time() * 1000)
    with running(a), running(b):
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique_id}")
        pub.connect(mqtt_service.host, mqtt_service.port)
        pub.loop_start()
        infos = [
            pub.publish(f"sl/v1/11230/G{unique_id}{d}/telemetry", LAMP % (ts + n, n), qos=1)
            for n in range(per_device)
            for d in range(devices)
        ]
        for info in infos:
            info.wait_for_publish(30)
        wait_for(lambda: a.metrics.stored_rows + b.metrics.stored_rows >= devices * per_device, 30)
        pub.disconnect()
        pub.loop_stop()
    assert a.metrics.stored_rows > 0 and b.metrics.stored_rows > 0, "both workers took a share"
    like = f"G{unique_id}%"
    assert (
        count(migrated, "SELECT count(*) FROM telemetry WHERE device_id LIKE %s", like)
        == devices * per_device
    )
    # Each worker saw gaps the other filled (its own metric), and no alert came of them.
    assert a.metrics.seq_gaps + b.metrics.seq_gaps > 0
    assert _data_loss(migrated) == []
    leader = JobsLeader(migrated, silent_after_s=180, seq_gap_check=True)
    with psycopg.connect(migrated, autocommit=True) as conn:
        checked = leader.check_seq_gaps(conn, datetime.now(UTC) + leader.gap_lag)
    assert checked.missing == 0
    assert _data_loss(migrated) == []


def test_the_jobs_leader_runs_the_check_while_it_holds_the_lease(migrated: str) -> None:
    _store(migrated, _hand_made_gaps())
    leader = JobsLeader(
        migrated, silent_after_s=180, interval_s=0.2, seq_gap_check=True, gap_lookback_s=7200, gap_lag_s=0
    ).start()
    try:
        wait_for(lambda: _data_loss(migrated) == [("open", 5)], 20)
    finally:
        leader.stop()


def test_the_check_waits_while_the_worker_spools_and_for_a_look_back_after() -> None:
    # Rows in a spool during a database outage are late, not lost: a check then would count them.
    metrics = IngestMetrics(worker=0)
    leader = JobsLeader(
        "postgresql://unused",
        silent_after_s=180,
        seq_gap_check=True,
        gap_lookback_s=600,
        gap_lag_s=60,
        metrics=metrics,
    )
    assert not leader.spool_settling(now_s=1_000.0)
    metrics.db_up = False
    assert leader.spool_settling(now_s=1_010.0)
    metrics.db_up, metrics.spool_bytes = True, 4_096  # back, replaying
    assert leader.spool_settling(now_s=1_100.0)
    metrics.spool_bytes = 0  # replayed at 1,100 s: other workers' spools may still be replaying
    assert leader.spool_settling(now_s=1_100.0 + 659.0)
    assert not leader.spool_settling(now_s=1_100.0 + 661.0)
