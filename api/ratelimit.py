"""Sliding-window rate limits kept in the process (one API instance's view).

A limit per key (a walk, a resident, a username): at most `limit` hits in any `window_s`. With
several API instances behind a balancer each enforces its own share; the limits protect the
database and the controller from one misbehaving app, not a budget to the exact request.
"""

from __future__ import annotations

import math
import threading
from collections import deque


class RateLimiter:
    """At most `limit` hits per `window_s` per key; `hit` says how long to wait when refused."""

    def __init__(self, limit: int, window_s: float, *, max_keys: int = 100_000) -> None:
        if limit < 1 or window_s <= 0:
            raise ValueError(f"rate limit needs limit >= 1 and window_s > 0, got {limit}, {window_s}")
        self.limit = limit
        self.window_s = window_s
        # Bound on memory: idle keys are forgotten first, then the oldest under their limit; a key at
        # its limit is never forgotten (a locked username stays locked whatever else is tried), so
        # past the bound the table holds at most one key per `limit` hits of the window.
        self._max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str, now: float) -> float:
        """Record a hit at `now` (monotonic seconds) and return 0.0, or refuse it (not recorded) and
        return the seconds until a hit would be allowed again."""
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= self._max_keys:
                    self._forget_idle(now)
                hits = self._hits[key] = deque()
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(hits[0] + self.window_s - now, 1e-3)
            hits.append(now)
            return 0.0

    def wait(self, key: str, now: float) -> float:
        """Like `hit` without recording anything: 0.0 when a hit would be allowed, else the wait."""
        with self._lock:
            hits = self._hits.get(key)
            if not hits:
                return 0.0
            while hits and hits[0] <= now - self.window_s:
                hits.popleft()
            if len(hits) >= self.limit:
                return max(hits[0] + self.window_s - now, 1e-3)
            return 0.0

    def _forget_idle(self, now: float) -> None:
        idle = [k for k, h in self._hits.items() if not h or h[-1] <= now - self.window_s]
        for k in idle:
            del self._hits[k]
        excess = len(self._hits) - self._max_keys + 1
        if excess > 0:
            under = [k for k, h in self._hits.items() if len(h) < self.limit][:excess]
            for k in under:
                del self._hits[k]


def retry_after_header(wait_s: float) -> str:
    """The Retry-After value: whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3)."""
    return str(max(1, math.ceil(wait_s)))
