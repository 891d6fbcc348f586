"""A per-device token bucket for the services' receive paths (ingest, the controller): a flooding
lamp costs a dict lookup per message, never a row, a queue slot, a command or a database write.

The protocol's expected traffic per device (docs/protocol.md §4) is one telemetry a minute, a
birth and two states per connection, an ack per command and an event now and then (a blinker's
beacon sightings in a busy alley are the most frequent). The default bound (a sustained
``DEVICE_RATE_PER_S`` with bursts of ``DEVICE_BURST``) is two orders of magnitude above that,
so no working device ever meets it, and a flood of 50,000 messages in two seconds keeps ~110.

Per device means per topic prefix ``sl/v1/{d}/{id}``: the broker's ACL lets a device publish only
under its own prefix, so one stolen lamp fills one bucket. Memory is bounded by ``max_devices``
(beyond it the buckets start afresh, as ingest's seq tracker does); a device whose bucket is full
again is forgotten.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

# Sustained messages per second one device may send (its expected rate is ~1 a minute).
DEVICE_RATE_PER_S: Final = 5.0
# Messages one device may send at once: a reconnect (birth, state), a burst of acks for an SOS
# and a blinker's sightings fit many times over.
DEVICE_BURST: Final = 100.0
# Seoul has ~16k devices; the bound is for topics a misconfigured broker might let through.
MAX_DEVICES: Final = 200_000


class DeviceRateLimiter:
    """``admit(topic)``: True while the topic's device has tokens left, False (counted) when not.

    A token bucket split in two for speed: the receiving thread only counts what each device used
    (``admit``: a cached topic-to-device lookup, a dict update, no clock); the reading side
    (ingest's flusher, the controller's tick) calls ``refill(now)`` every few milliseconds, which
    gives every device back ``rate_per_s`` tokens a second and forgets a device whose bucket is
    full again (so only active devices take memory).
    A device going over the bound starts a *flood episode*: its prefix is appended once to
    ``new_floods`` (for one maintenance alert); the episode ends when its bucket has filled up again
    (the device was quiet for ``burst / rate_per_s`` seconds), so a sustained flood is one episode.
    The two threads touch one dict without a lock: a rare lost update gives one device a token
    more or less, never an error (CPython's dict operations are atomic under the GIL).
    """

    __slots__ = (
        "_burst",
        "_flooding",
        "_last",
        "_max",
        "_prefixes",
        "_rate",
        "_used",
        "limited",
        "new_floods",
    )

    def __init__(
        self,
        rate_per_s: float = DEVICE_RATE_PER_S,
        burst: float = DEVICE_BURST,
        *,
        max_devices: int = MAX_DEVICES,
        now: float | None = None,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_devices
        self._last = time.monotonic() if now is None else now
        self._used: dict[str, float] = {}  # prefix -> tokens used (burst - tokens left)
        # topic -> its device prefix: a lookup of the (fresh) topic string costs a third of
        # slicing it anew for every message (measured: ~100 against ~600 ns).
        self._prefixes: dict[str, str] = {}
        self._flooding: set[str] = set()
        self.limited = 0  # messages refused, ever
        # Prefixes that started an episode; appended by paho's thread, taken by the flusher
        # (deque append/popleft are atomic).
        self.new_floods: deque[str] = deque()

    def admit(self, topic: str) -> bool:
        """Take a token for the topic's device (``sl/v1/{d}/{id}``); False when it has none left."""
        key = self._prefixes.get(topic)
        if key is None:
            if len(self._prefixes) >= self._max:
                self._prefixes.clear()
            key = self._prefixes[topic] = topic[: topic.rfind("/")]
        used = self._used.get(key, 0.0) + 1.0
        if used <= self._burst:
            self._used[key] = used
            return True
        self.limited += 1
        if key not in self._flooding:
            self._flooding.add(key)
            self.new_floods.append(key)
        return False

    def refill(self, now: float) -> None:
        """Give every device the tokens earned since the last refill (the flusher, often)."""
        earned = (now - self._last) * self._rate
        if earned < 1.0:
            return  # not yet a whole token for anyone: wait, so the pass stays rare and cheap
        self._last = now
        used = self._used
        if len(used) > self._max:
            used.clear()  # bounded memory: every device starts afresh
            self._flooding.clear()
            return
        for key, n in used.copy().items():
            left = n - earned
            if left > 0.0:
                used[key] = left
            else:
                used.pop(key, None)
                self._flooding.discard(key)  # quiet long enough: a later flood is a new episode

    def take_new_floods(self) -> list[str]:
        """The prefixes that started a flood episode since the last call (any thread)."""
        floods = self.new_floods
        return [floods.popleft() for _ in range(len(floods))]

    def __len__(self) -> int:
        return len(self._used)
