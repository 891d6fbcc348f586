"""Lamps and areas for the console map and city data platforms: GeoJSON with live state, a lamp's
last 24 h, manual overrides (a ``pending`` command row and `NOTIFY sl_lamp` in one transaction,
sent by the controller) and their status (`GET /v1/commands/{cmd_id}`), and the
same lamps as FIWARE Smart Data Models `Streetlight` and `StreetlightGroup` entities (NGSI-LD,
`api.ngsi`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal

import msgspec
import shapely
from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from shapely.geometry import mapping

from api import ngsi
from api.schemas import (
    AreasOut,
    CommandOut,
    CommandsOut,
    LampDetailOut,
    LampDetailPropertiesOut,
    LampFeatureOut,
    LampHourOut,
    LampOverrideOut,
    LampPropertiesOut,
    LampsOut,
    MapOut,
    MapTilesOut,
    OverrideIn,
    OverrideOut,
    PointOut,
    WalkerOut,
    WalkersOut,
)
from api.security import Operator
from api.state import (
    POSITION_ROLES,
    AppState,
    CurrentOperator,
    Db,
    State,
    require_role,
    visible_districts,
)
from geo import Gazetteer
from store.commands import CommandRecord, insert_pending, lamp_operator_commands, operator_command
from store.devices import active_overrides, get_device, lamp_hours, list_devices_with_state
from store.notes import OVERRIDE_TTL_S, LampNote, notify
from store.operators import log_access
from store.types import Conn, Row
from store.walks import active_walkers

router = APIRouter(tags=["lamps"])

# About 20 m at Seoul's latitude: invisible at district scale, and the file shrinks tenfold.
_SIMPLIFY_DEG = 0.0002


@lru_cache(maxsize=4)
def _areas_geojson(gaz: Gazetteer, level: str, district: str | None) -> dict[str, Any]:
    areas = (
        gaz.districts
        if level == "district"
        else [a for a in gaz.dongs if district is None or a.district_code == district]
    )
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": a.code,
                "properties": {
                    "code": a.code,
                    "name": a.name,
                    "name_eng": a.name_eng,
                    "district_code": a.district_code,
                },
                "geometry": mapping(
                    shapely.simplify(a.polygon_lonlat, _SIMPLIFY_DEG, preserve_topology=True)
                ),
            }
            for a in areas
        ],
    }


@router.get(
    "/v1/districts",
    summary="District or neighbourhood polygons (GeoJSON)",
    responses={200: {"model": AreasOut, "description": "cached for an hour (``Cache-Control``)"}},
)
def districts(
    state: State,
    level: Annotated[str, Query(pattern="^(district|dong)$")] = "district",
    district: Annotated[str | None, Query(pattern="^[0-9]{5}$")] = None,
) -> JSONResponse:
    """Seoul's districts (or one district's neighbourhoods with ``level=dong``), simplified to ~20 m."""
    return JSONResponse(
        _areas_geojson(state.gazetteer, level, district), headers={"Cache-Control": "max-age=3600"}
    )


@router.get("/v1/map", summary="The console map's basemap")
def basemap(op: CurrentOperator, state: State) -> MapOut:
    """The raster tile server the console draws under its layers (``STREETLIGHT_MAP_TILES``), or
    null: the console then draws the districts and neighbourhoods (`GET /v1/districts`) as its
    base layer and asks no other server for anything. A tile server that stops answering makes
    the console switch to the same fallback."""
    tiles = state.config.map_tiles
    if tiles is None:
        return MapOut(tiles=None)
    return MapOut(
        tiles=MapTilesOut(
            url_template=tiles.url_template, attribution=tiles.attribution, max_zoom=tiles.max_zoom
        )
    )


def _lamp_state(row: Row, overrides: list[Row]) -> str:
    if not row["online"]:
        return "offline"
    if row["faults"]:
        return "fault"
    if any(o["action"] == "blink" for o in overrides):
        return "blinking"
    if any(o["priority"] in ("walk", "manual", "sos") for o in overrides):
        return "brightened"
    return "online"


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, datetime) else v


# Overrides that follow a resident (a walk, an SOS's blinking): what they do, never whose they are,
# and only to roles that may see residents' positions (maintenance sees its own and manual ones).
_RESIDENT_PRIORITIES = frozenset({"walk", "sos"})
_OVERRIDE_FIELDS = ("cmd_id", "action", "level", "priority", "expires_at", "status")


def _visible_overrides(op: Operator, overrides: list[Row]) -> list[Row]:
    if op.role in POSITION_ROLES:
        return overrides
    return [o for o in overrides if o["priority"] not in _RESIDENT_PRIORITIES]


def _audit_resident_overrides(
    conn: Conn, op: Operator, subject: str, overrides: dict[str, list[Row]]
) -> None:
    """One audit row for an answer showing walk or SOS overrides: lamps brightened for a resident
    place that resident, like the walkers' dots (`read_walkers`)."""
    if op.role not in POSITION_ROLES:
        return
    counts = {p: 0 for p in sorted(_RESIDENT_PRIORITIES)}
    for lamp in overrides.values():
        for o in lamp:
            if o["priority"] in counts:
                counts[o["priority"]] += 1
    if any(counts.values()):
        log_access(
            conn,
            actor=op.actor,
            action="read_lamp_overrides",
            subject_kind="lamps",
            subject_id=subject,
            details={f"{p}_overrides": n for p, n in counts.items()},
        )


