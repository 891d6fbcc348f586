"""Broker security against a real Mosquitto started with the configuration `streetlight provision` generates.

A denied publish is still acknowledged by an MQTT 3.1.1 broker, so every "cannot publish" test
watches a subscriber with full read rights (the ingest account) and ends with an allowed marker
message: once the marker has arrived, anything denied before it would have arrived too.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from broker.security import (
    MAX_PAYLOAD_BYTES,
    DeviceSpec,
    InvalidIdentityError,
    MosquittoOptions,
    Registry,
    TlsFiles,
    UnsafeAclError,
    acl_file_text,
    reload_mosquitto,
    write_mosquitto,
)
from devkit.localservices import free_port, tcp_reachable, terminate
from streetlight.cli import main as cli_main
from tests.conftest import skip_unless

pytestmark = pytest.mark.integration

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
CA_SCRIPT = Path(__file__).resolve().parents[2] / "broker" / "security" / "make_test_ca.sh"
SUBACK_FAILURE = 0x80  # MQTT 3.1.1 §3.9.3
# paho 2 reports a 3.1.1 CONNACK "5: not authorised" as the MQTT 5 reason code 0x87.
NOT_AUTHORISED = 0x87


# As root, mosquitto would drop to the 'mosquitto' user, which cannot enter pytest's 0700 tmp dirs.
RUN_AS = "root" if os.geteuid() == 0 else None


@dataclass
class Broker:
    registry: Registry
    secrets: dict[str, str]
    workdir: Path
    port: int
    proc: subprocess.Popen[bytes]
    options: MosquittoOptions
    log: Path

    def regenerate_and_reload(self) -> None:
        write_mosquitto(self.registry, self.workdir, self.options)
        reload_mosquitto(self.proc.pid)


def _start(conf: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    assert MOSQUITTO is not None
    with log.open("ab") as fh:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not tcp_reachable("127.0.0.1", port, 0.2):
        if proc.poll() is not None:
            pytest.fail(f"mosquitto exited with {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            terminate(proc)
            pytest.fail(f"mosquitto did not listen on {port}:\n{log.read_text()}")
        time.sleep(0.05)
    return proc


DEVICES = [
    DeviceSpec("lamp-a", "lamp", "11230", lamp_number="A-1"),
    DeviceSpec("lamp-b", "lamp", "11230", lamp_number="B-1"),
    DeviceSpec("lamp-far", "lamp", "11010"),
    DeviceSpec("lamp-revoked", "lamp", "11230"),
    DeviceSpec("lamp-big", "lamp", "11230"),
]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    skip_unless(MOSQUITTO is not None, "mosquitto is not installed")
    workdir = tmp_path_factory.mktemp("secure-broker")
    registry = Registry()
    report = registry.provision(DEVICES)
    port = free_port()
    options = MosquittoOptions(dev_port=port, log_dest=f"file {workdir}/mosquitto.log", run_as=RUN_AS)
    files = write_mosquitto(registry, workdir, options)
    log = workdir / "stdout.log"
    proc = _start(files.conf, port, log)
    yield Broker(registry, report.secrets, workdir, port, proc, options, log)
    terminate(proc)


@dataclass
class Session:
    """A paho client whose callbacks land in queues a test can wait on."""

    client: mqtt.Client
    connack: queue.Queue[int] = field(default_factory=queue.Queue)
    subacks: queue.Queue[list[int]] = field(default_factory=queue.Queue)
    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    disconnected: threading.Event = field(default_factory=threading.Event)

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=5)[0]

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(5)

    def received_until(self, marker_topic: str, timeout_s: float = 5.0) -> list[str]:
        """Topics received up to and including the marker."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            msg = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            seen.append(msg.topic)
            if msg.topic == marker_topic:
                return seen


@contextlib.contextmanager
def session(
    port: int,
    username: str | None,
    password: str | None,
    *,
    client_id: str | None = None,
    tls: ssl.SSLContext | None = None,
    reconnect: bool = False,
) -> Iterator[Session]:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id or username or "anon", protocol=mqtt.MQTTv311
    )
    s = Session(client)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        client.tls_set_context(tls)
    client.on_connect = lambda _c, _u, _f, rc, _p: s.connack.put(rc.value)
    client.on_subscribe = lambda _c, _u, _m, rcs, _p: s.subacks.put([rc.value for rc in rcs])
    client.on_message = lambda _c, _u, msg: s.messages.put(msg)
    client.on_disconnect = lambda *_a: s.disconnected.set()
    if not reconnect:
        client.reconnect_delay_set(60, 60)
    client.connect("127.0.0.1", port, keepalive=30)
    client.loop_start()
    try:
        yield s
    finally:
        client.disconnect()
        client.loop_stop()


