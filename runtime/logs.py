"""The one logging set-up of every process: structlog events through the standard library.

Conventions (for every module):

* ``log = get_logger(__name__)`` at module level; the logger is a structlog bound logger writing
  to the stdlib logger of that name, so levels, ``caplog`` and third-party handlers work as usual.
* The event is a snake_case name, a fact that happened, not a sentence:
  ``log.warning("command_not_published", cmd_id=cmd.id, error=str(exc))``. No context pasted into
  the event, no %-formatting: every value is a key.
* Context keys, the same everywhere so an operator can filter on them: ``device=`` (device id),
  ``district=``, ``alert=`` (alert id), ``walk=`` (walk id), ``worker=`` (ingest worker index),
  ``cmd_id=``, ``client_id=`` (MQTT client id), ``topic=``, ``count=``, ``error=str(exc)`` (the
  message of the exception; ``log.exception(...)`` adds the traceback).
* Context that holds for a whole task (the worker a loop serves, the walk a handler follows) is
  bound once, not repeated: ``bind_context(worker=3)`` at the top of the task, or
  ``with bound_context(walk=walk_id): ...`` for a block. The context lives in ``contextvars``:
  each asyncio task starts with a copy of its creator's, so what one task binds never shows in
  another; a thread starts empty.

Output (``configure``): one line per event on stderr, either human-readable (structlog's console
renderer, colours only on a terminal) or one JSON object per line with ``timestamp``, ``level``,
``logger``, ``event`` and the keys; ``fmt=None`` picks the console on a terminal and JSON
otherwise (``STREETLIGHT_LOG_FORMAT`` in the settings forces one). Records of stdlib loggers
(uvicorn, paho, psycopg, amqtt, the ``logging`` calls not converted yet) come out in the same
format, with the bound context too.

No credential in a line: every event and every stdlib record (message, keys, traceback) goes
through ``redact`` on its way out: bearer tokens, ``Authorization``/``Cookie``/
``Sec-WebSocket-Protocol`` values, ``"token"``/``password`` fields, the password of a URL and the
secret part of an ingest share group (``$share/ingest-SECRET/``) are replaced; values of keys
named like a secret (``password``, ``token``, ``secret``, ...) too. The API additionally rewrites
its server loggers' arguments (``api/logredact.py``) before any handler sees them.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import logging.config
import re
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TextIO, cast

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "FORMATS",
    "FORMAT_ENV",
    "REDACTED",
    "bind_context",
    "bound_context",
    "clear_context",
    "configure",
    "dict_config",
    "get_logger",
    "handler",
    "redact",
    "unbind_context",
]

Format = Literal["console", "json"]
FORMATS: Final[tuple[Format, ...]] = ("console", "json")
FORMAT_ENV: Final = "STREETLIGHT_LOG_FORMAT"
REDACTED: Final = "[redacted]"

# -- redaction --------------------------------------------------------------------------------------

_SECRET_KEYS: Final = frozenset(
    {
        "password",
        "passwd",
        "token",
        "secret",
        "authorization",
        "cookie",
        "set-cookie",
        "api_key",
        "phone_keys",
        "phone",
        "phone_number",
    }
)
_SECRET_KEY_SUFFIXES: Final = ("_password", "_token", "_secret", "_keys", "_phone")
# (pattern, replacement) applied to every string on its way out, in this order.
_PATTERNS: Final = (
    # A header line or field: "Authorization: Bearer x", "< Sec-WebSocket-Protocol: a, bearer.x".
    (
        re.compile(
            r"(?i)\b(authorization|cookie|set-cookie|sec-websocket-protocol)(['\"]?\s*[:=]\s*)[^\r\n]+"
        ),
        rf"\1\2{REDACTED}",
    ),
    # A bearer token anywhere: "Bearer abc", the WebSocket subprotocol "bearer.abc".
    (re.compile(r"(?i)\b(bearer[ .])[^\s,;'\"]+"), rf"\1{REDACTED}"),
    # A JSON or repr field: {"token": "abc"}, 'password': 'x'.
    (
        re.compile(r"""(?i)(["'](?:token|password|secret)["']\s*:\s*)(["'])(?:(?!\2).)*\2"""),
        rf'\1"{REDACTED}"',
    ),
    # The phone keys setting: STREETLIGHT_PHONE_KEYS=k1:base64... (an error message, a dumped environment).
    (re.compile(r"(?i)(phone_keys['\"]?\s*[:=]\s*['\"]?)[^\s'\"]+"), rf"\1{REDACTED}"),
    # libpq keywords: "password=x".
    (re.compile(r"(?i)\b(password=)[^\s&]+"), r"\1***"),
    # The password of a URL: mqtt://user:pass@host, postgresql://user:pass@host.
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@"), r"\1***@"),
    # The secret part of a share group: $share/ingest-SECRET/... (ingest.redact_group).
    (re.compile(r"(\$share/[^/\s-]*-)[^/\s]+"), r"\1…"),
)
# Cheap test before the patterns: a string with none of these (lower-cased) holds no credential.
_MARKS: Final = (
    "authorization",
    "cookie",
    "sec-websocket-protocol",
    "bearer",
    "token",
    "password",
    "secret",
    "://",
    "$share/",
    "phone_keys",
)


def _secret_key(key: str) -> bool:
    k = key.lower()
    return k in _SECRET_KEYS or k.endswith(_SECRET_KEY_SUFFIXES)


def _redact_text(text: str) -> str:
    lowered = text.lower()
    if not any(mark in lowered for mark in _MARKS):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return _redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED if _secret_key(str(k)) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_value(v) for v in value]
    return _redact_text(str(value))


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: the event dict with every credential replaced (see the module's docstring)."""
    for key, value in event_dict.items():
        if key.startswith("_") or key == "exc_info":
            continue  # structlog's own (the record, the logger) and the traceback still unformatted
        event_dict[key] = REDACTED if _secret_key(key) else _redact_value(value)
    return event_dict


