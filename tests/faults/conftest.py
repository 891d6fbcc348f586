"""Fixtures of the fault-injection suite: where figures go, and what the scenarios need."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.localservices import find_pg_bin
from store import migrate
from tests.conftest import skip_unless


@pytest.fixture
def figures_dir(output_dir: Path) -> Path:
    """``.test-output/faults/``: one JSON file of measured figures per scenario."""
    path = output_dir / "faults"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def needs_pg_ctl() -> None:
    """Scenarios that stop PostgreSQL use a throwaway initdb/pg_ctl cluster."""
    skip_unless(find_pg_bin() is not None, "initdb/pg_ctl (a throwaway cluster to stop)")


@pytest.fixture
def migrated(db_url: str) -> str:
    """A fresh, migrated database on the session's server."""
    migrate(db_url, timescale=False)
    return db_url
