"""Small helpers the integration tests share (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg

from controller import Controller, ControllerConfig
from ingest import IngestWorker
from streetlight.cli import main as cli_main


def wait_for(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll `cond` every 50 ms; fail the test if it is not true within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def log_events(path: Path, event: str | None = None, **fields: Any) -> list[dict[str, Any]]:
    """The JSON log lines (runtime/logs.py) a process wrote to ``path``: every one, or those of
    ``event`` whose keys have the values in ``fields``. Lines that are not JSON are skipped."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut short by a process still writing
        if not isinstance(entry, dict):
            continue
        if event is None or (
            entry.get("event") == event and all(entry.get(k) == v for k, v in fields.items())
        ):
            found.append(entry)
    return found


def count(db: str, sql: str, *params: object) -> int:
    """The first column of the first row of `sql` (a count), or 0 when there is no row."""
    with psycopg.connect(db) as conn:
        row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


@contextlib.contextmanager
def running(worker: IngestWorker) -> Iterator[IngestWorker]:
    """An ingest worker on its own thread, subscribed, for the `with` block; stopped after."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    assert worker.wait_connected(10), "worker did not subscribe"
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(20)


@contextlib.asynccontextmanager
async def controller_running(cfg: ControllerConfig) -> AsyncIterator[Controller]:
    """A controller running on this event loop, ready (leases taken), for the `async with` block;
    cancelled after."""
    controller = Controller(cfg)
    task = asyncio.create_task(controller.run())
    try:
        await asyncio.wait_for(controller.ready.wait(), 10)
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def online_states(db_url: str, ids: list[str]) -> dict[str, bool]:
    """Whether each of these devices is online in the database (those with a state row)."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, online FROM device_state WHERE device_id = ANY(%s)", (ids,)
        ).fetchall()
    return {str(r[0]): bool(r[1]) for r in rows}


def run_storage_jobs(conn: psycopg.Connection[Any]) -> None:
    """Run the rollup refresh the way the deployment does, now: the project's job on the plain
    path; on TimescaleDB the database's own refresh jobs (in job order), then the project's
    (which refreshes the hours marked for a device that appeared or moved)."""
    from store import refresh_rollups, timescale_enabled

    if not timescale_enabled(conn):
        refresh_rollups(conn)
        return
    _run_timescale_jobs(conn, "policy_refresh_continuous_aggregate", "streetlight_refresh_rollups")
    refresh_rollups(conn)


def run_retention_now(conn: psycopg.Connection[Any]) -> None:
    """Apply the time-series retention now, the way the deployment does: the maintenance job's
    ``run_retention`` on the plain path; the database's own retention policies on TimescaleDB."""
    from store import run_retention, timescale_enabled

    if timescale_enabled(conn):
        _run_timescale_jobs(conn, "policy_retention")
    else:
        run_retention(conn)


def _run_timescale_jobs(conn: psycopg.Connection[Any], *procs: str) -> None:
    """Run TimescaleDB's jobs of these procedures now, in job order."""
    jobs = conn.execute(
        "SELECT job_id FROM timescaledb_information.jobs WHERE proc_name = ANY(%s) ORDER BY job_id",
        (list(procs),),
    ).fetchall()
    assert jobs, f"no TimescaleDB job runs {procs}"
    for (job_id,) in jobs:
        run_job_now(conn, job_id)


def run_job_now(conn: psycopg.Connection[Any], job_id: int) -> None:
    """``CALL run_job``, again after the background scheduler's run of the same job: a scheduled
    run holding the chunk's locks either makes ours wait or, when the two take them in opposite
    order, one of the two is chosen as the deadlock victim."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            conn.execute("CALL run_job(%s)", (job_id,))
            return
        except (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            if not conn.autocommit:
                conn.rollback()
            assert time.monotonic() < deadline, f"a concurrent run of job {job_id} did not finish in time"
            time.sleep(0.2)


def provision(tmp_path: Path, db_url: str, *files: Path) -> str:
    """Run ``streetlight provision`` on ``files`` (state in ``tmp_path``, devices into ``db_url``);
    its output (the code must be 0)."""
    args = ["provision", "--state-dir", str(tmp_path / "state"), "--database-url", db_url, "--dev-port", "0"]
    args += [
        "--persistence-dir",
        "none",
        "--secrets-out",
        str(tmp_path / f"secrets-{time.monotonic_ns()}.csv"),
    ]
    for f in files:
        args += ["--devices", str(f)]
    return cli_output(args)


def cli_output(args: list[str]) -> str:
    """What ``streetlight <args>`` prints (its exit code must be 0)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(args) == 0
    return out.getvalue()


@contextlib.contextmanager
def controller_in_thread(cfg: ControllerConfig) -> Iterator[Controller]:
    """A controller on its own event loop in a thread, for tests that drive browsers or the API
    synchronously; ready when entered, cancelled on leaving."""
    controller = Controller(cfg)
    loop = asyncio.new_event_loop()
    task = loop.create_task(controller.run())

    def run() -> None:
        with contextlib.suppress(asyncio.CancelledError):
            loop.run_until_complete(task)

    thread = threading.Thread(target=run, name="controller", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15.0
    while not controller.ready.is_set():
        assert thread.is_alive() and time.monotonic() < deadline, "the controller did not start"
        time.sleep(0.05)
    try:
        yield controller
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(timeout=15.0)
        loop.close()
