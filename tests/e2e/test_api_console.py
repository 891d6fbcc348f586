"""The console in headless Chromium: the simulator's Safety app raises an SOS, it appears live
with its banner, the operator acknowledges and dispatches from the browser, the database and the
resident see it, a district operator never sees another district's alert; the lamp panel's 24 h
chart shows level, power and online per hour, and the operators' commands to the lamp with their
status, live; keyboard shortcuts and the language toggle work.
The map (Leaflet): lamps, SOS and outages as layers the layer control toggles, zoom and pan by
keyboard, tiles from the configured tile server, the district polygons as the map when none is
configured (no request then leaves for another server) or when it does not answer; the cameras
near the selected SOS as a layer with their stream links."""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psycopg
import pytest

from api.accounts import create_operator
from api.config import CameraStreams, MapTiles
from api.security import password_hasher
from devkit.apiclient import GANGNAM, JUNG, PASSWORD, fast_config, resident, seed, serve
from firmware_sim.app import SafetyApp
from firmware_sim.residents import GpsFix
from store.commands import record_ack, settle_unsent
from store.jobs import refresh_rollups
from store.writer import TelemetryRow, write_telemetry
from tests.e2e.cdp import Browser
from tests.e2e.conftest import log_in
from tests.integration.test_cameras import JUNG_UTF8, SOS, TEMPLATE, import_cameras

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LAMPS = [
    ("e2e-j1", "11020", JUNG[0], JUNG[1] + 0.0001),
    ("e2e-j2", "11020", JUNG[0] + 0.0003, JUNG[1]),
    ("e2e-g1", "11230", GANGNAM[0], GANGNAM[1] + 0.0001),
]


# The SOS must reach the console within this long of the API's 202. Measured from the 202 (wall
# clock in Python) to the moment the alert's row and the banner were in the page (wall clock
# stamped in the page by a MutationObserver), so CDP polling adds nothing. Measured on this 2-core
# machine: 16-33 ms idle (6 runs); 45-190 ms with four busy-looping processes on the two cores
# (15 runs). The 1 s holds with a wide margin, so no extra allowance (docs/api.md).
SOS_TO_CONSOLE_S = 1.0

# Stamps Date.now() on the first render of each alert row while the SOS banner shows.
WATCH_ALERTS_JS = """(() => {
  window.__seenAt = {};
  new MutationObserver(() => {
    const banner = !document.getElementById('sos-banner').hidden;
    document.querySelectorAll('#alert-list li[data-alert-id]').forEach((li) => {
      const id = li.dataset.alertId;
      if (banner && !(id in window.__seenAt)) window.__seenAt[id] = Date.now();
    });
  }).observe(document.getElementById('console-view'), {childList: true, subtree: true, attributes: true});
  return true;
})()"""


# Content-Security-Policy violations (a blocked tile, script or style) collected in the page.
WATCH_CSP_JS = """(() => {
  window.__csp = [];
  document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  return true;
})()"""

# Every URL the page fetched (documents, scripts, styles, images, XHR) that is not on ``origin``.
FOREIGN_REQUESTS_JS = """((origin) => performance.getEntriesByType('resource').map((e) => e.name)
  .filter((u) => !u.startsWith(origin + '/') && !u.startsWith('data:')))"""

LAYER_INPUT = ".leaflet-control-layers label:has([data-layer={name!r}]) input"


# The map is still: no zoom or pan animation running (Leaflet ignores a zoom asked during one).
MAP_IDLE = "(!S.map._animatingZoom && !(S.map._panAnim && S.map._panAnim._inProgress))"


