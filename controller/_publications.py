"""Alert publications: each change of an alert to its control centres, once, and webhooks.

An alert is published (QoS 1) on ``cc/v1/{d}/alerts`` for each of its centres at every change
(a version is its timeline length and state); published means PUBACKed. Centres the broker did
not acknowledge are owed the alert's latest state, re-published from the alert's current row
once the broker is back (`republish`, every tick). Police and guard webhooks are posted from a
bounded queue by one task, retried with backoff.
"""

from __future__ import annotations

import asyncio
from collections import Counter, OrderedDict
from collections.abc import Sequence

import httpx

from alerts import Alert, alert_to_dict, alerts_topic, responsible_centre, route
from broker import ConnectionLost, MqttSession, backoff_delay_s, encode_alert
from controller._clock import now_ms
from runtime.logs import get_logger
from store.alerts import load_alert
from store.dbthread import DbThread

log = get_logger(__name__)

# Alerts whose latest change is not yet at (some of) its centres; beyond this the oldest is
# forgotten and counted (its next change publishes it again; the console has it from the database).
MAX_UNPUBLISHED = 10_000
# Webhook posts waiting; beyond this a post is dropped and counted.
WEBHOOK_QUEUE_SIZE = 1000

Version = tuple[int, str]  # (timeline length, state): a change of an alert


class AlertPublisher:
    """``publish_change`` an alert; ``republish`` what the broker missed; ``post`` webhooks."""

    def __init__(self, db: DbThread, stats: Counter[str], owned: set[str]) -> None:
        self._db = db
        self._stats = stats
        self._owned = owned
        self.mqtt: MqttSession | None = None  # set once the session is open
        self._published: dict[str, Version] = {}  # version acknowledged (PUBACK) by the broker
        self._publishing: dict[str, Version] = {}  # version being published now
        # alert id -> centres still owed its latest state (the broker was away).
        self._unpublished: OrderedDict[str, set[str]] = OrderedDict()
        self._webhooks: asyncio.Queue[tuple[str, bytes, str, str]] = asyncio.Queue(maxsize=WEBHOOK_QUEUE_SIZE)

    async def publish_change(self, alert: Alert) -> None:
        """Publish an alert's current version to its centres unless done (or under way) already."""
        version = (len(alert.timeline), alert.state.value)
        if self._published.get(alert.id) != version and self._publishing.get(alert.id) != version:
            self._publishing[alert.id] = version
            try:
                failed = await self.publish(alert, route(alert.place))
            finally:
                if self._publishing.get(alert.id) == version:
                    del self._publishing[alert.id]
            # Published means acknowledged: a change the broker never got is owed, not done.
            if not failed and alert.is_active:
                self._published[alert.id] = version
        if not alert.is_active:
            self._published.pop(alert.id, None)

    async def publish(self, alert: Alert, centres: Sequence[str]) -> set[str]:
        """Publish the alert to each centre (QoS 1); returns the centres the broker did not PUBACK
        (owed the alert's latest state from then on)."""
        mqtt = self.mqtt
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
                self._stats["alerts_published"] += 1
            except ConnectionLost as exc:
                self._stats["alert_publish_failed"] += 1
                failed.add(centre)
                log.warning("alert_not_published", alert=alert.id, centre=centre, error=str(exc))
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
                self._stats["alerts_unpublished_dropped"] += 1
                log.warning("alert_dropped_from_republish_queue", alert=dropped, reason="full")
        elif owed is not None and not owed:
            del self._unpublished[alert_id]

    async def republish(self) -> None:
        """Once the broker is back: each alert still owed gets its current row's state, once."""
        mqtt = self.mqtt
        if not self._unpublished or mqtt is None or not mqtt.connected:
            return
        for alert_id in list(self._unpublished):
            owed = self._unpublished.get(alert_id)
            if not owed:
                self._unpublished.pop(alert_id, None)
                continue
            alert = await self._db.call(load_alert, alert_id)
            centres = route(alert.place) if alert is not None else ()
            if alert is None or responsible_centre(centres) not in self._owned:
                self._unpublished.pop(alert_id, None)  # gone, or another controller's now
                continue
            targets = [*centres, *sorted(c for c in owed if c not in centres)]
            failed = await self.publish(alert, targets)
            if failed:
                return  # the broker went away again: the next tick tries again
            self._stats["alerts_republished"] += 1
            if alert.is_active:
                self._published[alert.id] = (len(alert.timeline), alert.state.value)

    def reached_centres(self, alert_id: str) -> bool:
        """True once the broker acknowledged a version of the alert for its centres and none is owed."""
        return alert_id in self._published and alert_id not in self._unpublished

    def forget(self, alert_id: str) -> None:
        """An alert of a district given up: its new owner publishes it at takeover."""
        self._published.pop(alert_id, None)
        self._unpublished.pop(alert_id, None)

    def post(self, url: str, body: bytes, content_type: str, alert_id: str) -> None:
        """Queue a webhook post (dropped and counted when the queue is full)."""
        try:
            self._webhooks.put_nowait((url, body, content_type, alert_id))
        except asyncio.QueueFull:
            self._stats["webhook_dropped"] += 1

    async def run_webhooks(self) -> None:
        """Post queued webhooks until cancelled, each tried three times with backoff."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                url, body, content_type, alert_id = await self._webhooks.get()
                for attempt in range(3):
                    try:
                        response = await client.post(
                            url, content=body, headers={"content-type": content_type}
                        )
                        response.raise_for_status()
                        self._stats["webhook_posted"] += 1
                        break
                    except httpx.HTTPError as exc:
                        self._stats["webhook_failed"] += 1
                        log.warning("webhook_failed", alert=alert_id, attempt=attempt, error=str(exc))
                        await asyncio.sleep(backoff_delay_s(attempt, base_s=1.0, cap_s=10.0))
