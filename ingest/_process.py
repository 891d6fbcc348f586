"""Turn a batch of raw MQTT messages into rows: decode, validate, check the sender, count seq.

Pure apart from the per-worker :class:`SeqTracker` it updates: no sockets, no database, no
clock (``now_ms`` comes in). The same function handles live batches and a replayed spool, so a
spooled message becomes exactly the rows it would have become live.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import msgspec

from broker import (
    Ack,
    Birth,
    Event,
    PayloadError,
    State,
    TopicError,
    decode_ack,
    decode_birth,
    decode_event,
    decode_state,
    decode_telemetry,
    parse_device_topic,
)

# Telemetry and events carry no bdseq on the wire (DESIGN.md §3), and the dedup key must come
# from the message alone (a redelivery after a restart must map to the same key), so it is 0.
ROW_BDSEQ: Final = 0
_SEQ_MASK: Final = 2**62 - 1


class RawMessage(NamedTuple):
    """One message as received (or as read back from the spool)."""

    topic: str
    payload: bytes
    qos: int = 0


class DeadLetter(NamedTuple):
    """A refused message: where it came from, its bytes, why."""

    topic: str
    payload: bytes
    reason: str
    kind: str  # the counter it goes to: "topic", "payload", "unknown_device", ...


@dataclass(frozen=True, slots=True)
class SenderCheck:
    """What the identity check said about an accepted message worth a flag."""

    device_id: str
    district_code: str
    flag: str
    detail: str


@dataclass(slots=True)
class DeviceBatch:
    """What one batch says about one device: newest telemetry, counters as increments."""

    device_id: str
    last_ts_ms: int = -1
    last_seq: int = 0
    level: int | None = None
    faults: tuple[str, ...] = ()
    summary: bytes = b""
    messages: int = 0
    seq_gaps: int = 0
    seq_duplicates: int = 0

    @property
    def last_seen(self) -> datetime:
        """The newest telemetry's device time."""
        return datetime.fromtimestamp(self.last_ts_ms / 1000, UTC)


