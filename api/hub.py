"""The live stream's hub: one LISTEN on PostgreSQL per API instance, fanned out to consoles.

Every change of an alert is saved with a `NOTIFY sl_alert` (store/alerts.py); the hub reads the
note (`store.notes.decode`; one it cannot read is counted and skipped), then the changed alert
once, and queues it to every connected console allowed to see it. A lost notification (the hub
reconnecting) costs nothing durable: consoles are then disconnected and
catch up from the database by their last event id when they reconnect.

Each console's queue is bounded (`ApiConfig.stream_queue`); a console that falls that far
behind gets an ``overflow`` message and is disconnected, so one slow browser never holds the
hub's memory or delays the others.

Residents' SOS sockets (`api.soslive`) ride on the same LISTEN: each watches one alert id
(`StreamHub.watch`) and is offered the changed alert's row (``{"type": "sos", "row": ...}``) from
the same read that feeds the consoles, through the same kind of bounded queue (a resident who
falls behind is closed with ``overflow`` and catches up by ``since`` when reconnecting).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

from alerts import alert_from_dict, allowed_actions
from alerts._errors import AlertError
from api.metrics import ApiMetrics
from api.schemas import AlertSummary
from runtime.logs import get_logger
from store.alerts import stream_alert_async
from store.connections import async_connection
from store.listen import listening
from store.notes import (
    ALERT_CHANNEL,
    LAMP_CHANNEL,
    OPERATOR_CHANNEL,
    AlertNote,
    BadNote,
    LampNote,
    decode,
    to_dict,
)
from store.types import AsyncConn, Row

log = get_logger(__name__)


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def alert_summary(row: Row) -> AlertSummary:
    """An alert as lists and the stream show it: state, place in words, last event; no track
    (the track is read through the alert's detail, which is audited)."""
    data = dict(row["data"])
    try:
        actions = [a.value for a in allowed_actions(alert_from_dict(data))]
    except AlertError:
        actions = []
    timeline = data.get("timeline") or []
    return AlertSummary(
        id=row["alert_id"],
        kind=row["kind"],
        state=row["status"],
        severity=data.get("severity"),
        created_at=data.get("created_at"),
        updated_at=_iso(row.get("updated_at")),
        districts=list(row["district_codes"]),
        place=data.get("place"),
        place_text_ko=data.get("place_text_ko"),
        place_text_en=data.get("place_text_en"),
        count=data.get("count", 1),
        device_ids=data.get("device_ids", []),
        areas=data.get("areas", []),
        last_event=timeline[-1] if timeline else None,
        allowed_actions=actions,
        event_id=int(row.get("event_id") or 0),
        # SOS alerts of 2+ residents from one source (address) within a window: grouped, all flagged.
        suspected_burst=bool(row.get("suspected_burst")),
        burst_group=row.get("burst_group"),
    )


# The resident whose position a live message carries (never sent to the console).
RESIDENT_KEY = "_resident_id"


def alert_message(row: Row, *, replay: bool = False) -> dict[str, Any]:
    """The stream message for one alert (`AlertSummary` under ``alert``)."""
    return {
        "type": "alert",
        "event_id": int(row.get("event_id") or 0),
        "replay": replay,
        "alert": alert_summary(row).model_dump(),
    }


@dataclass(eq=False)
class Subscriber:
    """One connected console: what it may see and its bounded queue."""

    districts: list[str] | None
    kinds: list[str] | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    username: str | None = None  # told when that operator's account or sessions change

    def wants(self, districts: list[str], kind: str | None) -> bool:
        """True when this console may see an item of these districts and kind."""
        if self.districts is not None and not set(self.districts) & set(districts):
            return False
        return self.kinds is None or kind is None or kind in self.kinds


@dataclass(eq=False)
class Watcher:
    """One resident's SOS socket: the alert it follows and its bounded queue."""

    alert_id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)


