"""Write one processed batch in one transaction: rows, dead letters, devices, state, fault alerts.

Either the whole batch commits or none of it does (then the caller spools it), so acknowledging
the batch's QoS 1 messages after :func:`write_batch` returns is safe. Rows the database refuses
(values out of a column's range) are isolated by splitting and become dead letters; the rest of
the batch is written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from alerts import Locator
from ingest._process import DeadLetter, Processed, RawMessage, SenderCheck
from ingest._registration import judge_birth
from runtime.logs import get_logger
from store import (
    StateUpdate,
    StoreRejected,
    StoreUnavailable,
    insert_dead_letters,
    set_connectivity,
    start_connection,
    update_device_states,
    write_rows,
)
from store.connections import batch_transaction, savepoint
from store.devices import device_registrations, existing_event_keys, register_device, update_device_from_birth
from store.types import Conn
from store.writer import Kind

log = get_logger(__name__)

FaultHook = Callable[[Conn, Processed, datetime], object]
"""Runs inside the batch transaction (in a savepoint) to raise maintenance alerts."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did."""

    inserted: int
    offered: int
    refused: int
    stale_states: int = 0  # online/offline of an older connection than the device's current one


def _ms(ts_ms: int | None, default: datetime) -> datetime:
    return default if ts_ms is None else datetime.fromtimestamp(ts_ms / 1000, UTC)


def _write_isolating(
    conn: Conn, kind: Kind, rows: list[tuple[Any, ...]], src: list[int]
) -> tuple[int, list[int]]:
    """Write rows (each try in a savepoint); returns (inserted, indices of source messages refused)."""
    if not rows:
        return 0, []
    try:
        # Rows come from schema-validated payloads, so telemetry may take the direct COPY.
        return write_rows(conn, kind, rows, direct=True), []
    except StoreRejected as exc:
        if len(rows) == 1:
            log.warning("row_refused", kind=kind, error=str(exc))
            return 0, src
    mid = len(rows) // 2
    n1, bad1 = _write_isolating(conn, kind, rows[:mid], src[:mid])
    n2, bad2 = _write_isolating(conn, kind, rows[mid:], src[mid:])
    return n1 + n2, bad1 + bad2


def write_batch(
    conn: Conn,
    batch: Processed,
    messages: Sequence[RawMessage],
    now: datetime,
    *,
    on_faults: FaultHook | None = None,
    locate: Locator | None = None,
) -> WriteResult:
    """Commit a processed batch; raises StoreUnavailable when the database is away (nothing written)."""
    with batch_transaction(conn, rows=batch.rows):
        if batch.fault_events:
            _drop_redelivered_faults(conn, batch)
        inserted_t, bad_t = _write_isolating(conn, "telemetry", batch.telemetry, batch.telemetry_src)
        inserted_e, bad_e = _write_isolating(conn, "events", batch.events, batch.events_src)
        refused = [
            DeadLetter(messages[i].topic, messages[i].payload, "store: a value the database refuses", "store")
            for i in (*bad_t, *bad_e)
        ]
        batch.dead.extend(refused)
        if batch.births:
            _apply_births(conn, batch, now, locate)
        stale = 0
        for device_id, state in batch.states:
            if not set_connectivity(
                conn, device_id, online=state.state == "online", bdseq=state.bdseq, at=_ms(state.ts, now)
            ):
                stale += 1
                # Older than the device's current connection.
                log.info("stale_state", device=device_id, state=state.state, bdseq=state.bdseq)
        # Before the state merge: the hook compares reported faults with the stored ones.
        if on_faults is not None and (
            batch.fault_events or _has_faults(batch) or _reconnects(batch) or batch.seq_gap_devices
        ):
            try:
                with savepoint(conn, rows=batch.rows):
                    on_faults(conn, batch, now)
            except StoreUnavailable:
                raise
            except Exception:
                # Alerts are derived data: a bug there must not cost the telemetry its commit.
                log.exception("fault_alerts_failed", rows_stored=True)
        if batch.devices:
            update_device_states(conn, [_state_update(d) for d in batch.devices.values()])
        if batch.dead:
            insert_dead_letters(conn, [(now, d.topic, d.payload, d.reason, None) for d in batch.dead])
    offered = batch.rows - len(refused)
    return WriteResult(inserted_t + inserted_e, offered, len(refused), stale)


