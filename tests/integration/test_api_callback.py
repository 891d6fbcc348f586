"""Call-back against real PostgreSQL and the API in uvicorn: a resident's number registered,
replaced and deleted, encrypted at rest, readable across a key rotation; revealed only to an
operator of the alert's centre while the SOS is open, each reveal in the audit chain and the
resident's export; calls placed / answered / not answered in the timeline, through the tel: link
and through the PBX adapter.

The PBX is an in-test TCP server speaking the Asterisk Manager Interface (banner, Login,
Originate with Async, OriginateResponse): Asterisk is not packaged for this machine's Debian
release (``apt-cache policy asterisk``: no candidate), so no real AMI peer can run here.
"""

from __future__ import annotations

import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from httpx import Client

from api.telephony import AmiConfig
from devkit.apiclient import client, fast_config, login, resident, seed
from store.phones import PhoneKeyring, read_phone, set_phone

LAMPS = [("pl1", "11020", 37.5605, 126.9935)]
SOS = {"lat": 37.5611, "lon": 126.9941, "accuracy_m": 5.0}
NUMBER = "010-4821-7395"
E164 = "+821048217395"


class _Ami(socketserver.StreamRequestHandler):
    """One AMI session: Login accepted, each Originate queued, then its OriginateResponse with the
    next scripted reason (4 answered, 3 no answer)."""

    server: _AmiServer

    def _send(self, **fields: str) -> None:
        self.wfile.write(("".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode())

    def handle(self) -> None:
        self.wfile.write(b"Asterisk Call Manager/5.0.1\r\n")
        msg: dict[str, str] = {}
        for raw in self.rfile:
            line = raw.decode().rstrip("\r\n")
            if line:
                key, _, value = line.partition(":")
                msg[key.strip()] = value.strip()
                continue
            action = msg.get("Action")
            self.server.actions.append(dict(msg))
            if action == "Login":
                ok = msg.get("Secret") == "s3cret"
                self._send(Response="Success" if ok else "Error", ActionID=msg["ActionID"], Message="x")
            elif action == "Originate":
                self._send(
                    Response="Success", ActionID=msg["ActionID"], Message="Originate successfully queued"
                )
                reason = self.server.reasons.pop(0)
                time.sleep(0.2)
                self._send(
                    Event="OriginateResponse",
                    ActionID=msg["ActionID"],
                    Response="Success" if reason == "4" else "Failure",
                    Channel=msg["Channel"],
                    Reason=reason,
                )
            elif action == "Logoff":
                return
            msg = {}


class _AmiServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Ami)
        self.actions: list[dict[str, str]] = []
        self.reasons: list[str] = []


@pytest.fixture
def ami() -> Iterator[_AmiServer]:
    server = _AmiServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def api(db_url: str, ami: _AmiServer) -> Iterator[Client]:
    seed(db_url, LAMPS)
    pbx = AmiConfig(host="127.0.0.1", port=ami.server_address[1], username="sl", secret="s3cret")
    with client(fast_config(db_url, audit_key="test-audit-key", pbx=pbx)) as c:
        yield c


def _sos(api: Client, me: dict[str, str]) -> str:
    r = api.post("/v1/sos", json=SOS, headers={**me, "Idempotency-Key": os.urandom(4).hex()})
    assert r.status_code == 202, r.text
    return str(r.json()["alert_id"])


