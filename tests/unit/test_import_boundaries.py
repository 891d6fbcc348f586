"""The pure cores import nothing that does I/O, and the services stay inside their lanes (DESIGN.md §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Libraries that talk to the network, a database, a clock-driven loop or the file system's services.
IO_LIBRARIES = {
    "paho",
    "aiomqtt",
    "amqtt",
    "psycopg",
    "psycopg_pool",
    "pgserver",
    "fastapi",
    "starlette",
    "uvicorn",
    "httpx",
    "requests",
    "urllib",
    "http",
    "socket",
    "asyncio",
    "subprocess",
    "sqlite3",
    "websockets",
    "prometheus_client",
}
# What each layer may import from the project itself.
ALLOWED_PROJECT_IMPORTS = {
    "geo": {"geo"},
    "alerts": {"alerts", "geo"},
    "broker": {"broker", "runtime", "streetlight"},
    "store": {"store", "alerts", "runtime", "streetlight"},  # alertstore maps the alerts core to rows
    "runtime": {"runtime"},  # the floor below the services (logging set-up, status server)
}
PROJECT_PACKAGES = {
    "geo",
    "alerts",
    "broker",
    "ingest",
    "controller",
    "firmware_sim",
    "store",
    "api",
    "runtime",
    "streetlight",
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("core", ["geo", "alerts"])
def test_pure_cores_import_no_io_library(core: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & IO_LIBRARIES)
        for p in _modules(core)
        if _imports(p) & IO_LIBRARIES
    }
    assert offenders == {}, f"{core}/ must stay pure (no MQTT, HTTP, database or process I/O): {offenders}"


@pytest.mark.parametrize("layer", sorted(ALLOWED_PROJECT_IMPORTS))
def test_layers_import_only_the_project_packages_they_may(layer: str) -> None:
    allowed = ALLOWED_PROJECT_IMPORTS[layer]
    offenders = {
        str(p.relative_to(ROOT)): sorted((_imports(p) & PROJECT_PACKAGES) - allowed)
        for p in _modules(layer)
        if (_imports(p) & PROJECT_PACKAGES) - allowed
    }
    assert offenders == {}, f"{layer}/ reaches into layers it must not know: {offenders}"


def test_the_boundary_check_notices_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom paho.mqtt import client\nimport psycopg.rows\n")
    assert _imports(bad) & IO_LIBRARIES == {"paho", "psycopg"}


def test_ingest_reaches_the_database_only_through_store() -> None:
    # ingest/_service.py still opens the periodic jobs' connection (its wiring moves to the shell).
    offenders = [
        str(p.relative_to(ROOT))
        for p in _modules("ingest")
        if "psycopg" in _imports(p) and p.name != "_service.py"
    ]
    assert offenders == [], f"SQL and psycopg belong in store/: {offenders}"
