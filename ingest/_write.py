"""Write one processed batch in one transaction: rows, dead letters, devices, state, fault alerts.

Either the whole batch commits or none of it does (then the caller spools it), so acknowledging
the batch's QoS 1 messages after :func:`write_batch` returns is safe. Rows the database refuses
(values out of a column's range) are isolated by splitting and become dead letters; the rest of
the batch is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from ingest._process import DeadLetter, Processed, RawMessage
from store import (
    StateUpdate,
    StoreRejected,
    StoreUnavailable,
    insert_dead_letters,
    set_connectivity,
    update_device_states,
    upsert_device,
    write_rows,
)
from store.types import Conn
from store.writer import Kind

log = logging.getLogger(__name__)

FaultHook = Callable[[Conn, Processed, datetime], object]
"""Runs inside the batch transaction (in a savepoint) to raise maintenance alerts."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one committed batch did."""

    inserted: int
    offered: int
    refused: int


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
            log.warning("%s row refused by the database: %s", kind, exc)
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
) -> WriteResult:
    """Commit a processed batch; raises StoreUnavailable when the database is away (nothing written)."""
    try:
        with conn.transaction():
            inserted_t, bad_t = _write_isolating(conn, "telemetry", batch.telemetry, batch.telemetry_src)
            inserted_e, bad_e = _write_isolating(conn, "events", batch.events, batch.events_src)
            refused = [
                DeadLetter(
                    messages[i].topic, messages[i].payload, "store: a value the database refuses", "store"
                )
                for i in (*bad_t, *bad_e)
            ]
            batch.dead.extend(refused)
            for district, device_id, birth in batch.births:
                upsert_device(
                    conn,
                    device_id,
                    kind=birth.kind,
                    district_code=district,
                    lat=birth.lat,
                    lon=birth.lon,
                    firmware=birth.firmware,
                    model=birth.model,
                    paired_device_id=birth.paired,
                    at=_ms(birth.ts, now),
                )
            for device_id, state in batch.states:
                set_connectivity(
                    conn, device_id, online=state.state == "online", bdseq=state.bdseq, at=_ms(state.ts, now)
                )
            # Before the state merge: the hook compares reported faults with the stored ones.
            if on_faults is not None and (batch.fault_events or _has_faults(batch)):
                try:
                    with conn.transaction():
                        on_faults(conn, batch, now)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except Exception:
                    # Alerts are derived data: a bug there must not cost the telemetry its commit.
                    log.exception("fault alerts for a batch failed; rows are stored")
            if batch.devices:
                update_device_states(conn, [_state_update(d) for d in batch.devices.values()])
            if batch.dead:
                insert_dead_letters(conn, [(now, d.topic, d.payload, d.reason, None) for d in batch.dead])
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        raise StoreUnavailable(f"database unreachable: {exc}", rows=batch.rows) from exc
    except StoreUnavailable:
        raise
    offered = batch.rows - len(refused)
    return WriteResult(inserted_t + inserted_e, offered, len(refused))


def _has_faults(batch: Processed) -> bool:
    return any(d.faults for d in batch.devices.values())


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