def connect_code(port: int, username: str | None, password: str | None, **kw: object) -> int:
    with session(port, username, password, **kw) as s:  # type: ignore[arg-type]
        return s.connack.get(timeout=5)


# -- authentication ---------------------------------------------------------------------------------


def test_a_provisioned_device_with_its_secret_connects(broker: Broker) -> None:
    assert connect_code(broker.port, "lamp-a", broker.secrets["lamp-a"]) == 0


def test_anonymous_connection_is_refused(broker: Broker) -> None:
    assert connect_code(broker.port, None, None) == NOT_AUTHORISED


def test_wrong_password_is_refused(broker: Broker) -> None:
    assert connect_code(broker.port, "lamp-a", broker.secrets["lamp-b"]) == NOT_AUTHORISED


def test_another_devices_secret_does_not_open_this_device(broker: Broker) -> None:
    assert connect_code(broker.port, "lamp-b", broker.secrets["lamp-a"]) == NOT_AUTHORISED


# -- publish ----------------------------------------------------------------------------------------


def test_a_lamp_cannot_publish_to_another_lamps_topics_or_to_any_cmd_topic(broker: Broker) -> None:
    with (
        session(broker.port, "ingest", broker.secrets["ingest"]) as ingest,
        session(broker.port, "lamp-a", broker.secrets["lamp-a"]) as lamp,
    ):
        assert ingest.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
        assert ingest.subscribe("sl/v1/+/+/#") == 1
        forbidden = [
            *(f"sl/v1/11230/lamp-b/{ch}" for ch in ("birth", "state", "telemetry", "event", "ack", "cmd")),
            "sl/v1/11230/lamp-a/cmd",  # its own command topic: only the controller commands
            "sl/v1/11010/lamp-a/telemetry",  # its own id in another district
            "sl/v1/11010/lamp-far/cmd",
        ]
        for topic in forbidden:
            lamp.publish(topic, b'{"level": 100}')
        marker = "sl/v1/11230/lamp-a/telemetry"
        lamp.publish(marker, b'{"ts": 1, "seq": 1}')
        assert ingest.received_until(marker) == [marker]


def test_the_ingest_account_cannot_publish_commands(broker: Broker) -> None:
    with (
        session(broker.port, "controller", broker.secrets["controller"]) as controller,
        session(broker.port, "ingest", broker.secrets["ingest"]) as ingest,
        session(broker.port, "lamp-a", broker.secrets["lamp-a"]) as lamp,
    ):
        for s in (controller, ingest, lamp):
            assert s.connack.get(timeout=5) == 0
        assert lamp.subscribe("sl/v1/11230/lamp-a/cmd") == 1
        ingest.publish("sl/v1/11230/lamp-a/cmd", b'{"cmd_id": "from-ingest"}')
        controller.publish("sl/v1/11230/lamp-a/cmd", b'{"cmd_id": "from-controller"}')
        got = lamp.messages.get(timeout=5)
        assert got.payload == b'{"cmd_id": "from-controller"}'
        assert lamp.messages.empty()


# -- subscribe --------------------------------------------------------------------------------------


def test_a_lamp_subscribing_to_wildcards_or_sys_receives_only_its_own_commands(broker: Broker) -> None:
    # Measured with 2.0.11 and an acl_file: the SUBACK grants these filters (0x01, not 0x80); the
    # read ACL is applied to every message at delivery, so nothing outside the lamp's own cmd
    # topic arrives. $SYS/broker/version is retained, so a leak would show before the marker.
    with (
        session(broker.port, "controller", broker.secrets["controller"]) as controller,
        session(broker.port, "lamp-a", broker.secrets["lamp-a"]) as lamp,
    ):
        assert controller.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
        for topic in [
            "#",
            "sl/v1/+/+/cmd",
            "$SYS/#",
            "sl/v1/11230/lamp-b/cmd",
            "sl/v1/11230/+/#",
            "cc/v1/+/alerts",
        ]:
            assert lamp.subscribe(topic) in (1, SUBACK_FAILURE)
        controller.publish("sl/v1/11230/lamp-b/cmd", b'{"cmd_id": "for-b"}')
        controller.publish("sl/v1/11010/lamp-far/cmd", b'{"cmd_id": "for-far"}')
        controller.publish("cc/v1/11230/alerts", b'{"alert": "x"}')
        marker = "sl/v1/11230/lamp-a/cmd"
        controller.publish(marker, b'{"cmd_id": "for-a"}')
        # Several matching subscriptions may each deliver the marker (MQTT 3.1.1 overlapping subs).
        assert set(lamp.received_until(marker)) == {marker}


