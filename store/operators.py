"""Operators: their accounts, sessions and login places, the token signing secret, and the
privacy audit log of what they (and the services) read or changed of residents' data.

A session row is what makes an operator's token valid: a token names its session, and each request
reads the session with the account as it is now (`session_account`: one indexed join), so logout,
a disabled account, a new role or a new district take effect on the next request. Every change of
a session or an account is also announced on ``sl_operator`` (`store.notes.notify_operator`) so
the live streams of that operator end at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from alerts import GENESIS_HASH, AuditRow, ChainReport, audit_row_hash, resident_pseudonym, verify_chain
from store.errors import StoreUnavailable
from store.filters import Where
from store.notes import notify_operator
from store.registry import shared_secret
from store.types import Conn, Row

_TOKEN_SECRET_KEY = "api_token_secret"
_AUDIT_KEY = "audit_pseudonym_key"


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- accounts


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


def list_operators(conn: Conn) -> list[Row]:
    """Operator accounts without their password hashes."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT username, role, district_code, display_name, disabled, created_at FROM operators "
            "ORDER BY username"
        ).fetchall()


def shared_audit_key(conn: Conn) -> bytes:
    """The key of residents' pseudonyms in the audit log kept in the database, created by the first."""
    return bytes.fromhex(shared_secret(conn, _AUDIT_KEY, 32))


def shared_token_secret(conn: Conn) -> bytes:
    """The operators' token signing secret kept in the database, created by the first instance."""
    return bytes.fromhex(shared_secret(conn, _TOKEN_SECRET_KEY, 32))


# --------------------------------------------------------------------------- sessions, login places


def create_session(conn: Conn, session_id: str, username: str, *, expires_at: datetime) -> None:
    """Record a new session of `username` valid until `expires_at`, and forget sessions that ended
    more than a day ago (a few hundred logins a day: no job needed)."""
    conn.execute(
        "DELETE FROM operator_sessions WHERE expires_at < now() - interval '1 day' "
        "OR revoked_at < now() - interval '1 day'"
    )
    conn.execute(
        "INSERT INTO operator_sessions (session_id, username, expires_at) VALUES (%s, %s, %s)",
        (session_id, username, expires_at),
    )


def session_account(conn: Conn, session_id: str) -> dict[str, Any] | None:
    """The account of a live session (not revoked, not expired, account enabled) as it is now:
    username, role, district_code, expires_at; None otherwise."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT o.username, o.role, o.district_code, s.expires_at FROM operator_sessions s "
            "JOIN operators o ON o.username = s.username "
            "WHERE s.session_id = %s AND s.revoked_at IS NULL AND s.expires_at > now() AND NOT o.disabled",
            (session_id,),
        ).fetchone()


def revoke_session(conn: Conn, session_id: str) -> bool:
    """End one session (logout); False when it was not live."""
    row = conn.execute(
        "UPDATE operator_sessions SET revoked_at = now() WHERE session_id = %s AND revoked_at IS NULL "
        "RETURNING username",
        (session_id,),
    ).fetchone()
    if row is not None:
        notify_operator(conn, str(row[0]))
    return row is not None


def revoke_sessions(conn: Conn, username: str) -> int:
    """End every live session of `username` (password replaced, account disabled); how many."""
    cur = conn.execute(
        "UPDATE operator_sessions SET revoked_at = now() WHERE username = %s AND revoked_at IS NULL",
        (username,),
    )
    notify_operator(conn, username)
    return cur.rowcount


def account_changed(conn: Conn, username: str) -> None:
    """Tell the live streams that `username`'s role, district or state changed."""
    notify_operator(conn, username)


def set_operator_disabled(conn: Conn, username: str, disabled: bool) -> bool:
    """Disable or enable an account (its sessions are revoked when disabled); False when unknown."""
    row = conn.execute(
        "UPDATE operators SET disabled = %s WHERE username = %s RETURNING username", (disabled, username)
    ).fetchone()
    if row is None:
        return False
    if disabled:
        revoke_sessions(conn, username)
    return True


def is_login_place(conn: Conn, username: str, address: str) -> bool:
    """True when `username` has logged in successfully from `address` before."""
    row = conn.execute(
        "SELECT 1 FROM operator_login_places WHERE username = %s AND address = %s", (username, address)
    ).fetchone()
    return row is not None


def remember_login_place(conn: Conn, username: str, address: str) -> None:
    """Record a successful login of `username` from `address`."""
    conn.execute(
        "INSERT INTO operator_login_places (username, address) VALUES (%s, %s) "
        "ON CONFLICT (username, address) DO UPDATE SET last_at = now()",
        (username, address),
    )


# --------------------------------------------------------------------------- privacy audit log


# Audit rows are appended one writer at a time (this transaction-scoped advisory lock, "SLAU"), so
# each reads the hash of the row before it and two writers never link to the same row (a fork).
AUDIT_LOCK_KEY = 0x534C4155
PSEUDONYM_PREFIX = "rp_"


