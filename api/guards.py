"""The HTTP boundary's checks, as one ASGI middleware in front of every route and the console:

- a NUL byte in the path or the query string (PostgreSQL text cannot hold one) is a 400 before
  any route runs (a WebSocket handshake is refused);
- a request body larger than `max_body_bytes` is a 413: by its Content-Length before anything is
  read, and, for a body without one (chunked), as soon as what was read passes the bound;
- every HTTP answer carries the security headers: a Content-Security-Policy that forbids framing
  (the console's one-key actions cannot be clickjacked) and loads only the console's own files
  (and the images of the configured tile server, `MapTiles.origin`),
  ``X-Content-Type-Options: nosniff`` and ``Referrer-Policy: no-referrer``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# The console (api/static) has no inline script or style and talks only to its own origin; its
# map's tiles come from the tile server when one is configured (`console_csp`).
CONSOLE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def console_csp(tile_origin: str | None) -> str:
    """The console's policy, with the tile server's origin allowed for images when there is one."""
    if not tile_origin:
        return CONSOLE_CSP
    return CONSOLE_CSP.replace("img-src 'self' data:;", f"img-src 'self' data: {tile_origin};")


# FastAPI's interactive docs load Swagger UI / ReDoc from a CDN with an inline bootstrap script.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    "https://cdn.redoc.ly; worker-src blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")


class BodyTooLarge(HTTPException):
    """A streamed body passed the bound while it was being read: 413. An HTTPException, because
    FastAPI turns any other error raised while it reads a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than {limit} bytes", {"Connection": "close"})


def _headers(path: str, console: str = CONSOLE_CSP) -> list[tuple[bytes, bytes]]:
    csp = DOCS_CSP if path.startswith(_DOCS_PATHS) else console
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),  # for browsers older than CSP frame-ancestors
    ]


def _has_nul(scope: Scope) -> bool:
    query = bytes(scope.get("query_string", b"")).lower()
    raw_path = bytes(scope.get("raw_path") or b"").lower()
    return "\x00" in str(scope.get("path", "")) or b"%00" in query or b"\x00" in query or b"%00" in raw_path


async def _answer(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BoundaryMiddleware:
    """NUL bytes, body size and security headers (see the module docstring)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, tile_origin: str | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.console_csp = console_csp(tile_origin)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            if _has_nul(scope):
                await send({"type": "websocket.close", "code": 1008, "reason": "NUL byte in the URL"})
                return
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _headers(str(scope.get("path", "")), self.console_csp)
        if _has_nul(scope):
            await _answer(send, 400, "a NUL byte (%00) in the path or the query is not a valid value", extra)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        limit = self.max_body_bytes
        too_large = f"request body larger than {limit} bytes"
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await _answer(send, 400, "Content-Length is not a number", extra)
                return
            if declared > limit:
                await _answer(send, 413, too_large, [*extra, (b"connection", b"close")])
                return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = [
                    *message.get("headers", []),
                    *(h for h in extra if h[0] not in present),
                ]
            await send(message)

        try:
            await self.app(scope, bounded_receive, with_headers)
        except BodyTooLarge:
            if not started:
                await _answer(send, 413, too_large, [*extra, (b"connection", b"close")])
