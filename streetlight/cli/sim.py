"""``streetlight sim``: lamps, beacon blinkers and residents as real MQTT clients (docs/simulator.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

from broker.local import provide_mqtt
from firmware_sim import scenarios
from firmware_sim.fleet import KEEPALIVE_S
from firmware_sim.placement import DEFAULT_SEED, export_geojson, place_lamps
from streetlight.settings import Settings

HELP = "simulate lamps, blinkers and residents over MQTT (scenarios, GeoJSON export of the placement)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``streetlight sim``."""
    parser.add_argument(
        "--lamps", type=int, metavar="N", help="lamps to place (default: 3,500, the 2022 zones)"
    )
    parser.add_argument(
        "--zones",
        nargs="+",
        default=[],
        metavar="ZONE",
        help="batch1, batch2, 1-14, district/dong code or name",
    )
    parser.add_argument("--interval", type=float, default=None, metavar="S", help="telemetry interval (s)")
    parser.add_argument(
        "--mqtt-url",
        metavar="URL",
        help="broker, or a comma-separated list of a cluster's nodes (devices spread over them by "
        "district, the others their fallbacks; default: MQTT_URL, else a private one)",
    )
    parser.add_argument("--api-url", metavar="URL", help="Safety-app API for walking residents and SOS")
    parser.add_argument(
        "--scenario",
        metavar="NAME|FILE",
        help=f"bundled ({', '.join(scenarios.names())}) or a YAML/JSON file",
    )
    parser.add_argument("--credentials", type=Path, metavar="FILE", help="username,secret CSV from provision")
    parser.add_argument("--walkers", type=int, default=0, metavar="N", help="residents walking (no scenario)")
    parser.add_argument("--night", action="store_true", help="simulated sky at 22:00 KST whatever the clock")
    parser.add_argument(
        "--time-scale", type=float, default=1.0, metavar="X", help="run the sky X times faster"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="placement seed (same seed, same lamps)"
    )
    parser.add_argument("--id-prefix", default="", metavar="P", help="prefix for every device id")
    parser.add_argument("--no-blinkers", action="store_true", help="lamps only")
    parser.add_argument(
        "--duration", type=float, metavar="S", help="stop after S seconds (default: scenario/never)"
    )
    parser.add_argument(
        "--kill", action="store_true", help="at exit drop sockets without DISCONNECT (wills fire)"
    )
    parser.add_argument(
        "--keepalive",
        type=int,
        default=KEEPALIVE_S,
        metavar="S",
        help=f"MQTT keepalive of every device (default {KEEPALIVE_S}; the broker drops a silent one at 1.5x)",
    )
    parser.add_argument("--export-geojson", type=Path, metavar="FILE", help="write the placement and exit")
    parser.add_argument(
        "--export-register",
        type=Path,
        metavar="FILE",
        help="write the placement's lamps as a lamp register (전국보안등정보표준데이터, UTF-8) and exit",
    )


def run(args: argparse.Namespace) -> int:
    """Export the placement, or run the fleet (and a scenario) until done or Ctrl-C."""
    if args.export_register is not None:
        return _export_register(args)
    if args.export_geojson is not None:
        placement = place_lamps(
            args.lamps, zones=args.zones or None, seed=args.seed, id_prefix=args.id_prefix
        )
        export_geojson(placement, args.export_geojson)
        print(
            f"{args.export_geojson}: {len(placement)} lamps and {len(placement)} blinkers "
            f"(synthetic positions, seed {args.seed}); import with: streetlight provision --devices FILE"
        )
        return 0
    settings = Settings.from_env()
    scenario = scenarios.load(args.scenario) if args.scenario else None
    url = args.mqtt_url or settings.mqtt_url
    if url is not None:
        from broker import MqttUrlError, parse_mqtt_url

        try:
            parse_mqtt_url(url)
        except MqttUrlError as exc:
            print(f"streetlight sim: --mqtt-url/MQTT_URL {exc}", file=sys.stderr)
            return 2
    with contextlib.ExitStack() as stack:
        if url is None:
            broker = provide_mqtt(None, settings.data_dir / "sim-broker")
            stack.callback(broker.stop)
            url = broker.url
            print(f"sim: started a private {broker.kind} broker at {url}", file=sys.stderr)
        config = scenarios.SimConfig(
            mqtt_url=url,
            lamps=args.lamps if args.lamps is not None else (scenario.lamps if scenario else None),
            zones=args.zones or (scenario.zones if scenario else ()),
            seed=args.seed,
            id_prefix=args.id_prefix,
            interval_s=args.interval or (None if scenario else settings.telemetry_interval_s),
            with_blinkers=not args.no_blinkers,
            credentials=args.credentials,
            api_url=args.api_url,
            night=args.night or bool(scenario and scenario.night),
            time_scale=args.time_scale,
            kill_on_exit=args.kill,
            keepalive_s=args.keepalive,
        )
        try:
            report = asyncio.run(_main(config, scenario, args))
        except KeyboardInterrupt:
            return 130
    print(json.dumps(report, ensure_ascii=False, default=str))
    return 0


