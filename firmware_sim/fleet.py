"""Simulated devices on the network: each lamp and blinker its own MQTT connection.

The firmware (``firmware.py``) decides what a device says; this module only carries it: a
``DeviceLink`` connects with the device's own client id and credentials, registers the retained
``offline`` last will of the connection's ``bdseq``, publishes birth then retained ``online``
(and on a clean stop the retained ``offline`` itself, before DISCONNECT), subscribes to its own
``cmd`` topic, feeds commands to the firmware and publishes the acks, and
reconnects with capped jittered backoff. A device knows every broker of the fleet: its home node
(chosen by district) first, the others as fallbacks; when its broker dies (or cannot be reached)
its next attempt goes to the next one. A ``Fleet`` holds thousands of links on one event loop
and sends telemetry round-robin, so the load is even instead of arriving in waves.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from broker import backoff_delay_s
from runtime.logs import get_logger

from . import mqtt
from .firmware import BlinkerFirmware, DeviceIdentity, LampFirmware, Message, _Firmware
from .placement import Placement

__all__ = [
    "DeviceLink",
    "Endpoint",
    "Fleet",
    "FleetStats",
    "SimClock",
    "load_credentials",
]

log = get_logger(__name__)

# Models named in birth messages; synthetic, like the positions.
LAMP_MODEL = "SL-LED40-SIM"
BLINKER_MODEL = "BB-BLE-SIM"
# How many devices may be between TCP connect and CONNACK at once: enough to fill a broker's
# accept queue without a thundering herd (Mosquitto's listen backlog is 100 on Linux... per accept
# loop round; 256 measured fastest for 10k devices on these machines, docs/simulator.md).
CONNECT_CONCURRENCY = 256
# MQTT keepalive of every device connection (the default of ``Fleet.keepalive_s``); the broker
# treats a device silent for 1.5 x this as gone and publishes its will.
KEEPALIVE_S = 60
# Round-robin telemetry scheduler period.
SCHEDULER_TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A broker address."""

    host: str
    port: int


def load_credentials(path: Path) -> dict[str, str]:
    """``username,secret`` CSV as written by ``streetlight provision --secrets-out`` -> {username: secret}."""
    with path.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, str] = {}
    for row in rows:
        name, secret = row.get("username"), row.get("secret")
        if name and secret:
            out[name] = secret
    return out


class SimClock:
    """Real time for the wire (ts, expiry) and a simulated sky for the lamps' sun.

    ``sky_start_ms`` puts the sun at that moment when the clock starts; ``time_scale`` runs the
    sky faster than real time. Timestamps stay real, so the backend accepts them and commands
    expire on time; only the schedule, ambient light and weather see the simulated sky.
    """

    def __init__(self, *, sky_start_ms: int | None = None, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError(f"time_scale must be > 0, got {time_scale}")
        self._real_start_ms = self.now_ms()
        self._sky_start_ms = self._real_start_ms if sky_start_ms is None else sky_start_ms
        self.time_scale = time_scale

    @staticmethod
    def now_ms() -> int:
        """Real wall-clock time, epoch milliseconds."""
        return time.time_ns() // 1_000_000

    def sky_ms(self, now_ms: int | None = None) -> int:
        """The simulated sky's time at real time `now_ms`."""
        real = self.now_ms() if now_ms is None else now_ms
        return self._sky_start_ms + round((real - self._real_start_ms) * self.time_scale)

    def sky_offset_ms(self, now_ms: int | None = None) -> int:
        """How far the sky runs ahead of the real clock now."""
        real = self.now_ms() if now_ms is None else now_ms
        return self.sky_ms(real) - real


@dataclass
class FleetStats:
    """Counters of a fleet, read by the live status line and the benchmark."""

    devices: int = 0
    connected: int = 0
    connects: int = 0
    connect_failures: int = 0
    refused: int = 0
    published: int = 0
    acked: int = 0  # QoS 1 publishes the broker answered with PUBACK
    telemetry: int = 0
    events: int = 0
    commands: int = 0
    applied: int = 0
    rejected: int = 0
    expired: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, int | str]:
        """Plain values for JSON."""
        return dict(self.__dict__)


def _encode(message: Message) -> bytes:
    payload = message.payload
    return orjson.dumps(payload if isinstance(payload, dict) else dict(payload))


