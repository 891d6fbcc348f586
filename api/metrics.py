"""Prometheus metrics of one application instance (its own registry, so tests can build many)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Buckets for an API answering in milliseconds on one machine, up to a slow 5 s.
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics:
    """The counters and histograms the API exports at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streetlight_api_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "streetlight_api_request_seconds",
            "HTTP request duration",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.sos = Counter(
            "streetlight_api_sos", "SOS requests by outcome", ["outcome"], registry=self.registry
        )
        self.rate_limited = Counter(
            "streetlight_api_rate_limited",
            "requests refused by a rate limit",
            ["limit"],
            registry=self.registry,
        )
        self.login_failures = Counter(
            "streetlight_api_login_failures",
            "failed or refused operator logins by reason",
            ["reason"],
            registry=self.registry,
        )
        self.login_sprays = Counter(
            "streetlight_api_login_sprays",
            "addresses seen failing logins on many usernames (suspected password spray)",
            registry=self.registry,
        )
        self.sos_bursts = Counter(
            "streetlight_api_sos_suspected_bursts",
            "SOS alerts flagged as part of a burst from one source",
            registry=self.registry,
        )
        self.walk_positions = Counter(
            "streetlight_api_walk_positions", "walk positions accepted", registry=self.registry
        )
        self.stream_clients = Gauge(
            "streetlight_api_stream_clients", "connected console WebSockets", registry=self.registry
        )
        self.stream_messages = Counter(
            "streetlight_api_stream_messages", "messages pushed to consoles", registry=self.registry
        )
        self.stream_dropped = Counter(
            "streetlight_api_stream_overflows",
            "consoles disconnected because they fell behind",
            registry=self.registry,
        )
        self.sos_live_clients = Gauge(
            "streetlight_api_sos_live_clients",
            "connected residents' SOS live sockets (/v1/sos/{id}/live)",
            registry=self.registry,
        )
        self.stream_bad_notes = Counter(
            "streetlight_api_stream_bad_notes",
            "notifications the stream hub could not read (skipped)",
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (never the raw path: ids would
    make one series per alert)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], ApiMetrics | None]) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("route")
                name = getattr(route, "path", None) or "unmatched"
                method = str(scope.get("method", ""))
                metrics.requests.labels(name, method, str(status[0])).inc()
                metrics.latency.labels(name, method).observe(time.perf_counter() - start)
