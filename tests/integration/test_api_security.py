"""The HTTP API attacked as an operator's stolen token, a password guesser, a throw-away resident or a
curious maintenance login would (issue 15): against a real uvicorn and a real PostgreSQL, from
several loopback addresses (127.0.0.x) where the source address matters."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from argon2 import PasswordHasher
from fastapi.routing import APIRoute, APIWebSocketRoute
from psycopg_pool import ConnectionPool
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from alerts import resident_pseudonym
from api.accounts import create_operator
from api.app import create_app
from api.security import password_hasher
from devkit.apiclient import GANGNAM, JUNG, PASSWORD, fast_config, login, resident, seed, serve

pytestmark = pytest.mark.integration

LAMPS = [("sj1", "11020", JUNG[0], JUNG[1] + 0.0001), ("sg1", "11230", GANGNAM[0], GANGNAM[1] + 0.0001)]
METRICS_TOKEN = "prometheus-scrape-token"
STATIC = Path(__file__).resolve().parents[2] / "api" / "static"


@pytest.fixture
def server(db_url: str) -> Iterator[str]:
    seed(db_url, LAMPS)
    with serve(fast_config(db_url, metrics_token=METRICS_TOKEN)) as base:
        yield base


@pytest.fixture
def api(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=10.0) as c:
        yield c


@contextmanager
def from_address(base: str, address: str) -> Iterator[httpx.Client]:
    """A client whose requests come from another loopback address (another place, for the API)."""
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=base, timeout=10.0, transport=transport) as c:
        yield c


def sql(db_url: str, query: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


def raise_sos(c: httpx.Client, at: tuple[float, float], headers: dict[str, str] | None = None) -> str:
    r = c.post("/v1/sos", json={"lat": at[0], "lon": at[1], "accuracy_m": 5}, headers=headers or resident(c))
    assert r.status_code == 202, r.text
    return str(r.json()["alert_id"])


def ws_url(base: str) -> str:
    return base.replace("http://", "ws://") + "/v1/stream"


def token_of(headers: dict[str, str]) -> str:
    return headers["Authorization"].split()[1]


def closed_code(ws: Any, within_s: float = 5.0) -> int | None:
    """Read until the server closes the socket; its close code (None if still open)."""
    deadline = time.monotonic() + within_s
    try:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.05, deadline - time.monotonic()))
    except ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd else None
    except TimeoutError:
        return None
    return None


# --------------------------------------------------------------------------- operators' tokens


def test_a_disabled_operators_token_is_refused_at_once(api: httpx.Client, db_url: str) -> None:
    jung, gangnam, admin = login(api, "op-jung"), login(api, "op-gangnam"), login(api, "op-admin")
    assert api.get("/v1/me", headers=jung).status_code == 200
    r = api.post("/v1/operators/op-jung/disable", headers=admin)
    assert r.status_code == 200 and r.json() == {"username": "op-jung", "disabled": True}
    r = api.get("/v1/me", headers=jung)
    assert r.status_code == 401 and "session ended" in r.json()["detail"]
    assert api.post("/v1/auth/login", json={"username": "op-jung", "password": PASSWORD}).status_code == 401
    api.post("/v1/operators/op-jung/enable", headers=admin)
    assert api.get("/v1/me", headers=jung).status_code == 401  # enabling again revives no old session
    jung = login(api, "op-jung")
    assert api.get("/v1/me", headers=jung).status_code == 200
    # Disabled by hand in the database: the next request already knows.
    sql(db_url, "UPDATE operators SET disabled = true WHERE username = 'op-gangnam'")
    assert api.get("/v1/alerts", headers=gangnam).status_code == 401
    assert api.post("/v1/operators/op-jung/disable", headers=jung).status_code == 403


def test_an_operator_moved_to_another_district_sees_it_from_the_next_request(
    api: httpx.Client, db_url: str
) -> None:
    jung_alert, gangnam_alert = raise_sos(api, JUNG), raise_sos(api, GANGNAM)
    op = login(api, "op-jung")
    assert api.get("/v1/me", headers=op).json()["districts"] == ["11020"]
    # What `streetlight api --create-operator` does to an existing account: the row changes.
    sql(db_url, "UPDATE operators SET district_code = '11230' WHERE username = 'op-jung'")
    assert api.get("/v1/me", headers=op).json()["districts"] == ["11230"]
    listed = {a["id"] for a in api.get("/v1/alerts", headers=op).json()["alerts"]}
    assert listed == {gangnam_alert}
    assert api.get(f"/v1/alerts/{jung_alert}", headers=op).status_code == 404
    sql(db_url, "UPDATE operators SET role = 'maintenance', district_code = NULL WHERE username = 'op-jung'")
    assert api.get("/v1/alerts", headers=op).json()["alerts"] == []
    # An admin replacing the account (new password) ends its sessions.
    city = login(api, "op-city")
    admin = login(api, "op-admin")
    body = {"username": "op-city", "password": "a new password", "role": "city"}
    assert api.post("/v1/operators", json=body, headers=admin).status_code == 201
    assert api.get("/v1/me", headers=city).status_code == 401


def test_logout_revokes_the_token_and_closes_its_live_stream(server: str, api: httpx.Client) -> None:
    op = login(api, "op-jung")
    other = login(api, "op-jung")  # a second session of the same operator stays
    with connect(
        ws_url(server), subprotocols=["streetlight.v1", f"bearer.{token_of(op)}"], open_timeout=5
    ) as ws:  # type: ignore[list-item]
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"
        assert api.post("/v1/auth/logout", headers=op).status_code == 204
        assert closed_code(ws) == 1008
    assert api.get("/v1/me", headers=op).status_code == 401
    assert api.get("/v1/me", headers=other).status_code == 200
    with pytest.raises(InvalidStatus):
        connect(ws_url(server), subprotocols=["streetlight.v1", f"bearer.{token_of(op)}"], open_timeout=5)  # type: ignore[list-item]


def test_a_disabled_operators_stream_closes_and_a_moved_ones_is_told_to_reconnect(
    server: str, api: httpx.Client, db_url: str
) -> None:
    jung, city, admin = login(api, "op-jung"), login(api, "op-city"), login(api, "op-admin")
    proto = ["streetlight.v1", f"bearer.{token_of(jung)}"]
    with connect(ws_url(server), subprotocols=proto, open_timeout=5) as ws:  # type: ignore[arg-type]
        ws.recv(timeout=5)
        api.post("/v1/operators/op-jung/disable", headers=admin)
        assert closed_code(ws) == 1008
    with connect(
        ws_url(server), subprotocols=["streetlight.v1", f"bearer.{token_of(city)}"], open_timeout=5
    ) as ws:  # type: ignore[list-item]
        ws.recv(timeout=5)
        sql(
            db_url,
            "WITH u AS (UPDATE operators SET role = 'district', district_code = '11230' "
            "WHERE username = 'op-city' RETURNING username) SELECT pg_notify('sl_operator', username) FROM u",
        )
        assert closed_code(ws) == 4001


def test_the_stream_refuses_a_token_in_the_url_and_no_log_holds_a_token(
    server: str, api: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    op = login(api, "op-jung")
    with pytest.raises(InvalidStatus) as caught:
        connect(f"{ws_url(server)}?token={token_of(op)}", open_timeout=5)
    assert caught.value.response.status_code == 403
    # A console's session, with every logger of the process at DEBUG: the token appears in none.
    for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "api", "websockets"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        session = login(api, "op-jung")
        token = token_of(session)
        api.get("/v1/alerts", headers=session)
        with connect(
            f"{ws_url(server)}?last_event_id=0",
            subprotocols=["streetlight.v1", f"bearer.{token}"],
            open_timeout=5,  # type: ignore[list-item]
        ) as ws:
            ws.recv(timeout=5)
        api.post("/v1/auth/logout", headers=session)
        time.sleep(0.2)
    finally:
        for name in ("uvicorn", "uvicorn.access", "uvicorn.error", "api", "websockets"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server_records = [r for r in caplog.records if not r.name.startswith("websockets.client")]
    assert [r for r in server_records if r.getMessage().endswith("Sec-WebSocket-Protocol: [redacted]")]
    assert not [r for r in server_records if token in r.getMessage()]


def test_the_walkers_socket_takes_no_token_from_the_url(server: str, api: httpx.Client) -> None:
    headers = resident(api)
    walk = api.post("/v1/walks", json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}, headers=headers)
    url = (
        server.replace("http://", "ws://")
        + f"/v1/walks/{walk.json()['walk_id']}/live?token={token_of(headers)}"
    )
    with connect(url, open_timeout=5) as ws:  # accepted, then waits for the token as its first message
        ws.send(json.dumps({"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}))
        answer = json.loads(ws.recv(timeout=5))
    assert answer["status"] == 401 and "missing token" in answer["error"]


# --------------------------------------------------------------------------- password guessing


def test_login_checks_one_password_hash_whether_the_username_exists_or_not(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real cost (16 MiB, 2 passes: tens of ms), so a skipped hash would show in the timing.
    seed(db_url)
    hasher = password_hasher(2, 16384)
    with psycopg.connect(db_url, autocommit=True) as conn:
        create_operator(conn, "op-timed", PASSWORD, role="city", hasher=hasher)
    calls: list[str] = []
    real_verify = PasswordHasher.verify

    def counting_verify(self: PasswordHasher, hash: str, password: str | bytes) -> bool:
        calls.append(hash)
        return real_verify(self, hash, password)

    monkeypatch.setattr(PasswordHasher, "verify", counting_verify)
    config = fast_config(db_url, kdf_time_cost=2, kdf_memory_kib=16384)
    with serve(config) as base, httpx.Client(base_url=base, timeout=10.0) as c:

        def attempt(username: str) -> float:
            start = time.perf_counter()
            r = c.post("/v1/auth/login", json={"username": username, "password": "wrong password"})
            assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
            return time.perf_counter() - start

        calls.clear()
        attempt("nobody-here")
        assert len(calls) == 1
        calls.clear()
        attempt("op-timed")
        assert len(calls) == 1
        unknown, known = [], []
        for _ in range(7):  # interleaved, so a burst of load on the machine hits both alike
            unknown.append(attempt("nobody-here"))
            known.append(attempt("op-timed"))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.33 < ratio < 3.0, (unknown, known)


def test_guessing_from_elsewhere_never_locks_out_the_operator_where_they_work(
    server: str, api: httpx.Client, db_url: str
) -> None:
    with from_address(server, "127.0.0.1") as office:
        login(office, "op-jung")  # the control centre: a place op-jung logged in from
    with from_address(server, "127.0.0.2") as attacker:
        codes = [
            attacker.post("/v1/auth/login", json={"username": "op-jung", "password": f"guess{i}"}).status_code
            for i in range(11)
        ]
    assert codes == [401] * 10 + [429]
    with from_address(server, "127.0.0.1") as office:
        assert (
            office.post("/v1/auth/login", json={"username": "op-jung", "password": PASSWORD}).status_code
            == 200
        )
    with from_address(server, "127.0.0.3") as elsewhere:
        r = elsewhere.post("/v1/auth/login", json={"username": "op-jung", "password": PASSWORD})
        assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    failed = sql(
        db_url,
        "SELECT actor, details->>'address', details->>'reason' FROM audit_log "
        "WHERE action = 'login.failed' AND subject_id = 'op-jung'",
    )
    assert failed == [("address:127.0.0.2", "127.0.0.2", "wrong_password")] * 10
    throttled = sql(db_url, "SELECT actor FROM audit_log WHERE action = 'login.throttled'")
    assert ("address:127.0.0.2",) in throttled and ("address:127.0.0.3",) in throttled


def test_a_guesser_behind_the_control_centres_address_does_not_lock_its_operators_out(
    server: str, db_url: str
) -> None:
    with from_address(server, "127.0.0.12") as centre:
        login(centre, "op-jung")  # the control centre's (shared, NAT) address: a known place
        codes = [
            centre.post("/v1/auth/login", json={"username": f"x{i}", "password": "guess"}).status_code
            for i in range(31)
        ]
        assert codes[:30] == [401] * 30 and codes[30] == 429  # the address is over its failures
        right = centre.post("/v1/auth/login", json={"username": "op-jung", "password": PASSWORD})
        wrong = centre.post("/v1/auth/login", json={"username": "op-jung", "password": "nope"})
        never_here = centre.post("/v1/auth/login", json={"username": "op-city", "password": PASSWORD})
    assert right.status_code == 200
    assert wrong.status_code == 429 and never_here.status_code == 429


def test_a_password_spray_from_one_address_is_audited_counted_and_slowed(
    server: str, api: httpx.Client, db_url: str
) -> None:
    names = [f"user{i:02d}" for i in range(35)] + ["op-jung"]
    with from_address(server, "127.0.0.4") as sprayer:
        codes = [
            sprayer.post("/v1/auth/login", json={"username": n, "password": "Spring2026!"}).status_code
            for n in names
        ]
    assert codes[:30] == [401] * 30 and set(codes[30:]) == {429}
    # Another place is not slowed by that address's failures.
    assert login(api, "op-jung")
    spray = sql(db_url, "SELECT actor FROM audit_log WHERE action = 'login.spray_suspected'")
    assert spray == [("address:127.0.0.4",)]
    assert sql(db_url, "SELECT count(*) FROM audit_log WHERE action = 'login.failed'") == [(30,)]
    metrics = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
    assert "streetlight_api_login_sprays_total 1.0" in metrics
    assert 'streetlight_api_login_failures_total{reason="throttled_address"} 6.0' in metrics


# --------------------------------------------------------------------------- residents


def test_a_resident_has_one_walk_in_progress_and_starts_are_limited(api: httpx.Client, db_url: str) -> None:
    headers = resident(api)
    body = {"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}
    walks = [api.post("/v1/walks", json=body, headers=headers).json() for _ in range(3)]
    assert walks[1]["ended"] == [walks[0]["walk_id"]] and walks[2]["ended"] == [walks[1]["walk_id"]]
    resident_id = sql(db_url, "SELECT resident_id FROM walks WHERE walk_id = %s", walks[0]["walk_id"])[0][0]
    active = sql(
        db_url, "SELECT walk_id FROM walks WHERE resident_id = %s AND status = 'active'", resident_id
    )
    assert active == [(walks[2]["walk_id"],)]
    r = api.post(f"/v1/walks/{walks[0]['walk_id']}/positions", json=body, headers=headers)
    assert r.status_code == 409
    codes = [api.post("/v1/walks", json=body, headers=headers).status_code for _ in range(4)]
    assert codes == [201, 201, 201, 429]  # six starts a minute


def test_registrations_from_one_address_are_limited_by_default(server: str) -> None:
    with from_address(server, "127.0.0.5") as farm:
        codes = [farm.post("/v1/residents").status_code for _ in range(61)]
        assert codes[:60] == [201] * 60 and codes[60] == 429
    with from_address(server, "127.0.0.6") as other:
        assert other.post("/v1/residents").status_code == 201


def test_an_sos_burst_from_one_address_is_grouped_and_all_flagged_and_a_real_one_stands_out(
    server: str, api: httpx.Client
) -> None:
    with from_address(server, "127.0.0.7") as farm:
        burst = [raise_sos(farm, JUNG) for _ in range(10)]
    with from_address(server, "127.0.0.8") as phone:
        real = raise_sos(phone, JUNG)
    alerts = {a["id"]: a for a in api.get("/v1/alerts", headers=login(api, "op-jung")).json()["alerts"]}
    assert set(burst) | {real} <= set(alerts)  # nothing dropped: eleven open SOS
    assert all(alerts[a]["state"] == "open" for a in [*burst, real])
    assert all(alerts[a]["suspected_burst"] and alerts[a]["burst_group"] == burst[0] for a in burst)
    assert alerts[real]["suspected_burst"] is False and alerts[real]["burst_group"] is None


# --------------------------------------------------------------------------- the HTTP boundary


def _all_routes(routes: list[Any]) -> Iterator[Any]:
    """Every route, through FastAPI's included routers (this app includes them without a prefix)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _all_routes(inner.routes)
        else:
            yield route


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def test_a_nul_byte_in_any_path_or_query_value_is_a_4xx_on_every_endpoint(db_url: str) -> None:
    seed(db_url, LAMPS)
    routes = create_app(fast_config(db_url)).routes  # the route table only (no lifespan runs)
    body = {"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5, "level": 50, "duration_s": 60}
    body |= {"username": "someone", "password": "a password!", "role": "city"}
    checked: list[tuple[str, str, int]] = []
    with serve(fast_config(db_url, registrations_per_hour=0)) as base, httpx.Client(base_url=base) as c:
        admin = login(c, "op-admin")
        for route in _all_routes(routes):
            if isinstance(route, APIWebSocketRoute) and "{" in route.path:
                url = base.replace("http://", "ws://") + _fill(route.path, "a%00b")
                with pytest.raises(InvalidStatus) as caught:
                    connect(url, additional_headers=resident(c), open_timeout=5)
                checked.append(("WS", url, caught.value.response.status_code))
                continue
            if not isinstance(route, APIRoute):
                continue
            names = [p.alias for p in route.dependant.query_params]
            urls = [_fill(route.path, "a%00b")] if "{" in route.path else []
            urls += [f"{_fill(route.path, 'x1')}?{name}=%00" for name in names]
            urls += [f"{_fill(route.path, 'x1')}?{name}=a%00b&{name}=b" for name in names]
            for method in sorted(route.methods):
                for url in urls:
                    residents_route = route.path.startswith(("/v1/sos", "/v1/walks", "/v1/residents"))
                    headers = resident(c) if residents_route else admin
                    send = {"json": body} if method in ("POST", "PUT", "PATCH") else {}
                    r = c.request(method, url, headers=headers, **send)  # type: ignore[arg-type]
                    checked.append((method, url, r.status_code))
    assert len(checked) >= 15
    assert [x for x in checked if not 400 <= x[2] < 500] == []
    # A NUL that reaches PostgreSQL inside a body (jsonb refuses \u0000): a 400 from the one handler.
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base) as c:
        alert_id = raise_sos(c, JUNG)
        r = c.post(f"/v1/alerts/{alert_id}/dispatch", json={"unit": "a\u0000b"}, headers=login(c, "op-jung"))
        assert r.status_code == 400 and "refused" in r.json()["detail"]


