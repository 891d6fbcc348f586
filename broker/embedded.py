"""The embedded MQTT broker (amqtt 0.12) for zero-install runs: ``python -m broker.embedded``.

Anonymous, loopback by default, no ``$SYS`` topics. It keeps retained messages and fires last
wills, moves about 3k msg/s, and does **not** deliver shared subscriptions (DESIGN.md §5), so in
embedded mode ingest runs one worker on a plain filter (``broker.supports_shared_subscriptions``).
Use Mosquitto or EMQX (``MQTT_URL``) for anything beyond a demo.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from types import TracebackType
from typing import Any, Self

from broker._errors import BrokerError

log = logging.getLogger("broker.embedded")  # also when run as __main__
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1883


class _DropProbeNoise(logging.Filter):
    """Drop amqtt's errors about connections that sent nothing.

    ``streetlight.localservices.tcp_reachable`` (and load balancers' health checks) open and close
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
    """The amqtt broker in this event loop: ``async with EmbeddedBroker(host, port): ...``."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
        self.host = host
        self.port = port
        self._broker: Any = None

    async def start(self) -> None:
        """Start listening; raises BrokerError when the broker cannot start (e.g. port in use)."""
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
        log.info("embedded MQTT broker (amqtt) listening on mqtt://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and drop every session and retained message."""
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def serve(host: str, port: int) -> None:
    """Run the embedded broker until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with EmbeddedBroker(host, port):
        await stop.wait()
    log.info("embedded MQTT broker stopped")


def main(argv: list[str] | None = None) -> int:
    """``python -m broker.embedded [--host H] [--port P]``: run in the foreground."""
    parser = argparse.ArgumentParser(prog="python -m broker.embedded", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (default: loopback)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (default: 1883)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args.host, args.port))
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