def check_map_keys_and_layers(browser: Browser) -> None:
    """Zoom and pan with the keyboard (Leaflet's keys on the focused map, the console's + - and Z
    anywhere), and the layer control hides and shows a layer."""
    browser.evaluate("document.activeElement && document.activeElement.blur(), true")
    home = browser.evaluate("S.map.getBoundsZoom(MapView.state.home, false, L.point(20, 20))")
    browser.press("z")
    browser.wait_for(f"S.map.getZoom() === {home} && {MAP_IDLE}")
    browser.press("+", key_code=187)  # the console's key: the focus is not on the map
    browser.wait_for(f"S.map.getZoom() === {home + 1} && {MAP_IDLE}")
    browser.evaluate("document.getElementById('map').focus(), true")
    browser.wait_for("document.activeElement.id === 'map'")
    browser.press("+", key_code=187)  # Leaflet's key on the focused map: one step, not two
    browser.wait_for(f"S.map.getZoom() === {home + 2} && {MAP_IDLE}")
    time.sleep(0.3)
    assert browser.evaluate("S.map.getZoom()") == home + 2
    west = browser.evaluate("S.map.getCenter().lng")
    browser.press("ArrowLeft", key_code=37)
    browser.wait_for(f"S.map.getCenter().lng < {west} - 1e-5 && {MAP_IDLE}")
    north = browser.evaluate("S.map.getCenter().lat")
    browser.press("ArrowUp", key_code=38)
    browser.wait_for(f"S.map.getCenter().lat > {north} + 1e-5 && {MAP_IDLE}")
    browser.press("-", key_code=189)
    browser.wait_for(f"S.map.getZoom() === {home + 1} && {MAP_IDLE}")
    browser.press("z")  # the whole district again
    browser.wait_for(f"S.map.getZoom() === {home} && {MAP_IDLE}")
    browser.evaluate("document.activeElement && document.activeElement.blur(), true")

    # The layer control: lamps off and on again (with their ids), the SOS stays above the lamps.
    lamps = "document.querySelectorAll('#map-lamps path.lamp[data-device-id]').length"
    shown = browser.evaluate(lamps)
    assert shown > 0
    browser.click(LAYER_INPUT.format(name="lamps"))
    browser.wait_for(f"{lamps} === 0 && !S.map.hasLayer(MapView.state.layers.lamps)")
    assert browser.evaluate("document.querySelectorAll('#map-sos .sos-core').length") >= 1
    browser.click(LAYER_INPUT.format(name="lamps"))
    browser.wait_for(f"{lamps} === {shown}")
    z = browser.evaluate(
        "['lamps', 'walkers', 'outages', 'sos'].map((p) => Number(S.map.getPane(p).style.zIndex))"
    )
    assert z[3] > max(z[:3]), z


def sos(c: httpx.Client, headers: dict[str, str], at: tuple[float, float]) -> str:
    r = c.post("/v1/sos", json={"lat": at[0], "lon": at[1], "accuracy_m": 8.0}, headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["alert_id"])