def _raw_request(base: str, head: bytes, chunks: Callable[[], Iterator[bytes]]) -> tuple[bytes, float]:
    """Send `head` then body chunks until the server answers; the answer and the seconds it took."""
    host, port = base.removeprefix("http://").split(":")
    start = time.perf_counter()
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        for chunk in chunks():
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
        sock.settimeout(5)
        try:
            while b"\r\n\r\n" not in answer:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.perf_counter() - start


def test_a_30_mb_body_is_refused_by_its_size_before_it_is_read(server: str) -> None:
    size = 30 * 1024 * 1024
    head = f"POST /v1/sos HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    # Only 64 KiB of the announced 30 MB is ever sent: an answer proves nothing more was awaited.
    answer, took = _raw_request(server, head, lambda: iter([b"[" * 65536]))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert took < 3.0
    chunked = b"POST /v1/sos HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

    def chunks() -> Iterator[bytes]:
        for _ in range(2048):  # up to 32 MiB, 16 KiB at a time, until the server answers
            yield b"4000\r\n" + b"[" * 16384 + b"\r\n"
            time.sleep(0.001)
        yield b"0\r\n\r\n"

    answer, took = _raw_request(server, chunked, chunks)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert took < 10.0


def test_the_console_and_the_api_send_security_headers_and_the_console_has_no_inline_code(
    api: httpx.Client,
) -> None:
    for path in ["/", "/console", "/static/console.js", "/v1/districts", "/healthz", "/v1/nowhere", "/v1/me"]:
        r = api.get(path)
        csp = r.headers.get("content-security-policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, csp)
        assert "unsafe-inline" not in csp
        assert r.headers.get("x-content-type-options") == "nosniff", path
        assert r.headers.get("referrer-policy") == "no-referrer", path
    assert "frame-ancestors 'none'" in api.get("/docs").headers["content-security-policy"]
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and "<style" not in html
    assert not re.search(r"\s(on[a-z]+|style)=", html)
    assert not re.search(r"setAttribute\(\s*['\"](on[a-z]+|style)['\"]", (STATIC / "console.js").read_text())


def test_metrics_answer_only_the_scraper_holding_the_token(api: httpx.Client, db_url: str) -> None:
    assert api.get("/metrics").status_code == 401
    assert api.get("/metrics", headers={"Authorization": "Bearer guess"}).status_code == 401
    r = api.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert r.status_code == 200 and "streetlight_api_requests_total" in r.text
    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base) as c:
        assert c.get("/metrics").status_code == 404  # no token configured: not served at all


