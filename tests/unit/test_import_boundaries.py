"""The pure cores import nothing that does I/O, and the services stay inside their lanes (DESIGN.md §2):
no service imports the application shell (``streetlight/``) or the development kit (``devkit/``), and
no service imports another service; they meet in ``streetlight/bootstrap.py``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Libraries that talk to the network, a database, a clock-driven loop or the file system's services.
IO_LIBRARIES = {
    "paho",
    "aiomqtt",
    "amqtt",
    "pika",
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
    "runtime": {"runtime"},
    "geo": {"geo"},
    "alerts": {"alerts", "geo"},
    "broker": {"broker", "runtime"},
    "store": {"store", "alerts", "runtime"},  # store/alerts.py maps the alerts core to rows
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
    "devkit",
}
# Everything below the application shell: the services, their cores, the store and the floor.
SERVICE_PACKAGES = (
    "ingest",
    "controller",
    "api",
    "store",
    "broker",
    "geo",
    "alerts",
    "firmware_sim",
    "runtime",
)
ABOVE_THE_SERVICES = {"streetlight", "devkit"}
# The three services run as their own processes and meet only through the broker and the database.
SERVICES = {"ingest", "controller", "api"}


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


@pytest.mark.parametrize("package", SERVICE_PACKAGES)
def test_no_service_imports_the_application_shell_or_the_devkit(package: str) -> None:
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & ABOVE_THE_SERVICES)
        for p in _modules(package)
        if _imports(p) & ABOVE_THE_SERVICES
    }
    assert offenders == {}, (
        f"{package}/ imports the shell or the devkit (wire it in streetlight/bootstrap.py): {offenders}"
    )


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_no_service_imports_another_service(service: str) -> None:
    others = SERVICES - {service}
    offenders = {
        str(p.relative_to(ROOT)): sorted(_imports(p) & others)
        for p in _modules(service)
        if _imports(p) & others
    }
    assert offenders == {}, f"{service}/ imports another service: {offenders}"


def test_the_boundary_check_notices_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import os\nfrom paho.mqtt import client\nimport psycopg.rows\n"
        "def f():\n    from streetlight import bootstrap\n    import devkit.localservices\n"
    )
    assert _imports(bad) & IO_LIBRARIES == {"paho", "psycopg"}
    assert _imports(bad) & ABOVE_THE_SERVICES == {"streetlight", "devkit"}  # also inside a function


def test_the_cli_imports_the_devkit_only_when_a_benchmark_runs() -> None:
    code = (
        "import sys; from streetlight.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'devkit'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the database driver

DATABASE_DRIVER = {"psycopg", "psycopg_pool"}
# Where the driver may be imported for good: the store, and what is not the product (throwaway
# databases for tests and benchmarks, fault scenarios).
DRIVER_HOMES = ("store/", "devkit/")


def _python_files() -> list[Path]:
    """Every module of the project's packages (not the tests)."""
    packages = sorted(p.parent for p in ROOT.glob("*/__init__.py") if p.parent.name != "tests")
    return [f for package in packages for f in sorted(package.rglob("*.py"))]


def _driver_users() -> list[str]:
    return [f.relative_to(ROOT).as_posix() for f in _python_files() if _imports(f) & DATABASE_DRIVER]


def test_only_the_store_imports_the_database_driver() -> None:
    offenders = [path for path in _driver_users() if not path.startswith(DRIVER_HOMES)]
    assert offenders == [], (
        f"psycopg is imported outside store/: {offenders}; put the SQL in a store/ module "
        "(by aggregate: devices, walks, alerts, operators, ...) and call that"
    )


def test_the_driver_check_sees_a_lazy_import_inside_a_function(tmp_path: Path) -> None:
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from psycopg_pool import ConnectionPool\n    return ConnectionPool\n")
    assert _imports(lazy) & DATABASE_DRIVER == {"psycopg_pool"}
