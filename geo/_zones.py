"""The 2022 smart-light and guard zones of Seoul (``data/seoul_safety_zones.json``)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_SAFETY_ZONES_PATH = Path(__file__).with_name("data") / "seoul_safety_zones.json"


@dataclass(frozen=True, slots=True)
class Zone:
    """One zone: a neighbourhood (dong) of a district."""

    district_code: str
    district: str
    dong_code: str
    dong: str
    citizen_proposed: bool


@dataclass(frozen=True, slots=True)
class SmartLightBatch:
    """One selection round of alley smart-light zones."""

    batch: int
    selected: dt.date
    lamp_count: int
    zones: tuple[Zone, ...]


@dataclass(frozen=True, slots=True)
class SafetyZones:
    """Smart-light batches and guard patrol zones, as in the July 2022 task-force report."""

    source: str
    smart_light_batches: tuple[SmartLightBatch, ...]
    guard_zones: tuple[Zone, ...]
    guard_count: int
    patrol_start_local: dt.time  # Asia/Seoul; the patrol runs past midnight
    patrol_end_local: dt.time

    @property
    def smart_light_zones(self) -> tuple[Zone, ...]:
        """All smart-light zones, batch by batch."""
        return tuple(z for b in self.smart_light_batches for z in b.zones)

    @property
    def smart_light_lamp_count(self) -> int:
        """Lamps installed over all batches."""
        return sum(b.lamp_count for b in self.smart_light_batches)


def _zone(raw: dict[str, Any]) -> Zone:
    return Zone(
        district_code=str(raw["district_code"]),
        district=str(raw["district"]),
        dong_code=str(raw["dong_code"]),
        dong=str(raw["dong"]),
        citizen_proposed=bool(raw["citizen_proposed"]),
    )


def load_safety_zones(path: Path | str | None = None) -> SafetyZones:
    """Read the safety-zone file (the vendored one by default) into frozen dataclasses."""
    with Path(path or DEFAULT_SAFETY_ZONES_PATH).open(encoding="utf-8") as fh:
        doc = json.load(fh)
    try:
        lights = doc["smart_light_zones"]
        guards = doc["guard_zones"]
        batches = tuple(
            SmartLightBatch(
                batch=int(b["batch"]),
                selected=dt.date.fromisoformat(b["selected"]),
                lamp_count=int(b["lamp_count"]),
                zones=tuple(_zone(z) for z in b["zones"]),
            )
            for b in lights["batches"]
        )
        start, end = guards["patrol_hours_local"]
        return SafetyZones(
            source=str(doc.get("source", "")),
            smart_light_batches=batches,
            guard_zones=tuple(_zone(z) for z in guards["zones"]),
            guard_count=int(guards["guards"]),
            patrol_start_local=dt.time.fromisoformat(start),
            patrol_end_local=dt.time.fromisoformat(end),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path or DEFAULT_SAFETY_ZONES_PATH}: malformed safety-zone file: {exc!r}") from exc