# --------------------------------------------------------------------------- privacy of reads


def test_every_answer_with_a_residents_position_is_audited_and_maintenance_gets_none(
    api: httpx.Client, db_url: str
) -> None:
    headers = resident(api)
    api.post("/v1/walks", json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}, headers=headers)
    alert_id = raise_sos(api, JUNG, headers)
    resident_id = sql(db_url, "SELECT resident_id FROM alerts WHERE alert_id = %s", alert_id)[0][0]
    jung, maint = login(api, "op-jung"), login(api, "op-maint")
    assert api.get(f"/v1/alerts/{alert_id}/cap", headers=jung).status_code == 200
    assert api.get("/v1/alerts", headers=jung).status_code == 200
    assert len(api.get("/v1/walkers", headers=jung).json()["walkers"]) == 1
    r = api.get("/v1/walkers", headers=maint)
    assert r.status_code == 403 and "maintenance" in r.json()["detail"]
    assert api.get(f"/v1/alerts/{alert_id}/cap", headers=maint).status_code == 404
    rows = sql(
        db_url,
        "SELECT actor, action, subject_kind, subject_id FROM audit_log "
        "WHERE action IN ('read_cap', 'read_alert_list', 'read_walkers') ORDER BY id",
    )
    key = sql(db_url, "SELECT value FROM store_meta WHERE key = 'audit_pseudonym_key'")[0][0]
    pseudonym = resident_pseudonym(bytes.fromhex(key), resident_id)  # never the id itself
    assert rows == [
        ("operator:op-jung", "read_cap", "resident", pseudonym),
        ("operator:op-jung", "read_alert_list", "resident", pseudonym),
        ("operator:op-jung", "read_walkers", "walkers", "11020"),
    ]
    assert sql(
        db_url, "SELECT count(*) FROM audit_log WHERE audit_log::text LIKE %s", f"%{resident_id}%"
    ) == [(0,)]


