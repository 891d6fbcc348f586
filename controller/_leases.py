"""How controllers split districts between them (pure).

A district has one active controller: the holder of its lease in ``controller_leases`` (renewed
every third of its time to live; another controller takes it once it expires; ``store.leases``
has the SQL). Each controller also keeps a membership row (``member/<owner>``) alive, so every
controller knows how many are running and takes only its fair share, ``ceil(candidates /
members)``, of the free districts; one that holds more than its share gives the excess back so a
newcomer gets work at once. A district left free for a whole lease time (nobody else wants it) is
taken regardless of shares, so no district stays without a controller.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeasePlan:
    """Districts to (re)acquire and districts to give up, this round."""

    acquire: tuple[str, ...]
    release: tuple[str, ...]


def plan_leases(
    me: str,
    candidates: Sequence[str],
    holders: Mapping[str, str],
    members: int,
    free_since: Mapping[str, float],
    now_s: float,
    grace_s: float,
) -> LeasePlan:
    """The lease round for controller `me`.

    `holders` maps each district with a live lease to its owner; `members` counts live
    controllers (me included); `free_since[d]` is when `me` first saw candidate `d` free.
    """
    share = math.ceil(len(candidates) / max(1, members))
    mine = [d for d in candidates if holders.get(d) == me]
    free = [d for d in candidates if d not in holders]
    release: list[str] = []
    if len(mine) > share:
        release = mine[share:]
        mine = mine[:share]
    room = max(0, share - len(mine))
    take = free[:room]
    # Free for a whole lease time with nobody taking it: ours, whatever the share says.
    take += [d for d in free[room:] if now_s - free_since.get(d, now_s) >= grace_s]
    return LeasePlan(acquire=(*mine, *take), release=tuple(release))
