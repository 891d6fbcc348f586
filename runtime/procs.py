"""Loopback ports and child processes: what ``streetlight up``, the tests and the benchmarks share
to start local servers (a free port, "does it listen yet", a child stopped politely then firmly)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

# Ports this process handed out or was told are taken: a port is free only until someone binds
# it, so two calls (or a port chosen for a child that has not bound it yet) must not collide.
_TAKEN_PORTS: set[int] = set()


def reserve_port(port: int) -> None:
    """Tell `free_port` never to return `port` (e.g. the API's, bound later by a child)."""
    _TAKEN_PORTS.add(port)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now and this process has not handed out."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _TAKEN_PORTS:
            _TAKEN_PORTS.add(port)
            return port
    raise OSError("no free TCP port found")


def tcp_reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to host:port succeeds within the timeout."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something listens on host:port; RuntimeError when ``proc`` exits first,
    TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening on {port}")
        if tcp_reachable(host, port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM a child, then SIGKILL after the timeout; returns its status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
