"""Residents' positions past the retention deadlines and after a deletion, searched for in every row
of the whole database (not only the tables the retention job knows about), on plain PostgreSQL and
on TimescaleDB; the resident's export; the audit trail's hash chain (docs/privacy.md)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from httpx import Client
from psycopg import sql

from devkit.apiclient import client, fast_config, login, resident, seed

# Exact positions of the test's SOS (two presses) and walk, inside Jung-gu (11020). A copy is
# found by its first four decimals (~10 m); the coarse value keeps three (~100 m).
SOS = (37.5611234, 126.9941234)
SOS2 = (37.5616789, 126.9946789)
WALK = (37.5623456, 126.9953456)
LAMPS = [("pl1", "11020", 37.5605, 126.9935), ("pl2", "11020", 37.5632, 126.9962)]


def _needles(*points: tuple[float, float]) -> list[str]:
    out = []
    for lat, lon in points:
        for value in (lat, lon):
            whole, _, frac = f"{value:.7f}".partition(".")
            out.append(f"{whole}.{frac[:4]}")
    return out


def dump_database(url: str) -> dict[str, str]:
    """Every row of every table, view-materialisation and chunk of the database as text, by
    relation (TimescaleDB's internal schemas too); pg_catalog and information_schema aside."""
    out: dict[str, str] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        rels = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
            "AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%' ORDER BY 1, 2"
        ).fetchall()
        for schema, name in rels:
            rows = conn.execute(
                sql.SQL("SELECT t::text FROM {}.{} t").format(sql.Identifier(schema), sql.Identifier(name))
            ).fetchall()
            out[f"{schema}.{name}"] = "\n".join(str(r[0]) for r in rows)
    return out


def holding(dump: dict[str, str], needles: list[str]) -> dict[str, list[str]]:
    """The relations holding any of ``needles``, with the needles found."""
    found = {rel: [n for n in needles if n in text] for rel, text in dump.items()}
    return {rel: hits for rel, hits in found.items() if hits}


