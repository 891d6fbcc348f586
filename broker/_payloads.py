"""Payload schemas of the v1 wire protocol (DESIGN.md §3, docs/protocol.md) and their validation.

Every payload is decoded once, at the boundary, into a frozen ``msgspec.Struct`` in one typed pass
(msgspec was the fastest full validator measured; figures in docs/protocol.md, "Decode speed").
Range and type rules live in the field annotations; rules that join fields (what a lamp's
telemetry must carry, what a ``set_level`` command needs) live in ``__post_init__``, so a struct
built in Python for sending is checked by the same rules as one decoded from the wire. Rules that
need the clock (timestamps from the future) take ``now_ms`` from the caller: no clock is read here.

Any failure is a :class:`PayloadError` whose ``field`` names where and ``reason`` says why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal, TypeAlias

import msgspec
from msgspec import Meta, Struct

from broker._errors import PayloadError

MAX_PAYLOAD_BYTES: Final = 16 * 1024  # issue 2 and the broker limit of issue 7: 16 KiB
MAX_DEPTH: Final = 8  # objects/arrays nested deeper than this are refused (ours nest at most 2)
MAX_FUTURE_MS: Final = 5 * 60 * 1000  # issue 2: a timestamp at most 5 minutes ahead of the receiver
TS_MIN_MS: Final = 1_577_836_800_000  # 2020-01-01T00:00Z: older means a device clock that was never set
TS_MAX_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00Z: keeps ts a plain 64-bit integer of ms
SEQ_MAX: Final = 2**63 - 1  # fits PostgreSQL bigint

# Seoul lies at 37.4-37.7 N, 126.7-127.2 E; the box is South Korea with its islands
# (Marado 33.1 N, Dokdo 131.9 E) so a lamp anywhere in the country validates.
LAT_MIN, LAT_MAX = 33.0, 39.0
LON_MIN, LON_MAX = 124.0, 132.0

TsMs = Annotated[int, Meta(ge=TS_MIN_MS, le=TS_MAX_MS)]
Seq = Annotated[int, Meta(ge=0, le=SEQ_MAX)]
Level = Annotated[int, Meta(ge=0, le=100)]  # percent of full output
# Anchored with \Z: "$" would also accept a trailing newline.
DeviceId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")]
CmdId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")]
Code = Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}\Z")]  # fault codes, e.g. lamp_failure
TokenHash = Annotated[str, Meta(pattern=r"^[0-9a-f]{16,128}\Z")]  # hex digest of the app's beacon token
Label = Annotated[str, Meta(min_length=1, max_length=64)]
Source = Annotated[str, Meta(min_length=1, max_length=128)]
Reason = Annotated[str, Meta(max_length=256)]
Latitude = Annotated[float, Meta(ge=LAT_MIN, le=LAT_MAX)]
Longitude = Annotated[float, Meta(ge=LON_MIN, le=LON_MAX)]
# Physical bounds, generous for a 20-150 W LED luminaire on a 220 V supply (KS C 7658 class lamps):
PowerW = Annotated[float, Meta(ge=0, le=2000)]
VoltageV = Annotated[float, Meta(ge=0, le=300)]
CurrentA = Annotated[float, Meta(ge=0, le=50)]
TempC = Annotated[float, Meta(ge=-50, le=150)]
Lux = Annotated[float, Meta(ge=0, le=200_000)]  # direct sunlight is about 100-120 klx
RssiDbm = Annotated[float, Meta(ge=-130, le=0)]  # BLE receivers bottom out near -100..-120 dBm
BatteryV = Annotated[float, Meta(ge=0, le=15)]
Sightings = Annotated[int, Meta(ge=0, le=100_000)]
TtlS = Annotated[int, Meta(ge=1, le=86_400)]  # at most a day: nothing may stay bright forever
Faults = Annotated[tuple[Code, ...], Meta(max_length=32)]

DeviceKind: TypeAlias = Literal["lamp", "blinker"]
Priority: TypeAlias = Literal["sos", "walk", "manual", "schedule"]
PRIORITY_RANK: Final[Mapping[str, int]] = {"schedule": 0, "manual": 1, "walk": 2, "sos": 3}
Action: TypeAlias = Literal["set_level", "blink", "clear", "config"]
AckStatus: TypeAlias = Literal["applied", "rejected", "expired"]
EventType: TypeAlias = Literal["beacon", "fault", "fault_cleared", "tamper", "power_loss"]
MessageKind: TypeAlias = Literal["birth", "state", "telemetry", "event", "cmd", "ack", "alert"]


def _require(value: object, field: str, why: str) -> None:
    if value is None:
        raise PayloadError(field, f"required {why}")


class Birth(Struct, frozen=True, omit_defaults=True):
    """``sl/v1/{d}/{id}/birth``: who the device is, sent first after every connect."""

    kind: DeviceKind
    firmware: Label
    model: Label
    lat: Latitude
    lon: Longitude
    bdseq: Seq
    paired: DeviceId | None = None
    ts: TsMs | None = None


class State(Struct, frozen=True, omit_defaults=True):
    """``sl/v1/{d}/{id}/state`` (retained): online at connect, offline as the last will."""

    state: Literal["online", "offline"]
    bdseq: Seq
    ts: TsMs | None = None


_LAMP_FIELDS: Final = ("power_w", "voltage_v", "current_a", "temp_c", "lux")
_BLINKER_FIELDS: Final = ("rssi_dbm", "battery_v", "blinking", "sightings")


class Telemetry(Struct, frozen=True, omit_defaults=True):
    """``sl/v1/{d}/{id}/telemetry``: a lamp's (``level`` present) or a blinker's (``rssi_dbm`` present)."""

    ts: TsMs
    seq: Seq
    level: Level | None = None
    power_w: PowerW | None = None
    voltage_v: VoltageV | None = None
    current_a: CurrentA | None = None
    temp_c: TempC | None = None
    lux: Lux | None = None
    faults: Faults = ()
    rssi_dbm: RssiDbm | None = None
    battery_v: BatteryV | None = None
    blinking: bool | None = None
    sightings: Sightings | None = None

    def __post_init__(self) -> None:
        # Runs for every telemetry message: plain attribute tests first, names only on failure.
        if self.level is not None:
            blinker_fields = (self.rssi_dbm, self.battery_v, self.blinking, self.sightings)
            if blinker_fields != (None, None, None, None):
                name = next(n for n in _BLINKER_FIELDS if getattr(self, n) is not None)
                raise PayloadError(name, "a blinker field in lamp telemetry (level is present)")
        elif self.rssi_dbm is None:
            raise PayloadError("level", "required: lamp telemetry carries level, blinker telemetry rssi_dbm")
        elif not (
            self.power_w is None
            and self.voltage_v is None
            and self.current_a is None
            and self.temp_c is None
            and self.lux is None
        ):
            name = next(n for n in _LAMP_FIELDS if getattr(self, n) is not None)
            raise PayloadError(name, "a lamp field in blinker telemetry (level is absent)")

    @property
    def kind(self) -> DeviceKind:
        """``lamp`` or ``blinker``, from the fields present."""
        return "lamp" if self.level is not None else "blinker"


class Event(Struct, frozen=True, omit_defaults=True):
    """``sl/v1/{d}/{id}/event``: a beacon sighting, a fault raised or cleared, tamper, power loss."""

    ts: TsMs
    seq: Seq
    type: EventType
    token_hash: TokenHash | None = None
    rssi_dbm: RssiDbm | None = None
    code: Code | None = None

    def __post_init__(self) -> None:
        if self.type == "beacon":
            _require(self.token_hash, "token_hash", "for a beacon event")
            _require(self.rssi_dbm, "rssi_dbm", "for a beacon event")
        elif self.type in ("fault", "fault_cleared"):
            _require(self.code, "code", f"for a {self.type} event")


class Cmd(Struct, frozen=True, omit_defaults=True):
    """``sl/v1/{d}/{id}/cmd``: an override to add (set_level, blink), remove (clear), or a config change."""

    cmd_id: CmdId
    ts: TsMs
    action: Action
    source: Source
    priority: Priority | None = None
    level: Level | None = None
    ttl_s: TtlS | None = None
    config: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.action in ("set_level", "blink"):
            _require(self.priority, "priority", f"for {self.action}")
            _require(self.ttl_s, "ttl_s", f"for {self.action}: every override expires")
            if self.action == "set_level":
                _require(self.level, "level", "for set_level")
        elif self.action == "config":
            _require(self.config, "config", "for a config command")


class Ack(Struct, frozen=True, omit_defaults=True):
    """``sl/v1/{d}/{id}/ack``: what the device did with a command."""

    cmd_id: CmdId
    ts: TsMs
    status: AckStatus
    effective_level: Level | None = None
    reason: Reason | None = None

    def __post_init__(self) -> None:
        if self.status == "applied":
            _require(self.effective_level, "effective_level", "when status is applied")
        elif self.status == "rejected":
            _require(self.reason, "reason", "when status is rejected")


class _AlertHead(Struct, frozen=True):
    alert_id: Annotated[str, Meta(min_length=1, max_length=128)]
    kind: Label
    status: Label
    district_code: Annotated[str, Meta(pattern=r"^[0-9]{5}\Z")]
    ts: TsMs


class AlertMessage(Struct, frozen=True):
    """``cc/v1/{d}/alerts``: the required head of an alert plus the whole alert object as sent."""

    alert_id: str
    kind: str
    status: str
    district_code: str
    ts: int
    body: dict[str, Any]


Message: TypeAlias = Birth | State | Telemetry | Event | Cmd | Ack | AlertMessage
_Bytes: TypeAlias = bytes | bytearray | memoryview

_BIRTH: Final = msgspec.json.Decoder(Birth)
_STATE: Final = msgspec.json.Decoder(State)
_TELEMETRY: Final = msgspec.json.Decoder(Telemetry)
_EVENT: Final = msgspec.json.Decoder(Event)
_CMD: Final = msgspec.json.Decoder(Cmd)
_ACK: Final = msgspec.json.Decoder(Ack)
_ALERT: Final = msgspec.json.Decoder(dict[str, Any])
_ANY_DECODER: Final = msgspec.json.Decoder()
_ENCODER: Final = msgspec.json.Encoder()
# msgspec's messages end in " - at `$.path`" when the error is inside the document.
_AT_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]+)`$")


def _field_of(path: str | None, name: str | None = None) -> str:
    parts = [p for p in ((path or "").lstrip("."), name) if p]
    return ".".join(parts) or "payload"


def _translate(exc: msgspec.ValidationError) -> PayloadError:
    """Turn msgspec's message into (field, reason); the one place library errors become ours."""
    if isinstance(exc.__cause__, PayloadError):  # raised by a __post_init__ rule
        return exc.__cause__
    m = _AT_PATH.match(str(exc))
    assert m is not None  # the pattern matches any string
    msg, path = m.group("msg"), m.group("path")
    missing = _MISSING.match(msg)
    if missing is not None:
        return PayloadError(_field_of(path, missing.group("name")), "required field is missing")
    if msg == "Number out of range":
        msg = "number out of range (infinite or too large)"
    return PayloadError(_field_of(path), msg[:1].lower() + msg[1:])


