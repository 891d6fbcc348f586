"""Shared fixtures: real services for integration tests.

The broker is ``MQTT_URL`` when set and reachable, else a private ``mosquitto`` on a free port,
else the embedded broker; the database is ``DATABASE_URL`` when set and reachable, else a
throwaway ``initdb``/``pg_ctl`` cluster, else the embedded PostgreSQL. The terminal summary says
which were used. Each test that needs a database gets a fresh one of its own.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devkit.localservices import (
    MqttService,
    PgService,
    RabbitCluster,
    find_pg_bin,
    provide_mqtt,
    provide_pg,
    rabbitmq_installed,
    start_mosquitto,
    start_pg_cluster,
    start_rabbitmq,
    start_rabbitmq_cluster,
    timescale_installed,
)
from store import migrate
from streetlight.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
OUTPUT_DIR = ROOT / ".test-output"
IN_CI = os.environ.get("CI", "").lower() == "true"
_USED: dict[str, str] = {}


def skip_unless(condition: bool, reason: str) -> None:
    """Skip with the reason on a bare machine; fail instead under CI=true, where nothing may skip."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI=true: {reason}")
    pytest.skip(reason)


def _have_mosquitto() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


@pytest.fixture
def needs_mosquitto() -> None:
    """A private Mosquitto of the test's own (fault scenarios kill it; benchmarks start one)."""
    skip_unless(_have_mosquitto(), "mosquitto")


@pytest.fixture(scope="session")
def output_dir() -> Path:
    """Where tests leave screenshots, logs and figures for a person to look at."""
    OUTPUT_DIR.mkdir(exist_ok=True)
    return OUTPUT_DIR


@pytest.fixture(scope="session")
def mqtt_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MqttService]:
    """A real MQTT broker for the whole session."""
    local = Settings.from_env().local_broker  # STREETLIGHT_LOCAL_BROKER=embedded: the bare-machine path
    svc = provide_mqtt(os.environ.get("MQTT_URL"), tmp_path_factory.mktemp("broker"), local_kind=local)
    _USED["mqtt"] = f"{svc.kind} at {svc.host}:{svc.port}"
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def pg_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgService]:
    """A real PostgreSQL server for the whole session."""
    local = Settings.from_env().local_database  # STREETLIGHT_LOCAL_DATABASE=embedded: the bare-machine path
    # Not under pytest's basetemp: as root, PostgreSQL runs as another user, and every pytest
    # session that starts on this machine makes /tmp/pytest-of-root 0700 again, locking it out.
    workdir = Path(tempfile.mkdtemp(prefix="sl-test-pg-"))
    workdir.chmod(0o755)
    svc = provide_pg(os.environ.get("DATABASE_URL"), workdir, local_kind=local)
    _USED["postgresql"] = f"{svc.kind} ({svc.url.split('@')[-1]})"
    yield svc
    svc.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def db_url(pg_service: PgService) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    name = _fresh_database(pg_service)
    yield pg_service.database_url(name)
    _drop_database(pg_service, name)


