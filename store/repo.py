"""Repositories: thin functions over a connection, one per thing the services store or read.

A function of several statements wraps them in ``conn.transaction()`` (its own transaction on an
autocommit connection, a savepoint inside the caller's); a single statement runs as it is. A
caller that needs several calls to commit together wraps them in ``with conn.transaction():``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from store.types import Conn

Row = dict[str, Any]


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- devices


def upsert_device(
    conn: Conn,
    device_id: str,
    *,
    kind: str,
    district_code: str,
    dong_code: str | None = None,
    lamp_number: str | None = None,
    lat: float | None = None,
    lon: float | None = None,
    firmware: str | None = None,
    model: str | None = None,
    paired_device_id: str | None = None,
    at: datetime | None = None,
) -> None:
    """Insert or update a device from its birth message (provisioning fields are left alone)."""
    conn.execute(
        """
        INSERT INTO devices (device_id, kind, district_code, dong_code, lamp_number, lat, lon,
                             firmware, model, paired_device_id, created_at, updated_at)
        VALUES (%(id)s, %(kind)s, %(d)s, %(dong)s, %(num)s, %(lat)s, %(lon)s,
                %(fw)s, %(model)s, %(paired)s, %(at)s, %(at)s)
        ON CONFLICT (device_id) DO UPDATE SET
            kind = EXCLUDED.kind, district_code = EXCLUDED.district_code,
            dong_code = coalesce(EXCLUDED.dong_code, devices.dong_code),
            lamp_number = coalesce(EXCLUDED.lamp_number, devices.lamp_number),
            lat = coalesce(EXCLUDED.lat, devices.lat), lon = coalesce(EXCLUDED.lon, devices.lon),
            firmware = EXCLUDED.firmware, model = EXCLUDED.model,
            paired_device_id = EXCLUDED.paired_device_id, updated_at = EXCLUDED.updated_at
        """,
        {
            "id": device_id,
            "kind": kind,
            "d": district_code,
            "dong": dong_code,
            "num": lamp_number,
            "lat": lat,
            "lon": lon,
            "fw": firmware,
            "model": model,
            "paired": paired_device_id,
            "at": at or _now(),
        },
    )


def register_device(
    conn: Conn,
    device_id: str,
    *,
    kind: str,
    district_code: str,
    lat: float | None,
    lon: float | None,
    firmware: str | None,
    model: str | None,
    paired_device_id: str | None,
    at: datetime | None = None,
) -> bool:
    """Register a device from its first birth; False (nothing written) when it is registered already."""
    cur = conn.execute(
        """
        INSERT INTO devices (device_id, kind, district_code, lat, lon, firmware, model, paired_device_id,
                             created_at, updated_at)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT (device_id) DO NOTHING
        """,
        (
            device_id,
            kind,
            district_code,
            lat,
            lon,
            firmware,
            model,
            paired_device_id,
            at or _now(),
            at or _now(),
        ),
    )
    return cur.rowcount == 1


def device_registrations(conn: Conn, device_ids: Sequence[str], *, lock: bool = False) -> dict[str, Row]:
    """``kind, district_code, lat, lon, paired_device_id`` of registered devices, by id (``lock``:
    FOR UPDATE, so two births of one device are judged one after the other)."""
    if not device_ids:
        return {}
    sql = (
        "SELECT device_id, kind, district_code, lat, lon, paired_device_id FROM devices "
        "WHERE device_id = ANY(%s) ORDER BY device_id" + (" FOR UPDATE" if lock else "")
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["device_id"]: r for r in cur.execute(sql, (list(device_ids),)).fetchall()}


def update_device_from_birth(
    conn: Conn,
    device_id: str,
    *,
    firmware: str,
    model: str,
    lat: float | None = None,
    lon: float | None = None,
    paired_device_id: str | None = None,
    at: datetime | None = None,
) -> None:
    """What a later birth may change: firmware and model; position and pairing only where the
    registration has none (ingest/_registration.py decides)."""
    conn.execute(
        """
        UPDATE devices SET firmware = %s, model = %s,
            lat = coalesce(lat, %s), lon = coalesce(lon, %s),
            paired_device_id = coalesce(paired_device_id, %s), updated_at = %s
        WHERE device_id = %s
        """,
        (firmware, model, lat, lon, paired_device_id, at or _now(), device_id),
    )


def existing_event_keys(conn: Conn, keys: Sequence[tuple[str, int, int]]) -> set[tuple[str, int, int]]:
    """Which ``(device_id, ts_ms, seq)`` are stored already as events (with bdseq 0, ingest's rows)."""
    if not keys:
        return set()
    rows = conn.execute(
        """
        SELECT k.device_id, k.ts_ms, k.seq
        FROM unnest(%s::text[], %s::int8[], %s::int8[]) AS k(device_id, ts_ms, seq)
        WHERE EXISTS (
            SELECT 1 FROM events e
            WHERE e.device_id = k.device_id AND e.seq = k.seq AND e.bdseq = 0
              AND e.ts = timestamptz 'epoch' + k.ts_ms * interval '1 millisecond'
        )
        """,
        ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
    ).fetchall()
    return {(str(r[0]), int(r[1]), int(r[2])) for r in rows}


def set_connectivity(
    conn: Conn, device_id: str, *, online: bool, bdseq: int, at: datetime | None = None
) -> bool:
    """Record online/offline for connection ``bdseq``; False when ignored as stale (an older bdseq).

    A last will carries the bdseq of the connection it belongs to; once a device has reconnected
    (higher bdseq), the late will of its previous connection must not mark it offline. The current
    connection is the highest bdseq seen since the device's last birth (``start_connection``).
    """
    row = conn.execute(
        """
        INSERT INTO device_state (device_id, online, bdseq, state_changed_at, updated_at)
        VALUES (%(id)s, %(online)s, %(bdseq)s, %(at)s, now())
        ON CONFLICT (device_id) DO UPDATE SET
            online = EXCLUDED.online,
            bdseq = EXCLUDED.bdseq,
            state_changed_at = CASE WHEN device_state.online IS DISTINCT FROM EXCLUDED.online
                                         OR device_state.bdseq IS DISTINCT FROM EXCLUDED.bdseq
                                    THEN EXCLUDED.state_changed_at
                                    ELSE device_state.state_changed_at END,
            updated_at = now()
        WHERE device_state.bdseq IS NULL OR EXCLUDED.bdseq >= device_state.bdseq
        RETURNING online
        """,
        {"id": device_id, "online": online, "bdseq": bdseq, "at": at or _now()},
    ).fetchone()
    return row is not None


def start_connection(conn: Conn, device_id: str, *, bdseq: int, at: datetime | None = None) -> int | None:
    """A birth: connection ``bdseq`` is the device's current one, even if lower than the stored bdseq.

    The birth is the device's own statement of its new connection (a device whose counter restarted,
    a replaced controller, or a stored bdseq poisoned by a state sent with stolen credentials). A
    birth below the stored bdseq restarts the lineage there (``state_changed_at`` = ``at``); one at
    or above it changes nothing (its ``online`` state raises the bdseq as usual). From then on a
    state older than ``bdseq`` is stale. Returns the bdseq replaced, or None when nothing changed.
    """
    row = conn.execute(
        "SELECT bdseq FROM device_state WHERE device_id = %s FOR UPDATE", (device_id,)
    ).fetchone()
    if row is None or row[0] is None or int(row[0]) <= bdseq:
        return None
    conn.execute(
        "UPDATE device_state SET bdseq = %s, state_changed_at = %s, updated_at = now() WHERE device_id = %s",
        (bdseq, at or _now(), device_id),
    )
    return int(row[0])


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """What one batch of telemetry says about one device (the newest values, counters as increments)."""

    device_id: str
    last_seen: datetime
    last_seq: int
    level: int | None = None
    faults: Sequence[str] = ()
    messages: int = 1
    seq_gaps: int = 0
    seq_duplicates: int = 0
    summary_json: str | None = None  # the last telemetry as JSON text, for the console


_STATE_STAGE_DDL = """
CREATE TEMP TABLE IF NOT EXISTS device_state_stage (
    device_id text, last_seen timestamptz, last_seq bigint, level bigint, faults text[],
    messages bigint, seq_gaps bigint, seq_duplicates bigint, summary text
) ON COMMIT DELETE ROWS
"""

# int8, not int2, for level: see TELEMETRY_TYPES in store.writer (binary int2 wraps silently).
_STATE_STAGE_TYPES = ["text", "timestamptz", "int8", "int8", "text[]", "int8", "int8", "int8", "text"]

_STATE_MERGE_SQL = """
INSERT INTO device_state AS s (device_id, last_seen, last_seq, level, faults, last_telemetry,
                               messages, seq_gaps, seq_duplicates, updated_at)
SELECT device_id, last_seen, last_seq, level, coalesce(faults, '{}'), summary::jsonb,
       messages, seq_gaps, seq_duplicates, now()
FROM device_state_stage
ON CONFLICT (device_id) DO UPDATE SET
    -- A batch older than what is stored (a replayed spool) only adds to the counters.
    last_seen = greatest(s.last_seen, EXCLUDED.last_seen),
    last_seq = CASE WHEN s.last_seen IS NULL OR EXCLUDED.last_seen >= s.last_seen
                    THEN EXCLUDED.last_seq ELSE s.last_seq END,
    level = CASE WHEN s.last_seen IS NULL OR EXCLUDED.last_seen >= s.last_seen
                 THEN coalesce(EXCLUDED.level, s.level) ELSE s.level END,
    faults = CASE WHEN s.last_seen IS NULL OR EXCLUDED.last_seen >= s.last_seen
                  THEN EXCLUDED.faults ELSE s.faults END,
    last_telemetry = CASE WHEN s.last_seen IS NULL OR EXCLUDED.last_seen >= s.last_seen
                          THEN coalesce(EXCLUDED.last_telemetry, s.last_telemetry)
                          ELSE s.last_telemetry END,
    messages = s.messages + EXCLUDED.messages,
    seq_gaps = s.seq_gaps + EXCLUDED.seq_gaps,
    seq_duplicates = s.seq_duplicates + EXCLUDED.seq_duplicates,
    updated_at = now()
"""


def update_device_states(conn: Conn, updates: Iterable[StateUpdate]) -> int:
    """Apply a batch of telemetry-derived state (one entry per device) in one COPY + merge."""
    with conn.transaction():
        conn.execute(_STATE_STAGE_DDL)
        with conn.cursor() as cur:
            with cur.copy(
                "COPY device_state_stage (device_id, last_seen, last_seq, level, faults, messages, "
                "seq_gaps, seq_duplicates, summary) FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(_STATE_STAGE_TYPES)
                for u in updates:
                    copy.write_row(
                        (u.device_id, u.last_seen, u.last_seq, u.level, list(u.faults), u.messages,
                         u.seq_gaps, u.seq_duplicates, u.summary_json)
                    )  # fmt: skip
            cur.execute(_STATE_MERGE_SQL)
            return cur.rowcount


def get_device(conn: Conn, device_id: str) -> Row | None:
    """One device with its state, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_LAMPS_SQL + " WHERE d.device_id = %s", (device_id,)).fetchone()


_LAMPS_SQL = """
SELECT d.device_id, d.kind, d.district_code, d.dong_code, d.lamp_number, d.lat, d.lon,
       d.firmware, d.model, d.paired_device_id, d.provisioned,
       coalesce(s.online, false) AS online, s.bdseq, s.state_changed_at, s.last_seen, s.last_seq,
       s.level, coalesce(s.faults, '{}') AS faults, s.last_telemetry,
       coalesce(s.seq_gaps, 0) AS seq_gaps, coalesce(s.seq_duplicates, 0) AS seq_duplicates
FROM devices d LEFT JOIN device_state s ON s.device_id = d.device_id
"""


def list_devices_with_state(
    conn: Conn, *, district_codes: Sequence[str] | None = None, kind: str | None = "lamp"
) -> list[Row]:
    """Devices (lamps by default) with their live state, for the console map and GeoJSON."""
    where: list[str] = []
    params: list[object] = []
    if district_codes is not None:
        where.append("d.district_code = ANY(%s)")
        params.append(list(district_codes))
    if kind is not None:
        where.append("d.kind = %s")
        params.append(kind)
    query = _LAMPS_SQL + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY d.device_id"
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def silent_devices(conn: Conn, *, silent_since: datetime) -> list[Row]:
    """Online devices not heard from since ``silent_since`` (for the silent-device alert)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT device_id, last_seen FROM device_state "
            "WHERE online AND last_seen < %s ORDER BY device_id",
            (silent_since,),
        ).fetchall()


# --------------------------------------------------------------------------- dead letters

DeadLetter = tuple[datetime, str, bytes, str, str | None]
"""(received_at, topic, payload bytes, reason, client_id)"""


def insert_dead_letters(conn: Conn, letters: Iterable[DeadLetter]) -> int:
    """Store rejected messages with their bytes exactly as received; returns how many."""
    n = 0
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(
            "COPY dead_letters (received_at, topic, payload, reason, client_id) FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(["timestamptz", "text", "bytea", "text", "text"])
        for letter in letters:
            copy.write_row(letter)
            n += 1
    return n


def list_dead_letters(conn: Conn, *, limit: int = 100) -> list[Row]:
    """The most recent dead letters first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM dead_letters ORDER BY id DESC LIMIT %s", (limit,)).fetchall()


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """A command as sent to a device."""

    cmd_id: str
    device_id: str
    action: str
    priority: str
    source: str
    ttl_s: int
    sent_at: datetime
    level: int | None = None
    district_code: str | None = None
    # Set when the device's answer is already known as the row is first written.
    status: str = "sent"
    acked_at: datetime | None = None
    effective_level: int | None = None
    reason: str | None = None


_INSERT_COMMANDS_SQL = """
INSERT INTO commands AS c (cmd_id, device_id, district_code, action, level, priority, source, ttl_s,
                           sent_at, expires_at, status, acked_at, effective_level, reason, attempts)
SELECT r.cmd_id, r.device_id, r.district_code, r.action, r.level, r.priority, r.source, r.ttl_s,
       r.sent_at, r.sent_at + make_interval(secs => r.ttl_s), r.status, r.acked_at, r.effective_level,
       r.reason, r.attempts
FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::smallint[], %s::text[], %s::text[],
            %s::int[], %s::timestamptz[], %s::text[], %s::timestamptz[], %s::smallint[], %s::text[],
            %s::int[])
     AS r(cmd_id, device_id, district_code, action, level, priority, source, ttl_s, sent_at, status,
          acked_at, effective_level, reason, attempts)
ON CONFLICT (cmd_id) DO UPDATE SET
    attempts = c.attempts + EXCLUDED.attempts,
    sent_at = EXCLUDED.sent_at,
    expires_at = EXCLUDED.expires_at,
    status = CASE WHEN EXCLUDED.status <> 'sent' AND c.status IN ('sent', 'unanswered')
                  THEN EXCLUDED.status ELSE c.status END,
    acked_at = CASE WHEN EXCLUDED.acked_at IS NOT NULL AND c.status IN ('sent', 'unanswered')
                    THEN EXCLUDED.acked_at ELSE c.acked_at END,
    effective_level = CASE WHEN EXCLUDED.acked_at IS NOT NULL AND c.status IN ('sent', 'unanswered')
                           THEN EXCLUDED.effective_level ELSE c.effective_level END,
    reason = CASE WHEN EXCLUDED.acked_at IS NOT NULL AND c.status IN ('sent', 'unanswered')
                  THEN EXCLUDED.reason ELSE c.reason END
"""


# The arrays of _INSERT_COMMANDS_SQL, in order (then the attempts).
_COMMAND_COLUMNS = (
    "cmd_id", "device_id", "district_code", "action", "level", "priority", "source", "ttl_s",
    "sent_at", "status", "acked_at", "effective_level", "reason",
)  # fmt: skip


def insert_commands(conn: Conn, commands: Sequence[CommandRecord]) -> None:
    """Record commands as sent (status ``sent``), in one statement; a re-sent cmd_id counts one
    more attempt.

    A record may already carry its device's answer (``status`` applied, rejected or expired, with
    ``acked_at``): the controller gathers rows for a tenth of a second and most acks arrive within
    it, so the row is written settled instead of inserted and then updated (an UPDATE of
    ``status`` rewrites all four of the table's indexes). Status ``unanswered`` without an answer
    is written as such. When one cmd_id comes more than once, its attempts add up and the first
    answer wins, as with the statements applied one after the other."""
    merged: dict[str, CommandRecord] = {}
    attempts: dict[str, int] = {}
    for c in commands:
        before = merged.get(c.cmd_id)
        attempts[c.cmd_id] = attempts.get(c.cmd_id, 0) + 1
        if before is not None and (
            before.acked_at is not None or (before.status != "sent" and c.acked_at is None)
        ):
            c = replace(c, status=before.status, acked_at=before.acked_at,
                        effective_level=before.effective_level, reason=before.reason)  # fmt: skip
        merged[c.cmd_id] = c
    rows = list(merged.values())
    if not rows:
        return
    columns = [[getattr(c, name) for c in rows] for name in _COMMAND_COLUMNS]
    conn.execute(_INSERT_COMMANDS_SQL, (*columns, [attempts[c.cmd_id] for c in rows]))


def record_ack(
    conn: Conn,
    cmd_id: str,
    *,
    status: str,
    acked_at: datetime | None = None,
    effective_level: int | None = None,
    reason: str | None = None,
) -> bool:
    """Store a device's ack (applied, rejected or expired); False for an unknown or already-acked id."""
    cur = conn.execute(
        """
        UPDATE commands SET status = %s, acked_at = %s, effective_level = %s, reason = %s
        WHERE cmd_id = %s AND status IN ('sent', 'unanswered')
        """,
        (status, acked_at or _now(), effective_level, reason, cmd_id),
    )
    return cur.rowcount == 1


def record_acks(
    conn: Conn, acks: Sequence[tuple[str, str, int | None, str | None]], *, acked_at: datetime | None = None
) -> int:
    """``record_ack`` for many acks, ``(cmd_id, status, effective_level, reason)``, in one statement;
    returns how many commands it updated (unknown and already-acked ids are skipped). When one
    cmd_id comes twice, the first ack wins, as with ``record_ack`` called in order."""
    first: dict[str, tuple[str, str, int | None, str | None]] = {}
    for ack in acks:
        first.setdefault(ack[0], ack)
    if not first:
        return 0
    rows = list(first.values())
    cur = conn.execute(
        """
        UPDATE commands c SET status = a.status, acked_at = %s, effective_level = a.level, reason = a.reason
        FROM unnest(%s::text[], %s::text[], %s::int[], %s::text[]) AS a(cmd_id, status, level, reason)
        WHERE c.cmd_id = a.cmd_id AND c.status IN ('sent', 'unanswered')
        """,
        (
            acked_at or _now(),
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        ),
    )
    return cur.rowcount


def mark_unanswered(conn: Conn, *, sent_before: datetime) -> list[str]:
    """Mark commands still waiting for an ack since before ``sent_before`` as unanswered; returns ids."""
    rows = conn.execute(
        "UPDATE commands SET status = 'unanswered' WHERE status = 'sent' AND sent_at < %s RETURNING cmd_id",
        (sent_before,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def command_status_counts(conn: Conn, *, since: datetime | None = None) -> dict[str, int]:
    """How many commands are in each status (since a time, when given)."""
    rows = conn.execute(
        "SELECT status, count(*) FROM commands "
        "WHERE sent_at >= coalesce(%s::timestamptz, '-infinity') GROUP BY status",
        (since,),
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def get_command(conn: Conn, cmd_id: str) -> Row | None:
    """One command with its ack status, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM commands WHERE cmd_id = %s", (cmd_id,)).fetchone()


# --------------------------------------------------------------------------- residents, walks


def create_resident(conn: Conn, resident_id: str, token_hash: str, *, at: datetime | None = None) -> None:
    """Register a resident under a pseudonymous id and the hash of their install token."""
    conn.execute(
        "INSERT INTO residents (resident_id, token_hash, created_at) VALUES (%s, %s, %s)",
        (resident_id, token_hash, at or _now()),
    )


def resident_by_token_hash(conn: Conn, token_hash: str) -> str | None:
    """The resident id owning a token hash (None if unknown or deleted)."""
    row = conn.execute(
        "SELECT resident_id FROM residents WHERE token_hash = %s AND deleted_at IS NULL", (token_hash,)
    ).fetchone()
    return None if row is None else str(row[0])


def delete_resident(conn: Conn, resident_id: str, *, at: datetime | None = None) -> None:
    """Delete a resident's account and walk data (SOS alerts stay, unlinked from walks' positions)."""
    with conn.transaction():
        conn.execute("DELETE FROM walks WHERE resident_id = %s", (resident_id,))
        conn.execute("DELETE FROM idempotency_keys WHERE resident_id = %s", (resident_id,))
        conn.execute(
            "UPDATE residents SET token_hash = NULL, deleted_at = %s WHERE resident_id = %s",
            (at or _now(), resident_id),
        )


def start_walk(
    conn: Conn, walk_id: str, resident_id: str, *, started_at: datetime, district_code: str | None = None
) -> None:
    """Record a walk as active."""
    conn.execute(
        "INSERT INTO walks (walk_id, resident_id, district_code, started_at) VALUES (%s, %s, %s, %s)",
        (walk_id, resident_id, district_code, started_at),
    )


def end_walk(conn: Conn, walk_id: str, *, ended_at: datetime, status: str = "ended") -> bool:
    """Mark a walk ended (or expired); False when it was not active."""
    cur = conn.execute(
        "UPDATE walks SET ended_at = %s, status = %s WHERE walk_id = %s AND status = 'active'",
        (ended_at, status, walk_id),
    )
    return cur.rowcount == 1


def active_walks_of(conn: Conn, resident_id: str) -> list[Row]:
    """A resident's walks in progress (walk_id, district_code), oldest first; locks them against a
    concurrent start of another walk (call inside a transaction)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT walk_id, district_code FROM walks WHERE resident_id = %s AND status = 'active' "
            "ORDER BY started_at, walk_id FOR UPDATE",
            (resident_id,),
        ).fetchall()


def get_walk(conn: Conn, walk_id: str) -> Row | None:
    """One walk, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM walks WHERE walk_id = %s", (walk_id,)).fetchone()


WalkPosition = tuple[datetime, float, float, float | None, float | None, float | None, bool, str | None]
"""(ts, lat, lon, accuracy_m, heading_deg, speed_m_s, accepted, reason)"""


def add_walk_positions(conn: Conn, walk_id: str, positions: Sequence[WalkPosition]) -> None:
    """Append positions to a walk."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO walk_positions (walk_id, ts, lat, lon, accuracy_m, heading_deg, speed_m_s, "
            "accepted, reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            [(walk_id, *p) for p in positions],
        )


def walk_positions(conn: Conn, walk_id: str) -> list[Row]:
    """A walk's positions, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT ts, lat, lon, accuracy_m, heading_deg, speed_m_s, accepted, reason, alert_id "
            "FROM walk_positions WHERE walk_id = %s ORDER BY ts, id",
            (walk_id,),
        ).fetchall()


def attach_walk_to_alert(conn: Conn, walk_id: str, alert_id: str) -> int:
    """Tie a walk's positions to an SOS so retention keeps them with the alert; returns rows tied."""
    return conn.execute(
        "UPDATE walk_positions SET alert_id = %s WHERE walk_id = %s AND alert_id IS NULL", (alert_id, walk_id)
    ).rowcount


# --------------------------------------------------------------------------- alerts


def upsert_alert(
    conn: Conn,
    alert_id: str,
    *,
    kind: str,
    status: str,
    severity: str,
    district_codes: Sequence[str],
    created_at: datetime,
    updated_at: datetime | None = None,
    data: dict[str, Any] | None = None,
    resident_id: str | None = None,
    walk_id: str | None = None,
    device_id: str | None = None,
    acknowledged_by: str | None = None,
    acknowledged_at: datetime | None = None,
    resolved_at: datetime | None = None,
) -> None:
    """Insert an alert or replace its mutable fields (status, districts, acknowledgement, data)."""
    conn.execute(
        """
        INSERT INTO alerts (alert_id, kind, status, severity, district_codes, resident_id, walk_id,
                            device_id, created_at, updated_at, acknowledged_by, acknowledged_at,
                            resolved_at, data)
        VALUES (%(id)s, %(kind)s, %(status)s, %(severity)s, %(d)s, %(resident)s, %(walk)s,
                %(device)s, %(created)s, %(updated)s, %(ack_by)s, %(ack_at)s, %(resolved)s, %(data)s)
        ON CONFLICT (alert_id) DO UPDATE SET
            status = EXCLUDED.status, severity = EXCLUDED.severity,
            district_codes = EXCLUDED.district_codes, updated_at = EXCLUDED.updated_at,
            acknowledged_by = coalesce(EXCLUDED.acknowledged_by, alerts.acknowledged_by),
            acknowledged_at = coalesce(EXCLUDED.acknowledged_at, alerts.acknowledged_at),
            resolved_at = coalesce(EXCLUDED.resolved_at, alerts.resolved_at),
            data = EXCLUDED.data
        """,
        {
            "id": alert_id,
            "kind": kind,
            "status": status,
            "severity": severity,
            "d": list(district_codes),
            "resident": resident_id,
            "walk": walk_id,
            "device": device_id,
            "created": created_at,
            "updated": updated_at or created_at,
            "ack_by": acknowledged_by,
            "ack_at": acknowledged_at,
            "resolved": resolved_at,
            "data": Jsonb(data or {}),
        },
    )


def append_alert_event(
    conn: Conn,
    alert_id: str,
    *,
    actor: str,
    action: str,
    note: str | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> int:
    """Append one entry to an alert's audit trail; returns its id (ids grow with time)."""
    row = conn.execute(
        "INSERT INTO alert_events (alert_id, ts, actor, action, note, details) "
        "VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
        (alert_id, at or _now(), actor, action, note, Jsonb(details or {})),
    ).fetchone()
    assert row is not None
    return int(row[0])


def get_alert(conn: Conn, alert_id: str) -> Row | None:
    """One alert, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute("SELECT * FROM alerts WHERE alert_id = %s", (alert_id,)).fetchone()


def list_alerts(
    conn: Conn,
    *,
    district_codes: Sequence[str] | None = None,
    statuses: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    since: datetime | None = None,
    limit: int = 200,
) -> list[Row]:
    """Alerts newest first, filtered by districts (any overlap), status, kind and creation time."""
    where: list[str] = []
    params: list[object] = []
    if district_codes is not None:
        where.append("district_codes && %s")
        params.append(list(district_codes))
    if statuses is not None:
        where.append("status = ANY(%s)")
        params.append(list(statuses))
    if kinds is not None:
        where.append("kind = ANY(%s)")
        params.append(list(kinds))
    if since is not None:
        where.append("created_at >= %s")
        params.append(since)
    query = "SELECT * FROM alerts" + (" WHERE " + " AND ".join(where) if where else "")
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query + " ORDER BY created_at DESC LIMIT %s", [*params, limit]).fetchall()


def alert_events(conn: Conn, alert_id: str, *, after_id: int = 0) -> list[Row]:
    """An alert's audit trail in order (entries after ``after_id`` only, for catch-up)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM alert_events WHERE alert_id = %s AND id > %s ORDER BY id", (alert_id, after_id)
        ).fetchall()


def add_alert_positions(
    conn: Conn, alert_id: str, positions: Sequence[tuple[datetime, float, float, float | None]]
) -> None:
    """Append (ts, lat, lon, accuracy_m) positions to an SOS track."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO alert_positions (alert_id, ts, lat, lon, accuracy_m) VALUES (%s, %s, %s, %s, %s)",
            [(alert_id, *p) for p in positions],
        )


def alert_track(conn: Conn, alert_id: str) -> list[Row]:
    """An SOS track, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT ts, lat, lon, accuracy_m, coarsened FROM alert_positions "
            "WHERE alert_id = %s ORDER BY ts, id",
            (alert_id,),
        ).fetchall()


