"""The API's wire contract: request bodies (``...In``), validated once at the boundary (STYLE.md 4):
NaN, infinities and out-of-range values are refused with a message naming the field; and the
answers (``...Out``), which the endpoints return and the OpenAPI schema documents.

An answer's fields are in the order the clients read them; times are ISO 8601 strings as the
endpoints write them (``datetime.isoformat()``, ``+00:00``), so the JSON stays what the console
(api/static) and the apps have always read. Free-form parts (an alert's own dict, its place,
audit details) stay dicts.

Over 500 lines on purpose: the whole wire contract in one file (the brief of the layers keeps
every body and answer here), one small model after another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Lat = Annotated[float, Field(ge=-90.0, le=90.0, allow_inf_nan=False, description="WGS 84 latitude, degrees")]
Lon = Annotated[
    float, Field(ge=-180.0, le=180.0, allow_inf_nan=False, description="WGS 84 longitude, degrees")
]
# A phone's GPS reports accuracy in metres; 100 km is no position at all.
Accuracy = Annotated[
    float, Field(ge=0.0, le=100_000.0, allow_inf_nan=False, description="horizontal accuracy, metres")
]
Heading = Annotated[
    float, Field(ge=0.0, le=360.0, allow_inf_nan=False, description="direction of travel, degrees from north")
]
# 100 m/s is far beyond anyone on foot or a bicycle; the controller judges plausibility further.
Speed = Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False, description="speed, metres per second")]
Text = Annotated[str, Field(max_length=1000)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


IsoTime = Annotated[str, Field(description="ISO 8601 time", json_schema_extra={"format": "date-time"})]


class WalkPositionIn(_Body):
    """A resident's position during a safe walk."""

    lat: Lat
    lon: Lon
    accuracy_m: Accuracy
    heading_deg: Heading | None = None
    speed_mps: Speed | None = None


class SosIn(_Body):
    """An SOS from the Safety app (button or shake)."""

    lat: Lat
    lon: Lon
    accuracy_m: Accuracy | None = None
    walk_id: Annotated[str, Field(min_length=1, max_length=64)] | None = None


class LoginIn(_Body):
    """An operator's credentials."""

    # PostgreSQL text cannot hold NUL: refuse it here (422) rather than fail the lookup (500).
    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]
    password: Annotated[str, Field(min_length=1, max_length=256)]


class NoteIn(_Body):
    """An optional note for an alert action."""

    note: Text = ""


class DispatchIn(_Body):
    """Who was sent (e.g. a police unit) and a note."""

    unit: Annotated[str, Field(max_length=100)] = ""
    note: Text = ""


class ResolveIn(_Body):
    """How the incident ended, in words."""

    outcome: Annotated[str, Field(max_length=200)] = ""
    note: Text = ""


class OverrideIn(_Body):
    """A maintenance override of one lamp's level for a while."""

    level: Annotated[int, Field(ge=0, le=100, description="lamp output, percent")]
    duration_s: Annotated[
        int, Field(ge=1, le=86_400, description="how long before the lamp's schedule resumes")
    ]


class OperatorIn(_Body):
    """An operator account (admin only)."""

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
    password: Annotated[str, Field(min_length=8, max_length=256)]
    role: Annotated[str, Field(pattern=r"^(district|city|maintenance|admin)$")]
    district: Annotated[str, Field(pattern=r"^[0-9]{5}$")] | None = None
    display_name: Annotated[str, Field(max_length=100)] | None = None


# --------------------------------------------------------------------------- residents' answers


class RegisteredOut(_Out):
    """A new resident: the pseudonymous id and the install token, shown only this once."""

    resident_id: str
    token: str


class WalkStartedOut(_Out):
    """A walk started: the lamps brightened ahead, and the resident's walks it ended."""

    walk_id: str
    district: str | None
    lamps: list[str]
    ended: list[str]


class WalkPositionOut(_Out):
    """A position stored: the lamps brightened ahead."""

    walk_id: str
    district: str | None
    lamps: list[str]


class WalkEndedOut(_Out):
    """A walk ended (``already_ended``: it had ended before)."""

    walk_id: str
    status: str
    already_ended: bool


class SosOut(_Out):
    """An SOS accepted (202), or folded into the resident's open one over the limit (429, with
    ``detail``)."""

    alert_id: str
    district: str
    status: str
    detail: str | None = Field(default=None, description="only over the limit (429)")


