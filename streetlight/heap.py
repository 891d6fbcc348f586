"""The garbage collector in the long-running services: start-up objects out of every pass.

CPython's cyclic collector stops the process for a time that grows with the objects it walks. The
API has ~79,000 tracked objects once its modules are imported (FastAPI, pydantic, the routes),
and a full pass over them took ~32 ms on the 2-core test machine, more under load: the brighten
benchmark at 1,000 walkers saw full passes of 60-430 ms in the API and controller, each a stall
of every request and command in flight. Those objects live as long as the process, so once a
service has started (modules, gazetteer, lamp index, pools): one collection, then
``gc.freeze()`` moves them to the permanent generation, which no later pass walks (a full pass
over the API's start-up heap: 32 ms before, 0.002 ms after). The thresholds stay CPython's;
reference counting frees almost everything as before.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def settle(service: str) -> None:
    """Call once a service has loaded what it keeps for its lifetime (see the module docstring)."""
    gc.collect()
    gc.freeze()
    log.info("%s: %d start-up objects moved out of the collector's passes", service, gc.get_freeze_count())
