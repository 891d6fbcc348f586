"""A tiny HTTP server for a service's ``/metrics`` (Prometheus text) and health checks.

Each route maps a path prefix to a function returning (status, body); it runs in a daemon
thread so services on any concurrency model (threads, asyncio) can use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Route = Callable[[], tuple[int, str]]
PROMETHEUS_TEXT = "text/plain; version=0.0.4"


def check(ok: bool, good: str, bad: str) -> tuple[int, str]:
    """A health answer: 200 with `good`, or 503 with `bad`."""
    return (200, good + "\n") if ok else (503, bad + "\n")


def serve_status(routes: Mapping[str, Route], host: str, port: int, *, name: str) -> ThreadingHTTPServer:
    """Serve `routes` (path prefix -> handler) on host:port in a daemon thread named `name`."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            route = next((fn for prefix, fn in routes.items() if self.path.startswith(prefix)), None)
            status, text = route() if route is not None else (404, "not found\n")
            body = text.encode()
            self.send_response(status)
            self.send_header(
                "Content-Type", PROMETHEUS_TEXT if self.path.startswith("/metrics") else "text/plain"
            )
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server
