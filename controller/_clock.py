"""The controller's clock: wall-clock epoch milliseconds, the protocol's time."""

from __future__ import annotations

import time


def now_ms() -> int:
    """Wall-clock epoch milliseconds (the protocol's time)."""
    return time.time_ns() // 1_000_000