def _raw_rows(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [str(r[0]) for r in conn.execute("SELECT p::text FROM resident_phones p").fetchall()]


def test_register_replace_delete_encrypted_at_rest(api: Client, db_url: str) -> None:
    me = resident(api)
    assert api.put("/v1/residents/me/phone", json={"number": NUMBER}).status_code == 401
    for bad in ("1588-1234", "+1 212 555 0100", "010-12", "abc"):
        r = api.put("/v1/residents/me/phone", json={"number": bad}, headers=me)
        assert r.status_code == 422 and "detail" in r.json(), (bad, r.text)
    r = api.put("/v1/residents/me/phone", json={"number": NUMBER}, headers=me)
    assert r.status_code == 200 and r.json() == {"number": E164, "replaced": False}
    (row,) = _raw_rows(db_url)
    for digits in ("48217395", "4821", "7395", "1048217395"):
        assert digits not in row  # the bytea's hex: no run of the number's digits
    with psycopg.connect(db_url) as conn:
        cipher = conn.execute("SELECT encode(ciphertext, 'escape') FROM resident_phones").fetchone()
    assert cipher is not None and "48217395" not in cipher[0]
    r = api.put("/v1/residents/me/phone", json={"number": "+82 10 1111 2222"}, headers=me)
    assert r.json() == {"number": "+821011112222", "replaced": True}
    assert len(_raw_rows(db_url)) == 1
    export = api.get("/v1/residents/me/export", headers=me).json()
    assert export["phone_number"] == {"registered": True}
    assert "11112222" not in str(export) and "+8210" not in str(export)
    assert api.delete("/v1/residents/me/phone", headers=me).status_code == 204
    assert _raw_rows(db_url) == []
    assert api.delete("/v1/residents/me/phone", headers=me).status_code == 204  # idempotent
    assert api.get("/v1/residents/me/export", headers=me).json()["phone_number"] == {"registered": False}
    # deleting the account deletes the number with it
    api.put("/v1/residents/me/phone", json={"number": NUMBER}, headers=me)
    assert api.delete("/v1/residents/me", headers=me).status_code == 204
    assert _raw_rows(db_url) == []


def test_rotation_keeps_numbers_readable_and_never_prints_a_key(db_url: str) -> None:
    seed(db_url)
    old_entry, new_entry = PhoneKeyring.generate("k1"), PhoneKeyring.generate("k2")
    old = PhoneKeyring.parse(old_entry)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO residents (resident_id) VALUES ('res-a'), ('res-b')")
        set_phone(conn, old, "res-a", "+821048217395")
        set_phone(conn, old, "res-b", "+8221234567")
    both = PhoneKeyring.parse(f"{new_entry},{old_entry}")
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "STREETLIGHT_PHONE_KEYS": f"{new_entry},{old_entry}",
        "STREETLIGHT_LOG_LEVEL": "DEBUG",
    }
    done = subprocess.run(
        [sys.executable, "-m", "streetlight.cli", "phones", "rotate"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"phones_rotated": 2' in done.stdout and '"current_key": "k2"' in done.stdout
    for entry in (old_entry, new_entry):
        assert entry.split(":", 1)[1] not in done.stdout + done.stderr
    only_new = PhoneKeyring.parse(new_entry)
    with psycopg.connect(db_url, autocommit=True) as conn:
        keys = {r[0] for r in conn.execute("SELECT key_id FROM resident_phones").fetchall()}
        assert keys == {"k2"}
        assert read_phone(conn, only_new, "res-a") == "+821048217395"
        assert read_phone(conn, both, "res-b") == "+8221234567"
        # the maintenance job rotates too: back under a third key
        from store.jobs import run_maintenance

        third = PhoneKeyring.parse(f"{PhoneKeyring.generate('k3')},{new_entry}")
        out = run_maintenance(conn, phone_keys=third)
        assert out["phones"] == {"phones_rotated": 2, "phones_under_unknown_keys": 0}
        assert read_phone(conn, third, "res-a") == "+821048217395"
    assert "keys=[redacted]" in repr(third) and new_entry.split(":", 1)[1] not in repr(third)


def _audit(url: str, action: str) -> list[tuple[str, str, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT actor, subject_id, details->>'alert_id' FROM audit_log WHERE action = %s ORDER BY id",
            (action,),
        ).fetchall()
    return [(str(a), str(s), str(d)) for a, s, d in rows]


def test_reveal_only_to_the_alerts_centre_while_open_audited_and_exported(api: Client, db_url: str) -> None:
    me = resident(api)
    api.put("/v1/residents/me/phone", json={"number": NUMBER}, headers=me)
    alert_id = _sos(api, me)
    jung, gangnam = login(api, "op-jung"), login(api, "op-gangnam")
    reveal = f"/v1/alerts/{alert_id}/callback/reveal"
    assert api.post(reveal).status_code == 401
    assert api.post(reveal, headers=gangnam).status_code == 404  # another centre
    assert api.post(reveal, headers=login(api, "op-maint")).status_code == 404
    assert api.post(reveal, headers=login(api, "op-admin")).status_code == 403
    assert api.post("/v1/alerts/nope/callback/reveal", headers=jung).status_code == 404
    assert _audit(db_url, "phone.reveal") == []
    detail = api.get(f"/v1/alerts/{alert_id}", headers=jung).json()
    assert detail["callback"] == {"phone_registered": True, "pbx": True}
    assert "48217395" not in str(detail) and "48217395" not in api.get("/v1/alerts", headers=jung).text
    r = api.post(reveal, headers=jung)
    assert r.status_code == 200, r.text
    assert r.json() == {"alert_id": alert_id, "number": E164, "tel": f"tel:{E164}"}
    assert r.headers["cache-control"] == "no-store"
    assert api.post(reveal, headers=login(api, "op-city")).status_code == 200
    audited = _audit(db_url, "phone.reveal")
    assert [a for a, _, _ in audited] == ["operator:op-jung", "operator:op-city"]
    assert all(s.startswith("rp_") and d == alert_id for _, s, d in audited)
    chain = subprocess.run(
        [sys.executable, "-m", "streetlight.cli", "audit", "verify", "--database-url", db_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert chain.returncode == 0 and '"intact": true' in chain.stdout, chain.stdout + chain.stderr
    export = api.get("/v1/residents/me/export", headers=me).json()
    reveals = export["phone_number_reveals"]
    assert [(e["actor"], e["action"]) for e in reveals] == [
        ("operator:op-jung", "phone.reveal"),
        ("operator:op-city", "phone.reveal"),
    ]
    assert E164 not in str(export) and "48217395" not in str(export)
    # closed: no more reveals
    api.post(f"/v1/alerts/{alert_id}/acknowledge", headers=jung, json={})
    assert api.post(reveal, headers=jung).status_code == 200  # acknowledged is still open
    api.post(f"/v1/alerts/{alert_id}/resolve", headers=jung, json={"outcome": "safe"})
    r = api.post(reveal, headers=jung)
    assert r.status_code == 403 and "resolved" in r.json()["detail"]
    # a resident without a number
    other = resident(api)
    r = api.post(f"/v1/alerts/{_sos(api, other)}/callback/reveal", headers=jung)
    assert r.status_code == 404 and "no phone number" in r.json()["detail"]


def _timeline(api: Client, alert_id: str, op: dict[str, str]) -> list[tuple[str, dict[str, str]]]:
    events = api.get(f"/v1/alerts/{alert_id}", headers=op).json()["events"]
    return [(e["action"], e["details"]) for e in events if e["action"].startswith("call_")]


def test_calls_from_the_tel_link_in_the_timeline(api: Client) -> None:
    me = resident(api)
    api.put("/v1/residents/me/phone", json={"number": NUMBER}, headers=me)
    alert_id = _sos(api, me)
    jung = login(api, "op-jung")
    url = f"/v1/alerts/{alert_id}/callback/outcome"
    r = api.post(url, json={"outcome": "answered"}, headers=jung)
    assert r.status_code == 409  # nothing placed yet
    assert api.post(url, json={"outcome": "ringing"}, headers=jung).status_code == 422
    assert api.post(url, json={"outcome": "placed"}, headers=login(api, "op-gangnam")).status_code == 404
    for outcome in ("placed", "no_answer", "placed", "answered"):
        r = api.post(url, json={"outcome": outcome}, headers=jung)
        assert r.status_code == 200 and r.json()["outcome"] == outcome, r.text
    assert [a for a, _ in _timeline(api, alert_id, jung)] == [
        "call_placed",
        "call_no_answer",
        "call_placed",
        "call_answered",
    ]
    assert all(d == {"channel": "tel"} for _, d in _timeline(api, alert_id, jung))


def _wait_for(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_calls_through_the_pbx_answered_and_not(api: Client, ami: _AmiServer, db_url: str) -> None:
    me = resident(api)
    api.put("/v1/residents/me/phone", json={"number": NUMBER}, headers=me)
    alert_id = _sos(api, me)
    jung = login(api, "op-jung")
    ami.reasons[:] = ["4", "3"]
    r = api.post(f"/v1/alerts/{alert_id}/callback/dial", headers=jung)
    assert r.status_code == 202, r.text
    call_id = r.json()["call_id"]
    _wait_for(lambda: [a for a, _ in _timeline(api, alert_id, jung)] == ["call_placed", "call_answered"])
    originate = next(a for a in ami.actions if a.get("Action") == "Originate")
    assert originate["Channel"] == "PJSIP/821048217395@carrier"
    assert originate["Exten"] == "11020" and originate["Async"] == "true"
    assert _timeline(api, alert_id, jung)[-1][1] == {"channel": "pbx", "call_id": call_id}
    assert api.post(f"/v1/alerts/{alert_id}/callback/dial", headers=jung).status_code == 202
    _wait_for(lambda: [a for a, _ in _timeline(api, alert_id, jung)][-1] == "call_no_answer")
    dials = _audit(db_url, "phone.dial")
    assert len(dials) == 2 and all(s.startswith("rp_") for _, s, _ in dials)
    assert [
        e["action"] for e in api.get("/v1/residents/me/export", headers=me).json()["phone_number_reveals"]
    ] == [
        "phone.dial",
        "phone.dial",
    ]
    # refusals: another centre, a closed alert, an unreachable PBX
    assert (
        api.post(f"/v1/alerts/{alert_id}/callback/dial", headers=login(api, "op-gangnam")).status_code == 404
    )
    api.post(f"/v1/alerts/{alert_id}/cancel", headers=jung, json={})
    assert api.post(f"/v1/alerts/{alert_id}/callback/dial", headers=jung).status_code == 403


def test_an_unreachable_pbx_is_a_502_and_no_call_is_recorded(db_url: str) -> None:
    seed(db_url, LAMPS)
    with socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler) as closed:
        port = closed.server_address[1]
    pbx = AmiConfig(host="127.0.0.1", port=port, username="sl", secret="x", connect_timeout_s=1.0)
    with client(fast_config(db_url, pbx=pbx)) as api:
        me = resident(api)
        api.put("/v1/residents/me/phone", json={"number": NUMBER}, headers=me)
        alert_id = _sos(api, me)
        jung = login(api, "op-jung")
        r = api.post(f"/v1/alerts/{alert_id}/callback/dial", headers=jung)
        assert r.status_code == 502 and "PBX" in r.json()["detail"]
        assert _timeline(api, alert_id, jung) == []
    with client(fast_config(db_url)) as api:  # no PBX configured: the tel: link only
        jung = login(api, "op-jung")
        assert api.post(f"/v1/alerts/{alert_id}/callback/dial", headers=jung).status_code == 409
        assert api.get(f"/v1/alerts/{alert_id}", headers=jung).json()["callback"]["pbx"] is False
