"""The console in headless Chromium during a power cut with an SOS: two neighbourhoods of Jung-gu
go dark together and the offline pass (as the ingest jobs leader runs it) raises one district
``mass_outage``; a resident raises an SOS through the API in the dark. The operator sees the SOS
on top, the outage as one line with its count, its detail listing its neighbourhoods by name and
its lamps by the numbers on their poles (a lamp opens its panel from the keyboard), and the map
shading each of its neighbourhoods. The page is saved as ``console-outage.png`` (docs/)."""

from __future__ import annotations

import csv
import functools
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg
import pytest
import shapely

from alerts import AlertKind
from devkit.apiclient import PASSWORD, fast_config, resident, seed, serve
from geo import Gazetteer
from ingest import RawMessage, SeqTracker, process
from ingest._alerts import raise_offline_alerts
from ingest._write import write_batch
from store.alerts import active_alerts
from streetlight.bootstrap import gazetteer_namer
from tests.e2e.cdp import Browser
from tests.e2e.test_api_console import MAP_IDLE
from tests.helpers import provision

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

JUNG = "11020"
# The first two neighbourhoods go dark (the cut); Myeong-dong's lamps stay lit.
EULJIRO, GWANGHUI, MYEONG = "1102060", "1102059", "1102055"
# Neighbourhood -> (the register's prefix for its poles, their road, how many poles).
POLES = {EULJIRO: ("을지", "을지로", 10), GWANGHUI: ("광희", "퇴계로", 10), MYEONG: ("명동", "명동길", 8)}
AGENCY = ("02-3396-4114", "서울특별시 중구청", "2024-06-30")  # phone, agency, data date
REGISTER_COLUMNS = [
    "보안등위치명",
    "설치개수",
    "소재지도로명주소",
    "소재지지번주소",
    "위도",
    "경도",
    "설치연도",
    "설치형태",
    "관리기관전화번호",
    "관리기관명",
    "데이터기준일자",
]


@functools.cache
def _gazetteer() -> Gazetteer:
    return Gazetteer.load()


def locate(lat: float, lon: float) -> tuple[str, str]:
    where = _gazetteer().locate(lat, lon)
    return where.district_code or "", where.dong_code or ""


def poles_in(dong_code: str, n: int) -> list[tuple[float, float]]:
    """`n` points spread over a neighbourhood (a grid over its polygon, the points inside it)."""
    polygon = _gazetteer().dong(dong_code).polygon_lonlat
    lon0, lat0, lon1, lat1 = polygon.bounds
    side = 12
    grid = [
        (lat0 + (lat1 - lat0) * (i + 0.5) / side, lon0 + (lon1 - lon0) * (j + 0.5) / side)
        for i in range(side)
        for j in range(side)
    ]
    inside = [p for p in grid if polygon.contains(shapely.Point(p[1], p[0]))]
    assert len(inside) >= n, (dong_code, len(inside))
    step = len(inside) / n
    return [inside[int(k * step)] for k in range(n)]


def write_register(path: Path) -> dict[str, list[tuple[str, float, float]]]:
    """A register in the national standard format; the poles (number, lat, lon) by neighbourhood."""
    poles: dict[str, list[tuple[str, float, float]]] = {}
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(REGISTER_COLUMNS)
        for dong, (prefix, road, n) in POLES.items():
            for k, (lat, lon) in enumerate(poles_in(dong, n), start=1):
                number = f"중구-{prefix}-{k:04d}"
                poles.setdefault(dong, []).append((number, lat, lon))
                road_address = f"서울특별시 중구 {road} {100 + 2 * k}"
                w.writerow([number, 1, road_address, "", lat, lon, 2020, "한전주", *AGENCY])
    return poles


def state_messages(device_ids: list[str], state: str, ts_ms: int) -> list[RawMessage]:
    body = b'{"state":"%s","bdseq":1,"ts":%d}' % (state.encode(), ts_ms)
    return [RawMessage(f"sl/v1/{JUNG}/{d}/state", body) for d in device_ids]