def _fresh_database(svc: PgService) -> str:
    name = f"sltest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(svc.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def _drop_database(svc: PgService, name: str) -> None:
    with psycopg.connect(svc.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_timescale_service() -> Iterator[PgService]:
    """A throwaway cluster started with TimescaleDB preloaded, for the TimescaleDB storage path.

    Skipped, saying why, where the extension is not installed (a failure under CI=true)."""
    skip_unless(find_pg_bin() is not None, "initdb/pg_ctl (PostgreSQL server binaries) for TimescaleDB")
    skip_unless(
        timescale_installed(),
        "TimescaleDB is not installed in the local PostgreSQL (docs/operations.md, TimescaleDB)",
    )
    workdir = Path(tempfile.mkdtemp(prefix="sl-test-pg-ts-"))
    workdir.chmod(0o755)
    svc = start_pg_cluster(workdir, timescale=True)
    _USED["postgresql (timescaledb)"] = f"{svc.kind} ({svc.url.split('@')[-1]})"
    yield svc
    svc.stop()
    shutil.rmtree(workdir, ignore_errors=True)


STORAGE_PATHS = ("plain", "timescaledb")


@pytest.fixture(params=STORAGE_PATHS)
def storage(request: pytest.FixtureRequest) -> str:
    """The storage path a test runs on: ``plain`` (native partitioning) or ``timescaledb``."""
    return str(request.param)


def _migrated_database(svc: PgService, timescale: bool) -> Iterator[str]:
    name = _fresh_database(svc)
    url = svc.database_url(name)
    report = migrate(url, timescale=timescale)
    assert report.timescale is timescale
    yield url
    _drop_database(svc, name)


@pytest.fixture
def storage_url(storage: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh database migrated onto the test's storage path (pinned, never detected)."""
    svc: PgService = request.getfixturevalue("pg_service" if storage == "plain" else "pg_timescale_service")
    yield from _migrated_database(svc, storage == "timescaledb")


@pytest.fixture
def timescale_url(pg_timescale_service: PgService) -> Iterator[str]:
    """A fresh database on the TimescaleDB path, for what exists on that path only."""
    yield from _migrated_database(pg_timescale_service, True)


@pytest.fixture
def private_mosquitto(tmp_path: Path) -> Iterator[MqttService]:
    """A mosquitto of the test's own, for tests that kill and restart the broker."""
    skip_unless(
        _have_mosquitto(),
        "the broker-restart test needs a mosquitto binary to kill and restart",
    )
    svc = start_mosquitto(tmp_path / "mosquitto")
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def rabbitmq_service() -> Iterator[MqttService]:
    """A private RabbitMQ node (MQTT plugin) for the whole session: it takes 6-10 s to boot."""
    skip_unless(rabbitmq_installed(), "rabbitmq-server is not installed (/usr/lib/rabbitmq/bin)")
    # Not under pytest's basetemp (0700 and cleaned by later sessions); the node runs as us.
    workdir = Path(tempfile.mkdtemp(prefix="sl-test-rabbitmq-"))
    svc = start_rabbitmq(workdir)
    _USED["rabbitmq"] = f"private node at {svc.host}:{svc.port}"
    yield svc
    svc.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="module")
def rabbitmq_cluster() -> Iterator[RabbitCluster]:
    """A private three-node RabbitMQ cluster (MQTT plugin) for one test module: ~20 s to boot and join."""
    skip_unless(rabbitmq_installed(), "rabbitmq-server is not installed (/usr/lib/rabbitmq/bin)")
    workdir = Path(tempfile.mkdtemp(prefix="sl-test-rabbitmq-cluster-"))
    cluster = start_rabbitmq_cluster(workdir)
    _USED["rabbitmq cluster"] = "3 private nodes, MQTT " + ", ".join(str(n.mqtt_port) for n in cluster.nodes)
    yield cluster
    cluster.stop()


@pytest.fixture
def lenient_mosquitto(tmp_path: Path) -> Iterator[MqttService]:
    """A mosquitto that passes packets up to 2 MB (the deployed one stops at 17,408 bytes).

    For client-side tests of messages larger than one socket read: brokers other than the
    deployed Mosquitto (RabbitMQ, EMQX) accept such packets by default.
    """
    skip_unless(_have_mosquitto(), "mosquitto is not installed")
    svc = start_mosquitto(
        tmp_path / "mosquitto", extra_config="max_packet_size 2000000\nmessage_size_limit 0\n"
    )
    yield svc
    svc.stop()


@pytest.fixture
def unique_id() -> str:
    """A short unique token for topics and device ids, so tests never see each other's messages."""
    return uuid.uuid4().hex[:10]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say which real services the integration tests used."""
    for name, what in sorted(_USED.items()):
        terminalreporter.write_line(f"{name}: {what}")
