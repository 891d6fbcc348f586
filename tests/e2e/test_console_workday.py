"""The console's working-day views in headless Chromium, by keyboard: S opens the history search
(focus in its text field, Enter searches, Esc closes), a maintenance alert is acknowledged in bulk
from the results (an SOS offers no box), the console's A key does nothing behind the view, and H
opens the hand-over listing what is open and what the operator did."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest

from alerts import AlertKind, new_alert
from devkit.apiclient import JUNG, fast_config, resident, seed, serve
from store.alerts import save_alert
from tests.e2e.cdp import Browser
from tests.e2e.conftest import log_in
from tests.integration.test_api_workday import JUNG_PLACE

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


def test_search_and_handover_views_work_by_keyboard(browser: Browser, db_url: str, output_dir: Path) -> None:
    seed(db_url, [("wd1", "11020", JUNG[0], JUNG[1] + 0.0001)])
    now = datetime.now(UTC)
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        for i in range(3):
            alert = new_alert(
                alert_id=f"wd-fault-{i}",
                kind=AlertKind.LAMP_FAULT,
                place=JUNG_PLACE,
                source_id=f"wd{i}",
                now=now - timedelta(minutes=10 + i),
            )
            save_alert(conn, alert)
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        r = c.post("/v1/sos", json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}, headers=resident(c))
        sos = r.json()["alert_id"]
        browser.viewport(1440, 900)
        browser.goto(base + "/")
        browser.evaluate("localStorage.setItem('sl.lang', 'ko'), true")
        log_in(browser)
        browser.wait_for("document.querySelector('#conn.up') !== null")
        browser.evaluate("document.activeElement.blur(), true")

        browser.press("s")
        browser.wait_for("!document.getElementById('search-view').hidden")
        assert browser.evaluate("document.activeElement.id") == "search-q"
        browser.type("#search-q", "Jung-gu")
        browser.press("Enter", key_code=13)
        rows = "[...document.querySelectorAll('#search-results li')].map((li) => li.dataset.alertId)"
        browser.wait_for(f"{rows}.length === 4")
        assert browser.evaluate(rows) == [sos, "wd-fault-0", "wd-fault-1", "wd-fault-2"]
        assert (
            browser.evaluate(
                f"document.querySelector('#search-results li[data-alert-id=\"{sos}\"] .bulk-pick')"
            )
            is None
        )
        assert browser.evaluate("document.getElementById('search-count').textContent").startswith("4 ")

        browser.press("a")  # the console's acknowledge key: nothing happens behind the view
        browser.click('#search-results li[data-alert-id="wd-fault-1"] .bulk-pick')
        browser.click('#search-results li[data-alert-id="wd-fault-2"] .bulk-pick')
        browser.click("#bulk-ack")
        browser.wait_for("document.getElementById('bulk-result').textContent.startsWith('확인 2')")
        with psycopg.connect(db_url) as conn:
            states = dict(conn.execute("SELECT alert_id, status FROM alerts").fetchall())
        assert states == {
            sos: "open",
            "wd-fault-0": "open",
            "wd-fault-1": "acknowledged",
            "wd-fault-2": "acknowledged",
        }
        browser.screenshot(output_dir / "console-history-search.png")

        browser.press("Escape")
        browser.wait_for("document.getElementById('search-view').hidden")
        browser.evaluate("document.activeElement.blur(), true")
        browser.press("h")
        browser.wait_for("!document.getElementById('handover-view').hidden")
        actions = (
            "[...document.querySelectorAll('.handover-operator[data-actor=\"operator:op-jung\"] li')]"
            ".map((li) => li.dataset.alertId + ':' + li.dataset.action)"
        )
        browser.wait_for(f"{actions}.length === 2")
        assert browser.evaluate(actions) == ["wd-fault-1:acknowledged", "wd-fault-2:acknowledged"]
        open_ids = "[...document.querySelectorAll('#handover-open li')].map((li) => li.dataset.alertId)"
        assert browser.evaluate(open_ids)[0] == sos  # SOS first
        assert browser.evaluate("document.getElementById('handover-open-total').textContent") == "(4)"
        browser.screenshot(output_dir / "console-handover.png")
        browser.press("Escape")
        browser.wait_for("document.getElementById('handover-view').hidden")