def streetlight(*argv: str, url: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "DATABASE_URL": url, "STREETLIGHT_LOG_FORMAT": "json", **env}
    return subprocess.run(
        [sys.executable, "-m", "streetlight.cli", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=environ,
        check=False,
    )


def maintenance_at(url: str, when: datetime, **env: str) -> str:
    done = streetlight("migrate", "--maintenance", "--now", when.isoformat(), url=url, **env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def pos(lat: float, lon: float) -> dict[str, object]:
    return {"lat": lat, "lon": lon, "accuracy_m": 5.0}


@pytest.fixture
def api(storage_url: str) -> Iterator[Client]:
    seed(storage_url, LAMPS)
    with client(fast_config(storage_url, audit_key="test-audit-key")) as c:
        yield c


def _walk_and_sos(api: Client, me: dict[str, str]) -> tuple[str, str]:
    """A walk with positions, an SOS during it (two presses: a track), the walk ended."""
    walk_id = api.post("/v1/walks", json=pos(*WALK), headers=me).json()["walk_id"]
    r = api.post(f"/v1/walks/{walk_id}/positions", json=pos(WALK[0] + 0.00001, WALK[1]), headers=me)
    assert r.status_code == 200, r.text
    r = api.post("/v1/sos", json={**pos(*SOS), "walk_id": walk_id}, headers={**me, "Idempotency-Key": "a"})
    assert r.status_code in (200, 201, 202), r.text
    alert_id = r.json()["alert_id"]
    r = api.post("/v1/sos", json={**pos(*SOS2), "walk_id": walk_id}, headers={**me, "Idempotency-Key": "b"})
    assert r.json()["alert_id"] == alert_id
    assert api.post(f"/v1/walks/{walk_id}/end", headers=me).status_code == 200
    return walk_id, alert_id


def _operator_reads_and_closes(api: Client, alert_id: str) -> None:
    op = login(api, "op-jung")
    assert api.get("/v1/alerts", headers=op).status_code == 200
    assert api.get(f"/v1/alerts/{alert_id}", headers=op).status_code == 200
    assert api.get(f"/v1/alerts/{alert_id}/cap", headers=op).status_code == 200
    assert api.post(f"/v1/alerts/{alert_id}/acknowledge", headers=op, json={}).status_code == 200
    r = api.post(f"/v1/alerts/{alert_id}/resolve", headers=op, json={"outcome": "resident safe"})
    assert r.status_code == 200, r.text


def test_no_exact_sos_or_walk_position_is_left_anywhere_after_the_retention_deadlines(
    api: Client, storage_url: str
) -> None:
    me = resident(api)
    _, alert_id = _walk_and_sos(api, me)
    _operator_reads_and_closes(api, alert_id)
    needles = _needles(SOS, SOS2, WALK)
    before = holding(dump_database(storage_url), needles)
    # the search finds the copies while they are allowed (the test would see a leak)
    assert {"public.alerts", "public.alert_positions"} <= set(before), before
    assert any("walk_positions" in rel for rel in before), before

    # within the 30 days nothing is coarsened
    maintenance_at(storage_url, datetime.now(UTC) + timedelta(days=2))
    assert "public.alerts" in holding(dump_database(storage_url), needles)

    out = maintenance_at(storage_url, datetime.now(UTC) + timedelta(days=31))
    assert '"sos_documents_coarsened": 1' in out
    assert holding(dump_database(storage_url), needles) == {}
    # the alert is still there, coarse: district and neighbourhood kept
    with psycopg.connect(storage_url) as conn:
        row = conn.execute(
            "SELECT data->'place'->>'lat', data->'place'->>'district_code', positions_coarse FROM alerts "
            "WHERE alert_id = %s",
            (alert_id,),
        ).fetchone()
    assert row == (str(round(SOS2[0], 3)), "11020", True)  # the place follows the latest press
    # the audit trail outlives the positions and is intact
    verified = streetlight("audit", "verify", url=storage_url)
    assert verified.returncode == 0 and '"intact": true' in verified.stdout, verified.stdout + verified.stderr


def test_a_deleted_residents_sos_is_unlinked_and_coarsened_after_the_hold_and_not_before(
    api: Client, storage_url: str
) -> None:
    me = resident(api)
    rid = api.get("/v1/residents/me/export", headers=me).json()["resident"]["resident_id"]
    _, alert_id = _walk_and_sos(api, me)
    assert api.delete("/v1/residents/me", headers=me).status_code == 204
    keep_exact = {"STREETLIGHT_SOS_EXACT_DAYS": "3650"}  # only the deletion may coarsen here
    needles = [rid, *_needles(SOS, SOS2)]

    # an open incident stays with the police, linked and exact, however long
    maintenance_at(storage_url, datetime.now(UTC) + timedelta(days=400), **keep_exact)
    held = holding(dump_database(storage_url), needles)
    assert rid in held.get("public.alerts", []), held

    _operator_reads_and_closes(api, alert_id)
    # closed: held for 30 days after the close
    out = maintenance_at(storage_url, datetime.now(UTC) + timedelta(days=29), **keep_exact)
    assert '"alerts_on_hold": 1' in out
    assert rid in holding(dump_database(storage_url), needles).get("public.alerts", [])

    out = maintenance_at(storage_url, datetime.now(UTC) + timedelta(days=31), **keep_exact)
    assert '"alerts_unlinked": 1' in out
    assert holding(dump_database(storage_url), needles) == {}
    with psycopg.connect(storage_url) as conn:
        row = conn.execute(
            "SELECT resident_id, data->>'source_id', data->'place'->>'district_code' FROM alerts "
            "WHERE alert_id = %s",
            (alert_id,),
        ).fetchone()
        audited = conn.execute(
            "SELECT count(*) FROM audit_log WHERE subject_kind = 'resident' AND action = 'read_track'"
        ).fetchone()
    assert row == (None, "deleted", "11020")
    assert audited is not None and audited[0] == 1  # the audit trail survives the deletion unchanged
    assert streetlight("audit", "verify", url=storage_url).returncode == 0


def test_the_export_holds_the_walks_the_alerts_with_what_operators_saw_and_no_phone_reveals(
    api: Client, storage_url: str
) -> None:
    me = resident(api)
    walk_id, alert_id = _walk_and_sos(api, me)
    _operator_reads_and_closes(api, alert_id)
    r = api.get("/v1/residents/me/export", headers=me)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    doc = r.json()
    assert [w["walk_id"] for w in doc["walks"]] == [walk_id]
    assert len(doc["walks"][0]["positions"]) >= 2
    (alert,) = doc["alerts"]
    assert alert["alert_id"] == alert_id and alert["acknowledged_by"] == "operator:op-jung"
    assert len(alert["track"]) == 2 and alert["alert"]["place"]["district_code"] == "11020"
    assert [e["action"] for e in alert["timeline"]][-1] == "resolved"
    reads = {e["action"] for e in alert["operator_reads"]}
    assert {"read_alert_list", "read_track", "read_cap", "alert.acknowledge"} <= reads
    assert all(e["actor"] == "operator:op-jung" for e in alert["operator_reads"])
    assert doc["phone_number_reveals"] == [] and "phone.reveal" in doc["phone_number_reveals_note"]
    assert doc["phone_number"] == {"registered": False}
    assert api.get("/v1/residents/me/export").status_code == 401
    # the audit rows name the resident by a pseudonym, never by the id
    with psycopg.connect(storage_url) as conn:
        ids = {
            str(r[0])
            for r in conn.execute("SELECT DISTINCT subject_id FROM audit_log WHERE subject_kind = 'resident'")
        }
    assert ids and all(i.startswith("rp_") for i in ids)
    assert doc["resident"]["resident_id"] not in " ".join(ids)


def test_the_audit_chain_reveals_a_changed_or_removed_row_and_concurrent_writers_never_fork_it(
    storage_url: str,
) -> None:
    from store.operators import log_access

    def write(n: int) -> None:
        with psycopg.connect(storage_url, autocommit=True) as conn:
            for i in range(25):
                log_access(
                    conn, actor=f"op-{n}", action="read_track", subject_kind="resident", subject_id=f"rp_{i}"
                )

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with psycopg.connect(storage_url, autocommit=True) as conn:
        forks = conn.execute(
            "SELECT count(*) FROM (SELECT prev_hash FROM audit_log GROUP BY prev_hash HAVING count(*) > 1) f"
        ).fetchone()
        assert forks == (0,)
        ok = streetlight("audit", "verify", url=storage_url)
        assert ok.returncode == 0 and '"rows": 100' in ok.stdout, ok.stdout + ok.stderr
        conn.execute(
            "UPDATE audit_log SET actor = 'someone-else' WHERE id = (SELECT min(id) + 10 FROM audit_log)"
        )
        changed = streetlight("audit", "verify", url=storage_url)
        assert changed.returncode == 1 and "row changed" in changed.stdout
        conn.execute("DELETE FROM audit_log WHERE id = (SELECT min(id) + 10 FROM audit_log)")
        removed = streetlight("audit", "verify", url=storage_url)
        assert removed.returncode == 1 and "removed or inserted" in removed.stdout


@pytest.mark.parametrize("value", ["tomorrow", "2026-13-01T00:00:00+09:00", "2026-12-01T00:00:00"])
def test_a_bad_now_is_refused_clearly(value: str) -> None:
    done = streetlight("migrate", "--maintenance", "--now", value, url="postgresql://nowhere.invalid/x")
    assert done.returncode == 2
    assert "--now" in done.stdout and "Traceback" not in done.stderr


def test_rows_from_before_the_chain_are_pseudonymised_and_chained_by_the_migration(storage_url: str) -> None:
    from alerts import resident_pseudonym, verify_chain
    from store.operators import (
        audit_chain,
        chain_unhashed_audit_rows,
        pseudonymise_audit_subjects,
        shared_audit_key,
    )

    with psycopg.connect(storage_url, autocommit=True) as conn:
        for rid in ("res-old1", "res-old2", "res-old1"):  # as rows were written before migration 8
            conn.execute(
                "INSERT INTO audit_log (actor, action, subject_kind, subject_id) "
                "VALUES ('operator:op', 'read_track', 'resident', %s)",
                (rid,),
            )
        conn.execute(
            "INSERT INTO audit_log (actor, action, subject_kind, subject_id) VALUES ('operator:op', 'login', "
            "'operator', 'op')"
        )
        with conn.transaction():  # what the migration does
            assert pseudonymise_audit_subjects(conn) == 3
            assert chain_unhashed_audit_rows(conn) == 4
        subjects = [r[0] for r in conn.execute("SELECT subject_id FROM audit_log ORDER BY id")]
        key = shared_audit_key(conn)
        assert subjects == [
            resident_pseudonym(key, "res-old1"),
            resident_pseudonym(key, "res-old2"),
            resident_pseudonym(key, "res-old1"),
            "op",
        ]
        assert verify_chain(audit_chain(conn)).ok
