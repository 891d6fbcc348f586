"""The Safety app's API against a real database: walks, SOS, idempotency, limits, bad input."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import psycopg
import pytest
from httpx import Client

from devkit.apiclient import BUSAN, GANGNAM, JUNG, client, fast_config, login, resident, seed

pytestmark = pytest.mark.integration

LAMPS = [
    ("jl1", "11020", JUNG[0], JUNG[1] + 0.0001),  # ~9 m east
    ("jl2", "11020", JUNG[0], JUNG[1] + 0.0005),  # ~44 m east: ahead of an eastbound walker
    ("jl3", "11020", JUNG[0] + 0.002, JUNG[1]),  # ~220 m north
]


METRICS_TOKEN = "scrape-me-7f3a"


@pytest.fixture
def api(db_url: str) -> Iterator[Client]:
    seed(db_url, LAMPS)
    with client(fast_config(db_url, metrics_token=METRICS_TOKEN)) as c:
        yield c


def pos(lat: float, lon: float, **extra: object) -> dict[str, object]:
    return {"lat": lat, "lon": lon, "accuracy_m": 5.0, **extra}


def test_registration_gives_a_token_that_is_stored_hashed(api: Client, db_url: str) -> None:
    r = api.post("/v1/residents")
    assert r.status_code == 201
    body = r.json()
    assert body["resident_id"].startswith("res-") and len(body["token"]) >= 40
    with psycopg.connect(db_url) as conn:
        stored = conn.execute(
            "SELECT token_hash FROM residents WHERE resident_id = %s", (body["resident_id"],)
        )
        row = stored.fetchone()
    assert row is not None and row[0] != body["token"] and len(row[0]) == 64


def test_a_walk_brightens_the_lamps_near_and_ahead_and_wakes_the_controller(api: Client, db_url: str) -> None:
    me = resident(api)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN sl_walk")
        r = api.post("/v1/walks", json=pos(*JUNG, heading_deg=90.0, speed_mps=1.4), headers=me)
        assert r.status_code == 201, r.text
        walk = r.json()
        assert walk["district"] == "11020"
        assert walk["lamps"][0] == "jl1" and "jl2" in walk["lamps"] and "jl3" not in walk["lamps"]
        notes = list(listener.notifies(timeout=2.0, stop_after=1))
    assert notes and '"op":"start"' in notes[0].payload and walk["walk_id"] in notes[0].payload

    r = api.post(f"/v1/walks/{walk['walk_id']}/positions", json=pos(JUNG[0], JUNG[1] + 0.0004), headers=me)
    assert r.status_code == 200 and "jl2" in r.json()["lamps"]
    r = api.post(f"/v1/walks/{walk['walk_id']}/end", headers=me)
    assert r.status_code == 200 and r.json()["status"] == "ended"
    r = api.post(f"/v1/walks/{walk['walk_id']}/positions", json=pos(*JUNG), headers=me)
    assert r.status_code == 409 and "ended" in r.json()["detail"]
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM walk_positions WHERE walk_id = %s", (walk["walk_id"],)
        ).fetchone()
    assert row is not None and row[0] == 2


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"lat": "NaN", "lon": 126.99, "accuracy_m": 5}, "lat"),
        ({"lat": 37.56, "lon": "Infinity", "accuracy_m": 5}, "lon"),
        ({"lat": 91.0, "lon": 126.99, "accuracy_m": 5}, "lat"),
        ({"lat": 37.56, "lon": 126.99, "accuracy_m": -1}, "accuracy_m"),
        ({"lat": 37.56, "lon": 126.99, "accuracy_m": 5, "heading_deg": 400}, "heading_deg"),
        ({"lat": 37.56, "lon": 126.99}, "accuracy_m"),
        ({"lat": BUSAN[0], "lon": BUSAN[1], "accuracy_m": 5}, "outside the service area"),
    ],
)
def test_bad_walk_input_is_a_4xx_naming_the_problem(api: Client, body: dict[str, object], named: str) -> None:
    r = api.post("/v1/walks", json=body, headers=resident(api))
    assert r.status_code == 422, r.text
    assert named in r.json()["detail"]


def test_raw_nan_in_json_is_refused_not_a_crash(api: Client) -> None:
    r = api.post(
        "/v1/walks",
        content=b'{"lat": NaN, "lon": 126.99, "accuracy_m": 5}',
        headers={**resident(api), "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "lat" in r.json()["detail"]
    assert math.isnan(float("nan"))


def test_walks_need_a_token_and_belong_to_their_resident(api: Client) -> None:
    assert api.post("/v1/walks", json=pos(*JUNG)).status_code == 401
    assert api.post("/v1/walks", json=pos(*JUNG), headers={"Authorization": "Bearer nope"}).status_code == 401
    owner, other = resident(api), resident(api)
    walk_id = api.post("/v1/walks", json=pos(*JUNG), headers=owner).json()["walk_id"]
    r = api.post(f"/v1/walks/{walk_id}/positions", json=pos(*JUNG), headers=other)
    assert r.status_code == 403 and "another resident" in r.json()["detail"]
    r = api.post("/v1/walks/walk-nope/positions", json=pos(*JUNG), headers=owner)
    assert r.status_code == 404 and "unknown walk" in r.json()["detail"]
    assert api.post(f"/v1/walks/{walk_id}/end", headers=other).status_code == 403


def test_positions_over_two_per_second_get_429_with_retry_after(api: Client) -> None:
    me = resident(api)
    walk_id = api.post("/v1/walks", json=pos(*JUNG), headers=me).json()["walk_id"]
    codes = [
        api.post(f"/v1/walks/{walk_id}/positions", json=pos(*JUNG), headers=me).status_code for _ in range(4)
    ]
    assert codes[:2] == [200, 200] and 429 in codes[2:]
    r = api.post(f"/v1/walks/{walk_id}/positions", json=pos(*JUNG), headers=me)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1


def test_sos_is_durable_and_routed_before_the_answer(api: Client, db_url: str) -> None:
    me = resident(api)
    r = api.post("/v1/sos", json=pos(*JUNG), headers={**me, "Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["district"] == "11020" and body["status"] == "open"
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT status, district_codes, data->'place'->'nearest_lamps'->0->>'lamp_id' "
            "FROM alerts WHERE alert_id = %s",
            (body["alert_id"],),
        ).fetchone()
    assert row == ("open", ["11020"], "jl1")
    status = api.get(f"/v1/sos/{body['alert_id']}", headers=me).json()
    assert status["status"] == "open" and status["acknowledged"] is False


def test_a_retried_sos_with_the_same_key_returns_the_same_alert(api: Client, db_url: str) -> None:
    me = resident(api)
    first = api.post("/v1/sos", json=pos(*JUNG), headers={**me, "Idempotency-Key": "same"})
    again = api.post("/v1/sos", json=pos(*JUNG), headers={**me, "Idempotency-Key": "same"})
    assert first.status_code == again.status_code == 202
    assert first.json()["alert_id"] == again.json()["alert_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*), max((data->>'count')::int) FROM alerts").fetchone()
    assert row == (1, 1)


def test_sos_over_the_limit_gets_429_but_still_updates_the_open_alert(api: Client, db_url: str) -> None:
    me = resident(api)
    answers = [
        api.post("/v1/sos", json=pos(*JUNG), headers={**me, "Idempotency-Key": f"k{i}"}) for i in range(4)
    ]
    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert int(answers[3].headers["Retry-After"]) >= 1
    assert len({a.json()["alert_id"] for a in answers}) == 1
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT (data->>'count')::int, jsonb_array_length(data->'track') FROM alerts"
        ).fetchone()
    assert row == (4, 4)


def test_sos_outside_seoul_goes_to_the_city_centre_never_refused(api: Client) -> None:
    r = api.post("/v1/sos", json=pos(*BUSAN), headers=resident(api))
    assert r.status_code == 202 and r.json()["district"] == "11000"


def test_a_resident_sees_and_cancels_only_their_own_sos(api: Client) -> None:
    owner, other = resident(api), resident(api)
    alert_id = api.post("/v1/sos", json=pos(*JUNG), headers=owner).json()["alert_id"]
    assert api.get(f"/v1/sos/{alert_id}", headers=other).status_code == 404
    assert api.post(f"/v1/sos/{alert_id}/cancel", headers=other).status_code == 404
    r = api.post(f"/v1/sos/{alert_id}/cancel", headers=owner)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    r = api.post(f"/v1/sos/{alert_id}/cancel", headers=owner)
    assert r.status_code == 409 and "cancelled" in r.json()["detail"]


def test_sos_with_a_walk_keeps_the_walk_track_with_the_alert(api: Client, db_url: str) -> None:
    me, other = resident(api), resident(api)
    walk_id = api.post("/v1/walks", json=pos(*JUNG), headers=me).json()["walk_id"]
    r = api.post("/v1/sos", json={**pos(*JUNG), "walk_id": walk_id}, headers=other)
    assert r.status_code == 404 and "unknown walk" in r.json()["detail"]
    alert_id = api.post("/v1/sos", json={**pos(*JUNG), "walk_id": walk_id}, headers=me).json()["alert_id"]
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM walk_positions WHERE alert_id = %s", (alert_id,)).fetchone()
    assert row is not None and row[0] == 1


def test_a_resident_can_delete_their_account(api: Client) -> None:
    me = resident(api)
    api.post("/v1/walks", json=pos(*JUNG), headers=me)
    assert api.delete("/v1/residents/me", headers=me).status_code == 204
    assert api.post("/v1/walks", json=pos(*JUNG), headers=me).status_code == 401


def test_health_readiness_and_metrics(api: Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json()["status"] == "ready"
    api.post("/v1/sos", json=pos(*GANGNAM), headers=resident(api))
    # A request is counted once its answer is sent, so the scrape may race the last one.
    for _ in range(50):
        text = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
        if 'route="/v1/sos"' in text:
            break
        time.sleep(0.02)
    assert 'streetlight_api_sos_total{outcome="accepted"} 1.0' in text
    assert 'route="/v1/sos"' in text
    login(api, "op-city")
