"""``streetlight api --workers N``: N worker processes it starts itself on one listening socket, each
handed its configuration as an argument (none through the environment); a worker that dies is
started again and SIGTERM stops them all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.localservices import free_port, terminate

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _workers(pid: int) -> list[int]:
    """The API worker processes of ``streetlight api`` (not multiprocessing's resource tracker)."""
    out = []
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            out.append(child)
    return out


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as r:
        return int(r.status)


def _wait(what: str, ok: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if ok():
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what} after {timeout_s} s")


@pytest.fixture
def api_two_workers(db_url: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    argv = [sys.executable, "-m", "streetlight.cli", "api", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(
        [*argv, "--database-url", db_url],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("the API is not ready", lambda: _get(base + "/readyz") == 200)
        yield proc, base
    finally:
        terminate(proc, timeout_s=30)


def test_two_workers_serve_on_one_port_with_the_database_given_on_the_command_line_only(
    api_two_workers: tuple[subprocess.Popen[bytes], str], db_url: str
) -> None:
    proc, base = api_two_workers
    _wait("two workers", lambda: len(_workers(proc.pid)) == 2)
    for worker in _workers(proc.pid):
        environ = Path(f"/proc/{worker}/environ").read_bytes()
        assert b"DATABASE_URL=" not in environ  # the configuration came as an argument
        assert db_url.encode() not in environ
    assert all(_get(base + "/healthz") == 200 for _ in range(20))


def test_a_worker_that_dies_is_started_again_and_sigterm_stops_them_all(
    api_two_workers: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, base = api_two_workers
    _wait("two workers", lambda: len(_workers(proc.pid)) == 2)
    first = _workers(proc.pid)
    os.kill(first[0], signal.SIGKILL)
    _wait("a new worker", lambda: len(_workers(proc.pid)) == 2 and first[0] not in _workers(proc.pid))
    _wait("the API is not ready again", lambda: _get(base + "/readyz") == 200)
    workers = _workers(proc.pid)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    assert not [w for w in workers if Path(f"/proc/{w}").exists() and b"spawn_main" in _cmdline(w)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
