"""``streetlight controller``: walks, beacon sightings, SOS blinking and escalation for some districts."""

from __future__ import annotations

import argparse
from pathlib import Path

from streetlight import bootstrap
from streetlight.settings import Settings, warn_secrets_in_flags

HELP = "run the controller (walk brightening, SOS to control centres, blinking, escalation) for districts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight controller``."""
    parser.add_argument(
        "--districts",
        default="all",
        metavar="CODES",
        help="comma-separated district codes to lease, or 'all' (the 25 districts and the city centre)",
    )
    parser.add_argument(
        "--mqtt-url",
        help="broker URL without its secret, or a comma-separated list of a cluster's nodes "
        "(default: MQTT_URL)",
    )
    parser.add_argument(
        "--mqtt-password-file",
        type=Path,
        metavar="FILE",
        help="the MQTT secret, or provision's username,secret CSV (default: MQTT_PASSWORD[_FILE])",
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    parser.add_argument("--owner", help="lease owner name (default: host-pid-random)")
    parser.add_argument(
        "--lease-ttl-s", type=float, default=6.0, help="district lease time to live (default 6)"
    )
    parser.add_argument("--hold-s", type=int, default=30, help="walk brightening hold time (default 30)")
    parser.add_argument(
        "--device-rate",
        type=float,
        default=5.0,
        help="acks and events one device may send per second, sustained (default 5; 0: no bound)",
    )
    parser.add_argument(
        "--device-burst", type=float, default=100.0, help="acks and events one device may send at once"
    )
    parser.add_argument("--metrics-port", type=int, help="serve Prometheus /metrics and /health on this port")
    parser.add_argument("--metrics-host", default="127.0.0.1")


def run(args: argparse.Namespace) -> int:
    """Run the controller until SIGINT/SIGTERM; leases are released on the way out."""
    from broker import MqttUrlError

    settings = Settings.from_env()
    warn_secrets_in_flags("controller", {"--mqtt-url": args.mqtt_url, "--database-url": args.database_url})
    bootstrap.start_process(settings)
    mqtt_url = args.mqtt_url or settings.mqtt_url
    db_url = args.database_url or settings.database_url
    if not mqtt_url or not db_url:
        print("streetlight controller: needs MQTT_URL and DATABASE_URL (or --mqtt-url/--database-url)")
        return 2
    gazetteer = bootstrap.load_gazetteer()
    try:
        districts = bootstrap.district_codes(args.districts, gazetteer)
    except ValueError as exc:
        print(f"streetlight controller: {exc}")
        return 2
    try:
        params = settings.mqtt_params(mqtt_url, password_file=args.mqtt_password_file)
    except (MqttUrlError, OSError) as exc:
        print(f"streetlight controller: {exc}")
        return 2
    config = bootstrap.controller_config(
        settings,
        mqtt=params,
        database_url=db_url,
        districts=districts,
        gazetteer=gazetteer,
        owner=args.owner,
        lease_ttl_s=args.lease_ttl_s,
        hold_s=args.hold_s,
        device_rate_per_s=args.device_rate,
        device_burst=args.device_burst,
    )
    bootstrap.run_controller(config, metrics_host=args.metrics_host, metrics_port=args.metrics_port)
    return 0
