"""Scenarios: small JSON/YAML files saying which zones, how many walkers, which faults when.

Over 500 lines on purpose: the scenario file format (loading, validation), the steps it may
name and the ``Simulation`` that plays them are one vocabulary; a step added to the format is
added to the player in the same place, and the bundled scenarios are checked against both.

Python API (for tests and ``streetlight up --story``)::

    from firmware_sim import scenarios

    scenarios.names()                               # bundled: normal-night, walk-home, ...
    report = await scenarios.run("walk-home", mqtt_url="mqtt://127.0.0.1:1883",
                                 api_url="http://127.0.0.1:8080")

    # or drive a running simulation step by step:
    async with scenarios.Simulation(scenarios.SimConfig(mqtt_url=url, lamps=200)) as sim:
        await sim.play(scenarios.load("lamp-fault"))
        await sim.sos(presses=2)

A scenario file::

    name: lamp-fault
    description: three lamps fail at night
    lamps: 200            # optional; the command line may override
    zones: [연남동]        # optional selectors (see placement.select_zones)
    night: true           # run the sky at night whatever the clock says
    interval_s: 10
    duration_s: 60
    steps:
      - {at_s: 5, action: fault, fault: lamp_failure, count: 3}

Actions: ``walkers`` (count, walk_s, api), ``fault`` (fault: lamp_failure | supply_loss |
day_burning | clock_skew, count, skew_s), ``clear_faults``, ``power_cut`` (dong, duration_s),
``sos`` (presses, with_walk, near_border), ``malformed`` (devices), ``burst`` (duration_s,
rate_per_s), ``kill`` (count: silent death, the will fires), ``flap`` (count, times, down_s).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from broker import parse_mqtt_url
from geo import Gazetteer
from runtime.logs import get_logger

from . import physics
from .app import AppApiError, SafetyApp
from .firmware import Faults, LampFirmware
from .fleet import KEEPALIVE_S, Endpoint, Fleet, SimClock, load_credentials
from .malformed import malformed_payloads
from .placement import DEFAULT_SEED, Placement, place_lamps
from .residents import StreetGraph, Walker
from .schedule import KST

__all__ = [
    "ACTIONS",
    "SCENARIO_DIR",
    "Scenario",
    "SimConfig",
    "Simulation",
    "Step",
    "load",
    "names",
    "run",
    "tonight_sky_ms",
]

log = get_logger(__name__)
SCENARIO_DIR = Path(__file__).with_name("scenarios")
ACTIONS = (
    "walkers",
    "fault",
    "clear_faults",
    "power_cut",
    "sos",
    "malformed",
    "burst",
    "kill",
    "flap",
)
# A walker's app reports every 1.5 s: within the API's limit of 2 a second, and the 1-2 s of issue 3.
POSITION_EVERY_S = 1.5
# Blinkers hear an app up to the mean detect range; shadowing (3 sigma) reaches a bit further.
SENSE_RADIUS_M = physics.beacon_detect_range_m() * 1.8
# Pressing SOS twice: the second press comes this long after the first, with the same key.
SECOND_PRESS_AFTER_S = 2.0


@dataclass(frozen=True, slots=True)
class Step:
    """One timed action of a scenario."""

    at_s: float
    action: str
    params: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named, timed list of actions, with the fleet it wants."""

    name: str
    description: str = ""
    lamps: int | None = None
    zones: tuple[str, ...] = ()
    night: bool = True
    interval_s: float | None = None
    duration_s: float = 60.0
    steps: tuple[Step, ...] = ()

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> Scenario:
        """Build and check a scenario from parsed JSON/YAML; ValueError names the bad step."""
        steps = []
        for i, raw in enumerate(doc.get("steps") or []):
            action = raw.get("action")
            if action not in ACTIONS:
                raise ValueError(f"step {i}: action must be one of {', '.join(ACTIONS)}, got {action!r}")
            params = {k: v for k, v in raw.items() if k not in ("at_s", "action")}
            steps.append(Step(float(raw.get("at_s", 0.0)), action, params))
        lamps = doc.get("lamps")
        interval = doc.get("interval_s")
        return cls(
            name=str(doc.get("name") or "unnamed"),
            description=str(doc.get("description") or ""),
            lamps=None if lamps is None else int(lamps),
            zones=tuple(str(z) for z in doc.get("zones") or ()),
            night=bool(doc.get("night", True)),
            interval_s=None if interval is None else float(interval),
            duration_s=float(doc.get("duration_s", 60.0)),
            steps=tuple(sorted(steps, key=lambda s: s.at_s)),
        )


