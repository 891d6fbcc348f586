"""Lamp and beacon-blinker firmware as pure state machines.

No sockets and no clocks: every method takes `now_ms` (epoch milliseconds, the unit of the
wire protocol's `ts`) and returns the messages the device would publish, as `Message`
values holding JSON-ready payloads. The networking layer publishes them on
`sl/v1/{d}/{id}/{channel}` and feeds received commands back in.

Lamp control model (DESIGN.md §3): active overrides keyed by `source`, each with priority,
level and expiry. A blink wins over all; otherwise the highest priority wins and, within equal
priority, the brightest; with no active override the lamp follows its schedule.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from . import physics
from .commands import Command, CommandRejected, ConfigValue, Priority, parse_command
from .schedule import NightProfile, is_dark, ms_to_datetime, schedule_level

__all__ = [
    "BLINK_HALF_PERIOD_MS",
    "FIRMWARE_VERSION",
    "BlinkerFirmware",
    "Channel",
    "DeviceIdentity",
    "Faults",
    "LampConfig",
    "LampFirmware",
    "Message",
    "Output",
    "Override",
    "resolve_output",
]

FIRMWARE_VERSION = "sim-1.0.0"
Channel: TypeAlias = Literal["birth", "state", "telemetry", "event", "ack"]
DeviceKind: TypeAlias = Literal["lamp", "blinker"]
# SOS blink: 1 Hz, half on and half off; slow enough to avoid the 3-25 Hz photosensitivity
# band (WCAG 2.3.1 "three flashes") and fast enough to read as an alarm.
BLINK_HALF_PERIOD_MS = 500
# How many recent cmd_ids a device remembers to answer duplicates without re-applying them;
# QoS 1 redelivery happens within a session, so a few hundred is ample.
REMEMBERED_COMMANDS = 512
# The protocol caps an ack's reason at 256 characters.
MAX_REASON_CHARS = 256
# A resident passing under a blinker is reported once per pass, not on every advertisement.
SIGHTING_COOLDOWN_MS = 30_000
# More residents near one blinker within one cooldown than any alley holds.
REMEMBERED_RESIDENTS = 1024
# Shadowing (body, parked cars) around the mean path loss; 2-4 dB is usual for BLE outdoors.
BEACON_SHADOWING_SIGMA_DB = 2.0
# Backup battery of the blinker (single Li-ion cell): floated at 4.1 V while mains is up,
# then discharging about 0.05 V an hour under beacon load down to the 3.3 V cutoff.
BATTERY_FLOAT_V = 4.1
BATTERY_DISCHARGE_V_PER_H = 0.05
BATTERY_CUTOFF_V = 3.3
# Cellular uplink signal of a blinker, a per-device constant with small noise; -70 to -95 dBm
# is a typical LTE-M range in built-up streets.
UPLINK_RSSI_RANGE_DBM = (-95.0, -70.0)


@dataclass(frozen=True)
class DeviceIdentity:
    """What a device says about itself in its birth message."""

    device_id: str
    district_code: str
    kind: DeviceKind
    lat_deg: float
    lon_deg: float
    model: str
    paired_device_id: str | None = None
    firmware_version: str = FIRMWARE_VERSION

    @property
    def topic_prefix(self) -> str:
        """`sl/v1/{d}/{id}`: the device's topic namespace."""
        return f"sl/v1/{self.district_code}/{self.device_id}"


@dataclass(frozen=True)
class Message:
    """One outgoing MQTT message: topic, JSON-ready payload, QoS and retain flag."""

    channel: Channel
    topic: str
    payload: Mapping[str, object]
    qos: int = 1
    retain: bool = False

    def to_payload(self) -> dict[str, object]:
        """The payload as a fresh dict, ready for `json.dumps`."""
        return dict(self.payload)


@dataclass(frozen=True)
class Faults:
    """Fault injection flags."""

    lamp_failure: bool = False  # LED open circuit: no light, only standby power
    supply_loss: bool = False  # mains gone: voltage 0, a last-gasp `power_loss` event
    day_burning: bool = False  # output stuck on: the lamp lights by day
    clock_skew_ms: int = 0  # the device clock runs this far ahead (negative: behind)