def test_an_oversized_websocket_message_closes_the_walkers_socket_unread(
    server: str, api: httpx.Client
) -> None:
    headers = resident(api)
    walk = api.post("/v1/walks", json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}, headers=headers)
    url = server.replace("http://", "ws://") + f"/v1/walks/{walk.json()['walk_id']}/live"
    with connect(url, additional_headers=headers, open_timeout=5, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=5))["status"] == "live"
        ws.send('{"lat": ' + " " * (1024 * 1024) + "37.56}")
        assert closed_code(ws) == 1009  # message too big


def test_a_live_stream_ends_when_its_token_expires(db_url: str) -> None:
    seed(db_url)
    with serve(fast_config(db_url, token_ttl_s=2.0)) as base, httpx.Client(base_url=base) as c:
        token = token_of(login(c, "op-jung"))
        with connect(ws_url(base), subprotocols=["streetlight.v1", f"bearer.{token}"], open_timeout=5) as ws:  # type: ignore[list-item]
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            assert closed_code(ws, within_s=6.0) == 1008


def test_lamp_overrides_never_name_a_walk_or_an_sos_and_maintenance_sees_none_of_theirs(
    api: httpx.Client, db_url: str
) -> None:
    commands = [
        ("c-walk", "walk", "set_level", 100, "walk_abc"),
        ("c-sos", "sos", "blink", None, "sos_def"),
        ("c-manual", "manual", "set_level", 30, "operator:op-maint"),
    ]
    for cmd_id, priority, action, level, source in commands:
        sql(
            db_url,
            "INSERT INTO commands (cmd_id, device_id, district_code, action, level, priority, source, "
            "ttl_s, sent_at, expires_at) VALUES (%s, 'sj1', '11020', %s, %s, %s, %s, 60, now(), "
            "now() + interval '60 s')",
            cmd_id,
            action,
            level,
            priority,
            source,
        )
    jung, maint = login(api, "op-jung"), login(api, "op-maint")
    for headers, expected in ((jung, ["c-walk", "c-sos", "c-manual"]), (maint, ["c-manual"])):
        listed = api.get("/v1/lamps", headers=headers).json()["features"]
        detail = api.get("/v1/lamps/sj1", headers=headers).json()["lamp"]
        for props in (next(f["properties"] for f in listed if f["id"] == "sj1"), detail):
            assert [o["cmd_id"] for o in props["overrides"]] == expected
            assert all("source" not in o for o in props["overrides"])
            body = json.dumps(props)
            assert "walk_abc" not in body and "sos_def" not in body
    audited = sql(
        db_url,
        "SELECT actor, subject_id, details FROM audit_log WHERE action = 'read_lamp_overrides' ORDER BY id",
    )
    counts = {"sos_overrides": 1, "walk_overrides": 1}
    assert audited == [("operator:op-jung", "11020", counts), ("operator:op-jung", "sj1", counts)]


