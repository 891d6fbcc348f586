"""Leases in ``controller_leases``: one holder at a time, for a district or an ingest group.

A district has one active controller, the holder of its live lease; each controller also keeps
a membership row (``member/<owner>``) alive in the same table so every controller knows how many
are running (the plan of who takes what is ``controller._leases``, pure).

An ingest group on a broker without shared subscriptions takes turns on the row ``ingest/<group>``
(``ingest/_lease.py`` says when): its holder takes and renews it on a connection of its own, so a
busy or broken batch connection never costs it the lease.

One ingest worker runs the periodic jobs: the one whose jobs connection holds a session's advisory
lock (`try_session_lock`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import psycopg

from store.connections import connect
from store.errors import StoreUnavailable
from store.types import Conn

# =========================================================================== controller leases


def _now() -> datetime:
    return datetime.now(UTC)


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


MEMBER_PREFIX = "member/"

LeasePlanner = Callable[[dict[str, str], int], tuple[Sequence[str], Sequence[str]]]
"""(holders: district -> owner of each live district lease, members: live controllers) ->
(districts to acquire or renew, districts to give up)."""


def member_key(owner: str) -> str:
    """The membership row of a controller (same table as leases, never a district code)."""
    return f"{MEMBER_PREFIX}{owner}"


def lease_round(conn: Conn, owner: str, ttl_s: float, plan: LeasePlanner) -> tuple[set[str], dict[str, str]]:
    """Keep `owner`'s membership row alive, read who holds what, and take or give up leases as
    `plan` says; returns the districts now held and the holders read before the round."""
    acquire_lease(conn, member_key(owner), owner, ttl_s=ttl_s)
    live = lease_owners(conn)
    members = sum(1 for key in live if key.startswith(MEMBER_PREFIX))
    holders = {key: who for key, who in live.items() if not key.startswith(MEMBER_PREFIX)}
    acquire, release = plan(holders, members)
    for district in release:
        release_lease(conn, district, owner)
    got = {d for d in acquire if acquire_lease(conn, d, owner, ttl_s=ttl_s)}
    return got, holders


def release_all(conn: Conn, districts: Sequence[str], owner: str) -> None:
    """Give up `owner`'s leases of `districts` and its membership (a clean stop: others take over
    at once instead of after the leases expire)."""
    for district in [*districts, member_key(owner)]:
        release_lease(conn, district, owner)


# =========================================================================== end of controller leases


# =========================================================================== a session's lock


def try_session_lock(conn: Conn, key: int) -> bool:
    """Take the advisory lock `key` for the connection's session if it is free (held until the
    connection closes): True taken, False another session holds it."""
    row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
    return bool(row and row[0])


# =========================================================================== ingest group lease


class LeaseConnection:
    """Take, renew and give up lease rows on a connection of its own, opened on first use and
    again after a failure. Any database error closes it and raises ``StoreUnavailable``."""

    def __init__(self, database_url: str, *, connect_timeout_s: float = 5.0) -> None:
        self.database_url = database_url
        self.connect_timeout_s = connect_timeout_s
        self._conn: Conn | None = None

    def _connection(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.database_url, connect_timeout_s=self.connect_timeout_s)
        return self._conn

    def acquire(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take or renew the lease ``key`` for ``ttl_s``: True held, False another owner holds it."""
        try:
            return acquire_lease(self._connection(), key, owner, ttl_s=ttl_s)
        except psycopg.Error as exc:
            self.close()
            raise StoreUnavailable(str(exc)) from exc

    def release(self, key: str, owner: str) -> None:
        """Give the lease ``key`` up if ``owner`` holds it."""
        try:
            release_lease(self._connection(), key, owner)
        except psycopg.Error as exc:
            self.close()
            raise StoreUnavailable(str(exc)) from exc

    def close(self) -> None:
        """Close the connection (a lease it held runs out on its own)."""
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
