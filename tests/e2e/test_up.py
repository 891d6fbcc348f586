"""The README's first command runs the city, and `--story` tells the evening (issue #9).

`python3 dev.py up` is started exactly as a user types it, with no MQTT_URL or DATABASE_URL:
it must bring up a broker and the embedded PostgreSQL, ingest, controller, API and the
simulator; the test waits for the console, sees lamps online through the operators' API, makes
an SOS round trip (resident -> operator -> resident), stops everything with Ctrl-C, and starts
it again to see the data kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devkit.localservices import free_port
from tests.helpers import log_events

ROOT = Path(__file__).resolve().parents[2]
JUNG_GU = (37.5636, 126.9976)  # Jung-gu, a street near Myeong-dong


def _env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_URL", "DATABASE_URL")}
    env.update(STREETLIGHT_DATA_DIR=str(data_dir), STREETLIGHT_API_PORT=str(port), PYTHONUNBUFFERED="1")
    env.update(STREETLIGHT_LOG_FORMAT="json")  # the test reads the events' keys
    env.update(extra)
    return env


class Up:
    """`python3 dev.py up ...` as a child, its output kept in a file for the failure message."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "dev.py"), "up", *args],
            cwd=ROOT,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"up did not stop within {timeout_s} s:\n{self.text()}") from None
        self._out.close()
        return int(self.proc.returncode)

    def kill_group(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self._out.close()


def _wait(what: str, probe: object, up: Up, timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            raise AssertionError(f"up exited ({up.proc.returncode}) while waiting for {what}:\n{up.text()}")
        try:
            last = probe()  # type: ignore[operator]
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1.0)
    raise AssertionError(f"{what} not seen within {timeout_s} s (last: {last!r}):\n{up.text()}")


@pytest.fixture
def data_root() -> Iterator[Path]:
    """A data folder outside pytest's basetemp (which another pytest session may lock to 0700
    while the embedded PostgreSQL, running as another user, still needs it)."""
    root = Path(tempfile.mkdtemp(prefix="sl-up-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def started(data_root: Path, output_dir: Path) -> Iterator[tuple[Up, str, Path]]:
    port = free_port()
    data = data_root / "data"
    up = Up([], _env(data, port), output_dir / "up-first.log")
    try:
        yield up, f"http://127.0.0.1:{port}", data
    finally:
        up.kill_group()


def _operator(c: httpx.Client) -> dict[str, str]:
    r = c.post("/v1/auth/login", json={"username": "city", "password": "streetlight"})
    r.raise_for_status()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def test_the_readme_command_runs_the_city_and_ctrl_c_stops_it_keeping_the_data(
    started: tuple[Up, str, Path], output_dir: Path
) -> None:
    up, base, data = started
    t0 = time.monotonic()
    with httpx.Client(base_url=base, timeout=10.0) as c:
        console = _wait("the console", lambda: c.get("/").status_code == 200, up, 90)
        assert console
        boot_s = time.monotonic() - t0
        op = _operator(c)

        def lamps_online() -> int:
            feats = c.get("/v1/lamps", headers=op).json()["features"]
            return sum(1 for f in feats if f["properties"]["kind"] == "lamp" and f["properties"]["online"])

        _wait("3,000+ simulated lamps online", lambda: lamps_online() >= 3000, up, 90)
        online = lamps_online()
        # The SOS round trip: resident -> durable alert -> operator acts -> resident sees it.
        token = c.post("/v1/residents").json()["token"]
        resident = {"Authorization": f"Bearer {token}", "Idempotency-Key": str(uuid.uuid4())}
        sos = c.post(
            "/v1/sos", json={"lat": JUNG_GU[0], "lon": JUNG_GU[1], "accuracy_m": 8}, headers=resident
        )
        assert sos.status_code == 202, sos.text
        alert_id = sos.json()["alert_id"]
        assert c.get(f"/v1/alerts/{alert_id}", headers=op).json()["state"] == "open"
        assert c.post(f"/v1/alerts/{alert_id}/acknowledge", json={}, headers=op).status_code == 200
        status = c.get(f"/v1/sos/{alert_id}", headers=resident).json()
        assert status["acknowledged"] is True
    assert up.stop() == 0, up.text()
    # Nothing failed, so no seq number went missing, with walkers, beacons and commands going on.
    gaps = [e["metrics"]["seq_gaps"] for e in log_events(up.log, "ingest_worker_stopped")]
    assert gaps and set(gaps) == {0}, f"ingest counted seq gaps in a clean run: {gaps}"
    (output_dir / "up-figures.txt").write_text(f"console after {boot_s:.1f} s; {online} lamps online\n")
    assert boot_s < 60, f"the console took {boot_s:.0f} s"

    # A second `up` resumes with the data kept.
    port = free_port()
    again = Up(["--no-sim"], _env(data, port), output_dir / "up-second.log")
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10.0) as c:
            _wait("the console again", lambda: c.get("/healthz").status_code == 200, again, 90)
            kept = c.get(f"/v1/alerts/{alert_id}", headers=_operator(c)).json()
            assert kept["state"] == "acknowledged"
        assert again.stop() == 0, again.text()
    finally:
        again.kill_group()


def test_the_story_plays_the_evening_end_to_end(data_root: Path, output_dir: Path) -> None:
    port = free_port()
    up = Up(
        ["--story", "--lamps", "200", "--exit-after-story"],
        _env(data_root / "data", port),
        output_dir / "up-story.log",
    )
    try:
        deadline = time.monotonic() + 240
        while up.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(1.0)
        assert up.proc.poll() is not None, f"the story did not end in 240 s:\n{up.text()}"
        assert up.proc.returncode == 0, up.text()
        told = up.log.read_text(errors="replace")
        for act in (
            "lamps have switched on",
            "brighten to 100 %",
            "maintenance alert",
            "raises an SOS",
            "the nearest lamps blink",
            "acknowledges",
            "dispatches",
            "resolves",
            "stop blinking",
        ):
            assert act in told, f"missing {act!r} in:\n{told}"
    finally:
        up.kill_group()


def test_up_with_an_unreachable_database_says_so_and_leaves_no_broker_behind(data_root: Path) -> None:
    port = free_port()
    env = _env(data_root / "data", port, DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    env["STREETLIGHT_LOCAL_BROKER"] = "embedded"
    before = {p.name for p in Path("/proc").iterdir() if p.name.isdigit()}
    out = subprocess.run(
        [sys.executable, "-m", "streetlight.cli", "up", "--no-sim"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0
    assert "DATABASE_URL" in out.stderr + out.stdout and "not reachable" in out.stderr + out.stdout
    time.sleep(0.5)
    leftovers = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit() and p.name not in before:
            try:
                if b"broker.embedded" in (p / "cmdline").read_bytes():
                    leftovers.append(p.name)
            except OSError:
                continue
    assert leftovers == [], f"an embedded broker was left running: {leftovers}"
