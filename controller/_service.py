"""The controller service: wake-ups from PostgreSQL and messages from MQTT in, lamp commands and
control-centre alerts out. `Controller` composes the parts and runs their tasks; each part has
one concern:

- ``_walks.Walks``               walk-along brightening and beacon sightings;
- ``_sos.Sos``                   SOS and alerts: publication, blinking, escalation, guards;
- ``_outbox.Outbox``             lamp commands: build, track, publish, match acks (and manual
                                 overrides); ``_writes.WriteQueue`` their rows, batched;
- ``_publications.AlertPublisher`` alert publications to control centres, webhooks;
- ``_takeover.Leases``           district leases, and reconciliation of the districts taken.

Tasks (one ``asyncio.TaskGroup``): ``listen`` (LISTEN sl_alert/sl_walk/sl_lamp, reconnecting, and
re-reading the tables after every connect), ``mqtt`` (acks, beacon events, and births: a lamp that
(re)connects, on any broker node, gets its live walk holds and SOS blinks again), ``tick`` (leases,
ack timeouts, blink refresh, escalation, confirmations), ``writer`` (commands and acks to the
commands table, batched), ``webhook`` (CAP to the police webhook, guards).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from broker import (
    ConnectionLost,
    DeviceRateLimiter,
    MqttSession,
    PayloadError,
    TopicError,
    backoff_delay_s,
    decode_ack,
    decode_birth,
    decode_event,
    parse_device_topic,
)
from controller._clock import now_ms
from controller._commands import LampCommand
from controller._devices import Devices
from controller._outbox import Outbox
from controller._positions import service_area
from controller._publications import AlertPublisher
from controller._sos import Sos
from controller._takeover import Leases
from controller._walks import Walks
from controller._writes import WriteQueue
from controller.config import ControllerConfig
from runtime import tuning
from runtime.logs import get_logger
from store.dbthread import DbError, DbThread
from store.listen import listening
from store.notes import CHANNELS, AlertNote, LampNote, WalkNote, WalkPositions, decode

log = get_logger(__name__)

# QoS 1 commands on their way to the broker at once. paho's default of 20 held the rest back until
# PUBACKs were read, which a busy event loop does late: at 2,000 walkers the hold refreshes queued
# behind it for up to 0.9 s (bench brighten, slowest 1 % all between controller and lamp).
COMMANDS_IN_FLIGHT = 1000
# How often the operators' commands still pending are looked for (a lost note, a district taken).
PENDING_SWEEP_S = 1.0
# How long the database listener waits for the broker at start before reading the alerts.
FIRST_CONNECT_WAIT_S = 5.0


class Controller:
    """One controller process's state and tasks; ``await Controller(cfg).run()``."""

    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self.owned: set[str] = set()  # the districts leased now (updated in place)
        self.ready = asyncio.Event()
        self.stats: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.release_on_exit = True
        self._db = DbThread(cfg.database_url, name="controller-db")
        self._devices = Devices()
        self._writes = WriteQueue(self._db, self.stats)
        self._outbox = Outbox(
            self._devices,
            self._writes,
            self.stats,
            owner=cfg.owner,
            retry_after_s=cfg.retry_after_s,
            db=self._db,
        )
        self._publisher = AlertPublisher(self._db, self.stats, self.owned)
        self._walks = Walks(cfg, self._outbox, self.stats, self.reasons, self.owned)
        self._sos = Sos(cfg, self._db, self._outbox, self._publisher, self.stats, self.owned)
        self._leases = Leases(
            cfg, self._db, self.owned, self.stats, sos=self._sos, walks=self._walks, outbox=self._outbox
        )
        self._limiter = (
            DeviceRateLimiter(cfg.device_rate_per_s, cfg.device_burst) if cfg.device_rate_per_s > 0 else None
        )
        self._listening = False
        self._mqtt_connections = 0  # the broker session's connections seen by the tick

    @property
    def mqtt(self) -> MqttSession | None:
        """The broker session while running."""
        return self._outbox.mqtt

    @property
    def on_command(self) -> Callable[[LampCommand], None] | None:
        """A hook called with every command sent (benchmarks)."""
        return self._outbox.on_command

    @on_command.setter
    def on_command(self, hook: Callable[[LampCommand], None] | None) -> None:
        self._outbox.on_command = hook

    async def run(self) -> None:
        """Run until cancelled; on a clean stop the leases are given up for another to take."""
        try:
            if self.cfg.gazetteer is None:  # the vendored gazetteer of the position checks, loaded once
                await asyncio.to_thread(service_area)
            attempt = 0
            while True:
                try:
                    await self._devices.reload(self._db)
                    break
                except DbError as exc:
                    log.warning("database_unreachable", attempt=attempt, error=str(exc))
                    await asyncio.sleep(backoff_delay_s(attempt, base_s=0.5, cap_s=10.0))
                    attempt += 1
            subs = [
                ("sl/v1/+/+/ack", 1),
                *(
                    (f"sl/v1/{d}/+/{channel}", 1)
                    for d in self.cfg.districts
                    for channel in ("event", "birth")
                ),
            ]
            async with MqttSession(
                self.cfg.mqtt,
                client_id=f"ctl-{self.cfg.owner}",
                subscriptions=subs,
                max_inflight=COMMANDS_IN_FLIGHT,
            ) as mqtt:
                self._outbox.mqtt = self._publisher.mqtt = mqtt
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._listen_loop(mqtt), name="listen")
                    tg.create_task(self._mqtt_loop(mqtt), name="mqtt")
                    tg.create_task(self._tick_loop(), name="tick")
                    tg.create_task(self._writes.run(), name="writer")
                    tg.create_task(self._publisher.run_webhooks(), name="webhook")
        finally:
            if self.release_on_exit:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._leases.release_all())
            self.owned.clear()
            self._db.close()

    def _mark_ready(self) -> None:
        if self._listening and self._leases.renewed_once and not self.ready.is_set():
            tuning.settle("controller")
            self.ready.set()

    # ------------------------------------------------------------------ PostgreSQL wake-ups

    async def _listen_loop(self, mqtt: MqttSession) -> None:
        # Commands for alerts read at start go out on a connection, not into a first attempt
        # that the tracker would count as a silent lamp; a broker still away after this
        # wait is covered by the retry and the alerts' re-publication.
        with contextlib.suppress(ConnectionLost):
            await mqtt.wait_connected(FIRST_CONNECT_WAIT_S)
        attempt = 0
        while True:
            try:
                async with listening(self.cfg.database_url, CHANNELS) as notes:
                    attempt = 0
                    self._listening = True
                    # Anything notified while we were not listening is in the tables.
                    await self._leases.reconcile(sorted(self.owned))
                    self._mark_ready()
                    async for channel, payload in notes:
                        await self._on_notify(channel, payload)
                        # Notifications come back to back: let the loop write the commands just
                        # queued (and read acks) before the next one.
                        await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._listening = False
                log.warning("database_listener_lost", attempt=attempt, error=str(exc))
            await asyncio.sleep(backoff_delay_s(attempt, base_s=0.5, cap_s=10.0))
            attempt += 1

    async def _on_notify(self, channel: str, payload: str) -> None:
        """A note to the part it concerns; one that cannot be read or handled is counted and logged."""
        try:
            note = decode(channel, payload)
            if isinstance(note, AlertNote):
                await self._sos.on_note(note)
            elif isinstance(note, WalkNote | WalkPositions):
                await self._walks.on_note(note)
            elif isinstance(note, LampNote) and note.district in self.owned:
                await self._outbox.manual(note)
        except Exception as exc:  # BadNote among them
            self.stats["notify_handler_errors"] += 1
            log.warning("notification_dropped", channel=channel, error=str(exc))

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
                log.info("retained_message_skipped", topic=msg.topic)
                continue
            try:
                await self._on_mqtt(msg.topic, msg.payload)
            except Exception as exc:  # one bad message never stops the controller
                self.stats["mqtt_handler_errors"] += 1
                log.warning("message_dropped", topic=msg.topic, error=str(exc))

    async def _on_mqtt(self, topic: str, payload: bytes) -> None:
        try:
            parsed = parse_device_topic(topic)
        except TopicError as exc:
            self.stats["bad_topic"] += 1
            log.info("bad_topic", topic=topic, error=str(exc))
            return
        now = now_ms()
        try:
            if parsed.channel == "ack":
                answered = self._outbox.acked(parsed.device_id, decode_ack(payload, now), now)
                if answered is not None:
                    await self._settled(answered.command, answered.state == "applied")
            elif parsed.channel == "birth":
                decode_birth(payload, now)  # a device's new connection (refused when malformed)
                await self._lamp_back(parsed.device_id)
            elif parsed.channel == "event" and parsed.district_code in self.owned:
                event = decode_event(payload, now)
                if event.type == "beacon" and event.token_hash is not None:
                    await self._walks.on_beacon(parsed.device_id, event.token_hash, event.ts, now)
        except PayloadError as exc:
            self.stats[f"bad_{parsed.channel}"] += 1
            log.info("message_refused", channel=parsed.channel, device=parsed.device_id, error=str(exc))

    async def _lamp_back(self, device_id: str) -> None:
        """A device's birth: a new connection, after a power cut, a network loss or its broker
        node's death (docs/reliability.md). Commands published while it was away went nowhere (a
        new session, maybe on another node, has no queue of the old one), so the holds and blinks
        it should show now are sent again. Only what this controller holds is sent: the walks and
        alerts of the districts it owns."""
        walks = await self._walks.lamp_back(device_id)
        blinks = await self._sos.lamp_back(device_id)
        if walks or blinks:
            self.stats["lamp_back_resent"] += walks + blinks
            log.info("lamp_back_resent", device=device_id, walk_holds=walks, blinks=blinks)

    async def _after_reconnect(self) -> None:
        """The broker session connected again (its node died, or the broker restarted): births
        published while it was away were not seen, so every lamp it holds an override for, or
        that blinks for an SOS, gets its desired state again (a lamp not back yet gets it from
        its own birth later)."""
        mqtt = self._outbox.mqtt
        if mqtt is None or mqtt.connections == self._mqtt_connections or not mqtt.connected:
            return
        first = self._mqtt_connections == 0
        self._mqtt_connections = mqtt.connections
        if first:
            return
        lamps = set(self._walks.holds.lamps()) | self._sos.blinking_lamps()
        for lamp in sorted(lamps):
            await self._lamp_back(lamp)
        log.info("mqtt_reconnected_states_resent", lamps=len(lamps), connections=mqtt.connections)

    async def _settled(self, cmd: LampCommand, applied: bool) -> None:
        """A command answered (or given up on): tell the part that sent it."""
        if cmd.action == "blink":
            await self._sos.blink_answer(cmd, applied)
        elif cmd.action == "set_level" and not applied:
            self._walks.holds.forget(cmd.source, cmd.device_id)  # the next position may command it

    # ------------------------------------------------------------------ ticks

    async def _tick_loop(self) -> None:
        next_lease = 0.0
        next_lamps = time.monotonic() + self.cfg.lamps_refresh_s
        next_pending = 0.0
        while True:
            mono = time.monotonic()
            steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
            if mono >= next_lease:
                next_lease = mono + self.cfg.lease_ttl_s / 3
                steps.append(("leases", self._renew_leases))
            if mono >= next_lamps:
                next_lamps = mono + self.cfg.lamps_refresh_s
                steps.append(("devices", lambda: self._devices.reload(self._db)))
            if mono >= next_pending and self._listening:
                next_pending = mono + PENDING_SWEEP_S
                steps.append(("pending", lambda: self._outbox.sweep_pending(sorted(self.owned))))
            steps += [
                ("reconnected", self._after_reconnect),
                ("rates", self._refill_rates),
                ("republish", self._publisher.republish),
                ("acks", self._ack_timeouts),
                ("blink", self._sos.refresh_blinks),
                ("escalation", self._sos.escalate),
                ("confirmations", self._sos.record_blink_news),
                ("housekeeping", self._walks.housekeeping),
            ]
            for name, step in steps:
                try:
                    await step()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.stats[f"tick_{name}_errors"] += 1
                    log.warning("tick_step_failed", step=name, error=str(exc))
            await asyncio.sleep(self.cfg.tick_s)

    async def _renew_leases(self) -> None:
        await self._leases.renew(reconcile_new=self._listening)
        self._mark_ready()

    async def _refill_rates(self) -> None:
        limiter = self._limiter
        if limiter is None:
            return
        limiter.refill(time.monotonic())
        for prefix in limiter.take_new_floods():
            log.warning(
                "device_over_message_rate",
                device=prefix.rsplit("/", 1)[-1],
                topic=prefix,
                limited_total=limiter.limited,
            )

    async def _ack_timeouts(self) -> None:
        for cmd in await self._outbox.timeouts():
            await self._settled(cmd, applied=False)

    def snapshot(self) -> dict[str, Any]:
        """Counters and sizes for logs, tests and benchmarks."""
        return {
            "owner": self.cfg.owner,
            "owned": sorted(self.owned),
            "walks": len(self._walks.walks),
            "alerts": len(self._sos.alerts),
            "pending_commands": len(self._outbox.tracker.pending),
            "commands": dict(self._outbox.tracker.counts),
            "stats": dict(self.stats),
            "position_reasons": dict(self.reasons),
        }
