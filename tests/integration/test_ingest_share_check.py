"""An ingest with an MQTT account checks, in its own session, that the broker delivers its shared
subscription (issue 16: never consume nothing in silence).

On the Mosquitto that `streetlight provision` configures the check passes (its ACL grants the
probe topic; Mosquitto would acknowledge and drop a denied probe). On a private RabbitMQ node,
which takes ``$share/...`` as a literal filter, an ingest with an account exits 2 saying so, under
``auto`` and ``shared`` alike, and its supervisor does not restart it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.localservices import RABBITMQ_CTL, MqttService
from store import migrate
from tests.conftest import ROOT
from tests.helpers import count, log_events, wait_for
from tests.integration.test_security_broker_attacks import (
    LAMP,
    Deployment,
    _deployed_ingest_env,
    deployed,
    ingest_process,
    pub,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("sharecheck")) as d:
        yield d


def test_a_provisioned_ingest_passes_its_share_check_in_session_and_stores(
    deployment: Deployment, db_url: str, tmp_path: Path
) -> None:
    d = deployment
    migrate(db_url)
    env = _deployed_ingest_env(d, db_url, tmp_path)
    with ingest_process(env, tmp_path / "ingest.log", "--workers", "2") as ingest:
        # Both workers (accounts ingest@0 and ingest@1) get their own probe back.
        with contextlib.suppress(AssertionError):
            wait_for(lambda: len(log_events(ingest.log, "share_check_passed")) == 2, 30)
        passed = {e["topic"] for e in log_events(ingest.log, "share_check_passed")}
        assert passed == {"svc/v1/sharecheck/ingest@0", "svc/v1/sharecheck/ingest@1"}, ingest.log.read_text()
        ts = int(time.time() * 1000)
        pub(d, "lamp-0", "sl/v1/11230/lamp-0/telemetry", [LAMP % (ts + i, i) for i in range(10)])
        rows = "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-0' AND ts >= to_timestamp(%s)"
        wait_for(lambda: count(db_url, rows, ts / 1000) == 10, 20)
        assert ingest.proc.poll() is None
        assert not log_events(ingest.log, "ingest_refused")
        # The probes were acknowledged and never stored as device data.
        assert not count(db_url, "SELECT count(*) FROM dead_letters WHERE topic LIKE 'svc/%%'")


def _rabbitmq_user(svc: MqttService, user: str, secret: str) -> None:
    assert svc.workdir is not None
    env = {**os.environ, "HOME": str(svc.workdir)}
    node = (svc.workdir / "nodename").read_text().strip()
    for args in (["add_user", user, secret], ["set_permissions", "-p", "/", user, ".*", ".*", ".*"]):
        done = subprocess.run(
            [str(RABBITMQ_CTL), "-n", node, *args], env=env, capture_output=True, timeout=120, check=False
        )
        assert done.returncode == 0 or b"already exists" in done.stderr, done.stderr


@pytest.mark.parametrize(
    ("subscription", "workers"),
    [("auto", "1"), ("shared", "2")],
    ids=["auto-one-worker", "shared-supervised"],
)
def test_an_ingest_with_an_account_on_rabbitmq_exits_2_saying_the_broker_ignores_share(
    rabbitmq_service: MqttService, db_url: str, tmp_path: Path, subscription: str, workers: str
) -> None:
    secret = "rabbit-ingest-secret"
    for user in ("ingest", "ingest@0", "ingest@1"):
        _rabbitmq_user(rabbitmq_service, user, secret)
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_PASSWORD", "MQTT_PASSWORD_FILE")}
    env |= {
        "MQTT_URL": f"mqtt://ingest@{rabbitmq_service.host}:{rabbitmq_service.port}",
        "MQTT_PASSWORD": secret,
        "DATABASE_URL": db_url,
        "STREETLIGHT_DATA_DIR": str(tmp_path),
        "STREETLIGHT_LOG_FORMAT": "json",
    }
    argv = [sys.executable, "-m", "streetlight.cli.ingest", "--no-jobs", "--subscription", subscription]
    started = time.monotonic()
    done = subprocess.run(
        [*argv, "--workers", workers], env=env, cwd=ROOT, capture_output=True, timeout=120, check=False
    )
    took = time.monotonic() - started
    out = done.stdout + done.stderr
    assert done.returncode == 2, out.decode()
    assert b"does not implement shared subscriptions" in done.stderr
    assert b"--subscription plain --group NAME" in done.stderr
    assert b'"ingest_refused"' in out and b"shared_subscriptions_ignored" in out
    # Not restarted: each worker started once, and the whole run is the check's few seconds.
    assert out.count(b'"ingest_worker_starting"') == int(workers), out.decode()
    assert b'"restarting": true' not in out
    assert took < 60
