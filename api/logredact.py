"""No credential in a log line, at any level.

The API's tokens travel in headers (``Authorization``, the WebSocket subprotocol ``bearer.<token>``)
or, on the walkers' socket, in the first message; never in a URL, so the access log holds none. At
DEBUG, though, the WebSocket library logs every handshake header and every frame: this filter,
installed on the server's loggers when the application starts, replaces those values.
"""

from __future__ import annotations

import logging

from runtime.logs import REDACTED

_SECRET_HEADERS = frozenset({"authorization", "sec-websocket-protocol", "cookie", "set-cookie"})
_SECRET_MARKS = ("bearer.", '"token"', "Bearer ")
# uvicorn's websockets-sansio protocol logs on "uvicorn.error"; the library's own servers log on these.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access", "websockets.server", "websockets.protocol")


class RedactCredentials(logging.Filter):
    """Rewrites a record's arguments that carry a credential; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            if (
                len(args) == 2
                and isinstance(args[0], str)
                and args[0].lower() in _SECRET_HEADERS
                and record.msg in ("< %s: %s", "> %s: %s")
            ):
                record.args = (args[0], REDACTED)
            elif any(mark in str(a) for a in args for mark in _SECRET_MARKS):
                record.args = tuple(REDACTED if any(m in str(a) for m in _SECRET_MARKS) else a for a in args)
        return True


def install() -> None:
    """Add the filter to the server's loggers (once)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactCredentials) for f in logger.filters):
            logger.addFilter(RedactCredentials())