@dataclass(frozen=True)
class Override:
    """An active override of the lamp's schedule, keyed by `source`."""

    source: str
    priority: Priority
    level: int
    expires_ms: int
    blink: bool
    issued_ts_ms: int


@dataclass(frozen=True)
class Output:
    """What the control model asks the lamp to do: a level, maybe blinking, and who decided."""

    level: int
    blinking: bool
    source: str | None  # None: the schedule


def resolve_output(overrides: Iterable[Override], schedule_level_pct: int, now_ms: int) -> Output:
    """Apply the lamp control model to the overrides still active at `now_ms`."""
    active = [o for o in overrides if o.expires_ms > now_ms]
    blinks = [o for o in active if o.blink]
    if blinks:
        winner = max(blinks, key=lambda o: (o.level, o.priority, o.source))
        return Output(winner.level, True, winner.source)
    if active:
        winner = max(active, key=lambda o: (o.priority, o.level, o.source))
        return Output(winner.level, False, winner.source)
    return Output(schedule_level_pct, False, None)


@dataclass(frozen=True)
class _AckRecord:
    status: Literal["applied", "rejected", "expired"]
    reason: str | None


class _Firmware:
    """What lamps and blinkers share: sessions, seq, overrides, commands and acks, fault events."""

    def __init__(self, identity: DeviceIdentity) -> None:
        self.identity = identity
        self.bdseq = 0
        self.seq = 0
        self.faults = Faults()
        self.overrides: dict[str, Override] = {}
        self._acks: OrderedDict[str, _AckRecord] = OrderedDict()
        self._reported_faults: frozenset[str] = frozenset()

    # -- clock and messages ---------------------------------------------------------------

    def device_clock_ms(self, now_ms: int) -> int:
        """The device's own clock: true time plus any injected skew."""
        return now_ms + self.faults.clock_skew_ms

    def _message(self, channel: Channel, body: Mapping[str, object], now_ms: int, qos: int = 1) -> Message:
        self.seq += 1
        payload = {"ts": self.device_clock_ms(now_ms), "seq": self.seq, **body}
        return Message(channel, f"{self.identity.topic_prefix}/{channel}", payload, qos=qos)

    def _state(self, state: Literal["online", "offline"]) -> Message:
        # Retained, and without ts/seq: the offline one is the will, fixed at connect time.
        return Message(
            "state", f"{self.identity.topic_prefix}/state", {"state": state, "bdseq": self.bdseq}, retain=True
        )

    # -- sessions -------------------------------------------------------------------------

    def start_session(self) -> Message:
        """Begin a connection: next `bdseq`; returns the last will to register with the broker."""
        self.bdseq += 1
        return self._state("offline")

    def on_connected(self, now_ms: int) -> list[Message]:
        """Messages to publish once connected: birth, then retained `online`."""
        identity = self.identity
        birth = self._message(
            "birth",
            {
                "kind": identity.kind,
                "firmware": identity.firmware_version,
                "model": identity.model,
                "lat": identity.lat_deg,
                "lon": identity.lon_deg,
                "paired": identity.paired_device_id,
                "bdseq": self.bdseq,
            },
            now_ms,
        )
        return [birth, self._state("online")]

    # -- commands -------------------------------------------------------------------------

    def handle_command(self, payload: object, now_ms: int) -> list[Message]:
        """Validate and apply one command payload; returns its ack (and any resulting events)."""
        clock_ms = self.device_clock_ms(now_ms)
        try:
            command = parse_command(payload)
        except CommandRejected as exc:
            if exc.cmd_id is None:
                # Nothing to correlate an ack with (and the protocol requires a cmd_id in it).
                return []
            return [self._ack(exc.cmd_id, _AckRecord("rejected", exc.reason), now_ms)]
        previous = self._acks.get(command.cmd_id)
        if previous is not None:
            return [self._ack(command.cmd_id, previous, now_ms, duplicate=True)]
        # Expired overrides go first, so only a live override can make a command stale.
        self._prune(clock_ms)
        expires_ms = command.expires_ms
        if expires_ms is not None and expires_ms <= clock_ms:
            record = _AckRecord("expired", f"expired {clock_ms - expires_ms} ms before it arrived")
        else:
            try:
                self._apply(command, clock_ms)
                record = _AckRecord("applied", None)
            except CommandRejected as exc:
                record = _AckRecord("rejected", exc.reason)
        self._remember(command.cmd_id, record)
        return [self._ack(command.cmd_id, record, now_ms), *self.tick(now_ms)]

    def _remember(self, cmd_id: str, record: _AckRecord) -> None:
        self._acks[cmd_id] = record
        while len(self._acks) > REMEMBERED_COMMANDS:
            self._acks.popitem(last=False)

    def _ack(self, cmd_id: str, record: _AckRecord, now_ms: int, *, duplicate: bool = False) -> Message:
        body: dict[str, object] = {
            "cmd_id": cmd_id,
            "status": record.status,
            "effective_level": self.output(now_ms).level,
            "reason": None if record.reason is None else record.reason[:MAX_REASON_CHARS],
        }
        if duplicate:
            body["duplicate"] = True
        # An ack carries no seq (docs/protocol.md §4.6): the counter is telemetry's and events'.
        payload = {"ts": self.device_clock_ms(now_ms), **body}
        return Message("ack", f"{self.identity.topic_prefix}/ack", payload)

    def _apply(self, command: Command, clock_ms: int) -> None:
        current = self.overrides.get(command.source)
        if command.action != "config" and current is not None and current.issued_ts_ms > command.ts_ms:
            # QoS 1 may redeliver an old command after a newer one from the same source.
            raise CommandRejected(
                f"stale: source {command.source!r} sent a newer command at {current.issued_ts_ms}"
            )
        if command.action == "clear":
            self.overrides.pop(command.source, None)
        elif command.action in ("set_level", "blink"):
            self._apply_override(command, clock_ms)
        else:
            self._apply_config(command.config)

    def _apply_override(self, command: Command, clock_ms: int) -> None:
        assert command.level is not None and command.ttl_s is not None  # parse_command guarantees
        # The expiry is absolute (ts + ttl), so device and controller agree on when it ends; a
        # command stamped in the future still lasts no longer than its ttl from now.
        expires_ms = min(command.ts_ms, clock_ms) + round(command.ttl_s * 1000)
        self.overrides[command.source] = Override(
            source=command.source,
            priority=command.priority,
            level=command.level,
            expires_ms=expires_ms,
            blink=command.action == "blink",
            issued_ts_ms=command.ts_ms,
        )

    def _apply_config(self, config: Mapping[str, ConfigValue]) -> None:
        if config:
            raise CommandRejected(f"unsupported config for a {self.identity.kind}: {sorted(config)}")

    def _prune(self, clock_ms: int) -> None:
        for source in [s for s, o in self.overrides.items() if o.expires_ms <= clock_ms]:
            del self.overrides[source]

    # -- state ----------------------------------------------------------------------------

    def _schedule_level(self, clock_ms: int) -> int:
        return 0

    def output(self, now_ms: int) -> Output:
        """The control model's decision at `now_ms` (before faults)."""
        clock_ms = self.device_clock_ms(now_ms)
        return resolve_output(self.overrides.values(), self._schedule_level(clock_ms), clock_ms)

    def active_faults(self, now_ms: int) -> frozenset[str]:
        """Fault codes the device detects at `now_ms`."""
        return frozenset({"power_loss"} if self.faults.supply_loss else ())

    def inject(self, faults: Faults, now_ms: int) -> list[Message]:
        """Set the fault injection flags; returns the fault events the change causes."""
        self.faults = faults
        return self.tick(now_ms)

    def tick(self, now_ms: int) -> list[Message]:
        """Housekeeping at `now_ms`: drop expired overrides, report faults that came or went."""
        self._prune(self.device_clock_ms(now_ms))
        current = self.active_faults(now_ms)
        events: list[Message] = []
        for code in sorted(current - self._reported_faults):
            if code == "power_loss":
                events.append(self._message("event", {"type": "power_loss"}, now_ms))
            else:
                events.append(self._message("event", {"type": "fault", "code": code}, now_ms))
        for code in sorted(self._reported_faults - current):
            events.append(self._message("event", {"type": "fault_cleared", "code": code}, now_ms))
        self._reported_faults = current
        return events


