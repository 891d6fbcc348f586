"""Failed or late storage jobs, on both paths: seen by storage_job_problems, in the jobs leader's
metrics, as one maintenance alert, and in the API's /readyz."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

import store.jobs
from devkit.apiclient import client, fast_config, seed
from ingest import JobsLeader
from ingest._metrics import IngestMetrics
from store import run_maintenance
from store.alerts import active_alerts
from store.jobs import storage_job_problems

Conn = psycopg.Connection[Any]


@pytest.fixture
def conn(storage_url: str) -> Iterator[Conn]:
    with psycopg.connect(storage_url, autocommit=True) as c:
        yield c


def _fail_retention(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:  # fault injection: a job step fails
        raise psycopg.errors.InsufficientPrivilege("permission denied for table walk_positions")

    monkeypatch.setattr(store.jobs, "run_retention", refuse)


def test_a_failed_maintenance_run_is_one_alert_and_a_gauge_until_a_run_succeeds(
    conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert storage_job_problems(conn) == []
    metrics = IngestMetrics()
    leader = JobsLeader("unused", silent_after_s=180, metrics=metrics)
    with monkeypatch.context() as m:
        _fail_retention(m)
        for _ in range(2):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                run_maintenance(conn)
            assert leader.check_storage_jobs(conn) == 1
    (problem,) = storage_job_problems(conn)
    assert (problem.job, problem.problem) == ("maintenance", "failed")
    assert "2 failed runs in a row" in problem.detail and "permission denied" in problem.detail
    alerts = active_alerts(conn, kinds=["storage"])
    assert len(alerts) == 1 and alerts[0].count == 1
    assert 'ingest_storage_job_problems{worker="0"} 1' in metrics.exposition()
    run_maintenance(conn)
    assert leader.check_storage_jobs(conn) == 0
    assert active_alerts(conn, kinds=["storage"]) == []
    assert 'ingest_storage_job_problems{worker="0"} 0' in metrics.exposition()


def test_a_maintenance_job_that_stops_running_is_late(conn: Conn) -> None:
    run_maintenance(conn)
    assert storage_job_problems(conn) == []
    later = datetime.now(UTC) + timedelta(hours=1)
    problems = [(p.job, p.problem) for p in storage_job_problems(conn, now=later)]
    assert ("maintenance", "late") in problems


def test_a_failing_timescaledb_job_is_seen_with_its_error(timescale_url: str) -> None:
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        _failing_job_is_seen(conn)


def _failing_job_is_seen(conn: Conn) -> None:
    (job,) = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = 'streetlight_refresh_rollups'"
    ).fetchone() or (None,)
    # A broken configuration makes the background scheduler's run fail, as a PostgreSQL minor
    # release that breaks the extension would.
    conn.execute(
        'SELECT alter_job(%s, config => \'{"start_offset": "not an interval", "end_offset": "1 hour"}\', '
        "next_start => now())",
        (job,),
    )
    deadline = time.monotonic() + 30
    while not (problems := storage_job_problems(conn)):
        assert time.monotonic() < deadline, "the scheduler did not run the job"
        time.sleep(0.2)
    (problem,) = problems
    assert problem.job == f"streetlight_refresh_rollups (job {job})" and problem.problem == "failed"
    assert "not an interval" in problem.detail or "invalid input syntax" in problem.detail


def test_readyz_shows_the_storage_jobs_and_stays_ready(
    storage_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(storage_url)
    with client(fast_config(storage_url)) as api:
        body = api.get("/readyz").json()
        assert body["status"] == "ready" and body["storage_jobs"] == {"status": "ok", "problems": []}
        with psycopg.connect(storage_url, autocommit=True) as c, monkeypatch.context() as m:
            _fail_retention(m)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                run_maintenance(c)
        r = api.get("/readyz")
        assert r.status_code == 200 and r.json()["status"] == "ready"
        jobs = r.json()["storage_jobs"]
        assert jobs["status"] == "failing" and jobs["problems"][0]["job"] == "maintenance"