def claim_idempotency_key(conn: Conn, resident_id: str, key: str, alert_id: str) -> tuple[str, bool]:
    """Bind (resident, key) to ``alert_id`` once; returns (the alert id bound, whether it is new)."""
    row = conn.execute(
        "INSERT INTO idempotency_keys (resident_id, key, alert_id) VALUES (%s, %s, %s) "
        "ON CONFLICT DO NOTHING RETURNING alert_id",
        (resident_id, key, alert_id),
    ).fetchone()
    if row is not None:
        return str(row[0]), True
    existing = conn.execute(
        "SELECT alert_id FROM idempotency_keys WHERE resident_id = %s AND key = %s", (resident_id, key)
    ).fetchone()
    assert existing is not None
    return str(existing[0]), False


def idempotency_alert(conn: Conn, resident_id: str, key: str) -> str | None:
    """The alert id a (resident, key) is bound to, or None (a read: nothing is claimed)."""
    row = conn.execute(
        "SELECT alert_id FROM idempotency_keys WHERE resident_id = %s AND key = %s", (resident_id, key)
    ).fetchone()
    return None if row is None else str(row[0])


# --------------------------------------------------------------------------- operators, audit


def upsert_operator(
    conn: Conn,
    username: str,
    *,
    password_hash: str,
    role: str,
    district_code: str | None = None,
    display_name: str | None = None,
) -> None:
    """Create or update an operator account."""
    conn.execute(
        """
        INSERT INTO operators (username, password_hash, role, district_code, display_name)
        VALUES (%s, %s, %s, %s, %s)
        ON CONFLICT (username) DO UPDATE SET password_hash = EXCLUDED.password_hash, role = EXCLUDED.role,
            district_code = EXCLUDED.district_code, display_name = EXCLUDED.display_name
        """,
        (username, password_hash, role, district_code, display_name),
    )


