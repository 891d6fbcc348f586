"""The outbox of lamp commands: build, track, record and publish them; match their acks.

Every command is tracked (`controller._commands.CommandTracker`: retried once, then
``unanswered``), queued for its row (`controller._writes`) and published QoS 1 on
``sl/v1/{d}/{id}/cmd``. Operators' manual overrides (`store.notes.LampNote`) go out here too.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence

from broker import Ack, ConnectionLost, MqttSession, device_topic, encode
from controller._clock import now_ms
from controller._commands import Answered, CommandIds, CommandTracker, LampCommand, WrongDevice
from controller._devices import Devices
from controller._writes import WriteQueue
from runtime.logs import get_logger
from store.commands import AckRow, UnansweredRows
from store.notes import OVERRIDE_TTL_S, LampNote

log = get_logger(__name__)


class Outbox:
    """Lamp commands on their way: ``command`` builds one, ``send_many`` sends, ``acked`` and
    ``timeouts`` settle them."""

    def __init__(
        self, devices: Devices, writes: WriteQueue, stats: Counter[str], *, owner: str, retry_after_s: float
    ) -> None:
        self.devices = devices
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

    async def manual(self, note: LampNote) -> None:
        """An operator's override of a lamp (priority ``manual``)."""
        level = None if note.action == "clear" else note.level
        ttl_s = note.ttl_s or OVERRIDE_TTL_S
        source = note.source or "operator"
        await self.send(self.command(note.device_id, note.action, "manual", source, ttl_s, level))

    def drop(self, districts: set[str]) -> None:
        """Stop tracking the commands of districts given up (their acks are the new owner's)."""
        for district in districts:
            self.tracker.forget_district(district)