class SosStatusOut(_Out):
    """What the resident needs to know of their SOS (no operator names)."""

    alert_id: str
    status: str
    district: str | None
    acknowledged: bool
    dispatched: bool
    unit: str | None
    resolved: bool
    cancelled: bool
    created_at: IsoTime
    updated_at: IsoTime


class SosCancelledOut(_Out):
    """The resident's SOS after their cancel."""

    alert_id: str
    status: str


# --------------------------------------------------------------------------- operators' answers


class LoginOut(_Out):
    """A session token with its expiry and the account's role."""

    token: str
    expires_at: IsoTime
    role: str
    district: str | None
    username: str


class MeOut(_Out):
    """The logged-in operator and the districts they see (null: all)."""

    username: str
    role: str
    district: str | None
    districts: list[str] | None
    district_names: dict[str, tuple[str, str]] = Field(description="code -> (Korean, English) name")
    expires_at: IsoTime


class AlertSummary(_Out):
    """An alert as the lists and the live stream show it (no track: that is read, audited, in the
    alert's detail)."""

    id: str
    kind: str
    state: str
    severity: str | None
    created_at: IsoTime | None
    updated_at: IsoTime | None
    districts: list[str]
    place: dict[str, Any] | None
    place_text_ko: str | None
    place_text_en: str | None
    count: int
    device_ids: list[str]
    areas: list[str] = Field(
        default_factory=list,
        description="a mass outage's neighbourhoods (dong codes); a district's lists several",
    )
    last_event: dict[str, Any] | None
    allowed_actions: list[str]
    event_id: int
    suspected_burst: bool = Field(description="one of 2+ residents' SOS from one source within minutes")
    burst_group: str | None


class AlertListOut(_Out):
    """Alerts newest first, and the newest event id (a stream's ``last_event_id``)."""

    alerts: list[AlertSummary]
    event_id: int


class TrackPointOut(_Out):
    """A point of an SOS track."""

    ts: IsoTime
    lat: float
    lon: float
    accuracy_m: float | None
    coarsened: bool


class AlertEventOut(_Out):
    """An entry of an alert's audit trail."""

    id: int
    alert_id: str
    ts: IsoTime
    actor: str
    action: str
    note: str | None
    details: dict[str, Any]


class AlertDetailOut(_Out):
    """The whole alert: its dict (place, timeline, ...), track and audit trail."""

    alert: dict[str, Any]
    state: str
    allowed_actions: list[str]
    acknowledged_by: str | None
    track: list[TrackPointOut]
    events: list[AlertEventOut]
    event_id: int
    callback: CallbackInfoOut | None = None


class CallbackInfoOut(_Out):
    """What the console may offer for calling an SOS's resident back (never the number itself)."""

    phone_registered: bool
    pbx: bool = Field(description="the centre's telephone system can place the call (`/callback/dial`)")


class PhoneIn(_Body):
    """A resident's phone number for call-back, in any usual Korean writing (010-1234-5678, +82 10 ...)."""

    number: Annotated[str, Field(min_length=1, max_length=40)]


class PhoneOut(_Out):
    """The number as stored (E.164), to its owner only."""

    number: str
    replaced: bool


class PhoneRevealOut(_Out):
    """An SOS resident's number, for the operator handling it (audited)."""

    alert_id: str
    number: str
    tel: str


class CallOutcomeIn(_Body):
    """A step of a call-back placed from the console's tel: link: placed, answered or no_answer."""

    outcome: Literal["placed", "answered", "no_answer"]
    note: Text = ""


class CallRecordedOut(_Out):
    """The call-back step as recorded in the alert's timeline."""

    alert_id: str
    outcome: str
    channel: str
    call_id: str | None = None


class AlertActionOut(_Out):
    """An alert after an operator's action."""

    alert_id: str
    state: str
    allowed_actions: list[str]


class AuditEntryOut(_Out):
    """Who read or changed which resident's (or account's, lamp's) data."""

    id: int
    ts: IsoTime
    actor: str
    action: str
    subject_kind: str
    subject_id: str
    details: dict[str, Any]


class AuditOut(_Out):
    """The privacy audit log, newest first."""

    entries: list[AuditEntryOut]


class OperatorAccountOut(_Out):
    """An operator account (never its password hash)."""

    username: str
    role: str
    district_code: str | None
    display_name: str | None
    disabled: bool
    created_at: IsoTime


class OperatorsOut(_Out):
    """Every operator account."""

    operators: list[OperatorAccountOut]