def _dong_names(gaz: Gazetteer, row: Row) -> tuple[str | None, str | None, str | None]:
    """The lamp's neighbourhood code and its names (ko, en): the register's, else its position's."""
    code = ngsi.lamp_dong(gaz, row)
    try:
        dong = gaz.dong(code) if code else None
    except KeyError:
        return code, None, None
    return code, (dong.name if dong else None), (dong.name_eng if dong else None)


def _lamp_props(gaz: Gazetteer, row: Row, op: Operator, all_overrides: list[Row]) -> dict[str, Any]:
    """The fields of `LampPropertiesOut` (a detail adds its own)."""
    overrides = _visible_overrides(op, all_overrides)
    dong_code, dong, dong_en = _dong_names(gaz, row)
    return {
        "device_id": row["device_id"],
        "kind": row["kind"],
        "lamp_number": row["lamp_number"],
        "address": row["address"],
        "lamp_count": row["lamp_count"],
        "district": row["district_code"],
        "dong": dong,
        "dong_en": dong_en,
        "dong_code": dong_code,
        "state": _lamp_state(row, overrides),
        "online": row["online"],
        "level": row["level"],
        "faults": list(row["faults"] or []),
        "last_seen": _iso(row["last_seen"]),
        "overrides": [LampOverrideOut(**{k: _iso(o.get(k)) for k in _OVERRIDE_FIELDS}) for o in overrides],
    }


def _scope(op: Operator, district: str | None) -> list[str] | None:
    mine = visible_districts(op)
    if district is None:
        return mine
    if mine is not None and district not in mine:
        raise HTTPException(404, f"district {district!r} is not one of yours")
    return [district]


@router.get("/v1/lamps", summary="Lamps with live state (GeoJSON)")
def lamps(
    state: State,
    op: CurrentOperator,
    conn: Db,
    district: Annotated[str | None, Query(pattern="^[0-9]{5}$")] = None,
) -> LampsOut:
    """Every lamp the operator may see: position, online, level, active overrides, faults."""
    rows = list_devices_with_state(conn, district_codes=_scope(op, district))
    overrides = active_overrides(conn, [r["device_id"] for r in rows])
    _audit_resident_overrides(conn, op, ",".join(_scope(op, district) or ["all"]), overrides)
    return LampsOut(
        features=[
            LampFeatureOut(
                id=r["device_id"],
                geometry=PointOut(coordinates=[r["lon"], r["lat"]]) if r["lat"] is not None else None,
                properties=LampPropertiesOut(
                    **_lamp_props(state.gazetteer, r, op, overrides.get(r["device_id"], []))
                ),
            )
            for r in rows
        ],
    )


_OPTIONS_DOC = (
    "NGSI-LD `options`: `keyValues` (or `simplified`) for plain attribute values, the form the Smart "
    "Data Models schemas describe; normalized NGSI-LD (Property/GeoProperty/Relationship) otherwise"
)


