"""Smoke test of ``streetlight bench sos-live`` at a tiny size: each operator action reaches the
resident's SOS socket; nothing lost; the JSON has its fields."""

from __future__ import annotations

import argparse
import json

import pytest

from devkit.bench import soslive

pytestmark = pytest.mark.integration


def test_sos_live_tiny_run_loses_nothing_and_reports_the_contract_fields() -> None:
    parser = argparse.ArgumentParser()
    soslive.add_arguments(parser)
    args = parser.parse_args(["--sos", "4", "--interval", "0.05", "--api-workers", "1", "--fast-db"])
    result = soslive.run(args)
    json.dumps(result)
    assert result["bench"] == "sos-live"
    assert result["actions"] == 8 and result["lost"] == 0
    assert result["p99_ms"] is not None and result["acknowledged_p99_ms"] is not None
    assert result["machine"]["python_loop_10m_s"] > 0
    assert result["cpu_count"] >= 1
