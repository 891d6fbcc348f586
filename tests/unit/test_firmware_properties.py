"""Property tests: the lamp's effective level against a brute-force model of DESIGN.md §3."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from firmware_sim import DeviceIdentity, LampConfig, LampFirmware, NightProfile, is_dark, schedule_level
from geo.solar import SUNRISE_ELEVATION_DEG, sun_elevation_deg

SEOUL_LAT_DEG = 37.5665
SEOUL_LON_DEG = 126.9780
PROFILE = NightProfile(night_level=80, late_level=50)
# Brute-force ranking written out independently of firmware_sim.Priority.
RANK = {"schedule": 0, "manual": 1, "walk": 2, "sos": 3}
YEAR_2022_START_MS = 1_640_962_800_000  # 2022-01-01T00:00 KST
YEAR_MS = 365 * 86_400_000


@dataclass(frozen=True)
class Step:
    wait_ms: int
    redeliver: bool
    action: str
    source: str
    priority: str
    level: int
    ttl_s: int
    ts_offset_ms: int


steps = st.builds(
    Step,
    wait_ms=st.integers(0, 120_000),
    redeliver=st.booleans(),
    action=st.sampled_from(["set_level", "set_level", "blink", "clear"]),
    source=st.sampled_from(["walk-1", "walk-2", "alert-1", "operator-1"]),
    priority=st.sampled_from(sorted(RANK)),
    level=st.integers(0, 100),
    ttl_s=st.integers(1, 300),
    # Mostly fresh commands, some late (expired or partly spent), a few stamped ahead.
    ts_offset_ms=st.integers(-400_000, 30_000),
)


@dataclass
class RefOverride:
    priority: str
    level: int
    blink: bool
    expires_ms: int
    issued_ts_ms: int


class Reference:
    """The control model as plainly as it can be said, for comparison."""

    def __init__(self) -> None:
        self.overrides: dict[str, RefOverride] = {}
        self.acks: dict[str, str] = {}

    def active(self, now_ms: int) -> dict[str, RefOverride]:
        return {s: o for s, o in self.overrides.items() if o.expires_ms > now_ms}

    def receive(self, payload: dict[str, Any], now_ms: int) -> str:
        if payload["cmd_id"] in self.acks:
            return self.acks[payload["cmd_id"]]
        status = self._status(payload, now_ms)
        self.acks[payload["cmd_id"]] = status
        return status

    def _status(self, payload: dict[str, Any], now_ms: int) -> str:
        ttl_ms = payload.get("ttl_s", 0) * 1000
        if "ttl_s" in payload and payload["ts"] + ttl_ms <= now_ms:
            return "expired"
        current = self.active(now_ms).get(payload["source"])
        if current is not None and current.issued_ts_ms > payload["ts"]:
            return "rejected"
        if payload["action"] == "clear":
            self.overrides.pop(payload["source"], None)
        else:
            self.overrides[payload["source"]] = RefOverride(
                priority=payload["priority"],
                level=payload["level"],
                blink=payload["action"] == "blink",
                expires_ms=min(payload["ts"], now_ms) + ttl_ms,
                issued_ts_ms=payload["ts"],
            )
        return "applied"

    def level(self, now_ms: int) -> int:
        active = list(self.active(now_ms).values())
        if not active:
            return schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, now_ms, PROFILE)
        if any(o.blink for o in active):
            return max(o.level for o in active if o.blink)
        top_rank = max(RANK[o.priority] for o in active)
        return max(o.level for o in active if RANK[o.priority] == top_rank)


def payload_of(index: int, step: Step, now_ms: int) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "cmd_id": f"c{index}",
        "ts": now_ms + step.ts_offset_ms,
        "action": step.action,
        "source": step.source,
    }
    if step.action != "clear":
        payload |= {"level": step.level, "ttl_s": step.ttl_s, "priority": step.priority}
    return payload


@settings(max_examples=150, deadline=None)
@given(
    start_ms=st.integers(YEAR_2022_START_MS, YEAR_2022_START_MS + YEAR_MS),
    plan=st.lists(steps, min_size=1, max_size=25),
    probe_ms=st.integers(0, 400_000),
)
def test_effective_level_always_equals_the_brute_force_model(
    start_ms: int, plan: list[Step], probe_ms: int
) -> None:
    identity = DeviceIdentity("L-prop", "11230", "lamp", SEOUL_LAT_DEG, SEOUL_LON_DEG, "SL-LED40")
    lamp = LampFirmware(identity, LampConfig(profile=PROFILE))
    reference = Reference()
    now_ms = start_ms
    previous: dict[str, Any] | None = None
    latest_expiry_ms = now_ms
    for index, step in enumerate(plan):
        now_ms += step.wait_ms
        # QoS 1 redelivery: the same payload, same cmd_id, again.
        payload = previous if step.redeliver and previous is not None else payload_of(index, step, now_ms)
        previous = payload
        acks = [m.to_payload() for m in lamp.handle_command(payload, now_ms) if m.channel == "ack"]
        assert [a["status"] for a in acks] == [reference.receive(payload, now_ms)]
        assert acks[0]["effective_level"] == reference.level(now_ms)
        assert lamp.output(now_ms).level == reference.level(now_ms)
        assert lamp.output(now_ms + probe_ms).level == reference.level(now_ms + probe_ms)
        latest_expiry_ms = max([latest_expiry_ms, *(o.expires_ms for o in lamp.overrides.values())])
    # Once every ttl has run out the lamp is back on its schedule, never brighter.
    after_ms = max(now_ms, latest_expiry_ms)
    assert lamp.output(after_ms).level == schedule_level(SEOUL_LAT_DEG, SEOUL_LON_DEG, after_ms, PROFILE)
    assert not lamp.output(after_ms).blinking
    lamp.tick(after_ms)
    assert lamp.overrides == {}


@settings(max_examples=300, deadline=None)
@given(
    now_ms=st.integers(YEAR_2022_START_MS, YEAR_2022_START_MS + 3 * YEAR_MS),
    lat_deg=st.floats(33.0, 39.0),
    lon_deg=st.floats(124.0, 132.0),
)
def test_the_schedule_is_dark_exactly_when_the_sun_is_below_the_sunset_elevation(
    now_ms: int, lat_deg: float, lon_deg: float
) -> None:
    elevation_deg = sun_elevation_deg(lat_deg, lon_deg, datetime.fromtimestamp(now_ms / 1000, UTC))
    # Within a hair of the threshold the two computations may round differently.
    assume(abs(elevation_deg - SUNRISE_ELEVATION_DEG) > 0.01)
    assert is_dark(lat_deg, lon_deg, now_ms) == (elevation_deg < SUNRISE_ELEVATION_DEG)
