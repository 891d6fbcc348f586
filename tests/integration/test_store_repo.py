"""Repositories, rollups and personal-data retention against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from store import (
    CommandRecord,
    StateUpdate,
    acquire_lease,
    add_alert_positions,
    add_walk_positions,
    alert_events,
    alert_track,
    append_alert_event,
    attach_walk_to_alert,
    claim_idempotency_key,
    command_status_counts,
    create_resident,
    delete_resident,
    district_hours,
    end_walk,
    get_alert,
    get_command,
    get_device,
    get_operator,
    insert_commands,
    insert_dead_letters,
    lamp_hours,
    lease_owners,
    list_alerts,
    list_dead_letters,
    list_devices_with_state,
    log_access,
    mark_unanswered,
    migrate,
    record_ack,
    refresh_rollups,
    release_lease,
    resident_by_token_hash,
    run_maintenance,
    run_retention,
    set_connectivity,
    start_walk,
    update_device_states,
    upsert_alert,
    upsert_device,
    upsert_operator,
    walk_positions,
    write_telemetry,
)

Conn = psycopg.Connection[Any]
T0 = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    migrate(db_url, timescale=False)  # the plain path, pinned
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _lamp(conn: Conn, device_id: str, district: str = "11230") -> None:
    upsert_device(conn, device_id, kind="lamp", district_code=district, lat=37.57, lon=127.04, firmware="1.0")


def test_a_birth_registers_a_device_and_a_second_birth_updates_it(conn: Conn) -> None:
    _lamp(conn, "lamp-1")
    upsert_device(conn, "lamp-1", kind="lamp", district_code="11230", firmware="1.1", paired_device_id="b-1")
    device = get_device(conn, "lamp-1")
    assert device is not None
    assert (device["firmware"], device["paired_device_id"], device["lat"]) == ("1.1", "b-1", 37.57)
    assert device["online"] is False


def test_a_stale_will_with_an_older_bdseq_leaves_a_reconnected_device_online(conn: Conn) -> None:
    _lamp(conn, "lamp-2")
    assert set_connectivity(conn, "lamp-2", online=True, bdseq=4, at=T0)
    assert set_connectivity(conn, "lamp-2", online=True, bdseq=5, at=T0 + timedelta(seconds=10))
    # The will of connection 4 arrives late, after the device came back as connection 5.
    assert not set_connectivity(conn, "lamp-2", online=False, bdseq=4, at=T0 + timedelta(seconds=11))
    device = get_device(conn, "lamp-2")
    assert device is not None
    assert (device["online"], device["bdseq"]) == (True, 5)
    # The will of the current connection does take it offline.
    assert set_connectivity(conn, "lamp-2", online=False, bdseq=5, at=T0 + timedelta(seconds=20))
    device = get_device(conn, "lamp-2")
    assert device is not None
    assert (device["online"], device["state_changed_at"]) == (False, T0 + timedelta(seconds=20))


def test_device_state_updates_add_counters_and_keep_the_newest_values(conn: Conn) -> None:
    _lamp(conn, "lamp-3")
    update_device_states(
        conn,
        [
            StateUpdate("lamp-3", T0, 10, level=80, messages=10, seq_gaps=1, summary_json='{"level": 80}'),
            StateUpdate("lamp-4", T0, 3, level=100, faults=["LAMP_FAIL"], messages=3),
        ],
    )
    # A replayed, older batch adds to the counters but does not roll the values back.
    update_device_states(
        conn, [StateUpdate("lamp-3", T0 - timedelta(minutes=5), 5, level=20, seq_duplicates=2)]
    )
    update_device_states(conn, [StateUpdate("lamp-3", T0 + timedelta(minutes=1), 11, level=60, messages=1)])
    s = get_device(conn, "lamp-3")
    assert s is not None
    assert (s["last_seq"], s["level"], s["last_seen"]) == (11, 60, T0 + timedelta(minutes=1))
    assert (s["seq_gaps"], s["seq_duplicates"]) == (1, 2)
    assert s["last_telemetry"] == {"level": 80}
    row = conn.execute("SELECT messages, faults FROM device_state WHERE device_id = 'lamp-4'").fetchone()
    assert row == (3, ["LAMP_FAIL"])


def test_lamps_are_listed_with_their_state_by_district(conn: Conn) -> None:
    _lamp(conn, "lamp-a", "11230")
    _lamp(conn, "lamp-b", "11110")
    upsert_device(conn, "blink-a", kind="blinker", district_code="11230")
    set_connectivity(conn, "lamp-a", online=True, bdseq=1)
    lamps = list_devices_with_state(conn, district_codes=["11230"])
    assert [(lamp["device_id"], lamp["online"]) for lamp in lamps] == [("lamp-a", True)]
    assert len(list_devices_with_state(conn, kind=None)) == 3


def test_dead_letters_keep_their_bytes_intact_including_invalid_utf8(conn: Conn) -> None:
    raw = b'{"level": \xff\xfe\x00 "bad"}'
    assert (
        insert_dead_letters(conn, [(T0, "sl/v1/11230/lamp-1/telemetry", raw, "invalid JSON", "lamp-1")]) == 1
    )
    letter = list_dead_letters(conn)[0]
    assert letter["payload"] == raw
    assert (letter["topic"], letter["reason"], letter["client_id"]) == (
        "sl/v1/11230/lamp-1/telemetry",
        "invalid JSON",
        "lamp-1",
    )


def test_rollups_compute_min_avg_max_energy_and_uptime_for_a_known_series(conn: Conn) -> None:
    _lamp(conn, "lamp-r1", "11230")
    _lamp(conn, "lamp-r2", "11230")
    start_ms = int(T0.timestamp() * 1000)
    rows: list[tuple[object, ...]] = []
    # lamp-r1: 60 samples a minute apart in one hour, level 40..99, 100 W each -> 100 Wh.
    for i in range(60):
        rows.append((start_ms + i * 60_000, "lamp-r1", 1, i, 40 + i, 100.0, 220.0, 0.45, 10.0, 1.0, [],
                     None, None, None, None))  # fmt: skip
    # lamp-r2: 30 samples at 50 W -> 25 Wh and half an hour of uptime.
    for i in range(30):
        rows.append((start_ms + i * 60_000, "lamp-r2", 1, i, 80, 50.0, 220.0, 0.23, 10.0, 1.0, [],
                     None, None, None, None))  # fmt: skip
    # A blinker in the same hour counts for neither.
    rows.append((start_ms, "blink-r", 1, 1, None, None, None, None, None, None, None, -70, 3.6, False, 0))
    write_telemetry(conn, rows)
    run = refresh_rollups(conn, now=T0 + timedelta(hours=2))
    assert run is not None and run.lamp_hours == 2
    lamp = conn.execute(
        "SELECT samples, level_min, level_avg, level_max, energy_wh, uptime_s FROM telemetry_hourly_lamp "
        "WHERE device_id = 'lamp-r1' AND bucket = %s",
        (T0,),
    ).fetchone()
    assert lamp is not None
    assert lamp[:4] == (60, 40, pytest.approx(69.5), 99)
    assert lamp[4] == pytest.approx(100.0)
    assert lamp[5] == 3600
    district = conn.execute(
        "SELECT lamps_online, energy_wh FROM telemetry_hourly_district "
        "WHERE district_code = '11230' AND bucket = %s",
        (T0,),
    ).fetchone()
    assert district is not None
    assert district[0] == 2
    assert district[1] == pytest.approx(125.0)
    assert [h["energy_wh"] for h in lamp_hours(conn, "lamp-r2", since=T0)] == [pytest.approx(25.0)]
    assert [h["lamps_online"] for h in district_hours(conn, "11230", since=T0)] == [2]
    # Incremental: a late row in that hour is picked up by the next run's look-back.
    write_telemetry(conn, [(start_ms + 45 * 60_000, "lamp-r2", 1, 99, 10, 50.0, 220.0, 0.2, 9.0, 1.0, [],
                            None, None, None, None)])  # fmt: skip
    refresh_rollups(conn, now=T0 + timedelta(hours=2, minutes=5))
    row = conn.execute(
        "SELECT level_min, samples FROM telemetry_hourly_lamp WHERE device_id = 'lamp-r2' AND bucket = %s",
        (T0,),
    ).fetchone()
    assert row == (10, 31)


def test_an_alert_keeps_its_audit_trail_and_an_idempotency_key_returns_the_same_alert(conn: Conn) -> None:
    upsert_alert(
        conn, "al-1", kind="sos", status="open", severity="extreme", district_codes=["11230", "11110"],
        created_at=T0, data={"place": "Dongdaemun"}, resident_id="r-1",
    )  # fmt: skip
    append_alert_event(conn, "al-1", actor="system", action="raised", at=T0)
    ack_at = T0 + timedelta(seconds=5)
    upsert_alert(
        conn, "al-1", kind="sos", status="acknowledged", severity="extreme",
        district_codes=["11230", "11110"],
        created_at=T0, updated_at=ack_at, acknowledged_by="op-1", acknowledged_at=ack_at,
        data={"place": "Dongdaemun", "v": 2},
    )  # fmt: skip
    first = append_alert_event(conn, "al-1", actor="op-1", action="acknowledge", note="on it")
    alert = get_alert(conn, "al-1")
    assert alert is not None
    assert (alert["status"], alert["acknowledged_by"], alert["data"]["v"]) == ("acknowledged", "op-1", 2)
    assert [e["action"] for e in alert_events(conn, "al-1")] == ["raised", "acknowledge"]
    assert alert_events(conn, "al-1", after_id=first) == []
    assert [a["alert_id"] for a in list_alerts(conn, district_codes=["11110"])] == ["al-1"]
    assert list_alerts(conn, district_codes=["11440"]) == []
    assert claim_idempotency_key(conn, "r-1", "key-1", "al-1") == ("al-1", True)
    assert claim_idempotency_key(conn, "r-1", "key-1", "al-2") == ("al-1", False)
    add_alert_positions(conn, "al-1", [(T0, 37.5714, 127.0421, 8.0)])
    assert alert_track(conn, "al-1")[0]["lat"] == 37.5714


def test_a_command_is_acked_once_and_an_unanswered_one_is_marked(conn: Conn) -> None:
    insert_commands(
        conn,
        [
            CommandRecord("c-1", "lamp-1", "set_level", "walk", "walk-1", 30, T0, level=100),
            CommandRecord("c-2", "lamp-2", "blink", "sos", "al-1", 60, T0),
        ],
    )
    assert record_ack(conn, "c-1", status="applied", effective_level=100, acked_at=T0 + timedelta(seconds=1))
    assert not record_ack(conn, "c-1", status="rejected")
    assert mark_unanswered(conn, sent_before=T0 + timedelta(seconds=5)) == ["c-2"]
    insert_commands(
        conn, [CommandRecord("c-2", "lamp-2", "blink", "sos", "al-1", 60, T0 + timedelta(seconds=5))]
    )
    c2 = get_command(conn, "c-2")
    assert c2 is not None and c2["attempts"] == 2
    assert command_status_counts(conn) == {"applied": 1, "unanswered": 1}
    c1 = get_command(conn, "c-1")
    assert c1 is not None
    assert (c1["status"], c1["effective_level"], c1["expires_at"]) == (
        "applied",
        100,
        T0 + timedelta(seconds=30),
    )


def test_walk_positions_go_a_day_after_the_walk_ends_unless_tied_to_an_sos(conn: Conn) -> None:
    create_resident(conn, "r-1", "hash-1")
    assert resident_by_token_hash(conn, "hash-1") == "r-1"
    for walk in ("w-plain", "w-sos", "w-recent"):
        start_walk(conn, walk, "r-1", started_at=T0)
        add_walk_positions(conn, walk, [(T0, 37.57123, 127.04123, 5.0, 90.0, 1.4, True, None)])
    end_walk(conn, "w-plain", ended_at=T0 + timedelta(minutes=10))
    end_walk(conn, "w-sos", ended_at=T0 + timedelta(minutes=10))
    end_walk(conn, "w-recent", ended_at=T0 + timedelta(hours=20))
    upsert_alert(conn, "al-9", kind="sos", status="open", severity="extreme", district_codes=["11230"],
                 created_at=T0)  # fmt: skip
    assert attach_walk_to_alert(conn, "w-sos", "al-9") == 1
    add_alert_positions(conn, "al-9", [(T0, 37.57166, 127.04166, 6.0)])
    done = run_retention(conn, now=T0 + timedelta(hours=25))
    assert done["walk_positions_deleted"] == 1
    assert walk_positions(conn, "w-plain") == []
    assert len(walk_positions(conn, "w-sos")) == 1
    assert len(walk_positions(conn, "w-recent")) == 1
    # After the SOS retention the track is coarsened, not kept exact.
    run_retention(conn, now=T0 + timedelta(days=31))
    kept = walk_positions(conn, "w-sos")
    assert (kept[0]["lat"], kept[0]["lon"], kept[0]["reason"]) == (37.571, 127.041, "coarsened")
    track = alert_track(conn, "al-9")
    assert (track[0]["lat"], track[0]["lon"], track[0]["coarsened"]) == (37.572, 127.042, True)
    assert track[0]["accuracy_m"] >= 100
    delete_resident(conn, "r-1")
    assert resident_by_token_hash(conn, "hash-1") is None


def test_a_district_lease_is_held_by_one_controller_until_it_expires(conn: Conn) -> None:
    assert acquire_lease(conn, "11230", "ctl-a", ttl_s=10, now=T0)
    assert not acquire_lease(conn, "11230", "ctl-b", ttl_s=10, now=T0 + timedelta(seconds=5))
    assert acquire_lease(conn, "11230", "ctl-a", ttl_s=10, now=T0 + timedelta(seconds=8))  # renewal
    assert acquire_lease(conn, "11230", "ctl-b", ttl_s=10, now=T0 + timedelta(seconds=19))  # took over
    release_lease(conn, "11230", "ctl-a")  # not the owner any more: no effect
    row = conn.execute("SELECT owner FROM controller_leases WHERE district_code = '11230'").fetchone()
    assert row == ("ctl-b",)
    assert acquire_lease(conn, "11110", "ctl-a", ttl_s=600)
    assert lease_owners(conn) == {"11110": "ctl-a"}


def test_operators_are_stored_with_their_role_and_reads_of_resident_data_are_logged(conn: Conn) -> None:
    upsert_operator(conn, "op-dd", password_hash="argon2$x", role="district", district_code="11230")
    op = get_operator(conn, "op-dd")
    assert op is not None and (op["role"], op["district_code"]) == ("district", "11230")
    with pytest.raises(psycopg.errors.CheckViolation):
        upsert_operator(conn, "op-bad", password_hash="x", role="district")  # a district operator needs one
    log_access(conn, actor="op-dd", action="read_track", subject_kind="resident", subject_id="rp_r1")
    row = conn.execute("SELECT actor, action, subject_id FROM audit_log").fetchone()
    assert row == ("op-dd", "read_track", "rp_r1")
    with pytest.raises(ValueError, match="pseudonym"):  # a resident is never named by the id
        log_access(conn, actor="op-dd", action="read_track", subject_kind="resident", subject_id="r-1")


def test_the_maintenance_job_runs_partitions_rollups_and_retention_together(conn: Conn) -> None:
    done = run_maintenance(conn)
    assert set(done) == {"partitions_created", "rollups", "retention"}
    assert conn.execute("SELECT count(*) FROM retention_runs").fetchone() == (1,)


def test_many_acks_in_one_statement_update_each_command_once(conn: Conn) -> None:
    from store import record_acks

    insert_commands(
        conn,
        [
            CommandRecord(f"m-{i}", f"lamp-{i}", "set_level", "walk", "walk-1", 30, T0, level=100)
            for i in range(4)
        ],
    )
    record_ack(conn, "m-3", status="applied", effective_level=100)  # already acked: left alone
    at = T0 + timedelta(seconds=2)
    acks = [
        ("m-0", "applied", 100, None),
        ("m-1", "rejected", 80, "lower priority than sos"),
        ("m-0", "expired", None, None),  # a repeat: the first ack stays
        ("m-3", "rejected", None, None),
        ("nope", "applied", 100, None),  # unknown id: skipped
    ]
    assert record_acks(conn, acks, acked_at=at) == 2
    got = {c: get_command(conn, c) for c in ("m-0", "m-1", "m-2", "m-3")}
    assert {c: (r["status"], r["effective_level"], r["reason"]) for c, r in got.items() if r} == {
        "m-0": ("applied", 100, None),
        "m-1": ("rejected", 80, "lower priority than sos"),
        "m-2": ("sent", None, None),
        "m-3": ("applied", 100, None),
    }
    assert got["m-0"] is not None and got["m-0"]["acked_at"] == at
    assert record_acks(conn, []) == 0
