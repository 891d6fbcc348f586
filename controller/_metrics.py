"""Prometheus text exposition of a controller's counters, served by ``runtime.status``."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from http.server import ThreadingHTTPServer
from typing import Protocol

from runtime.status import check, serve_status


class Observable(Protocol):
    """What the exposition reads from a running controller (its own counters and leases)."""

    stats: Counter[str]
    reasons: Counter[str]
    owned: set[str]


def _name(key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


def exposition(c: Observable, owner: str) -> str:
    """The controller's state in the Prometheus text format (version 0.0.4)."""
    label = f'owner="{owner}"'
    lines = [
        "# HELP streetlight_controller_districts_owned district leases this controller holds",
        "# TYPE streetlight_controller_districts_owned gauge",
        f"streetlight_controller_districts_owned{{{label}}} {len(c.owned)}",
        "# HELP streetlight_controller_events_total commands, publications, refusals and failures by kind",
        "# TYPE streetlight_controller_events_total counter",
    ]
    stats: Iterable[tuple[str, int]] = sorted(dict(c.stats).items())  # a copy: the loop keeps counting
    lines += [f'streetlight_controller_events_total{{{label},kind="{_name(k)}"}} {v}' for k, v in stats]
    lines += [
        "# HELP streetlight_controller_refused_total positions and messages refused, by reason",
        "# TYPE streetlight_controller_refused_total counter",
    ]
    reasons = sorted(dict(c.reasons).items())
    lines += [
        f'streetlight_controller_refused_total{{{label},reason="{_name(k)[:60]}"}} {v}' for k, v in reasons
    ]
    return "\n".join(lines) + "\n"


def serve_metrics(c: Observable, owner: str, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` and ``/health`` (200 while it holds at least one district) in a thread."""
    return serve_status(
        {
            "/metrics": lambda: (200, exposition(c, owner)),
            "/health": lambda: check(bool(c.owned), "ok", "no district leased"),
        },
        host,
        port,
        name="controller-metrics",
    )
