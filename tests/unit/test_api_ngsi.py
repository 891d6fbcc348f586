"""The NGSI-LD shaping of `api/ngsi.py` without a database: options, groups, no null references."""

from __future__ import annotations

from typing import Any

import pytest

from api import ngsi
from geo import Gazetteer


@pytest.fixture(scope="module")
def gaz() -> Gazetteer:
    return Gazetteer.load()


def _row(device_id: str, district: str | None, lat: float | None, lon: float | None) -> dict[str, Any]:
    return {
        "device_id": device_id,
        "district_code": district,
        "dong_code": None,
        "lamp_number": None,
        "lat": lat,
        "lon": lon,
        "online": False,
        "faults": [],
        "level": None,
        "last_seen": None,
    }


def test_options_follow_the_ngsi_ld_api() -> None:
    assert not ngsi.wants_key_values(None) and not ngsi.wants_key_values("normalized")
    assert ngsi.wants_key_values("keyValues") and ngsi.wants_key_values("simplified")
    for bad in ("sysAttrs", "keyValues,normalized", "keyvalues"):
        with pytest.raises(ValueError):
            ngsi.wants_key_values(bad)


def test_a_lamp_in_a_smart_light_zone_joins_the_zone_others_their_district(gaz: Gazetteer) -> None:
    rows = [
        _row("z", "11230", 37.509264, 127.028399),  # 논현1동, a 2022 zone
        _row("d", "11230", 37.5000, 127.0501),  # 역삼2동
        _row("unknown", "99999", 37.5000, 127.0501),  # no such district: no group, no null
        _row("nopos", "11230", None, None),  # no location: not exported
    ]
    lamps = {e["id"]: e for e in ngsi.streetlights(gaz, rows)}
    assert set(lamps) == {f"urn:ngsi-ld:Streetlight:{d}" for d in ("z", "d", "unknown")}
    assert lamps["urn:ngsi-ld:Streetlight:z"]["refStreetlightGroup"] == {
        "type": "Relationship",
        "object": ngsi.zone_group_urn("1123052"),
    }
    assert "refStreetlightGroup" not in lamps["urn:ngsi-ld:Streetlight:unknown"]
    assert all(v is not None for e in lamps.values() for v in e.values())
    groups = ngsi.streetlight_groups(gaz, rows, key_values=True)
    assert [(g["id"], g["refStreetlight"]) for g in groups] == [
        (ngsi.district_group_urn("11230"), ["urn:ngsi-ld:Streetlight:d"]),
        (ngsi.zone_group_urn("1123052"), ["urn:ngsi-ld:Streetlight:z"]),
    ]