def _ngsi_ld(
    state: AppState,
    op: Operator,
    conn: Conn,
    district: str | None,
    options: str | None,
    shape: Callable[..., list[dict[str, Any]]],
) -> JSONResponse:
    try:
        key_values = ngsi.wants_key_values(options)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    rows = list_devices_with_state(conn, district_codes=_scope(op, district))
    return JSONResponse(shape(state.gazetteer, rows, key_values=key_values), media_type="application/ld+json")


_NGSI_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/ld+json": {}}, "description": "an array of NGSI-LD entities"},
    400: {"description": "unknown `options`"},
}


@router.get(
    "/v1/lamps.ngsi-ld",
    summary="Lamps as FIWARE Streetlight entities (NGSI-LD)",
    responses=_NGSI_RESPONSES,
)
def lamps_ngsi_ld(
    state: State,
    op: CurrentOperator,
    conn: Db,
    district: Annotated[str | None, Query(pattern="^[0-9]{5}$")] = None,
    options: Annotated[str | None, Query(description=_OPTIONS_DOC)] = None,
) -> JSONResponse:
    """The lamps with a position as NGSI-LD entities of the Smart Data Models `Streetlight` type,
    each with its `refStreetlightGroup` (see ``/v1/streetlight-groups.ngsi-ld``)."""
    return _ngsi_ld(state, op, conn, district, options, ngsi.streetlights)


@router.get("/v1/streetlight-groups.ngsi-ld", summary="Smart-light zones as FIWARE StreetlightGroup entities")
def streetlight_groups_ngsi_ld(
    state: State,
    op: CurrentOperator,
    conn: Db,
    district: Annotated[str | None, Query(pattern="^[0-9]{5}$")] = None,
    options: Annotated[str | None, Query(description=_OPTIONS_DOC)] = None,
) -> JSONResponse:
    """A `StreetlightGroup` per smart-light zone with lamps, and one per district for its other
    lamps; `refStreetlight` lists the visible lamps of the group."""
    return _ngsi_ld(state, op, conn, district, options, ngsi.streetlight_groups)


def _visible_lamp(conn: Conn, op: Operator, device_id: str) -> Row:
    row = get_device(conn, device_id)
    mine = visible_districts(op)
    if row is None or (mine is not None and row["district_code"] not in mine):
        raise HTTPException(404, f"lamp {device_id!r} not found in your districts")
    return row


@router.get("/v1/lamps/{device_id}", summary="One lamp with its last 24 h")
def lamp_detail(device_id: str, state: State, op: CurrentOperator, conn: Db) -> LampDetailOut:
    """The lamp's live state and hourly level, power and uptime for the last 24 h (rollups)."""
    row = _visible_lamp(conn, op, device_id)
    overrides = active_overrides(conn, [device_id]).get(device_id, [])
    _audit_resident_overrides(conn, op, device_id, {device_id: overrides})
    hours = lamp_hours(conn, device_id, since=datetime.now(UTC) - timedelta(hours=24))
    commands = lamp_operator_commands(conn, device_id)
    return LampDetailOut(
        lamp=LampDetailPropertiesOut(
            **_lamp_props(state.gazetteer, row, op, overrides),
            lat=row["lat"],
            lon=row["lon"],
            model=row["model"],
        ),
        hours=[LampHourOut(**{k: _iso(v) for k, v in h.items()}) for h in hours],
        commands=[_command_out(c) for c in commands],
    )


# A command's states that will not change any more (controller._commands.FINAL_STATES).
_FINAL = frozenset({"applied", "rejected", "expired", "undelivered"})


def _command_out(row: Row) -> CommandOut:
    return CommandOut(
        cmd_id=row["cmd_id"],
        device_id=row["device_id"],
        district=row["district_code"],
        action=row["action"],
        level=row["level"],
        source=row["source"],
        ttl_s=row["ttl_s"],
        asked_at=_iso(row["sent_at"]),
        expires_at=_iso(row["expires_at"]),
        status=row["status"],
        reason=row["reason"],
        answered_at=_iso(row["acked_at"]),
        effective_level=row["effective_level"],
        attempts=row["attempts"],
        final=row["status"] in _FINAL,
    )