class OperatorSavedOut(_Out):
    """An account created or updated."""

    username: str
    role: str
    district: str | None


class OperatorDisabledOut(_Out):
    """An account disabled or enabled again."""

    username: str
    disabled: bool


# --------------------------------------------------------------------------- lamps' answers


class AreaPropertiesOut(_Out):
    """A district's or neighbourhood's code and names (Korean, English)."""

    code: str
    name: str
    name_eng: str
    district_code: str


class AreaFeatureOut(_Out):
    """A district or neighbourhood as a GeoJSON feature (its polygon simplified to ~20 m)."""

    type: Literal["Feature"] = "Feature"
    id: str
    properties: AreaPropertiesOut
    geometry: dict[str, Any] = Field(description="GeoJSON Polygon or MultiPolygon, longitude first")


class MapTilesOut(_Out):
    """A raster tile server (Leaflet's URL template)."""

    url_template: str = Field(description="``{z}``/``{x}``/``{y}`` (``{s}`` subdomains a-c, ``{r}`` @2x)")
    attribution: str
    max_zoom: int


class MapOut(_Out):
    """The console map's basemap."""

    tiles: MapTilesOut | None = Field(
        description="the tile server (``STREETLIGHT_MAP_TILES``); null: none configured, the district "
        "and neighbourhood polygons are the base layer"
    )


class AreasOut(_Out):
    """Districts or one district's neighbourhoods, as a GeoJSON feature collection."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[AreaFeatureOut]


class LampOverrideOut(_Out):
    """A command in force on a lamp (never whose walk or SOS it serves)."""

    cmd_id: str
    action: str
    level: int | None
    priority: str
    expires_at: IsoTime | None
    status: str


class LampPropertiesOut(_Out):
    """A lamp's live state (``state``: offline, fault, blinking, brightened or online)."""

    device_id: str
    kind: str
    lamp_number: str | None  # the number on the pole (the lamp register's 보안등위치명)
    address: str | None  # road address, else lot address (the lamp register)
    lamp_count: int | None  # lamps on the pole (설치개수)
    district: str
    dong: str | None  # the neighbourhood's name (Korean)
    dong_en: str | None
    dong_code: str | None  # the neighbourhood's code in the gazetteer
    state: str
    online: bool
    level: int | None
    faults: list[str]
    last_seen: IsoTime | None
    overrides: list[LampOverrideOut]


class PointOut(_Out):
    """A GeoJSON point (longitude, latitude)."""

    type: Literal["Point"] = "Point"
    coordinates: list[float]


class LampFeatureOut(_Out):
    """A lamp as a GeoJSON feature (no geometry for a lamp without a position)."""

    type: Literal["Feature"] = "Feature"
    id: str
    geometry: PointOut | None
    properties: LampPropertiesOut


class LampsOut(_Out):
    """The lamps an operator may see, as a GeoJSON feature collection."""

    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[LampFeatureOut]


class LampDetailPropertiesOut(LampPropertiesOut):
    """A lamp's live state with its position and model."""

    lat: float | None
    lon: float | None
    model: str | None


class LampHourOut(_Out):
    """One hour of a lamp's figures (from the hourly aggregate)."""

    bucket: IsoTime
    samples: int
    level_min: int | None
    level_avg: float | None
    level_max: int | None
    power_avg_w: float | None
    energy_wh: float
    uptime_s: int


CommandStatus = Literal["pending", "sent", "applied", "rejected", "expired", "unanswered", "undelivered"]


class CommandOut(_Out):
    """An operator's command to a lamp and what became of it.

    ``status``: ``pending`` (written, not yet sent by a controller), ``sent`` (on its way, waiting
    for the lamp's answer), ``applied``, ``rejected`` (``reason``: the lamp's), ``expired`` (it
    reached the lamp too late, or ``reason`` ``not_sent``: its time ran out before a controller
    could send it), ``unanswered`` (sent and sent again, the lamp never answered), ``undelivered``
    (never sent; ``reason`` ``unknown_device`` or ``offline``). The last five are final."""

    cmd_id: str
    device_id: str
    district: str | None
    action: str
    level: int | None
    source: str = Field(description="the operator who sent it")
    ttl_s: int
    asked_at: IsoTime = Field(description="when it was asked for, or last sent")
    expires_at: IsoTime
    status: CommandStatus
    reason: str | None
    answered_at: IsoTime | None = Field(description="when the lamp answered or the command was settled")
    effective_level: int | None = Field(description="the lamp's output after it, from its ack")
    attempts: int
    final: bool = Field(description="true once the status will not change any more")