def test_a_control_centre_receives_nothing_from_another_district(broker: Broker) -> None:
    with (
        session(broker.port, "controller", broker.secrets["controller"]) as controller,
        session(broker.port, "cc-11010", broker.secrets["cc-11010"]) as jongno,
        session(broker.port, "cc-11000", broker.secrets["cc-11000"]) as city,
    ):
        for s in (controller, jongno, city):
            assert s.connack.get(timeout=5) == 0
        assert jongno.subscribe("cc/v1/11230/alerts") in (1, SUBACK_FAILURE)
        assert jongno.subscribe("cc/v1/+/alerts") in (1, SUBACK_FAILURE)
        assert jongno.subscribe("cc/v1/11010/alerts") == 1
        assert city.subscribe("cc/v1/+/alerts") == 1
        controller.publish("cc/v1/11230/alerts", b'{"alert": "sos in 11230"}')
        controller.publish("cc/v1/11010/alerts", b'{"alert": "sos in 11010"}')
        assert set(jongno.received_until("cc/v1/11010/alerts")) == {"cc/v1/11010/alerts"}
        assert city.received_until("cc/v1/11010/alerts") == ["cc/v1/11230/alerts", "cc/v1/11010/alerts"]


def test_ingest_can_use_its_shared_subscription(broker: Broker) -> None:
    with (
        session(broker.port, "ingest", broker.secrets["ingest"], client_id="ingest-1") as ingest,
        session(broker.port, "lamp-b", broker.secrets["lamp-b"]) as lamp,
    ):
        assert ingest.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
        assert ingest.subscribe("$share/ingest/sl/v1/+/+/#") == 1
        lamp.publish("sl/v1/11230/lamp-b/event", b'{"type": "tamper"}')
        assert ingest.received_until("sl/v1/11230/lamp-b/event") == ["sl/v1/11230/lamp-b/event"]


# -- limits -----------------------------------------------------------------------------------------


def test_a_payload_over_16_kib_is_not_delivered_and_one_of_16_kib_is(broker: Broker) -> None:
    with (
        session(broker.port, "ingest", broker.secrets["ingest"]) as ingest,
        session(broker.port, "lamp-big", broker.secrets["lamp-big"]) as lamp,
    ):
        assert ingest.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
        assert ingest.subscribe("sl/v1/11230/lamp-big/#") == 1
        lamp.publish("sl/v1/11230/lamp-big/event", b"x" * (MAX_PAYLOAD_BYTES + 1))
        lamp.publish("sl/v1/11230/lamp-big/telemetry", b"y" * MAX_PAYLOAD_BYTES)
        msg = ingest.messages.get(timeout=5)
        assert (msg.topic, len(msg.payload)) == ("sl/v1/11230/lamp-big/telemetry", MAX_PAYLOAD_BYTES)
        assert ingest.messages.empty()


# -- revocation -------------------------------------------------------------------------------------


def test_a_revoked_device_is_cut_off_within_5_s_and_refused_on_reconnect(broker: Broker) -> None:
    secret = broker.secrets["lamp-revoked"]
    with (
        session(broker.port, "lamp-a", broker.secrets["lamp-a"]) as bystander,
        session(broker.port, "lamp-revoked", secret) as lamp,
    ):
        assert lamp.connack.get(timeout=5) == 0 and bystander.connack.get(timeout=5) == 0
        broker.registry.revoke("lamp-revoked")
        started = time.monotonic()
        broker.regenerate_and_reload()
        assert lamp.disconnected.wait(5), "the connected revoked device was not disconnected within 5 s"
        elapsed = time.monotonic() - started
        assert not bystander.disconnected.is_set(), "a device that was not revoked lost its connection"
    assert connect_code(broker.port, "lamp-revoked", secret) == NOT_AUTHORISED
    assert elapsed < 5