class SimResident:
    """One simulated resident: the simulator's Safety-app client (``firmware_sim.app.SafetyApp``)
    on its own event loop, so a synchronous test can press SOS."""

    def __init__(self, base_url: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._http = httpx.AsyncClient(base_url=base_url, event_hooks={"request": [self._sent]})
        self.app = SafetyApp(self._http)
        self.headers: dict[str, str] = {}  # the app's bearer token, as it sent it
        self._loop.run_until_complete(self.app.register())

    async def _sent(self, request: httpx.Request) -> None:
        if "Authorization" in request.headers:
            self.headers = {"Authorization": request.headers["Authorization"]}

    def sos(self, at: tuple[float, float]) -> tuple[str, float]:
        """Press SOS at ``at``; the alert id and the wall-clock time the API answered 202."""

        async def press() -> tuple[str, float]:
            answer = await self.app.sos(
                GpsFix(lat=at[0], lon=at[1], accuracy_m=8.0, heading_deg=0.0, speed_mps=0.0)
            )
            return str(answer["alert_id"]), time.time()

        return self._loop.run_until_complete(press())

    def close(self) -> None:
        self._loop.run_until_complete(self._http.aclose())
        self._loop.close()


@contextmanager
def sim_resident(base_url: str) -> Iterator[SimResident]:
    r = SimResident(base_url)
    try:
        yield r
    finally:
        r.close()


def _hour(dt: datetime) -> datetime:
    return dt.replace(minute=0, second=0, microsecond=0)


def telemetry_history(db_url: str, device_id: str, now: datetime) -> dict[str, float | None]:
    """A lamp that reported every minute 3 hours ago, half of 2 hours ago and not at all an hour
    ago; the hourly rollups refreshed. Returns the chart's expected uptime per hour (ISO, as the
    page writes it; None: before the first record)."""
    h = _hour(now)
    rows: list[TelemetryRow] = []
    seq = 0
    for hours_ago, minutes in ((3, 60), (2, 30)):
        for m in range(minutes):
            seq += 1
            ts_ms = int((h - timedelta(hours=hours_ago, minutes=-m)).timestamp() * 1000)
            rows.append(
                (ts_ms, device_id, 1, seq, 70, 42.0, 220.0, 0.19, 12.0, 1.0, [], -70.0, None, False, None)
            )
    with psycopg.connect(db_url, autocommit=True) as conn:
        write_telemetry(conn, rows)
        refresh_rollups(conn, start=h - timedelta(hours=5), end=h + timedelta(hours=1), now=now)

    def iso(dt: datetime) -> str:
        return dt.strftime("%Y-%m-%dT%H:00:00.000Z")

    return {
        iso(h - timedelta(hours=4)): None,
        iso(h - timedelta(hours=3)): 1.0,
        iso(h - timedelta(hours=2)): 0.5,
        iso(h - timedelta(hours=1)): 0.0,
    }


def test_operator_sees_an_sos_live_and_acknowledges_and_dispatches_it(
    browser: Browser, db_url: str, output_dir: Path
) -> None:
    seed(db_url, LAMPS)
    expected_uptime = telemetry_history(db_url, "e2e-j2", datetime.now(UTC))
    with (
        serve(fast_config(db_url)) as base,
        httpx.Client(base_url=base, timeout=10.0) as c,
        sim_resident(base) as walker,
    ):
        browser.viewport(1440, 900)
        browser.goto(base + "/")
        browser.evaluate(WATCH_CSP_JS)
        browser.evaluate("localStorage.setItem('sl.lang', 'ko'), true")
        log_in(browser)
        browser.wait_for("document.querySelector('#conn.up') !== null")
        browser.wait_for("document.querySelectorAll('#map-areas path').length > 0")
        browser.wait_for("document.querySelectorAll('#map-lamps path.lamp[data-device-id]').length === 2")
        browser.evaluate(WATCH_ALERTS_JS)

        elsewhere = sos(c, resident(c), GANGNAM)  # another district's SOS, raised first
        alert_id, answered_at = walker.sos(JUNG)  # the simulator's Safety app presses SOS
        seen_at_ms = browser.wait_for(f"window.__seenAt[{alert_id!r}]", timeout_s=10.0)
        seen_after_s = seen_at_ms / 1000.0 - answered_at
        print(f"SOS in the console {seen_after_s * 1000:.0f} ms after the API's 202")
        assert seen_after_s < SOS_TO_CONSOLE_S, f"the SOS took {seen_after_s:.2f} s to reach the console"
        assert browser.evaluate("!document.getElementById('sos-banner').hidden")
        assert browser.evaluate("document.getElementById('sos-banner-count').textContent") == "1"
        assert browser.evaluate("document.title").startswith("(1) SOS")
        assert browser.evaluate(f"document.querySelector('[data-alert-id=\"{elsewhere}\"]') === null")
        sos_core = f'#map-sos .sos-core[data-alert-id="{alert_id}"]'
        browser.wait_for(f"document.querySelector({sos_core!r}) !== null")
        assert browser.evaluate("document.querySelectorAll('#map-sos .sos-core').length") == 1
        assert browser.evaluate("S.beepTimer !== null"), "no repeating audible signal while the SOS is open"

        browser.click(f'[data-alert-id="{alert_id}"]')
        browser.wait_for("document.querySelector('#detail[data-state=\"open\"]') !== null")
        assert "중구" in browser.evaluate("document.getElementById('detail-place-ko').textContent")

        # The lamp panel: level bars, a power line and online as uptime per hour, from the rollups.
        # (The map has moved to the SOS's street block: the click waits until it stands still.)
        browser.wait_for(MAP_IDLE)
        browser.click('#map-lamps [data-device-id="e2e-j2"]')
        browser.wait_for("document.querySelector('#lamp-panel[data-device-id=\"e2e-j2\"]') !== null")
        strip = browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#lamp-chart [data-hour]')]"
            ".map((r) => [r.dataset.hour, r.dataset.up]))"
        )
        for hour, up in expected_uptime.items():
            assert strip.get(hour) == ("" if up is None else f"{up:.2f}"), (hour, strip)
        assert browser.evaluate("document.querySelectorAll('#lamp-chart rect.level').length") == 2
        assert browser.evaluate("document.querySelectorAll('#lamp-chart path.power').length") == 1
        browser.screenshot(output_dir / "console-sos-open.png")

        browser.click("#btn-ack")
        browser.wait_for("document.querySelector('#detail[data-state=\"acknowledged\"]') !== null")
        assert browser.evaluate("document.getElementById('sos-banner').hidden")
        assert browser.evaluate("S.beepTimer === null"), "the audible signal goes on after acknowledge"
        with psycopg.connect(db_url) as conn:
            acked = conn.execute(
                "SELECT status, acknowledged_by FROM alerts WHERE alert_id = %s", (alert_id,)
            ).fetchone()
        assert acked == ("acknowledged", "operator:op-jung")
        status = c.get(f"/v1/sos/{alert_id}", headers=walker.headers).json()
        assert status["acknowledged"] and not status["dispatched"], status

        browser.type("#dispatch-unit", "중부서 112-3")
        browser.click("#btn-dispatch")
        browser.wait_for("document.querySelector('#detail[data-state=\"dispatched\"]') !== null")
        browser.wait_for(
            f"document.querySelector('[data-alert-id=\"{alert_id}\"]').dataset.state === 'dispatched'"
        )
        browser.screenshot(output_dir / "console-sos-dispatched.png")

        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT status, acknowledged_by FROM alerts WHERE alert_id = %s", (alert_id,)
            ).fetchone()
            events = conn.execute(
                "SELECT action, actor, details->>'unit' FROM alert_events WHERE alert_id = %s ORDER BY id",
                (alert_id,),
            ).fetchall()
            other = conn.execute("SELECT status FROM alerts WHERE alert_id = %s", (elsewhere,)).fetchone()
        assert row == ("dispatched", "operator:op-jung")
        assert ("acknowledged", "operator:op-jung", None) in events
        assert ("dispatched", "operator:op-jung", "중부서 112-3") in events
        assert other == ("open",)
        status = c.get(f"/v1/sos/{alert_id}", headers=walker.headers).json()
        assert status["acknowledged"] and status["dispatched"] and status["unit"] == "중부서 112-3"

        # English labels with L, back to Korean with L.
        browser.evaluate("document.activeElement && document.activeElement.blur(), true")
        browser.press("l")
        browser.wait_for("document.documentElement.lang === 'en'")
        assert browser.evaluate("document.getElementById('detail-state').textContent") == "dispatched"
        assert browser.evaluate("document.getElementById('btn-ack').textContent") == "Acknowledge (A)"
        assert (
            browser.evaluate(
                "document.querySelector('.leaflet-control-layers [data-layer=\"lamps\"]').textContent"
            )
            == "Lamps"
        )
        browser.press("l")
        browser.wait_for("document.documentElement.lang === 'ko'")
        assert browser.evaluate("document.getElementById('detail-state').textContent") == "출동"

        check_map_keys_and_layers(browser)
        # No tile server configured: the polygons are the map and nothing is asked of another server.
        assert browser.evaluate("document.getElementById('map').dataset.base") == "offline"
        assert browser.evaluate("document.querySelectorAll('.leaflet-tile').length") == 0
        assert browser.evaluate(f"{FOREIGN_REQUESTS_JS}({base!r})") == []
        assert browser.evaluate("window.__csp") == []

        # The console reconnects by itself and catches up on what happened meanwhile; the key A
        # acknowledges the open SOS without the mouse. The page's reconnect is held until the SOS
        # is in (its backoff can be ~0 ms: a poll could miss the outage, the SOS could come live).
        browser.evaluate("window.__connect = connect, connect = () => { window.__held = true; }, true")
        browser.evaluate("S.ws.close(), true")
        browser.wait_for("window.__held === true", timeout_s=15.0)
        assert browser.evaluate("document.querySelector('#conn.down') !== null")
        with sim_resident(base) as other_walker:
            later, _ = other_walker.sos(JUNG)
            assert browser.evaluate(f"document.querySelector('[data-alert-id=\"{later}\"]') === null")
            browser.evaluate("connect = window.__connect, connect(), true")
            browser.wait_for("document.querySelector('#conn.up') !== null", timeout_s=15.0)
            browser.wait_for(f"document.querySelector('[data-alert-id=\"{later}\"]') !== null", timeout_s=5.0)
            browser.wait_for("!document.getElementById('sos-banner').hidden")
            browser.press("a")
            browser.wait_for(
                f"document.querySelector('[data-alert-id=\"{later}\"]').dataset.state === 'acknowledged'"
            )
            assert browser.evaluate("document.getElementById('sos-banner').hidden")
            status = c.get(f"/v1/sos/{later}", headers=other_walker.headers).json()
            assert status["acknowledged"], status


