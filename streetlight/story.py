"""The scripted evening of ``streetlight up --story``: the whole system, told as it happens.

Dusk falls on the simulated zones and the lamps come on; a resident walks home in safe-walk
mode and the lamps ahead brighten; a lamp fails and a maintenance alert appears; a resident
raises an SOS near a district border, the nearest lamps blink and the console sounds; an
operator acknowledges, dispatches and resolves; the lamps calm down. Every line printed is
read back from the running services (the operators' API), not from the script's intentions.

The simulator runs in this process (its Python API, `firmware_sim.scenarios.Simulation`);
ingest, controller and API are the real services `up` supervises.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from firmware_sim.scenarios import SimConfig, Simulation
from geo.solar import sun_times

T = TypeVar("T")
SEOUL = (37.5665, 126.9780)


@dataclass(frozen=True)
class StoryTiming:
    """How long each act may take; tests shorten them."""

    time_scale: float = 10.0  # the simulated sky runs this much faster than the clock
    dusk_lead_s: float = 8.0  # real seconds before sunset when the story starts
    telemetry_interval_s: float = 5.0
    walk_s: float = 30.0
    wait_s: float = 60.0  # the longest wait for any one thing to show up
    operator_pause_s: float = 3.0  # between the scripted operator's actions
    scripted_operator: bool = True  # False: wait for a person to act in the console


class StoryError(RuntimeError):
    """A step of the story did not happen in time (the message says which)."""


class Story:
    """Plays the evening against a running API at `api_url` and broker at `mqtt_url`."""

    def __init__(
        self,
        *,
        api_url: str,
        mqtt_url: str,
        lamps: int | None = None,
        timing: StoryTiming | None = None,
        operator: tuple[str, str] = ("city", "streetlight"),
        say: Callable[[str], None] = print,
    ) -> None:
        self.api_url = api_url
        self.mqtt_url = mqtt_url
        self.lamps = lamps
        self.timing = timing or StoryTiming()
        self.operator = operator
        self._say = say
        self._t0 = time.monotonic()
        self.facts: dict[str, Any] = {}  # what happened, for a test to check

    def say(self, text: str) -> None:
        self._say(f"[story {time.monotonic() - self._t0:6.1f} s] {text}")

    # -- helpers -------------------------------------------------------------------------------
    async def _until(self, what: str, probe: Callable[[], Awaitable[T | None]], every_s: float = 0.5) -> T:
        deadline = time.monotonic() + self.timing.wait_s
        while time.monotonic() < deadline:
            found = await probe()
            if found:
                return found
            await asyncio.sleep(every_s)
        raise StoryError(f"{what}: not seen within {self.timing.wait_s:.0f} s")

    async def _lamps(self, http: httpx.AsyncClient) -> list[dict[str, Any]]:
        r = await http.get("/v1/lamps")
        r.raise_for_status()
        return list(r.json()["features"])

    async def _lamps_where(
        self, http: httpx.AsyncClient, test: Callable[[dict[str, Any]], bool]
    ) -> list[str]:
        return [f["properties"]["device_id"] for f in await self._lamps(http) if test(f["properties"])]

    def _sky_start_ms(self) -> int:
        lat, lon = SEOUL
        today = datetime.now(UTC).date()
        sunset = sun_times(lat, lon, today).sunset
        assert sunset is not None  # Seoul always has one
        lead_sky_s = self.timing.dusk_lead_s * self.timing.time_scale
        return int(sunset.timestamp() * 1000 - lead_sky_s * 1000)

    # -- the acts ------------------------------------------------------------------------------
    async def play(self) -> dict[str, Any]:
        t = self.timing
        config = SimConfig(
            mqtt_url=self.mqtt_url,
            lamps=self.lamps,
            interval_s=t.telemetry_interval_s,
            api_url=self.api_url,
            sky_start_ms=self._sky_start_ms(),
            time_scale=t.time_scale,
        )
        async with httpx.AsyncClient(base_url=self.api_url, timeout=10.0) as http:
            await self._login(http)
            self.say(
                f"placing {self.lamps or 'the 3,500'} lamps of the 2022 smart-light zones and their blinkers"
            )
            async with Simulation(config) as sim:
                assert sim.placement is not None
                await self._dusk(http, len(sim.placement.lamps))
                await self._walk_home(http, sim)
                await self._lamp_fails(http, sim)
                alert_id = await self._sos(http, sim)
                await self._operator(http, alert_id)
                await self._calm(http)
                self.facts["sim"] = sim.report()
        self.say("the evening is over; the console stays open until Ctrl-C")
        return self.facts

    async def _login(self, http: httpx.AsyncClient) -> None:
        async def ready() -> bool:
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.HTTPError:
                return False

        await self._until("the API answering", ready)
        user, password = self.operator
        r = await http.post("/v1/auth/login", json={"username": user, "password": password})
        r.raise_for_status()
        http.headers["Authorization"] = f"Bearer {r.json()['token']}"
        self.say(f"operator {user!r} logged in to the API (the console shows the same)")

    async def _dusk(self, http: httpx.AsyncClient, placed: int) -> None:
        self.say("it is a few minutes before sunset in Seoul; the lamps are off")

        async def online() -> list[str] | None:
            on = await self._lamps_where(http, lambda p: p.get("kind") == "lamp" and bool(p.get("online")))
            return on if len(on) >= 0.95 * placed else None

        seen = await self._until("lamps online", online)
        self.say(f"{len(seen)} lamps are online and reporting")

        async def lit() -> list[str] | None:
            # Wait for (nearly) all of them: each reports its level at its next telemetry.
            on = await self._lamps_where(
                http, lambda p: p.get("kind") == "lamp" and (p.get("level") or 0) > 0
            )
            return on if len(on) >= 0.9 * len(seen) else None

        on = await self._until("lamps on at dusk", lit)
        self.facts["lamps_on_at_dusk"] = len(on)
        self.say(f"sunset: {len(on)} lamps have switched on by their astronomical clocks")

    async def _walk_home(self, http: httpx.AsyncClient, sim: Simulation) -> None:
        walkers = await sim.add_walkers(1, walk_s=self.timing.walk_s)
        self.say(f"a resident starts walking home in safe-walk mode (walker {walkers[0].number})")

        async def bright() -> list[str] | None:
            return await self._lamps_where(http, lambda p: p.get("state") == "brightened") or None

        lamps = await self._until("lamps brightened for the walker", bright)
        self.facts["brightened"] = lamps
        self.say(f"the lamps around and ahead of the resident brighten to 100 %: {', '.join(lamps[:6])}")

    async def _lamp_fails(self, http: httpx.AsyncClient, sim: Simulation) -> None:
        failed = sim.inject("lamp_failure", 1)
        self.say(f"lamp {failed[0]} fails (its LED driver reports LAMP_FAIL)")

        async def maintenance_alert() -> dict[str, Any] | None:
            r = await http.get("/v1/alerts", params={"status": "open"})
            r.raise_for_status()
            for a in r.json()["alerts"]:
                if a.get("kind") != "sos" and failed[0] in (a.get("device_ids") or []):
                    return dict(a)
            return None

        alert = await self._until("a maintenance alert for the failed lamp", maintenance_alert)
        self.facts["maintenance_alert"] = alert["id"]
        self.say(
            f"maintenance alert {self.facts['maintenance_alert']} appears in the console ({alert['kind']})"
        )

    async def _sos(self, http: httpx.AsyncClient, sim: Simulation) -> str:
        answers = await sim.sos(presses=1, near_border=True)
        if not answers:
            raise StoryError(f"the SOS was not accepted: {sim.api_problem}")
        alert_id = str(answers[0]["alert_id"])
        self.facts["sos"] = alert_id
        district = answers[0]["district"]
        self.say(f"a resident near a district border raises an SOS: alert {alert_id}, district {district}")

        async def detail() -> dict[str, Any] | None:
            r = await http.get(f"/v1/alerts/{alert_id}")
            return dict(r.json()) if r.status_code == 200 else None

        a = (await self._until("the SOS in the operators' API", detail))["alert"]
        centres = a.get("centres") or []
        self.facts["centres"] = list(centres)
        self.say(f"routed to control centre(s) {', '.join(centres)}: {a.get('place_text_en', '')}")
        self.say("the console sounds and flashes for the operators of those districts")

        async def blinking() -> list[str] | None:
            return await self._lamps_where(http, lambda p: p.get("state") == "blinking") or None

        lamps = await self._until("the nearest lamps blinking", blinking)
        self.facts["blinking"] = lamps
        self.say(f"the nearest lamps blink: {', '.join(lamps[:6])}")
        return alert_id

    async def _operator(self, http: httpx.AsyncClient, alert_id: str) -> None:
        if not self.timing.scripted_operator:
            self.say("your turn: acknowledge, dispatch and resolve the SOS in the console")

            async def resolved() -> bool:
                r = await http.get(f"/v1/alerts/{alert_id}")
                return r.status_code == 200 and r.json().get("state") in ("resolved", "cancelled")

            await self._until("the operator resolving the SOS", resolved, every_s=1.0)
            return
        for action, body, text in (
            ("acknowledge", {"note": "calling the resident"}, "acknowledges"),
            (
                "dispatch",
                {"unit": "중부서 112-3", "note": "patrol car on its way"},
                "dispatches police unit 중부서 112-3",
            ),
            ("resolve", {"outcome": "resident met by police, safe"}, "resolves the alert: resident safe"),
        ):
            await asyncio.sleep(self.timing.operator_pause_s)
            r = await http.post(f"/v1/alerts/{alert_id}/{action}", json=body)
            if r.status_code >= 400:
                raise StoryError(f"{action} refused: {r.status_code} {r.text}")
            self.say(f"operator {self.operator[0]!r} {text}")

    async def _calm(self, http: httpx.AsyncClient) -> None:
        async def calm() -> bool:
            return not await self._lamps_where(http, lambda p: p.get("state") == "blinking")

        await self._until("the lamps to stop blinking", calm)
        self.say("the lamps stop blinking and return to their night schedule")
