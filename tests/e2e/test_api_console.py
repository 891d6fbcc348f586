"""The console in headless Chromium: an SOS raised through the residents' API appears live, the
operator acknowledges and dispatches from the browser, the database and the resident see it, and
a district operator never sees another district's alert."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from api.testing import GANGNAM, JUNG, PASSWORD, fast_config, resident, seed, serve
from tests.conftest import skip_unless
from tests.e2e.cdp import Browser, find_chromium

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LAMPS = [
    ("e2e-j1", "11020", JUNG[0], JUNG[1] + 0.0001),
    ("e2e-j2", "11020", JUNG[0] + 0.0003, JUNG[1]),
    ("e2e-g1", "11230", GANGNAM[0], GANGNAM[1] + 0.0001),
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    exe = find_chromium()
    skip_unless(
        exe is not None, "no chromium on PATH (python3 dev.py test installs Debian's chromium as root)"
    )
    assert exe is not None
    b = Browser(exe, tmp_path / "profile")
    yield b
    b.close()


def sos(c: httpx.Client, headers: dict[str, str], at: tuple[float, float]) -> str:
    r = c.post("/v1/sos", json={"lat": at[0], "lon": at[1], "accuracy_m": 8.0}, headers=headers)
    assert r.status_code == 202, r.text
    return str(r.json()["alert_id"])


def test_operator_sees_an_sos_live_and_acknowledges_and_dispatches_it(
    browser: Browser, db_url: str, output_dir: Path
) -> None:
    seed(db_url, LAMPS)
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        browser.goto(base + "/")
        browser.type("#login-user", "op-jung")
        browser.type("#login-pass", PASSWORD)
        browser.click("#login-submit")
        browser.wait_for("document.querySelector('#conn.up') !== null")
        browser.wait_for("document.querySelectorAll('#map-areas path').length > 0")

        walker = resident(c)
        elsewhere = sos(c, resident(c), GANGNAM)  # another district's SOS, raised first
        posted = time.monotonic()
        alert_id = sos(c, walker, JUNG)
        browser.wait_for(f"document.querySelector('[data-alert-id=\"{alert_id}\"]') !== null", timeout_s=5.0)
        seen_after_s = time.monotonic() - posted
        assert seen_after_s < 1.0, f"the SOS took {seen_after_s:.2f} s to reach the console"
        assert browser.evaluate("!document.getElementById('sos-banner').hidden")
        assert browser.evaluate(f"document.querySelector('[data-alert-id=\"{elsewhere}\"]') === null")
        assert browser.evaluate("document.querySelectorAll('#map-alerts .sos-core').length") == 1

        browser.click(f'[data-alert-id="{alert_id}"]')
        browser.wait_for("document.querySelector('#detail[data-state=\"open\"]') !== null")
        assert "중구" in browser.evaluate("document.getElementById('detail-place-ko').textContent")
        browser.screenshot(output_dir / "console-sos-open.png")
        browser.click("#btn-ack")
        browser.wait_for("document.querySelector('#detail[data-state=\"acknowledged\"]') !== null")
        assert browser.evaluate("document.getElementById('sos-banner').hidden")
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
        status = c.get(f"/v1/sos/{alert_id}", headers=walker).json()
        assert status["acknowledged"] and status["dispatched"] and status["unit"] == "중부서 112-3"

        # The console reconnects by itself and catches up on what happened meanwhile.
        browser.evaluate("S.ws.close(), true")
        browser.wait_for("document.querySelector('#conn.down') !== null", timeout_s=5.0)
        later = sos(c, resident(c), JUNG)
        browser.wait_for("document.querySelector('#conn.up') !== null", timeout_s=15.0)
        browser.wait_for(f"document.querySelector('[data-alert-id=\"{later}\"]') !== null", timeout_s=5.0)
