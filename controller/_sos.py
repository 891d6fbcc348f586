"""SOS and the alerts a controller is responsible for: publication, blinking, escalation, guards.

Every change of an alert whose responsible centre (`alerts.responsible_centre`) this controller
owns is published to its centres (`controller._publications`). While an SOS is active the lamps
around the resident's latest position blink (`controller._blink`), following them as they move;
lamps that confirm, fail or are added go into the alert's timeline; due escalation steps
(`alerts.due_escalations`) are recorded and carried out (the city centre, the police webhook with
CAP). An SOS inside a guard zone, once its centres have it, is sent to the zone's guards on duty
(`alerts.guards_on_duty` over the roster, `store.guards`; a zone without a roster: the guards'
webhook during the data's patrol hours, `controller._guards`), and when none of them acknowledges
in time the chain goes on (`guards_unanswered`: the city centre and the police webhook).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from alerts import (
    CITY_CENTRE,
    Alert,
    AlertKind,
    EscalationKind,
    EscalationPolicy,
    Event,
    EventAction,
    alert_to_dict,
    due_escalations,
    escalations_done,
    guards_notified,
    guards_on_duty,
    notify_guards,
    record_escalation,
    render_cap,
    responsible_centre,
    route,
)
from controller._blink import BlinkSet, blink_targets, confirm, fail, move_to, refresh_due
from controller._clock import now_ms
from controller._commands import LampCommand
from controller._guards import guard_zone
from controller._outbox import Outbox
from controller._publications import AlertPublisher
from controller.config import ControllerConfig
from geo import load_safety_zones
from runtime.logs import bound_context, get_logger
from store.alerts import active_alerts, change_alert, load_alert
from store.dbthread import DbThread
from store.guards import notify_guards_change, zone_roster
from store.notes import AlertNote

log = get_logger(__name__)


def blink_source(alert_id: str) -> str:
    """The override key of an alert's blink on the lamps (firmware ids are at most 64 characters)."""
    return alert_id[:64]


