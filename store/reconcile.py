"""What the controller reads back from the tables: its lamps, and the walks of districts it takes.

The controller keeps its lamps in memory (a ``geo.LampIndex`` built from `load_devices`, reloaded
periodically) and, when it takes a district over or its database listener reconnects, re-reads
the walks still active there with their latest accepted position (`active_walks`): anything
notified while nobody listened is in these rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from psycopg.rows import dict_row

from store.types import Conn, Row


@dataclass(frozen=True, slots=True)
class LampRow:
    """A lamp or blinker as the controller needs it."""

    device_id: str
    kind: str
    district: str
    lat: float
    lon: float
    lamp_number: str
    paired: str | None


@dataclass(frozen=True, slots=True)
class WalkRow:
    """An active walk with its latest accepted position (None when it has none yet)."""

    walk_id: str
    district: str | None
    lat: float | None
    lon: float | None
    ts_ms: int | None
    accuracy_m: float | None
    heading_deg: float | None
    speed_mps: float | None


@dataclass(frozen=True, slots=True)
class CommandTarget:
    """A device as an operator's command needs it, read fresh: where it is and whether it is up."""

    device_id: str
    district: str
    online: bool
    lamp: LampRow | None  # None: it has no position yet


def load_command_target(conn: Conn, device_id: str) -> CommandTarget | None:
    """One device as it is now (None when there is no such device)."""
    with conn.cursor(row_factory=dict_row) as cur:
        r = cur.execute(
            "SELECT d.device_id, d.kind, d.district_code, d.lamp_number, d.lat, d.lon, d.paired_device_id, "
            "coalesce(s.online, false) AS online "
            "FROM devices d LEFT JOIN device_state s ON s.device_id = d.device_id WHERE d.device_id = %s",
            (device_id,),
        ).fetchone()
    if r is None:
        return None
    lamp = _lamp_row(r) if r["lat"] is not None and r["lon"] is not None else None
    return CommandTarget(r["device_id"], r["district_code"] or "", bool(r["online"]), lamp)


def load_devices(conn: Conn) -> list[LampRow]:
    """Every lamp and blinker with a position."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT device_id, kind, district_code, lamp_number, lat, lon, paired_device_id FROM devices "
            "WHERE lat IS NOT NULL AND lon IS NOT NULL ORDER BY device_id"
        ).fetchall()
    return [_lamp_row(r) for r in rows]


def _lamp_row(r: Row) -> LampRow:
    """A ``devices`` row with a position as a `LampRow`."""
    return LampRow(
        device_id=r["device_id"],
        kind=r["kind"],
        district=r["district_code"],
        lat=float(r["lat"]),
        lon=float(r["lon"]),
        lamp_number=r["lamp_number"] or "",
        paired=r["paired_device_id"],
    )


def active_walks(conn: Conn, districts: Sequence[str], fresh_s: float) -> list[WalkRow]:
    """Active walks of the districts with their latest accepted position of the last `fresh_s`."""
    since = datetime.now(UTC) - timedelta(seconds=fresh_s)
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            """
            SELECT w.walk_id, w.district_code, p.ts, p.lat, p.lon, p.accuracy_m, p.heading_deg, p.speed_m_s
            FROM walks w
            LEFT JOIN LATERAL (
                SELECT ts, lat, lon, accuracy_m, heading_deg, speed_m_s FROM walk_positions
                WHERE walk_id = w.walk_id AND accepted AND ts >= %s ORDER BY ts DESC, id DESC LIMIT 1
            ) p ON true
            WHERE w.status = 'active' AND w.district_code = ANY(%s)
            """,
            (since, list(districts)),
        ).fetchall()
    return [
        WalkRow(
            walk_id=r["walk_id"],
            district=r["district_code"],
            lat=r["lat"],
            lon=r["lon"],
            ts_ms=None if r["ts"] is None else int(r["ts"].timestamp() * 1000),
            accuracy_m=r["accuracy_m"],
            heading_deg=r["heading_deg"],
            speed_mps=r["speed_m_s"],
        )
        for r in rows
    ]
