"""Process settings for the long-running services that answer people: short pauses, fast hand-offs.

Two CPython defaults add milliseconds to a walk command or an SOS under load:

* The cyclic garbage collector stops the process for a time that grows with the objects it
  walks. The API has ~79,000 tracked objects once its modules are imported (FastAPI, pydantic,
  the routes); a full pass over them took ~32 ms on the 2-core test machine, and the brighten
  benchmark at 1,000 walkers saw full passes of 60-430 ms in the API and the controller, each a
  stall of every request and command in flight. Those objects live as long as the process, so
  once a service has started: one collection, then ``gc.freeze()`` moves them to the permanent
  generation, which no later pass walks (the API's start-up heap: 32 ms before, 0.002 ms after).
  The thresholds stay CPython's; reference counting frees almost everything as before.
* A thread that wants the GIL waits up to the switch interval (5 ms) while another runs Python
  code. The services run their event loop beside worker threads (the controller's database
  writer, the API's thread pool for plain endpoints); at 1 ms the loop gets the interpreter back
  sooner when it wakes up for a position or an ack, for slightly more switching.
"""

from __future__ import annotations

import gc
import sys

from runtime.logs import get_logger

log = get_logger(__name__)

SWITCH_INTERVAL_S = 0.001


def settle(service: str) -> None:
    """Call once a service has loaded what it keeps for its lifetime (see the module docstring)."""
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    log.info(
        "heap_frozen", service=service, objects=gc.get_freeze_count(), switch_interval_s=SWITCH_INTERVAL_S
    )
