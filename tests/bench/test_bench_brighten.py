"""Smoke test of ``streetlight bench brighten`` at a tiny size: the whole chain runs (API,
controller, simulated lamps, walker client in their own processes) and the JSON has its fields."""

from __future__ import annotations

import argparse
import json

import pytest

from devkit.bench import brighten

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("needs_mosquitto"),
]


def test_brighten_tiny_run_reports_the_contract_fields() -> None:
    parser = argparse.ArgumentParser()
    brighten.add_arguments(parser)
    args = parser.parse_args(
        ["--walkers", "5", "--duration", "3", "--idle-duration", "2", "--lamps", "150", "--api-workers", "1"]
    )
    result = brighten.run(args)
    json.dumps(result)  # printable as the last line
    for key in ("bench", "walkers", "updates", "p50_ms", "p99_ms", "idle_p99_ms", "commands_per_update"):
        assert key in result
    assert result["bench"] == "brighten"
    assert result["walkers"] == 5
    assert result["updates"] >= 5
    assert set(result["statuses"]) == {"200"}, result["statuses"]
    assert result["commands_per_update"] >= 0
    assert result["cpu_count"] >= 1
    assert "api" in result["processes"] and "controller" in result["processes"]