def get_operator(conn: Conn, username: str) -> Row | None:
    """An enabled operator account, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM operators WHERE username = %s AND NOT disabled", (username,)
        ).fetchone()


def log_access(
    conn: Conn,
    *,
    actor: str,
    action: str,
    subject_kind: str,
    subject_id: str,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    """Record that ``actor`` read or changed a resident's data (privacy audit log)."""
    conn.execute(
        "INSERT INTO audit_log (ts, actor, action, subject_kind, subject_id, details) "
        "VALUES (%s, %s, %s, %s, %s, %s)",
        (at or _now(), actor, action, subject_kind, subject_id, Jsonb(details or {})),
    )


def log_accesses(
    conn: Conn, *, actor: str, action: str, entries: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """`log_access` for many subjects at once: (subject_kind, subject_id, details) each."""
    now = _now()
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO audit_log (ts, actor, action, subject_kind, subject_id, details) "
            "VALUES (%s, %s, %s, %s, %s, %s)",
            [(now, actor, action, kind, sid, Jsonb(details)) for kind, sid, details in entries],
        )


# --------------------------------------------------------------------------- controller leases


def acquire_lease(
    conn: Conn, district_code: str, owner: str, *, ttl_s: float, now: datetime | None = None
) -> bool:
    """Take or renew the district's lease for ``owner``; False while another owner's lease is live."""
    now = now or _now()
    row = conn.execute(
        """
        INSERT INTO controller_leases AS l (district_code, owner, acquired_at, renewed_at, expires_at)
        VALUES (%(d)s, %(owner)s, %(now)s, %(now)s, %(exp)s)
        ON CONFLICT (district_code) DO UPDATE SET
            owner = EXCLUDED.owner,
            acquired_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.acquired_at ELSE EXCLUDED.acquired_at END,
            renewed_at = EXCLUDED.renewed_at, expires_at = EXCLUDED.expires_at
        WHERE l.owner = EXCLUDED.owner OR l.expires_at < EXCLUDED.renewed_at
        RETURNING owner
        """,
        {"d": district_code, "owner": owner, "now": now, "exp": now + timedelta(seconds=ttl_s)},
    ).fetchone()
    return row is not None


