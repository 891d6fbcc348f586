"""A server with TimescaleDB installed but not preloaded: the state right after a package install."""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from devkit.localservices import PgService, find_pg_bin, start_pg_cluster, timescale_installed
from store import MigrationError, migrate, write_telemetry
from streetlight.cli import migrate as migrate_command
from tests.conftest import skip_unless


@pytest.fixture(scope="module")
def unpreloaded() -> Iterator[PgService]:
    """A cluster without the preload; its database ``was_timescale`` was migrated while it had it."""
    skip_unless(find_pg_bin() is not None, "initdb/pg_ctl (PostgreSQL server binaries)")
    skip_unless(timescale_installed(), "TimescaleDB installed in the local PostgreSQL")
    workdir = Path(tempfile.mkdtemp(prefix="sl-test-pg-"))
    workdir.chmod(0o755)
    svc = start_pg_cluster(workdir, timescale=True)
    try:
        with psycopg.connect(svc.url, autocommit=True) as c:
            c.execute("CREATE DATABASE was_timescale")
        assert migrate(svc.database_url("was_timescale")).timescale is True
        svc.stop()
        svc.timescale = False
        svc.start_again()
        yield svc
    finally:
        svc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _fresh(svc: PgService, name: str) -> str:
    with psycopg.connect(svc.url, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return svc.database_url(name)


def test_installed_but_not_preloaded_migrates_onto_the_plain_path_and_says_why(
    unpreloaded: PgService, caplog: pytest.LogCaptureFixture
) -> None:
    url = _fresh(unpreloaded, "auto")
    with caplog.at_level(logging.WARNING, logger="store.schema"):
        report = migrate(url)
    assert report.timescale is False
    (record,) = [
        r for r in caplog.records if isinstance(r.msg, dict) and r.msg.get("event") == "storage_path_chosen"
    ]
    why = dict(record.msg)
    assert (why["path"], why["reason"], record.levelname) == ("plain", "timescaledb_not_preloaded", "WARNING")
    assert "shared_preload_libraries" in why["hint"] and why["timescaledb_version"]
    assert "shared_preload_libraries" in caplog.text
    with psycopg.connect(url, autocommit=True) as c:
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        row = (now_ms, "lamp-1", 1, 1, 80, 30.0, 220.0, 0.1, 20.0, 2.0, [], None, None, None, None)
        assert write_telemetry(c, [row]) == 1
        assert c.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone() == (0,)
    assert migrate(url).applied == []  # the second start finds the plain path recorded


def test_asking_for_timescaledb_on_a_server_without_the_preload_fails_naming_the_setting(
    unpreloaded: PgService, capsys: pytest.CaptureFixture[str]
) -> None:
    url = _fresh(unpreloaded, "explicit")
    with pytest.raises(MigrationError, match="shared_preload_libraries"):
        migrate(url, timescale=True)
    args = argparse.Namespace(database_url=url, timescale=True, no_timescale=False, maintenance=False)
    assert migrate_command.run(args) == 1
    out = capsys.readouterr().out
    assert "shared_preload_libraries" in out and "Traceback" not in out


def test_a_timescaledb_database_on_a_server_restarted_without_the_preload_fails_naming_the_setting(
    unpreloaded: PgService,
) -> None:
    with pytest.raises(MigrationError, match="shared_preload_libraries"):
        migrate(unpreloaded.database_url("was_timescale"))