# -- regressions named after known Mosquitto ACL bypasses -------------------------------------------


@pytest.mark.parametrize("name", ["#", "+", "lamp+1", "lamp#", "a/b", "%c", "lamp%u"])
def test_client_id_with_hash_or_plus_cannot_become_a_pattern_wildcard(broker: Broker, name: str) -> None:
    # CVE-2017-7650: with `pattern` ACL lines, a client id or username of '#' or '+' substituted
    # for %c/%u turned a per-device rule into a wildcard. Three walls: such names are never
    # provisioned; the ACL has no pattern lines at all; and the broker refuses unknown users.
    with pytest.raises(InvalidIdentityError):
        Registry().provision([DeviceSpec(name, "lamp", "11230")])
    acl = acl_file_text(broker.registry)
    assert "pattern" not in acl.split("\n", 3)[-1] and "%" not in acl
    assert not any(line.startswith("pattern ") for line in acl.splitlines())
    assert connect_code(broker.port, name, broker.secrets["lamp-a"], client_id="x") == NOT_AUTHORISED
    # A valid user connecting with a wildcard-looking client id gains nothing from it.
    with session(broker.port, "lamp-a", broker.secrets["lamp-a"], client_id=name) as lamp:
        if lamp.connack.get(timeout=5) == 0:
            assert lamp.subscribe("sl/v1/#") in (1, SUBACK_FAILURE)
            with session(broker.port, "controller", broker.secrets["controller"]) as controller:
                assert controller.connack.get(timeout=5) == 0
                controller.publish("sl/v1/11230/lamp-b/cmd", b'{"cmd_id": "for-b"}')
                controller.publish("sl/v1/11230/lamp-a/cmd", b'{"cmd_id": "for-a"}')
                assert set(lamp.received_until("sl/v1/11230/lamp-a/cmd")) == {"sl/v1/11230/lamp-a/cmd"}


def test_empty_acl_file_is_never_generated_because_it_would_allow_everything(tmp_path: Path) -> None:
    # CVE-2018-12550: Mosquitto up to 1.5.5 treated an ACL file with no rules (empty, blank lines
    # or comments) as no ACL at all, i.e. every topic open to every authenticated client.
    registry = Registry()
    with pytest.raises(UnsafeAclError):
        write_mosquitto(registry, tmp_path / "empty", MosquittoOptions())
    registry.provision([DeviceSpec("lamp-x", "lamp", "11230")])
    for p in list(registry):
        registry.revoke(p.name)
    with pytest.raises(UnsafeAclError):
        write_mosquitto(registry, tmp_path / "all-revoked", MosquittoOptions())
    assert not (tmp_path / "all-revoked" / "acl").exists()
    assert not (tmp_path / "all-revoked" / "passwords").exists()


def test_mosquitto_2_itself_denies_everything_with_an_empty_acl_file(tmp_path: Path) -> None:
    # Documents the broker version we run: fixed since 1.5.6, 2.0.11 denies all with an empty
    # acl_file. The generator does not rely on it (previous test).
    skip_unless(MOSQUITTO is not None, "mosquitto is not installed")
    registry = Registry()
    secrets = registry.provision([DeviceSpec("lamp-x", "lamp", "11230")]).secrets
    port = free_port()
    files = write_mosquitto(
        registry, tmp_path, MosquittoOptions(dev_port=port, log_dest="none", run_as=RUN_AS)
    )
    files.acl_file.write_text("# nothing but a comment\n\n")
    proc = _start(files.conf, port, tmp_path / "stdout.log")
    try:
        with (
            session(port, "ingest", secrets["ingest"]) as ingest,
            session(port, "lamp-x", secrets["lamp-x"]) as lamp,
        ):
            assert ingest.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
            assert ingest.subscribe("sl/v1/+/+/#") in (1, SUBACK_FAILURE)
            lamp.publish("sl/v1/11230/lamp-x/telemetry", b"{}")
            with pytest.raises(queue.Empty):
                ingest.messages.get(timeout=1.0)
    finally:
        terminate(proc)


# -- mutual TLS -------------------------------------------------------------------------------------


