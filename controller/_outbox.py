"""The outbox of lamp commands: build, track, record and publish them; match their acks.

Every command is tracked (`controller._commands.CommandTracker`: retried once, then
``unanswered``), queued for its row (`controller._writes`) and published QoS 1 on
``sl/v1/{d}/{id}/cmd``. Operators' manual overrides (`store.notes.LampNote`) go out here too:
the API wrote each as a ``pending`` row with its cmd_id; the device is read again from the
database (a lamp provisioned a second ago is not in the periodic reload yet) and the command is
sent under that cmd_id, or settled unsent with a reason (`controller._commands.unsent_verdict`:
``undelivered`` for an unknown or offline lamp, ``expired`` when its time ran out first). A
pending row whose note never came is picked up by `sweep_pending`.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from broker import Ack, ConnectionLost, MqttSession, device_topic, encode
from controller._clock import now_ms
from controller._commands import (
    Answered,
    CommandIds,
    CommandTracker,
    LampCommand,
    WrongDevice,
    unsent_verdict,
)
from controller._devices import Devices
from controller._writes import WriteQueue
from runtime.logs import get_logger
from store.commands import AckRow, UnansweredRows, UnsentRow, pending_commands
from store.dbthread import DbThread
from store.notes import OVERRIDE_TTL_S, LampNote

# A pending row older than this whose note was not handled is picked up by the sweep.
PENDING_GRACE_S = 2.0
# Operators' commands already handled here, so a note and the sweep never send one twice.
_HANDLED_MEMORY = 4096

log = get_logger(__name__)


class Outbox:
    """Lamp commands on their way: ``command`` builds one, ``send_many`` sends, ``acked`` and
    ``timeouts`` settle them."""

    def __init__(
        self,
        devices: Devices,
        writes: WriteQueue,
        stats: Counter[str],
        *,
        owner: str,
        retry_after_s: float,
        db: DbThread | None = None,
    ) -> None:
        self.devices = devices
        self.db = db  # reads a device again for an operator's command (None: the cache only)
        self._handled: OrderedDict[str, None] = OrderedDict()
        self.writes = writes
        self.stats = stats
        self.tracker = CommandTracker(retry_after_s=retry_after_s)
        self.mqtt: MqttSession | None = None  # set once the session is open
        self.on_command: Callable[[LampCommand], None] | None = None  # a hook for benchmarks
        self._ids = CommandIds(f"c{owner[-4:]}{now_ms() % 10**9:x}")

    def command(
        self, device_id: str, action: str, priority: str, source: str, ttl_s: int, level: int | None
    ) -> LampCommand | None:
        """A new command for a known device (None, counted, for a device we do not know)."""
        device = self.devices.get(device_id)
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

    async def send(self, cmd: LampCommand | None) -> None:
        """Send one command (None: nothing)."""
        if cmd is not None:
            await self.send_many([cmd])

    async def send_many(
        self, cmds: Sequence[LampCommand | None], *, retry: bool = False, wait: bool = True
    ) -> None:
        """Track, record and publish commands (None entries are skipped); the publishes wait for
        their PUBACKs together.

        ``wait=False`` (walk brightening) hands the messages to the connection and returns: the
        next wake-up is handled while the PUBACKs are on their way, instead of one broker round
        trip per walk position in a row; the lamp's ack (retried once when missing, then
        ``unanswered``) is what tells a command arrived.
        """
        sending = [cmd for cmd in cmds if cmd is not None]
        now = now_ms()
        for cmd in sending:
            if not retry:
                self.tracker.sent(cmd, now)
                if self.on_command is not None:
                    self.on_command(cmd)
            self.stats["commands_retried" if retry else "commands_sent"] += 1
            self.writes.command(cmd)
        mqtt = self.mqtt
        if mqtt is None or not sending:
            return
        if wait:
            await asyncio.gather(*(self._publish(mqtt, cmd) for cmd in sending))
            return
        for cmd in sending:
            try:
                mqtt.publish_nowait(device_topic(cmd.district, cmd.device_id, "cmd"), encode(cmd.to_wire()))
            except ConnectionLost as exc:
                self.stats["publish_failed"] += 1
                log.warning("command_not_published", cmd_id=cmd.cmd_id, device=cmd.device_id, error=str(exc))

    async def _publish(self, mqtt: MqttSession, cmd: LampCommand) -> None:
        try:
            await mqtt.publish(device_topic(cmd.district, cmd.device_id, "cmd"), encode(cmd.to_wire()), qos=1)
        except ConnectionLost as exc:
            # Tracked all the same: the retry (or the unanswered state) follows from the tracker.
            self.stats["publish_failed"] += 1
            log.warning("command_not_published", cmd_id=cmd.cmd_id, device=cmd.device_id, error=str(exc))

    def acked(self, device_id: str, ack: Ack, now: int) -> Answered | None:
        """Match an ack from `device_id` and record it; None when it settles nothing of ours
        (another controller's command, one already settled, or one sent to another device)."""
        answered = self.tracker.acked(ack.cmd_id, ack.status, now, sender=device_id)
        if answered is None:
            return None  # another controller's command, or one already settled
        if isinstance(answered, WrongDevice):
            # A device acking a command sent to another lamp: a faked confirmation (issue 15).
            self.stats["acks_wrong_device"] += 1
            log.warning(
                "ack_refused_wrong_device",
                cmd_id=ack.cmd_id,
                device=device_id,
                target=answered.command.device_id,
                action=answered.command.action,
                source=answered.command.source,
            )
            return None
        self.writes.put(AckRow(answered.command.cmd_id, ack.status, ack.effective_level, ack.reason))
        self.stats[f"acks_{answered.state}"] += 1
        return answered

    async def timeouts(self) -> tuple[LampCommand, ...]:
        """Send again the commands whose ack is overdue; returns those given up on (unanswered)."""
        due = self.tracker.due(now_ms())
        await self.send_many(due.retries, retry=True)
        if due.unanswered:
            self.writes.put(UnansweredRows(tuple(c.cmd_id for c in due.unanswered)))
        return due.unanswered

    async def manual(self, note: LampNote, *, expires_ms: int | None = None) -> None:
        """An operator's override of a lamp (priority ``manual``): sent under the note's cmd_id,
        or settled unsent with the reason (never dropped without a word on its row)."""
        cmd_id = note.cmd_id or self._ids()
        if cmd_id in self._handled:
            return
        self._handled[cmd_id] = None
        while len(self._handled) > _HANDLED_MEMORY:
            self._handled.popitem(last=False)
        level = None if note.action == "clear" else note.level
        ttl_s = note.ttl_s or OVERRIDE_TTL_S
        source = note.source or "operator"
        now = now_ms()
        if self.db is not None:
            target = await self.devices.fresh(self.db, note.device_id)
            device_district, online = (target.district, target.online) if target else (None, False)
        else:
            cached = self.devices.get(note.device_id)
            device_district, online = (cached.district if cached else None), cached is not None
        unsent = unsent_verdict(
            district=note.district,
            device_district=device_district,
            online=online,
            expires_ms=expires_ms,
            now_ms=now,
        )
        if unsent is not None:
            self.stats[f"manual_{unsent.state}_{unsent.reason}"] += 1
            log.info(
                "operator_command_not_sent",
                cmd_id=cmd_id,
                device=note.device_id,
                status=str(unsent.state),
                reason=unsent.reason,
            )
            self.writes.put(UnsentRow(cmd_id, str(unsent.state), unsent.reason))
            return
        cmd = LampCommand(
            cmd_id=cmd_id,
            device_id=note.device_id,
            district=note.district,
            action=note.action,
            priority="manual",
            source=source,
            ts_ms=now,
            ttl_s=ttl_s,
            level=level,
        )
        await self.send(cmd)

    async def sweep_pending(self, districts: Sequence[str]) -> int:
        """Send (or settle) the districts' operators' commands still pending a while after they
        were asked for: a note lost while the listener reconnected, or sent while no controller
        held the district. Returns how many it handled."""
        if self.db is None or not districts:
            return 0
        before = datetime.now(UTC) - timedelta(seconds=PENDING_GRACE_S)
        rows = await self.db.call(pending_commands, list(districts), before)
        handled = 0
        for r in rows:
            if r["cmd_id"] in self._handled or r["action"] not in ("set_level", "clear"):
                continue
            note = LampNote(
                device_id=r["device_id"],
                district=r["district_code"],
                level=r["level"] if r["action"] == "set_level" else None,
                ttl_s=r["ttl_s"],
                source=r["source"],
                action=r["action"],
                cmd_id=r["cmd_id"],
            )
            await self.manual(note, expires_ms=round(r["expires_at"].timestamp() * 1000))
            handled += 1
        if handled:
            self.stats["pending_swept"] += handled
        return handled

    def drop(self, districts: set[str]) -> None:
        """Stop tracking the commands of districts given up (their acks are the new owner's)."""
        for district in districts:
            self.tracker.forget_district(district)
