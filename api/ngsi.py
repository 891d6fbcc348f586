"""The lamps as FIWARE Smart Data Models entities in NGSI-LD: `Streetlight` per lamp and
`StreetlightGroup` per smart-light zone (or per district for lamps outside the zones).

Pure shaping: rows in, JSON-ready dicts out. Normalized NGSI-LD by default (every attribute a
``Property``, ``GeoProperty`` or ``Relationship`` object); `key_values` gives the simplified form
(``options=keyValues``), the form the Smart Data Models JSON Schemas describe."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import shapely
from shapely.geometry import mapping

from geo import Gazetteer, load_safety_zones

# The Smart Data Models terms, then the NGSI-LD core context (last, so no term overrides it).
NGSI_LD_CONTEXT = (
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Streetlighting/master/context.jsonld",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
)
# ``options`` of the NGSI-LD API (a comma-separated list): the simplified form's two spellings.
KEY_VALUES_OPTIONS = frozenset({"keyValues", "simplified"})
KNOWN_OPTIONS = KEY_VALUES_OPTIONS | {"normalized"}

# About 20 m at Seoul's latitude, as the console's area polygons.
_SIMPLIFY_DEG = 0.0002


def streetlight_urn(device_id: str) -> str:
    return f"urn:ngsi-ld:Streetlight:{device_id}"


def zone_group_urn(dong_code: str) -> str:
    return f"urn:ngsi-ld:StreetlightGroup:seoul-smart-light-zone-{dong_code}"


def district_group_urn(district_code: str) -> str:
    return f"urn:ngsi-ld:StreetlightGroup:seoul-district-{district_code}"


@lru_cache(maxsize=1)
def smart_light_zone_dongs() -> frozenset[str]:
    """Neighbourhood codes of Seoul's smart-light zones (the vendored safety-zone file)."""
    return frozenset(z.dong_code for z in load_safety_zones().smart_light_zones)


def wants_key_values(options: str | None) -> bool:
    """Whether an ``options`` parameter asks for the simplified form; ValueError on unknown ones."""
    given = {o.strip() for o in (options or "").split(",") if o.strip()}
    unknown = given - KNOWN_OPTIONS
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(KNOWN_OPTIONS)}")
    if given & KEY_VALUES_OPTIONS and "normalized" in given:
        raise ValueError("options: keyValues and normalized exclude each other")
    return bool(given & KEY_VALUES_OPTIONS)


def _status(row: Mapping[str, Any]) -> str:
    if row["faults"]:
        return "defectiveLamp"
    return "ok" if row["online"] else "columnIssue"


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


def lamp_dong(gaz: Gazetteer, row: Mapping[str, Any]) -> str | None:
    """The lamp's neighbourhood: the register's, else where its position lies."""
    if row.get("dong_code"):
        return str(row["dong_code"])
    if row["lat"] is None or row["lon"] is None:
        return None
    return gaz.locate(float(row["lat"]), float(row["lon"])).dong_code


@dataclass
class Group:
    """A `StreetlightGroup`: a smart-light zone (a neighbourhood) or a district's other lamps."""

    urn: str
    district_code: str
    dong_code: str | None  # None for a district's group
    lamps: list[str] = field(default_factory=list)  # Streetlight URNs


def group_for(gaz: Gazetteer, row: Mapping[str, Any], zones: frozenset[str]) -> tuple[str, str | None] | None:
    """(district, zone's dong or None) of the lamp's group; None when the lamp has no district."""
    district = row.get("district_code")
    if not district:
        return None
    try:
        gaz.district(str(district))
    except KeyError:  # a code the gazetteer does not know: no area to draw the group with
        return None
    dong = lamp_dong(gaz, row)
    if dong is not None and dong in zones and gaz.dong(dong).district_code == district:
        return str(district), dong
    return str(district), None


def _group_urn(key: tuple[str, str | None]) -> str:
    district, dong = key
    return zone_group_urn(dong) if dong is not None else district_group_urn(district)


def _prop(value: Any) -> dict[str, Any]:
    return {"type": "Property", "value": value}


