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


def _change_table() -> str:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    section = doc.split("### Where to make a change", 1)[1]
    return section.split("\n#", 1)[0]


def test_every_path_in_the_where_to_make_a_change_table_exists() -> None:
    table = _change_table()
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    named = sorted({p for line in rows for p in re.findall(r"`([\w./]+/[\w./]*)`", line)})
    assert {"alerts/_model.py", "ingest/_alerts.py", "store/notes.py", "devkit/bench/"} <= set(named)
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_the_architecture_says_where_a_lamp_message_enters_and_where_the_brightening_rule_lives() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    where = doc.split("### Where things happen", 1)[1].split("\n#", 1)[0]
    for path in ("ingest/_worker.py", "ingest/_process.py", "store/writer.py", "controller/_walks.py"):
        assert f"`{path}`" in where and (ROOT / path).exists(), path
    assert "lamps_for_walker" in where and "def lamps_for_walker(" in (ROOT / "geo" / "_lamps.py").read_text()
