"""The controller service: wake-ups from PostgreSQL and messages from MQTT in, lamp commands and
control-centre alerts out. The decisions are the pure modules' (positions, holds, blink, commands,
and the `alerts` core); this module parses, calls them, publishes and writes.

Tasks (one ``asyncio.TaskGroup``): ``listen`` (LISTEN sl_alert/sl_walk/sl_lamp, reconnecting, and
re-reading the tables after every connect), ``mqtt`` (acks and beacon events), ``tick`` (leases,
ack timeouts, blink refresh, escalation, confirmations), ``writer`` (commands and acks to the
commands table, batched), ``webhook`` (CAP to the police webhook).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import psycopg

from alerts import (
    CITY_CENTRE,
    DEFAULT_ESCALATION,
    Alert,
    AlertKind,
    EscalationKind,
    EscalationPolicy,
    Event,
    EventAction,
    alert_to_dict,
    alerts_topic,
    due_escalations,
    escalations_done,
    record_escalation,
    render_cap,
)
from broker import (
    DEVICE_BURST,
    DEVICE_RATE_PER_S,
    ConnectionLost,
    ConnectionParams,
    DeviceRateLimiter,
    MqttSession,
    PayloadError,
    TopicError,
    backoff_delay_s,
    decode_ack,
    decode_event,
    device_topic,
    encode,
    encode_alert,
    parse_device_topic,
)
from controller._blink import BlinkPolicy, BlinkSet, blink_targets, confirm, fail, move_to, refresh_due
from controller._commands import CommandIds, CommandTracker, LampCommand, WrongDevice
from controller._db import Db, LampRow, active_walks, load_devices, mark_commands_unanswered
from controller._guards import GUARDS, guard_zone, guards_notified
from controller._holds import HoldBook, HoldPolicy
from controller._leases import MEMBER_PREFIX, member_key, plan_leases
from controller._positions import Fix, PositionPolicy, Track, advance, service_area
from geo import Gazetteer, LampIndex, SafetyZones, lamps_for_walker, load_safety_zones
from runtime import tuning
from store.alertstore import (
    ALERT_CHANNEL,
    LAMP_CHANNEL,
    WALK_CHANNEL,
    active_alerts,
    change_alert,
    load_alert,
)
from store.repo import CommandRecord, acquire_lease, insert_commands, record_acks, release_lease

log = logging.getLogger("controller")

# issue #5: "another takes over its districts within 10 s"; renewed every third of it.
LEASE_TTL_S = 6.0
# A beacon sighting brightens the lamps this close to the blinker (issue #5: "within 30 m").
BEACON_RADIUS_M = 30.0
# A beacon event older than this describes a resident who has moved on.
BEACON_MAX_AGE_S = 30.0
# Bound of the database write queue; when full, rows are dropped and counted (commands still go).
WRITE_QUEUE_SIZE = 50_000
# The command-row writer waits this long after a first row so the rows behind it share a transaction.
WRITE_GATHER_S = 0.1
# Expired holds and idle walks are dropped this often.
HOUSEKEEPING_EVERY_MS = 5_000
# A walk with no position for this long is forgotten (the API ends or expires it in the table).
WALK_IDLE_S = 900.0
# QoS 1 commands on their way to the broker at once. paho's default of 20 held the rest back until
# PUBACKs were read, which a busy event loop does late: at 2,000 walkers the hold refreshes queued
# behind it for up to 0.9 s (bench brighten, slowest 1 % all between controller and lamp).
COMMANDS_IN_FLIGHT = 1000
# Alerts whose latest change is not yet at (some of) its centres; beyond this the oldest is
# forgotten and counted (its next change publishes it again; the console has it from the database).
MAX_UNPUBLISHED = 10_000
# How long the database listener waits for the broker at start before reading the alerts.
FIRST_CONNECT_WAIT_S = 5.0


def now_ms() -> int:
    """Wall-clock epoch milliseconds (the protocol's time)."""
    return time.time_ns() // 1_000_000


def responsible_centre(centres: Sequence[str]) -> str:
    """The district whose controller acts on an alert: its own district, else the city centre."""
    for code in centres:
        if code != CITY_CENTRE:
            return code
    return CITY_CENTRE


def blink_source(alert_id: str) -> str:
    """The override key of an alert's blink on the lamps (firmware ids are at most 64 characters)."""
    return alert_id[:64]


@dataclass(frozen=True)
class ControllerConfig:
    """Everything a controller needs; built from the settings by ``streetlight.bootstrap``."""

    mqtt: ConnectionParams
    database_url: str
    districts: tuple[str, ...]  # candidate districts (a lease is taken for each)
    owner: str  # this controller's name in the leases, unique among the running controllers
    lease_ttl_s: float = LEASE_TTL_S
    tick_s: float = 0.2
    lamps_refresh_s: float = 30.0
    retry_after_s: float = 5.0
    holds: HoldPolicy = field(default_factory=HoldPolicy)
    blink: BlinkPolicy = field(default_factory=BlinkPolicy)
    positions: PositionPolicy = field(default_factory=PositionPolicy)
    escalation: EscalationPolicy = DEFAULT_ESCALATION
    police_webhook_url: str | None = None
    guard_webhook_url: str | None = None
    safety_zones: SafetyZones | None = None  # None: the vendored seed file
    gazetteer: Gazetteer | None = None  # the service area of the position checks; None: the vendored one
    # Per-device bound on acks and events taken from MQTT (as ingest's); 0 turns it off.
    device_rate_per_s: float = DEVICE_RATE_PER_S
    device_burst: float = DEVICE_BURST


@dataclass
class _Walk:
    district: str
    track: Track = field(default_factory=Track)
    last_ms: int = 0


class Controller:
    """One controller process's state and tasks; ``await Controller(cfg).run()``."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.owned: set[str] = set()
        self.ready = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.release_on_exit = True
        self._db = Db(cfg.database_url)
        self._mqtt: MqttSession | None = None
        self._index = LampIndex([], [], [])
        self._devices: dict[str, LampRow] = {}
        self._device_rows: list[LampRow] | None = None  # as last loaded, to skip unchanged reloads
        self._housekeeping_due_ms = 0
        self._walks: dict[str, _Walk] = {}
        self._holds = HoldBook(cfg.holds)
        self._tracker = CommandTracker(retry_after_s=cfg.retry_after_s)
        self._limiter = (
            DeviceRateLimiter(cfg.device_rate_per_s, cfg.device_burst) if cfg.device_rate_per_s > 0 else None
        )
        self._ids = CommandIds(f"c{cfg.owner[-4:]}{now_ms() % 10**9:x}")
        self._alerts: dict[str, Alert] = {}
        self._blinks: dict[str, BlinkSet] = {}
        self._blink_alert: dict[str, str] = {}  # blink source -> alert id
        self._published: dict[str, tuple[int, str]] = {}  # version acknowledged (PUBACK) by the broker
        self._publishing: dict[str, tuple[int, str]] = {}  # version being published now
        # alert id -> centres still owed its latest state (the broker was away); re-published from
        # the alert's current row once connected again (``_republish``, every tick).
        self._unpublished: OrderedDict[str, set[str]] = OrderedDict()
        self._writes: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=WRITE_QUEUE_SIZE)
        self._webhooks: asyncio.Queue[tuple[str, bytes, str, str]] = asyncio.Queue(maxsize=1000)
        self._zones = cfg.safety_zones if cfg.safety_zones is not None else load_safety_zones()
        self._lease_ok_until = 0.0
        self._free_since: dict[str, float] = {}
        self._listening = False
        self._leased_once = False
        self.on_command: Callable[[LampCommand], None] | None = None  # a hook for benchmarks

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run until cancelled; on a clean stop the leases are given up for another to take."""
        try:
            if self.cfg.gazetteer is None:  # the vendored gazetteer of the position checks, loaded once
                await asyncio.to_thread(service_area)
            attempt = 0
            while True:
                try:
                    await self._load_devices()
                    break
                except psycopg.Error as exc:
                    log.warning("database not reachable attempt=%d: %s", attempt, exc)
                    await asyncio.sleep(backoff_delay_s(attempt, base_s=0.5, cap_s=10.0))
                    attempt += 1
            subs = [("sl/v1/+/+/ack", 1), *((f"sl/v1/{d}/+/event", 1) for d in self.cfg.districts)]
            async with MqttSession(
                self.cfg.mqtt,
                client_id=f"ctl-{self.cfg.owner}",
                subscriptions=subs,
                max_inflight=COMMANDS_IN_FLIGHT,
            ) as mqtt:
                self._mqtt = mqtt
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._listen_loop(), name="listen")
                    tg.create_task(self._mqtt_loop(mqtt), name="mqtt")
                    tg.create_task(self._tick_loop(), name="tick")
                    tg.create_task(self._writer_loop(), name="writer")
                    tg.create_task(self._webhook_loop(), name="webhook")
        finally:
            if self.release_on_exit:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._db.call(_release_all, sorted(self.owned), self.cfg.owner))
            self.owned.clear()
            self._db.close()

    def _mark_ready(self) -> None:
        if self._listening and self._leased_once and not self.ready.is_set():
            tuning.settle("controller")
            self.ready.set()

    # ------------------------------------------------------------------ devices

    async def _load_devices(self) -> None:
        # Read, compare and build in the database thread: a rebuilt index (STRtree, walker grid)
        # costs ~10-20 ms for 3,500 lamps, a stall of every position if done on the loop, and
        # the periodic reload finds the same devices almost every time.
        loaded = await self._db.call(_load_lamps, self._device_rows)
        if loaded is None:
            return
        self._device_rows, self._index, self._devices = loaded
        log.debug("lamps loaded count=%d", len(self._index))

    def _district_near(self, lat: object, lon: object) -> str:
        """The district of the nearest lamp, for a walk the API could not place (e.g. just outside)."""
        if not isinstance(lat, int | float) or not isinstance(lon, int | float) or not len(self._index):
            return ""
        try:
            ids = self._index.nearest(float(lat), float(lon), 1).ids
        except ValueError:
            return ""
        return self._devices[ids[0]].district if ids else ""

    def _within(self, lat: float, lon: float, radius_m: float) -> Sequence[str]:
        return self._index.within(lat, lon, radius_m).ids

    def _nearest(self, lat: float, lon: float, k: int) -> Sequence[str]:
        return self._index.nearest(lat, lon, k).ids if len(self._index) else ()

    # ------------------------------------------------------------------ commands

    async def _send(self, cmd: LampCommand, *, retry: bool = False) -> None:
        await self._send_many([cmd], retry=retry)

    async def _send_many(
        self, cmds: Sequence[LampCommand], *, retry: bool = False, wait: bool = True
    ) -> None:
        """Track, record and publish commands; the publishes wait for their PUBACKs together.

        ``wait=False`` (walk brightening) hands the messages to the connection and returns: the
        next wake-up is handled while the PUBACKs are on their way, instead of one broker round
        trip per walk position in a row; the lamp's ack (retried once when missing, then
        ``unanswered``) is what tells a command arrived.
        """
        now = now_ms()
        for cmd in cmds:
            if not retry:
                self._tracker.sent(cmd, now)
                if self.on_command is not None:
                    self.on_command(cmd)
            self.stats["commands_retried" if retry else "commands_sent"] += 1
            self._write("cmd", cmd)
        mqtt = self._mqtt
        if mqtt is not None and cmds:
            if wait:
                await asyncio.gather(*(self._publish_cmd(mqtt, cmd) for cmd in cmds))
            else:
                for cmd in cmds:
                    try:
                        topic = device_topic(cmd.district, cmd.device_id, "cmd")
                        mqtt.publish_nowait(topic, encode(cmd.to_wire()))
                    except ConnectionLost as exc:
                        self.stats["publish_failed"] += 1
                        log.warning("command not published cmd_id=%s: %s", cmd.cmd_id, exc)

    async def _publish_cmd(self, mqtt: MqttSession, cmd: LampCommand) -> None:
        try:
            await mqtt.publish(device_topic(cmd.district, cmd.device_id, "cmd"), encode(cmd.to_wire()), qos=1)
        except ConnectionLost as exc:
            # Tracked all the same: the retry (or the unanswered state) follows from the tracker.
            self.stats["publish_failed"] += 1
            log.warning("command not published cmd_id=%s: %s", cmd.cmd_id, exc)

    def _command(
        self, device_id: str, action: str, priority: str, source: str, ttl_s: int, level: int | None
    ) -> LampCommand | None:
        device = self._devices.get(device_id)
        if device is None:
            self.stats["command_unknown_device"] += 1
            return None
        return LampCommand(
            cmd_id=self._ids(),
            device_id=device_id,
            district=device.district,
            action=action,
            priority=priority,
            source=source,
            ts_ms=now_ms(),
            ttl_s=ttl_s,
            level=level,
        )

    async def _brighten(self, source: str, lamp_ids: Sequence[str]) -> int:
        policy = self.cfg.holds
        cmds = [
            cmd
            for lamp_id in self._holds.plan(source, lamp_ids, now_ms())
            if (cmd := self._command(lamp_id, "set_level", "walk", source, policy.hold_s, policy.level))
        ]
        await self._send_many(cmds, wait=False)
        return len(cmds)

    def _write(self, kind: str, data: Any) -> None:
        try:
            self._writes.put_nowait((kind, data))
        except asyncio.QueueFull:
            self.stats["db_writes_dropped"] += 1

    async def _writer_loop(self) -> None:
        while True:
            items = [await self._writes.get()]
            # Let a batch gather: command and ack rows are the record, not the delivery, and one
            # transaction a tenth of a second costs PostgreSQL and this loop far less than one
            # per row (at 1,000 walkers that was ~500 transactions and thread hand-offs a second).
            await asyncio.sleep(WRITE_GATHER_S)
            while not self._writes.empty() and len(items) < 2000:
                items.append(self._writes.get_nowait())
            try:
                await self._db.call(_flush_writes, items)
            except Exception as exc:
                self.stats["db_write_failed"] += len(items)
                log.warning("command rows not written count=%d: %s", len(items), exc)
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------------ MQTT

    async def _mqtt_loop(self, mqtt: MqttSession) -> None:
        admit = self._limiter.admit if self._limiter is not None else None
        async for msg in mqtt.messages():
            if admit is not None and not admit(msg.topic):
                # A device over its rate (a stolen blinker's made-up beacon sightings would each
                # command lamps): dropped before decoding; ingest raises the flood alert.
                self.stats["rate_limited"] += 1
                continue
            if msg.retain:
                # Acks and events are never retained (DESIGN.md §3): one from the broker's store
                # is old news replayed at every (re)subscription, so it is counted and skipped.
                self.stats["retained_skipped"] += 1
                log.info("retained message skipped topic=%s", msg.topic)
                continue
            try:
                await self._on_mqtt(msg.topic, msg.payload)
            except Exception as exc:  # one bad message never stops the controller
                self.stats["mqtt_handler_errors"] += 1
                log.warning("message dropped topic=%s: %s", msg.topic, exc)

    async def _on_mqtt(self, topic: str, payload: bytes) -> None:
        try:
            parsed = parse_device_topic(topic)
        except TopicError as exc:
            self.stats["bad_topic"] += 1
            log.info("bad topic %s: %s", topic, exc)
            return
        now = now_ms()
        try:
            if parsed.channel == "ack":
                await self._on_ack(parsed.device_id, decode_ack(payload, now), now)
            elif parsed.channel == "event" and parsed.district_code in self.owned:
                event = decode_event(payload, now)
                if event.type == "beacon" and event.token_hash is not None:
                    await self._on_beacon(parsed.device_id, event.token_hash, event.ts, now)
        except PayloadError as exc:
            self.stats[f"bad_{parsed.channel}"] += 1
            log.info("refused %s from device=%s: %s", parsed.channel, parsed.device_id, exc)

    async def _on_ack(self, device_id: str, ack: Any, now: int) -> None:
        answered = self._tracker.acked(ack.cmd_id, ack.status, now, sender=device_id)
        if answered is None:
            return  # another controller's command, or one already settled
        if isinstance(answered, WrongDevice):
            # A device acking a command sent to another lamp: a faked confirmation (issue 15).
            self.stats["acks_wrong_device"] += 1
            log.warning(
                "ack refused: not from its device cmd_id=%s sender=%s target=%s action=%s source=%s",
                ack.cmd_id,
                device_id,
                answered.command.device_id,
                answered.command.action,
                answered.command.source,
            )
            return
        cmd = answered.command
        self._write("ack", (cmd.cmd_id, ack.status, ack.effective_level, ack.reason))
        self.stats[f"acks_{answered.state}"] += 1
        if cmd.action == "blink":
            await self._blink_answer(cmd, answered.state == "applied")
        elif cmd.action == "set_level" and answered.state != "applied":
            self._holds.forget(cmd.source, cmd.device_id)

    async def _on_beacon(self, blinker_id: str, token_hash: str, ts_ms: int, now: int) -> None:
        device = self._devices.get(blinker_id)
        if device is None:
            self.stats["beacon_unknown_device"] += 1
            return
        if device.kind != "blinker":
            # Only a blinker senses the app's beacon; a lamp's sighting would command its neighbours.
            self.stats["beacon_not_blinker"] += 1
            log.warning("beacon refused: not a blinker device=%s kind=%s", blinker_id, device.kind)
            return
        if now - ts_ms > BEACON_MAX_AGE_S * 1000:
            self.reasons["beacon stale"] += 1
            return
        lamps = list(self._within(device.lat, device.lon, BEACON_RADIUS_M))
        if device.paired and device.paired in self._devices and device.paired not in lamps:
            lamps.insert(0, device.paired)
        self.stats["beacon_sightings"] += 1
        await self._brighten(f"bcn-{token_hash[:32]}", lamps)

    # ------------------------------------------------------------------ PostgreSQL wake-ups

    async def _listen_loop(self) -> None:
        mqtt = self._mqtt
        if mqtt is not None:
            # Commands for alerts read at start go out on a connection, not into a first attempt
            # that the tracker would count as a silent lamp; a broker still away after this
            # wait is covered by the retry and the alerts' re-publication.
            with contextlib.suppress(ConnectionLost):
                await mqtt.wait_connected(FIRST_CONNECT_WAIT_S)
        attempt = 0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.cfg.database_url, autocommit=True
                ) as conn:
                    for channel in (ALERT_CHANNEL, WALK_CHANNEL, LAMP_CHANNEL):
                        await conn.execute(f"LISTEN {channel}")
                    attempt = 0
                    self._listening = True
                    # Anything notified while we were not listening is in the tables.
                    await self._reconcile(sorted(self.owned))
                    self._mark_ready()
                    async for note in conn.notifies():
                        await self._on_notify(note.channel, note.payload)
                        # psycopg hands buffered notifications over back to back: let the loop
                        # write the commands just queued (and read acks) before the next one.
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening = False
                log.warning("database listener lost attempt=%d: %s", attempt, exc)
            await asyncio.sleep(backoff_delay_s(attempt, base_s=0.5, cap_s=10.0))
            attempt += 1

    async def _on_notify(self, channel: str, payload: str) -> None:
        try:
            note = orjson.loads(payload)
            if not isinstance(note, dict):
                raise ValueError("not an object")
            if channel == ALERT_CHANNEL:
                await self._on_alert_note(note)
            elif channel == WALK_CHANNEL:
                if note.get("op") == "positions":
                    await self._on_walk_positions(note.get("positions"))
                else:
                    await self._on_walk_note(note)
            elif channel == LAMP_CHANNEL:
                await self._on_lamp_note(note)
        except Exception as exc:
            self.stats["notify_handler_errors"] += 1
            log.warning("notification dropped channel=%s: %s", channel, exc)

    async def _on_alert_note(self, note: dict[str, Any]) -> None:
        centres = [str(c) for c in note.get("districts") or ()]
        if responsible_centre(centres) not in self.owned:
            return
        alert = await self._db.call(load_alert, str(note["alert_id"]))
        if alert is not None:
            await self._on_alert(alert)

    async def _on_walk_note(self, note: dict[str, Any]) -> None:
        walk_id = str(note["walk_id"])
        district = str(note.get("district") or "") or self._district_near(note.get("lat"), note.get("lon"))
        if district not in self.owned:
            return
        op = note.get("op")
        if op == "end":
            self._walks.pop(walk_id, None)
            self.stats["walks_ended"] += 1
            return
        if note.get("lat") is None or note.get("lon") is None:
            self._walks.setdefault(walk_id, _Walk(district))
            return
        fix = Fix(
            lat=float(note["lat"]),
            lon=float(note["lon"]),
            ts_ms=int(note.get("ts_ms") or now_ms()),
            accuracy_m=_opt_float(note.get("accuracy_m")),
            heading_deg=_opt_float(note.get("heading_deg")),
            speed_mps=_opt_float(note.get("speed_mps")),
        )
        await self._walk_position(walk_id, district, fix)

    async def _on_walk_positions(self, positions: object) -> None:
        """A batch of positions from the API (``store/walkpositions.py``), in their order; one that
        cannot be read is counted and skipped, the rest of the batch goes on."""
        if not isinstance(positions, list):
            raise ValueError("positions is not a list")
        owned = self.owned
        for entry in positions:
            try:
                walk_id, ts_ms, lat, lon, accuracy_m, heading_deg, speed_mps, district, *more = entry
                placed = bool(district)
                district = str(district or "") or self._district_near(lat, lon)
                if district not in owned:
                    continue
                fix = Fix(
                    float(lat),
                    float(lon),
                    int(ts_ms),
                    _opt_float(accuracy_m),
                    _opt_float(heading_deg),
                    _opt_float(speed_mps),
                )
                lamps = more[0] if more else None
                if lamps is not None and not (
                    isinstance(lamps, list) and all(isinstance(lamp, str) for lamp in lamps)
                ):
                    raise ValueError("lamps is not a list of ids")
            except (TypeError, ValueError) as exc:
                self.stats["notify_handler_errors"] += 1
                log.warning("walk position dropped: %s", type(exc).__name__)
                continue
            # A district in the entry: the API placed the position in the service area already.
            await self._walk_position(str(walk_id), district, fix, placed=placed, lamps=lamps)

    async def _walk_position(
        self,
        walk_id: str,
        district: str,
        fix: Fix,
        *,
        placed: bool = False,
        lamps: Sequence[str] | None = None,
    ) -> int:
        """Check a position and brighten its lamps. ``lamps``: the API's answer for this position
        (the same rule with the heading), used when the verdict keeps the corridor."""
        walk = self._walks.setdefault(walk_id, _Walk(district))
        now = now_ms()
        walk.track, verdict = advance(
            walk.track, fix, now, self.cfg.positions, self.cfg.gazetteer, placed=placed
        )
        walk.last_ms = now
        self.stats["walk_positions"] += 1
        if verdict.reason:
            # The reason is counted and stored with the position; the coordinates are not logged.
            self.reasons[verdict.reason.split(":")[0]] += 1
            self._write("verdict", (walk_id, fix.ts_ms, verdict.accepted, verdict.reason))
            log.debug(
                "walk position walk=%s accepted=%s reason=%s", walk_id, verdict.accepted, verdict.reason
            )
        if not verdict.accepted:
            self.stats["walk_positions_refused"] += 1
            return 0
        if lamps is None or not verdict.use_corridor:
            heading = fix.heading_deg if verdict.use_corridor else None
            speed = fix.speed_mps if verdict.use_corridor else None
            lamps = (
                lamps_for_walker(self._index, fix.lat, fix.lon, heading, speed) if len(self._index) else ()
            )
        return await self._brighten(walk_id, lamps)

    async def _on_lamp_note(self, note: dict[str, Any]) -> None:
        district = str(note.get("district") or "")
        if district not in self.owned:
            return
        action = str(note.get("action") or "set_level")
        if action not in ("set_level", "clear"):
            raise ValueError(f"unknown manual action {action!r}")
        level = None if action == "clear" else int(note["level"])
        ttl_s = int(note.get("ttl_s") or 3600)
        cmd = self._command(
            str(note["device_id"]), action, "manual", str(note.get("source") or "operator"), ttl_s, level
        )
        if cmd is not None:
            await self._send(cmd)

    # ------------------------------------------------------------------ alerts

    async def _publish_alert(self, alert: Alert, centres: Sequence[str]) -> set[str]:
        """Publish the alert to each centre (QoS 1); returns the centres the broker did not PUBACK.

        Those are remembered in ``_unpublished`` and get the alert's latest state once the broker
        is back (``_republish``).
        """
        mqtt = self._mqtt
        failed: set[str] = set()
        data = alert_to_dict(alert)
        for centre in centres:
            message = {
                "alert_id": alert.id,
                "status": alert.state.value,
                "district_code": centre,
                "ts": now_ms(),
                **data,
            }
            try:
                if mqtt is None:
                    raise ConnectionLost("no MQTT session yet")
                # QoS 1: returns once the broker's PUBACK is in.
                await mqtt.publish(alerts_topic(centre), encode_alert(message), qos=1)
                self.stats["alerts_published"] += 1
            except ConnectionLost as exc:
                self.stats["alert_publish_failed"] += 1
                failed.add(centre)
                log.warning("alert not published alert=%s centre=%s: %s", alert.id, centre, exc)
        self._owe(alert.id, failed, settled=set(centres) - failed)
        return failed

    def _owe(self, alert_id: str, failed: set[str], settled: set[str]) -> None:
        """Remember the centres still owed an alert's latest state; forget those just served."""
        owed = self._unpublished.get(alert_id)
        if owed is not None:
            owed -= settled
        if failed:
            if owed is None:
                owed = self._unpublished[alert_id] = set()
            owed |= failed
            self._unpublished.move_to_end(alert_id)
            while len(self._unpublished) > MAX_UNPUBLISHED:
                dropped, _ = self._unpublished.popitem(last=False)
                self.stats["alerts_unpublished_dropped"] += 1
                log.warning("alert dropped from the re-publish queue (full) alert=%s", dropped)
        elif owed is not None and not owed:
            del self._unpublished[alert_id]

    async def _republish(self) -> None:
        """Once the broker is back: each alert still owed gets its current row's state, once."""
        mqtt = self._mqtt
        if not self._unpublished or mqtt is None or not mqtt.connected:
            return
        for alert_id in list(self._unpublished):
            owed = self._unpublished.get(alert_id)
            if not owed:
                self._unpublished.pop(alert_id, None)
                continue
            alert = await self._db.call(load_alert, alert_id)
            centres: list[str] = alert_to_dict(alert)["centres"] if alert is not None else []
            if alert is None or responsible_centre(centres) not in self.owned:
                self._unpublished.pop(alert_id, None)  # gone, or another controller's now
                continue
            targets = [*centres, *sorted(c for c in owed if c not in centres)]
            failed = await self._publish_alert(alert, targets)
            if failed:
                return  # the broker went away again: the next tick tries again
            self.stats["alerts_republished"] += 1
            if alert.is_active:
                self._published[alert.id] = (len(alert.timeline), alert.state.value)

    async def _on_alert(self, alert: Alert) -> None:
        """An alert this controller is responsible for changed (or was found at takeover)."""
        version = (len(alert.timeline), alert.state.value)
        if self._published.get(alert.id) != version and self._publishing.get(alert.id) != version:
            self._publishing[alert.id] = version
            try:
                failed = await self._publish_alert(alert, alert_to_dict(alert)["centres"])
            finally:
                if self._publishing.get(alert.id) == version:
                    del self._publishing[alert.id]
            # Published means acknowledged: a change the broker never got is owed, not done.
            if not failed and alert.is_active:
                self._published[alert.id] = version
        if alert.is_active:
            self._alerts[alert.id] = alert
            if alert.kind is AlertKind.SOS:
                await self._blink_follow(alert)
                await self._notify_guards(alert)
        else:
            self._alerts.pop(alert.id, None)
            self._published.pop(alert.id, None)
            await self._blink_stop(alert.id)

    async def _blink_follow(self, alert: Alert) -> None:
        blinks = self._blinks.get(alert.id)
        if blinks is None:
            blinks = self._blinks[alert.id] = BlinkSet(alert.id, blink_source(alert.id))
            self._blink_alert[blinks.source] = alert.id
        lat, lon = alert.last_position
        if blinks.at == (lat, lon):
            return  # same place: keep the set as it is (with any replacement lamps added)
        blinks.at = (lat, lon)
        targets = blink_targets(self._within, self._nearest, lat, lon, self.cfg.blink)
        change = move_to(blinks, targets, now_ms())
        policy = self.cfg.blink
        cmds = [
            self._command(lamp, "blink", "sos", blinks.source, policy.ttl_s, policy.level)
            for lamp in change.blink
        ]
        cmds += [
            self._command(lamp, "clear", "sos", blinks.source, policy.ttl_s, None) for lamp in change.clear
        ]
        await self._send_many([c for c in cmds if c is not None])

    async def _blink_command(self, blinks: BlinkSet, lamp: str) -> None:
        policy = self.cfg.blink
        cmd = self._command(lamp, "blink", "sos", blinks.source, policy.ttl_s, policy.level)
        if cmd is not None:
            await self._send(cmd)

    async def _blink_stop(self, alert_id: str) -> None:
        blinks = self._blinks.pop(alert_id, None)
        if blinks is None:
            return
        self._blink_alert.pop(blinks.source, None)
        ttl_s = self.cfg.blink.ttl_s
        cmds = [self._command(lamp, "clear", "sos", blinks.source, ttl_s, None) for lamp in blinks.active]
        await self._send_many([c for c in cmds if c is not None])
        self.stats["blinks_stopped"] += 1

    async def _blink_answer(self, cmd: LampCommand, applied: bool) -> None:
        alert_id = self._blink_alert.get(cmd.source)
        blinks = self._blinks.get(alert_id) if alert_id is not None else None
        alert = self._alerts.get(alert_id) if alert_id is not None else None
        if blinks is None or alert is None:
            return
        if applied:
            confirm(blinks, cmd.device_id)
            return
        lat, lon = alert.last_position
        added = fail(blinks, cmd.device_id, self._nearest, lat, lon, self.cfg.blink, now_ms())
        if added is not None:
            await self._blink_command(blinks, added)

    async def _record_blink_news(self) -> None:
        for alert_id, blinks in list(self._blinks.items()):
            if blinks.has_news():
                change = _with_lamp_news(blinks.take_news(), datetime.now(UTC), self._actor)
                _, after = await self._db.call(change_alert, alert_id, change)
                await self._on_alert(after)

    async def _escalate(self) -> None:
        now = datetime.now(UTC)
        policy = self.cfg.escalation
        for alert_id, alert in list(self._alerts.items()):
            if not due_escalations(alert, now, policy):
                continue
            change = _with_due_escalations(now, policy, self._actor)
            before, after = await self._db.call(change_alert, alert_id, change)
            done = escalations_done(after) - escalations_done(before)
            self.stats["escalations"] += len(done)
            if done:
                log.info("alert escalated alert=%s steps=%s", alert_id, ",".join(sorted(done)))
            await self._on_alert(after)
            if EscalationKind.NOTIFY_CITY in done:
                await self._publish_alert(after, [CITY_CENTRE])
            if EscalationKind.POLICE in done and self.cfg.police_webhook_url:
                cap = render_cap(after).xml.encode()
                self._post(self.cfg.police_webhook_url, cap, "application/cap+xml", after.id)

    async def _notify_guards(self, alert: Alert) -> None:
        """An SOS inside a guard zone during patrol hours: record it, and call the guards' webhook."""
        now = datetime.now(UTC)
        if guards_notified(alert) or guard_zone(alert, self._zones, now) is None:
            return
        zones = self._zones

        def change(a: Alert) -> Alert:
            zone = guard_zone(a, zones, now)
            if guards_notified(a) or zone is None or not a.is_active:
                return a
            details = (("escalation", GUARDS), ("targets", f"guards:{zone.dong_code}"), ("zone", zone.dong))
            event = Event(at=now, actor=self._actor, action=EventAction.ESCALATED, details=details)
            return dataclasses.replace(a, timeline=(*a.timeline, event))

        before, after = await self._db.call(change_alert, alert.id, change)
        if after is before:
            return
        self.stats["guard_notifications"] += 1
        await self._on_alert(after)
        if self.cfg.guard_webhook_url:
            body = json.dumps({"guard_zone": alert.place.dong_code, "alert": alert_to_dict(after)}).encode()
            self._post(self.cfg.guard_webhook_url, body, "application/json", after.id)

    def _post(self, url: str, body: bytes, content_type: str, alert_id: str) -> None:
        try:
            self._webhooks.put_nowait((url, body, content_type, alert_id))
        except asyncio.QueueFull:
            self.stats["webhook_dropped"] += 1

    @property
    def _actor(self) -> str:
        return f"controller:{self.cfg.owner}"

    async def _webhook_loop(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                url, body, content_type, alert_id = await self._webhooks.get()
                for attempt in range(3):
                    try:
                        response = await client.post(
                            url, content=body, headers={"content-type": content_type}
                        )
                        response.raise_for_status()
                        self.stats["webhook_posted"] += 1
                        break
                    except httpx.HTTPError as exc:
                        self.stats["webhook_failed"] += 1
                        log.warning("webhook failed alert=%s attempt=%d: %s", alert_id, attempt, exc)
                        await asyncio.sleep(backoff_delay_s(attempt, base_s=1.0, cap_s=10.0))

    # ------------------------------------------------------------------ ticks, leases, takeover

    async def _tick_loop(self) -> None:
        next_lease = 0.0
        next_lamps = time.monotonic() + self.cfg.lamps_refresh_s
        while True:
            mono = time.monotonic()
            steps: list[tuple[str, Callable[[], Any]]] = []
            if mono >= next_lease:
                next_lease = mono + self.cfg.lease_ttl_s / 3
                steps.append(("leases", self._renew_leases))
            if mono >= next_lamps:
                next_lamps = mono + self.cfg.lamps_refresh_s
                steps.append(("devices", self._load_devices))
            steps += [
                ("rates", self._refill_rates),
                ("republish", self._republish),
                ("acks", self._ack_timeouts),
                ("blink", self._blink_refresh),
                ("escalation", self._escalate),
                ("confirmations", self._record_blink_news),
                ("housekeeping", self._housekeeping),
            ]
            for name, step in steps:
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.stats[f"tick_{name}_errors"] += 1
                    log.warning("tick step %s failed: %s", name, exc)
            await asyncio.sleep(self.cfg.tick_s)

    async def _refill_rates(self) -> None:
        limiter = self._limiter
        if limiter is None:
            return
        limiter.refill(time.monotonic())
        for prefix in limiter.take_new_floods():
            log.warning("device over its message rate prefix=%s limited_total=%d", prefix, limiter.limited)

    async def _renew_leases(self) -> None:
        cfg = self.cfg
        try:
            got, holders = await self._db.call(
                _lease_round, cfg.owner, list(cfg.districts), cfg.lease_ttl_s, dict(self._free_since)
            )
            self._lease_ok_until = time.monotonic() + cfg.lease_ttl_s
        except Exception:
            if time.monotonic() < self._lease_ok_until:
                raise
            got, holders = set(), {}  # cannot renew and the lease has run out: another may act now
            if self.owned:
                log.warning("leases lost (database unreachable) districts=%s", ",".join(sorted(self.owned)))
        mono = time.monotonic()
        for district in cfg.districts:
            if district in holders:
                self._free_since.pop(district, None)
            else:
                self._free_since.setdefault(district, mono)
        lost = self.owned - got
        new = got - self.owned
        if lost:
            self._drop_districts(lost)
        self.owned = got
        if new:
            log.info("districts taken owner=%s districts=%s", cfg.owner, ",".join(sorted(new)))
            if self._listening:
                await self._reconcile(sorted(new))
        self._leased_once = True
        self._mark_ready()

    def _drop_districts(self, districts: set[str]) -> None:
        log.info("districts given up owner=%s districts=%s", self.cfg.owner, ",".join(sorted(districts)))
        for alert_id, alert in list(self._alerts.items()):
            if responsible_centre(alert_to_dict(alert)["centres"]) in districts:
                del self._alerts[alert_id]
                self._published.pop(alert_id, None)
                self._unpublished.pop(alert_id, None)  # the new owner publishes it at takeover
                blinks = self._blinks.pop(alert_id, None)
                if blinks is not None:
                    self._blink_alert.pop(blinks.source, None)
        for walk_id in [w for w, walk in self._walks.items() if walk.district in districts]:
            del self._walks[walk_id]
        for district in districts:
            self._tracker.forget_district(district)

    async def _reconcile(self, districts: list[str]) -> None:
        """Re-read what the tables say for these districts: open alerts and active walks."""
        if not districts:
            return
        alerts = await self._db.call(lambda c: active_alerts(c, districts=districts))
        for alert in alerts:
            if responsible_centre(alert_to_dict(alert)["centres"]) in self.owned:
                await self._on_alert(alert)
        walks = await self._db.call(active_walks, districts, float(self.cfg.holds.hold_s))
        for w in walks:
            if w.district is None:
                continue
            self._walks.setdefault(w.walk_id, _Walk(w.district))
            if w.lat is not None and w.lon is not None and w.ts_ms is not None:
                fix = Fix(w.lat, w.lon, w.ts_ms, w.accuracy_m, w.heading_deg, w.speed_mps)
                await self._walk_position(w.walk_id, w.district, fix)
        self.stats["reconciled"] += 1

    async def _ack_timeouts(self) -> None:
        due = self._tracker.due(now_ms())
        await self._send_many(due.retries, retry=True)
        if due.unanswered:
            self._write("unanswered", [c.cmd_id for c in due.unanswered])
        for cmd in due.unanswered:
            if cmd.action == "blink":
                await self._blink_answer(cmd, applied=False)
            elif cmd.action == "set_level":
                self._holds.forget(cmd.source, cmd.device_id)

    async def _blink_refresh(self) -> None:
        now = now_ms()
        policy = self.cfg.blink
        cmds = [
            self._command(lamp, "blink", "sos", blinks.source, policy.ttl_s, policy.level)
            for blinks in list(self._blinks.values())
            for lamp in refresh_due(blinks, now, policy)
        ]
        await self._send_many([c for c in cmds if c is not None])

    async def _housekeeping(self) -> None:
        now = now_ms()
        # Expired holds are harmless (a lamp whose hold ran out is commanded again either way) and
        # a pass over them costs ~1 ms at 1,000 walks: every few seconds, not every tick.
        if now < self._housekeeping_due_ms:
            return
        self._housekeeping_due_ms = now + HOUSEKEEPING_EVERY_MS
        self._holds.prune(now)
        idle_ms = WALK_IDLE_S * 1000
        for walk_id in [
            w for w, walk in self._walks.items() if walk.last_ms and now - walk.last_ms > idle_ms
        ]:
            del self._walks[walk_id]

    def snapshot(self) -> dict[str, Any]:
        """Counters and sizes for logs, tests and benchmarks."""
        return {
            "owner": self.cfg.owner,
            "owned": sorted(self.owned),
            "walks": len(self._walks),
            "alerts": len(self._alerts),
            "pending_commands": len(self._tracker.pending),
            "commands": dict(self._tracker.counts),
            "stats": dict(self.stats),
            "position_reasons": dict(self.reasons),
        }


def _with_lamp_news(
    details: tuple[tuple[str, str], ...], at: datetime, actor: str
) -> Callable[[Alert], Alert]:
    """The change that records which lamps confirmed, failed or were added (an active alert only)."""

    def change(alert: Alert) -> Alert:
        if not alert.is_active:
            return alert
        event = Event(at=at, actor=actor, action=EventAction.LAMPS_CONFIRMED, details=details)
        return dataclasses.replace(alert, timeline=(*alert.timeline, event))

    return change


def _with_due_escalations(now: datetime, policy: EscalationPolicy, actor: str) -> Callable[[Alert], Alert]:
    """The change that records every escalation step due at `now` (re-checked on the locked row)."""

    def change(alert: Alert) -> Alert:
        for step in due_escalations(alert, now, policy):
            alert = record_escalation(alert, step, now, actor)
        return alert

    return change


def _opt_float(value: object) -> float | None:
    if value is None:
        return None
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else math.nan


def _lease_round(
    conn: psycopg.Connection[Any],
    owner: str,
    candidates: list[str],
    ttl_s: float,
    free_since: dict[str, float],
) -> tuple[set[str], dict[str, str]]:
    """Keep the membership row alive, read who holds what, and take or give up leases by plan."""
    acquire_lease(conn, member_key(owner), owner, ttl_s=ttl_s)
    rows = conn.execute(
        "SELECT district_code, owner FROM controller_leases WHERE expires_at >= now()"
    ).fetchall()
    members = sum(1 for r in rows if str(r[0]).startswith(MEMBER_PREFIX))
    holders = {str(r[0]): str(r[1]) for r in rows if not str(r[0]).startswith(MEMBER_PREFIX)}
    plan = plan_leases(owner, candidates, holders, members, free_since, time.monotonic(), ttl_s)
    for district in plan.release:
        release_lease(conn, district, owner)
    got = {d for d in plan.acquire if acquire_lease(conn, d, owner, ttl_s=ttl_s)}
    return got, holders


def _release_all(conn: psycopg.Connection[Any], districts: list[str], owner: str) -> None:
    for district in [*districts, member_key(owner)]:
        release_lease(conn, district, owner)


def _flush_writes(conn: psycopg.Connection[Any], items: list[tuple[str, Any]]) -> None:
    """Write queued rows in one transaction, the same end state as applying them in order.

    The commands of the batch go first, in one statement, each already carrying the ack or the
    ``unanswered`` that came for it within the batch (most acks come a few ms after their
    command, well inside the 0.1 s a batch gathers); then the acks and unanswered marks of earlier
    commands and the position verdicts, one statement per run of a kind. (The writer runs in a
    thread: per-row round trips held the GIL against the event loop, and an ack's UPDATE rewrote
    every index of ``commands``.)"""
    at = datetime.now(UTC)
    order: list[CommandRecord] = []
    latest: dict[str, int] = {}  # cmd_id -> its latest row in `order`
    later: list[tuple[str, Any]] = []
    for kind, data in items:
        if kind == "cmd":
            latest[data.cmd_id] = len(order)
            order.append(_command_record(data))
        elif kind == "ack" and (i := latest.get(data[0])) is not None:
            if order[i].status in ("sent", "unanswered"):
                _, status, level, reason = data
                order[i] = replace(order[i], status=status, acked_at=at, effective_level=level, reason=reason)
        elif kind == "unanswered" and any(cmd_id in latest for cmd_id in data):
            for cmd_id in data:
                i = latest.get(cmd_id)
                if i is None:
                    later.append(("unanswered", [cmd_id]))
                elif order[i].status == "sent":
                    order[i] = replace(order[i], status="unanswered")
        else:
            later.append((kind, data))
    with conn.transaction():
        if order:
            insert_commands(conn, order)
        for kind, run in itertools.groupby(later, key=lambda item: item[0]):
            data = [d for _, d in run]
            if kind == "ack":
                record_acks(conn, data, acked_at=at)
            elif kind == "unanswered":
                mark_commands_unanswered(conn, [cmd_id for ids in data for cmd_id in ids])
            elif kind == "verdict":
                conn.execute(
                    "UPDATE walk_positions p SET accepted = v.accepted, reason = v.reason "
                    "FROM unnest(%s::text[], %s::timestamptz[], %s::boolean[], %s::text[]) "
                    "AS v(walk_id, ts, accepted, reason) WHERE p.walk_id = v.walk_id AND p.ts = v.ts",
                    (
                        [d[0] for d in data],
                        [datetime.fromtimestamp(d[1] / 1000, UTC) for d in data],
                        [d[2] for d in data],
                        [d[3] for d in data],
                    ),
                )


def _load_lamps(
    conn: psycopg.Connection[Any], previous: list[LampRow] | None
) -> tuple[list[LampRow], LampIndex, dict[str, LampRow]] | None:
    """The devices with their lamp index, or None when they are what ``previous`` holds."""
    rows = load_devices(conn)
    if rows == previous:
        return None
    lamps = [r for r in rows if r.kind == "lamp"]
    index = LampIndex([r.device_id for r in lamps], [r.lat for r in lamps], [r.lon for r in lamps])
    index.prepare_walker_grid()
    return rows, index, {r.device_id: r for r in rows}


def _command_record(cmd: LampCommand) -> CommandRecord:
    return CommandRecord(
        cmd_id=cmd.cmd_id,
        device_id=cmd.device_id,
        action=cmd.action,
        priority=cmd.priority,
        source=cmd.source,
        ttl_s=cmd.ttl_s,
        sent_at=datetime.fromtimestamp(cmd.ts_ms / 1000, UTC),
        level=cmd.level,
        district_code=cmd.district,
    )