def test_a_burst_of_sos_from_one_address_is_marked_below_the_real_one_and_logout_ends_the_session(
    browser: Browser, db_url: str
) -> None:
    seed(db_url, LAMPS)
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        browser.viewport(1440, 900)
        browser.goto(base + "/")
        log_in(browser)
        browser.wait_for("document.querySelector('#conn.up') !== null")
        farm_transport = httpx.HTTPTransport(local_address="127.0.0.9")
        with httpx.Client(base_url=base, timeout=10.0, transport=farm_transport) as farm:
            burst = [sos(farm, resident(farm), JUNG) for _ in range(3)]
        real_transport = httpx.HTTPTransport(local_address="127.0.0.10")
        with httpx.Client(base_url=base, timeout=10.0, transport=real_transport) as phone:
            real = sos(phone, resident(phone), JUNG)
        browser.wait_for(
            f"document.querySelector('[data-alert-id=\"{real}\"]') !== null"
            " && document.querySelectorAll('#alert-list li[data-burst]').length === 3"
        )
        order = browser.evaluate(
            "[...document.querySelectorAll('#alert-list li')].map((li) => li.dataset.alertId)"
        )
        # Every member of the group is marked, the first too: arrival order ranks none of them.
        assert order[0] == real and set(order[1:]) == set(burst)
        for member in burst:
            marked = browser.evaluate(
                f"document.querySelector('[data-alert-id=\"{member}\"] .kind').textContent"
            )
            assert "burst?" in marked or "일괄 의심" in marked  # English or Korean labels
        # A takes the oldest SOS that is not a suspected burst: the real one.
        browser.press("a")
        browser.wait_for(
            f"document.querySelector('[data-alert-id=\"{real}\"]').dataset.state === 'acknowledged'"
        )
        token = browser.evaluate("S.token")
        assert c.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        browser.click("#logout")
        deadline = time.monotonic() + 5.0
        while c.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code != 401:
            assert time.monotonic() < deadline, "the session still works after logout"
            time.sleep(0.05)


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A one-colour PNG (a stand-in map tile)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


