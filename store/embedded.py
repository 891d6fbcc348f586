"""The embedded PostgreSQL (pgserver) for zero-install runs: a thin wrapper over localservices."""

from __future__ import annotations

from pathlib import Path

from streetlight.localservices import PgService, start_embedded_pg

__all__ = ["PgService", "start_embedded", "start_embedded_pg"]


def start_embedded(data_dir: Path) -> PgService:
    """Start (or reuse) the embedded PostgreSQL keeping its files under ``data_dir / "pgdata"``."""
    return start_embedded_pg(data_dir / "pgdata")