def names() -> list[str]:
    """Bundled scenario names."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def load(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name, or a scenario file (YAML or JSON) by path."""
    path = Path(name_or_path)
    if not path.exists():
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"no scenario {name_or_path!r}; bundled: {', '.join(names())}")
    text = path.read_text(encoding="utf-8")
    doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: a scenario is a mapping with name, steps, ...")
    return Scenario.from_dict(doc)


def tonight_sky_ms(now_ms: int | None = None) -> int:
    """22:00 KST of today (Seoul): a sky that is dark for hours, for demos by day."""
    now = datetime.fromtimestamp((now_ms or SimClock.now_ms()) / 1000, KST)
    evening = now.replace(hour=22, minute=0, second=0, microsecond=0)
    if now.hour < 5 or now >= evening:  # already night: keep the real sky
        evening = now
    return int(evening.timestamp() * 1000)


@dataclass
class SimConfig:
    """What to simulate and where: broker(s), fleet size, API, time."""

    mqtt_url: str | None = None
    endpoints: Sequence[Endpoint] = ()
    lamps: int | None = None
    zones: Sequence[str] = ()
    seed: int = DEFAULT_SEED
    id_prefix: str = ""
    interval_s: float | None = None  # None: the scenario's, else 60 s
    with_blinkers: bool = True
    credentials: Path | None = None
    api_url: str | None = None
    night: bool = False
    time_scale: float = 1.0
    kill_on_exit: bool = False
    keepalive_s: int = KEEPALIVE_S  # MQTT keepalive of every device connection
    sky_start_ms: int | None = None  # the sky at this moment when the clock starts (wins over night)

    def resolved_endpoints(self) -> list[Endpoint]:
        """The brokers to use (every node of a ``mqtt://a,mqtt://b`` list: the devices are spread
        over them by district, each with the others as fallbacks); credentials in the URL are
        ignored (devices have their own)."""
        if self.endpoints:
            return list(self.endpoints)
        if self.mqtt_url is None:
            raise ValueError("give mqtt_url or endpoints")
        params = parse_mqtt_url(self.mqtt_url)
        return [Endpoint(address.host, address.port) for address in params.addresses]


@dataclass
class _Outcome:
    t_s: float
    action: str
    detail: dict[str, Any]