# -- the chain of a structlog logger ---------------------------------------------------------------


# Keys a stdlib record holds on its own (and the event, first in ``str(_Event)``).
_RECORD_KEYS: Final = frozenset({"event", "level", "logger", "timestamp", "exc_info"})
_STRUCTLOG_DIR: Final = str(Path(structlog.__file__).parent)


def _stacklevel() -> int:
    """The ``stacklevel`` that makes the record's file, line and function the caller's of
    ``log.info(...)``, not structlog's: one more per structlog frame between them."""
    frame = sys._getframe(3)  # the structlog frame that calls the stdlib logger's method
    level = 1
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_STRUCTLOG_DIR):
        frame = frame.f_back
        level += 1
    return level


class _Event(dict[str, Any]):
    """The event dict as a stdlib record's ``msg``: a dict for the formatter (and for tests reading
    ``record.msg["count"]``), ``event key=value ...`` for a plain formatter or ``getMessage()``."""

    def __str__(self) -> str:
        rest = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
            for k, v in self.items()
            if k not in _RECORD_KEYS
        )
        return f"{self.get('event', '')} {rest}".rstrip()


def _to_stdlib(
    logger: WrappedLogger, method: str, event_dict: EventDict
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Last processor: hand the event to the stdlib logger (as ``wrap_for_formatter``), with the
    exception as the record's ``exc_info`` so plain handlers show it too."""
    kwargs: dict[str, Any] = {"extra": {"_logger": logger, "_name": method}, "stacklevel": _stacklevel()}
    exc_info = event_dict.get("exc_info")
    if exc_info:
        if exc_info is True:
            exc_info = sys.exc_info()
        elif isinstance(exc_info, BaseException):
            exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
        if isinstance(exc_info, tuple) and exc_info[0] is not None:
            event_dict["exc_info"] = exc_info
            kwargs["exc_info"] = exc_info
        else:
            del event_dict["exc_info"]
    return (_Event(event_dict),), kwargs


def _timestamp(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """ISO 8601 in UTC, to the millisecond; a stdlib record's own time (formatting may come later)."""
    record = event_dict.get("_record")
    created = record.created if isinstance(record, logging.LogRecord) else time.time()
    stamp = datetime.datetime.fromtimestamp(created, datetime.UTC).isoformat(timespec="milliseconds")
    event_dict["timestamp"] = stamp.replace("+00:00", "Z")
    return event_dict


# Shared by structlog events (at the call) and stdlib records (in the formatter).
_COMMON: Final[list[Processor]] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    _timestamp,
]
_CHAIN: Final[list[Processor]] = [
    structlog.stdlib.filter_by_level,  # nothing computed for a level that is off
    *_COMMON,
    structlog.stdlib.PositionalArgumentsFormatter(),  # tolerated, not the convention
    structlog.processors.StackInfoRenderer(),
    redact,
    _to_stdlib,
]


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger writing to the stdlib logger ``name`` (works before ``configure`` too)."""
    return cast(
        structlog.stdlib.BoundLogger,
        structlog.wrap_logger(
            logging.getLogger(name), processors=_CHAIN, wrapper_class=structlog.stdlib.BoundLogger
        ),
    )


# -- context of a task ------------------------------------------------------------------------------


def bind_context(**values: Any) -> None:
    """Add keys to every event of this task (asyncio task, thread) from now on."""
    structlog.contextvars.bind_contextvars(**values)


def unbind_context(*keys: str) -> None:
    """Remove keys bound with ``bind_context`` in this task."""
    structlog.contextvars.unbind_contextvars(*keys)


def clear_context() -> None:
    """Remove every key bound in this task."""
    structlog.contextvars.clear_contextvars()


@contextlib.contextmanager
def bound_context(**values: Any) -> Iterator[None]:
    """Add keys to every event logged inside the block; the previous values come back after it."""
    with structlog.contextvars.bound_contextvars(**values):
        yield


# -- output ------------------------------------------------------------------------------------------


def _drop_uvicorn_colour(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("color_message", None)  # uvicorn's coloured copy of the message, an `extra`
    return event_dict


def _json_order(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """timestamp, level, logger, event first: a line reads left to right like the console's."""
    head = {k: event_dict.pop(k) for k in ("timestamp", "level", "logger", "event") if k in event_dict}
    return {**head, **event_dict}


def _formatter(fmt: Format) -> logging.Formatter:
    renderer: list[Processor]
    if fmt == "json":
        renderer = [
            structlog.processors.format_exc_info,
            redact,
            _json_order,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ]
    else:
        colours = sys.stderr.isatty()
        renderer = [
            structlog.processors.format_exc_info,  # a string, so it goes through redact
            redact,
            structlog.dev.ConsoleRenderer(colors=colours, sort_keys=False, pad_event_to=28),
        ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_COMMON, structlog.stdlib.ExtraAdder(), _drop_uvicorn_colour],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *renderer],
    )


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is at the time (as logging's last resort does), so a
    replaced stderr (a test's capture, a daemon's redirection) gets the lines."""

    def __init__(self, level: int = logging.NOTSET) -> None:
        logging.Handler.__init__(self, level)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _resolve(fmt: str | None) -> Format:
    if fmt is None or fmt.strip().lower() in ("", "auto"):
        return "console" if sys.stderr.isatty() else "json"
    wanted = fmt.strip().lower()
    if wanted not in FORMATS:
        raise ValueError(
            f"log format must be one of {', '.join(FORMATS)} (or empty for automatic), not {fmt!r}"
        )
    return wanted


def handler(fmt: str | None = None) -> logging.Handler:
    """The stderr handler with the structlog formatter of ``fmt`` (see ``configure``)."""
    h = _StderrHandler()
    h.setFormatter(_formatter(_resolve(fmt)))
    return h


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    """Set up logging for this process: ``fmt`` is ``"console"``, ``"json"`` or None (console on a
    terminal, JSON otherwise).

    Puts one stderr handler on the root logger at ``level``. Idempotent: a second call replaces the
    handler of the first (and a ``logging.basicConfig`` stream handler), so each event is one line.
    Other handlers (pytest's capture, a file handler someone added) stay.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, _StderrHandler) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler(fmt))
    root.setLevel(level.upper())


def dict_config(level: str = "INFO", fmt: str | None = None) -> dict[str, Any]:
    """``configure`` as a ``logging.config.dictConfig`` dict, for servers that take one and apply
    it in each worker process (uvicorn's ``log_config=``): the root handler of ``configure``, and
    uvicorn's own loggers without handlers of their own, propagating to it."""
    resolved = _resolve(fmt)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"default": {"()": f"{__name__}.handler", "fmt": resolved}},
        "root": {"handlers": ["default"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
