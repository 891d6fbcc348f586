"""The wake-ups between services: PostgreSQL ``NOTIFY`` channels and their typed payloads.

The durable record is always a row; a note on one of these channels is only a wake-up sent in
the same transaction (PostgreSQL delivers it at commit, never for a rolled-back change). A
service that was down re-reads the rows when it starts, so a lost note delays work but never
loses it. Every note is a frozen ``msgspec`` struct, encoded and decoded here and nowhere else:
the API (and ingest, for alerts) writes them with `notify` (or, for a batch of walk positions,
through `store.walkpositions`, which frames the entries with `POSITIONS_HEAD`/`POSITIONS_TAIL`),
the controller and the API's stream hub read them with `decode`, which raises `BadNote` for a
payload it cannot read.

Channels (PostgreSQL caps a payload at 8000 bytes; all of these are small)::

    sl_alert   AlertNote      every change of an alert (created, acknowledged, escalated, ...)
               {"alert_id", "kind", "state", "districts": [...], "action"}
    sl_walk    WalkStarted / WalkMoved / WalkEnded    a resident's walk ("op": "start" |
               "position" | "end"), {"op", "walk_id", "district", "lat", "lon", "accuracy_m",
               "heading_deg", "speed_mps", "ts_ms", "lamps": [lamp ids] | null}
               WalkPositions  a batch of walk positions, their rows written in the same
               statement: {"op": "positions", "positions": [[walk_id, ts_ms, lat, lon,
               accuracy_m, heading_deg, speed_mps, district, [lamp ids] | null], ...]}
    sl_lamp    LampNote       an operator's manual override for the controller to send, its
               ``pending`` row written in the same transaction (``cmd_id``)
               {"device_id", "district", "level", "ttl_s", "source", "action", "cmd_id"}
    sl_operator  (plain text) the username whose account or sessions changed, for the API's live
               streams of that operator (`notify_operator`; not a struct: the name is the note)

A position's lamp ids are the API's ``geo.lamps_for_walker`` answer (what the resident was told);
the controller uses them when it trusts the heading instead of computing them again.
"""

from __future__ import annotations

from typing import Any, Final, Literal, TypeAlias

import msgspec
from msgspec import Struct

from store.types import Conn

ALERT_CHANNEL: Final = "sl_alert"
WALK_CHANNEL: Final = "sl_walk"
LAMP_CHANNEL: Final = "sl_lamp"
CHANNELS: Final = (ALERT_CHANNEL, WALK_CHANNEL, LAMP_CHANNEL)
OPERATOR_CHANNEL: Final = "sl_operator"

# A manual override with no time to live of its own holds for an hour.
OVERRIDE_TTL_S = 3600


class BadNote(ValueError):
    """A payload that is not a note of its channel (or a channel nobody reads)."""


class AlertNote(Struct, frozen=True):
    """An alert changed; ``districts`` are its centres (empty: re-read the row to know)."""

    alert_id: str
    kind: str | None = None
    state: str | None = None
    districts: tuple[str, ...] = ()
    action: str | None = None


class WalkNote(Struct, frozen=True, tag_field="op"):
    """A walk started, moved or ended (the position, when there is one, is also a row)."""

    walk_id: str
    district: str | None = None  # None: the API could not place the position in a district
    lat: float | None = None
    lon: float | None = None
    accuracy_m: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None
    ts_ms: int | None = None
    lamps: tuple[str, ...] | None = None  # the API's answer for the position (None: not computed)


class WalkStarted(WalkNote, frozen=True, tag="start"):
    """A walk started (at its first position)."""


class WalkMoved(WalkNote, frozen=True, tag="position"):
    """One position of a walk (the API sends positions in batches, `WalkPositions`)."""


class WalkEnded(WalkNote, frozen=True, tag="end"):
    """A walk ended (by its resident, or replaced by a new one)."""


class PositionNote(Struct, frozen=True, array_like=True):
    """One position of a `WalkPositions` batch; ``ts_ms`` is its row's ``ts`` in whole ms, so the
    controller's verdict finds the row by walk id and timestamp."""

    walk_id: str
    ts_ms: int
    lat: float
    lon: float
    accuracy_m: float | None = None
    heading_deg: float | None = None
    speed_mps: float | None = None
    district: str | None = None
    lamps: tuple[str, ...] | None = None  # None: not computed (the controller computes them)


