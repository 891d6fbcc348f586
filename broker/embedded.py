"""The embedded MQTT broker for zero-install runs: ``python -m broker.embedded``.

By default the lite broker (``broker.lite``, pure Python, MQTT 3.1.1): anonymous, loopback by
default, retained messages (kept in ``--data-dir`` across restarts when given), last wills,
persistent sessions in memory, and shared subscriptions (``$share/...``), so ingest's probe
(``ingest.probe_shared_subscriptions``) finds them and can run several workers. It holds the
demo fleet (thousands of connections) on two cores; figures in docs/architecture.md.

The lite broker's limits default to the production ones (``max_packet_size`` 17,408,
``message_size_limit`` 16,384, as ``deploy/mosquitto/mosquitto.conf``) and bound what a slow or
dead subscriber can hold (``max_queued``, ``max_queued_bytes``); ``--max-packet-size``,
``--message-size-limit``, ``--max-queued`` and ``--max-connections`` change them.

``--impl amqtt`` runs amqtt 0.12 instead (the former default: about 3k msg/s, connected 1,160 of
7,000 devices in 75 s, does **not** deliver shared subscriptions; DESIGN.md §5).
Use Mosquitto or EMQX (``MQTT_URL``) for anything beyond a demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

from broker._errors import BrokerError
from runtime import logs

log = logs.get_logger("broker.embedded")  # also when run as __main__
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883
Impl = Literal["lite", "amqtt"]
IMPLS: tuple[Impl, ...] = ("lite", "amqtt")


class _DropProbeNoise(logging.Filter):
    """Drop amqtt's errors about connections that sent nothing.

    ``runtime.procs.tcp_reachable`` (and load balancers' health checks) open and close
    a TCP connection to see whether the broker is up; amqtt logs each as an ERROR and a WARNING.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "No data" not in record.getMessage()


def amqtt_config(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """The amqtt 0.12 ``BrokerConfig`` dict: one TCP listener, anonymous access, no other plugins."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        # The "plugins" form; amqtt 0.12 deprecates the older "auth"/"topic-check" keys.
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }


class EmbeddedBroker:
    """The embedded broker in this event loop: ``async with EmbeddedBroker(host, port): ...``.

    ``impl="lite"`` (default) is ``broker.lite.LiteBroker``; ``data_dir`` keeps its retained
    messages across restarts. ``impl="amqtt"`` is amqtt 0.12 (``data_dir`` is ignored).
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        impl: Impl = "lite",
        data_dir: Path | None = None,
        lite_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.impl = impl
        self.data_dir = data_dir
        self.lite_options = dict(lite_options or {})  # LiteBroker keyword arguments (limits)
        self._broker: Any = None

    async def start(self) -> None:
        """Start listening; raises BrokerError when the broker cannot start (e.g. port in use)."""
        if self.impl == "lite":
            from broker.lite import LiteBroker

            lite = LiteBroker(self.host, self.port, data_dir=self.data_dir, **self.lite_options)
            await lite.start()
            self.port = lite.port
            self._broker = lite
            return
        from amqtt.broker import Broker  # imported here: amqtt is only needed in embedded mode
        from amqtt.errors import BrokerError as AmqttBrokerError

        # amqtt and its state machine (transitions) log every step at INFO; one line of ours says
        # the broker is up.
        for noisy in ("amqtt", "transitions"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        amqtt_log = logging.getLogger("amqtt.broker")
        if not any(isinstance(f, _DropProbeNoise) for f in amqtt_log.filters):
            amqtt_log.addFilter(_DropProbeNoise())
        broker = Broker(amqtt_config(self.host, self.port))
        try:
            await broker.start()
        except AmqttBrokerError as exc:
            raise BrokerError(f"embedded broker on {self.host}:{self.port} did not start: {exc}") from exc
        self._broker = broker
        log.info("broker_listening", impl="amqtt", url=f"mqtt://{self.host}:{self.port}")

    async def stop(self) -> None:
        """Stop listening and drop every session (lite: retained messages saved to ``data_dir``)."""
        broker, self._broker = self._broker, None
        if broker is None:
            return
        if self.impl == "lite":
            await broker.stop()
        else:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve(
    host: str,
    port: int,
    *,
    impl: Impl = "lite",
    data_dir: Path | None = None,
    lite_options: Mapping[str, Any] | None = None,
) -> None:
    """Run the embedded broker until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with EmbeddedBroker(host, port, impl=impl, data_dir=data_dir, lite_options=lite_options):
        await stop.wait()
    log.info("broker_stopped")


def main(argv: list[str] | None = None) -> int:
    """``python -m broker.embedded [--host H] [--port P] [--data-dir D] [--impl lite|amqtt]``."""
    parser = argparse.ArgumentParser(prog="python -m broker.embedded", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: 1883)")
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="keep retained messages here across restarts (lite)"
    )
    parser.add_argument("--impl", choices=IMPLS, default="lite", help="broker implementation (default: lite)")
    limits = parser.add_argument_group(
        "lite limits (defaults: the deployed Mosquitto's, docs/architecture.md)"
    )
    limits.add_argument(
        "--max-packet-size", type=int, help="bytes, counted as Mosquitto does (default 17408)"
    )
    limits.add_argument("--message-size-limit", type=int, help="payload bytes (default 16384)")
    limits.add_argument("--max-queued", type=int, help="messages queued per session (default 400000)")
    limits.add_argument("--max-connections", type=int, help="default: RLIMIT_NOFILE minus 32")
    args = parser.parse_args(argv)
    names = ("max_packet_size", "message_size_limit", "max_queued", "max_connections")
    lite_options = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    logs.configure("INFO", os.environ.get(logs.FORMAT_ENV))  # a child of `streetlight up` too
    try:
        asyncio.run(
            serve(args.host, args.port, impl=args.impl, data_dir=args.data_dir, lite_options=lite_options)
        )
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