@dataclass
class Simulation:
    """A placed fleet on the network, with residents, and the scenario actions."""

    config: SimConfig
    placement: Placement | None = None
    fleet: Fleet = field(init=False)
    graph: StreetGraph = field(init=False)
    log: list[_Outcome] = field(default_factory=list)
    walkers: list[Walker] = field(default_factory=list)
    api_problem: str | None = None
    _http: httpx.AsyncClient | None = None
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    _started: float = 0.0
    _rng: random.Random = field(default_factory=lambda: random.Random(DEFAULT_SEED))

    def __post_init__(self) -> None:
        cfg = self.config
        if self.placement is None:
            self.placement = place_lamps(
                cfg.lamps, zones=cfg.zones or None, seed=cfg.seed, id_prefix=cfg.id_prefix
            )
        sky_start = cfg.sky_start_ms
        if sky_start is None and cfg.night:
            sky_start = tonight_sky_ms()
        clock = SimClock(sky_start_ms=sky_start, time_scale=cfg.time_scale)
        self.fleet = Fleet(
            cfg.resolved_endpoints(),
            interval_s=cfg.interval_s or 60.0,
            clock=clock,
            kill_on_exit=cfg.kill_on_exit,
            keepalive_s=cfg.keepalive_s,
        )
        creds = load_credentials(cfg.credentials) if cfg.credentials is not None else None
        self.fleet.add_placement(self.placement, with_blinkers=cfg.with_blinkers, credentials=creds)
        self.graph = StreetGraph(self.placement)
        self._rng = random.Random(cfg.seed)

    async def __aenter__(self) -> Simulation:
        self._started = time.monotonic()
        if self.config.api_url:
            self._http = httpx.AsyncClient(base_url=self.config.api_url)
        await self.fleet.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.fleet.__aexit__(*exc)
        if self._http is not None:
            await self._http.aclose()

    # -- bookkeeping ----------------------------------------------------------------------

    def _note(self, action: str, **detail: Any) -> None:
        outcome = _Outcome(round(time.monotonic() - self._started, 2), action, detail)
        self.log.append(outcome)
        log.info("scenario_step", action=action, **detail)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def report(self) -> dict[str, Any]:
        """What happened: fleet counters and every step's outcome."""
        return {
            "lamps": len(self.placement or ()),
            "devices": len(self.fleet.links),
            "stats": self.fleet.stats.as_dict(),
            "api": self.api_problem or ("used" if self._http else "not given"),
            "steps": [{"t_s": o.t_s, "action": o.action, **o.detail} for o in self.log],
        }

    def _lamp_links(self, count: int, dong: str | None = None) -> list[Any]:
        lamps = [link for link in self.fleet.lamps() if link.online]
        if dong is not None:
            assert self.placement is not None
            in_dong = {p.lamp_id for p in self.placement.lamps if p.dong_code == dong}
            lamps = [link for link in lamps if link.device_id in in_dong]
        return self._rng.sample(lamps, min(count, len(lamps)))

    # -- scenario -------------------------------------------------------------------------

    async def play(self, scenario: Scenario) -> dict[str, Any]:
        """Run a scenario's steps at their times, then wait out its duration; returns the report."""
        if scenario.interval_s is not None and self.config.interval_s is None:
            self.fleet.interval_s = scenario.interval_s
        await self.fleet.wait_connected(timeout_s=120)
        start = time.monotonic()
        self._note("scenario", name=scenario.name, connected=self.fleet.stats.connected)
        for step in scenario.steps:
            delay = start + step.at_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.do(step.action, **step.params)
        rest = start + scenario.duration_s - time.monotonic()
        if rest > 0:
            await asyncio.sleep(rest)
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
        return self.report()

    async def do(self, action: str, **params: Any) -> None:
        """Perform one action by name (the scenario files' vocabulary)."""
        if action == "walkers":
            await self.add_walkers(
                int(params.get("count", 1)), float(params.get("walk_s", 60)), params.get("api", True)
            )
        elif action == "fault":
            self.inject(str(params.get("fault", "lamp_failure")), int(params.get("count", 1)), params)
        elif action == "clear_faults":
            self.clear_faults()
        elif action == "power_cut":
            self.power_cut(params.get("dong"), float(params.get("duration_s", 60)))
        elif action == "sos":
            await self.sos(
                presses=int(params.get("presses", 1)),
                with_walk=bool(params.get("with_walk", False)),
                near_border=bool(params.get("near_border", False)),
            )
        elif action == "malformed":
            self.malformed(int(params.get("devices", 1)))
        elif action == "burst":
            self.burst(float(params.get("duration_s", 10)), float(params.get("rate_per_s", 1000)))
        elif action == "kill":
            self.kill(int(params.get("count", 1)))
        elif action == "flap":
            self.flap(
                int(params.get("count", 1)), int(params.get("times", 3)), float(params.get("down_s", 2))
            )
        else:
            raise ValueError(f"unknown action {action!r}")

    # -- actions --------------------------------------------------------------------------

    async def add_walkers(self, count: int, walk_s: float = 60.0, use_api: bool = True) -> list[Walker]:
        """Residents start walking home; with an API they use safe-walk mode like the app."""
        started = []
        for _ in range(count):
            walker = Walker.start(len(self.walkers) + 1, self.graph, random.Random(self._rng.getrandbits(64)))
            self.walkers.append(walker)
            started.append(walker)
            self._spawn(self._walk(walker, walk_s, use_api), f"walker {walker.number}")
        self._note("walkers", count=count, walk_s=walk_s, api=bool(use_api and self._http))
        return started

    async def _app(self) -> SafetyApp | None:
        if self._http is None:
            return None
        app = SafetyApp(self._http)
        try:
            await app.register()
        except AppApiError as exc:
            self._api_failed(exc)
            return None
        return app

    def _api_failed(self, exc: AppApiError) -> None:
        if self.api_problem is None:
            log.warning("app_api_unavailable", error=str(exc))  # residents walk without it
        self.api_problem = str(exc)

    async def _walk(self, walker: Walker, walk_s: float, use_api: bool) -> None:
        app = await self._app() if use_api else None
        walk_id: str | None = None
        if app is not None:
            try:
                walk_id = str((await app.start_walk(walker.gps_fix()))["walk_id"])
                walker.extra["walk_id"] = walk_id
            except (AppApiError, KeyError) as exc:
                self._api_failed(
                    exc if isinstance(exc, AppApiError) else AppApiError("start walk", None, repr(exc))
                )
                app = None
        loop = asyncio.get_running_loop()
        end = loop.time() + walk_s
        last = loop.time()
        while loop.time() < end:
            await asyncio.sleep(POSITION_EVERY_S)
            now = loop.time()
            walker.step(now - last)
            last = now
            self._sense(walker)
            if app is not None and walk_id is not None:
                try:
                    await app.position(walk_id, walker.gps_fix())
                except AppApiError as exc:
                    self._api_failed(exc)
        if app is not None and walk_id is not None:
            with contextlib.suppress(AppApiError):
                await app.end_walk(walk_id)
        self._note("walk_end", walker=walker.number, walked_m=round(walker.walked_m, 1), walk_id=walk_id)

    def _sense(self, walker: Walker) -> None:
        assert self.placement is not None
        distances = self.graph.distances_from(walker.x, walker.y)
        now_ms = self.fleet.clock.now_ms()
        for i in (distances <= SENSE_RADIUS_M).nonzero()[0].tolist():
            link = self.fleet.by_id.get(self.placement.lamps[i].blinker_id)
            if link is not None and link.online:
                fw = link.firmware
                assert hasattr(fw, "observe")
                link.send(fw.observe(walker.token_hash, float(distances[i]), now_ms, self._rng))

    def inject(self, fault: str, count: int, params: Mapping[str, Any] | None = None) -> list[str]:
        """Inject a fault into `count` online lamps; returns their ids."""
        params = params or {}
        if fault == "lamp_failure":
            faults = Faults(lamp_failure=True)
        elif fault == "supply_loss":
            faults = Faults(supply_loss=True)
        elif fault == "day_burning":
            faults = Faults(day_burning=True)
        elif fault == "clock_skew":
            faults = Faults(clock_skew_ms=int(float(params.get("skew_s", 600)) * 1000))
        else:
            raise ValueError(f"unknown fault {fault!r}: lamp_failure, supply_loss, day_burning, clock_skew")
        links = self._lamp_links(count)
        now_ms = self.fleet.clock.now_ms()
        for link in links:
            link.send(link.firmware.inject(faults, now_ms))
        self._note("fault", fault=fault, devices=[link.device_id for link in links])
        return [link.device_id for link in links]

    def clear_faults(self) -> None:
        """Every device back to health."""
        now_ms = self.fleet.clock.now_ms()
        for link in self.fleet.links:
            if link.firmware.faults != Faults():
                link.send(link.firmware.inject(Faults(), now_ms))
        self._note("clear_faults")

    def power_cut(self, dong: str | None = None, duration_s: float = 60.0) -> list[str]:
        """Mass outage in one neighbourhood: lamps send a last-gasp power_loss and drop off (their
        wills fire); blinkers stay up on battery and report power_loss; all recover after `duration_s`."""
        assert self.placement is not None
        dong = dong or self.placement.lamps[0].dong_code
        lamps = [p for p in self.placement.lamps if p.dong_code == dong]
        now_ms = self.fleet.clock.now_ms()
        cut: list[str] = []
        for p in lamps:
            for device_id in (p.lamp_id, p.blinker_id):
                link = self.fleet.by_id.get(device_id)
                if link is None:
                    continue
                link.send(link.firmware.inject(Faults(supply_loss=True), now_ms))
                cut.append(device_id)
                if isinstance(link.firmware, LampFirmware):
                    # The last gasp leaves first; the socket dies with the mains a moment later.
                    asyncio.get_running_loop().call_later(0.5, link.kill, duration_s)
        self._spawn(self._restore(cut, duration_s), f"restore power {dong}")
        self._note("power_cut", dong=dong, lamps=len(lamps), duration_s=duration_s)
        return cut

    async def _restore(self, device_ids: list[str], after_s: float) -> None:
        await asyncio.sleep(after_s)
        now_ms = self.fleet.clock.now_ms()
        for device_id in device_ids:
            link = self.fleet.by_id[device_id]
            link.send(link.firmware.inject(Faults(), now_ms))
        self._note("power_restored", devices=len(device_ids))

    async def sos(self, presses: int = 1, with_walk: bool = False, near_border: bool = False) -> list[Any]:
        """A resident presses SOS (once or more with one key), maybe mid-walk, maybe near a border."""
        at = self._border_lamp() if near_border else None
        walker = Walker.start(
            len(self.walkers) + 1, self.graph, random.Random(self._rng.getrandbits(64)), at=at
        )
        self.walkers.append(walker)
        app = await self._app()
        if app is None:
            self._note("sos", skipped=self.api_problem or "SOS needs the Safety-app API (--api-url)")
            return []
        answers: list[Any] = []
        walk_id = None
        try:
            if with_walk:
                walk_id = str((await app.start_walk(walker.gps_fix()))["walk_id"])
                for _ in range(3):
                    await asyncio.sleep(POSITION_EVERY_S)
                    walker.step(POSITION_EVERY_S)
                    await app.position(walk_id, walker.gps_fix())
            key = str(uuid.uuid4())
            for press in range(presses):
                if press:
                    await asyncio.sleep(SECOND_PRESS_AFTER_S)
                answers.append(await app.sos(walker.gps_fix(), walk_id, idempotency_key=key))
        except (AppApiError, KeyError) as exc:
            self._api_failed(exc if isinstance(exc, AppApiError) else AppApiError("sos", None, repr(exc)))
        lat, lon = walker.true_latlon()
        self._note(
            "sos",
            presses=presses,
            with_walk=with_walk,
            near_border=near_border,
            lat=round(lat, 6),
            lon=round(lon, 6),
            answers=answers,
        )
        return answers

    def _border_lamp(self) -> int | None:
        assert self.placement is not None
        gaz = Gazetteer.load()
        for i, p in enumerate(self.placement.lamps):
            if gaz.locate(p.lat_deg, p.lon_deg).neighbours:
                return i
        return None

    def malformed(self, devices: int = 1) -> int:
        """Publish every malformed variant of a telemetry payload from `devices` lamps (marked as such)."""
        sent = 0
        now_ms = self.fleet.clock.now_ms()
        for link in self._lamp_links(devices):
            fw = link.firmware
            assert isinstance(fw, LampFirmware)
            seq = fw.seq
            valid = fw.telemetry(now_ms, self._rng).to_payload()
            fw.seq = seq  # the sample is not sent: keep the device's real seq without a gap
            for bad in malformed_payloads(valid):
                sent += link.send_raw("telemetry", bad.raw)
        self._note("malformed", devices=devices, payloads=sent)
        return sent

    def burst(self, duration_s: float, rate_per_s: float) -> None:
        """Telemetry at `rate_per_s` over the fleet for `duration_s`, then back to the interval."""
        normal = self.fleet.interval_s
        self.fleet.interval_s = len(self.fleet.links) / rate_per_s
        asyncio.get_running_loop().call_later(duration_s, setattr, self.fleet, "interval_s", normal)
        self._note("burst", rate_per_s=rate_per_s, duration_s=duration_s)

    def kill(self, count: int) -> list[str]:
        """Silent death of `count` lamps: sockets dropped without DISCONNECT, wills fire, no return."""
        links = self._lamp_links(count)
        for link in links:
            link.stay_down()
        self._note("kill", devices=[link.device_id for link in links])
        return [link.device_id for link in links]

    def flap(self, count: int, times: int = 3, down_s: float = 2.0) -> list[str]:
        """Flapping connections: `count` lamps drop and come back `times` times."""
        links = self._lamp_links(count)
        loop = asyncio.get_running_loop()
        for link in links:
            for k in range(times):
                loop.call_later(k * (down_s + 5.0), link.kill, down_s)
        self._note("flap", devices=[link.device_id for link in links], times=times, down_s=down_s)
        return [link.device_id for link in links]

    def status_line(self) -> str:
        """One line: connected, messages, commands."""
        s = self.fleet.stats
        return (
            f"connected {s.connected}/{s.devices}  published {s.published}  telemetry {s.telemetry}  "
            f"events {s.events}  commands {s.commands} (applied {s.applied}, rejected {s.rejected}, "
            f"expired {s.expired})  walkers {len(self.walkers)}"
        )


async def run(
    name: str | Path,
    *,
    mqtt_url: str | None = None,
    endpoints: Sequence[Endpoint] = (),
    api_url: str | None = None,
    lamps: int | None = None,
    zones: Sequence[str] = (),
    credentials: Path | None = None,
    interval_s: float | None = None,
    id_prefix: str = "",
    seed: int = DEFAULT_SEED,
) -> dict[str, Any]:
    """Place a fleet, connect it, play one scenario, disconnect cleanly; returns the report."""
    scenario = load(name)
    config = SimConfig(
        mqtt_url=mqtt_url,
        endpoints=endpoints,
        lamps=lamps if lamps is not None else scenario.lamps,
        zones=zones or scenario.zones,
        seed=seed,
        id_prefix=id_prefix,
        interval_s=interval_s,
        credentials=credentials,
        api_url=api_url,
        night=scenario.night,
    )
    async with Simulation(config) as sim:
        return await sim.play(scenario)
