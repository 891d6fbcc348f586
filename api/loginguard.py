"""Password guessing: slowed per address and per username, without locking the real operator out.

Failed logins are counted (in the process, like every rate limit of the API) per source address and
per username, each over `window_s`:

- an address over its failures is refused whatever username it tries, except a username that
  logged in from it before: a guess or a spray from one place is slowed to `per_address` failures
  per window, while the control centre's operators behind the same (NAT) address still get in with
  their right password (a wrong one there is refused as before);
- addresses are counted by `api.state.address_key` (an IPv6 address by its /64);
- a username over its failures is refused from every address the operator has never logged in
  from successfully; from a place they used before (`store.operators.is_login_place`) the password is
  still checked, so an attacker elsewhere who exhausts the username's budget cannot lock the
  on-duty operator out of their own control centre;
- an address failing on `spray_usernames` different usernames within the window is a suspected
  password spray: reported once per window (the caller audits it and counts it).

The answer to a refused attempt (429) never depends on whether the username exists.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum

from api.ratelimit import RateLimiter


class Throttle(Enum):
    """Why a login attempt is refused before its password is checked."""

    ADDRESS = "address"
    USERNAME = "username"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A refused attempt: why, and for how long (seconds)."""

    throttle: Throttle
    wait_s: float


class LoginGuard:
    """The failure counters of one API instance (see the module docstring)."""

    def __init__(self, *, per_username: int, per_address: int, window_s: float, spray_usernames: int) -> None:
        self.window_s = window_s
        self.spray_usernames = spray_usernames
        self._by_user = RateLimiter(per_username, window_s)
        self._by_address = RateLimiter(per_address, window_s)
        self._tried: dict[str, dict[str, float]] = {}  # address -> username -> last failure
        self._reported: dict[str, float] = {}  # "kind:key" -> when last reported
        self._lock = threading.Lock()

    def address_refusal(self, address: str, now: float) -> Refusal | None:
        """A refusal when `address` is over its failures."""
        wait = self._by_address.wait(address, now)
        return Refusal(Throttle.ADDRESS, wait) if wait else None

    def username_refusal(self, username: str, now: float) -> Refusal | None:
        """A refusal when `username` is over its failures (the caller lets a known place through)."""
        wait = self._by_user.wait(username, now)
        return Refusal(Throttle.USERNAME, wait) if wait else None

    def failed(self, username: str, address: str, now: float) -> bool:
        """Count a failed login; True the first time in a window that `address` looks like a spray."""
        self._by_user.hit(username, now)
        self._by_address.hit(address, now)
        with self._lock:
            tried = self._tried.setdefault(address, {})
            tried[username] = now
            for name in [n for n, at in tried.items() if at <= now - self.window_s]:
                del tried[name]
            if len(self._tried) > 100_000:  # bound on memory: forget idle addresses
                for addr in [
                    a for a, t in self._tried.items() if not t or max(t.values()) <= now - self.window_s
                ]:
                    del self._tried[addr]
            return len(tried) >= self.spray_usernames and self._first_report(f"spray:{address}", now)

    def first_report(self, key: str, now: float) -> bool:
        """True at most once per window per key: what deserves one audit row, not one per attempt."""
        with self._lock:
            return self._first_report(key, now)

    def _first_report(self, key: str, now: float) -> bool:
        last = self._reported.get(key)
        if last is not None and last > now - self.window_s:
            return False
        if len(self._reported) > 100_000:
            self._reported = {k: t for k, t in self._reported.items() if t > now - self.window_s}
        self._reported[key] = now
        return True
