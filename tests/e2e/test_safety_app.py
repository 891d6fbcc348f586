"""The residents' Safety page (/app/) in headless Chromium, end to end with the real services: the
page registers, starts a safe walk from the browser's (emulated) geolocation and walks a short
street east, the controller brightens the lamps ahead over a real broker (a fleet of lamps that
ack); a shake of the (emulated) phone raises an SOS; the operator's console, in a second browser,
sees it, acknowledges and dispatches it, and the page shows "dispatched" with the unit from its
live socket (``/v1/sos/{id}/live``). The page is a PWA (manifest, service worker) that works under
the API's Content-Security-Policy. Call-back: a bad number is refused with the reason, a good one is
registered (E.164 shown) and revealed to the console as a tel: link, withdrawn by unticking (sent
again after a network error), and a centre without phone keys says it offers no call-back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from broker import parse_mqtt_url
from controller import ControllerConfig, HoldPolicy
from devkit.apiclient import JUNG, PASSWORD, fast_config, seed, serve
from devkit.bench.controller import LampFleet, LampSpec
from devkit.localservices import MqttService
from tests.conftest import skip_unless
from tests.e2e.cdp import Browser, find_chromium
from tests.helpers import controller_in_thread

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DISTRICT = "11020"  # JUNG's district in devkit.apiclient
M_LON = 1 / 88_200  # degrees of longitude per metre at 37.5 N
# A street running east from JUNG: a lamp every 20 m for 120 m.
STREET = [(f"app-l{i}", DISTRICT, JUNG[0] + 0.00003, JUNG[1] + i * 20 * M_LON) for i in range(7)]
FAR = "app-l6"  # 120 m east: lit only once the walker is on the way there
SOS_STATE = "document.getElementById('sos-status').dataset.state"
NOTE_STATE = "document.getElementById('callback-note').dataset.state"
NOTE_TEXT = "document.getElementById('callback-note').textContent"

WATCH_CSP_JS = """(() => {
  window.__csp = window.__csp || [];
  document.addEventListener('securitypolicyviolation',
    (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
  return true;
})()"""

# Three swings of ~3 g, 250 ms apart, as the phone's accelerometer reports them.
SHAKE_JS = """(async () => {
  for (let i = 0; i < 3; i += 1) {
    window.dispatchEvent(new DeviceMotionEvent('devicemotion', {
      acceleration: {x: 22, y: 4, z: 1},
      accelerationIncludingGravity: {x: 29, y: 6, z: 9.8},
      rotationRate: {alpha: 0, beta: 0, gamma: 0}, interval: 16}));
    await new Promise((ok) => setTimeout(ok, 250));
  }
  return true;
})()"""

# A walk along a table and a gentle tilt: one peak at most, never an SOS.
NO_SHAKE_JS = """(async () => {
  for (let i = 0; i < 10; i += 1) {
    window.dispatchEvent(new DeviceMotionEvent('devicemotion', {
      accelerationIncludingGravity: {x: 2, y: 3, z: 9.8 + (i === 4 ? 16 : 0)}, interval: 16}));
    await new Promise((ok) => setTimeout(ok, 100));
  }
  return true;
})()"""


@pytest.fixture
def browsers(tmp_path: Path) -> Iterator[tuple[Browser, Browser]]:
    exe = find_chromium()
    skip_unless(
        exe is not None, "no chromium on PATH (python3 dev.py test installs Debian's chromium as root)"
    )
    assert exe is not None
    phone = Browser(exe, tmp_path / "phone", width=420, height=900)
    try:
        console = Browser(exe, tmp_path / "console")
    except Exception:
        phone.close()
        raise
    yield phone, console
    console.close()
    phone.close()


def registered(c: httpx.Client, mine: dict[str, str]) -> bool:
    """Whether the resident's export says a call-back number is held."""
    r = c.get("/v1/residents/me/export", headers=mine)
    assert r.status_code == 200, r.text
    return bool(r.json()["phone_number"]["registered"])


def offline(phone: Browser, off: bool) -> None:
    phone.send(
        "Network.emulateNetworkConditions",
        offline=off,
        latency=0,
        downloadThroughput=-1,
        uploadThroughput=-1,
    )


def move_to(phone: Browser, lat: float, lon: float) -> None:
    phone.send("Emulation.setGeolocationOverride", latitude=lat, longitude=lon, accuracy=5)


def test_the_page_walks_brightens_raises_an_sos_by_shaking_and_sees_it_dispatched(
    browsers: tuple[Browser, Browser], db_url: str, mqtt_service: MqttService, output_dir: Path
) -> None:
    phone, console = browsers
    seed(db_url, STREET)
    params = parse_mqtt_url(mqtt_service.url)
    cfg = replace(
        ControllerConfig(
            mqtt=params,
            database_url=db_url,
            districts=(DISTRICT,),
            owner=f"app-e2e-{uuid.uuid4().hex[:8]}",
        ),
        lease_ttl_s=1.5,
        tick_s=0.05,
        holds=HoldPolicy(hold_s=30),
    )
    specs = [LampSpec(d, dist, lat, lon) for d, dist, lat, lon in STREET]
    with (
        serve(fast_config(db_url)) as base,
        httpx.Client(base_url=base, timeout=10.0) as c,
        LampFleet(params, specs) as fleet,
        controller_in_thread(cfg),
    ):
        # The page and its PWA files, with the API's security headers.
        for path in ("/app/", "/app/app.js", "/app/sw.js", "/app/manifest.json"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert "script-src 'self'" in r.headers["content-security-policy"], path
        assert c.get("/app", follow_redirects=False).headers["location"] == "/app/"
        manifest = c.get("/app/manifest.json").json()
        assert manifest["start_url"] == "/app/" and manifest["display"] == "standalone"
        assert {i["sizes"] for i in manifest["icons"]} == {"192x192", "512x512"}

        phone.send("Browser.grantPermissions", origin=base, permissions=["geolocation"])
        move_to(phone, JUNG[0], JUNG[1])
        phone.goto(base + "/app/")
        phone.evaluate(WATCH_CSP_JS)
        phone.wait_for("window.App && App.ready")
        phone.evaluate("App.lang = 'en', document.getElementById('lang').click(), true")  # Korean
        phone.wait_for("document.documentElement.lang === 'ko'")
        assert phone.evaluate("document.getElementById('sos-button').textContent") == "긴급 SOS"
        phone.click("#register")
        phone.wait_for("!document.getElementById('app-view').hidden")
        token = phone.evaluate("App.saved.token")
        mine = {"Authorization": f"Bearer {token}"}
        assert c.get("/v1/residents/me/export", headers=mine).status_code == 200

        # A walk east along the street: the lamps ahead are brightened by the controller.
        phone.click("#walk-start")
        phone.wait_for("App.walk && App.walk.ready", timeout_s=15.0)
        walk_id = phone.evaluate("App.walk.id")
        for step in range(1, 8):
            move_to(phone, JUNG[0], JUNG[1] + step * 8 * M_LON)  # 8 m a step
            time.sleep(0.7)  # the page sends at most ~2 positions a second
        phone.wait_for("App.positionsSent >= 3", timeout_s=10.0)
        phone.wait_for(f"App.lampsTold.includes({FAR!r})", timeout_s=10.0)
        assert fleet.wait_until(lambda: bool(fleet.commands_for(FAR)), 10.0), "the lamp ahead was not lit"
        lit = fleet.commands_for(FAR)[0]
        assert lit.get("source") == "walk" or "walk" in str(lit), lit
        assert "안심 귀가 중" in phone.evaluate("document.getElementById('walk-status').textContent")

        # The operator's console, in its own browser.
        console.viewport(1440, 900)
        console.goto(base + "/")
        console.type("#login-user", "op-jung")
        console.type("#login-pass", PASSWORD)
        console.click("#login-submit")
        console.wait_for("document.querySelector('#conn.up') !== null")

        # A gentle movement is no shake; three hard swings are.
        phone.evaluate(NO_SHAKE_JS)
        time.sleep(0.3)
        assert phone.evaluate("App.sos") is None
        phone.evaluate(SHAKE_JS)
        alert_id = phone.wait_for("App.sos && App.sos.id", timeout_s=10.0)
        assert phone.evaluate("App.lastSosSource") == "shake"
        phone.wait_for(f"{SOS_STATE} === 'open'", timeout_s=10.0)

        console.wait_for(f"document.querySelector('[data-alert-id=\"{alert_id}\"]') !== null", timeout_s=10.0)
        console.click(f'[data-alert-id="{alert_id}"]')
        console.wait_for("document.querySelector('#detail[data-state=\"open\"]') !== null")
        console.click("#btn-ack")
        console.wait_for("document.querySelector('#detail[data-state=\"acknowledged\"]') !== null")
        phone.wait_for(f"{SOS_STATE} === 'acknowledged'", timeout_s=5.0)
        console.type("#dispatch-unit", "중부서 112-3")
        console.click("#btn-dispatch")
        console.wait_for("document.querySelector('#detail[data-state=\"dispatched\"]') !== null")
        phone.wait_for(f"{SOS_STATE} === 'dispatched'", timeout_s=5.0)
        shown = phone.evaluate("document.getElementById('sos-status').textContent")
        assert "출동했습니다" in shown and "중부서 112-3" in shown, shown
        events = phone.evaluate(
            "[...document.querySelectorAll('#sos-events li')].map((li) => li.dataset.action)"
        )
        assert events == ["created", "acknowledged", "dispatched"], events
        assert "op-jung" not in phone.evaluate("document.body.innerText")
        phone.screenshot(output_dir / "safety-app-dispatched.png")

        # English with the toggle. Call-back: a number the centre cannot call is refused with the
        # server's reason and nothing is registered; a mobile number is registered (E.164 shown).
        phone.click("#lang")
        phone.wait_for("document.documentElement.lang === 'en'")
        assert "Help is on the way" in phone.evaluate("document.getElementById('sos-status').textContent")
        phone.type("#phone", "112")
        phone.click("#callback-consent")
        phone.wait_for(f"{NOTE_STATE} === 'invalid'")
        note = phone.evaluate(NOTE_TEXT)
        assert note.startswith("This number cannot be used (a Korean number starts with 0"), note
        assert phone.evaluate("document.getElementById('callback-consent').checked") is False
        assert registered(c, mine) is False
        phone.evaluate("document.getElementById('phone').value = '', true")
        phone.type("#phone", "010-1234-5678")
        phone.click("#callback-consent")
        phone.wait_for(f"{NOTE_STATE} === 'saved'")
        assert "+821012345678" in phone.evaluate(NOTE_TEXT)
        assert phone.evaluate("document.getElementById('phone').value") == "+821012345678"
        assert phone.evaluate("App.saved.callback") == {
            "consent": True,
            "phone": "+821012345678",
            "synced": True,
        }
        assert registered(c, mine) is True

        # The console reveals that number for the open SOS (audited) as a tel: link.
        console.click(f'[data-alert-id="{alert_id}"]')
        console.wait_for("!document.getElementById('callback').hidden", timeout_s=5.0)
        console.click("#btn-reveal")
        tel = console.wait_for(
            "!document.getElementById('callback-tel').hidden"
            " && document.getElementById('callback-tel').getAttribute('href')",
            timeout_s=5.0,
        )
        assert tel == "tel:+821012345678"
        assert console.evaluate("document.getElementById('callback-tel').textContent") == "+821012345678"
        reveals = c.get("/v1/residents/me/export", headers=mine).json()["phone_number_reveals"]
        assert [e["action"] for e in reveals] == ["phone.reveal"], reveals

        # The PWA: the service worker is active for /app/, and nothing broke the page's policy.
        scope = phone.wait_for(
            "navigator.serviceWorker.ready.then((r) => r.active && r.scope)", timeout_s=10.0
        )
        assert scope == base + "/app/"
        assert phone.evaluate("window.__csp") == []

        # The walk ends from the page.
        phone.click("#walk-end")
        phone.wait_for("App.walk === null")
        deadline = time.monotonic() + 5.0
        while True:
            r = c.post(f"/v1/walks/{walk_id}/end", headers=mine)
            assert r.status_code == 200, r.text
            if r.json()["already_ended"]:
                break
            assert time.monotonic() < deadline, "the page did not end its walk"
            time.sleep(0.1)

        # Unticking withdraws the consent, the number is deleted; offline, the page says so and
        # sends the withdrawal once back online.
        phone.send("Network.enable")
        offline(phone, True)
        phone.click("#callback-consent")
        phone.wait_for(f"{NOTE_STATE} === 'retry'")
        assert phone.evaluate("App.saved.callback.synced") is False
        assert registered(c, mine) is True
        offline(phone, False)
        phone.wait_for(f"{NOTE_STATE} === 'off'", timeout_s=20.0)
        assert registered(c, mine) is False
        withdrawn = {"consent": False, "phone": "+821012345678", "synced": True}
        assert phone.evaluate("App.saved.callback") == withdrawn

        # Reload mid-SOS: the page resumes the live status from where it was (since=event_id).
        phone.goto(base + "/app/")
        phone.wait_for(f"{SOS_STATE} === 'dispatched'", timeout_s=10.0)

        # A centre that takes no phone numbers (no STREETLIGHT_PHONE_KEYS): the page says so.
        with serve(fast_config(db_url, phone_keys=None)) as bare:
            phone.goto(bare + "/app/")
            phone.wait_for("window.App && App.ready")
            if phone.evaluate("App.lang") != "en":
                phone.click("#lang")
            phone.click("#register")
            phone.wait_for("!document.getElementById('app-view').hidden")
            phone.type("#phone", "010-1234-5678")
            phone.click("#callback-consent")
            phone.wait_for(f"{NOTE_STATE} === 'unavailable'")
            note = phone.evaluate(NOTE_TEXT)
            assert note == "This control centre does not offer call-back. Your number was not sent.", note
            assert phone.evaluate("document.getElementById('callback-consent').checked") is False
            kept = {"consent": False, "phone": "010-1234-5678", "synced": True}
            assert phone.evaluate("App.saved.callback") == kept