def _append_audit(conn: Conn, rows: Sequence[tuple[datetime, str, str, str, str, dict[str, Any]]]) -> None:
    """Append rows to the chain: lock, read the last hash, link each row to the one before."""
    for _, _, _, kind, sid, _ in rows:
        if kind == "resident" and not sid.startswith(PSEUDONYM_PREFIX):
            raise ValueError("audit rows name a resident by its pseudonym, never the id")
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK_KEY,))
        row = conn.execute(
            "SELECT row_hash FROM audit_log WHERE row_hash IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        prev = GENESIS_HASH if row is None else str(row[0])
        values = []
        for ts, actor, action, kind, sid, details in rows:
            digest = audit_row_hash(
                prev, ts=ts, actor=actor, action=action, subject_kind=kind, subject_id=sid, details=details
            )
            values.append((ts, actor, action, kind, sid, Jsonb(details), prev, digest))
            prev = digest
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO audit_log (ts, actor, action, subject_kind, subject_id, details, prev_hash, "
                "row_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                values,
            )


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
    """Record that ``actor`` read or changed a resident's data (privacy audit log, hash-chained).
    A resident is named by `alerts.resident_pseudonym`, never by the id (ValueError)."""
    _append_audit(conn, [(at or _now(), actor, action, subject_kind, subject_id, details or {})])


def log_accesses(
    conn: Conn, *, actor: str, action: str, entries: Sequence[tuple[str, str, dict[str, Any]]]
) -> None:
    """`log_access` for many subjects at once: (subject_kind, subject_id, details) each."""
    now = _now()
    _append_audit(conn, [(now, actor, action, kind, sid, details) for kind, sid, details in entries])


def pseudonymise_audit_subjects(conn: Conn) -> int:
    """Replace the resident ids older rows name by their pseudonyms under the database's audit key
    (the privacy migration, before the rows are chained); returns rows changed."""
    key = shared_audit_key(conn)
    rows = conn.execute(
        "SELECT DISTINCT subject_id FROM audit_log "
        "WHERE subject_kind = 'resident' AND subject_id NOT LIKE 'rp\\_%'"
    ).fetchall()
    changed = 0
    for (rid,) in rows:
        changed += conn.execute(
            "UPDATE audit_log SET subject_id = %s WHERE subject_kind = 'resident' AND subject_id = %s",
            (resident_pseudonym(key, str(rid)), rid),
        ).rowcount
    return changed


def chain_unhashed_audit_rows(conn: Conn) -> int:
    """Chain the rows written before the chain existed (the privacy migration), in id order."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (AUDIT_LOCK_KEY,))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT id, ts, actor, action, subject_kind, subject_id, details FROM audit_log "
            "WHERE row_hash IS NULL ORDER BY id"
        ).fetchall()
    last = conn.execute(
        "SELECT row_hash FROM audit_log WHERE row_hash IS NOT NULL ORDER BY id DESC LIMIT 1"
    ).fetchone()
    prev = GENESIS_HASH if last is None else str(last[0])
    for r in rows:
        digest = audit_row_hash(
            prev,
            ts=r["ts"],
            actor=r["actor"],
            action=r["action"],
            subject_kind=r["subject_kind"],
            subject_id=r["subject_id"],
            details=r["details"],
        )
        conn.execute(
            "UPDATE audit_log SET prev_hash = %s, row_hash = %s WHERE id = %s", (prev, digest, r["id"])
        )
        prev = digest
    return len(rows)


def verify_audit_chain_at(database_url: str) -> ChainReport:
    """`alerts.verify_chain` over the whole audit log, on a connection of its own; raises
    StoreUnavailable when the database cannot be read."""
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return verify_chain(audit_chain(conn))
    except psycopg.Error as exc:
        raise StoreUnavailable(str(exc)) from exc


def audit_chain(conn: Conn, *, batch: int = 5000) -> Iterator[AuditRow]:
    """Every audit row, oldest first, as `alerts.verify_chain` reads them (server-side cursor)."""
    with conn.transaction(), conn.cursor(name="audit_chain", row_factory=dict_row) as cur:
        cur.itersize = batch
        cur.execute(
            "SELECT id, ts, actor, action, subject_kind, subject_id, details, prev_hash, row_hash "
            "FROM audit_log ORDER BY id"
        )
        for r in cur:
            yield AuditRow(**r)


def audit_entries(conn: Conn, *, subject_id: str | None = None, limit: int = 200) -> list[Row]:
    """The privacy audit log, newest first."""
    where = Where().equals("subject_id", subject_id or None)
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT id, ts, actor, action, subject_kind, subject_id, details, row_hash FROM audit_log"
            + where.sql
            + " ORDER BY id DESC LIMIT %s",
            [*where.params, limit],
        ).fetchall()