def ingest(conn: psycopg.Connection, messages: list[RawMessage]) -> None:
    """What the ingest worker does with a batch of the controllers' messages."""
    now = datetime.now(UTC)
    write_batch(conn, process(messages, int(now.timestamp() * 1000), SeqTracker()), messages, now)


def test_an_outage_with_an_sos_shows_the_sos_on_top_and_the_outage_with_its_lamps_and_areas(
    browser: Browser, tmp_path: Path, db_url: str, output_dir: Path
) -> None:
    seed(db_url)
    poles = write_register(tmp_path / "junggu.csv")
    provision(tmp_path, db_url, tmp_path / "junggu.csv")
    with psycopg.connect(db_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT lamp_number, device_id, dong_code FROM devices WHERE kind = 'lamp'"
        ).fetchall()
    device_of = {number: device_id for number, device_id, _ in rows}
    assert {dong for _, _, dong in rows} == set(POLES)
    dark = {device_of[number]: number for dong in (EULJIRO, GWANGHUI) for number, _, _ in poles[dong]}
    lit = [device_of[number] for number, _, _ in poles[MYEONG]]
    with psycopg.connect(db_url, autocommit=True) as conn:
        ingest(conn, state_messages([*dark, *lit], "online", int(time.time() * 1000)))

    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        browser.viewport(1440, 900)
        browser.goto(base + "/")
        browser.evaluate("localStorage.setItem('sl.lang', 'ko'), true")
        browser.type("#login-user", "op-jung")
        browser.type("#login-pass", PASSWORD)
        browser.click("#login-submit")
        browser.wait_for("document.querySelector('#conn.up') !== null")
        browser.wait_for(f"document.querySelectorAll('#map-lamps path.lamp.online').length === {len(rows)}")

        # The cut: the controllers' wills arrive, a resident in the dark presses SOS by a dark pole,
        # then the offline pass raises one outage for both neighbourhoods.
        with psycopg.connect(db_url, autocommit=True) as conn:
            ingest(conn, state_messages(list(dark), "offline", int(time.time() * 1000)))
        _, lat, lon = poles[EULJIRO][4]
        r = c.post("/v1/sos", json={"lat": lat + 0.0001, "lon": lon, "accuracy_m": 8.0}, headers=resident(c))
        assert r.status_code == 202, r.text
        sos_id = r.json()["alert_id"]
        browser.wait_for(f"document.querySelector('[data-alert-id=\"{sos_id}\"]') !== null")
        with psycopg.connect(db_url, autocommit=True) as conn:
            counts = raise_offline_alerts(
                conn,
                datetime.now(UTC),
                silent_after_s=3600,
                grace_s=120,
                locate=locate,
                namer=gazetteer_namer(_gazetteer()),
            )
            assert counts["mass_outage_new"] == 1, counts
            [outage] = active_alerts(conn, kinds=[AlertKind.MASS_OUTAGE.value])
        assert outage.areas == (GWANGHUI, EULJIRO) and outage.count == len(dark)
        assert set(outage.device_ids) == set(dark)

        # The list: the SOS above the outage (the outage is newer: newest first would put it on top), the
        # outage one line with its count.
        row = f"document.querySelector('#alert-list [data-alert-id=\"{outage.id}\"]')"
        browser.wait_for(f"{row} !== null")
        order = browser.evaluate(
            "[...document.querySelectorAll('#alert-list li')].map((li) => li.dataset.alertId)"
        )
        assert order == [sos_id, outage.id]
        assert browser.evaluate(f"{row}.dataset.count") == str(len(dark))
        assert (
            browser.evaluate(f"{row}.querySelector('.kind').textContent")
            == f"대규모 정전 · 보안등 {len(dark)}개"
        )
        assert not browser.evaluate("document.getElementById('sos-banner').hidden")

        # The map shades each of the outage's neighbourhoods.
        shaded = f'#map-outages path.outage-area[data-alert-id="{outage.id}"]'
        browser.wait_for(f"document.querySelectorAll({shaded!r}).length === 2")
        codes = browser.evaluate(
            f"[...document.querySelectorAll({shaded!r})].map((p) => p.dataset.dongCode).sort()"
        )
        assert codes == [GWANGHUI, EULJIRO]

        # The detail: the neighbourhoods by name, the lamps by the numbers on their poles.
        browser.click(f'#alert-list [data-alert-id="{outage.id}"]')
        browser.wait_for(f"document.querySelector('#detail[data-alert-id=\"{outage.id}\"]') !== null")
        browser.wait_for("!document.getElementById('detail-outage').hidden")
        areas = browser.evaluate(
            "[...document.querySelectorAll('#detail-areas li')].map((li) => li.textContent)"
        )
        assert areas == ["광희동", "을지로동"]
        lamps = "[...document.querySelectorAll('#detail-lamps .lamp-link')]"
        browser.wait_for(
            f"{lamps}.length === {len(dark)} && {lamps}.every((b) => !b.textContent.startsWith('lamp-'))"
        )
        listed = browser.evaluate(f"{lamps}.map((b) => [b.dataset.deviceId, b.textContent])")
        assert sorted(map(tuple, listed)) == sorted(dark.items())
        assert [number for _, number in listed] == sorted(dark.values())
        assert (
            browser.evaluate("document.getElementById('detail-lamp-count').textContent") == f"({len(dark)})"
        )
        browser.wait_for(MAP_IDLE)  # the map moves to the outage's neighbourhoods
        browser.wait_for(f"document.querySelector('#map-sos .sos-core[data-alert-id=\"{sos_id}\"]') !== null")
        browser.screenshot(output_dir / "console-outage.png")

        # In English the neighbourhoods are named in English; L is the key.
        browser.press("l")
        browser.wait_for("document.documentElement.lang === 'en'")
        areas = browser.evaluate(
            "[...document.querySelectorAll('#detail-areas li')].map((li) => li.textContent)"
        )
        assert areas == ["Gwanghuidong", "Euljirodong"]
        assert (
            browser.evaluate(f"{row}.querySelector('.kind').textContent")
            == f"mass outage · {len(dark)} lamps"
        )
        browser.press("l")
        browser.wait_for("document.documentElement.lang === 'ko'")

        # Keyboard: a listed lamp is a button; Enter on it opens the lamp's panel.
        first_device, first_number = listed[0]
        browser.evaluate("document.querySelector('#detail-lamps .lamp-link').focus(), true")
        browser.send(
            "Input.dispatchKeyEvent",
            type="keyDown",
            key="Enter",
            code="Enter",
            text="\r",
            windowsVirtualKeyCode=13,
        )
        browser.send(
            "Input.dispatchKeyEvent", type="keyUp", key="Enter", code="Enter", windowsVirtualKeyCode=13
        )
        browser.wait_for(f"document.querySelector('#lamp-panel[data-device-id=\"{first_device}\"]') !== null")
        assert browser.evaluate("document.getElementById('lamp-title').textContent") == first_number
        assert browser.evaluate("document.getElementById('lamp-state').textContent").startswith("끊김")

        # The SOS selected: no outage part in its detail; A acknowledges it.
        browser.evaluate("document.activeElement.blur(), true")
        browser.click(f'#alert-list [data-alert-id="{sos_id}"]')
        browser.wait_for(f"document.querySelector('#detail[data-alert-id=\"{sos_id}\"]') !== null")
        assert browser.evaluate("document.getElementById('detail-outage').hidden")
        browser.press("a")
        browser.wait_for(
            f"document.querySelector('[data-alert-id=\"{sos_id}\"]').dataset.state === 'acknowledged'"
        )