@dataclass
class TlsBroker:
    port: int
    dev_port: int
    ca: Path
    broker: Broker


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    skip_unless(MOSQUITTO is not None, "mosquitto is not installed")
    skip_unless(shutil.which("openssl") is not None, "openssl is not installed")
    workdir = tmp_path_factory.mktemp("tls-broker")
    ca = workdir / "ca"
    devices = ["lamp-a", "lamp-stranger", "lamp-tls-revoked"]
    subprocess.run(["sh", str(CA_SCRIPT), str(ca), "localhost", *devices], check=True, capture_output=True)
    registry = Registry()
    report = registry.provision([DeviceSpec(d, "lamp", "11230") for d in devices if d != "lamp-stranger"])
    tls_port, dev_port = free_port(), free_port()
    options = MosquittoOptions(
        dev_port=dev_port,
        tls_port=tls_port,
        tls_bind="127.0.0.1",
        tls=TlsFiles(ca / "ca.crt", ca / "server.crt", ca / "server.key", ca / "crl.pem"),
        log_dest="stderr",
        run_as=RUN_AS,
    )
    files = write_mosquitto(registry, workdir / "conf", options)
    log = workdir / "stdout.log"
    proc = _start(files.conf, tls_port, log)
    yield TlsBroker(
        tls_port,
        dev_port,
        ca,
        Broker(registry, report.secrets, workdir / "conf", dev_port, proc, options, log),
    )
    terminate(proc)


def _client_tls(ca: Path, device: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca / "ca.crt"))
    if device is not None:
        ctx.load_cert_chain(str(ca / f"{device}.crt"), str(ca / f"{device}.key"))
    return ctx


def test_a_device_with_its_certificate_connects_over_mtls_and_publishes_as_itself(
    tls_broker: TlsBroker,
) -> None:
    t = tls_broker
    with (
        session(t.dev_port, "ingest", t.broker.secrets["ingest"]) as ingest,
        session(t.port, None, None, client_id="lamp-a", tls=_client_tls(t.ca, "lamp-a")) as lamp,
    ):
        assert ingest.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
        assert ingest.subscribe("sl/v1/+/+/#") == 1
        lamp.publish("sl/v1/11230/lamp-b/telemetry", b"{}")  # not its own: denied by the ACL
        lamp.publish("sl/v1/11230/lamp-a/telemetry", b"{}")
        assert ingest.received_until("sl/v1/11230/lamp-a/telemetry") == ["sl/v1/11230/lamp-a/telemetry"]


