"""The database ``streetlight up`` runs on when ``DATABASE_URL`` names none: the embedded PostgreSQL
from PyPI (pgserver, PostgreSQL 16 without TimescaleDB), its files kept in the data folder so a
second ``up`` resumes; or the configured server, checked to answer first."""

from __future__ import annotations

import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runtime.logs import get_logger
from store.connections import connect
from store.errors import DatabaseError

log = get_logger(__name__)

__all__ = ["PgService", "configured_pg", "start_embedded", "start_embedded_pg"]


@dataclass
class PgService:
    """A PostgreSQL server we use: ``configured`` (someone else's) or ``embedded`` (pgserver, ours)."""

    kind: str  # "configured", "embedded" (or "pg_ctl": devkit.localservices.PgCluster)
    url: str
    datadir: Path | None = None
    port: int | None = None
    _server: object = None

    def database_url(self, dbname: str) -> str:
        """The same server, another database."""
        parts = urlsplit(self.url)
        return parts._replace(path=f"/{dbname}").geturl()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server we started; nothing for a configured one."""
        if self.kind == "embedded" and self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]


def start_embedded_pg(datadir: Path) -> PgService:
    """The embedded PostgreSQL from PyPI (pgserver), data kept in ``datadir``."""
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (root
        # in a container, CI) platformdirs warns and falls back to /tmp/runtime-<uid>, which works.
        warnings.simplefilter("ignore")
        import pgserver  # type: ignore[attr-defined,unused-ignore]

    datadir.mkdir(parents=True, exist_ok=True)
    # pgserver gives `pg_ctl start -w` a fixed 10 s; on a loaded machine that can run out after
    # the server is already up (seen once in a full test run). Asking again finds it running.
    for attempt in range(3):
        try:
            server = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
                datadir, cleanup_mode="stop"
            )
            break
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            if attempt == 2:
                raise
            log.warning("embedded_postgres_slow_to_start", error_type=type(exc).__name__, attempt=attempt)
    return PgService("embedded", server.get_uri(), datadir, _server=server)


def start_embedded(data_dir: Path) -> PgService:
    """Start (or reuse) the embedded PostgreSQL keeping its files under ``data_dir / "pgdata"``."""
    return start_embedded_pg(data_dir / "pgdata")


def configured_pg(url: str) -> PgService | None:
    """The server named by DATABASE_URL, or None when it does not answer."""
    try:
        with connect(url, connect_timeout_s=3, autocommit=False) as conn:
            conn.execute("select 1")
    except DatabaseError:
        return None
    return PgService("configured", url)
