"""Smoke test of ``streetlight bench sos`` at a tiny size: SOS through the API reach the operator's
WebSocket with telemetry flowing through ingest; nothing lost; the JSON has its fields."""

from __future__ import annotations

import argparse
import json

import pytest

from devkit.bench import sos

pytestmark = [
    pytest.mark.integration,
    pytest.mark.usefixtures("needs_mosquitto"),
]


def test_sos_tiny_run_loses_nothing_and_reports_the_contract_fields() -> None:
    parser = argparse.ArgumentParser()
    sos.add_arguments(parser)
    args = parser.parse_args(
        ["--sos", "5", "--background-msgs-s", "500", "--interval", "0.05", "--api-workers", "1"]
    )
    result = sos.run(args)
    json.dumps(result)
    for key in ("bench", "sos", "p50_ms", "p99_ms", "idle_p99_ms", "lost", "background_msgs_s"):
        assert key in result
    assert result["bench"] == "sos"
    assert result["sos"] == 5
    assert result["lost"] == 0 and result["idle_lost"] == 0
    assert result["p99_ms"] is not None and result["idle_p99_ms"] is not None
    assert result["background_stored_msgs_s"] is not None  # ~0 here: the phase is shorter than a batch
    assert result["cpu_count"] >= 1