class Sos:
    """The active alerts of the districts this controller owns, and their blinking lamps."""

    def __init__(
        self,
        cfg: ControllerConfig,
        db: DbThread,
        outbox: Outbox,
        publisher: AlertPublisher,
        stats: Counter[str],
        owned: set[str],
    ) -> None:
        self._cfg = cfg
        self._db = db
        self._outbox = outbox
        self._devices = outbox.devices
        self._publisher = publisher
        self._stats = stats
        self._owned = owned
        self._zones = cfg.safety_zones if cfg.safety_zones is not None else load_safety_zones()
        self._actor = f"controller:{cfg.owner}"
        self._clock = cfg.clock or (lambda: datetime.now(UTC))
        self._guards_waiting: set[str] = set()  # SOS whose centres do not have it yet: guards wait
        self.alerts: dict[str, Alert] = {}
        self._blinks: dict[str, BlinkSet] = {}
        self._blink_alert: dict[str, str] = {}  # blink source -> alert id

    async def on_note(self, note: AlertNote) -> None:
        """An alert changed: act on it when its responsible centre is ours."""
        if responsible_centre(note.districts) not in self._owned:
            return
        alert = await self._db.call(load_alert, note.alert_id)
        if alert is not None:
            await self.on_alert(alert)

    async def on_alert(self, alert: Alert) -> None:
        """An alert this controller is responsible for changed (or was found at takeover)."""
        with bound_context(alert=alert.id):
            await self._on_alert(alert)

    async def _on_alert(self, alert: Alert) -> None:
        await self._publisher.publish_change(alert)
        if alert.is_active:
            self.alerts[alert.id] = alert
            if alert.kind is AlertKind.SOS:
                await self._blink_follow(alert)
                await self._notify_guards(alert)
        else:
            self.alerts.pop(alert.id, None)
            self._guards_waiting.discard(alert.id)
            await self._blink_stop(alert.id)

    def _blink(self, lamp: str, source: str) -> LampCommand | None:
        policy = self._cfg.blink
        return self._outbox.command(lamp, "blink", "sos", source, policy.ttl_s, policy.level)

    def _clear(self, lamp: str, source: str) -> LampCommand | None:
        return self._outbox.command(lamp, "clear", "sos", source, self._cfg.blink.ttl_s, None)

    async def _blink_follow(self, alert: Alert) -> None:
        blinks = self._blinks.get(alert.id)
        if blinks is None:
            blinks = self._blinks[alert.id] = BlinkSet(alert.id, blink_source(alert.id))
            self._blink_alert[blinks.source] = alert.id
        lat, lon = alert.last_position
        if blinks.at == (lat, lon):
            return  # same place: keep the set as it is (with any replacement lamps added)
        blinks.at = (lat, lon)
        targets = blink_targets(self._devices.within, self._devices.nearest, lat, lon, self._cfg.blink)
        change = move_to(blinks, targets, now_ms())
        cmds = [self._blink(lamp, blinks.source) for lamp in change.blink]
        cmds += [self._clear(lamp, blinks.source) for lamp in change.clear]
        await self._outbox.send_many(cmds)

    async def _blink_stop(self, alert_id: str) -> None:
        blinks = self._blinks.pop(alert_id, None)
        if blinks is None:
            return
        self._blink_alert.pop(blinks.source, None)
        await self._outbox.send_many([self._clear(lamp, blinks.source) for lamp in blinks.active])
        self._stats["blinks_stopped"] += 1

    async def blink_answer(self, cmd: LampCommand, applied: bool) -> None:
        """A blink command was applied, or not (rejected, expired, unanswered): confirm the lamp,
        or report it and blink the next nearest one instead."""
        alert_id = self._blink_alert.get(cmd.source)
        blinks = self._blinks.get(alert_id) if alert_id is not None else None
        alert = self.alerts.get(alert_id) if alert_id is not None else None
        if blinks is None or alert is None:
            return
        if applied:
            confirm(blinks, cmd.device_id)
            return
        lat, lon = alert.last_position
        added = fail(blinks, cmd.device_id, self._devices.nearest, lat, lon, self._cfg.blink, now_ms())
        if added is not None:
            await self._outbox.send(self._blink(added, blinks.source))

    async def lamp_back(self, lamp_id: str) -> int:
        """A lamp came (back) online, maybe on another broker node: the blinks it should show
        were perhaps lost while it was away, so they are sent again now; returns how many."""
        now = now_ms()
        cmds = []
        for blinks in list(self._blinks.values()):
            if lamp_id in blinks.lamps:
                blinks.sent_ms[lamp_id] = now
                cmds.append(self._blink(lamp_id, blinks.source))
        await self._outbox.send_many(cmds)
        return sum(1 for cmd in cmds if cmd is not None)

    def blinking_lamps(self) -> set[str]:
        """Every lamp of every active SOS's blink set."""
        return {lamp for blinks in self._blinks.values() for lamp in blinks.lamps}

    async def refresh_blinks(self) -> None:
        """Send again the blinks with less than half their time to live left."""
        now = now_ms()
        cmds = [
            self._blink(lamp, blinks.source)
            for blinks in list(self._blinks.values())
            for lamp in refresh_due(blinks, now, self._cfg.blink)
        ]
        await self._outbox.send_many(cmds)

    async def record_blink_news(self) -> None:
        """Write the lamps confirmed, failed or added since the last tick into the alerts' timelines."""
        for alert_id, blinks in list(self._blinks.items()):
            if blinks.has_news():
                change = _with_lamp_news(blinks.take_news(), datetime.now(UTC), self._actor)
                _, after = await self._db.call(change_alert, alert_id, change)
                await self.on_alert(after)

    async def escalate(self) -> None:
        """Record and carry out the escalation steps now due."""
        for alert_id in list(self._guards_waiting):
            waiting = self.alerts.get(alert_id)
            if waiting is None:
                self._guards_waiting.discard(alert_id)
            else:
                await self._notify_guards(waiting)
        now = datetime.now(UTC)
        policy = self._cfg.escalation
        for alert_id, alert in list(self.alerts.items()):
            if not due_escalations(alert, now, policy):
                continue
            change = _with_due_escalations(now, policy, self._actor)
            before, after = await self._db.call(change_alert, alert_id, change)
            done = escalations_done(after) - escalations_done(before)
            self._stats["escalations"] += len(done)
            if done:
                log.info("alert_escalated", alert=alert_id, steps=sorted(done))
            await self.on_alert(after)
            if EscalationKind.NOTIFY_CITY in done:
                await self._publisher.publish(after, [CITY_CENTRE])
            if EscalationKind.GUARDS_UNANSWERED in done:
                log.warning("guards_did_not_answer", alert=alert_id)
                await self._publisher.publish(after, [CITY_CENTRE])
            police = {EscalationKind.POLICE, EscalationKind.GUARDS_UNANSWERED} & done
            if police and self._cfg.police_webhook_url:
                cap = render_cap(after).xml.encode()
                self._publisher.post(self._cfg.police_webhook_url, cap, "application/cap+xml", after.id)

    async def _notify_guards(self, alert: Alert) -> None:
        """An SOS inside a guard zone: once its centres have it (never before), send it to the
        zone's guards on duty now and call the guards' webhook; nobody outside their shifts."""
        dong = alert.place.dong_code
        if guards_notified(alert) or not dong:
            return
        if not self._publisher.reached_centres(alert.id):
            self._guards_waiting.add(alert.id)  # retried every tick until the centres have it
            return
        self._guards_waiting.discard(alert.id)
        duty_at = self._clock()
        roster = await self._db.call(zone_roster, dong)
        if roster:
            on_duty = guards_on_duty(roster, dong, duty_at)
            if not on_duty:
                return
            zone_name = alert.place.dong_name or dong
        else:
            zone = guard_zone(alert, self._zones, duty_at)  # no roster: the zone's webhook only
            if zone is None:
                return
            on_duty, zone_name = (), zone.dong
        now = datetime.now(UTC)
        usernames = [g.username for g in on_duty]
        actor = self._actor

        def change(a: Alert) -> Alert:
            return notify_guards(a, dong, zone_name, on_duty, now, actor)

        before, after = await self._db.call(notify_guards_change, alert.id, change, usernames, now)
        if after is before:
            return
        self._stats["guard_notifications"] += 1
        log.info("guards_notified", zone=dong, guards=len(usernames))
        await self.on_alert(after)
        if self._cfg.guard_webhook_url:
            body = json.dumps(
                {"guard_zone": dong, "guards": usernames, "alert": alert_to_dict(after)}
            ).encode()
            self._publisher.post(self._cfg.guard_webhook_url, body, "application/json", after.id)

    def drop(self, districts: set[str]) -> None:
        """Forget the alerts of districts given up (their new owner publishes and blinks them)."""
        for alert_id, alert in list(self.alerts.items()):
            if responsible_centre(route(alert.place)) in districts:
                del self.alerts[alert_id]
                self._publisher.forget(alert_id)
                blinks = self._blinks.pop(alert_id, None)
                if blinks is not None:
                    self._blink_alert.pop(blinks.source, None)

    async def reconcile(self, districts: list[str]) -> None:
        """Take up the open alerts of these districts from the tables."""
        for alert in await self._db.call(lambda c: active_alerts(c, districts=districts)):
            if responsible_centre(route(alert.place)) in self._owned:
                await self.on_alert(alert)


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
