"""The fault-injection scenarios of issue #8, each a function that returns its measured figures.

Over 500 lines on purpose: a catalogue, not product code; each scenario is a self-contained
function of 40-90 lines (set up, break, measure, end), and a reader compares them side by side;
``harness.py`` already holds what they share.

The same functions run small in ``tests/faults/`` (which assert the figures) and full size in
``streetlight bench soak`` (which reports them). Each starts its own Mosquitto (with persistence
where a broker is killed) and, where PostgreSQL is stopped, its own throwaway cluster, and ends
everything it started. Figures are plain JSON values; the scenario never decides pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psycopg

from broker import paho_client, parse_mqtt_url
from devkit.faults.harness import (
    Processes,
    SeqPublisher,
    check_stream,
    metrics,
    rss_kib,
    scalar,
    stored_rows,
    wait_api,
    wait_until,
)
from devkit.faults.impair import ImpairedProxy, Impairment
from devkit.localservices import (
    MqttService,
    PgCluster,
    free_port,
    start_embedded_broker,
    start_mosquitto,
    start_pg_cluster,
)
from store import migrate

Figures = dict[str, Any]


@contextlib.contextmanager
def private_broker(workdir: Path, extra: str = "") -> Iterator[MqttService]:
    """A Mosquitto of this scenario's own (persistence on), stopped at the end whatever happens.

    Its store lives in a fresh folder directly under the system temp dir (from when Mosquitto
    dropped root for the ``mosquitto`` user and persisted nothing under pytest's 0700
    ``tmp_path``; ``start_mosquitto`` now keeps a root caller's broker as root, see there).
    """
    store = Path(tempfile.mkdtemp(prefix="streetlight-faults-mq-"))
    svc = start_mosquitto(store, extra_config=extra)
    try:
        yield svc
    finally:
        svc.stop()
        (workdir / "mosquitto.conf").write_text((store / "mosquitto.conf").read_text())
        shutil.rmtree(store, ignore_errors=True)


@contextlib.contextmanager
def private_cluster(workdir: Path) -> Iterator[tuple[PgCluster, str]]:
    """A throwaway PostgreSQL cluster and a migrated database on it; stopped at the end."""
    pg = start_pg_cluster(workdir / "pg")
    try:
        with psycopg.connect(pg.url, autocommit=True) as conn:
            conn.execute("CREATE DATABASE faults")
        url = pg.database_url("faults")
        migrate(url)
        yield pg, url
    finally:
        pg.stop("immediate")


def _wait_ingest_subscribed(port: int, timeout_s: float = 30.0) -> None:
    def subscribed() -> bool:
        try:
            return metrics(port).get("ingest_subscribed", 0.0) >= 1.0
        except OSError:
            return False

    wait_until(subscribed, timeout_s, "ingest to subscribe", 0.1)


def _wait_stable(db_url: str, prefix: str, expect: int, timeout_s: float, quiet_s: float = 3.0) -> int:
    """Wait until the stored rows reach ``expect`` or stop changing for ``quiet_s``; returns the count."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        with contextlib.suppress(psycopg.Error):
            n = stored_rows(db_url, prefix)
            if n >= expect:
                return n
            if n != last:
                last, since = n, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return n
        time.sleep(0.25)
    return last


def _prefix(tag: str) -> str:
    return f"F{tag}{uuid.uuid4().hex[:6]}-"


# --------------------------------------------------------------------------- 1. broker kills


def broker_kills(
    workdir: Path,
    db_url: str,
    *,
    count: int,
    lamps: int,
    kills: int,
    rate: float,
    down_s: float = 0.5,
    settle_s: float = 3.0,
) -> Figures:
    """Scenario 1: SIGKILL the broker ``kills`` times during a QoS 1 stream; count what is lost and seen."""
    prefix = _prefix("bk")
    mport = free_port()
    with private_broker(workdir) as broker, Processes(workdir) as procs:
        procs.ingest(broker.url, db_url, client_id=f"ing-{prefix}", metrics_port=mport)
        _wait_ingest_subscribed(mport)
        # Mosquitto writes its store every autosave interval (1 s configured, about 2 s measured):
        # a session younger than that dies with the broker, and with it what is queued for ingest
        # until ingest reconnects and subscribes again (measured: 1,200 acknowledged messages).
        time.sleep(settle_s)
        pub = SeqPublisher(broker.host, broker.port, lamps=lamps, count=count, rate_per_s=rate, prefix=prefix)
        duration_s = count / rate
        t0 = time.monotonic()
        kill_log: list[dict[str, Any]] = []
        with pub:
            for k in range(kills):
                # spread over 10 %..80 % of the stream, so every loss is followed by later seqs
                at = duration_s * (0.1 + 0.7 * k / max(kills - 1, 1))
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                before = pub.next_index
                broker.kill()
                time.sleep(down_s)
                broker.start_again()
                kill_log.append({"at_s": round(time.monotonic() - t0, 2), "at_message": before})
            pub.join(duration_s * 3 + 60)
        _wait_stable(db_url, prefix, count, timeout_s=120)
        check = check_stream(db_url, pub)
    figures: Figures = {
        "scenario": "broker_kills",
        "lamps": lamps,
        "rate_per_s": rate,
        "kills": kills,
        "broker_down_s": down_s,
        "session_age_at_stream_start_s": settle_s,
        **check.as_dict(),
        "lost_per_kill": round(check.lost / kills, 1) if kills else 0,
        "undetected": check.missing_undetectable + max(0, check.missing_detectable - check.gaps_counted),
        "publisher": pub.stats.__dict__,
        "kill_log": kill_log,
        "seconds": round(time.monotonic() - t0, 1),
    }
    return figures


# --------------------------------------------------------------------------- 2. ingest kills


def ingest_kills(workdir: Path, db_url: str, *, count: int, lamps: int, kills: int, rate: float) -> Figures:
    """Scenario 2: SIGKILL ingest ``kills`` times while a QoS 1 stream flows; restart it each time."""
    prefix = _prefix("ik")
    mport = free_port()
    with private_broker(workdir) as broker, Processes(workdir) as procs:
        ingest = procs.ingest(broker.url, db_url, client_id=f"ing-{prefix}", metrics_port=mport)
        _wait_ingest_subscribed(mport)
        pub = SeqPublisher(broker.host, broker.port, lamps=lamps, count=count, rate_per_s=rate, prefix=prefix)
        duration_s = count / rate
        t0 = time.monotonic()
        with pub:
            for k in range(kills):
                at = duration_s * (0.05 + 0.85 * k / max(kills - 1, 1))
                time.sleep(max(0.0, t0 + at - time.monotonic()))
                ingest.kill()
                ingest.start()
            pub.join(duration_s * 3 + 60)
            wait_until(lambda: not pub.stats.acked < pub.stats.written, 30, "the broker's PUBACKs", 0.1)
        stable = _wait_stable(db_url, prefix, count, timeout_s=180, quiet_s=10)
        check = check_stream(db_url, pub)
        alive = ingest.alive()
    return {
        "scenario": "ingest_kills",
        "lamps": lamps,
        "rate_per_s": rate,
        "kills": ingest.kills,
        **check.as_dict(),
        "stored_when_stable": stable,
        "ingest_alive_at_end": alive,
        "seconds": round(time.monotonic() - t0, 1),
    }


# --------------------------------------------------------------------------- SOS client


@dataclass
class SosOutcome:
    """One SOS as the app saw it."""

    key: str
    alert_id: str | None = None
    attempts: int = 0
    statuses: tuple[int, ...] = ()
    accepted_at: float = 0.0
    retry_after_seen: bool = False


class SafetyApp:
    """The residents' side of the API, retrying like the app (same Idempotency-Key, Retry-After)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=10.0)

    def close(self) -> None:
        self.client.close()

    def register(self, deadline_s: float = 60.0) -> str:
        end = time.monotonic() + deadline_s
        while True:
            try:
                r = self.client.post("/v1/residents", json={})
                if r.status_code == 201:
                    return str(r.json()["token"])
            except httpx.TransportError:
                pass
            if time.monotonic() > end:
                raise TimeoutError("could not register a resident")
            time.sleep(0.2)

    def sos(self, token: str, lat: float, lon: float, deadline_s: float = 120.0) -> SosOutcome:
        out = SosOutcome(key=uuid.uuid4().hex)
        statuses: list[int] = []
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            out.attempts += 1
            try:
                r = self.client.post(
                    "/v1/sos",
                    json={"lat": lat, "lon": lon, "accuracy_m": 10.0},
                    headers={"Authorization": f"Bearer {token}", "Idempotency-Key": out.key},
                )
            except httpx.TransportError:
                statuses.append(0)
                time.sleep(0.3)
                continue
            statuses.append(r.status_code)
            if r.status_code in (202, 429) and "alert_id" in r.json():
                out.alert_id = str(r.json()["alert_id"])
                out.accepted_at = time.monotonic()
                break
            if r.status_code >= 500:
                out.retry_after_seen |= "retry-after" in r.headers
                time.sleep(float(r.headers.get("retry-after", "0.5")))
                continue
            break  # a 4xx: the app would show it; the scenario counts it
        out.statuses = tuple(statuses)
        return out


class CentreListener:
    """A control centre on cc/v1/+/alerts with a persistent session; first time each alert arrived."""

    def __init__(self, mqtt_url: str, client_id: str) -> None:
        self.first_seen: dict[str, float] = {}
        self.messages = 0
        self._lock = threading.Lock()
        params = parse_mqtt_url(mqtt_url)
        self._subscribed = threading.Event()
        self.client = paho_client(params, client_id, clean_session=False)
        self.client.on_connect = lambda c, *_a: c.subscribe("cc/v1/+/alerts", qos=1)
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect(params.host, params.port, keepalive=10)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("control centre did not subscribe")

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            alert_id = str(json.loads(msg.payload).get("alert_id"))
            with self._lock:
                self.messages += 1
                self.first_seen.setdefault(alert_id, time.monotonic())

    def seen(self, ids: set[str]) -> int:
        with self._lock:
            return len(ids & self.first_seen.keys())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# A handful of points well inside Seoul districts (Jung-gu, Gangnam-gu, Mapo-gu, Jongno-gu).
SOS_POINTS = ((37.5610, 126.9940), (37.5000, 127.0500), (37.5560, 126.9100), (37.5800, 126.9850))


# --------------------------------------------------------------------------- 3. PostgreSQL outage


def db_outage(workdir: Path, *, rate: float, before_s: float, outage_s: float, after_s: float) -> Figures:
    """Scenario 3: stop PostgreSQL for ``outage_s`` during a stream; SOS attempted during the outage."""
    prefix = _prefix("db")
    mport, aport = free_port(), free_port()
    count = int(rate * (before_s + outage_s + after_s))
    with (
        private_broker(workdir) as broker,
        private_cluster(workdir) as (pg, db_url),
        Processes(workdir) as procs,
    ):
        procs.ingest(broker.url, db_url, client_id=f"ing-{prefix}", metrics_port=mport)
        procs.api(db_url, aport)
        procs.controller(broker.url, db_url, districts="all")
        _wait_ingest_subscribed(mport)
        wait_api(aport)
        centre = CentreListener(broker.url, f"cc-{prefix}")
        app = SafetyApp(f"http://127.0.0.1:{aport}")
        try:
            token = app.register()
            pub = SeqPublisher(
                broker.host, broker.port, lamps=500, count=count, rate_per_s=rate, prefix=prefix
            )
            t0 = time.monotonic()
            with pub:
                time.sleep(before_s)
                pg.stop("fast")
                down_at = time.monotonic()
                time.sleep(min(2.0, outage_s / 3))
                sos_result: list[SosOutcome] = []
                sos_thread = threading.Thread(
                    target=lambda: sos_result.append(app.sos(token, *SOS_POINTS[0], deadline_s=outage_s + 60))
                )
                sos_thread.start()
                time.sleep(max(0.0, down_at + outage_s - time.monotonic()))
                pg.start_again()
                up_at = time.monotonic()
                spooled_peak = metrics(mport).get("ingest_spooled_total", 0.0)

                def drained() -> bool:
                    m = metrics(mport)
                    return m.get("ingest_spool_bytes", 1.0) == 0.0 and m.get("ingest_database_up", 0.0) == 1.0

                drain_s = wait_until(drained, 180, "the spool to drain", 0.1)
                sos_thread.join(outage_s + 90)
                pub.join(count / rate * 3 + 60)
            sos = sos_result[0] if sos_result else SosOutcome(key="")
            delivered_s = None
            if sos.alert_id is not None:
                with contextlib.suppress(TimeoutError):
                    wait_until(lambda: centre.seen({sos.alert_id or ""}) == 1, 60, "the SOS at the centre")
                    delivered_s = round(centre.first_seen[sos.alert_id] - up_at, 2)
            backlog_s = wait_until(
                lambda: stored_rows(db_url, prefix) >= pub.stats.acked, 180, "the backlog to be stored", 0.2
            )
            _wait_stable(db_url, prefix, count, timeout_s=60)
            check = check_stream(db_url, pub)
            m = metrics(mport)
        finally:
            app.close()
            centre.close()
    return {
        "scenario": "db_outage",
        "rate_per_s": rate,
        "outage_s": round(up_at - down_at, 1),
        **check.as_dict(),
        "spooled": int(m.get("ingest_spooled_total", 0)),
        "spooled_at_db_return": int(spooled_peak),
        "replayed": int(m.get("ingest_replayed_total", 0)),
        "dropped": int(m.get("ingest_dropped_total", 0)),
        "spool_drained_s_after_return": round(drain_s, 2),
        "backlog_stored_s_after_return": round(backlog_s + (time.monotonic() - up_at) * 0, 2),
        "sos_attempts": sos.attempts,
        "sos_statuses": sorted(set(sos.statuses)),
        "sos_retry_after_header": sos.retry_after_seen,
        "sos_alert_id": sos.alert_id,
        "sos_accepted_s_after_return": round(sos.accepted_at - up_at, 2) if sos.alert_id else None,
        "sos_at_centre_s_after_return": delivered_s,
        "seconds": round(time.monotonic() - t0, 1),
    }


# --------------------------------------------------------------------------- 4. impaired link


def impaired_link(
    workdir: Path,
    db_url: str,
    *,
    count: int,
    lamps: int,
    rate: float,
    cuts: int,
    delay_ms: float = 200.0,
    jitter_ms: float = 50.0,
    loss: float = 0.05,
) -> Figures:
    """Scenario 4: ingest and publisher reach the broker through an impairing proxy; cuts too."""
    from devkit.bench.controller import LampFleet, LampSpec

    prefix = _prefix("nl")
    mport = free_port()
    impairment = Impairment(delay_ms=delay_ms, jitter_ms=jitter_ms, loss=loss)
    with (
        private_broker(workdir) as broker,
        ImpairedProxy(broker.host, broker.port, impairment=impairment, seed=8) as ingest_link,
        ImpairedProxy(broker.host, broker.port, impairment=impairment, seed=9) as device_link,
        Processes(workdir) as procs,
    ):
        procs.ingest(
            f"mqtt://127.0.0.1:{ingest_link.port}", db_url, client_id=f"ing-{prefix}", metrics_port=mport
        )
        _wait_ingest_subscribed(mport, 60)
        pub = SeqPublisher(
            "127.0.0.1", device_link.port, lamps=lamps, count=count, rate_per_s=rate, prefix=prefix
        )
        duration_s = count / rate
        t0 = time.monotonic()
        with pub:
            for k in range(cuts):
                time.sleep(max(0.0, t0 + duration_s * (k + 1) / (cuts + 1) - time.monotonic()))
                ingest_link.cut()
            pub.join(duration_s * 4 + 60)
            wait_until(lambda: pub.stats.acked >= pub.stats.written, 30, "the broker's PUBACKs", 0.1)
        _wait_stable(db_url, prefix, count, timeout_s=180, quiet_s=10)
        check = check_stream(db_url, pub)
        m = metrics(mport)
        # Commands over the same impaired path: a lamp must not apply one whose expiry passed.
        lamp = LampSpec(f"{prefix}lamp", "11230", 37.50, 127.05)
        slow = Impairment(delay_ms=1500.0, jitter_ms=100.0, loss=loss)
        with (
            ImpairedProxy(broker.host, broker.port, impairment=slow, seed=10) as cmd_link,
            LampFleet(parse_mqtt_url(f"mqtt://127.0.0.1:{cmd_link.port}"), [lamp]) as fleet,
        ):
            sender = paho_client(parse_mqtt_url(broker.url), f"cmd-{prefix}")
            sender.connect(broker.host, broker.port)
            sender.loop_start()
            try:
                sent_ms: dict[str, tuple[int, int]] = {}
                for i in range(20):
                    ttl_s = 1 if i % 2 == 0 else 30
                    cmd_id = f"{prefix}c{i}"
                    ts = int(time.time() * 1000)
                    sent_ms[cmd_id] = (ts, ttl_s)
                    body = {
                        "cmd_id": cmd_id, "ts": ts, "action": "set_level", "level": 100,
                        "ttl_s": ttl_s, "priority": "manual", "source": f"s{i}",
                    }  # fmt: skip
                    sender.publish(f"sl/v1/11230/{lamp.device_id}/cmd", json.dumps(body), qos=1)
                    time.sleep(0.05)
                fleet.wait_until(lambda: len(fleet.received) >= 20, 30)
            finally:
                sender.disconnect()
                sender.loop_stop()
            firmware = fleet.lamps[lamp.device_id]
            acks = {cmd_id: rec.status for cmd_id, rec in firmware._acks.items()}
            received_at = {r.payload["cmd_id"]: r.at for r in fleet.received}
        applied_late = sum(1 for c, (_ts, ttl) in sent_ms.items() if ttl == 1 and acks.get(c) == "applied")
        expired = sum(1 for c, (_ts, ttl) in sent_ms.items() if ttl == 1 and acks.get(c) == "expired")
        applied_live = sum(1 for c, (_ts, ttl) in sent_ms.items() if ttl == 30 and acks.get(c) == "applied")
    return {
        "scenario": "impaired_link",
        "delay_ms": delay_ms,
        "jitter_ms": jitter_ms,
        "loss": loss,
        "cuts": cuts,
        "rate_per_s": rate,
        **check.as_dict(),
        "ingest_duplicates_absorbed": int(m.get("ingest_duplicates_total", 0)),
        "proxy_chunks": ingest_link.stats.chunks + device_link.stats.chunks,
        "proxy_retransmit_like": ingest_link.stats.retransmit_like + device_link.stats.retransmit_like,
        "commands_sent": len(sent_ms),
        "commands_received": len(received_at),
        "short_ttl_expired": expired,
        "short_ttl_applied_late": applied_late,
        "long_ttl_applied": applied_live,
        "seconds": round(time.monotonic() - t0, 1),
    }


# --------------------------------------------------------------------------- 6. lamp offline


@contextlib.contextmanager
def embedded_broker(workdir: Path, extra: str = "") -> Iterator[MqttService]:
    """The embedded broker (``broker.lite``) in a process of its own, stopped at the end."""
    svc = start_embedded_broker()
    try:
        yield svc
    finally:
        svc.stop()


# Mosquitto 2.0's keepalive sweep (src/keepalive.c, keepalive__check): it looks at its clients
# only when ``last_keepalive_check + 5 < db.now_s``, i.e. every 6 whole seconds, and drops those
# with ``now_s - last_msg_in > keepalive*3/2``. A silent client is therefore dropped up to one
# sweep period after 1.5 x keepalive. (The per-second ring buffer is Mosquitto 2.1's.)
MOSQUITTO_2_0_SWEEP_S = 6.0


def lamp_offline(
    workdir: Path, db_url: str, *, keepalive_s: int = 4, broker_kind: str = "mosquitto"
) -> Figures:
    """Scenario 6: a lamp killed or cut off shows offline; a stale death never wins.

    Three parts, each on the broker chosen by ``broker_kind`` (``mosquitto``: a private
    Mosquitto; ``lite``: the embedded broker, so the broker's own keepalive timing can be told
    from the backend's part), with ``streetlight ingest`` writing ``device_state``:

    1. **killed**: a lamp of the simulated firmware (``streetlight sim``, its own process and
       connection, keepalive ``keepalive_s``, will = retained ``offline`` with its ``bdseq``) is
       SIGKILLed; the kernel closes its socket, the broker publishes the will at once.
    2. **power cut**: a lamp's link is black-holed (no FIN, no more bytes): only the broker's
       keepalive timeout (1.5 x keepalive) can tell.
    3. **stale death / takeover**: after the lamp reconnected (bdseq 2) a late ``offline`` of
       bdseq 1 arrives; then a takeover fires the old session's will. Neither marks it offline.
    """
    prefix = _prefix("lo")
    device = f"{prefix}lamp"
    base = f"sl/v1/11230/{device}"
    sim_prefix = f"{prefix}sim-"
    mport = free_port()

    def state() -> tuple[bool, int]:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT online, bdseq FROM device_state WHERE device_id = %s", (device,)
            ).fetchone()
        return (bool(row[0]), int(row[1] or 0)) if row else (False, -1)

    def sim_state() -> tuple[str, bool, int] | None:
        with psycopg.connect(db_url) as conn:
            row = conn.execute(
                "SELECT device_id, online, bdseq FROM device_state WHERE device_id LIKE %s",
                (f"{sim_prefix}%",),
            ).fetchone()
        return (str(row[0]), bool(row[1]), int(row[2] or 0)) if row else None

    def lamp_client(port: int, bdseq: int) -> mqtt.Client:
        c = paho_client(parse_mqtt_url(f"mqtt://127.0.0.1:{port}"), device)
        c.will_set(f"{base}/state", json.dumps({"state": "offline", "bdseq": bdseq}), qos=1, retain=True)
        c.connect("127.0.0.1", port, keepalive=keepalive_s)
        c.loop_start()
        birth = {"kind": "lamp", "firmware": "1", "model": "X", "lat": 37.5, "lon": 127.05, "bdseq": bdseq}
        c.publish(f"{base}/birth", json.dumps(birth), qos=1).wait_for_publish(10)
        online = json.dumps({"state": "online", "bdseq": bdseq})
        c.publish(f"{base}/state", online, qos=1, retain=True).wait_for_publish(10)
        return c

    start_broker = embedded_broker if broker_kind == "lite" else private_broker
    with start_broker(workdir) as broker, Processes(workdir) as procs:
        procs.ingest(broker.url, db_url, client_id=f"ing-{prefix}", metrics_port=mport)
        _wait_ingest_subscribed(mport)

        # 1. The lamp's process is killed: no DISCONNECT, but the kernel closes the socket.
        lamp_proc = procs.sim(broker.url, id_prefix=sim_prefix, keepalive_s=keepalive_s, interval_s=1.0)
        wait_until(lambda: (sim_state() or ("", False, 0))[1:] == (True, 1), 60, "the simulated lamp online")
        time.sleep(1.5)  # a little telemetry first: a lamp at work, not one still connecting
        killed_at = time.monotonic()
        lamp_proc.kill()  # SIGKILL, then waits for the process to be gone
        gone_s = time.monotonic() - killed_at
        wait_until(
            lambda: not (sim_state() or ("", True, 0))[1],
            keepalive_s * 1.5 + 30,
            "the killed lamp offline",
            0.02,
        )
        killed_s = time.monotonic() - killed_at
        killed_after = sim_state() or ("", True, -1)

        # 2. The lamp loses power: no FIN, no DISCONNECT, no more bytes (its client stops too).
        with ImpairedProxy(broker.host, broker.port) as link:
            first = lamp_client(link.port, 1)
            last_packet_at = time.monotonic()  # its state PUBACKed: nothing more from it after this
            wait_until(lambda: state() == (True, 1), 20, "the lamp online with bdseq 1")
            time.sleep(0.5)
            first.loop_stop()
            link.freeze()
            cut_at = time.monotonic()
            wait_until(
                lambda: not state()[0],
                keepalive_s * 1.5 + MOSQUITTO_2_0_SWEEP_S + 20,
                "the power-cut lamp offline",
                0.05,
            )
            cut_s, after_last_packet_s = time.monotonic() - cut_at, time.monotonic() - last_packet_at
        # 3. It comes back (bdseq 2); then a stale death of session 1 arrives late.
        second = lamp_client(broker.port, 2)
        try:
            wait_until(lambda: state() == (True, 2), 20, "the lamp online with bdseq 2")
            stale = paho_client(parse_mqtt_url(broker.url), f"stale-{prefix}")
            stale.connect(broker.host, broker.port)
            stale.loop_start()
            stale.publish(
                f"{base}/state", json.dumps({"state": "offline", "bdseq": 1}), qos=1, retain=True
            ).wait_for_publish(10)
            stale.disconnect()
            stale.loop_stop()
            time.sleep(1.5)
            after_stale = state()
            second.disconnect()  # a clean goodbye: no will; paho would otherwise reconnect and fight
            second.loop_stop()
            # A takeover: the same lamp reconnects while its old session still looks alive.
            with ImpairedProxy(broker.host, broker.port) as link2:
                third = lamp_client(link2.port, 3)
                wait_until(lambda: state() == (True, 3), 20, "the lamp online with bdseq 3")
                third.loop_stop()
                link2.freeze()
                fourth = lamp_client(broker.port, 4)
                wait_until(lambda: state()[1] == 4, 20, "bdseq 4")
                time.sleep(keepalive_s * 2)
                after_takeover = state()
                fourth.disconnect()
                fourth.loop_stop()
        finally:
            second.loop_stop()
    return {
        "scenario": "lamp_offline",
        "broker": broker_kind,
        "keepalive_s": keepalive_s,
        "bound_s": 1.5 * keepalive_s,
        "killed_offline_after_s": round(killed_s, 2),
        "killed_lamp": {"device_id": killed_after[0], "online": killed_after[1], "bdseq": killed_after[2]},
        "killed_process_gone_s": round(gone_s, 3),
        "power_cut_offline_after_s": round(cut_s, 2),
        # the broker's keepalive timer runs from the lamp's last packet, a little before the cut
        "power_cut_offline_after_last_packet_s": round(after_last_packet_s, 2),
        "mosquitto_2_0_sweep_s": MOSQUITTO_2_0_SWEEP_S,
        "state_after_stale_death": {"online": after_stale[0], "bdseq": after_stale[1]},
        "state_after_takeover": {"online": after_takeover[0], "bdseq": after_takeover[1]},
    }


# --------------------------------------------------------------------------- 7. burst


def burst(
    workdir: Path,
    db_url: str,
    *,
    lamps: int,
    rate: float,
    sustained_s: float,
    burst_s: float,
    factor: float = 10,
) -> Figures:
    """Scenario 7: ``factor`` times the sustained rate for ``burst_s``; memory and drops measured."""
    prefix = _prefix("bu")
    mport = free_port()
    count = int(rate * sustained_s * 2 + rate * factor * burst_s)
    with private_broker(workdir) as broker, Processes(workdir) as procs:
        ingest = procs.ingest(broker.url, db_url, client_id=f"ing-{prefix}", metrics_port=mport)
        _wait_ingest_subscribed(mport)
        broker_pid = broker.proc.pid if broker.proc else 0
        samples: list[tuple[str, int, int]] = []
        pub = SeqPublisher(broker.host, broker.port, lamps=lamps, count=count, rate_per_s=rate, prefix=prefix)
        phase = ["sustained"]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                samples.append((phase[0], rss_kib(ingest.pid), rss_kib(broker_pid)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t0 = time.monotonic()
        try:
            with pub:
                time.sleep(sustained_s)
                phase[0] = "burst"
                pub.rate = rate * factor
                burst_start = pub.next_index
                time.sleep(burst_s)
                pub.rate = rate
                burst_sent = pub.next_index - burst_start
                phase[0] = "after"
                pub.join(count / rate * 3 + 60)
                wait_until(lambda: pub.stats.acked >= pub.stats.written, 30, "the broker's PUBACKs", 0.1)
            _wait_stable(db_url, prefix, count, timeout_s=120)
            time.sleep(1.0)
        finally:
            stop.set()
            sampler.join(5)
        check = check_stream(db_url, pub)
        m = metrics(mport)
        log_text = (workdir / "logs" / "ingest.log").read_text(errors="replace")

    def peak(which: int, ph: str) -> int:
        vals = [int(s[which]) for s in samples if s[0] == ph and s[which]]
        return max(vals) if vals else 0

    return {
        "scenario": "burst",
        "sustained_rate_per_s": rate,
        "burst_rate_per_s": rate * factor,
        "burst_s": burst_s,
        "burst_messages": burst_sent,
        "burst_achieved_per_s": round(burst_sent / burst_s, 0),
        **check.as_dict(),
        "ingest_dropped_counted": int(m.get("ingest_dropped_total", 0)),
        "dropped_log_lines": log_text.count("messages_not_stored"),  # the event, JSON or console
        "ingest_rss_kib": {p: peak(1, p) for p in ("sustained", "burst", "after")},
        "broker_rss_kib": {p: peak(2, p) for p in ("sustained", "burst", "after")},
        "seconds": round(time.monotonic() - t0, 1),
    }


# --------------------------------------------------------------------------- 5. SOS with kills


def sos_with_kills(workdir: Path, db_url: str, *, sos: int, escalate_after_s: float = 8.0) -> Figures:
    """Scenario 5: ``sos`` SOS (a resident each) while API, controller and broker are SIGKILLed once each."""
    from api.accounts import create_operator
    from api.security import password_hasher

    aport = free_port()
    escalate_env = {
        "STREETLIGHT_ESCALATE_AFTER_S": str(escalate_after_s),
        "STREETLIGHT_POLICE_AFTER_S": str(escalate_after_s * 20),
    }
    with private_broker(workdir) as broker, Processes(workdir) as procs:
        api = procs.api(db_url, aport)
        wait_api(aport)
        controller = procs.controller(broker.url, db_url, districts="all", **escalate_env)
        with psycopg.connect(db_url, autocommit=True) as conn:
            create_operator(conn, "faults-city", "faults-password", role="city", hasher=password_hasher(1, 8))
        centre = CentreListener(broker.url, f"cc-sos-{uuid.uuid4().hex[:6]}")
        app = SafetyApp(f"http://127.0.0.1:{aport}")
        outcomes: list[SosOutcome] = []
        lock = threading.Lock()
        kills: list[dict[str, Any]] = []
        try:
            tokens = [app.register() for _ in range(sos)]
            t0 = time.monotonic()
            todo = list(enumerate(tokens))

            def worker() -> None:
                client = SafetyApp(app.base_url)
                try:
                    while True:
                        with lock:
                            if not todo:
                                return
                            i, token = todo.pop()
                        out = client.sos(token, *SOS_POINTS[i % len(SOS_POINTS)])
                        with lock:
                            outcomes.append(out)
                finally:
                    client.close()

            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()

            def after(share: float) -> None:
                wait_until(lambda: len(outcomes) >= share * sos, 600, f"{share:.0%} of the SOS", 0.05)

            after(0.25)
            api.kill()
            kills.append({"what": "api", "after_sos": len(outcomes)})
            api.start()
            after(0.5)
            controller.kill()
            kills.append({"what": "controller", "after_sos": len(outcomes)})
            time.sleep(1.0)
            controller.start()
            after(0.75)
            broker.kill()
            kills.append({"what": "broker", "after_sos": len(outcomes)})
            time.sleep(1.0)
            broker.start_again()
            for t in threads:
                t.join(600)
            sent_s = time.monotonic() - t0
            ids = {o.alert_id for o in outcomes if o.alert_id}
            centre_s = None
            with contextlib.suppress(TimeoutError):
                centre_s = wait_until(
                    lambda: centre.seen(ids) >= len(ids), 120, "every SOS at the centre", 0.2
                )
            at_centre = centre.seen(ids)
            # Escalation: wait for every alert's re-notify to be due, then read the trail.
            time.sleep(escalate_after_s + 3.0)
            with contextlib.suppress(TimeoutError):
                wait_until(lambda: _escalated(db_url, ids) >= len(ids), 60, "every SOS escalated", 0.5)
            lateness = _escalation_lateness(db_url, ids, escalate_after_s)
            replayed = _console_replay(aport, "faults-city", "faults-password", ids)
            with psycopg.connect(db_url) as conn:
                row = conn.execute(
                    "SELECT count(*), count(DISTINCT resident_id) FROM alerts WHERE kind = 'sos'"
                ).fetchone()
            alerts_rows, residents_with_alert = (int(row[0]), int(row[1])) if row else (0, 0)
        finally:
            app.close()
            centre.close()
    accepted = [o for o in outcomes if o.alert_id]
    return {
        "scenario": "sos_with_kills",
        "sos": sos,
        "kills": kills,
        "accepted": len(accepted),
        "distinct_alert_ids": len(ids),
        "alert_rows": alerts_rows,
        "residents_with_an_alert": residents_with_alert,
        "lost": sos - len(accepted),
        "duplicate_incidents": alerts_rows - len(ids),
        "retried_requests": sum(o.attempts - 1 for o in outcomes),
        "non_2xx_statuses": sorted({s for o in outcomes for s in o.statuses if s not in (202,)}),
        "at_centre": at_centre,
        "at_centre_s": round(centre_s, 2) if centre_s is not None else None,
        "escalated": _escalated(db_url, ids),
        "escalation_late_s_max": lateness,
        "console_replay_has": replayed,
        "sos_phase_s": round(sent_s, 1),
    }


def _escalated(db_url: str, ids: set[str]) -> int:
    return scalar(
        db_url,
        "SELECT count(DISTINCT alert_id) FROM alert_events WHERE action = 'escalated' AND alert_id = ANY(%s)",
        list(ids),
    )


def _escalation_lateness(db_url: str, ids: set[str], after_s: float) -> float | None:
    """The latest first escalation, in seconds past its due time (created + after_s)."""
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            """SELECT max(extract(epoch FROM e.first - a.created_at)) FROM alerts a
               JOIN (SELECT alert_id, min(ts) AS first FROM alert_events WHERE action = 'escalated'
                     GROUP BY alert_id) e USING (alert_id)
               WHERE a.alert_id = ANY(%s)""",
            (list(ids),),
        ).fetchone()
    if not row or row[0] is None:
        return None
    return round(float(row[0]) - after_s, 2)


def _console_replay(port: int, username: str, password: str, ids: set[str]) -> int:
    """Connect a console (WebSocket) as a returning operator: how many of ``ids`` it is sent again."""
    from websockets.sync.client import connect

    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        token = client.post("/v1/auth/login", json={"username": username, "password": password}).json()[
            "token"
        ]
    got: set[str] = set()
    with connect(
        f"ws://127.0.0.1:{port}/v1/stream?last_event_id=0",
        subprotocols=["streetlight.v1", f"bearer.{token}"],  # type: ignore[list-item]
        open_timeout=10,
        max_size=None,
    ) as ws:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not ids <= got:
            try:
                msg = json.loads(ws.recv(timeout=3))
            except TimeoutError:
                break
            if msg.get("type") == "alert":
                got.add(str(msg["alert"].get("id") or msg["alert"].get("alert_id")))
    return len(ids & got)


def now_iso() -> str:
    return datetime.now().isoformat(timespec="seconds")