@contextmanager
def tile_server() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    """A tile server on 127.0.0.1 (another origin than the API's): its URL template and the
    (path, Referer) of every request it answered."""
    tile = _png(256, 256, (60, 70, 80))
    seen: list[tuple[str, str | None]] = []

    class Tiles(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Referer")))
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(tile)))
            self.end_headers()
            self.wfile.write(tile)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Tiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{{z}}/{{x}}/{{y}}.png", seen
    finally:
        server.shutdown()
        server.server_close()


def _login(browser: Browser, base: str) -> None:
    browser.viewport(1440, 900)
    browser.goto(base + "/")
    browser.evaluate(WATCH_CSP_JS)
    log_in(browser)
    browser.wait_for("document.querySelectorAll('#map-lamps path.lamp[data-device-id]').length === 2")


def test_the_map_draws_the_configured_tile_server_and_falls_back_to_the_districts_when_it_is_down(
    browser: Browser, db_url: str
) -> None:
    seed(db_url, LAMPS)
    with tile_server() as (template, seen):
        tiles = MapTiles(template, attribution="© test tiles", max_zoom=18)
        with serve(fast_config(db_url, map_tiles=tiles)) as base:
            r = httpx.get(base + "/")
            assert f"img-src 'self' data: {tiles.origin};" in r.headers["content-security-policy"]
            _login(browser, base)
            browser.wait_for("document.getElementById('map').dataset.tiles === 'loaded'")
            browser.wait_for("document.querySelectorAll('.leaflet-tile-loaded').length >= 4")
            assert browser.evaluate("document.getElementById('map').dataset.base") == "tiles"
            assert "© test tiles" in browser.evaluate(
                "document.querySelector('.leaflet-control-attribution').textContent"
            )
            assert seen and all(re.fullmatch(r"/\d+/\d+/\d+\.png", path) for path, _ in seen), seen
            assert all(referer is None for _, referer in seen), "the console's address leaks to the tiles"
            assert browser.evaluate("window.__csp") == []
            # The operator picks the offline map in the layer control: the polygons are filled.
            browser.click(LAYER_INPUT.format(name="offline"))
            browser.wait_for("document.getElementById('map').dataset.base === 'offline'")
            assert browser.evaluate(
                "getComputedStyle(document.querySelector('#map-areas path.area.mine')).fill"
            ) not in ("none", "")

    # A tile server that does not answer (its port closed): the districts become the map.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    down = MapTiles(f"http://127.0.0.1:{closed}/{{z}}/{{x}}/{{y}}.png", attribution="down")
    with serve(fast_config(db_url, map_tiles=down)) as base:
        _login(browser, base)
        browser.wait_for("document.getElementById('map').dataset.tiles === 'unreachable'", timeout_s=20.0)
        assert browser.evaluate("document.getElementById('map').dataset.base") == "offline"
        assert browser.evaluate(
            "getComputedStyle(document.querySelector('#map-areas path.area.mine')).fill"
        ) not in ("none", "")
        assert browser.evaluate("document.querySelectorAll('#map-lamps path.lamp').length") == 2


