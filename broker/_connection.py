"""Connection parameters from MQTT URLs (one broker or a list of them), reconnect backoff, and what
a broker kind can do."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, NamedTuple
from urllib.parse import unquote, urlsplit

from broker._errors import MqttUrlError

DEFAULT_PORTS: Final = {"mqtt": 1883, "mqtts": 8883}  # IANA registrations for MQTT and MQTT over TLS
BACKOFF_BASE_S: Final = 1.0
BACKOFF_CAP_S: Final = 60.0
# STYLE.md / aiomqtt's recipe: the exponent stops growing after 10 attempts (1.5 ** 10 ≈ 58).
BACKOFF_MAX_EXPONENT: Final = 10


class BrokerAddress(NamedTuple):
    """One broker node: host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ConnectionParams:
    """Where and how to connect: from ``mqtt://user:pass@host:port`` or ``mqtts://...`` (TLS).

    ``host``/``port`` is the first broker to try; ``fallbacks`` the other nodes of a cluster (from
    a comma-separated list of URLs), tried in order when the current one is unreachable or dies.
    """

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    fallbacks: tuple[BrokerAddress, ...] = ()

    @property
    def addresses(self) -> tuple[BrokerAddress, ...]:
        """Every broker to try, the first one first."""
        return (BrokerAddress(self.host, self.port), *self.fallbacks)

    def starting_at(self, index: int) -> ConnectionParams:
        """The same brokers, ``addresses[index % n]`` first and the rest after it in ring order
        (a client's home node first, the others as its fallbacks)."""
        ring = self.addresses
        i = index % len(ring)
        first, *rest = ring[i:] + ring[:i]
        return replace(self, host=first.host, port=first.port, fallbacks=tuple(rest))

    def __repr__(self) -> str:
        secret = ", password=***" if self.password is not None else ""
        more = f", fallbacks={[str(a) for a in self.fallbacks]}" if self.fallbacks else ""
        return (
            f"ConnectionParams(host={self.host!r}, port={self.port}, "
            f"username={self.username!r}{secret}, tls={self.tls}{more})"
        )


def next_address(addresses: tuple[BrokerAddress, ...], current: BrokerAddress) -> BrokerAddress:
    """The broker after ``current`` in ``addresses`` (the first when ``current`` is not listed):
    where a client goes when ``current`` is unreachable or its connection died."""
    try:
        return addresses[(addresses.index(current) + 1) % len(addresses)]
    except ValueError:
        return addresses[0]


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def parse_mqtt_url(url: str) -> ConnectionParams:
    """Parse ``mqtt://[user[:pass]@]host[:port]`` or ``mqtts://...``, or a comma-separated list of
    such URLs (the nodes of a cluster, tried in that order); raises MqttUrlError.

    Every URL of a list is checked alone (the error names which one, by position), and all must
    have the same scheme and the same user and secret: one client logs in the same way on every
    node. A comma inside a secret is written ``%2C``.
    """
    if "," not in url:
        return _parse_one(url)
    items = [item.strip() for item in url.split(",")]
    parsed: list[ConnectionParams] = []
    for n, item in enumerate(items, start=1):
        where = f"address {n} of {len(items)}"
        if not item:
            raise MqttUrlError(_redacted_list(url), f"{where} is empty")
        try:
            parsed.append(_parse_one(item))
        except MqttUrlError as exc:
            raise MqttUrlError(exc.url, f"{where}: {exc.reason}") from exc
    first = parsed[0]
    seen: set[BrokerAddress] = set()
    for n, p in enumerate(parsed, start=1):
        if (p.tls, p.username, p.password) != (first.tls, first.username, first.password):
            raise MqttUrlError(
                _redacted_list(url),
                f"address {n} has another scheme or user than address 1 (a list names the nodes of "
                "one cluster, logged in to the same way)",
            )
        address = BrokerAddress(p.host, p.port)
        if address in seen:
            raise MqttUrlError(_redacted_list(url), f"address {n} ({address}) is listed twice")
        seen.add(address)
    return replace(first, fallbacks=tuple(BrokerAddress(p.host, p.port) for p in parsed[1:]))


def _redacted_list(url: str) -> str:
    return ",".join(_redacted(item.strip()) for item in url.split(","))


def _parse_one(url: str) -> ConnectionParams:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise MqttUrlError(_redacted(url), f"not a URL ({exc})") from exc
    if parts.scheme not in DEFAULT_PORTS:
        raise MqttUrlError(_redacted(url), "scheme must be mqtt:// or mqtts://")
    if not parts.hostname:
        raise MqttUrlError(_redacted(url), "no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise MqttUrlError(_redacted(url), "an MQTT URL has no path, query or fragment")
    return ConnectionParams(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[parts.scheme],
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "mqtts",
    )


def read_password_file(path: Path, username: str | None) -> str:
    """The secret for ``username`` from ``path``: one line holding the secret, or the
    ``username,secret`` CSV that ``streetlight provision`` writes (the row of ``username``).

    Raises MqttUrlError (naming the file and user, never a secret) when there is none.
    """
    text = path.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and lines[0].replace(" ", "") == "username,secret":
        for row in csv.DictReader(lines):
            if row.get("username") == username and row.get("secret"):
                return str(row["secret"])
        raise MqttUrlError(str(path), f"no secret for {username!r} in this file")
    if len(lines) != 1:
        raise MqttUrlError(str(path), "expected one line holding the secret, or a username,secret CSV")
    return lines[0]


def with_credentials(
    params: ConnectionParams,
    *,
    username: str | None = None,
    password: str | None = None,
    password_file: Path | None = None,
) -> ConnectionParams:
    """``params`` logged in as ``username`` (default: the URL's user) with the secret from the URL,
    else ``password`` (e.g. $MQTT_PASSWORD), else ``password_file``: so the secret need never be on
    a command line, where every local user reads it in ``ps``."""
    user = username or params.username
    secret = params.password if user == params.username else None
    if secret is None:
        secret = password
    if secret is None and password_file is not None and user is not None:
        secret = read_password_file(password_file, user)
    return replace(params, username=user, password=secret)


def backoff_delay_s(
    attempt: int,
    *,
    base_s: float = BACKOFF_BASE_S,
    cap_s: float = BACKOFF_CAP_S,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): full jitter under a capped exponential."""
    ceiling = min(cap_s, base_s * 1.5 ** min(BACKOFF_MAX_EXPONENT, max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


def supports_shared_subscriptions(broker_kind: str) -> bool:
    """Whether a broker of this kind delivers ``$share/...`` subscriptions.

    All of ours do: ``embedded`` is ``broker.lite`` (shared subscriptions, round robin), Mosquitto
    >= 1.6 and EMQX do, as does a configured broker (assumed to be one of those). Only amqtt 0.12
    (``python -m broker.embedded --impl amqtt``, not a broker kind here) does not: it delivered 1
    of 100 messages to a shared subscription in DESIGN.md §5's measurement; ingest's probe
    (``--subscription auto``) finds that out at run time.
    """
    return True
