"""Alert values: kinds, severities, states, places, positions, events and the alert itself.

Everything here is a frozen value. Times are timezone-aware datetimes, normalised to UTC on
construction; a naive datetime is refused, because a naive "now" from a KST wall clock would
silently shift every escalation by nine hours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from alerts._errors import InvalidAlertData


class AlertKind(StrEnum):
    """What raised the alert."""

    SOS = "sos"
    LAMP_FAULT = "lamp_fault"
    DEVICE_OFFLINE = "device_offline"
    MASS_OUTAGE = "mass_outage"
    TAMPER = "tamper"
    STORAGE = "storage"  # a storage job (rollups, retention, columnstore) failed or stalled
    DATA_LOSS = "data_loss"  # device messages never reached ingest (sequence gaps)


class Severity(StrEnum):
    """CAP 1.2 severity values (OASIS CAP 1.2, section 3.2.2, <severity>)."""

    EXTREME = "Extreme"
    SEVERE = "Severe"
    MODERATE = "Moderate"
    MINOR = "Minor"


# CAP 1.2 defines Severe as "significant threat to life or property" and Extreme as
# "extraordinary threat": a resident's SOS is the former until an operator learns more.
# A tampered lamp or a dark neighbourhood is a moderate risk; one broken lamp is minor.
DEFAULT_SEVERITY: dict[AlertKind, Severity] = {
    AlertKind.SOS: Severity.SEVERE,
    AlertKind.TAMPER: Severity.MODERATE,
    AlertKind.MASS_OUTAGE: Severity.MODERATE,
    AlertKind.LAMP_FAULT: Severity.MINOR,
    AlertKind.DEVICE_OFFLINE: Severity.MINOR,
    AlertKind.STORAGE: Severity.MINOR,
    AlertKind.DATA_LOSS: Severity.MINOR,
}

DEVICE_KINDS = frozenset({AlertKind.LAMP_FAULT, AlertKind.DEVICE_OFFLINE, AlertKind.TAMPER})


class AlertState(StrEnum):
    """Lifecycle states; `resolved` and `cancelled` are terminal."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True for states no action leads out of."""
        return self not in ACTIVE_STATES

    @property
    def is_active(self) -> bool:
        """True for the states an alert is in until it is resolved or cancelled (`ACTIVE_STATES`)."""
        return self in ACTIVE_STATES


# The one definition of an "active" alert: open, acknowledged or dispatched (not yet resolved or
# cancelled). The store selects active rows with it (`store.alerts.active_clause`), the services
# and the console's lists follow it through `AlertState.is_active` / `Alert.is_active`.
ACTIVE_STATES: tuple[AlertState, ...] = (AlertState.OPEN, AlertState.ACKNOWLEDGED, AlertState.DISPATCHED)


def is_active_state(state: str) -> bool:
    """True when a stored status (``"open"``, ``"resolved"``, ...) names an active state."""
    return state in ACTIVE_STATES


class EventAction(StrEnum):
    """What an event in the timeline records."""

    CREATED = "created"
    ACKNOWLEDGED = "acknowledged"
    DISPATCHED = "dispatched"
    RESOLVED = "resolved"
    CANCELLED = "cancelled"
    REPEATED = "repeated"  # the same SOS pressed again, or the same fault reported again
    POSITION = "position"  # a new position in the SOS track
    LAMPS_ADDED = "lamps_added"  # a mass outage grew
    ESCALATED = "escalated"  # details["escalation"] names the EscalationKind
    LAMPS_CONFIRMED = "lamps_confirmed"  # SOS blink: lamps that acked, did not, or were added
    CALL_PLACED = "call_placed"  # an operator calls the resident back (details["channel"]: tel, pbx)
    CALL_ANSWERED = "call_answered"  # the resident answered the call placed last
    CALL_NO_ANSWER = "call_no_answer"  # nobody answered it (rang out, busy, refused)
    GUARD_ACKNOWLEDGED = "guard_acknowledged"  # a guard the SOS was sent to is on the way
    GUARD_ARRIVED = "guard_arrived"  # that guard is at the SOS's place


