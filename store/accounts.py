"""Operators' sessions and login places: the SQL behind the API's login, logout and token checks.

A session row is what makes an operator's token valid: a token names its session, and each request
reads the session with the account as it is now (`session_account`: one indexed join), so logout,
a disabled account, a new role or a new district take effect on the next request. Every change of
a session or an account is also announced on `OPERATOR_CHANNEL` (NOTIFY, delivered at commit) so
the live streams of that operator end at once.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg.rows import dict_row

from store.types import Conn

OPERATOR_CHANNEL = "sl_operator"


def _announce(conn: Conn, username: str) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (OPERATOR_CHANNEL, username))


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
        _announce(conn, str(row[0]))
    return row is not None


def revoke_sessions(conn: Conn, username: str) -> int:
    """End every live session of `username` (password replaced, account disabled); how many."""
    cur = conn.execute(
        "UPDATE operator_sessions SET revoked_at = now() WHERE username = %s AND revoked_at IS NULL",
        (username,),
    )
    _announce(conn, username)
    return cur.rowcount


def account_changed(conn: Conn, username: str) -> None:
    """Tell the live streams that `username`'s role, district or state changed."""
    _announce(conn, username)


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
