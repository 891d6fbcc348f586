"""Alerts to and from plain JSON-safe dicts (stored as JSONB, published on `cc/v1/{d}/alerts`).

Times are ISO 8601 strings in UTC with microseconds when present, so a round trip is exact.
`alert_to_dict` also writes derived fields for consumers (`centres`, `place_text_ko`,
`place_text_en`); `alert_from_dict` ignores them, and ignores unknown fields (DESIGN.md §3).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from typing import Any, TypeVar

from alerts._errors import InvalidAlertData
from alerts._model import (
    Alert,
    AlertKind,
    AlertState,
    Event,
    EventAction,
    NearestLamp,
    Place,
    Position,
    Severity,
    place_in_words,
    require_aware,
)
from alerts._routing import route

SCHEMA_VERSION = 1


def _time(value: datetime) -> str:
    return require_aware(value, "time").isoformat()


def place_to_dict(place: Place) -> dict[str, Any]:
    """A place as a JSON-safe dict."""
    return {
        "lat": place.lat,
        "lon": place.lon,
        "district_code": place.district_code,
        "district_name": place.district_name,
        "district_name_en": place.district_name_en,
        "dong_code": place.dong_code,
        "dong_name": place.dong_name,
        "dong_name_en": place.dong_name_en,
        "address": place.address,
        "inside": place.inside,
        "neighbours": list(place.neighbours),
        "nearest_lamps": [
            {
                "lamp_id": lamp.lamp_id,
                "lamp_number": lamp.lamp_number,
                "distance_m": lamp.distance_m,
                "address": lamp.address,
            }
            for lamp in place.nearest_lamps
        ],
    }


def alert_to_dict(alert: Alert) -> dict[str, Any]:
    """An alert as a JSON-safe dict, with derived fields for consumers."""
    return {
        "v": SCHEMA_VERSION,
        "id": alert.id,
        "kind": alert.kind.value,
        "severity": alert.severity.value,
        "state": alert.state.value,
        "created_at": _time(alert.created_at),
        "place": place_to_dict(alert.place),
        "source_id": alert.source_id,
        "track": [
            {"lat": p.lat, "lon": p.lon, "at": _time(p.at), "accuracy_m": p.accuracy_m} for p in alert.track
        ],
        "device_ids": list(alert.device_ids),
        "areas": list(alert.areas),
        "fault_code": alert.fault_code,
        "count": alert.count,
        "timeline": [
            {
                "at": _time(e.at),
                "actor": e.actor,
                "action": e.action.value,
                "note": e.note,
                "details": dict(e.details),
            }
            for e in alert.timeline
        ],
        "centres": list(route(alert.place)),
        "place_text_ko": place_in_words(alert.place, "ko"),
        "place_text_en": place_in_words(alert.place, "en"),
    }


def _get(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(data, Mapping):
        raise InvalidAlertData(f"{where}: expected an object, got {type(data).__name__}")
    if key not in data:
        raise InvalidAlertData(f"{where}: missing field {key!r}")
    value = data[key]
    # bool is an int subclass, but a JSON true is not a count or a coordinate.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise InvalidAlertData(f"{where}: field {key!r} has wrong type {type(value).__name__}: {value!r}")
    return value


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    value = float(_get(data, key, (int, float), where))
    if not math.isfinite(value):
        raise InvalidAlertData(f"{where}: field {key!r} must be finite, got {value!r}")
    return value


def _str_tuple(data: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    items = _get(data, key, list, where)
    if not all(isinstance(item, str) for item in items):
        raise InvalidAlertData(f"{where}: field {key!r} must be a list of strings")
    return tuple(items)


def _parse_time(data: Mapping[str, Any], key: str, where: str) -> datetime:
    text = _get(data, key, str, where)
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidAlertData(f"{where}: field {key!r} is not an ISO 8601 time: {text!r}") from exc
    return require_aware(value, f"{where}.{key}")


_E = TypeVar("_E", AlertKind, AlertState, Severity, EventAction)


def _enum(enum: type[_E], data: Mapping[str, Any], key: str, where: str) -> _E:
    text = _get(data, key, str, where)
    try:
        return enum(text)
    except ValueError as exc:
        raise InvalidAlertData(f"{where}: field {key!r} has unknown value {text!r}") from exc


def place_from_dict(data: Mapping[str, Any]) -> Place:
    """A place from `place_to_dict` output."""
    where = "place"
    lamps = _get(data, "nearest_lamps", list, where)
    return Place(
        lat=_number(data, "lat", where),
        lon=_number(data, "lon", where),
        district_code=_get(data, "district_code", str, where),
        district_name=_get(data, "district_name", str, where),
        district_name_en=str(data.get("district_name_en", "")),
        dong_code=_get(data, "dong_code", str, where),
        dong_name=_get(data, "dong_name", str, where),
        dong_name_en=str(data.get("dong_name_en", "")),
        address=str(data.get("address", "")),
        inside=_get(data, "inside", bool, where),
        neighbours=_str_tuple(data, "neighbours", where),
        nearest_lamps=tuple(
            NearestLamp(
                lamp_id=_get(lamp, "lamp_id", str, "nearest_lamps"),
                lamp_number=_get(lamp, "lamp_number", str, "nearest_lamps"),
                distance_m=_number(lamp, "distance_m", "nearest_lamps"),
                address=str(lamp.get("address", "")),
            )
            for lamp in lamps
        ),
    )


def alert_from_dict(data: Mapping[str, Any]) -> Alert:
    """An alert from `alert_to_dict` output; a malformed dict raises InvalidAlertData naming the field."""
    if not isinstance(data, Mapping):
        raise InvalidAlertData(f"alert must be an object, got {type(data).__name__}")
    where = f"alert {data.get('id', '?')}"
    version = data.get("v", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise InvalidAlertData(f"{where}: unsupported schema version {version!r}")
    track = []
    for point in _get(data, "track", list, where):
        accuracy = point.get("accuracy_m") if isinstance(point, Mapping) else None
        if not isinstance(point, Mapping) or not (accuracy is None or isinstance(accuracy, int | float)):
            raise InvalidAlertData(f"{where}: malformed track point {point!r}")
        track.append(
            Position(
                lat=_number(point, "lat", "track"),
                lon=_number(point, "lon", "track"),
                at=_parse_time(point, "at", "track"),
                accuracy_m=None if accuracy is None else float(accuracy),
            )
        )
    timeline = []
    for event in _get(data, "timeline", list, where):
        if not isinstance(event, Mapping):
            raise InvalidAlertData(f"{where}: malformed event {event!r}")
        details = _get(event, "details", dict, "timeline")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in details.items()):
            raise InvalidAlertData(f"{where}: event details must map strings to strings")
        timeline.append(
            Event(
                at=_parse_time(event, "at", "timeline"),
                actor=_get(event, "actor", str, "timeline"),
                action=_enum(EventAction, event, "action", "timeline"),
                note=_get(event, "note", str, "timeline"),
                details=tuple(details.items()),
            )
        )
    return Alert(
        id=_get(data, "id", str, where),
        kind=_enum(AlertKind, data, "kind", where),
        severity=_enum(Severity, data, "severity", where),
        state=_enum(AlertState, data, "state", where),
        created_at=_parse_time(data, "created_at", where),
        place=place_from_dict(_get(data, "place", dict, where)),
        source_id=_get(data, "source_id", str, where),
        track=tuple(track),
        device_ids=_str_tuple(data, "device_ids", where),
        fault_code=_get(data, "fault_code", str, where),
        count=_get(data, "count", int, where),
        timeline=tuple(timeline),
        areas=_str_tuple(data, "areas", where) if "areas" in data else (),
    )
