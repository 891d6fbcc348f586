"""Leases in ``controller_leases``: one holder at a time for an ingest group's consumer.

An ingest group on a broker without shared subscriptions takes turns on the row ``ingest/<group>``
(``ingest/_lease.py`` says when): its holder takes and renews it on a connection of its own, so a
busy or broken batch connection never costs it the lease.
"""

from __future__ import annotations

import contextlib

import psycopg

from store.errors import StoreUnavailable
from store.repo import acquire_lease, release_lease
from store.types import Conn

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
            self._conn = psycopg.connect(
                self.database_url, autocommit=True, connect_timeout=int(self.connect_timeout_s)
            )
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
