"""Commands and controller leases (their own modules, ``store/commands.py`` and ``store/leases.py``,
take them next), and the names the other aggregates' modules took from here, kept importable
for the modules that still import them from ``store.repo`` (until those imports move too):

    store/devices.py     devices, live state, lamps' overrides, hourly figures, dead letters
    store/walks.py       residents and walks
    store/alerts.py      alert rows, events, tracks, idempotency keys, stream reads
    store/operators.py   operator accounts, sessions, the privacy audit log

A function of several statements wraps them in ``conn.transaction()`` (its own transaction on an
autocommit connection, a savepoint inside the caller's); a single statement runs as it is. A
caller that needs several calls to commit together wraps them in ``with conn.transaction():``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from psycopg.rows import dict_row

# Re-exported for the modules that import these names from here (see the docstring).
from store.alerts import (
    add_alert_positions,
    alert_events,
    alert_track,
    append_alert_event,
    claim_idempotency_key,
    get_alert,
    idempotency_alert,
    list_alerts,
    upsert_alert,
)
from store.devices import (
    DeadLetter,
    StateUpdate,
    device_registrations,
    district_hours,
    existing_event_keys,
    get_device,
    insert_dead_letters,
    lamp_hours,
    list_dead_letters,
    list_devices_with_state,
    register_device,
    set_connectivity,
    silent_devices,
    start_connection,
    update_device_from_birth,
    update_device_states,
    upsert_device,
)
from store.operators import get_operator, log_access, log_accesses, upsert_operator
from store.types import Conn, Row
from store.walks import (
    WalkPosition,
    active_walks_of,
    add_walk_positions,
    attach_walk_to_alert,
    create_resident,
    delete_resident,
    end_walk,
    get_walk,
    resident_by_token_hash,
    start_walk,
    walk_positions,
)

__all__ = [
    "CommandRecord",
    "DeadLetter",
    "StateUpdate",
    "WalkPosition",
    "acquire_lease",
    "active_walks_of",
    "add_alert_positions",
    "add_walk_positions",
    "alert_events",
    "alert_track",
    "append_alert_event",
    "attach_walk_to_alert",
    "claim_idempotency_key",
    "command_status_counts",
    "create_resident",
    "delete_resident",
    "device_registrations",
    "district_hours",
    "end_walk",
    "existing_event_keys",
    "get_alert",
    "get_command",
    "get_device",
    "get_operator",
    "get_walk",
    "idempotency_alert",
    "insert_commands",
    "insert_dead_letters",
    "lamp_hours",
    "lease_owners",
    "list_alerts",
    "list_dead_letters",
    "list_devices_with_state",
    "log_access",
    "log_accesses",
    "mark_unanswered",
    "record_ack",
    "record_acks",
    "register_device",
    "release_lease",
    "resident_by_token_hash",
    "set_connectivity",
    "silent_devices",
    "start_connection",
    "start_walk",
    "update_device_from_birth",
    "update_device_states",
    "upsert_alert",
    "upsert_device",
    "upsert_operator",
    "walk_positions",
]


def _now() -> datetime:
    return datetime.now(UTC)


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
