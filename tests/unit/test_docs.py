"""The documentation keeps up with the code where drift is easy to check."""

from __future__ import annotations

import re
from pathlib import Path

from streetlight.cli.bench import BENCHES

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_the_code_reads_is_documented_in_operations() -> None:
    settings = (ROOT / "streetlight" / "settings.py").read_text()
    names = set(re.findall(r'"((?:MQTT|DATABASE|STREETLIGHT)_[A-Z0-9_]*)"', settings))
    ops = (ROOT / "docs" / "operations.md").read_text()
    missing = sorted(n for n in names if n not in ops)
    assert names and not missing, f"docs/operations.md does not mention {missing}"


def test_the_readme_starts_with_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```", 2)[1]
    assert "python3 dev.py up" in first_block and "python3 dev.py test" in first_block
    assert "python3 dev.py test" in (ROOT / ".ci" / "run").read_text()


def test_every_benchmark_that_exists_has_its_figures_in_benchmarks_md() -> None:
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    built = [
        name for name, module in BENCHES.items() if (ROOT / "devkit" / "bench" / f"{module}.py").exists()
    ]
    missing = [name for name in built if f"streetlight bench {name}" not in doc]
    assert built and not missing, f"docs/benchmarks.md has no command for {missing}"