def _new_cmd_id() -> str:
    """An operator's command id: 128 random bits, like the controller's (protocol: at most 64)."""
    return f"op.{secrets.token_hex(16)}"


@router.get("/v1/commands/{cmd_id}", summary="An operator's command and its status")
def command_status(cmd_id: str, op: CurrentOperator, conn: Db) -> CommandOut:
    """The status of a manual command (`POST /v1/lamps/{id}/override` answers with its
    ``status_url``): 404 for a command of another district's lamp, or one that is not an
    operator's (walk and SOS commands are not shown here)."""
    row = operator_command(conn, cmd_id) if len(cmd_id) <= 64 else None
    mine = visible_districts(op)
    if row is None or (mine is not None and row["district_code"] not in mine):
        raise HTTPException(404, f"command {cmd_id!r} not found in your districts")
    return _command_out(row)


@router.get("/v1/lamps/{device_id}/commands", summary="A lamp's latest operators' commands")
def lamp_commands(
    device_id: str,
    op: CurrentOperator,
    conn: Db,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> CommandsOut:
    """The operators' (manual) commands to the lamp, newest first, each with its status."""
    _visible_lamp(conn, op, device_id)
    return CommandsOut(
        commands=[_command_out(c) for c in lamp_operator_commands(conn, device_id, limit=limit)]
    )


def _override(
    conn: Conn,
    op: Operator,
    device_id: str,
    action: Literal["set_level", "clear"],
    level: int | None,
    ttl_s: int,
) -> OverrideOut:
    require_role(op, "maintenance", "admin", "city")
    row = _visible_lamp(conn, op, device_id)
    cmd_id = _new_cmd_id()
    note = LampNote(
        device_id=device_id,
        district=row["district_code"],
        level=level,
        ttl_s=ttl_s,
        source=op.actor,
        action=action,
        cmd_id=cmd_id,
    )
    details = msgspec.structs.asdict(note)
    with conn.transaction():
        # The command's row first: the note only wakes the controller, the row is what the
        # operator follows (and what a controller sends when the note is lost).
        insert_pending(
            conn,
            CommandRecord(
                cmd_id=cmd_id,
                device_id=device_id,
                action=action,
                priority="manual",
                source=op.actor,
                ttl_s=ttl_s or OVERRIDE_TTL_S,
                sent_at=datetime.now(UTC),
                level=level,
                district_code=row["district_code"],
            ),
        )
        notify(conn, note)
        log_access(
            conn,
            actor=op.actor,
            action=f"lamp.{action}",
            subject_kind="lamp",
            subject_id=device_id,
            details=details,
        )
    return OverrideOut(accepted=True, **details, status="pending", status_url=f"/v1/commands/{cmd_id}")


@router.post("/v1/lamps/{device_id}/override", status_code=202, summary="Manual override (maintenance)")
def lamp_override(device_id: str, body: OverrideIn, op: CurrentOperator, conn: Db) -> OverrideOut:
    """Set a lamp's level for a while; the controller sends the command and the lamp falls back by itself."""
    return _override(conn, op, device_id, "set_level", body.level, body.duration_s)


@router.delete("/v1/lamps/{device_id}/override", status_code=202, summary="Clear a manual override")
def lamp_override_clear(device_id: str, op: CurrentOperator, conn: Db) -> OverrideOut:
    """End the operator's override now."""
    return _override(conn, op, device_id, "clear", None, 0)


@router.get("/v1/walkers", summary="Walks in progress as anonymous dots")
def walkers(op: CurrentOperator, conn: Db) -> WalkersOut:
    """The latest position of each walk in progress (no ids; rounded to ~10 m). Residents'
    positions: refused to maintenance (lamps need no walkers), and every read is audited."""
    require_role(op, *POSITION_ROLES)
    rows = active_walkers(conn, visible_districts(op))
    log_access(
        conn,
        actor=op.actor,
        action="read_walkers",
        subject_kind="walkers",
        subject_id=",".join(visible_districts(op) or ["all"]),
        details={"walkers": len(rows)},
    )
    return WalkersOut(
        walkers=[
            WalkerOut(
                lat=round(r["lat"], 4), lon=round(r["lon"], 4), district=r["district_code"], ts=_iso(r["ts"])
            )
            for r in rows
        ]
    )
