"""``streetlight broker``: the embedded MQTT broker in the foreground, or a development mosquitto.conf."""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

HELP = (
    "run the embedded MQTT broker (broker.lite: shared subscriptions, retained messages kept in "
    "--data-dir) in the foreground, or print a development mosquitto.conf"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight broker``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=int, default=1883, help="TCP port (default: 1883)")
    parser.add_argument(
        "--mosquitto-config",
        action="store_true",
        help="print a development mosquitto.conf for --port instead of running a broker",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the embedded broker keeps its retained messages (default: in memory only), or the "
        "persistence folder written into the printed mosquitto.conf (default: a temporary folder)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the embedded broker until SIGTERM/SIGINT, or print the mosquitto configuration."""
    if args.mosquitto_config:
        from broker.local import mosquitto_config

        workdir = args.data_dir or Path(tempfile.gettempdir()) / "streetlight-mosquitto"
        sys.stdout.write(mosquitto_config(args.port, workdir))
        return 0

    from broker import BrokerError
    from broker.embedded import serve
    from streetlight import bootstrap
    from streetlight.settings import Settings

    bootstrap.start_process(Settings.from_env())
    try:
        asyncio.run(serve(args.host, args.port, data_dir=args.data_dir))
    except BrokerError as exc:
        print(f"streetlight broker: {exc}", file=sys.stderr)
        return 1
    return 0
