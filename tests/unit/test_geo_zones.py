"""The 2022 safety zones, and that they name neighbourhoods the gazetteer knows."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from geo import Gazetteer, load_safety_zones


def test_the_2022_report_has_14_smart_light_zones_in_two_batches_and_15_guard_zones() -> None:
    zones = load_safety_zones()
    assert [b.batch for b in zones.smart_light_batches] == [1, 2]
    assert [len(b.zones) for b in zones.smart_light_batches] == [8, 6]
    assert zones.smart_light_batches[0].selected == dt.date(2022, 3, 3)
    assert zones.smart_light_lamp_count == 1894 + 1606
    assert len(zones.smart_light_zones) == 14
    assert len(zones.guard_zones) == 15
    assert zones.guard_count == 63
    assert (zones.patrol_start_local, zones.patrol_end_local) == (dt.time(21, 0), dt.time(2, 30))


def test_every_zone_is_a_neighbourhood_of_the_district_it_names() -> None:
    gaz = Gazetteer.load()
    zones = load_safety_zones()
    for zone in (*zones.smart_light_zones, *zones.guard_zones):
        dong = gaz.dong(zone.dong_code)
        assert (dong.name, dong.district_code) == (zone.dong, zone.district_code)
        assert gaz.district(zone.district_code).name == zone.district


def test_a_malformed_zone_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "zones.json"
    path.write_text(json.dumps({"smart_light_zones": {"batches": []}}), encoding="utf-8")
    with pytest.raises(ValueError, match="malformed safety-zone file"):
        load_safety_zones(path)