@dataclass(frozen=True)
class LampConfig:
    """Lamp hardware and schedule settings."""

    # 40 W: the example rating of issue 3; alley LED security lamps are commonly 20-60 W.
    rated_power_w: float = 40.0
    profile: NightProfile = field(default_factory=NightProfile)


class LampFirmware(_Firmware):
    """An LED lamp: schedule, overrides, blink, acks, telemetry, faults."""

    def __init__(self, identity: DeviceIdentity, config: LampConfig | None = None) -> None:
        if identity.kind != "lamp":
            raise ValueError(f"LampFirmware needs a lamp identity, got kind {identity.kind!r}")
        super().__init__(identity)
        self.config = config if config is not None else LampConfig()
        # Simulated sky: the sun (schedule, ambient light, weather) is seen this far ahead of the
        # clock, so a demo can run at night whatever the hour, while timestamps, command expiry and
        # acks stay on the real clock the backend checks them against.
        self.sky_offset_ms = 0

    def _schedule_level(self, clock_ms: int) -> int:
        sky_ms = clock_ms + self.sky_offset_ms
        return schedule_level(self.identity.lat_deg, self.identity.lon_deg, sky_ms, self.config.profile)

    def _apply_config(self, config: Mapping[str, ConfigValue]) -> None:
        # parse_command has checked the keys and the value types for each.
        self.config = replace(self.config, profile=replace(self.config.profile, **config))  # type: ignore[arg-type]

    def _day_burning(self, now_ms: int) -> bool:
        clock_ms = self.device_clock_ms(now_ms)
        return (
            self.faults.day_burning
            and self.output(now_ms).level == 0
            and not is_dark(self.identity.lat_deg, self.identity.lon_deg, clock_ms + self.sky_offset_ms)
        )

    def actual_level(self, now_ms: int) -> int:
        """Light output (percent) at `now_ms`, after blinking and faults."""
        if self.faults.supply_loss or self.faults.lamp_failure:
            return 0
        if self._day_burning(now_ms):
            # A driver that loses its dimming signal falls back to full output.
            return 100
        output = self.output(now_ms)
        if output.blinking and (self.device_clock_ms(now_ms) // BLINK_HALF_PERIOD_MS) % 2 == 1:
            return 0
        return output.level

    def active_faults(self, now_ms: int) -> frozenset[str]:
        """Fault codes the lamp detects at `now_ms`."""
        if self.faults.supply_loss:
            return frozenset({"power_loss"})
        codes = set()
        # An open LED string is only noticed when the driver is asked for light.
        if self.faults.lamp_failure and self.output(now_ms).level > 0:
            codes.add("lamp_failure")
        if self._day_burning(now_ms):
            codes.add("day_burning")
        return frozenset(codes)

    def telemetry(self, now_ms: int, rng: random.Random) -> Message:
        """A telemetry message: level, power, voltage, current, temperature, ambient light, faults."""
        # Physics follows true time (shifted by the simulated sky), not the device's skewed clock.
        when = ms_to_datetime(now_ms + self.sky_offset_ms)
        level = self.actual_level(now_ms)
        rated_w = self.config.rated_power_w
        if self.faults.supply_loss:
            voltage_v = power_w = current_a = 0.0
        else:
            voltage_v = round(physics.mains_voltage_v(rng), 1)
            power_w = round(physics.lamp_power_w(level, rated_w), 2)
            current_a = round(physics.supply_current_a(power_w, voltage_v, rated_w), 4)
        temp_c = physics.driver_temp_c(power_w, physics.ambient_temp_c(when)) + rng.gauss(0.0, 0.3)
        lux = physics.ambient_lux(self.identity.lat_deg, self.identity.lon_deg, when)
        lux *= max(0.0, 1.0 + rng.gauss(0.0, 0.03))  # sensor noise, 3 %
        body: dict[str, object] = {
            "level": level,
            "power_w": power_w,
            "voltage_v": voltage_v,
            "current_a": current_a,
            "temp_c": round(temp_c, 1),
            "lux": round(lux, 2),
            "faults": sorted(self.active_faults(now_ms)),
        }
        return self._message("telemetry", body, now_ms, qos=0)


class BlinkerFirmware(_Firmware):
    """A beacon blinker: senses residents' Safety app nearby, blinks on command."""

    def __init__(self, identity: DeviceIdentity, uplink_rssi_dbm: float | None = None) -> None:
        if identity.kind != "blinker":
            raise ValueError(f"BlinkerFirmware needs a blinker identity, got kind {identity.kind!r}")
        super().__init__(identity)
        if uplink_rssi_dbm is None:
            # Stable per device: derived from the id, so the same fleet reads the same.
            uplink_rssi_dbm = random.Random(identity.device_id).uniform(*UPLINK_RSSI_RANGE_DBM)
        self.uplink_rssi_dbm = uplink_rssi_dbm
        self.sightings = 0
        self._last_sighting_ms: dict[str, int] = {}
        self._supply_lost_since_ms: int | None = None

    def _apply(self, command: Command, clock_ms: int) -> None:
        if command.action == "set_level":
            raise CommandRejected("unsupported action for a blinker: set_level")
        super()._apply(command, clock_ms)

    def inject(self, faults: Faults, now_ms: int) -> list[Message]:
        """Set the fault injection flags; returns the fault events the change causes."""
        if faults.supply_loss and not self.faults.supply_loss:
            self._supply_lost_since_ms = now_ms
        elif not faults.supply_loss:
            self._supply_lost_since_ms = None
        return super().inject(faults, now_ms)

    def blinking(self, now_ms: int) -> bool:
        """Whether a blink command is in force at `now_ms`."""
        return self.output(now_ms).blinking

    def battery_v(self, now_ms: int) -> float:
        """Backup battery voltage: floating while mains is up, discharging while it is lost."""
        if self._supply_lost_since_ms is None:
            return BATTERY_FLOAT_V
        hours = (now_ms - self._supply_lost_since_ms) / 3_600_000
        return max(BATTERY_CUTOFF_V, BATTERY_FLOAT_V - BATTERY_DISCHARGE_V_PER_H * hours)

    def observe(self, token_hash: str, distance_m: float, now_ms: int, rng: random.Random) -> list[Message]:
        """A resident's app advertising `distance_m` away: a `beacon` event if heard, once per pass."""
        if not math.isfinite(distance_m) or distance_m < 0:
            raise ValueError(f"distance_m must be a non-negative number, got {distance_m!r}")
        rssi_dbm = physics.rssi_at_distance_dbm(distance_m) + rng.gauss(0.0, BEACON_SHADOWING_SIGMA_DB)
        if rssi_dbm < physics.BEACON_DETECT_THRESHOLD_DBM:
            return []
        last_ms = self._last_sighting_ms.get(token_hash)
        self._last_sighting_ms[token_hash] = now_ms
        if len(self._last_sighting_ms) > REMEMBERED_RESIDENTS:
            # Residents gone for longer than a pass need no memory; bounded for long runs.
            cutoff_ms = now_ms - SIGHTING_COOLDOWN_MS
            self._last_sighting_ms = {t: ms for t, ms in self._last_sighting_ms.items() if ms >= cutoff_ms}
        if last_ms is not None and now_ms - last_ms < SIGHTING_COOLDOWN_MS:
            return []
        self.sightings += 1
        body = {"type": "beacon", "token_hash": token_hash, "rssi_dbm": round(rssi_dbm, 1)}
        return [self._message("event", body, now_ms)]

    def telemetry(self, now_ms: int, rng: random.Random) -> Message:
        """A telemetry message: uplink rssi, backup battery, blinking, sightings so far."""
        body: dict[str, object] = {
            "rssi_dbm": round(self.uplink_rssi_dbm + rng.gauss(0.0, 1.5), 1),
            "battery_v": round(self.battery_v(now_ms) + rng.gauss(0.0, 0.005), 3),
            "blinking": self.blinking(now_ms),
            "sightings": self.sightings,
            "faults": sorted(self.active_faults(now_ms)),
        }
        return self._message("telemetry", body, now_ms, qos=0)
