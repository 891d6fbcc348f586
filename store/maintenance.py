"""What ingest's maintenance alerts read, and the locks that serialise their decisions.

The decisions are the pure functions of ``alerts/_maintenance.py``; this module returns their
rows (``alerts.DeviceRecord``, ``alerts.DeviceLiveness``, ``alerts.LampSnapshot``) and takes the
advisory locks: a device's (or a pass's) alert decisions are serialised across ingest workers
until the transaction commits. Saving the changes is ``store.alerts.save_alert``'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from psycopg.rows import dict_row

from alerts import DeviceLiveness, DeviceRecord, LampSnapshot, PowerLoss
from store.types import Conn, Row

# Keys of the locks of the periodic passes (a device's decisions lock its device id).
OFFLINE_PASS_LOCK = "ingest:offline-alerts"
STORAGE_ALERT_LOCK = "ingest:storage-alert"
DATA_LOSS_ALERT_LOCK = "ingest:data-loss-alert"


def _device_record(r: Row) -> DeviceRecord:
    """A device as the maintenance planning reads it (a row of the device reads below)."""
    return DeviceRecord(
        device_id=r["device_id"],
        kind=r["kind"],
        district_code=r["district_code"],
        dong_code=r["dong_code"] or "",
        lat=r["lat"],
        lon=r["lon"],
        faults=frozenset(r["faults"] or ()),
        lamp_number=r["lamp_number"] or "",
        address=r["address"] or "",
    )


def lock_decisions(conn: Conn, key: str) -> None:
    """Hold the advisory lock ``key`` (a device id, or a pass's key) until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


@contextmanager
def decisions(conn: Conn, key: str) -> Iterator[None]:
    """A transaction holding the advisory lock ``key``: what is read and saved inside it is
    decided by one worker at a time."""
    with conn.transaction():
        lock_decisions(conn, key)
        yield


def device_records(conn: Conn, device_ids: Sequence[str]) -> dict[str, DeviceRecord]:
    """The registered devices among ``device_ids``, with the faults their state holds."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT d.device_id, d.kind, d.district_code, d.dong_code, d.lat, d.lon, d.lamp_number, "
            "d.address, coalesce(s.faults, '{}') AS faults FROM devices d "
            "LEFT JOIN device_state s ON s.device_id = d.device_id WHERE d.device_id = ANY(%s)",
            (list(device_ids),),
        ).fetchall()
    return {r["device_id"]: _device_record(r) for r in rows}


_POWER_LOSSES_SQL = """
WITH loss AS (
    SELECT DISTINCT ON (device_id) device_id, ts FROM events
    WHERE type = 'power_loss' AND ts >= %(since)s ORDER BY device_id, ts DESC
), cleared AS (
    SELECT device_id, max(ts) AS ts FROM events
    WHERE type = 'fault_cleared' AND code = 'power_loss' AND ts >= %(since)s GROUP BY device_id
), reporting AS (
    SELECT device_id FROM device_state
    WHERE online AND 'power_loss' = ANY(faults) AND last_seen >= state_changed_at
)
SELECT d.device_id, d.kind, d.district_code, d.dong_code, d.lat, d.lon, d.lamp_number, d.address,
       coalesce(s.faults, '{}') AS faults, l.ts AS since
FROM devices d JOIN device_state s ON s.device_id = d.device_id
LEFT JOIN loss l ON l.device_id = d.device_id
LEFT JOIN cleared c ON c.device_id = d.device_id
WHERE d.device_id IN (SELECT device_id FROM loss UNION SELECT device_id FROM reporting)
  AND (
      (d.device_id IN (SELECT device_id FROM reporting) AND (c.ts IS NULL OR c.ts < s.last_seen))
      OR (l.ts IS NOT NULL AND (c.ts IS NULL OR c.ts < l.ts) AND NOT (s.online AND s.state_changed_at > l.ts))
  )
ORDER BY d.device_id
"""


def power_losses(conn: Conn, *, since: datetime) -> list[PowerLoss]:
    """The devices whose power loss is recorded and not cleared: a ``power_loss`` event since
    ``since`` (the latest) with no later ``fault_cleared`` of it and no later connection, or
    telemetry on the current connection reporting ``power_loss`` (a blinker on battery) with no
    ``fault_cleared`` of it since (all device times)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_POWER_LOSSES_SQL, {"since": since}).fetchall()
    return [
        PowerLoss(
            _device_record(r),
            r["since"],
        )
        for r in rows
    ]


# Telemetry and events share a device's seq counter (acks carry a made-up one and are left out).
# Rows are stored with bdseq 0 (the wire carries none), so a connection's restart of seq shows as
# a step back in device time; a step counts as missing only when time does not go back with it.
_STORED_SEQ_GAPS_SQL = """
WITH r AS (
    SELECT DISTINCT device_id, seq, ts FROM (
        SELECT device_id, seq, ts FROM telemetry WHERE ts >= %(since)s AND ts < %(until)s
        UNION ALL
        SELECT device_id, seq, ts FROM events
        WHERE ts >= %(since)s AND ts < %(until)s AND type <> 'ack'
    ) u
), steps AS (
    SELECT device_id, ts,
           seq - lag(seq) OVER w - 1 AS missing,
           ts >= lag(ts) OVER w AS forward
    FROM r WINDOW w AS (PARTITION BY device_id ORDER BY seq, ts)
)
SELECT s.device_id, coalesce(d.district_code, '') AS district_code, sum(s.missing)::bigint AS missing
FROM steps s LEFT JOIN devices d ON d.device_id = s.device_id
WHERE s.missing > 0 AND s.forward AND s.ts >= %(closed_from)s
GROUP BY s.device_id, d.district_code
ORDER BY s.device_id
"""