def test_the_lamp_panel_shows_the_operators_commands_and_their_status_live(
    browser: Browser, db_url: str
) -> None:
    """An override sent through the API is listed in the lamp panel as pending; when the
    controller settles it (its row written as a controller's write queue does: rejected with the
    lamp's reason, or undelivered), the panel shows the new status without a click."""
    seed(db_url, LAMPS)
    with psycopg.connect(db_url, autocommit=True) as conn:
        create_operator(
            conn, "maint-jung", PASSWORD, role="maintenance", district="11020", hasher=password_hasher(1, 8)
        )
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        browser.viewport(1440, 900)
        browser.goto(base + "/")
        log_in(browser, "maint-jung")
        browser.wait_for("document.querySelectorAll('#map-lamps path.lamp[data-device-id]').length === 2")
        token = browser.evaluate("S.token")
        headers = {"Authorization": f"Bearer {token}"}
        first = c.post("/v1/lamps/e2e-j2/override", json={"level": 80, "duration_s": 600}, headers=headers)
        assert first.status_code == 202, first.text
        first_id = first.json()["cmd_id"]

        browser.wait_for(MAP_IDLE)
        browser.click('#map-lamps [data-device-id="e2e-j2"]')
        row = f'#lamp-commands li[data-cmd-id="{first_id}"]'
        browser.wait_for(f"document.querySelector('{row}') !== null")
        assert browser.evaluate(f"document.querySelector('{row}').dataset.status") == "pending"
        assert "밝기 80% · 대기" in browser.evaluate(f"document.querySelector('{row}').textContent")

        # The controller's answer reaches the row; the panel polls while a command is not final.
        with psycopg.connect(db_url, autocommit=True) as conn:
            settle_unsent(conn, [(first_id, "undelivered", "offline")])
        browser.wait_for(f"document.querySelector('{row}').dataset.status === 'undelivered'")
        assert "전달 안 됨 (기기 끊김)" in browser.evaluate(
            f"document.querySelector('{row} .status').textContent"
        )
        # A second command, while the panel is open: listed on top as soon as the stream says the
        # lamp was commanded, then rejected with the lamp's reason.
        second = c.post("/v1/lamps/e2e-j2/override", json={"level": 20, "duration_s": 60}, headers=headers)
        second_id = second.json()["cmd_id"]
        top = "document.querySelector('#lamp-commands li').dataset"
        browser.wait_for(f"{top}.cmdId === {second_id!r} && {top}.status === 'pending'")
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("UPDATE commands SET status = 'sent', attempts = 1 WHERE cmd_id = %s", (second_id,))
            record_ack(conn, second_id, status="rejected", reason="driver overheated", effective_level=0)
        browser.wait_for(f"{top}.status === 'rejected'")
        status = "document.querySelector('#lamp-commands li .status').textContent"
        assert browser.evaluate(status) == "거부됨 (driver overheated)"
        browser.evaluate("document.activeElement && document.activeElement.blur(), true")
        browser.press("l")
        browser.wait_for("document.documentElement.lang === 'en'")
        assert browser.evaluate(status) == "rejected (driver overheated)"
        browser.wait_for("document.querySelectorAll('#lamp-commands li').length === 2")
        # Everything final: the panel stops asking.
        time.sleep(0.3)
        assert browser.evaluate("lampCmdTimer") is None