class DeviceLink:
    """One device's MQTT life: connect, birth, commands, reconnect."""

    __slots__ = (
        "_at",
        "_chosen_drop",
        "_down_until",
        "_killed",
        "conn",
        "endpoints",
        "firmware",
        "fleet",
        "password",
        "username",
    )

    def __init__(
        self,
        firmware: _Firmware,
        endpoint: Endpoint | Sequence[Endpoint],
        fleet: Fleet,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.firmware = firmware
        # The home node first, then the fallbacks in the order tried.
        self.endpoints: tuple[Endpoint, ...] = (
            (endpoint,) if isinstance(endpoint, Endpoint) else tuple(endpoint)
        )
        self._at = 0  # index of the broker connected to, or tried next
        self._chosen_drop = False  # the connection was dropped on purpose (kill): not a dead broker
        self.fleet = fleet
        self.username = username
        self.password = password
        self.conn: mqtt.MqttConnection | None = None
        self._down_until = 0.0  # loop time before which the device stays offline (flapping, kill)
        self._killed = False

    @property
    def endpoint(self) -> Endpoint:
        """The broker connected to, or tried next."""
        return self.endpoints[self._at]

    def _move_on(self) -> None:
        """The broker died or cannot be reached: the next attempt goes to the next one."""
        self._at = (self._at + 1) % len(self.endpoints)

    @property
    def device_id(self) -> str:
        """The device id, also its client id and username."""
        return self.firmware.identity.device_id

    @property
    def online(self) -> bool:
        """Connected right now."""
        return self.conn is not None and self.conn.is_open

    def _now_ms(self) -> int:
        if isinstance(self.firmware, LampFirmware):
            self.firmware.sky_offset_ms = self.fleet.clock.sky_offset_ms()
        return self.fleet.clock.now_ms()

    def send(self, messages: Iterable[Message]) -> None:
        """Publish the firmware's messages now; dropped when offline (as a device without a queue)."""
        conn = self.conn
        if conn is None or not conn.is_open:
            return
        fleet = self.fleet
        stats = fleet.stats
        for message in messages:
            qos = message.qos
            if message.channel == "telemetry" and fleet.telemetry_qos > qos:
                qos = fleet.telemetry_qos
            try:
                sent = conn.publish(message.topic, _encode(message), qos=qos, retain=message.retain)
            except mqtt.MqttError:
                return
            if qos:
                sent.add_done_callback(functools.partial(self._acked, message))
            stats.published += 1
            if message.channel == "telemetry":
                stats.telemetry += 1
            elif message.channel == "event":
                stats.events += 1
            elif message.channel == "ack":
                status = message.payload.get("status")
                if status == "applied":
                    stats.applied += 1
                elif status == "rejected":
                    stats.rejected += 1
                elif status == "expired":
                    stats.expired += 1

    def _acked(self, message: Message, done: asyncio.Future[int]) -> None:
        if done.cancelled() or done.exception() is not None:
            return  # the connection ended first: the broker never said it has the message
        self.fleet.stats.acked += 1
        if self.fleet.on_acked is not None:
            self.fleet.on_acked(self.device_id, message)

    def send_raw(self, channel: str, payload: bytes, qos: int = 1) -> bool:
        """Publish raw bytes on one of the device's own topics (malformed-payload tests)."""
        if self.conn is None or not self.conn.is_open:
            return False
        self.conn.publish(f"{self.firmware.identity.topic_prefix}/{channel}", payload, qos=qos)
        self.fleet.stats.published += 1
        return True

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.fleet.stats.commands += 1
        try:
            command: object = orjson.loads(payload)
        except orjson.JSONDecodeError:
            command = None  # rejected by the firmware without an ack: nothing to correlate with
        self.send(self.firmware.handle_command(command, self._now_ms()))

    def tick(self) -> None:
        """Telemetry turn: housekeeping events, then one telemetry message."""
        if self.conn is None or not self.conn.is_open:
            return
        now_ms = self._now_ms()
        fw = self.firmware
        messages = fw.tick(now_ms)
        if isinstance(fw, LampFirmware | BlinkerFirmware):
            messages.append(fw.telemetry(now_ms, self.fleet.rng))
        self.send(messages)

    def kill(self, down_s: float = 0.0) -> None:
        """Silent death: drop the socket without DISCONNECT (the will fires); back after `down_s`."""
        self._down_until = asyncio.get_running_loop().time() + down_s
        self._chosen_drop = True
        if self.conn is not None:
            self.conn.abort()

    def stay_down(self) -> None:
        """Drop the socket (the will fires) and never reconnect."""
        self._killed = True
        self._chosen_drop = True
        if self.conn is not None:
            self.conn.abort()

    def disconnect(self) -> None:
        """Clean end: retained ``offline`` of this connection's bdseq, then DISCONNECT (no will)."""
        self._killed = True
        if self.conn is not None:
            self._say_offline_and_disconnect(self.conn)

    def _say_offline_and_disconnect(self, conn: mqtt.MqttConnection) -> None:
        # docs/protocol.md: a DISCONNECT suppresses the will, so a device leaving cleanly says
        # `offline` itself first; the broker handles the PUBLISH before the DISCONNECT behind it.
        if conn.is_open:
            offline = self.firmware.on_clean_shutdown()
            with contextlib.suppress(mqtt.MqttError):
                conn.publish(offline.topic, _encode(offline), qos=offline.qos, retain=True)
                self.fleet.stats.published += 1
        conn.disconnect()

    async def run(self) -> None:
        """Connect, stay connected, reconnect with capped jittered backoff; until cancelled."""
        fleet = self.fleet
        loop = asyncio.get_running_loop()
        identity = self.firmware.identity
        attempt = 0
        while not self._killed:
            wait_s = self._down_until - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            will = self.firmware.start_session()  # next bdseq; its offline state is the will
            endpoint = self.endpoint
            try:
                async with fleet.connect_slots:
                    conn = await mqtt.connect(
                        endpoint.host,
                        endpoint.port,
                        identity.device_id,
                        keepalive_s=fleet.keepalive_s,
                        username=self.username,
                        password=self.password,
                        will=mqtt.Will(will.topic, _encode(will), qos=1, retain=True),
                        on_message=self._on_message,
                    )
            except mqtt.MqttError as exc:
                fleet.stats.connect_failures += 1
                if isinstance(exc, mqtt.ConnectRefused):
                    fleet.stats.refused += 1
                fleet.stats.last_error = str(exc)
                self._move_on()
                await asyncio.sleep(backoff_delay_s(attempt, rng=fleet.rng))
                attempt += 1
                continue
            if self._killed:
                self._say_offline_and_disconnect(conn)
                return
            attempt = 0
            self._chosen_drop = False
            self.conn = conn
            fleet.stats.connects += 1
            fleet.stats.connected += 1
            try:
                # docs/protocol.md §3: subscribe to the commands, then birth and retained online, so
                # a command sent in answer to the birth finds the subscription (the broker handles
                # the packets of one connection in order). Every connection subscribes again: a new
                # node, or a broker that lost its sessions, knows nothing of the last one.
                with contextlib.suppress(mqtt.MqttError):
                    conn.subscribe(f"{identity.topic_prefix}/cmd", qos=1)
                self.send(self.firmware.on_connected(self._now_ms()))  # birth, then retained online
                await conn.closed
            finally:
                fleet.stats.connected -= 1
                self.conn = None
            if not self._chosen_drop:
                self._move_on()  # the broker dropped us (died, restarted): try the next one
            if not self._killed and self._down_until <= loop.time():
                await asyncio.sleep(backoff_delay_s(attempt, rng=fleet.rng))
                attempt += 1


@dataclass
class _Pair:
    lamp: DeviceLink
    blinker: DeviceLink | None


@dataclass
class Fleet:
    """Many device links on one event loop; ``async with`` connects them and stops them cleanly."""

    endpoints: Sequence[Endpoint]
    interval_s: float = 60.0
    clock: SimClock = field(default_factory=SimClock)
    rng: random.Random = field(default_factory=lambda: random.Random(2022))
    connect_concurrency: int = CONNECT_CONCURRENCY
    kill_on_exit: bool = False
    keepalive_s: int = KEEPALIVE_S
    telemetry_qos: int = 0
    """QoS of telemetry (the firmware sends it at 0; 1 for a stream whose PUBACKs are counted)."""
    on_acked: Callable[[str, Message], None] | None = None
    """Called with the device id and the message when the broker PUBACKs a QoS 1 publish."""
    stats: FleetStats = field(default_factory=FleetStats)
    links: list[DeviceLink] = field(default_factory=list)
    by_id: dict[str, DeviceLink] = field(default_factory=dict)
    connect_slots: asyncio.Semaphore = field(init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 <= self.keepalive_s <= 65535:
            raise ValueError(f"keepalive_s must be 0..65535 (MQTT), got {self.keepalive_s}")
        if self.telemetry_qos not in (0, 1):
            raise ValueError(f"telemetry_qos must be 0 or 1, got {self.telemetry_qos}")
        self.connect_slots = asyncio.Semaphore(self.connect_concurrency)

    # -- building -------------------------------------------------------------------------

    def add(self, firmware: _Firmware, credentials: Mapping[str, str] | None = None) -> DeviceLink:
        """Add one device; its home broker is chosen by district, so a district stays on one broker
        while it lives, and the other brokers follow as its fallbacks (in ring order)."""
        identity = firmware.identity
        ring = tuple(self.endpoints)
        home = int(identity.district_code) // 10 % len(ring)
        password = None if credentials is None else credentials.get(identity.device_id)
        username = identity.device_id if password is not None else None
        link = DeviceLink(firmware, ring[home:] + ring[:home], self, username=username, password=password)
        self.links.append(link)
        self.by_id[identity.device_id] = link
        self.stats.devices += 1
        return link

    def add_placement(
        self,
        placement: Placement,
        *,
        with_blinkers: bool = True,
        credentials: Mapping[str, str] | None = None,
    ) -> None:
        """Add every lamp of a placement and, unless told otherwise, its paired blinker."""
        for lamp in placement.lamps:
            self.add(
                LampFirmware(
                    DeviceIdentity(
                        lamp.lamp_id,
                        lamp.district_code,
                        "lamp",
                        lamp.lat_deg,
                        lamp.lon_deg,
                        LAMP_MODEL,
                        lamp.blinker_id if with_blinkers else None,
                    )
                ),
                credentials,
            )
            if with_blinkers:
                self.add(
                    BlinkerFirmware(
                        DeviceIdentity(
                            lamp.blinker_id,
                            lamp.district_code,
                            "blinker",
                            lamp.lat_deg,
                            lamp.lon_deg,
                            BLINKER_MODEL,
                            lamp.lamp_id,
                        )
                    ),
                    credentials,
                )

    def lamps(self) -> Iterator[DeviceLink]:
        """Links of lamps."""
        return (link for link in self.links if isinstance(link.firmware, LampFirmware))

    def blinkers(self) -> Iterator[DeviceLink]:
        """Links of blinkers."""
        return (link for link in self.links if isinstance(link.firmware, BlinkerFirmware))

    def firmware(self, device_id: str) -> _Firmware:
        """The firmware of one device."""
        return self.by_id[device_id].firmware

    # -- running --------------------------------------------------------------------------

    @property
    def requested_rate_per_s(self) -> float:
        """Telemetry messages per second the fleet is asked for."""
        return len(self.links) / self.interval_s if self.interval_s > 0 else 0.0

    async def __aenter__(self) -> Fleet:
        for link in self.links:
            self._tasks.append(asyncio.create_task(link.run(), name=f"device {link.device_id}"))
        self._tasks.append(asyncio.create_task(self._telemetry_loop(), name="telemetry scheduler"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(kill=self.kill_on_exit)

    async def stop(self, *, kill: bool = False) -> None:
        """Disconnect every device (``kill``: drop sockets so wills fire) and end the tasks."""
        for link in self.links:
            if kill:
                link.stay_down()
            else:
                link.disconnect()
        await asyncio.sleep(0.2)  # let the DISCONNECTs leave before the transports go
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def wait_connected(self, count: int | None = None, timeout_s: float = 60.0) -> bool:
        """Wait until `count` (default: all) devices are connected; False on timeout."""
        want = len(self.links) if count is None else count
        deadline = time.monotonic() + timeout_s
        while self.stats.connected < want:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    async def _telemetry_loop(self) -> None:
        """Round-robin over the devices, at len(devices) / interval_s messages a second.

        Credit accumulates with elapsed time, so changing ``interval_s`` (a burst) takes effect at
        once without a jump, and a slow loop turn catches up instead of losing turns.
        """
        loop = asyncio.get_running_loop()
        last = loop.time()
        credit = 0.0
        cursor = 0
        while True:
            await asyncio.sleep(SCHEDULER_TICK_S)
            now = loop.time()
            n = len(self.links)
            if n == 0 or self.interval_s <= 0:
                last = now
                continue
            # At most one round per turn: a fleet asked for more than it can send saturates
            # instead of falling ever further behind.
            credit = min(credit + (now - last) / self.interval_s * n, float(n))
            last = now
            turns = int(credit)
            credit -= turns
            for _ in range(turns):
                self.links[cursor % n].tick()
                cursor += 1
