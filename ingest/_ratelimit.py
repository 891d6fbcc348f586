"""A per-device token bucket for ingest's receive path: a flooding lamp costs a dict lookup per
message, never a row, a queue slot or a database write.

The protocol's expected traffic per device (docs/protocol.md §4) is one telemetry a minute, a
birth and two states per connection, an ack per command and an event now and then (a blinker's
beacon sightings in a busy alley are the most: a few a second). The default bound (a sustained
``DEFAULT_RATE_PER_S`` with bursts of ``DEFAULT_BURST``) is two orders of magnitude above that,
so no working device ever meets it, and a flood of 50,000 messages in two seconds keeps ~100.

Per device means per topic prefix ``sl/v1/{d}/{id}``: the broker's ACL lets a device publish only
under its own prefix, so one stolen lamp fills one bucket. Memory is bounded by ``max_devices``
(beyond it the buckets start afresh, as ingest's seq tracker does).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Final

# Sustained messages per second one device may send (its expected rate is ~1 a minute).
DEFAULT_RATE_PER_S: Final = 5.0
# Messages one device may send at once: a reconnect (birth, state), a burst of acks for an SOS
# and a blinker's sightings fit many times over.
DEFAULT_BURST: Final = 100.0
# Seoul has ~16k devices; the bound is for topics a misconfigured broker might let through.
MAX_DEVICES: Final = 200_000


class DeviceRateLimiter:
    """``admit(topic)``: True while the topic's device is within its bucket, False over it.

    A device going over the bound starts a *flood episode*: its prefix is appended once to
    ``new_floods`` (for one maintenance alert), and the episode ends only when the bucket has
    filled up again (the device was quiet for ``burst / rate_per_s`` seconds), so a sustained
    flood is one episode, not one per refill. Called from paho's network thread only.
    """

    __slots__ = ("_buckets", "_burst", "_clock", "_max", "_rate", "limited", "new_floods")

    def __init__(
        self,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: float = DEFAULT_BURST,
        *,
        max_devices: int = MAX_DEVICES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError(f"rate_per_s must be > 0 and burst >= 1, got {rate_per_s}, {burst}")
        self._rate = rate_per_s
        self._burst = float(burst)
        self._max = max_devices
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # prefix -> [tokens, last time, flooding 0/1]
        self.limited = 0  # messages refused, ever
        # Prefixes that started an episode; appended by paho's thread, taken by the flusher
        # (deque append/popleft are atomic).
        self.new_floods: deque[str] = deque()

    def admit(self, topic: str) -> bool:
        """Take a token for the topic's device; False (counted) when it has none left."""
        key = topic[: topic.rfind("/")]
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max:
                self._buckets.clear()
            self._buckets[key] = [self._burst - 1.0, now, 0.0]
            return True
        tokens = bucket[0] + (now - bucket[1]) * self._rate
        bucket[1] = now
        if tokens >= self._burst:
            tokens = self._burst
            bucket[2] = 0.0  # quiet long enough: a later flood is a new episode
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True
        bucket[0] = tokens
        self.limited += 1
        if not bucket[2]:
            bucket[2] = 1.0
            self.new_floods.append(key)
        return False

    def take_new_floods(self) -> list[str]:
        """The prefixes that started a flood episode since the last call (any thread)."""
        floods = self.new_floods
        return [floods.popleft() for _ in range(len(floods))]

    def __len__(self) -> int:
        return len(self._buckets)