def test_a_client_without_a_certificate_is_refused_by_the_mtls_listener(tls_broker: TlsBroker) -> None:
    # A raw MQTT 3.1.1 CONNECT (client id "no-cert"): with TLS 1.3 the server reports the missing
    # client certificate only after the client's handshake completes, so read for the answer.
    connect = bytes([0x10, 19, 0, 4, *b"MQTT", 4, 2, 0, 60, 0, 7, *b"no-cert"])
    with (
        socket.create_connection(("127.0.0.1", tls_broker.port), timeout=5) as raw,
        pytest.raises((ssl.SSLError, ConnectionError)),
        _client_tls(tls_broker.ca, None).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(connect)
        if tls.recv(4) == b"":
            raise ConnectionError("closed without a CONNACK")


def test_a_certificate_whose_cn_is_not_provisioned_gets_no_topics(tls_broker: TlsBroker) -> None:
    # Measured: mTLS authenticates by certificate alone (the password file is not consulted), so
    # any CA-signed certificate connects; the ACL then grants an unprovisioned CN nothing.
    t = tls_broker
    with (
        session(t.dev_port, "ingest", t.broker.secrets["ingest"]) as ingest,
        session(
            t.port, None, None, client_id="lamp-stranger", tls=_client_tls(t.ca, "lamp-stranger")
        ) as stranger,
        session(t.port, None, None, client_id="lamp-a", tls=_client_tls(t.ca, "lamp-a")) as lamp,
    ):
        assert ingest.connack.get(timeout=5) == 0 and lamp.connack.get(timeout=5) == 0
        assert ingest.subscribe("sl/v1/+/+/#") == 1
        if stranger.connack.get(timeout=5) == 0:
            stranger.publish("sl/v1/11230/lamp-stranger/telemetry", b"{}")
            stranger.publish("sl/v1/11230/lamp-a/telemetry", b"{}")
        lamp.publish("sl/v1/11230/lamp-a/birth", b"{}")
        assert ingest.received_until("sl/v1/11230/lamp-a/birth") == ["sl/v1/11230/lamp-a/birth"]


def _mtls_refused(port: int, ca: Path, device: str) -> bool:
    """True when the mTLS listener will not carry MQTT for this device's certificate."""
    connect = bytes([0x10, 12 + len(device), 0, 4, *b"MQTT", 4, 2, 0, 60, 0, len(device), *device.encode()])
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            _client_tls(ca, device).wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            tls.sendall(connect)
            return tls.recv(4) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_a_revoked_mtls_device_is_muted_at_once_and_refused_on_reconnect_by_the_crl(
    tls_broker: TlsBroker,
) -> None:
    # mTLS clients are not re-checked against the password file on SIGHUP (docs/security.md), but
    # the ACL applies per message: after the reload nothing the revoked device says is delivered;
    # the CRL (re-read on SIGHUP) refuses its certificate from then on.
    t = tls_broker
    device = "lamp-tls-revoked"
    assert not _mtls_refused(t.port, t.ca, device)
    with (
        session(t.dev_port, "ingest", t.broker.secrets["ingest"]) as ingest,
        session(t.port, None, None, client_id=device, tls=_client_tls(t.ca, device)) as bad,
        session(t.port, None, None, client_id="lamp-a", tls=_client_tls(t.ca, "lamp-a")) as lamp,
    ):
        for s in (ingest, bad, lamp):
            assert s.connack.get(timeout=5) == 0
        assert ingest.subscribe("sl/v1/+/+/#") == 1
        bad.publish(f"sl/v1/11230/{device}/telemetry", b'{"before": true}')
        assert ingest.received_until(f"sl/v1/11230/{device}/telemetry")
        t.broker.registry.revoke(device)
        subprocess.run(["sh", str(CA_SCRIPT), "--revoke", str(t.ca), device], check=True, capture_output=True)
        t.broker.regenerate_and_reload()
        time.sleep(0.5)  # SIGHUP is handled in the broker's loop, asynchronously to us
        if not bad.disconnected.is_set():
            bad.publish(f"sl/v1/11230/{device}/telemetry", b'{"after": true}')
        lamp.publish("sl/v1/11230/lamp-a/telemetry", b"{}")
        assert ingest.received_until("sl/v1/11230/lamp-a/telemetry") == ["sl/v1/11230/lamp-a/telemetry"]
    assert _mtls_refused(t.port, t.ca, device)
    assert not _mtls_refused(t.port, t.ca, "lamp-a")


# -- the operator's flow through the command --------------------------------------------------------


def test_the_provision_command_revokes_a_connected_device_and_reloads_the_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    skip_unless(MOSQUITTO is not None, "mosquitto is not installed")
    devices = tmp_path / "lamps.csv"
    devices.write_text("id,kind,district_code,lat,lon\nlamp-cli,lamp,11230,37.57,127.04\n")
    port = free_port()
    common = [
        "--state-dir",
        str(tmp_path / "state"),
        "--out",
        str(tmp_path / "mosq"),
        "--dev-port",
        str(port),
    ]
    common += ["--broker-user", RUN_AS] if RUN_AS else []
    (tmp_path / "store").mkdir()
    common += ["--persistence-dir", str(tmp_path / "store")]
    assert cli_main(["provision", *common, "--devices", str(devices), "--print-secrets"]) == 0
    out = capsys.readouterr().out
    secret = next(line.split(",", 1)[1] for line in out.splitlines() if line.startswith("lamp-cli,"))
    proc = _start(tmp_path / "mosq" / "mosquitto.conf", port, tmp_path / "stdout.log")
    try:
        with session(port, "lamp-cli", secret) as lamp:
            assert lamp.connack.get(timeout=5) == 0
            assert (
                cli_main(["provision", *common, "--revoke", "lamp-cli", "--reload-pid", str(proc.pid)]) == 0
            )
            assert "reloaded (SIGHUP" in capsys.readouterr().out
            assert lamp.disconnected.wait(5)
        assert connect_code(port, "lamp-cli", secret) == NOT_AUTHORISED
    finally:
        terminate(proc)