def _normalize(attrs: Mapping[str, Any], relationships: Iterable[str]) -> dict[str, Any]:
    rels = set(relationships)
    out: dict[str, Any] = {}
    for name, value in attrs.items():
        if name in ("id", "type", "@context"):
            out[name] = value
        elif name == "location":
            out[name] = {"type": "GeoProperty", "value": value}
        elif name in rels:
            out[name] = {"type": "Relationship", "object": value}
        else:
            out[name] = _prop(value)
    return out


def _entity(attrs: dict[str, Any], relationships: Iterable[str], key_values: bool) -> dict[str, Any]:
    attrs["@context"] = list(NGSI_LD_CONTEXT)
    return attrs if key_values else _normalize(attrs, relationships)


def streetlights(
    gaz: Gazetteer, rows: Sequence[Mapping[str, Any]], *, key_values: bool = False
) -> list[dict[str, Any]]:
    """One `Streetlight` per lamp with a position (the model requires ``location``)."""
    zones = smart_light_zone_dongs()
    out = []
    for r in rows:
        if r["lat"] is None or r["lon"] is None:
            continue
        attrs: dict[str, Any] = {
            "id": streetlight_urn(str(r["device_id"])),
            "type": "Streetlight",
            "name": str(r["lamp_number"] or r["device_id"]),
            "status": _status(r),
            "powerState": "on" if (r["level"] or 0) > 0 else "off",
            "illuminanceLevel": (r["level"] or 0) / 100.0,
            "location": {"type": "Point", "coordinates": [float(r["lon"]), float(r["lat"])]},
        }
        if r["district_code"]:
            attrs["areaServed"] = str(r["district_code"])
        if r["lamp_number"]:
            attrs["streetPoleNum"] = str(r["lamp_number"])
        if r["last_seen"] is not None:
            attrs["observationDateTime"] = _iso(r["last_seen"])
        key = group_for(gaz, r, zones)
        if key is not None:  # a relationship without an object is left out, never null
            attrs["refStreetlightGroup"] = _group_urn(key)
        out.append(_entity(attrs, ("refStreetlightGroup",), key_values))
    return out


def _area_geometry(gaz: Gazetteer, group: Group) -> dict[str, Any]:
    area = gaz.dong(group.dong_code) if group.dong_code is not None else gaz.district(group.district_code)
    geometry: dict[str, Any] = mapping(
        shapely.simplify(area.polygon_lonlat, _SIMPLIFY_DEG, preserve_topology=True)
    )
    return geometry


def streetlight_groups(
    gaz: Gazetteer, rows: Sequence[Mapping[str, Any]], *, key_values: bool = False
) -> list[dict[str, Any]]:
    """One `StreetlightGroup` per smart-light zone with lamps, and one per district for its lamps
    outside the zones; ``refStreetlight`` lists the group's lamps (those `streetlights` exports)."""
    zones = smart_light_zone_dongs()
    groups: dict[tuple[str, str | None], Group] = {}
    for r in rows:
        if r["lat"] is None or r["lon"] is None:
            continue
        key = group_for(gaz, r, zones)
        if key is None:
            continue
        if key not in groups:
            groups[key] = Group(_group_urn(key), key[0], key[1])
        groups[key].lamps.append(streetlight_urn(str(r["device_id"])))
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1] or "")):
        g = groups[key]
        district = gaz.district(g.district_code)
        if g.dong_code is not None:
            dong = gaz.dong(g.dong_code)
            name = f"{district.name} {dong.name} 스마트보안등 구역"
            description = f"Smart-light zone {dong.name_eng}, {district.name_eng}, Seoul"
        else:
            name = f"{district.name} 보안등"
            description = f"Security lamps of {district.name_eng}, Seoul, outside its smart-light zones"
        attrs: dict[str, Any] = {
            "id": g.urn,
            "type": "StreetlightGroup",
            "name": name,
            "description": description,
            "areaServed": g.district_code,
            "location": _area_geometry(gaz, g),
            "refStreetlight": sorted(g.lamps),
        }
        out.append(_entity(attrs, ("refStreetlight",), key_values))
    return out
