"""The FIWARE export against a real database: every `Streetlight` and `StreetlightGroup` entity,
normalized NGSI-LD and ``options=keyValues``, valid against the Smart Data Models JSON Schemas
(tests/data/fiware/, see NOTICE.md there), grouped by smart-light zone, within the operator's
districts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import psycopg
import pytest

from devkit.apiclient import GANGNAM, JUNG, fast_config, login, seed, serve
from store.devices import upsert_device

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parent.parent / "data" / "fiware"
# Inside 논현1동 (1123052), a 2022 smart-light zone of Gangnam-gu.
NONHYEON1 = (37.509264, 127.028399)
LAMPS = [
    ("nz1", "11230", NONHYEON1[0], NONHYEON1[1]),
    ("nz2", "11230", NONHYEON1[0] + 0.0002, NONHYEON1[1]),
    ("og1", "11230", GANGNAM[0], GANGNAM[1] + 0.0001),  # 역삼2동: no zone, the district's group
    ("oj1", "11020", JUNG[0], JUNG[1] + 0.0001),
]
ZONE = "urn:ngsi-ld:StreetlightGroup:seoul-smart-light-zone-1123052"
GANGNAM_REST = "urn:ngsi-ld:StreetlightGroup:seoul-district-11230"
JUNG_REST = "urn:ngsi-ld:StreetlightGroup:seoul-district-11020"
ATTRIBUTE_TYPES = {"Property", "GeoProperty", "Relationship"}


def _validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    # Without their optional packages, jsonschema only annotates formats: make sure they are checked.
    assert {"uri", "date-time"} <= set(checker.checkers), "install jsonschema[format-nongpl]"
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _errors(validator: jsonschema.Draft202012Validator, entity: dict[str, Any]) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(entity)]


def to_key_values(entity: dict[str, Any]) -> dict[str, Any]:
    """Normalized NGSI-LD to key-values, as the Smart Data Models tooling converts it: the value of
    each Property and GeoProperty, the object of each Relationship, no ``@context``."""
    out: dict[str, Any] = {}
    for name, attr in entity.items():
        if name == "@context":
            continue
        if name in ("id", "type"):
            out[name] = attr
            continue
        assert isinstance(attr, dict) and attr.get("type") in ATTRIBUTE_TYPES, (entity["id"], name, attr)
        out[name] = attr["object"] if attr["type"] == "Relationship" else attr["value"]
    return out


@pytest.fixture
def api(db_url: str) -> Iterator[httpx.Client]:
    seed(db_url, LAMPS)
    with psycopg.connect(db_url, autocommit=True) as conn:
        upsert_device(conn, "nopos", kind="lamp", district_code="11230")  # registered, no position yet
        conn.execute(
            "INSERT INTO device_state (device_id, online, last_seen, level, faults) VALUES "
            "('nz1', true, now(), 80, '{}'), ('nz2', true, now(), 0, '{lamp_open}')"
        )
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        yield c


def _get(api: httpx.Client, path: str, who: str) -> list[dict[str, Any]]:
    r = api.get(path, headers=login(api, who))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/ld+json")
    body: list[dict[str, Any]] = r.json()
    return body


def test_every_entity_of_both_forms_is_valid_against_the_smart_data_models_schemas(
    api: httpx.Client,
) -> None:
    for path, schema, relationship in [
        ("/v1/lamps.ngsi-ld", "Streetlight", "refStreetlightGroup"),
        ("/v1/streetlight-groups.ngsi-ld", "StreetlightGroup", "refStreetlight"),
    ]:
        validator = _validator(schema)
        normalized = _get(api, path, "op-city")
        key_values = _get(api, path + "?options=keyValues", "op-city")
        assert normalized and len(normalized) == len(key_values)
        for entity, simple in zip(normalized, key_values, strict=True):
            assert entity["type"] == schema and entity["id"].startswith(f"urn:ngsi-ld:{schema}:")
            assert entity["@context"] and simple["@context"] == entity["@context"]
            assert entity[relationship]["type"] == "Relationship", entity
            assert entity["location"]["type"] == "GeoProperty", entity
            converted = to_key_values(entity)
            assert _errors(validator, converted) == [], (path, entity)
            assert _errors(validator, {k: v for k, v in simple.items() if k != "@context"}) == [], simple
            assert converted == {k: v for k, v in simple.items() if k != "@context"}
        assert _get(api, path + "?options=simplified", "op-city") == key_values


def key_values_of(api: httpx.Client) -> list[dict[str, Any]]:
    return _get(api, "/v1/lamps.ngsi-ld?options=keyValues", "op-city")


def test_lamps_belong_to_their_smart_light_zone_or_their_districts_group(api: httpx.Client) -> None:
    lamps = {e["id"]: e for e in key_values_of(api)}
    assert set(lamps) == {f"urn:ngsi-ld:Streetlight:{d}" for d in ("nz1", "nz2", "og1", "oj1")}
    group_of = {i.rsplit(":", 1)[1]: e["refStreetlightGroup"] for i, e in lamps.items()}
    assert group_of == {"nz1": ZONE, "nz2": ZONE, "og1": GANGNAM_REST, "oj1": JUNG_REST}
    nz1, nz2 = lamps["urn:ngsi-ld:Streetlight:nz1"], lamps["urn:ngsi-ld:Streetlight:nz2"]
    assert (nz1["status"], nz1["powerState"], nz1["illuminanceLevel"]) == ("ok", "on", 0.8)
    assert (nz2["status"], nz2["powerState"]) == ("defectiveLamp", "off")
    assert nz1["observationDateTime"] and nz1["streetPoleNum"] == "11230-nz1"
    groups = {g["id"]: g for g in _get(api, "/v1/streetlight-groups.ngsi-ld?options=keyValues", "op-city")}
    assert set(groups) == {ZONE, GANGNAM_REST, JUNG_REST}
    for lamp_id, lamp in lamps.items():
        assert lamp_id in groups[lamp["refStreetlightGroup"]]["refStreetlight"]
    assert groups[ZONE]["refStreetlight"] == [
        "urn:ngsi-ld:Streetlight:nz1",
        "urn:ngsi-ld:Streetlight:nz2",
    ]
    assert "논현1동" in groups[ZONE]["name"] and groups[ZONE]["location"]["type"] == "Polygon"


def test_a_district_operator_exports_only_the_districts_lamps_and_groups(api: httpx.Client) -> None:
    lamps = _get(api, "/v1/lamps.ngsi-ld", "op-jung")
    assert [e["id"] for e in lamps] == ["urn:ngsi-ld:Streetlight:oj1"]
    groups = _get(api, "/v1/streetlight-groups.ngsi-ld", "op-jung")
    assert [g["id"] for g in groups] == [JUNG_REST]
    assert groups[0]["refStreetlight"] == {"type": "Relationship", "object": ["urn:ngsi-ld:Streetlight:oj1"]}
    op = login(api, "op-jung")
    for path in ("/v1/lamps.ngsi-ld", "/v1/streetlight-groups.ngsi-ld"):
        assert api.get(path + "?district=11230", headers=op).status_code == 404
        assert api.get(path + "?options=sysAttrs", headers=op).status_code == 400
        assert api.get(path).status_code == 401
    gangnam = _get(api, "/v1/streetlight-groups.ngsi-ld?district=11230", "op-city")
    assert {g["id"] for g in gangnam} == {ZONE, GANGNAM_REST}
