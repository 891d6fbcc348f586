"""``streetlight controller``: walks, beacon sightings, SOS blinking and escalation for some districts."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
from pathlib import Path

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
    parser.add_argument("--mqtt-url", help="broker URL without its secret (default: MQTT_URL)")
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


def district_codes(spec: str) -> tuple[str, ...]:
    """The candidate districts: the codes given, or every district of the gazetteer and the city centre."""
    from alerts import CITY_CENTRE, is_centre_code

    if spec.strip().lower() in ("", "all"):
        from geo import Gazetteer

        return (*sorted(area.code for area in Gazetteer.load().districts), CITY_CENTRE)
    codes = tuple(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    bad = [c for c in codes if not is_centre_code(c)]
    if bad:
        raise ValueError(f"district codes must be 5 digits, got {', '.join(bad)}")
    return codes


def run(args: argparse.Namespace) -> int:
    """Run the controller until SIGINT/SIGTERM; leases are released on the way out."""
    from alerts import EscalationPolicy
    from broker import MqttUrlError
    from controller import Controller, ControllerConfig, HoldPolicy

    settings = Settings.from_env()
    warn_secrets_in_flags("controller", {"--mqtt-url": args.mqtt_url, "--database-url": args.database_url})
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    mqtt_url = args.mqtt_url or settings.mqtt_url
    db_url = args.database_url or settings.database_url
    if not mqtt_url or not db_url:
        print("streetlight controller: needs MQTT_URL and DATABASE_URL (or --mqtt-url/--database-url)")
        return 2
    try:
        districts = district_codes(args.districts)
    except ValueError as exc:
        print(f"streetlight controller: {exc}")
        return 2
    try:
        params = settings.mqtt_params(mqtt_url, password_file=args.mqtt_password_file)
    except (MqttUrlError, OSError) as exc:
        print(f"streetlight controller: {exc}")
        return 2
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=districts,
        lease_ttl_s=args.lease_ttl_s,
        holds=HoldPolicy(hold_s=args.hold_s),
        escalation=EscalationPolicy(
            renotify_after_s=settings.escalate_after_s, police_after_s=settings.police_after_s
        ),
        police_webhook_url=settings.police_webhook_url,
        guard_webhook_url=settings.guard_webhook_url,
        device_rate_per_s=args.device_rate,
        device_burst=args.device_burst,
    )
    if args.owner:
        cfg = dataclasses.replace(cfg, owner=args.owner)

    async def main() -> None:
        controller = Controller(cfg)
        if getattr(args, "metrics_port", None):
            from controller._metrics import serve_metrics

            serve_metrics(controller, cfg.owner, args.metrics_host, args.metrics_port)
        task = asyncio.create_task(controller.run(), name="controller")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        logging.getLogger("controller").info(
            "controller started owner=%s candidates=%d", cfg.owner, len(cfg.districts)
        )
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(main())
    return 0
