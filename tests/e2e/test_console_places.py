"""The console in headless Chromium names an SOS's place as the register has it: district,
neighbourhood, road address and the lamp number on the pole, in Korean and in English; the lamp
panel shows a provisioned lamp's neighbourhood and address."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from devkit.apiclient import fast_config, resident, seed, serve
from tests.e2e.cdp import Browser
from tests.e2e.conftest import log_in
from tests.e2e.test_api_console import MAP_IDLE
from tests.helpers import provision

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

REGISTER = Path(__file__).resolve().parents[1] / "data" / "register" / "junggu_utf8.csv"


def test_the_console_reads_an_sos_place_out_in_korean_and_english(
    browser: Browser, tmp_path: Path, db_url: str, output_dir: Path
) -> None:
    seed(db_url)
    provision(tmp_path, db_url, REGISTER)
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        browser.viewport(1440, 900)
        browser.goto(base + "/")
        browser.evaluate("localStorage.setItem('sl.lang', 'ko'), true")
        log_in(browser)
        browser.wait_for("document.querySelector('#conn.up') !== null")

        r = c.post("/v1/sos", json={"lat": 37.5610, "lon": 126.9947, "accuracy_m": 8.0}, headers=resident(c))
        assert r.status_code == 202, r.text
        alert_id = r.json()["alert_id"]
        row = f"document.querySelector('[data-alert-id=\"{alert_id}\"] .place')"
        browser.wait_for(f"{row} !== null")
        listed = browser.evaluate(f"{row}.textContent")
        assert listed.startswith("중구 을지로동, 서울특별시 중구 을지로 170 부근, 보안등 중구-을지-0001 (")
        assert "lamp-" not in listed  # lamp numbers, never device ids
        banner = browser.evaluate("document.getElementById('sos-banner-place').textContent")
        assert banner == listed

        browser.click(f'[data-alert-id="{alert_id}"]')
        browser.wait_for("document.querySelector('#detail[data-state=\"open\"]') !== null")
        assert browser.evaluate("document.getElementById('detail-place-ko').textContent") == listed
        english = browser.evaluate("document.getElementById('detail-place-en').textContent")
        assert english.startswith(
            "Jung-gu, Euljirodong, near 서울특별시 중구 을지로 170, security light 중구-을지-0001 ("
        )

        lamp = browser.evaluate(
            "[...document.querySelectorAll('#map-lamps [data-device-id]')].map((e) => e.dataset.deviceId)"
            ".find((id) => id.startsWith('lamp-11020-96d18d57c67e'))"
        )
        assert lamp == "lamp-11020-96d18d57c67e"
        browser.wait_for(MAP_IDLE)  # the map moves to the selected SOS: click once it stands still
        browser.click(f'#map-lamps [data-device-id="{lamp}"]')
        browser.wait_for(f"document.querySelector('#lamp-panel[data-device-id=\"{lamp}\"]') !== null")
        assert browser.evaluate("document.getElementById('lamp-title').textContent") == "중구-을지-0001"
        place = browser.evaluate("document.getElementById('lamp-place').textContent")
        assert place == "을지로동 · 서울특별시 중구 을지로 170"
        browser.screenshot(output_dir / "console-sos-place.png")