def _drop_redelivered_faults(conn: Conn, batch: Processed) -> None:
    """Keep only fault events seen for the first time: an event whose row is stored already (a QoS 1
    redelivery, a replay) or that comes twice in the batch raises no alert again (its row is
    refused by the dedup key). Runs in the batch transaction, before the events are written."""
    keys = [(dev, ts, seq) for dev, _t, _c, ts, seq in batch.fault_events if seq is not None]
    stored = existing_event_keys(conn, keys) if keys else set()
    seen: set[tuple[str, int, int]] = set()
    kept: list[tuple[str, str, str, int, int | None]] = []
    for fault in batch.fault_events:
        dev, _t, _c, ts, seq = fault
        if seq is not None:
            key = (dev, ts, seq)
            if key in stored or key in seen:
                log.info("redelivered_fault_event_ignored", device=dev, ts=ts, seq=seq)
                continue
            seen.add(key)
        kept.append(fault)
    batch.fault_events = kept


def _dong_of(locate: Locator | None, district: str, lat: float | None, lon: float | None) -> str | None:
    """The neighbourhood code of a birth's position, when it lies in the topic's district."""
    if locate is None or lat is None or lon is None:
        return None
    where_district, dong = locate(lat, lon)
    return dong if dong and where_district == district else None


def _apply_births(conn: Conn, batch: Processed, now: datetime, locate: Locator | None = None) -> None:
    """A first birth registers its device; a later one may change only what ``judge_birth`` allows,
    and one contradicting the registration is flagged and raises a ``registration_mismatch``. The
    registration gets its neighbourhood code from ``locate`` (a provisioned one keeps its own)."""
    claimed = sorted({b.paired for _d, _i, b in batch.births if b.paired is not None})
    paired_rows: dict[str, dict[str, Any]] | None = None  # read once, when a later birth needs them
    for district, device_id, birth in batch.births:
        at = _ms(birth.ts, now)
        # A birth starts the device's current connection: its states are judged against its bdseq.
        before = start_connection(conn, device_id, bdseq=birth.bdseq, at=at)
        if before is not None:
            batch.flags.append(
                SenderCheck(device_id, district, "bdseq_restart", f"bdseq {before} -> {birth.bdseq} (birth)")
            )
        registered = device_registrations(conn, [device_id], lock=True).get(device_id)
        if registered is None and register_device(
            conn,
            device_id,
            kind=birth.kind,
            district_code=district,
            lat=birth.lat,
            lon=birth.lon,
            firmware=birth.firmware,
            model=birth.model,
            paired_device_id=birth.paired,
            at=at,
            dong_code=_dong_of(locate, district, birth.lat, birth.lon),
        ):
            continue
        if registered is None:  # registered by another worker meanwhile
            registered = device_registrations(conn, [device_id], lock=True)[device_id]
        if paired_rows is None:
            paired_rows = device_registrations(conn, claimed)
        paired_row = paired_rows.get(birth.paired) if birth.paired is not None else None
        verdict = judge_birth(registered, district, birth, paired_row)
        update_device_from_birth(
            conn,
            device_id,
            firmware=verdict.firmware,
            model=verdict.model,
            lat=verdict.lat,
            lon=verdict.lon,
            paired_device_id=verdict.paired,
            at=at,
            dong_code=_dong_of(locate, district, verdict.lat, verdict.lon),
        )
        if verdict.conflicts:
            batch.flags.append(SenderCheck(device_id, district, "registration_mismatch", verdict.detail))
            batch.fault_events.append(
                (device_id, "registration", "registration_mismatch", int(at.timestamp() * 1000), None)
            )


def _has_faults(batch: Processed) -> bool:
    return any(d.faults for d in batch.devices.values())


def _reconnects(batch: Processed) -> bool:
    # A lamp connected again clears its power loss (ingest/_alerts.py).
    return bool(batch.births) or any(state.state == "online" for _d, state in batch.states)


def _state_update(d: Any) -> StateUpdate:
    return StateUpdate(
        device_id=d.device_id,
        last_seen=d.last_seen,
        last_seq=d.last_seq,
        level=d.level,
        faults=list(d.faults),
        messages=d.messages,
        seq_gaps=d.seq_gaps,
        seq_duplicates=d.seq_duplicates,
        summary_json=d.summary.decode("utf-8") if d.summary else None,
    )
