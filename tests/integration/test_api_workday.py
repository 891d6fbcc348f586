"""The operator's working day against a real database: history search (each filter, combined,
keyset paging over 1,100 alerts), the shift hand-over by operator, the incident report (HTML and
CSV, audited) and the bulk acknowledgement of maintenance alerts (never an SOS)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from alerts import AlertKind, Place, acknowledge, new_alert
from devkit.apiclient import GANGNAM, JUNG, fast_config, login, resident, seed, serve
from store.alerts import change_alert, save_alert

pytestmark = pytest.mark.integration

LAMPS = [("wj1", "11020", JUNG[0], JUNG[1] + 0.0001), ("wg1", "11230", GANGNAM[0], GANGNAM[1] + 0.0001)]
NOW = datetime.now(UTC)
JUNG_PLACE = Place(
    lat=JUNG[0],
    lon=JUNG[1],
    district_code="11020",
    district_name="중구",
    district_name_en="Jung-gu",
    dong_code="11020550",
    dong_name="필동",
    dong_name_en="Pil-dong",
)
GANGNAM_PLACE = Place(
    lat=GANGNAM[0],
    lon=GANGNAM[1],
    district_code="11230",
    district_name="강남구",
    district_name_en="Gangnam-gu",
    dong_code="11230510",
    dong_name="역삼1동",
    dong_name_en="Yeoksam 1-dong",
)


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    seed(db_url, LAMPS)
    with serve(fast_config(db_url)) as base:
        yield base


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30.0) as c:
        yield c


def maintenance(
    db_url: str, alert_id: str, place: Place, created: datetime, kind: AlertKind = AlertKind.LAMP_FAULT
) -> str:
    alert = new_alert(
        alert_id=alert_id,
        kind=kind,
        place=place,
        source_id=f"dev-{alert_id}",
        now=created,
        device_ids=("wj1",),
    )
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        save_alert(conn, alert)
    return alert_id


def raise_sos(c: httpx.Client, at: tuple[float, float]) -> str:
    r = c.post("/v1/sos", json={"lat": at[0], "lon": at[1], "accuracy_m": 5}, headers=resident(c))
    assert r.status_code == 202, r.text
    return str(r.json()["alert_id"])


def ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [a["id"] for a in r.json()["alerts"]]


def test_search_filters_each_work_and_combine(api: httpx.Client, db_url: str) -> None:
    a = maintenance(db_url, "m-a", JUNG_PLACE, NOW - timedelta(hours=3))
    b = maintenance(db_url, "m-b", JUNG_PLACE, NOW - timedelta(hours=1), AlertKind.DEVICE_OFFLINE)
    c = maintenance(db_url, "m-c", GANGNAM_PLACE, NOW - timedelta(hours=2))
    with psycopg.connect(db_url, autocommit=True) as conn:
        change_alert(conn, b, lambda x: acknowledge(x, NOW, "operator:op-jung", "ladder truck 7 booked"))
    sos = raise_sos(api, JUNG)
    city = login(api, "op-city")

    def search(headers: dict[str, str] = city, **params: object) -> list[str]:
        return ids(api.get("/v1/alerts/search", params=params, headers=headers))

    assert search() == [sos, b, c, a]  # newest first
    assert search(kind="lamp_fault") == [c, a]
    assert search(kind=["lamp_fault", "sos"]) == [sos, c, a]
    assert search(status="acknowledged") == [b]
    assert search(district="11230") == [c]
    assert search(dong="11020550") == [b, a]
    assert search(near=f"{GANGNAM[0]},{GANGNAM[1]}", radius_m=200) == [c]
    assert search(since=(NOW - timedelta(hours=2, minutes=30)).isoformat()) == [sos, b, c]
    assert search(until=(NOW - timedelta(hours=1, minutes=30)).isoformat()) == [c, a]
    assert search(q="LADDER truck") == [b]  # a timeline note, any case
    assert search(q="필동") == [b, a]  # the place in words
    assert search(q="Yeoksam") == [c]
    assert search(q=sos[:12]) == [sos]  # an id
    assert search(q="100%") == []  # LIKE's characters are text
    # combined
    assert search(kind="lamp_fault", district="11020") == [a]
    assert search(q="Jung-gu", status="open", kind="lamp_fault") == [a]
    assert search(district="11020", since=(NOW - timedelta(hours=2)).isoformat(), kind="device_offline") == [
        b
    ]
    # visibility: a district operator finds only their district's alerts
    jung = login(api, "op-jung")
    assert search(jung) == [sos, b, a]
    assert api.get("/v1/alerts/search", params={"district": "11230"}, headers=jung).status_code == 404
    assert search(login(api, "op-maint")) == [b, c, a]  # maintenance: no SOS
    # bad input: 4xx naming the problem
    for params in (
        {"kind": "fire"},
        {"status": "done"},
        {"since": "2024-05-01T21:00:00"},
        {"near": "north"},
        {"near": "91,200"},
        {"cursor": "not-a-cursor"},
        {"limit": 0},
        {"district": "abc"},
    ):
        r = api.get("/v1/alerts/search", params=params, headers=city)
        assert r.status_code == 422, (params, r.text)
    assert api.get("/v1/alerts/search").status_code == 401


def test_paging_over_1100_alerts_returns_each_once_in_order(api: httpx.Client, db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        for i in range(1100):
            created = NOW - timedelta(minutes=i // 3)  # three alerts share each instant: ids break ties
            alert = new_alert(
                alert_id=f"p-{i:04d}",
                kind=AlertKind.LAMP_FAULT,
                place=JUNG_PLACE,
                source_id=f"dev-{i}",
                now=created,
            )
            save_alert(conn, alert)
        expected = [
            r[0] for r in conn.execute("SELECT alert_id FROM alerts ORDER BY created_at DESC, alert_id DESC")
        ]
    op = login(api, "op-jung")
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 500}
        if cursor:
            params["cursor"] = cursor
        r = api.get("/v1/alerts/search", params=params, headers=op)
        seen += ids(r)
        cursor = r.json()["next_cursor"]
        pages += 1
        if cursor is None:
            break
        # an alert raised while paging lands on the first page, never in the middle of a walk
        if pages == 1:
            maintenance(db_url, "p-late", JUNG_PLACE, NOW + timedelta(minutes=5))
    assert pages == 3 and len(seen) == 1100 and len(set(seen)) == 1100
    assert seen == expected


def test_handover_lists_open_alerts_and_the_shifts_actions_by_operator(
    api: httpx.Client, db_url: str
) -> None:
    jung_sos, gangnam_sos = raise_sos(api, JUNG), raise_sos(api, GANGNAM)
    old = maintenance(db_url, "h-old", JUNG_PLACE, NOW - timedelta(hours=1))
    jung, gangnam = login(api, "op-jung"), login(api, "op-gangnam")
    assert api.post(
        f"/v1/alerts/{jung_sos}/acknowledge", json={"note": "called back"}, headers=jung
    ).is_success
    r = api.post(f"/v1/alerts/{jung_sos}/dispatch", json={"unit": "중부서 112-3"}, headers=jung)
    assert r.is_success
    assert api.post(f"/v1/alerts/{gangnam_sos}/acknowledge", headers=gangnam).is_success
    assert api.post(f"/v1/alerts/{gangnam_sos}/cancel", headers=gangnam).is_success

    r = api.get("/v1/handover", headers=login(api, "op-city"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert [o["actor"] for o in body["operators"]] == ["operator:op-gangnam", "operator:op-jung"]
    gang, jng = body["operators"]
    assert gang["counts"] == {"acknowledged": 1, "cancelled": 1}
    assert jng["counts"] == {"acknowledged": 1, "dispatched": 1}
    assert [a["action"] for a in jng["actions"]] == ["acknowledged", "dispatched"]
    assert (
        jng["actions"][1]["details"] == {"unit": "중부서 112-3"}
        and jng["actions"][0]["note"] == "called back"
    )
    assert jng["actions"][0]["alert_id"] == jung_sos and jng["actions"][0]["state"] == "dispatched"
    assert jng["actions"][0]["place_text_ko"].startswith("중구")
    open_ids = [a["id"] for a in body["open"]]
    assert open_ids == [jung_sos, old] and body["open_total"] == 2  # SOS first
    assert body["raised"] == {"sos": 2, "lamp_fault": 1}
    since, until = datetime.fromisoformat(body["since"]), datetime.fromisoformat(body["until"])
    assert timedelta(hours=7, minutes=59) < until - since <= timedelta(hours=8)

    mine = api.get("/v1/handover", headers=jung).json()
    assert [o["actor"] for o in mine["operators"]] == ["operator:op-jung"]
    assert mine["raised"] == {"sos": 1, "lamp_fault": 1}
    later = (NOW + timedelta(hours=1)).isoformat()
    quiet = api.get("/v1/handover", params={"since": later}, headers=jung)
    assert quiet.status_code == 422  # until (now) before since
    window = {
        "since": (NOW - timedelta(hours=3)).isoformat(),
        "until": (NOW - timedelta(hours=2)).isoformat(),
    }
    assert api.get("/v1/handover", params=window, headers=jung).json()["operators"] == []
    assert api.get("/v1/handover", params={"since": "yesterday"}, headers=jung).status_code == 422


def test_incident_report_html_and_csv_carry_the_incident_and_are_audited(
    api: httpx.Client, db_url: str
) -> None:
    alert_id = raise_sos(api, JUNG)
    jung = login(api, "op-jung")
    api.post(
        f"/v1/alerts/{alert_id}/dispatch", json={"unit": "중부서 112-3", "note": "2 officers"}, headers=jung
    )
    detail = api.get(f"/v1/alerts/{alert_id}", headers=jung).json()["alert"]

    r = api.get(f"/v1/alerts/{alert_id}/report", headers=jung)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "@media print" in page and detail["place_text_ko"] in page and detail["place_text_en"] in page
    assert "중부서 112-3" in page and "2 officers" in page  # the unit, the timeline
    assert "11020-wj1" in page  # the lamp's number on the pole
    assert f"{alert_id}.1" in page and "Alert" in page and "urn:oasis:names:tc:emergency:cap:1.2" in page
    assert page.count("<tr>") > 10

    r = api.get(f"/v1/alerts/{alert_id}/report.csv", headers=jung)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")  # UTF-8 BOM: Excel reads the Korean right
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == ["section", "time", "item", "value", "actor", "note"]
    sections = {row[0] for row in rows[1:]}
    assert {"alert", "place", "timeline", "unit", "lamp", "track", "cap"} <= sections
    assert ["place", "", "ko", detail["place_text_ko"], "", ""] in rows
    assert any(row[0] == "unit" and row[3] == "중부서 112-3" and row[4] == "operator:op-jung" for row in rows)
    assert [row[2] for row in rows if row[0] == "timeline"] == ["created", "acknowledged", "dispatched"]
    assert any(row[0] == "lamp" and row[2] == "11020-wj1" for row in rows)
    assert [row[2] for row in rows if row[0] == "cap"] == ["Alert", "Ack", "Update"]

    with psycopg.connect(db_url) as conn:
        audit = conn.execute(
            "SELECT actor, subject_kind, details->>'format' FROM audit_log "
            "WHERE action = 'read_report' AND details->>'alert_id' = %s ORDER BY id",
            (alert_id,),
        ).fetchall()
    assert audit == [("operator:op-jung", "resident", "html"), ("operator:op-jung", "resident", "csv")]
    gangnam = login(api, "op-gangnam")
    for path in (
        f"/v1/alerts/{alert_id}/report",
        f"/v1/alerts/{alert_id}/report.csv",
        "/v1/alerts/nope/report",
    ):
        assert api.get(path, headers=gangnam).status_code == 404


def test_bulk_acknowledge_applies_to_maintenance_and_refuses_sos_per_item(
    api: httpx.Client, db_url: str
) -> None:
    m1 = maintenance(db_url, "b-1", JUNG_PLACE, NOW - timedelta(minutes=5))
    m2 = maintenance(db_url, "b-2", JUNG_PLACE, NOW - timedelta(minutes=4), AlertKind.DEVICE_OFFLINE)
    other = maintenance(db_url, "b-3", GANGNAM_PLACE, NOW - timedelta(minutes=3))
    sos = raise_sos(api, JUNG)
    jung = login(api, "op-jung")
    batch = [m1, sos, other, m2, "b-unknown", m1]
    r = api.post("/v1/alerts/acknowledge", json={"alert_ids": batch, "note": "storm round"}, headers=jung)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["acknowledged"] == 2 and body["refused"] == 3
    results = {x["alert_id"]: x for x in body["results"]}
    assert [x["alert_id"] for x in body["results"]] == [m1, sos, other, m2, "b-unknown"]
    assert results[m1]["ok"] and results[m1]["state"] == "acknowledged" and results[m1]["error"] is None
    assert results[m2]["ok"] and results[m2]["state"] == "acknowledged"
    assert not results[sos]["ok"] and results[sos]["state"] == "open" and "SOS" in results[sos]["error"]
    assert not results[other]["ok"] and results[other]["error"] == "not found in your districts"
    assert results[other]["state"] is None  # another district's alert: as unknown as an unknown one
    assert not results["b-unknown"]["ok"]
    # a second batch: already acknowledged is refused saying so
    again = api.post("/v1/alerts/acknowledge", json={"alert_ids": [m1]}, headers=jung).json()
    assert again["results"][0]["ok"] is False and "acknowledged" in again["results"][0]["error"]

    with psycopg.connect(db_url) as conn:
        states = dict(conn.execute("SELECT alert_id, status FROM alerts WHERE alert_id = ANY(%s)", (batch,)))
        events = conn.execute(
            "SELECT alert_id, actor, note, details->>'bulk' FROM alert_events "
            "WHERE action = 'acknowledged' ORDER BY id"
        ).fetchall()
        audit = conn.execute(
            "SELECT subject_id FROM audit_log WHERE action = 'alert.bulk_acknowledge' "
            "AND actor = 'operator:op-jung' ORDER BY id"
        ).fetchall()
    assert states == {m1: "acknowledged", m2: "acknowledged", sos: "open", other: "open"}
    assert events == [
        (m1, "operator:op-jung", "storm round", "true"),
        (m2, "operator:op-jung", "storm round", "true"),
    ]
    assert [a[0] for a in audit] == [m1, m2]
    for bad in ({"alert_ids": []}, {"alert_ids": ["x"] * 501}, {}, {"alert_ids": [""]}):
        assert api.post("/v1/alerts/acknowledge", json=bad, headers=jung).status_code == 422