def stored_seq_gaps(
    conn: Conn, *, since: datetime, closed_from: datetime, until: datetime
) -> dict[str, tuple[str, int]]:
    """Messages missing from the stored rows (telemetry and events, device time in [since, until)):
    device id -> (district code, missing), counting each gap once, by the row that closes it,
    when that row's time is in [closed_from, until)."""
    with conn.cursor() as cur:
        rows = cur.execute(
            _STORED_SEQ_GAPS_SQL, {"since": since, "closed_from": closed_from, "until": until}
        ).fetchall()
    return {str(device): (str(district), int(missing)) for device, district, missing in rows}


def dark_candidates(conn: Conn, *, silent_since: datetime) -> list[DeviceLiveness]:
    """Devices offline by their will, or online but not heard from (message or reconnection)
    since ``silent_since``."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT s.device_id, s.online, s.state_changed_at, s.last_seen,
                   d.district_code, d.dong_code, d.lat, d.lon, d.kind, d.lamp_number, d.address
            FROM device_state s JOIN devices d ON d.device_id = s.device_id
            WHERE (NOT s.online AND s.state_changed_at IS NOT NULL)
               OR (s.online AND s.last_seen IS NOT NULL
                   AND greatest(s.last_seen, s.state_changed_at) < %s)
            """,
            (silent_since,),
        ).fetchall()
    return [
        DeviceLiveness(
            device_id=r["device_id"],
            online=bool(r["online"]),
            state_changed_at=r["state_changed_at"],
            last_seen=r["last_seen"],
            kind=r["kind"],
            district_code=r["district_code"],
            dong_code=r["dong_code"] or "",
            lat=r["lat"],
            lon=r["lon"],
            lamp_number=r["lamp_number"] or "",
            address=r["address"] or "",
        )
        for r in rows
    ]


def lamps_per_dong(conn: Conn) -> dict[str, int]:
    """How many lamps each neighbourhood (dong code) has; lamps without a dong are not counted."""
    rows = conn.execute("SELECT dong_code, count(*) FROM devices WHERE kind = 'lamp' GROUP BY dong_code")
    return {str(dong): int(n) for dong, n in rows.fetchall() if dong}


_READINGS_SQL = """
SELECT d.device_id, d.district_code, d.dong_code, d.lat, d.lon, d.lamp_number, d.address,
       s.online, s.last_seen, s.level, coalesce(s.faults, '{}') AS faults,
       (s.last_telemetry->>'power_w')::float8 AS power_w,
       EXISTS (
           -- an override in force at (or just before) the reading: set_level or blink from a walk,
           -- an SOS or an operator, not refused, not cleared by a later clear of the same source
           SELECT 1 FROM commands c
           WHERE c.device_id = d.device_id AND c.action IN ('set_level', 'blink')
             AND c.priority <> 'schedule' AND c.status NOT IN ('rejected', 'expired')
             AND c.sent_at <= s.last_seen AND c.expires_at > s.last_seen - make_interval(secs => %(slack)s)
             AND NOT EXISTS (
                 SELECT 1 FROM commands k
                 WHERE k.device_id = c.device_id AND k.source = c.source AND k.action = 'clear'
                   AND k.sent_at > c.sent_at AND k.sent_at < s.last_seen - make_interval(secs => %(slack)s)
             )
       ) AS override
FROM devices d JOIN device_state s ON s.device_id = d.device_id
WHERE d.kind = 'lamp' AND d.lat IS NOT NULL AND d.lon IS NOT NULL
  AND s.last_seen >= %(fresh)s AND s.last_seen <= %(now)s
"""


def lamp_snapshots(
    conn: Conn, *, fresh_since: datetime, now: datetime, override_slack_s: float
) -> list[LampSnapshot]:
    """Every placed lamp's latest reading taken between ``fresh_since`` and ``now``, with whether an
    override (``commands``, unexpired within ``override_slack_s``) was in force at it."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _READINGS_SQL, {"fresh": fresh_since, "now": now, "slack": override_slack_s}
        ).fetchall()
    return [
        LampSnapshot(
            device_id=r["device_id"],
            lat=r["lat"],
            lon=r["lon"],
            at=r["last_seen"],
            level=r["level"],
            power_w=r["power_w"],
            online=bool(r["online"]),
            faults=frozenset(r["faults"] or ()),
            override=bool(r["override"]),
            district_code=r["district_code"],
            dong_code=r["dong_code"] or "",
            lamp_number=r["lamp_number"] or "",
            address=r["address"] or "",
        )
        for r in rows
    ]
