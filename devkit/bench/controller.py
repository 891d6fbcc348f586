"""``streetlight bench controller``: how fast the controller turns an SOS into a control-centre
alert and blinking lamps, and a walker's position into lamp commands, against a real broker and
database, with a raw MQTT round trip on the same broker as the baseline (figures as ratios).

Also home of ``LampFleet``, the simulated lamps the controller's integration tests use:
firmware_sim's pure ``LampFirmware`` behind one paho client, acking every command like a real
lamp. Lamps listed in ``silent`` receive commands but never answer (a dead radio, to test retries
and replacement). Every received command is kept with its arrival time (``time.perf_counter``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg

from broker import ConnectionParams, paho_client, parse_device_topic, parse_mqtt_url
from firmware_sim import DeviceIdentity, LampFirmware, Message


@dataclass(frozen=True, slots=True)
class LampSpec:
    """A lamp to simulate."""

    device_id: str
    district: str
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Received:
    """One command as a lamp received it."""

    at: float  # perf_counter seconds
    device_id: str
    payload: dict[str, Any]


def nodelay(client: mqtt.Client) -> None:
    """Turn Nagle's algorithm off on a connected paho client (as MqttSession does)."""
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class LampFleet:
    """``with LampFleet(params, lamps) as fleet: ...``: lamps that ack over a real broker."""

    def __init__(
        self,
        params: ConnectionParams,
        lamps: Iterable[LampSpec],
        *,
        silent: Iterable[str] = (),
        refusing: Mapping[str, str] | None = None,
        buffered_reads: bool = False,
    ) -> None:
        """``buffered_reads``: the fleet's one client reads its socket in large chunks and handles
        every command already read without a ``select`` each (``broker.BufferedReadClient``), so a
        burst of commands for many lamps queues less behind this one client (real lamps each
        have their own connection)."""
        self.lamps = {
            spec.device_id: LampFirmware(
                DeviceIdentity(spec.device_id, spec.district, "lamp", spec.lat, spec.lon, "stub-lamp")
            )
            for spec in lamps
        }
        self.silent = set(silent)
        self.refusing = dict(refusing or {})  # device id -> the reason its rejections give
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self._districts = sorted({fw.identity.district_code for fw in self.lamps.values()})
        self._subscribed = threading.Event()
        self._client = paho_client(params, f"lampfleet-{uuid.uuid4().hex[:8]}", buffered_reads=buffered_reads)
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._params = params

    def __enter__(self) -> LampFleet:
        self._client.connect(self._params.host, self._params.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("lamp fleet not subscribed")
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        nodelay(client)
        client.subscribe([(f"sl/v1/{d}/+/cmd", 1) for d in self._districts])

    def _on_message(self, client: mqtt.Client, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        at = time.perf_counter()
        try:
            device_id = parse_device_topic(msg.topic).device_id
            payload = json.loads(msg.payload)
        except ValueError:
            return
        firmware = self.lamps.get(device_id)
        if firmware is None:
            return
        with self._cond:
            self.received.append(Received(at, device_id, payload))
            if device_id in self.silent:
                replies = []
            elif device_id in self.refusing:
                replies = [self._refusal(firmware, payload, self.refusing[device_id])]
            else:
                replies = firmware.handle_command(payload, _now_ms())
            self._cond.notify_all()
        for reply in replies:
            if reply.channel == "ack":
                client.publish(reply.topic, json.dumps(reply.to_payload()), qos=1)

    @staticmethod
    def _refusal(firmware: LampFirmware, payload: Any, reason: str) -> Message:
        """The ack a lamp refusing every command sends (what its firmware would for a command it
        cannot carry out)."""
        return Message(
            "ack",
            f"{firmware.identity.topic_prefix}/ack",
            {"ts": _now_ms(), "cmd_id": payload.get("cmd_id"), "status": "rejected", "reason": reason},
        )

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until `predicate()` (called under the fleet's lock) holds; False on timeout."""
        with self._cond:
            return self._cond.wait_for(predicate, timeout_s)

    def sources(self, device_id: str) -> dict[str, tuple[int, bool]]:
        """The live overrides of a lamp: source -> (level, blinking)."""
        firmware = self.lamps[device_id]
        now = _now_ms()
        with self._cond:
            return {s: (o.level, o.blink) for s, o in firmware.overrides.items() if o.expires_ms > now}

    def commands_for(self, device_id: str) -> list[dict[str, Any]]:
        """Commands a lamp received, in order."""
        with self._cond:
            return [r.payload for r in self.received if r.device_id == device_id]


# --------------------------------------------------------------------------- the benchmark

HELP = "controller latency: SOS row+NOTIFY -> cc/v1 alert and -> lamp blink; walk position -> lamp command"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench controller``."""
    parser.add_argument("--sos", type=int, default=40, help="SOS alerts, one after another (default 40)")
    parser.add_argument("--walkers", type=int, default=50, help="simultaneous walkers (default 50)")
    parser.add_argument(
        "--updates", type=int, default=10, help="positions per walker, 1 s apart (default 10)"
    )
    parser.add_argument("--grid", type=int, default=20, help="lamps per side of the square grid, 20 m apart")
    parser.add_argument("--pings", type=int, default=300, help="baseline MQTT publish->receive samples")
    parser.add_argument("--nagle", action="store_true", help="private mosquitto with its default (Nagle on)")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")


@dataclass
class _Walker:
    walk_id: str
    lat: float
    lon: float
    heading_deg: float


def _pct(values: Sequence[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100 * len(ordered)) - 1))] * 1000, 2)


def _summary(name: str, values: Sequence[float]) -> dict[str, float]:
    return {
        f"{name}_p50_ms": _pct(values, 50),
        f"{name}_p95_ms": _pct(values, 95),
        f"{name}_p99_ms": _pct(values, 99),
    }


class _Listener:
    """A paho subscriber recording (perf_counter, topic, payload) for every message."""

    def __init__(self, params: ConnectionParams, filters: list[str]) -> None:
        self.got: list[tuple[float, str, bytes]] = []
        self.cond = threading.Condition()
        ready = threading.Event()
        self.client = paho_client(params, f"bench-listen-{uuid.uuid4().hex[:8]}")

        def on_connect(client: mqtt.Client, *_a: Any) -> None:
            nodelay(client)
            client.subscribe([(f, 1) for f in filters])

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect(params.host, params.port)
        self.client.loop_start()
        if not ready.wait(10):
            raise TimeoutError("bench listener not subscribed")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.got.append((time.perf_counter(), msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _baseline(params: ConnectionParams, pings: int) -> list[float]:
    """Publish -> receive through the same broker, QoS 1, one message at a time."""
    topic = f"bench/ping/{uuid.uuid4().hex[:8]}"
    listener = _Listener(params, [topic])
    sender = paho_client(params, f"bench-ping-{uuid.uuid4().hex[:8]}")
    sender.on_connect = lambda c, *_a: nodelay(c)
    sender.connect(params.host, params.port)
    sender.loop_start()
    samples: list[float] = []
    try:
        for i in range(pings):
            t0 = time.perf_counter()
            sender.publish(topic, str(i).encode(), qos=1)
            expected = i + 1
            with listener.cond:
                listener.cond.wait_for(lambda: len(listener.got) >= expected, 5)  # noqa: B023
            if len(listener.got) > i:
                samples.append(listener.got[i][0] - t0)
    finally:
        sender.disconnect()
        sender.loop_stop()
        listener.close()
    return samples


def _grid(prefix: str, side: int) -> list[LampSpec]:
    lat0, lon0 = 37.5640, 126.9780  # Jung-gu, near Seoul City Hall
    return [
        LampSpec(f"{prefix}-{r:02d}-{c:02d}", "11140", lat0 + r * 20 / 111_000, lon0 + c * 20 / 88_200)
        for r in range(side)
        for c in range(side)
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start (or use) a broker and database, a controller, simulated lamps; measure; report."""
    from devkit.localservices import provide_mqtt, provide_pg, start_mosquitto
    from streetlight.settings import Settings

    settings = Settings.from_env()
    logging.basicConfig(level="WARNING", stream=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-controller-") as tmp:
        if settings.mqtt_url or args.nagle:
            mqtt_svc = provide_mqtt(settings.mqtt_url, Path(tmp))
        else:
            # Mosquitto leaves Nagle's algorithm on by default: a small message queued behind an
            # unacknowledged one waits for the peer's delayed ACK (40 ms on Linux). A deployment
            # that cares about SOS latency sets this; --nagle measures the default.
            try:
                mqtt_svc = start_mosquitto(Path(tmp) / "mosquitto", extra_config="set_tcp_nodelay true\n")
            except FileNotFoundError:
                mqtt_svc = provide_mqtt(None, Path(tmp))
        pg_svc = provide_pg(settings.database_url, Path(tmp))
        dbname = f"bench_controller_{uuid.uuid4().hex[:8]}"
        try:
            with psycopg.connect(pg_svc.url, autocommit=True) as admin:
                admin.execute(f'CREATE DATABASE "{dbname}"')
            try:
                result = asyncio.run(
                    _measure(args, parse_mqtt_url(mqtt_svc.url), pg_svc.database_url(dbname))
                )
            finally:
                with psycopg.connect(pg_svc.url, autocommit=True) as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        finally:
            pg_svc.stop()
            mqtt_svc.stop()
    result["broker"] = mqtt_svc.kind
    result["broker_tcp_nodelay"] = not (settings.mqtt_url or args.nagle) and mqtt_svc.kind == "mosquitto"
    result["database"] = pg_svc.kind
    return result


async def _measure(args: argparse.Namespace, params: ConnectionParams, db_url: str) -> dict[str, Any]:
    from alerts import AlertKind, EscalationPolicy, Place, Position, acknowledge, new_alert, resolve
    from controller import Controller, ControllerConfig
    from store import migrate, upsert_device
    from store.alerts import change_alert, save_alert
    from store.notes import WalkMoved, notify
    from store.walks import add_walk_positions, start_walk

    migrate(db_url)
    prefix = f"B{uuid.uuid4().hex[:6]}"
    lamps = _grid(prefix, args.grid)
    conn = psycopg.connect(db_url, autocommit=True)
    for spec in lamps:
        upsert_device(
            conn, spec.device_id, kind="lamp", district_code=spec.district, lat=spec.lat, lon=spec.lon
        )
    _say(f"baseline: {args.pings} MQTT pings")
    baseline = await asyncio.to_thread(_baseline, params, args.pings)
    cfg = ControllerConfig(
        mqtt=params,
        database_url=db_url,
        districts=("11140",),
        owner="bench-controller",
        escalation=EscalationPolicy(renotify_after_s=600.0, police_after_s=900.0),
    )
    controller = Controller(cfg)
    centre = _Listener(params, ["cc/v1/11140/alerts"])
    rng = random.Random(7)
    out: dict[str, Any] = {"bench": "controller", "lamps": len(lamps)}
    with LampFleet(params, lamps) as fleet:
        task = asyncio.create_task(controller.run(), name="controller")
        try:
            await asyncio.wait_for(controller.ready.wait(), 15)
            # ---- SOS: row + NOTIFY -> first cc/v1 publication, and -> first blink applied at a lamp
            _say(f"sos: {args.sos} alerts")
            cc_lat: list[float] = []
            blink_lat: list[float] = []
            lost = 0
            for i in range(args.sos):
                spec = rng.choice(lamps)
                alert_id = f"{prefix}-sos-{i}"
                now = datetime.now(UTC)
                place = Place(lat=spec.lat, lon=spec.lon, district_code="11140", district_name="중구")
                alert = new_alert(
                    alert_id=alert_id,
                    kind=AlertKind.SOS,
                    place=place,
                    source_id=f"res-{i}",
                    now=now,
                    track=(Position(spec.lat, spec.lon, now, 5.0),),
                )

                def save(a: Any = alert) -> float:
                    t0 = time.perf_counter()
                    with conn.transaction():
                        save_alert(conn, a)
                    return t0

                t0 = await asyncio.to_thread(save)
                deadline = time.monotonic() + 5
                cc_at = blink_at = None
                while time.monotonic() < deadline and (cc_at is None or blink_at is None):
                    await asyncio.sleep(0.002)
                    if cc_at is None:
                        cc_at = next((t for t, _tp, p in list(centre.got) if alert_id.encode() in p), None)
                    if blink_at is None:
                        blink_at = next(
                            (r.at for r in list(fleet.received) if r.payload.get("source") == alert_id), None
                        )
                if cc_at is None:
                    lost += 1
                else:
                    cc_lat.append(cc_at - t0)
                if blink_at is not None:
                    blink_lat.append(blink_at - t0)
                at = datetime.now(UTC)

                def close(a: Any, at: datetime = at) -> Any:
                    return resolve(acknowledge(a, at, "bench"), at, "bench")

                await asyncio.to_thread(change_alert, conn, alert_id, close)
                await asyncio.sleep(0.05)
            out |= {"sos": args.sos, "sos_lost": lost}
            out |= _summary("sos_cc", cc_lat) | _summary("sos_blink", blink_lat)
            # ---- walks: position (row + NOTIFY) -> first lamp command, per update
            _say(f"walks: {args.walkers} walkers x {args.updates} positions")
            walkers: list[_Walker] = []
            for w in range(args.walkers):
                spec = rng.choice(lamps)
                walk_id = f"{prefix}-walk-{w}"
                heading = rng.choice([0.0, 90.0, 180.0, 270.0])
                start_walk(conn, walk_id, f"res-w{w}", started_at=datetime.now(UTC), district_code="11140")
                walkers.append(_Walker(walk_id, spec.lat, spec.lon, heading))
            marks: list[tuple[str, float, float]] = []  # walk id, t0, t0 of its next update
            commands_before = len(fleet.received)
            speed = 1.4
            for _step in range(args.updates):
                tick = time.perf_counter()
                for k, walker in enumerate(walkers):
                    # Walkers are not synchronised: each reports at its own offset in the second.
                    await asyncio.sleep(max(0.0, tick + k / len(walkers) - time.perf_counter()))
                    rad = math.radians(walker.heading_deg)
                    walker.lat += math.cos(rad) * speed / 111_000
                    walker.lon += math.sin(rad) * speed / 88_200
                    ts = datetime.now(UTC)
                    note = WalkMoved(
                        walk_id=walker.walk_id, district="11140", lat=walker.lat, lon=walker.lon,
                        accuracy_m=5.0, heading_deg=walker.heading_deg, speed_mps=speed,
                        ts_ms=int(ts.timestamp() * 1000),
                    )  # fmt: skip
                    row = (ts, walker.lat, walker.lon, 5.0, walker.heading_deg, speed, True, None)

                    def send(note: WalkMoved = note, row: Any = row) -> float:
                        t0 = time.perf_counter()
                        with conn.transaction():
                            add_walk_positions(conn, note.walk_id, [row])
                            notify(conn, note)
                        return t0

                    marks.append((walker.walk_id, await asyncio.to_thread(send), 0.0))
                await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - tick)))
            await asyncio.sleep(1.0)
            received = list(fleet.received)[commands_before:]
            by_walk: dict[str, list[float]] = {}
            for r in received:
                by_walk.setdefault(str(r.payload.get("source")), []).append(r.at)
            walk_lat: list[float] = []
            updates_with_commands = 0
            per_walk: dict[str, list[float]] = {}
            for walk_id, t0, _ in marks:
                per_walk.setdefault(walk_id, []).append(t0)
            for walk_id, starts in per_walk.items():
                arrivals = sorted(by_walk.get(walk_id, []))
                for k, t0 in enumerate(starts):
                    t1 = starts[k + 1] if k + 1 < len(starts) else math.inf
                    first = next((a for a in arrivals if t0 <= a < t1), None)
                    if first is not None:
                        updates_with_commands += 1
                        walk_lat.append(first - t0)
            walk_commands = sum(len(v) for k, v in by_walk.items() if k.startswith(f"{prefix}-walk-"))
            out |= {
                "walk_updates": len(marks),
                "walk_updates_with_commands": updates_with_commands,
                "commands_per_update": round(walk_commands / max(1, len(marks)), 3),
            }
            out |= _summary("walk_cmd", walk_lat)
            out |= _summary("baseline_mqtt", baseline)
            base99 = out["baseline_mqtt_p99_ms"]
            out["sos_cc_p99_over_baseline"] = round(out["sos_cc_p99_ms"] / base99, 2) if base99 else None
            out["walk_cmd_p99_over_baseline"] = round(out["walk_cmd_p99_ms"] / base99, 2) if base99 else None
            out["command_states"] = controller.snapshot()["commands"]
            out["ok"] = lost == 0
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            centre.close()
            conn.close()
    return out
