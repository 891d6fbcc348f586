"""The telephony adapter: how the console's "call via the centre's PBX" reaches a telephone system.

`Telephony` is the interface (place a call to a number, learn later whether it was answered);
`AsteriskAmi` implements it over the Asterisk Manager Interface (AMI, TCP, ``key: value`` lines,
a blank line ends a message): ``Login``, then ``Originate`` with ``Async: true`` (the answer says
the call is queued), then the ``OriginateResponse`` event with the same ``ActionID`` says how it
ended (``Reason: 4``: answered; 3: rang out; 5: busy; 8: congestion; 0/1: failed or hung up).
The resident's leg is ``channel`` (e.g. ``PJSIP/{number}@carrier``); once answered, Asterisk
connects it to ``context``/``exten`` (e.g. the centre's operators' queue, ``{district}``).
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from dataclasses import dataclass, field
from typing import Protocol

from alerts import CallOutcome
from runtime.logs import get_logger

log = get_logger(__name__)


class TelephonyError(Exception):
    """The telephone system could not be reached or refused the call; the message says which."""


class PlacedCall(Protocol):
    """A call the telephone system accepted; its outcome comes later."""

    @property
    def call_id(self) -> str:
        """The telephone system's id of the call (AMI: the ActionID)."""
        ...

    def wait_outcome(self, timeout_s: float) -> CallOutcome:
        """Block until the call is answered or not (``ANSWERED`` / ``NO_ANSWER``; a timeout, a
        lost connection or a failure is ``NO_ANSWER``)."""
        ...


class Telephony(Protocol):
    """A centre's telephone system, as the API uses it."""

    def place_call(self, number: str, *, alert_id: str, district: str, operator: str) -> PlacedCall:
        """Ring ``number`` (E.164) and connect it to the centre's operators once answered;
        TelephonyError when the system cannot be reached or refuses."""
        ...


@dataclass(frozen=True, slots=True)
class AmiConfig:
    """Where the centre's Asterisk listens (``STREETLIGHT_PBX_AMI_URL``) and how to originate."""

    host: str
    port: int = 5038
    username: str = "streetlight"
    secret: str = field(default="", repr=False)
    channel: str = "PJSIP/{number}@carrier"  # the resident's leg; {number} is E.164 without '+'
    context: str = "streetlight-callback"
    exten: str = "{district}"  # where the answered call goes (placeholders {district}, {operator})
    priority: int = 1
    caller_id: str = "Streetlight <112>"
    ring_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0


_ANSWERED_REASON = "4"
_ids = itertools.count(1)


def _message(fields: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in fields).encode("utf-8") + b"\r\n"


def _safe(value: str) -> str:
    if "\r" in value or "\n" in value:
        raise TelephonyError("an AMI field may not hold a line break")
    return value


class _AmiConnection:
    """One AMI session: messages read as dicts (keys lower-cased)."""

    def __init__(self, config: AmiConfig) -> None:
        self._config = config
        try:
            self._sock = socket.create_connection(
                (config.host, config.port), timeout=config.connect_timeout_s
            )
        except OSError as exc:
            raise TelephonyError(f"PBX at {config.host}:{config.port} unreachable: {exc}") from None
        self._buf = b""
        banner = self._line()
        if not banner.startswith("Asterisk Call Manager"):
            self.close()
            raise TelephonyError(f"PBX at {config.host}:{config.port} does not speak AMI")

    def _line(self) -> str:
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise TelephonyError("PBX closed the AMI connection")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def send(self, fields: list[tuple[str, str]]) -> None:
        self._sock.sendall(_message([(k, _safe(v)) for k, v in fields]))

    def read(self) -> dict[str, str]:
        msg: dict[str, str] = {}
        while True:
            line = self._line()
            if not line:
                if msg:
                    return msg
                continue
            key, _, value = line.partition(":")
            msg[key.strip().lower()] = value.strip()

    def response(self, action_id: str) -> dict[str, str]:
        while True:
            msg = self.read()
            if "response" in msg and msg.get("actionid") == action_id and "event" not in msg:
                return msg

    def settimeout(self, timeout_s: float | None) -> None:
        self._sock.settimeout(timeout_s)

    def close(self) -> None:
        with contextlib.suppress(OSError, TelephonyError):
            self.send([("Action", "Logoff"), ("ActionID", "logoff")])
        self._sock.close()


class _AmiCall:
    def __init__(self, conn: _AmiConnection, action_id: str) -> None:
        self._conn, self._id = conn, action_id
        self._done = threading.Lock()

    @property
    def call_id(self) -> str:
        return self._id

    def wait_outcome(self, timeout_s: float) -> CallOutcome:
        with self._done:
            try:
                self._conn.settimeout(timeout_s)
                while True:
                    msg = self._conn.read()
                    if (
                        msg.get("event", "").lower() == "originateresponse"
                        and msg.get("actionid") == self._id
                    ):
                        answered = msg.get("response", "").lower() == "success" and (
                            msg.get("reason", _ANSWERED_REASON) == _ANSWERED_REASON
                        )
                        log.info(
                            "pbx_call_ended", call_id=self._id, answered=answered, reason=msg.get("reason")
                        )
                        return CallOutcome.ANSWERED if answered else CallOutcome.NO_ANSWER
            except (OSError, TelephonyError) as exc:
                log.warning("pbx_call_outcome_lost", call_id=self._id, error=str(exc))
                return CallOutcome.NO_ANSWER
            finally:
                self._conn.close()


class AsteriskAmi:
    """`Telephony` over Asterisk's manager interface (one AMI session per call)."""

    def __init__(self, config: AmiConfig) -> None:
        self.config = config

    def place_call(self, number: str, *, alert_id: str, district: str, operator: str) -> PlacedCall:
        """Log in, send ``Originate`` (async) and wait for "queued"; TelephonyError otherwise."""
        c = self.config
        conn = _AmiConnection(c)
        try:
            conn.send(
                [("Action", "Login"), ("ActionID", "login"), ("Username", c.username), ("Secret", c.secret)]
            )
            login = conn.response("login")
            if login.get("response", "").lower() != "success":
                raise TelephonyError(f"PBX refused the AMI login: {login.get('message', '')}")
            action_id = f"sl-{alert_id}-{next(_ids)}"
            names = {"number": number.lstrip("+"), "district": district, "operator": operator}
            conn.send(
                [
                    ("Action", "Originate"),
                    ("ActionID", action_id),
                    ("Channel", c.channel.format(**names)),
                    ("Context", c.context.format(**names)),
                    ("Exten", c.exten.format(**names)),
                    ("Priority", str(c.priority)),
                    ("Timeout", str(int(c.ring_timeout_s * 1000))),
                    ("CallerID", c.caller_id),
                    ("Async", "true"),
                    ("Variable", f"STREETLIGHT_ALERT={alert_id}"),
                ]
            )
            queued = conn.response(action_id)
            if queued.get("response", "").lower() != "success":
                raise TelephonyError(f"PBX refused the call: {queued.get('message', '')}")
        except (OSError, TelephonyError) as exc:
            conn.close()
            if isinstance(exc, TelephonyError):
                raise
            raise TelephonyError(f"PBX connection failed: {exc}") from None
        log.info("pbx_call_placed", call_id=action_id, alert_id=alert_id)
        return _AmiCall(conn, action_id)
