"""The alerts core stays pure: it imports only the standard library and itself."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import alerts

PACKAGE_DIR = Path(alerts.__file__).resolve().parent


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_the_alerts_package_imports_only_the_standard_library_and_itself() -> None:
    modules = sorted(PACKAGE_DIR.glob("*.py"))
    assert len(modules) >= 8
    for module in modules:
        foreign = {root for root in imported_roots(module) if root not in sys.stdlib_module_names}
        assert foreign <= {"alerts"}, f"{module.name} imports {sorted(foreign - {'alerts'})}"


def test_the_alerts_package_reads_no_clock() -> None:
    for module in PACKAGE_DIR.glob("*.py"):
        source = module.read_text(encoding="utf-8")
        for call in ("datetime.now(", "datetime.utcnow(", "time.time(", "time.monotonic(", "date.today("):
            assert call not in source, f"{module.name} calls {call}"


def test_every_public_name_is_exported_and_exists() -> None:
    assert sorted(alerts.__all__) == sorted(set(alerts.__all__))
    assert all(hasattr(alerts, name) for name in alerts.__all__)