_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _with_value(error: PayloadError, payload: _Bytes) -> PayloadError:
    """Add the offending value to the reason (error path only, so the extra decode costs nothing)."""
    if error.field == "payload" or "got" in error.reason or "required" in error.reason:
        return error
    try:
        value: Any = _ANY_DECODER.decode(payload)
        for name, index in _PATH_PART.findall(error.field):
            value = value[name] if name else value[int(index)]
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, LookupError, TypeError):
        return error
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return PayloadError(error.field, f"{error.reason}, got {shown}")


def _depth(value: Any) -> int:
    """Nesting depth of a decoded JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in item)
    return deepest


def _checked_shape(payload: _Bytes) -> bytes:
    """Size, UTF-8 and nesting checks for payloads off the fast path; returns the payload as bytes."""
    size = len(payload)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError("payload", f"{size} bytes, more than the {MAX_PAYLOAD_BYTES} allowed")
    data = payload if isinstance(payload, bytes) else bytes(payload)
    # msgspec skips unknown fields without checking their UTF-8, so check the whole document.
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadError("payload", f"not valid UTF-8 at byte {exc.start}") from exc
    if data.count(b"{") + data.count(b"[") <= MAX_DEPTH:
        return data
    try:
        depth = _depth(_ANY_DECODER.decode(data))
    except RecursionError:
        depth = MAX_DEPTH + 1
    except (msgspec.DecodeError, UnicodeDecodeError):
        return data  # the typed decode reports it with its reason
    if depth > MAX_DEPTH:
        raise PayloadError("payload", f"nested deeper than {MAX_DEPTH} levels")
    return data


def _decode_with(decoder: msgspec.json.Decoder[Any], payload: _Bytes) -> Any:
    # Fast path, a few C calls: small all-ASCII bytes whose bracket count bounds the depth (ours
    # have one or two brackets; brackets inside strings only over-count). Anything else takes the
    # exact checks.
    if (
        type(payload) is not bytes
        or len(payload) > MAX_PAYLOAD_BYTES
        or not payload.isascii()
        or payload.count(b"{") + payload.count(b"[") > MAX_DEPTH
    ):
        payload = _checked_shape(payload)
    try:
        return decoder.decode(payload)
    except msgspec.ValidationError as exc:
        raise _with_value(_translate(exc), payload) from exc
    except msgspec.DecodeError as exc:
        raise PayloadError("payload", f"not valid JSON ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise PayloadError("payload", f"not valid UTF-8 at byte {exc.start}") from exc
    except RecursionError as exc:
        raise PayloadError("payload", f"nested deeper than {MAX_DEPTH} levels") from exc


def _future_ts(ts: int, now_ms: int) -> PayloadError:
    ahead_s = (ts - now_ms) / 1000
    return PayloadError("ts", f"{ahead_s:.0f} s in the future; at most {MAX_FUTURE_MS // 1000} s allowed")


def _decode_struct(decoder: msgspec.json.Decoder[Any], payload: _Bytes, now_ms: int) -> Any:
    msg = _decode_with(decoder, payload)
    ts = msg.ts
    if ts is not None and ts > now_ms + MAX_FUTURE_MS:
        raise _future_ts(ts, now_ms)
    return msg


def decode_birth(payload: _Bytes, now_ms: int) -> Birth:
    """Decode and validate a birth payload; raises PayloadError."""
    return _decode_struct(_BIRTH, payload, now_ms)  # type: ignore[no-any-return]


def decode_state(payload: _Bytes, now_ms: int) -> State:
    """Decode and validate a state payload; raises PayloadError."""
    return _decode_struct(_STATE, payload, now_ms)  # type: ignore[no-any-return]


def decode_telemetry(payload: _Bytes, now_ms: int) -> Telemetry:
    """Decode and validate a telemetry payload (lamp or blinker); raises PayloadError."""
    return _decode_struct(_TELEMETRY, payload, now_ms)  # type: ignore[no-any-return]


def decode_event(payload: _Bytes, now_ms: int) -> Event:
    """Decode and validate an event payload; raises PayloadError."""
    return _decode_struct(_EVENT, payload, now_ms)  # type: ignore[no-any-return]


def decode_cmd(payload: _Bytes, now_ms: int) -> Cmd:
    """Decode and validate a command payload; raises PayloadError."""
    return _decode_struct(_CMD, payload, now_ms)  # type: ignore[no-any-return]


def decode_ack(payload: _Bytes, now_ms: int) -> Ack:
    """Decode and validate an ack payload; raises PayloadError."""
    return _decode_struct(_ACK, payload, now_ms)  # type: ignore[no-any-return]


def decode_alert(payload: _Bytes, now_ms: int) -> AlertMessage:
    """Decode and validate a control-centre alert payload; raises PayloadError."""
    raw: dict[str, Any] = _decode_with(_ALERT, payload)
    try:
        head = msgspec.convert(raw, _AlertHead)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc
    if head.ts > now_ms + MAX_FUTURE_MS:
        raise _future_ts(head.ts, now_ms)
    return AlertMessage(head.alert_id, head.kind, head.status, head.district_code, head.ts, raw)


_DECODE_BY_KIND: Final[dict[str, Callable[[_Bytes, int], Message]]] = {
    "birth": decode_birth,
    "state": decode_state,
    "telemetry": decode_telemetry,
    "event": decode_event,
    "cmd": decode_cmd,
    "ack": decode_ack,
    "alert": decode_alert,
}


def decode(kind: MessageKind | str, payload: _Bytes, now_ms: int) -> Message:
    """Decode and validate one payload of ``kind`` (a topic channel or ``alert``); raises PayloadError."""
    try:
        decode_kind = _DECODE_BY_KIND[kind]
    except KeyError:
        raise PayloadError("kind", f"unknown message kind {kind!r}") from None
    return decode_kind(payload, now_ms)


def encode(message: Birth | State | Telemetry | Event | Cmd | Ack) -> bytes:
    """Compact JSON for a message struct (fields left at their default are omitted)."""
    return _ENCODER.encode(message)


def encode_alert(alert: Mapping[str, Any]) -> bytes:
    """JSON for a control-centre alert; raises PayloadError when a required head field is wrong."""
    try:
        msgspec.convert(dict(alert), _AlertHead)
        return _ENCODER.encode(alert)
    except msgspec.ValidationError as exc:
        raise _translate(exc) from exc
    except (TypeError, msgspec.EncodeError) as exc:
        raise PayloadError("payload", f"not encodable as JSON ({exc})") from exc


def offline_will(bdseq: int) -> bytes:
    """The retained ``offline`` state a device sets as its last will for connection ``bdseq``."""
    return encode(State("offline", bdseq))


def online_state(bdseq: int) -> bytes:
    """The retained ``online`` state a device publishes after its birth."""
    return encode(State("online", bdseq))