def test_sos_pressed_in_a_loop_writes_little_past_the_limit_and_a_later_sos_is_still_accepted(
    api: httpx.Client, db_url: str
) -> None:
    me = resident(api)
    started = time.monotonic()
    codes = [
        api.post(
            "/v1/sos",
            json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5},
            headers={**me, "Idempotency-Key": "first"} if i == 0 else me,
        ).status_code
        for i in range(60)
    ]
    seconds = int(time.monotonic() - started) + 1
    assert codes[:3] == [202, 202, 202] and set(codes[3:]) == {429}
    alert_id = sql(db_url, "SELECT alert_id FROM alerts")[0][0]
    events = sql(db_url, "SELECT count(*) FROM alert_events WHERE alert_id = %s", alert_id)[0][0]
    points = sql(db_url, "SELECT count(*) FROM alert_positions WHERE alert_id = %s", alert_id)[0][0]
    keys = sql(db_url, "SELECT count(*) FROM idempotency_keys")[0][0]
    count, track, timeline = sql(
        db_url,
        "SELECT (data->>'count')::int, jsonb_array_length(data->'track'), "
        "jsonb_array_length(data->'timeline') FROM alerts WHERE alert_id = %s",
        alert_id,
    )[0]
    # The three accepted presses: one timeline entry, track point and key each; the 57 over the
    # limit: the latest position at most once a second, no timeline entry, no key.
    assert events == timeline == 3 and keys == 3
    assert 4 <= points == track == count <= 3 + seconds
    # Over the limit with no SOS open (the resident cancelled it): a new alert, never refused.
    assert api.post(f"/v1/sos/{alert_id}/cancel", headers=me).status_code == 200
    r = api.post("/v1/sos", json={"lat": JUNG[0], "lon": JUNG[1], "accuracy_m": 5}, headers=me)
    assert r.status_code == 202 and r.json()["alert_id"] != alert_id
    # A retry of an accepted press, past the limit: replayed.
    first = {**me, "Idempotency-Key": "first"}
    replay = api.post("/v1/sos", json={"lat": JUNG[0], "lon": JUNG[1]}, headers=first)
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json()["alert_id"] == alert_id


