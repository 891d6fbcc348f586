"""Devices: registration from births and provisioning, connectivity and live state, the lamps'
view for the console and the API (with the overrides in force), their hourly figures, and the
messages refused from them (dead letters).

A function of several statements wraps them in ``conn.transaction()`` (its own transaction on an
autocommit connection, a savepoint inside the caller's); a single statement runs as it is. A
caller that needs several calls to commit together wraps them in ``with conn.transaction():``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg.rows import dict_row

from store.filters import Where
from store.types import Conn, Row


def _now() -> datetime:
    return datetime.now(UTC)


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
    dong_code: str | None = None,
) -> bool:
    """Register a device from its first birth; False (nothing written) when it is registered already."""
    cur = conn.execute(
        """
        INSERT INTO devices (device_id, kind, district_code, lat, lon, firmware, model, paired_device_id,
                             created_at, updated_at, dong_code)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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
            dong_code,
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
    dong_code: str | None = None,
) -> None:
    """What a later birth may change: firmware and model; position, pairing and neighbourhood only
    where the registration has none (ingest/_registration.py decides); never the register's lamp
    number, address or lamp count."""
    conn.execute(
        """
        UPDATE devices SET firmware = %s, model = %s,
            lat = coalesce(lat, %s), lon = coalesce(lon, %s),
            paired_device_id = coalesce(paired_device_id, %s),
            dong_code = coalesce(dong_code, %s), updated_at = %s
        WHERE device_id = %s
        """,
        (firmware, model, lat, lon, paired_device_id, dong_code, at or _now(), device_id),
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
       d.firmware, d.model, d.paired_device_id, d.provisioned, d.address, d.lamp_count,
       coalesce(s.online, false) AS online, s.bdseq, s.state_changed_at, s.last_seen, s.last_seq,
       s.level, coalesce(s.faults, '{}') AS faults, s.last_telemetry,
       coalesce(s.seq_gaps, 0) AS seq_gaps, coalesce(s.seq_duplicates, 0) AS seq_duplicates
FROM devices d LEFT JOIN device_state s ON s.device_id = d.device_id
"""


def placement_version(conn: Conn) -> tuple[int, str]:
    """How many devices there are and a hash of what the lamp indexes are built from (id, kind,
    district, lamp number, position, pairing, address): the same while none of it changed, so a
    periodic reload rebuilds nothing it already has. PostgreSQL hashes the rows (about a
    millisecond for 3,500 devices) instead of the service reading and comparing them all."""
    row = conn.execute(
        "SELECT count(*), coalesce(sum(hashtextextended(ROW(device_id, kind, district_code, "
        "lamp_number, lat, lon, paired_device_id, address)::text, 0)), 0)::text FROM devices"
    ).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def list_devices_with_state(
    conn: Conn, *, district_codes: Sequence[str] | None = None, kind: str | None = "lamp"
) -> list[Row]:
    """Devices (lamps by default) with their live state, for the console map and GeoJSON."""
    where = Where().any_of("d.district_code", district_codes).equals("d.kind", kind)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_LAMPS_SQL + where.sql + " ORDER BY d.device_id", where.params).fetchall()


def silent_devices(conn: Conn, *, silent_since: datetime) -> list[Row]:
    """Online devices not heard from since ``silent_since`` (for the silent-device alert)."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT device_id, last_seen FROM device_state "
            "WHERE online AND last_seen < %s ORDER BY device_id",
            (silent_since,),
        ).fetchall()


# A later `clear` from the same source (a resolved SOS, an ended override) ends a command early.
_OVERRIDES_IN_FORCE = (
    "c.status IN ('sent', 'applied') AND c.expires_at > now() AND c.action IN ('set_level', 'blink') "
    "AND NOT EXISTS (SELECT 1 FROM commands x WHERE x.device_id = c.device_id "
    "AND x.source = c.source AND x.action = 'clear' AND x.sent_at >= c.sent_at)"
)


def active_overrides(conn: Conn, device_ids: Sequence[str] | None = None) -> dict[str, list[Row]]:
    """Commands still in force per lamp (sent or applied, not expired): the lamp's overrides, without
    their source (a walk id or an SOS alert id would let a lamp reader follow a resident)."""
    where = Where().add(_OVERRIDES_IN_FORCE).any_of("c.device_id", device_ids)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT c.device_id, c.cmd_id, c.action, c.level, c.priority, c.expires_at, c.status "
            "FROM commands c" + where.sql + " ORDER BY c.device_id, c.sent_at",
            where.params,
        ).fetchall()
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(str(r.pop("device_id")), []).append(r)
    return out


# --------------------------------------------------------------------------- hourly figures (read side)


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


def lamp_register_of(conn: Conn, device_ids: Sequence[str]) -> dict[str, Row]:
    """``lamp_number, address, dong_code, district_code`` of registered devices, by id."""
    if not device_ids:
        return {}
    sql = (
        "SELECT device_id, lamp_number, address, dong_code, district_code FROM devices "
        "WHERE device_id = ANY(%s) ORDER BY device_id"
    )
    with conn.cursor(row_factory=dict_row) as cur:
        return {r["device_id"]: r for r in cur.execute(sql, (list(device_ids),)).fetchall()}