def test_the_cameras_near_the_selected_sos_are_a_layer_of_the_map(browser: Browser, db_url: str) -> None:
    """An SOS beside four cameras of the register: selecting it draws them on the map's cameras
    layer (green: looks towards the resident, grey: away, hollow: unknown), with a stream link."""

    seed(db_url, LAMPS)
    import_cameras(db_url, JUNG_UTF8)
    config = fast_config(db_url, camera_streams=CameraStreams(TEMPLATE), camera_refresh_s=0.0)
    with serve(config) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        _login(browser, base)
        alert_id = sos(c, resident(c), SOS)
        core = f'#map-sos .sos-core[data-alert-id="{alert_id}"]'
        browser.wait_for(f"document.querySelector({core!r}) !== null")
        browser.evaluate(f"select({alert_id!r})")
        browser.wait_for("document.querySelectorAll('#map-cameras path.camera[data-camera-id]').length === 4")
        looks = browser.evaluate(
            "[...document.querySelectorAll('#map-cameras path.camera')].map((p) => p.dataset.looks).sort()"
        )
        assert looks == ["away", "sees", "sees", "unknown"]
        browser.evaluate(
            "document.querySelector('#map-cameras path.camera.sees')"
            ".dispatchEvent(new MouseEvent('click', {bubbles: true}))"
        )
        browser.wait_for("document.querySelector('.camera-popup a.camera-stream') !== null")
        href = browser.evaluate("document.querySelector('.camera-popup a.camera-stream').href")
        assert href.startswith("https://vms.example/live/JG-CCTV-01")
        # The layer control hides and shows the cameras like the other overlays.
        assert browser.evaluate(f"document.querySelector({LAYER_INPUT.format(name='cameras')!r}).checked")
