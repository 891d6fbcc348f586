"""A scenario played against a real broker: faults, malformed input, silent death; no API needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.localservices import MqttService
from firmware_sim import scenarios

pytestmark = pytest.mark.integration


async def test_a_short_scenario_runs_its_steps_and_reports_them(
    mqtt_service: MqttService, unique_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "short.yaml"
    path.write_text(
        "name: short\nlamps: 10\nzones: ['1']\ninterval_s: 1\nduration_s: 6\nsteps:\n"
        "  - {at_s: 0.5, action: fault, fault: lamp_failure, count: 2}\n"
        "  - {at_s: 1, action: malformed, devices: 1}\n"
        "  - {at_s: 1.5, action: walkers, count: 1, walk_s: 3, api: true}\n"
        "  - {at_s: 2, action: kill, count: 1}\n"
        "  - {at_s: 2.5, action: sos}\n"
    )
    report = await scenarios.run(
        path,
        mqtt_url=f"mqtt://{mqtt_service.host}:{mqtt_service.port}",
        api_url="http://127.0.0.1:9",  # nothing listens: residents walk on, SOS says why it skipped
        id_prefix=f"s{unique_id}-",
    )
    actions = [step["action"] for step in report["steps"]]
    assert actions[:6] == ["scenario", "fault", "malformed", "walkers", "kill", "sos"]
    assert report["devices"] == 20 and report["stats"]["connects"] >= 20
    assert report["steps"][2]["payloads"] > 20
    assert "register" in report["api"]
    assert "skipped" in report["steps"][5]
    assert report["stats"]["telemetry"] >= 20
