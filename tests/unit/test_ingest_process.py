"""Ingest's pure parts: a batch of raw messages becomes rows, dead letters and counters; the spool."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.security import Principal, hash_secret
from broker.security._registry import DeviceSpec
from ingest import (
    IngestMetrics,
    RawMessage,
    SeqTracker,
    Spool,
    SpoolFull,
    SpoolLocked,
    ack_seq,
    process,
    sender_checker,
)
from store import EVENT_FIELDS, TELEMETRY_FIELDS

NOW_MS = 1_764_100_000_000
LAMP = (
    b'{"ts":%d,"seq":%d,"level":80,"power_w":36.4,"voltage_v":221.7,"current_a":0.164,'
    b'"temp_c":21.5,"lux":3.2,"faults":[]}'
)


def tel(device: str, seq: int, ts: int = NOW_MS) -> RawMessage:
    return RawMessage(f"sl/v1/11230/{device}/telemetry", LAMP % (ts + seq, seq), 1)


def test_lamp_telemetry_becomes_one_row_in_the_store_layout() -> None:
    out = process([tel("L1", 7)], NOW_MS, SeqTracker())
    assert len(out.telemetry) == 1
    row = dict(zip(TELEMETRY_FIELDS, out.telemetry[0], strict=True))
    assert row["device_id"] == "L1" and row["seq"] == 7 and row["level"] == 80
    assert row["ts_ms"] == NOW_MS + 7 and row["bdseq"] == 0 and row["faults"] == []
    assert row["rssi_dbm"] is None and row["power_w"] == 36.4
    assert out.devices["L1"].messages == 1 and out.devices["L1"].last_seq == 7


def test_bad_payloads_and_topics_become_dead_letters_with_a_reason() -> None:
    messages = [
        RawMessage("sl/v1/11230/L1/telemetry", b'{"ts":1,"seq":1,"level":80}'),
        RawMessage("sl/v1/11230/L1/telemetry", b"not json"),
        RawMessage("sl/v1/11230/L1/telemetry", b'{"ts":%d,"seq":1,"level":180}' % NOW_MS),
        RawMessage("sl/v1/1123/L1/telemetry", LAMP % (NOW_MS, 1)),
        RawMessage("sl/v1/11230/L1/cmd", b"{}"),
        tel("L1", 2),
    ]
    out = process(messages, NOW_MS, SeqTracker())
    assert len(out.telemetry) == 1, "the good message after the bad ones is still stored"
    reasons = [d.reason for d in out.dead]
    assert reasons[0].startswith("ts:")
    assert reasons[1].startswith("payload: not valid JSON")
    assert reasons[2].startswith("level:") and "180" in reasons[2]
    assert reasons[3].startswith("topic:") and "5 ASCII digits" in reasons[3]
    assert "cmd" in reasons[4]
    assert [d.kind for d in out.dead] == ["payload", "payload", "payload", "topic", "topic"]
    assert out.dead[1].payload == b"not json", "the bytes are kept exactly as received"


def test_events_and_acks_become_event_rows_and_faults_are_noted() -> None:
    messages = [
        RawMessage(
            "sl/v1/11230/L1/event", b'{"ts":%d,"seq":3,"type":"fault","code":"lamp_failure"}' % NOW_MS
        ),
        RawMessage(
            "sl/v1/11230/L1/ack",
            b'{"cmd_id":"c-1","ts":%d,"status":"applied","effective_level":100}' % NOW_MS,
        ),
    ]
    out = process(messages, NOW_MS, SeqTracker())
    fault, ack = (dict(zip(EVENT_FIELDS, r, strict=True)) for r in out.events)
    assert fault["type"] == "fault" and fault["code"] == "lamp_failure" and fault["seq"] == 3
    assert ack["type"] == "ack" and ack["code"] == "applied" and ack["seq"] == ack_seq("c-1")
    assert out.fault_events == [("L1", "fault", "lamp_failure", NOW_MS, 3)]
    assert out.acks == 1


def test_seq_gaps_and_repeats_are_counted_per_device_and_a_birth_restarts_the_count() -> None:
    seqs = SeqTracker()
    out = process([tel("L1", 1), tel("L1", 2), tel("L1", 5), tel("L1", 5), tel("L2", 9)], NOW_MS, seqs)
    assert (out.devices["L1"].seq_gaps, out.devices["L1"].seq_duplicates) == (2, 1)
    assert (out.devices["L2"].seq_gaps, out.devices["L2"].seq_duplicates) == (0, 0)
    birth = RawMessage(
        "sl/v1/11230/L1/birth",
        b'{"kind":"lamp","firmware":"1.0","model":"X","lat":37.56,"lon":126.98,"bdseq":2}',
    )
    out = process([birth, tel("L1", 0)], NOW_MS, seqs)
    assert out.devices["L1"].seq_gaps == 0 and out.devices["L1"].seq_duplicates == 0
    assert out.births[0][:2] == ("11230", "L1")


def test_events_share_the_seq_counter_with_telemetry_so_interleaved_ones_are_no_gap() -> None:
    seqs = SeqTracker()
    beacon = (
        b'{"ts":%d,"seq":%d,"type":"beacon","token_hash":"9f86d081884c7d659a2feaa0c55ad015","rssi_dbm":-63}'
    )
    ack = b'{"ts":%d,"cmd_id":"c-1","status":"applied","effective_level":100}' % NOW_MS
    messages = [
        tel("L1", 1),
        RawMessage("sl/v1/11230/L1/event", beacon % (NOW_MS, 2), 1),
        RawMessage("sl/v1/11230/L1/ack", ack, 1),  # an ack carries no seq: it takes no number
        RawMessage("sl/v1/11230/L1/event", beacon % (NOW_MS, 3), 1),
        tel("L1", 4),
    ]
    out = process(messages, NOW_MS, seqs)
    assert out.devices["L1"].seq_gaps == 0 and out.event_seq_gaps == 0
    lost = process([RawMessage("sl/v1/11230/L1/event", beacon % (NOW_MS, 7), 1)], NOW_MS, seqs)
    assert lost.event_seq_gaps == 2  # seq 5 and 6 never came


def _principal(name: str, district: str) -> Principal:
    spec = DeviceSpec(name, "lamp", district)
    return Principal(name, "device", hash_secret("x" * 32), district, spec)


def test_sender_checks_refuse_unknown_devices_and_spoofed_ids_and_flag_a_moved_district() -> None:
    registry = {"L1": _principal("L1", "11230"), "L2": _principal("L2", "11110")}
    check = sender_checker(registry.get)
    messages = [
        tel("L9", 1),
        RawMessage("sl/v1/11230/L1/telemetry", (LAMP % (NOW_MS, 1))[:-1] + b',"device_id":"L2"}'),
        RawMessage("sl/v1/11230/L2/telemetry", LAMP % (NOW_MS, 1)),
        tel("L1", 2),
    ]
    out = process(messages, NOW_MS, SeqTracker(), check_sender=check)
    assert [d.kind for d in out.dead] == ["unknown_device", "payload_id_mismatch"]
    assert [r[1] for r in out.telemetry] == ["L2", "L1"]
    assert [(f.device_id, f.flag) for f in out.flags] == [("L2", "district_mismatch")]


def test_spool_gives_back_batches_in_order_and_clears(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool")
    spool.append([tel("L1", 1), tel("L1", 2)])
    spool.append([RawMessage("sl/v1/11230/L1/state", b'{"state":"offline","bdseq":1}', 1)])
    assert len(spool) == 3
    batches = [b for _, b in spool.batches()]
    assert [m.topic for b in batches for m in b] == [
        "sl/v1/11230/L1/telemetry",
        "sl/v1/11230/L1/telemetry",
        "sl/v1/11230/L1/state",
    ]
    assert batches[0][1] == tel("L1", 2)
    spool.clear()
    assert spool.size_bytes == 0 and not list(spool.batches())
    spool.close()


def test_a_torn_spool_record_is_cut_on_reopen_so_later_batches_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "s.spool"
    spool = Spool(path)
    spool.append([tel("L1", 1)])
    spool.close()
    with path.open("ab") as f:
        f.write(b"\x53\x4c\x53\x50\x00\x00\x00\x01\x00\x00\x10\x00")  # a header whose body never came
    spool = Spool(path)
    spool.append([tel("L1", 2)])
    assert [m.payload for _, b in spool.batches() for m in b] == [tel("L1", 1).payload, tel("L1", 2).payload]
    spool.close()


def test_a_second_instance_cannot_open_a_spool_that_another_holds_so_it_never_truncates_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.spool"
    first = Spool(path)
    first.append([tel("L1", 1)])
    with pytest.raises(SpoolLocked, match="another running ingest instance"):
        Spool(path)
    assert [m.payload for _, b in first.batches() for m in b] == [tel("L1", 1).payload]
    first.close()
    second = Spool(path)  # the lock dies with its holder
    assert len(second) == 1
    second.close()


def test_a_full_spool_refuses_the_batch_and_writes_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "s.spool", max_bytes=400)
    spool.append([tel("L1", 1)])
    size = spool.size_bytes
    with pytest.raises(SpoolFull, match="full"):
        spool.append([tel("L1", n) for n in range(2, 10)])
    assert spool.size_bytes == size == (tmp_path / "s.spool").stat().st_size
    spool.close()


def test_metrics_exposition_names_every_counter() -> None:
    m = IngestMetrics(worker=3)
    m.dead_letters["payload"] += 2
    m.observe_batch(0.15)
    text = m.exposition()
    for name in (
        "ingest_messages_received_total",
        "ingest_rows_stored_total",
        "ingest_duplicates_total",
        "ingest_seq_gaps_total",
        "ingest_spool_bytes",
        "ingest_batch_latency_seconds_bucket",
    ):
        assert f"{name}{{" in text
    assert 'ingest_dead_letters_total{worker="3",reason="payload"} 2' in text
    assert 'ingest_batch_latency_seconds_bucket{worker="3",le="0.2"} 1' in text
