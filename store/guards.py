"""The guards' roster and the alerts sent to them.

A guard is an operator account with the role ``guard`` (`store.operators`) plus a roster row:
its zone (a dong code of the guard zones), the zone's district, its shift (Seoul wall-clock start
and end, weekdays) and, optionally, its phone number, encrypted with the residents' keyring
(`store.phones`, table ``guard_phones``). ``guard_alerts`` lists which guards an SOS was sent
to; what they answered is in the alert's own timeline (`alerts.guard_acknowledge`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from psycopg.rows import dict_row

from alerts import Alert, Guard, GuardShift, alert_from_dict
from store.alerts import change_alert
from store.filters import Where
from store.notes import notify_operator
from store.phones import PhoneKeyring, set_guard_phone
from store.types import Conn

GUARDS_SQL = """
ALTER TABLE operators DROP CONSTRAINT IF EXISTS operators_role_check;
ALTER TABLE operators ADD CONSTRAINT operators_role_check
    CHECK (role IN ('district', 'city', 'maintenance', 'admin', 'guard'));

CREATE TABLE guard_roster (
    username      text PRIMARY KEY REFERENCES operators (username) ON DELETE CASCADE,
    zone_code     text NOT NULL,
    district_code text NOT NULL,
    zone_name     text NOT NULL DEFAULT '',
    name          text NOT NULL DEFAULT '',
    starts        time NOT NULL,
    ends          time NOT NULL,
    weekdays      smallint[] NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (starts <> ends),
    CHECK (cardinality(weekdays) BETWEEN 1 AND 7 AND weekdays <@ ARRAY[0,1,2,3,4,5,6]::smallint[])
);
CREATE INDEX guard_roster_zone ON guard_roster (zone_code);

CREATE TABLE guard_phones (
    username   text PRIMARY KEY REFERENCES guard_roster (username) ON DELETE CASCADE,
    key_id     text NOT NULL,
    nonce      bytea NOT NULL,
    ciphertext bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX guard_phones_key ON guard_phones (key_id);

CREATE TABLE guard_alerts (
    alert_id    text NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    username    text NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    notified_at timestamptz NOT NULL,
    PRIMARY KEY (alert_id, username)
);
CREATE INDEX guard_alerts_username ON guard_alerts (username, notified_at DESC);
"""


def _guard(row: dict[str, Any]) -> Guard:
    shift = GuardShift(row["starts"], row["ends"], frozenset(int(d) for d in row["weekdays"]))
    return Guard(row["username"], row["zone_code"], shift, row["name"])


def upsert_guard(
    conn: Conn,
    guard: Guard,
    *,
    district_code: str,
    zone_name: str = "",
    phone: str | None = None,
    keyring: PhoneKeyring | None = None,
) -> None:
    """Put a guard on the roster (or change its zone, shift, name); `phone` (E.164) is stored
    encrypted under the keyring's current key. The account must exist with the role ``guard``."""
    if phone is not None and keyring is None:
        raise ValueError("a guard's phone number needs the phone keys (STREETLIGHT_PHONE_KEYS)")
    shift = guard.shift
    with conn.transaction():
        conn.execute(
            """
            INSERT INTO guard_roster
                (username, zone_code, district_code, zone_name, name, starts, ends, weekdays)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            ON CONFLICT (username) DO UPDATE SET zone_code = EXCLUDED.zone_code,
                district_code = EXCLUDED.district_code, zone_name = EXCLUDED.zone_name,
                name = EXCLUDED.name, starts = EXCLUDED.starts, ends = EXCLUDED.ends,
                weekdays = EXCLUDED.weekdays, updated_at = now()
            """,
            (
                guard.username,
                guard.zone_code,
                district_code,
                zone_name,
                guard.name,
                shift.starts,
                shift.ends,
                sorted(shift.weekdays),
            ),
        )
        if phone is not None and keyring is not None:
            set_guard_phone(conn, keyring, guard.username, phone)
        notify_operator(conn, guard.username)  # a moved guard's live views end


def zone_roster(conn: Conn, zone_code: str) -> list[Guard]:
    """The guards of a zone (enabled accounts only)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT g.* FROM guard_roster g JOIN operators o ON o.username = g.username "
            "WHERE g.zone_code = %s AND NOT o.disabled AND o.role = 'guard' ORDER BY g.username",
            (zone_code,),
        ).fetchall()
    return [_guard(r) for r in rows]


def roster_rows(conn: Conn, districts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The roster for the operators' view: each guard with its zone, shift and whether a phone is
    on file (never the number), optionally only the zones of some districts."""
    where = Where().any_of("g.district_code", districts)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT g.*, o.disabled, (p.username IS NOT NULL) AS has_phone FROM guard_roster g "
            "JOIN operators o ON o.username = g.username LEFT JOIN guard_phones p ON p.username = g.username"
            + where.sql
            + " ORDER BY g.district_code, g.zone_code, g.username",
            where.params,
        ).fetchall()


def guard_of(conn: Conn, username: str) -> Guard | None:
    """The roster entry of a guard account, or None."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute("SELECT * FROM guard_roster WHERE username = %s", (username,)).fetchone()
    return None if row is None else _guard(row)


def notify_guards_change(
    conn: Conn, alert_id: str, change: Callable[[Alert], Alert], usernames: Sequence[str], at: dt.datetime
) -> tuple[Alert, Alert]:
    """`change_alert` with the guard notification `change`, and, in the same transaction when it
    changed the alert, the rows that send it to each of `usernames`."""
    with conn.transaction():
        before, after = change_alert(conn, alert_id, change)
        if after is not before and usernames:
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO guard_alerts (alert_id, username, notified_at) VALUES (%s, %s, %s) "
                    "ON CONFLICT DO NOTHING",
                    [(alert_id, u, at) for u in usernames],
                )
    return before, after


def alerts_sent_to(conn: Conn, username: str, *, limit: int = 50) -> list[tuple[Alert, dt.datetime]]:
    """The alerts sent to a guard, newest first, with when each was sent."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT a.data, g.notified_at FROM guard_alerts g JOIN alerts a ON a.alert_id = g.alert_id "
            "WHERE g.username = %s ORDER BY g.notified_at DESC LIMIT %s",
            (username, limit),
        ).fetchall()
    return [(alert_from_dict(r["data"]), r["notified_at"]) for r in rows]


def sent_at(conn: Conn, alert_id: str, username: str) -> dt.datetime | None:
    """When the alert was sent to the guard, or None when it was not."""
    row = conn.execute(
        "SELECT notified_at FROM guard_alerts WHERE alert_id = %s AND username = %s", (alert_id, username)
    ).fetchone()
    return None if row is None else row[0]