def _export_register(args: argparse.Namespace) -> int:
    """The placement's lamps as a lamp register (one row per pole, synthetic addresses)."""
    from streetlight import bootstrap
    from streetlight.lampregister import register_csv

    placement = place_lamps(args.lamps, zones=args.zones or None, seed=args.seed, id_prefix=args.id_prefix)
    gazetteer = bootstrap.load_gazetteer()
    rows = []
    for n, lamp in enumerate(placement.lamps, 1):
        district, dong = gazetteer.district(lamp.district_code), gazetteer.dong(lamp.dong_code)
        rows.append(
            {
                "lamp_number": lamp.lamp_number,
                "lamp_count": 1,
                # Synthetic, like the positions: a street of the neighbourhood and a building number.
                "address": f"서울특별시 {district.name} {dong.name.rstrip('0123456789')}길 {n}",
                "lot_address": f"서울특별시 {district.name} {dong.name} {n}",
                "lat": lamp.lat_deg,
                "lon": lamp.lon_deg,
                "management_no": lamp.lamp_id,
                "year": 2022,
            }
        )
    args.export_register.write_text(
        register_csv(rows, organisation="서울특별시 (simulated)", date=time.strftime("%Y-%m-%d")),
        encoding="utf-8",
    )
    print(
        f"{args.export_register}: {len(placement)} lamps as a lamp register (synthetic positions and "
        f"addresses, seed {args.seed}); import with: streetlight provision --devices FILE"
    )
    return 0


async def _main(
    config: scenarios.SimConfig, scenario: scenarios.Scenario | None, args: argparse.Namespace
) -> dict[str, object]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sim = scenarios.Simulation(config)
    started = time.monotonic()
    async with sim:
        status = asyncio.create_task(_status(sim), name="status line")
        try:
            if scenario is not None:
                play = asyncio.create_task(sim.play(scenario), name=f"scenario {scenario.name}")
                stopped = asyncio.create_task(stop.wait(), name="ctrl-c")
                await asyncio.wait({play, stopped}, return_when=asyncio.FIRST_COMPLETED)
                for task in (play, stopped):
                    task.cancel()
                await asyncio.gather(play, stopped, return_exceptions=True)
            else:
                await sim.fleet.wait_connected(timeout_s=120)
                if args.walkers:
                    await sim.add_walkers(args.walkers, walk_s=args.duration or 3600.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=args.duration)
        finally:
            status.cancel()
            await asyncio.gather(status, return_exceptions=True)
            print(file=sys.stderr)
    report = sim.report()
    report["seconds"] = round(time.monotonic() - started, 1)
    report["exit"] = "killed (wills fire)" if config.kill_on_exit else "clean disconnect"
    return report


async def _status(sim: scenarios.Simulation) -> None:
    """A progress bar while connecting, then a one-line live status (stderr)."""
    stats = sim.fleet.stats
    last_pub, last_t = 0, time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        now = time.monotonic()
        rate = (stats.published - last_pub) / (now - last_t)
        last_pub, last_t = stats.published, now
        if stats.connects < stats.devices and stats.connected < stats.devices:
            done = stats.connected / max(1, stats.devices)
            bar = "#" * int(done * 30)
            line = f"connecting [{bar:<30}] {stats.connected}/{stats.devices}"
        else:
            line = f"{sim.status_line()}  {rate:,.0f} msg/s"
        print(f"\r{line[:160]:<160}", end="", file=sys.stderr, flush=True)