class WalkPositions(Struct, frozen=True, tag_field="op", tag="positions", omit_defaults=True):
    """Walk positions stored in one statement, in the order they were queued.

    ``unreadable`` is never sent: `decode` sets it to the number of entries it could not read
    and left out (the rest of the batch is still acted on)."""

    positions: tuple[PositionNote, ...]
    unreadable: int = 0


class LampNote(Struct, frozen=True):
    """An operator's manual override of one lamp, for the controller to send."""

    device_id: str
    district: str
    level: int | None = None  # required for set_level
    ttl_s: int = OVERRIDE_TTL_S
    source: str = "operator"
    action: Literal["set_level", "clear"] = "set_level"
    cmd_id: str | None = None  # its ``pending`` row in ``commands`` (None: no row, one is made)

    def __post_init__(self) -> None:
        if self.action == "set_level" and self.level is None:
            raise ValueError("set_level needs a level")


Note: TypeAlias = AlertNote | WalkStarted | WalkMoved | WalkEnded | WalkPositions | LampNote

_CHANNEL_OF: dict[type[Any], str] = {
    AlertNote: ALERT_CHANNEL,
    WalkStarted: WALK_CHANNEL,
    WalkMoved: WALK_CHANNEL,
    WalkEnded: WALK_CHANNEL,
    WalkPositions: WALK_CHANNEL,
    LampNote: LAMP_CHANNEL,
}
_ENCODER = msgspec.json.Encoder()
_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {
    ALERT_CHANNEL: msgspec.json.Decoder(AlertNote),
    WALK_CHANNEL: msgspec.json.Decoder(WalkStarted | WalkMoved | WalkEnded | WalkPositions),
    LAMP_CHANNEL: msgspec.json.Decoder(LampNote),
}


class _RawPositions(Struct, frozen=True, tag_field="op", tag="positions"):
    positions: list[msgspec.Raw]


_RAW_POSITIONS = msgspec.json.Decoder(_RawPositions)
_POSITION = msgspec.json.Decoder(PositionNote)

# A batch of positions is framed in SQL (one notification per ~7 kB of entries): what goes before
# its entries, joined by commas, and what goes after them.
_HEAD, _TAIL = _ENCODER.encode(WalkPositions(positions=())).decode().split("[]")
POSITIONS_HEAD: Final = _HEAD + "["
POSITIONS_TAIL: Final = "]" + _TAIL


def channel_of(note: Note) -> str:
    """The channel a note travels on."""
    return _CHANNEL_OF[type(note)]


def encode(note: Note) -> str:
    """The payload of a note (JSON)."""
    return _ENCODER.encode(note).decode()


def encode_position(position: PositionNote) -> bytes:
    """One entry of a `WalkPositions` batch (JSON), as `store.walkpositions` frames it."""
    return _ENCODER.encode(position)


def notify(conn: Conn, note: Note) -> None:
    """Queue the note on its channel; delivered when the surrounding transaction commits."""
    conn.execute("SELECT pg_notify(%s, %s)", (channel_of(note), encode(note)))


def notify_operator(conn: Conn, username: str) -> None:
    """Announce that `username`'s account or sessions changed (delivered at commit)."""
    conn.execute("SELECT pg_notify(%s, %s)", (OPERATOR_CHANNEL, username))


def to_dict(note: Note) -> dict[str, Any]:
    """A note as the plain dict its payload encodes (lists for tuples), e.g. to forward it as JSON."""
    data: dict[str, Any] = msgspec.to_builtins(note)
    return data


def decode(channel: str, payload: str | bytes) -> Note:
    """The note of a payload received on `channel`; `BadNote` when it is not one.

    A batch of walk positions with some unreadable entries is still a note: those entries are
    left out and counted in its ``unreadable``."""
    decoder = _DECODERS.get(channel)
    if decoder is None:
        raise BadNote(f"no notes on channel {channel!r}")
    try:
        note: Note = decoder.decode(payload)
        return note
    except msgspec.ValidationError as exc:
        if channel == WALK_CHANNEL:
            lenient = _lenient_positions(payload)
            if lenient is not None:
                return lenient
        raise BadNote(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise BadNote(str(exc)) from None


def _lenient_positions(payload: str | bytes) -> WalkPositions | None:
    """A positions batch read entry by entry (None: not even its envelope is readable)."""
    try:
        raw = _RAW_POSITIONS.decode(payload)
    except msgspec.MsgspecError:
        return None
    good: list[PositionNote] = []
    for entry in raw.positions:
        try:
            good.append(_POSITION.decode(entry))
        except msgspec.MsgspecError:
            continue
    return WalkPositions(positions=tuple(good), unreadable=len(raw.positions) - len(good))
