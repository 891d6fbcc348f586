"""Issue #8 bad input: fuzzed MQTT payloads, generated positions, replayed/forged requests, Schemathesis.

Every test keeps what it tried and what happened in ``.test-output/faults/<name>.json``.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from broker import paho_client, parse_mqtt_url
from controller import Fix, check_fix
from devkit.apiclient import BUSAN, JUNG, fast_config, seed, serve
from devkit.faults.catalogue import _wait_ingest_subscribed, private_broker
from devkit.faults.harness import Processes, metrics, scalar, wait_until, write_figures
from devkit.localservices import free_port

pytestmark = [pytest.mark.integration]

NO_RETRY = settings(
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


# --------------------------------------------------------------------------- B1 MQTT fuzz


def _templates(ts: int) -> dict[str, dict[str, Any]]:
    return {
        "telemetry": {
            "ts": ts, "seq": 1, "level": 80, "power_w": 36.4, "voltage_v": 221.7, "current_a": 0.164,
            "temp_c": 21.5, "lux": 3.2, "faults": [],
        },
        "event": {"ts": ts, "seq": 3, "type": "tamper"},
        "birth": {"kind": "lamp", "firmware": "1.2", "model": "SL-40", "lat": 37.56, "lon": 126.98,
                  "bdseq": 1},
        "state": {"state": "online", "bdseq": 1},
        "ack": {"cmd_id": "c-1", "ts": ts, "status": "expired"},
    }  # fmt: skip


# A field per kind whose breakage alone makes the message invalid.
REQUIRED = {"telemetry": "seq", "event": "type", "birth": "kind", "state": "state", "ack": "status"}
NUMERIC = {"telemetry": "level", "event": "seq", "birth": "lat", "state": "bdseq", "ack": "ts"}


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@st.composite
def bad_payloads(draw: st.DrawFn, kind: str) -> tuple[str, bytes]:
    """An invalid payload for ``kind`` and the rule it breaks (never a valid one, by construction)."""
    template = _templates(int(time.time() * 1000))[kind]
    field, number = REQUIRED[kind], NUMERIC[kind]
    how = draw(
        st.sampled_from(
            ["binary", "utf8", "nan", "wrong_type", "missing", "deep", "huge", "not_object", "oversized"]
        )
    )
    body = dict(template)
    if how == "binary":
        return how, b"\x00" + draw(st.binary(max_size=512))
    if how == "utf8":
        text = json.dumps(body)[:-1] + ', "note": "'
        return how, text.encode() + draw(
            st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xfe\xfe"])
        ) + b'"}'
    if how == "nan":
        token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]))
        text = json.dumps({**body, number: 0}).replace(f'"{number}": 0', f'"{number}": {token}')
        return how, text.encode()
    if how == "wrong_type":
        value = draw(
            st.one_of(
                st.text(max_size=20),
                st.lists(st.integers(), max_size=3),
                st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
                st.none(),
            )
        )
        if field == "seq" and isinstance(value, str):
            value = "x" + value
        body[field] = value if value not in ("online", "offline", "lamp", "blinker", "expired") else [value]
        return how, json.dumps(body).encode()
    if how == "missing":
        body.pop(field)
        return how, json.dumps(body).encode()
    if how == "deep":
        depth = draw(st.integers(min_value=100, max_value=5000))
        text = json.dumps({**body, field: 0}).replace(f'"{field}": 0', f'"{field}": {_deep(depth)}')
        return how, text.encode()
    if how == "huge":
        body[field] = "x" * draw(st.integers(min_value=10_000, max_value=200_000))
        return how, json.dumps(body).encode()
    if how == "not_object":
        value = draw(st.one_of(st.lists(st.integers(), max_size=5), st.integers(), st.text(max_size=10)))
        return how, json.dumps(value).encode()
    # oversized: a valid-looking message padded past the 16 KiB limit, up to 1 MB
    pad = draw(st.sampled_from([20_000, 300_000, 1_048_576]))
    return how, json.dumps({**body, "padding": "p" * pad}).encode()


@pytest.mark.usefixtures("needs_mosquitto")
def test_fuzzed_mqtt_payloads_on_every_topic_kind_are_counted_dead_lettered_and_never_stored(
    tmp_path: Path, migrated: str, figures_dir: Path
) -> None:
    uid = uuid.uuid4().hex[:8]
    mport = free_port()
    published: Counter[str] = Counter()
    by_rule: Counter[str] = Counter()
    # The deployed broker drops a packet over 17,408 bytes itself; this one lets oversized
    # payloads through so that ingest's own bound, the wall for brokers with larger limits
    # (RabbitMQ, EMQX), is what refuses them.
    lenient = "max_packet_size 2000000\nmessage_size_limit 0\n"
    with private_broker(tmp_path, lenient) as broker, Processes(tmp_path) as procs:
        ingest = procs.ingest(broker.url, migrated, client_id=f"fuzz-{uid}", metrics_port=mport)
        controller = procs.controller(broker.url, migrated, districts="11230")
        _wait_ingest_subscribed(mport)
        before = metrics(mport).get("ingest_dead_letters_total", 0.0)
        pub = paho_client(parse_mqtt_url(broker.url), f"fuzzpub-{uid}")
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        n = [0]
        try:

            @settings(NO_RETRY, max_examples=300)
            @given(
                st.sampled_from(sorted(REQUIRED)).flatmap(lambda k: st.tuples(st.just(k), bad_payloads(k)))
            )
            def publish(case: tuple[str, tuple[str, bytes]]) -> None:
                kind, (rule, payload) = case
                n[0] += 1
                topic = f"sl/v1/11230/Z{uid}{n[0]:05d}/{kind}"
                pub.publish(topic, payload, qos=1).wait_for_publish(10)
                published[kind] += 1
                by_rule[rule] += 1

            publish()
            # malformed topics too: a district that is not 5 digits, an id too long
            for kind in sorted(REQUIRED):
                n[0] += 1
                pub.publish(f"sl/v1/1123/Z{uid}{n[0]:05d}/{kind}", b"{}", qos=1).wait_for_publish(10)
                published["bad_topic"] += 1
            total = sum(published.values())
            like = f"%Z{uid}%"
            wait_until(
                lambda: (
                    scalar(migrated, "SELECT count(*) FROM dead_letters WHERE topic LIKE %s", like) >= total
                ),
                60,
                "every fuzzed message as a dead letter",
            )
            time.sleep(1.0)
            counted = metrics(mport).get("ingest_dead_letters_total", 0.0) - before
            dead = scalar(migrated, "SELECT count(*) FROM dead_letters WHERE topic LIKE %s", like)
            rows = scalar(
                migrated,
                "SELECT (SELECT count(*) FROM telemetry WHERE device_id LIKE %s)"
                " + (SELECT count(*) FROM events WHERE device_id LIKE %s)"
                " + (SELECT count(*) FROM devices WHERE device_id LIKE %s)"
                " + (SELECT count(*) FROM device_state WHERE device_id LIKE %s)",
                like, like, like, like,
            )  # fmt: skip
            alive = {"ingest": ingest.alive(), "controller": controller.alive()}
        finally:
            pub.disconnect()
            pub.loop_stop()
    figures = {
        "published": total,
        "by_kind": dict(published),
        "by_rule": dict(by_rule),
        "counted_by_ingest": int(counted),
        "dead_letters": dead,
        "rows_from_them": rows,
        "alive_after": alive,
    }
    write_figures(figures_dir, "B1_mqtt_fuzz", figures)
    assert alive == {"ingest": True, "controller": True}, "a service crashed on bad input"
    assert dead == total and int(counted) == total
    assert rows == 0


# --------------------------------------------------------------------------- the API in-process


@pytest.fixture
def api_url(migrated: str) -> Iterator[str]:
    """A real uvicorn serving the API on a fresh database (lamps none, operators seeded)."""
    seed(migrated)
    # Many residents from this one host: no per-address registration limit.
    with serve(fast_config(migrated, registrations_per_hour=0)) as url:
        yield url


def _resident(client: httpx.Client) -> dict[str, str]:
    token = client.post("/v1/residents", json={}).json()["token"]
    return {"Authorization": f"Bearer {token}"}


def bad_points() -> st.SearchStrategy[tuple[float, float]]:
    """Positions no walk may use: out of range, not finite, null island, outside Seoul."""
    nan = st.sampled_from([math.nan, math.inf, -math.inf])
    return st.one_of(
        st.tuples(
            st.floats(min_value=90.000001, max_value=1e6) | st.floats(max_value=-90.000001, min_value=-1e6),
            st.floats(-180, 180),
        ),
        st.tuples(
            st.floats(-90, 90),
            st.floats(min_value=180.000001, max_value=1e6) | st.floats(max_value=-180.000001, min_value=-1e6),
        ),
        st.tuples(nan, st.floats(-180, 180)),
        st.tuples(st.floats(-90, 90), nan),
        st.just((0.0, 0.0)),
        # outside Seoul: farther than ~5 km beyond its bounding box (the gazetteer snaps 200 m)
        st.tuples(st.floats(-90, 37.38), st.floats(-180, 180)),
        st.tuples(st.floats(37.76, 90), st.floats(-180, 180)),
        st.tuples(st.floats(-90, 90), st.floats(-180, 126.70)),
        st.tuples(st.floats(-90, 90), st.floats(127.25, 180)),
    )


def _body(lat: float, lon: float) -> bytes:
    # allow_nan: the app (or an attacker) can send a raw NaN/Infinity in the JSON text
    return json.dumps({"lat": lat, "lon": lon, "accuracy_m": 10.0}, allow_nan=True).encode()


def test_generated_bad_positions_are_never_accepted_by_the_api(api_url: str, figures_dir: Path) -> None:
    statuses: Counter[str] = Counter()
    accepted: list[tuple[float, float, str]] = []
    with httpx.Client(base_url=api_url, timeout=10) as client:
        # positions are limited to 2 a second per walk and one walk per resident: spread the
        # examples over many residents' walks
        start = {"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 8}
        walkers = []
        for _ in range(60):
            auth = {**_resident(client), "content-type": "application/json"}
            walkers.append((auth, client.post("/v1/walks", json=start, headers=auth).json()["walk_id"]))
        turn = [0]

        @settings(NO_RETRY, max_examples=120)
        @given(bad_points())
        def check(point: tuple[float, float]) -> None:
            lat, lon = point
            turn[0] += 1
            headers, walk_id = walkers[turn[0] % len(walkers)]
            for what, path in (("walk", "/v1/walks"), ("position", f"/v1/walks/{walk_id}/positions")):
                r = client.post(path, content=_body(lat, lon), headers=headers)
                statuses[f"{what} {r.status_code}"] += 1
                if r.status_code < 400 or r.status_code >= 500:
                    accepted.append((lat, lon, f"{what} {r.status_code}"))
            if not (math.isfinite(lat) and math.isfinite(lon) and abs(lat) <= 90 and abs(lon) <= 180):
                sos = _resident(client)
                sos["content-type"] = "application/json"
                r = client.post("/v1/sos", content=_body(lat, lon), headers=sos)
                statuses[f"sos {r.status_code}"] += 1
                if r.status_code != 422:
                    accepted.append((lat, lon, f"sos {r.status_code}"))

        check()
    write_figures(
        figures_dir,
        "B2_api_positions",
        {"tried": dict(statuses), "accepted": len(accepted), "examples": accepted[:10]},
    )
    assert accepted == []


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(bad_points())
def test_generated_bad_positions_are_refused_by_the_controllers_checks(point: tuple[float, float]) -> None:
    lat, lon = point
    now = int(time.time() * 1000)
    verdict = check_fix(Fix(lat, lon, now, 10.0), now)
    assert not verdict.accepted, (lat, lon, verdict)


def test_a_position_outside_seoul_is_refused_by_the_controllers_checks() -> None:
    now = int(time.time() * 1000)
    verdict = check_fix(Fix(BUSAN[0], BUSAN[1], now, 10.0), now)
    assert not verdict.accepted
    assert "outside the service area" in (verdict.reason or "")
    # consistent with the API: inside Seoul (Jung-gu) the same checks accept
    assert check_fix(Fix(JUNG[0], JUNG[1], now, 10.0), now).accepted


# --------------------------------------------------------------------------- B3 replayed and forged


def test_replayed_and_forged_requests(api_url: str, figures_dir: Path) -> None:
    out: dict[str, Any] = {}
    with httpx.Client(base_url=api_url, timeout=10) as client:
        alice, bob = _resident(client), _resident(client)
        key = uuid.uuid4().hex
        body = {"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 8}
        first = client.post("/v1/sos", json=body, headers={**alice, "Idempotency-Key": key})
        again = [
            client.post("/v1/sos", json=body, headers={**alice, "Idempotency-Key": key}) for _ in range(3)
        ]
        stolen_key = client.post("/v1/sos", json=body, headers={**bob, "Idempotency-Key": key})
        walk = client.post("/v1/walks", json=body, headers=alice).json()["walk_id"]
        bob_position = client.post(f"/v1/walks/{walk}/positions", json=body, headers=bob)
        bob_end = client.post(f"/v1/walks/{walk}/end", json={}, headers=bob)
        alert = first.json()["alert_id"]
        bob_read = client.get(f"/v1/sos/{alert}", headers=bob)
        bob_cancel = client.post(f"/v1/sos/{alert}/cancel", json={}, headers=bob)
        token = alice["Authorization"].split()[1]
        forged = {"Authorization": "Bearer " + token[:-2] + ("AA" if not token.endswith("AA") else "BB")}
        forged_sos = client.post(
            "/v1/sos", json=body, headers={**forged, "Idempotency-Key": uuid.uuid4().hex}
        )
        forged_walk = client.post(f"/v1/walks/{walk}/positions", json=body, headers=forged)
        resident_as_operator = client.get("/v1/alerts", headers=alice)
        alice_position = client.post(f"/v1/walks/{walk}/positions", json=body, headers=alice)
    out = {
        "first": first.status_code,
        "replays": [r.status_code for r in again],
        "replays_same_alert": all(r.json().get("alert_id") == alert for r in again),
        "replays_marked": all(r.headers.get("Idempotent-Replayed") == "true" for r in again),
        "other_resident_same_key": stolen_key.status_code,
        "other_resident_got_alices_alert": stolen_key.json().get("alert_id") == alert,
        "bob_position_on_alices_walk": bob_position.status_code,
        "bob_ends_alices_walk": bob_end.status_code,
        "bob_reads_alices_sos": bob_read.status_code,
        "bob_cancels_alices_sos": bob_cancel.status_code,
        "forged_token_sos": forged_sos.status_code,
        "forged_token_walk": forged_walk.status_code,
        "resident_token_on_operator_api": resident_as_operator.status_code,
        "alice_still_walks": alice_position.status_code,
    }
    write_figures(figures_dir, "B3_replay_forgery", out)
    assert out["first"] == 202 and out["replays"] == [202, 202, 202]
    assert out["replays_same_alert"] and out["replays_marked"]
    assert out["other_resident_got_alices_alert"] is False
    assert out["bob_position_on_alices_walk"] == 403 and out["bob_ends_alices_walk"] == 403
    assert out["bob_reads_alices_sos"] == 404 and out["bob_cancels_alices_sos"] == 404
    assert out["forged_token_sos"] == 401 and out["forged_token_walk"] == 401
    assert out["resident_token_on_operator_api"] == 401
    assert out["alice_still_walks"] == 200


# --------------------------------------------------------------------------- B4 Schemathesis


def test_schemathesis_over_the_whole_api_finds_no_5xx(api_url: str, figures_dir: Path) -> None:
    import schemathesis

    with httpx.Client(base_url=api_url, timeout=10) as client:
        resident = _resident(client)
        login = client.post(
            "/v1/auth/login", json={"username": "op-admin", "password": "correct horse battery"}
        )
        admin = {"Authorization": f"Bearer {login.json()['token']}"}
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[str] = []
    operations = 0
    current: list[dict[str, str]] = [admin]
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        resident_side = operation.path.startswith(("/v1/residents", "/v1/walks", "/v1/sos"))
        current[0] = resident if resident_side else admin

        @settings(NO_RETRY, max_examples=10)
        @given(case=operation.as_strategy())
        def call(case: Any) -> None:
            response = case.call(headers={**current[0], **(case.headers or {})}, timeout=10)
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                server_errors.append(f"{case.method} {case.formatted_path} -> {response.status_code}")

        call()
    figures = {
        "operations": operations,
        "requests": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": server_errors[:20],
    }
    write_figures(figures_dir, "B4_schemathesis", figures)
    assert operations >= 20
    assert server_errors == []


def test_a_login_with_a_nul_in_the_username_is_refused_not_a_server_error(api_url: str) -> None:
    # found by Schemathesis: PostgreSQL text cannot hold NUL, and the lookup raised (500)
    r = httpx.post(f"{api_url}/v1/auth/login", json={"username": "a\x00b", "password": "x"}, timeout=10)
    assert r.status_code == 422
