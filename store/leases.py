"""District leases in ``controller_leases``: who acts for which district.

A district has one active controller, the holder of its live lease; each controller also keeps
a membership row (``member/<owner>``) alive in the same table so every controller knows how many
are running (the plan of who takes what is ``controller._leases``, pure).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from store.repo import acquire_lease, release_lease
from store.types import Conn

# =========================================================================== controller leases

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
    rows = conn.execute(
        "SELECT district_code, owner FROM controller_leases WHERE expires_at >= now()"
    ).fetchall()
    members = sum(1 for r in rows if str(r[0]).startswith(MEMBER_PREFIX))
    holders = {str(r[0]): str(r[1]) for r in rows if not str(r[0]).startswith(MEMBER_PREFIX)}
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