def release_lease(conn: Conn, district_code: str, owner: str) -> None:
    """Give a lease up (on clean shutdown) so another controller takes over at once."""
    conn.execute(
        "DELETE FROM controller_leases WHERE district_code = %s AND owner = %s", (district_code, owner)
    )


def lease_owners(conn: Conn) -> dict[str, str]:
    """District code -> owner of every live lease."""
    rows = conn.execute(
        "SELECT district_code, owner FROM controller_leases WHERE expires_at >= now()"
    ).fetchall()
    return {str(r[0]): str(r[1]) for r in rows}


# --------------------------------------------------------------------------- rollups (read side)


def lamp_hours(conn: Conn, device_id: str, *, since: datetime) -> list[Row]:
    """A lamp's hourly figures from ``since`` (e.g. the last 24 h for the console chart), oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT bucket, samples, level_min, level_avg, level_max, power_avg_w, energy_wh, uptime_s "
            "FROM telemetry_hourly_lamp WHERE device_id = %s AND bucket >= %s ORDER BY bucket",
            (device_id, since),
        ).fetchall()


def district_hours(conn: Conn, district_code: str, *, since: datetime) -> list[Row]:
    """A district's hourly lamps reporting and energy from ``since``, oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT bucket, lamps_online, energy_wh FROM telemetry_hourly_district "
            "WHERE district_code = %s AND bucket >= %s ORDER BY bucket",
            (district_code, since),
        ).fetchall()