def test_an_attackers_sos_sent_first_does_not_rank_above_a_real_one_from_the_same_address(
    server: str, api: httpx.Client
) -> None:
    with from_address(server, "127.0.0.11") as shared_nat:
        decoy = raise_sos(shared_nat, JUNG)
        real = raise_sos(shared_nat, JUNG)
    alerts = {a["id"]: a for a in api.get("/v1/alerts", headers=login(api, "op-jung")).json()["alerts"]}
    assert alerts[decoy]["suspected_burst"] is alerts[real]["suspected_burst"] is True
    assert alerts[decoy]["burst_group"] == alerts[real]["burst_group"] == decoy


@pytest.mark.parametrize("trusted", [None, "127.0.0.2"])
def test_a_forwarded_address_is_believed_only_from_a_named_proxy(db_url: str, trusted: str | None) -> None:
    seed(db_url, LAMPS)
    config = fast_config(db_url, registrations_per_hour=2)
    with serve(config, trusted_proxies=trusted) as base, from_address(base, "127.0.0.1") as local:
        codes = [
            local.post("/v1/residents", headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code
            for i in range(3)
        ]
    assert codes == [201, 201, 429]  # a local process cannot pick its own address


def test_behind_a_named_proxy_ipv6_clients_are_keyed_by_their_64(db_url: str) -> None:
    seed(db_url, LAMPS)
    config = fast_config(db_url, registrations_per_hour=2)
    with serve(config, trusted_proxies="127.0.0.2") as base, from_address(base, "127.0.0.2") as proxy:

        def register(client: str) -> int:
            return proxy.post("/v1/residents", headers={"X-Forwarded-For": client}).status_code

        assert [register(f"2001:db8:7:1::{i:x}") for i in range(1, 4)] == [201, 201, 429]
        assert register("2001:db8:7:2::1") == 201  # another /64: another home
        assert register("198.51.100.1") == 201  # the proxy's word is believed
        # Two residents' SOS from one /64 (an attacker's decoy first): one group, both flagged.
        decoy = raise_sos(proxy, JUNG, {**resident(proxy), "X-Forwarded-For": "2001:db8:9:1::a"})
        real = raise_sos(proxy, JUNG, {**resident(proxy), "X-Forwarded-For": "2001:db8:9:1::b"})
        alerts = {
            a["id"]: a for a in proxy.get("/v1/alerts", headers=login(proxy, "op-jung")).json()["alerts"]
        }
    assert alerts[decoy]["suspected_burst"] is alerts[real]["suspected_burst"] is True
    assert alerts[decoy]["burst_group"] == alerts[real]["burst_group"] == decoy


def test_readyz_names_no_database_host_or_user_when_the_database_fails(
    db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seed(db_url, LAMPS)
    secret = 'connection to server at "db.internal" (10.1.2.3), port 5432 failed: user "streetlight"'

    def unreachable(*args: object, **kwargs: object) -> Any:
        raise psycopg.OperationalError(secret)

    with serve(fast_config(db_url)) as base, httpx.Client(base_url=base, timeout=10.0) as c:
        assert c.get("/readyz").status_code == 200
        with monkeypatch.context() as m, caplog.at_level(logging.WARNING, logger="api.app"):
            m.setattr(ConnectionPool, "connection", unreachable)  # the fault: the database is gone
            r = c.get("/readyz")
    assert r.status_code == 503 and r.json() == {"status": "database unavailable"}
    logged = [rec.msg for rec in caplog.records if isinstance(rec.msg, dict)]
    assert any(  # the detail is logged, as the event's error
        e["event"] == "readyz_database_unavailable" and e["error"] == secret for e in logged
    )