class CommandsOut(_Out):
    """A lamp's latest operators' commands, newest first."""

    commands: list[CommandOut]


class LampDetailOut(_Out):
    """One lamp and its last 24 hours, with the operators' latest commands to it."""

    lamp: LampDetailPropertiesOut
    hours: list[LampHourOut]
    commands: list[CommandOut] = Field(default_factory=list)


class OverrideOut(_Out):
    """An override handed to the controller (``level`` null when clearing): its command, pending,
    and where to follow it (``status_url``)."""

    accepted: bool
    device_id: str
    district: str
    level: int | None
    ttl_s: int
    source: str
    action: str
    cmd_id: str
    status: CommandStatus
    status_url: str


class WalkerOut(_Out):
    """A walk in progress as an anonymous dot, rounded to ~10 m."""

    lat: float
    lon: float
    district: str | None
    ts: IsoTime


class WalkersOut(_Out):
    """The latest position of each walk in progress."""

    walkers: list[WalkerOut]


def describe_errors(errors: Sequence[Mapping[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """A validation failure in words (``"lat: Input should be less than or equal to 90"``, one per
    field, ``; ``-joined) and as a list; the answer of the HTTP endpoints (422) and the walkers'
    socket alike. Never the offending input itself: a NaN would make the answer invalid JSON."""
    problems = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    listed = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))}
        for e in errors
    ]
    return "; ".join(problems), listed


# ---------------------------------------------------------------- the operator's working day


class AlertSearchOut(_Out):
    """A page of a history search, newest first; `next_cursor` fetches the next page (null: last)."""

    alerts: list[AlertSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null on the last")


class ShiftActionOut(_Out):
    """One thing an operator did to an alert during the shift (an entry of its timeline)."""

    event_id: int
    at: IsoTime
    alert_id: str
    kind: str
    state: str = Field(description="the alert's state now")
    action: str
    note: str | None
    details: dict[str, Any]
    place_text_ko: str | None
    place_text_en: str | None


class ShiftOperatorOut(_Out):
    """An operator's actions during the shift, oldest first."""

    actor: str
    counts: dict[str, int] = Field(description="actions by name, e.g. {'acknowledged': 3}")
    actions: list[ShiftActionOut]


class HandoverOut(_Out):
    """A shift hand-over: what is open now, what was raised and done in [since, until), by whom."""

    since: IsoTime
    until: IsoTime
    open: list[AlertSummary] = Field(description="active alerts now, SOS first, then newest first")
    open_total: int
    raised: dict[str, int] = Field(description="alerts raised during the shift, by kind")
    operators: list[ShiftOperatorOut]


AlertId = Annotated[str, Field(min_length=1, max_length=200)]


class BulkAckIn(_Body):
    """Maintenance alerts to acknowledge at once (never an SOS), with one note for all."""

    alert_ids: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1, max_length=500)
    ]
    note: Text = ""


class BulkAckItemOut(_Out):
    """What became of one alert of a bulk acknowledgement."""

    alert_id: str
    ok: bool
    state: str | None = Field(description="the alert's state after (null: not found in your districts)")
    error: str | None = Field(description="why it was refused, in words (null when acknowledged)")


class BulkAckOut(_Out):
    """Each alert of the batch in the order given; refused ones say why, the others are applied."""

    acknowledged: int
    refused: int
    results: list[BulkAckItemOut]


class CameraOut(_Out):
    """A camera near an SOS (the camera register, 전국CCTV표준데이터), nearest first."""

    camera_id: str
    management_no: str | None
    distance_m: float
    bearing_deg: float = Field(description="from the camera to the resident, degrees from north")
    facing: str | None = Field(description="촬영방면정보 as published")
    facing_known: bool = Field(description="whether the facing could be read (a direction, 360도, ...)")
    looks_towards: bool | None = Field(description="the resident is inside the camera's view; null: unknown")
    lat: float
    lon: float
    organisation: str | None
    address: str | None
    purpose: str | None
    camera_count: int | None
    phone: str | None
    stream_url: str | None = Field(description="from STREETLIGHT_CCTV_URL_TEMPLATE; null without one")


class AlertCamerasOut(_Out):
    """The cameras within the radius of an alert's latest position."""

    alert_id: str
    position: TrackPointOut | None = Field(description="the latest track position; null: the alert's place")
    lat: float
    lon: float
    radius_m: float
    cameras: list[CameraOut]