@dataclass(slots=True)
class Processed:
    """Rows and side effects of one batch, with the source message of every row."""

    telemetry: list[tuple[Any, ...]] = field(default_factory=list)
    telemetry_src: list[int] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    events_src: list[int] = field(default_factory=list)
    births: list[tuple[str, str, Birth]] = field(default_factory=list)  # (district, device, birth)
    states: list[tuple[str, State]] = field(default_factory=list)  # (device, state)
    devices: dict[str, DeviceBatch] = field(default_factory=dict)
    # (device, type, code, ts, seq): ``seq`` is the event row's (None for what ingest itself
    # reports, e.g. a flood), so a redelivered event raises nothing twice (ingest/_write.py).
    fault_events: list[tuple[str, str, str, int, int | None]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    flags: list[SenderCheck] = field(default_factory=list)
    acks: int = 0
    event_seq_gaps: int = 0
    """Gaps and repeats that events revealed (they share the device's seq counter with telemetry)."""
    event_seq_repeats: int = 0
    seq_gap_devices: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Device id -> (district, messages missing) for the devices whose numbers this batch skipped
    (telemetry and events): the ``data_loss`` alert's input (ingest/_alerts.py)."""

    @property
    def rows(self) -> int:
        """Telemetry and event rows offered to the database."""
        return len(self.telemetry) + len(self.events)


SenderCheckFn = Callable[[str, str, bytes], tuple[str | None, str | None, str]]
"""(device_id, district, payload) -> (refusal reason or None, flag or None, detail)."""


class SeqTracker:
    """The last ``seq`` (telemetry and events share it) seen per device, to count gaps and repeats.

    Exact with one worker; with several on a shared subscription a device's messages are split
    across workers, so each sees gaps that another filled (docs/ingest.md).

    A batch's changes can be undone: between :meth:`begin` and :meth:`commit` the previous value
    of every device touched is kept, and :meth:`rollback` restores them. The worker rolls back a
    batch that was not committed (it goes to the spool and comes back through the same tracker
    at replay), so the tracker only ever reflects stored messages, in the order stored.
    """

    def __init__(self, max_devices: int = 1_000_000) -> None:
        self._last: dict[str, int] = {}
        self._max = max_devices
        self._undo: dict[str, int | None] | None = None

    def begin(self) -> None:
        """Start recording what the next batch changes (for :meth:`rollback`)."""
        self._undo = {}

    def commit(self) -> None:
        """Keep the batch's changes."""
        self._undo = None

    def rollback(self) -> None:
        """Forget the batch's changes: every device touched since :meth:`begin` is as before."""
        undo, self._undo = self._undo, None
        for device_id, last in (undo or {}).items():
            if last is None:
                self._last.pop(device_id, None)
            else:
                self._last[device_id] = last

    def _set(self, device_id: str, seq: int | None) -> None:
        if self._undo is not None and device_id not in self._undo:
            self._undo[device_id] = self._last.get(device_id)
        if seq is None:
            self._last.pop(device_id, None)
        else:
            self._last[device_id] = seq

    def reset(self, device_id: str) -> None:
        """Forget a device's sequence (it was born again: its seq may restart)."""
        self._set(device_id, None)

    def see(self, device_id: str, seq: int) -> tuple[int, int]:
        """Record ``seq``; returns (gaps, repeats) it reveals."""
        last = self._last.get(device_id)
        if last is None:
            if len(self._last) >= self._max:
                self._last.clear()  # bounded memory: every device starts afresh (no false gap)
            self._set(device_id, seq)
            return 0, 0
        if seq == last + 1:
            self._set(device_id, seq)
            return 0, 0
        if seq > last:
            self._set(device_id, seq)
            return seq - last - 1, 0
        return 0, 1


def ack_seq(cmd_id: str) -> int:
    """A stable seq for an ack row (acks carry none): the command id's CRC, so redeliveries collide."""
    return zlib.crc32(cmd_id.encode()) & _SEQ_MASK


_astuple = msgspec.structs.astuple


def _note_gaps(out: Processed, device_id: str, district: str, gaps: int) -> None:
    if gaps:
        _district, before = out.seq_gap_devices.get(device_id, (district, 0))
        out.seq_gap_devices[device_id] = (district, before + gaps)


def process(
    messages: Sequence[RawMessage],
    now_ms: int,
    seqs: SeqTracker,
    *,
    check_sender: SenderCheckFn | None = None,
) -> Processed:
    """Decode and validate a batch; every message becomes rows, a state change or a dead letter."""
    out = Processed()
    telemetry, telemetry_src = out.telemetry, out.telemetry_src
    devices = out.devices
    for i, (topic, payload, _qos) in enumerate(messages):
        try:
            district, device_id, channel = parse_device_topic(topic)
            if check_sender is not None:
                refusal, flag, detail = check_sender(device_id, district, payload)
                if refusal is not None:
                    out.dead.append(DeadLetter(topic, payload, f"{refusal}: {detail}", refusal))
                    continue
                if flag is not None:
                    out.flags.append(SenderCheck(device_id, district, flag, detail))
            if channel == "telemetry":
                t = _astuple(decode_telemetry(payload, now_ms))
                # Telemetry fields: ts, seq, level, power_w, voltage_v, current_a, temp_c, lux,
                # faults, rssi_dbm, battery_v, blinking, sightings -> store.TELEMETRY_FIELDS order.
                ts, seq, faults = t[0], t[1], t[8]
                if t[9] is None:  # a lamp
                    telemetry.append((ts, device_id, ROW_BDSEQ, seq, *t[2:8], list(faults), *t[9:]))
                else:  # a blinker: RSSI in whole dB, as the column holds it (half to even, as SQL)
                    row = (ts, device_id, ROW_BDSEQ, seq, *t[2:8], list(faults), round(t[9]), *t[10:])
                    telemetry.append(row)
                telemetry_src.append(i)
                dev = devices.get(device_id)
                if dev is None:
                    dev = devices[device_id] = DeviceBatch(device_id)
                dev.messages += 1
                gaps, repeats = seqs.see(device_id, seq)
                if gaps or repeats:
                    dev.seq_gaps += gaps
                    dev.seq_duplicates += repeats
                    _note_gaps(out, device_id, district, gaps)
                if ts >= dev.last_ts_ms:
                    dev.last_ts_ms, dev.last_seq, dev.level = ts, seq, t[2]
                    dev.faults, dev.summary = faults, payload
            elif channel == "event":
                ev = decode_event(payload, now_ms)
                _event(out, i, device_id, ev, payload)
                gaps, repeats = seqs.see(device_id, ev.seq)
                out.event_seq_gaps += gaps
                out.event_seq_repeats += repeats
                _note_gaps(out, device_id, district, gaps)
            elif channel == "birth":
                birth = decode_birth(payload, now_ms)
                seqs.reset(device_id)
                out.births.append((district, device_id, birth))
            elif channel == "state":
                out.states.append((device_id, decode_state(payload, now_ms)))
            elif channel == "ack":
                _ack(out, i, device_id, decode_ack(payload, now_ms), payload)
            else:  # cmd: the backend's own channel, never an uplink
                out.dead.append(DeadLetter(topic, payload, "topic: cmd is not an uplink channel", "topic"))
        except TopicError as exc:
            out.dead.append(DeadLetter(topic, payload, f"topic: {exc.reason}", "topic"))
        except PayloadError as exc:
            out.dead.append(DeadLetter(topic, payload, str(exc), "payload"))
    return out


def _event(out: Processed, i: int, device_id: str, ev: Event, payload: bytes) -> None:
    rssi = round(ev.rssi_dbm) if ev.rssi_dbm is not None else None
    text = payload.decode("utf-8")  # validated UTF-8 by the decoder
    out.events.append((ev.ts, device_id, ROW_BDSEQ, ev.seq, ev.type, ev.code, ev.token_hash, rssi, text))
    out.events_src.append(i)
    if ev.type in ("fault", "fault_cleared", "tamper", "power_loss"):
        out.fault_events.append((device_id, ev.type, ev.code or ev.type, ev.ts, ev.seq))


# The maintenance alert of a device over its message rate (broker/_ratelimit.py).
FLOOD_EVENT: Final = "flood"
FLOOD_CODE: Final = "message_flood"


def add_flood(out: Processed, topic_prefix: str, now_ms: int) -> None:
    """Report a device that went over its message rate (``sl/v1/{d}/{id}``) for one alert."""
    try:
        _district, device_id, _channel = parse_device_topic(f"{topic_prefix}/event")
    except TopicError:
        return  # not a device's topic: nothing to alert about (its messages are dead letters)
    out.fault_events.append((device_id, FLOOD_EVENT, FLOOD_CODE, now_ms, None))


def _ack(out: Processed, i: int, device_id: str, ack: Ack, payload: bytes) -> None:
    text = payload.decode("utf-8")
    out.events.append(
        (ack.ts, device_id, ROW_BDSEQ, ack_seq(ack.cmd_id), "ack", ack.status, None, None, text)
    )
    out.events_src.append(i)
    out.acks += 1


def telemetry_kind(row: tuple[Any, ...]) -> str:
    """``lamp`` or ``blinker`` for a telemetry row (level present or not)."""
    return "lamp" if row[4] is not None else "blinker"