class StreamHub:
    """LISTEN sl_alert, sl_lamp and sl_operator; push each change to the consoles that may see it."""

    def __init__(self, database_url: str, metrics: ApiMetrics, queue_size: int) -> None:
        self._url = database_url
        self._metrics = metrics
        self._queue_size = queue_size
        self._subs: set[Subscriber] = set()
        self._watchers: dict[str, set[Watcher]] = {}
        self.ready = asyncio.Event()

    def subscribe(
        self, districts: list[str] | None, kinds: list[str] | None, username: str | None = None
    ) -> Subscriber:
        """Register a console; its queue starts receiving at once."""
        sub = Subscriber(districts, kinds, asyncio.Queue(maxsize=self._queue_size), username)
        self._subs.add(sub)
        self._metrics.stream_clients.set(len(self._subs))
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        """Forget a console."""
        self._subs.discard(sub)
        self._metrics.stream_clients.set(len(self._subs))

    def watch(self, alert_id: str) -> Watcher:
        """Register a resident's socket on one alert; its queue starts receiving at once."""
        watcher = Watcher(alert_id, asyncio.Queue(maxsize=self._queue_size))
        self._watchers.setdefault(alert_id, set()).add(watcher)
        self._metrics.sos_live_clients.inc()
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """Forget a resident's socket (again is harmless)."""
        watchers = self._watchers.get(watcher.alert_id)
        if watchers is None or watcher not in watchers:
            return
        watchers.discard(watcher)
        if not watchers:
            del self._watchers[watcher.alert_id]
        self._metrics.sos_live_clients.dec()

    def _offer_watcher(self, watcher: Watcher, message: dict[str, Any]) -> None:
        try:
            watcher.queue.put_nowait(message)
        except asyncio.QueueFull:
            while not watcher.queue.empty():
                watcher.queue.get_nowait()
            watcher.queue.put_nowait({"type": "overflow"})
            self._metrics.stream_dropped.inc()
            self.unwatch(watcher)

    def _offer(self, sub: Subscriber, message: dict[str, Any]) -> None:
        try:
            sub.queue.put_nowait(message)
            self._metrics.stream_messages.inc()
        except asyncio.QueueFull:
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait({"type": "overflow"})
            self._metrics.stream_dropped.inc()
            self._subs.discard(sub)

    def _broadcast(self, message: dict[str, Any], districts: list[str], kind: str | None) -> None:
        for sub in list(self._subs):
            if sub.wants(districts, kind):
                self._offer(sub, message)

    def _drop_all(self) -> None:
        for sub in list(self._subs):
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.queue.put_nowait({"type": "overflow"})
        self._subs.clear()
        for watchers in list(self._watchers.values()):
            for watcher in list(watchers):
                while not watcher.queue.empty():
                    watcher.queue.get_nowait()
                watcher.queue.put_nowait({"type": "overflow"})
                self.unwatch(watcher)

    async def _dispatch(self, reader: AsyncConn, channel: str, payload: str) -> None:
        if channel == OPERATOR_CHANNEL:  # payload: a username whose account or sessions changed
            for sub in list(self._subs):
                if sub.username == payload:
                    self._offer(sub, {"type": "account"})
            return
        try:
            note = decode(channel, payload)
        except BadNote as exc:
            self._metrics.stream_bad_notes.inc()
            log.warning("stream_notification_unreadable", channel=channel, error=str(exc))
            return
        if isinstance(note, LampNote):
            self._broadcast({"type": "lamp", **to_dict(note)}, [note.district], None)
            return
        if not isinstance(note, AlertNote):
            return
        alert_id = note.alert_id
        row = await stream_alert_async(reader, alert_id)
        if row is None:
            return
        for watcher in list(self._watchers.get(alert_id, ())):
            self._offer_watcher(watcher, {"type": "sos", "row": row})
        try:
            message = alert_message(row)
        except ValueError as exc:  # a row the summary cannot read: skip it, keep the stream
            log.warning("stream_alert_unreadable", alert=alert_id, error=str(exc))
            return
        if row.get("resident_id") is not None:
            # Whoever receives it reads the resident's position: `api.stream` audits it, then sends
            # the message without this key.
            message = {**message, RESIDENT_KEY: str(row["resident_id"])}
        self._broadcast(message, list(row["district_codes"]), str(row["kind"]))

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with capped, jittered backoff."""
        attempt = 0
        while True:
            try:
                async with (
                    listening(self._url, (ALERT_CHANNEL, LAMP_CHANNEL, OPERATOR_CHANNEL)) as notes,
                    async_connection(self._url) as reader,
                ):
                    self.ready.set()
                    attempt = 0
                    async for channel, payload in notes:
                        await self._dispatch(reader, channel, payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database gone: consoles reconnect and catch up later
                self.ready.clear()
                self._drop_all()
                delay = random.uniform(0.0, min(30.0, 1.5 ** min(10, attempt)))
                log.warning("stream_database_lost", error=str(exc), retry_in_s=round(delay, 1))
                attempt += 1
                await asyncio.sleep(delay)
