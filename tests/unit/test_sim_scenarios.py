"""Scenario files load and are checked; the simulated sky is night while timestamps stay real."""

from __future__ import annotations

from pathlib import Path

import pytest

from firmware_sim import scenarios
from firmware_sim.fleet import SimClock
from firmware_sim.schedule import is_dark

SEOUL = (37.5665, 126.978)
REQUIRED = {"normal-night", "walk-home", "lamp-fault", "power-cut", "sos", "malformed", "burst"}


def test_every_bundled_scenario_loads_with_known_actions() -> None:
    assert set(scenarios.names()) >= REQUIRED
    for name in scenarios.names():
        scenario = scenarios.load(name)
        assert scenario.name == name and scenario.duration_s > 0
        assert all(step.action in scenarios.ACTIONS for step in scenario.steps)


def test_a_tester_can_write_a_json_scenario(tmp_path: Path) -> None:
    path = tmp_path / "mine.json"
    path.write_text('{"name": "mine", "lamps": 12, "steps": [{"at_s": 3, "action": "kill", "count": 2}]}')
    scenario = scenarios.load(path)
    assert scenario.lamps == 12 and scenario.steps[0].params == {"count": 2}


def test_an_unknown_action_is_refused_naming_the_step(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsteps:\n  - {at_s: 1, action: explode}\n")
    with pytest.raises(ValueError, match="step 0: action must be one of"):
        scenarios.load(path)


def test_an_unknown_scenario_lists_the_bundled_ones() -> None:
    with pytest.raises(ValueError, match="walk-home"):
        scenarios.load("no-such-scenario")


def test_night_mode_puts_the_sky_at_night_but_keeps_real_timestamps() -> None:
    noon_ms = 1_750_032_000_000  # 2025-06-16 09:00 KST: daylight in Seoul
    sky = scenarios.tonight_sky_ms(noon_ms)
    assert is_dark(*SEOUL, sky)
    clock = SimClock(sky_start_ms=sky, time_scale=60.0)
    real = clock.now_ms()
    assert abs(real - SimClock.now_ms()) < 1000
    assert clock.sky_ms(real + 1000) - clock.sky_ms(real) == 60_000


def test_the_keepalive_of_every_device_is_an_option_of_the_simulation() -> None:
    sim = scenarios.Simulation(scenarios.SimConfig(mqtt_url="mqtt://127.0.0.1:1", lamps=1, keepalive_s=4))
    assert sim.fleet.keepalive_s == 4
    assert (
        scenarios.Simulation(scenarios.SimConfig(mqtt_url="mqtt://127.0.0.1:1", lamps=1)).fleet.keepalive_s
        == 60
    )
    with pytest.raises(ValueError, match="keepalive_s"):
        scenarios.Simulation(scenarios.SimConfig(mqtt_url="mqtt://127.0.0.1:1", lamps=1, keepalive_s=70_000))
