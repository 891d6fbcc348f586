"""A small process supervisor: ``streetlight up`` starts each service as its own process.

Every service is a ``streetlight <name>`` child with the same environment plus ``MQTT_URL`` and
``DATABASE_URL`` of the broker and database in use. A child that dies is restarted with a capped,
jittered backoff; Ctrl-C (SIGINT) or SIGTERM stops the children in reverse order of start.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from runtime.logs import get_logger
from runtime.procs import terminate

log = get_logger(__name__)

BACKOFF_CAP_S = 30.0


@dataclass
class Child:
    """One supervised service process."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = field(default=0.0)


class Supervisor:
    """Start, watch and stop service processes."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = dict(env)
        self._children: list[Child] = []
        self._stopping = False

    def add(self, name: str, args: Sequence[str]) -> None:
        """Register ``streetlight <args>`` as the service ``name``."""
        argv = [sys.executable, "-m", "streetlight.cli", *args]
        self._children.append(Child(name, argv))

    def _start(self, child: Child) -> None:
        child.proc = subprocess.Popen(child.argv, env=self._env)
        child.started_at = time.monotonic()
        log.info("service_started", service=child.name, pid=child.proc.pid)

    def start_all(self) -> None:
        """Start every registered service not started yet."""
        for child in self._children:
            if child.proc is None:
                self._start(child)

    def stop_all(self) -> None:
        """Stop the services in reverse order of start."""
        self._stopping = True
        for child in reversed(self._children):
            if child.proc is not None:
                rc = terminate(child.proc)
                child.proc = None  # stopping again is a no-op
                log.info("service_stopped", service=child.name, status=rc)

    def watch_once(self, now: float) -> None:
        """Restart services that died, with a capped jittered backoff."""
        if self._stopping:
            return
        for child in self._children:
            if child.proc is None or child.proc.poll() is None:
                continue
            if child.next_start == 0.0:
                if now - child.started_at > 60:
                    child.restarts = 0  # it ran for a while: a fresh failure, not a crash loop
                delay = random.uniform(0, min(BACKOFF_CAP_S, 0.5 * 1.5 ** min(10, child.restarts)))
                child.next_start = now + delay
                log.warning(
                    "service_exited",
                    service=child.name,
                    status=child.proc.returncode,
                    restart_in_s=round(delay, 1),
                )
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._start(child)

    def run_until_signal(self, done: Callable[[], bool] | None = None) -> None:
        """Watch the children until SIGINT or SIGTERM (or until ``done()``), then stop them all."""
        stop = False

        def _on_signal(_signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True

        old_int = signal.signal(signal.SIGINT, _on_signal)
        old_term = signal.signal(signal.SIGTERM, _on_signal)
        try:
            while not stop and not (done is not None and done()):
                self.watch_once(time.monotonic())
                time.sleep(0.2)
        finally:
            signal.signal(signal.SIGINT, old_int)
            signal.signal(signal.SIGTERM, old_term)
            self.stop_all()


def child_env(mqtt_url: str, database_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for service children: ours plus the broker and database in use."""
    env = dict(os.environ)
    env["MQTT_URL"] = mqtt_url
    env["DATABASE_URL"] = database_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    if extra:
        env.update(extra)
    return env