def require_aware(value: datetime, name: str) -> datetime:
    """Return `value` in UTC, or raise InvalidAlertData if it is naive."""
    if not isinstance(value, datetime):
        raise InvalidAlertData(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidAlertData(f"{name} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


def _check_lat_lon(lat: float, lon: float) -> None:
    # NaN fails both comparisons, so it is refused here too.
    if not (-90.0 <= lat <= 90.0) or not (-180.0 <= lon <= 180.0):
        raise InvalidAlertData(f"invalid coordinates lat={lat!r} lon={lon!r}")


@dataclass(frozen=True, slots=True)
class NearestLamp:
    """A lamp near the alert's position, as the operator will read it."""

    lamp_id: str
    lamp_number: str  # the number painted on the pole, e.g. "11020-03-0042"
    distance_m: float
    address: str = ""  # the pole's road address (else lot address) from the lamp register


@dataclass(frozen=True, slots=True)
class Place:
    """Where an alert is: the point and what `geo` says about it (kept here so `alerts` stands alone)."""

    lat: float
    lon: float
    district_code: str = ""  # 5-digit code, e.g. "11140"; empty when unknown
    district_name: str = ""  # Korean, e.g. "중구"
    dong_code: str = ""
    dong_name: str = ""  # Korean, e.g. "소공동"
    inside: bool = True  # False: outside Seoul's service area
    neighbours: tuple[str, ...] = ()  # district codes within the border distance
    nearest_lamps: tuple[NearestLamp, ...] = ()
    district_name_en: str = ""  # e.g. "Jung-gu"; falls back to the Korean name
    dong_name_en: str = ""  # e.g. "Sogong-dong"
    address: str = (
        ""  # road address of the nearest lamp (the lamp register), e.g. "서울특별시 중구 을지로 170"
    )

    def __post_init__(self) -> None:
        _check_lat_lon(self.lat, self.lon)


@dataclass(frozen=True, slots=True)
class AreaNames:
    """A district's and a neighbourhood's codes and names, as the gazetteer gives them."""

    district_code: str = ""
    district_name: str = ""
    district_name_en: str = ""
    dong_code: str = ""
    dong_name: str = ""
    dong_name_en: str = ""


AreaNamer = Callable[[float, float, str, str], AreaNames]
"""(lat, lon, district_code, dong_code) -> the names of the area (the codes when known, else the
point decides); the services build one from the gazetteer and pass it in."""


def named_place(place: Place, namer: AreaNamer | None, *, whole_district: bool = False) -> Place:
    """``place`` with the district and neighbourhood codes and names it lacks filled by ``namer``;
    the address is taken from its nearest lamp when it has none. ``whole_district``: the place
    stands for several neighbourhoods (a district's outage), so none of them is named."""
    changes: dict[str, Any] = {}
    if namer is not None and place.inside and not (place.dong_name and place.district_name):
        names = namer(place.lat, place.lon, place.district_code, place.dong_code)
        district_keys = ("district_code", "district_name", "district_name_en")
        dong_keys = () if whole_district else ("dong_code", "dong_name", "dong_name_en")
        for key in (*district_keys, *dong_keys):
            if not getattr(place, key) and getattr(names, key):
                changes[key] = getattr(names, key)
    if not place.address:
        nearest = sorted(place.nearest_lamps, key=lambda lamp: lamp.distance_m)
        address = next((lamp.address for lamp in nearest if lamp.address), "")
        if address:
            changes["address"] = address
    return dataclasses.replace(place, **changes) if changes else place


def device_place_of(
    place: Place, device_id: str, lamp_number: str | None, address: str | None, namer: AreaNamer | None
) -> Place:
    """A device alert's place: the device itself as the lamp to name (its number on the pole, its
    address, 0 m), and the area's names."""
    lamp = NearestLamp(
        lamp_id=device_id, lamp_number=lamp_number or "", distance_m=0.0, address=address or ""
    )
    lamps = place.nearest_lamps if place.nearest_lamps else ((lamp,) if lamp_number or address else ())
    return named_place(dataclasses.replace(place, nearest_lamps=lamps), namer)


@dataclass(frozen=True, slots=True)
class Position:
    """One point of an SOS track."""

    lat: float
    lon: float
    at: datetime
    accuracy_m: float | None = None

    def __post_init__(self) -> None:
        _check_lat_lon(self.lat, self.lon)
        object.__setattr__(self, "at", require_aware(self.at, "Position.at"))
        if self.accuracy_m is not None and not (self.accuracy_m >= 0.0):
            raise InvalidAlertData(f"accuracy_m must be >= 0, got {self.accuracy_m!r}")


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an alert's audit trail."""

    at: datetime
    actor: str  # operator id, "resident:<id>", "system", ...
    action: EventAction
    note: str = ""
    details: tuple[tuple[str, str], ...] = ()  # e.g. (("unit", "중부서 112-3"),)

    def __post_init__(self) -> None:
        object.__setattr__(self, "at", require_aware(self.at, "Event.at"))

    def detail(self, key: str) -> str | None:
        """The value of one detail, or None."""
        for k, v in self.details:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert and its whole history; transitions return a new Alert."""

    id: str
    kind: AlertKind
    severity: Severity
    state: AlertState
    created_at: datetime
    place: Place
    source_id: str  # the resident for an SOS, the device for device alerts, the dong for an outage
    track: tuple[Position, ...] = ()  # SOS positions, oldest first
    device_ids: tuple[str, ...] = ()  # device alerts and mass outages (the lamps gone dark)
    fault_code: str = ""
    count: int = 1  # SOS presses or fault reports merged into this alert
    timeline: tuple[Event, ...] = field(default=())
    areas: tuple[str, ...] = ()  # a mass outage's neighbourhoods (dong codes), sorted

    def __post_init__(self) -> None:
        if not self.id:
            raise InvalidAlertData("alert id must not be empty")
        object.__setattr__(self, "created_at", require_aware(self.created_at, "Alert.created_at"))
        if self.count < 1:
            raise InvalidAlertData(f"alert {self.id}: count must be >= 1, got {self.count}")

    @property
    def is_active(self) -> bool:
        """True until the alert is resolved or cancelled (`ACTIVE_STATES`)."""
        return self.state.is_active

    @property
    def last_position(self) -> tuple[float, float]:
        """The latest known (lat, lon): the last track point, else the place."""
        if self.track:
            return self.track[-1].lat, self.track[-1].lon
        return self.place.lat, self.place.lon

    @property
    def acknowledged_at(self) -> datetime | None:
        """When it was first acknowledged (explicitly or by a dispatch), or None."""
        for event in self.timeline:
            if event.action is EventAction.ACKNOWLEDGED:
                return event.at
        return None


def with_event(alert: Alert, event: Event, **changes: Any) -> Alert:
    """A copy of `alert` with `event` appended to its timeline and `changes` applied."""
    return dataclasses.replace(alert, timeline=(*alert.timeline, event), **changes)


def new_alert(
    *,
    alert_id: str,
    kind: AlertKind,
    place: Place,
    source_id: str,
    now: datetime,
    actor: str = "system",
    note: str = "",
    severity: Severity | None = None,
    track: tuple[Position, ...] = (),
    device_ids: tuple[str, ...] = (),
    fault_code: str = "",
) -> Alert:
    """A new open alert whose timeline starts with a `created` event."""
    created = require_aware(now, "now")
    return Alert(
        id=alert_id,
        kind=kind,
        severity=severity if severity is not None else DEFAULT_SEVERITY[kind],
        state=AlertState.OPEN,
        created_at=created,
        place=place,
        source_id=source_id,
        track=track,
        device_ids=device_ids,
        fault_code=fault_code,
        timeline=(Event(at=created, actor=actor, action=EventAction.CREATED, note=note),),
    )


def _distance_text(distance_m: float) -> str:
    return f"{round(distance_m)} m"


def place_in_words(place: Place, language: str = "ko", max_lamps: int = 3) -> str:
    """The place as an operator reads it on the phone: district, neighbourhood, road address and the
    numbers on the nearest poles, e.g.
    "중구 을지로동, 서울특별시 중구 을지로 170 부근, 보안등 중구-을지-0001 (12 m)"."""
    korean = language.lower().startswith("ko")
    if korean:
        area = " ".join(x for x in (place.district_name, place.dong_name) if x)
        lamp_word = "보안등"
        outside = "서울시 관할 구역 밖"
        near = f"{place.address} 부근" if place.address else ""
    else:
        district = place.district_name_en or place.district_name
        dong = place.dong_name_en or place.dong_name
        area = ", ".join(x for x in (district, dong) if x)
        lamp_word = "security light"
        outside = "outside the Seoul service area"
        near = f"near {place.address}" if place.address else ""
    parts: list[str] = []
    if not place.inside:
        parts.append(f"{outside} ({place.lat:.5f}, {place.lon:.5f})")
        if area:
            parts.append(area)
    else:
        parts.append(area or f"{place.lat:.5f}, {place.lon:.5f}")
    if near:
        parts.append(near)
    lamps = sorted(place.nearest_lamps, key=lambda lamp: lamp.distance_m)[:max_lamps]
    if lamps:
        listed = ", ".join(
            f"{lamp.lamp_number or lamp.lamp_id}"
            + (f" ({_distance_text(lamp.distance_m)})" if lamp.distance_m else "")
            for lamp in lamps
        )
        parts.append(f"{lamp_word} {listed}")
    return ", ".join(parts)
