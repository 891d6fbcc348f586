"""Attacks by a holder of one lamp's credentials, and the operator's provisioning flow, against a
real Mosquitto 2.0.11 started with the configuration `streetlight provision` generates.

The attacks use Mosquitto's own C clients (mosquitto_sub, mosquitto_pub), never the project's
client; the services under attack are the real `streetlight ingest` processes. docs/security.md,
"Attacks tried (broker)", lists each with its result.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import grp
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from devkit.localservices import MqttService, free_port, terminate
from firmware_sim import DeviceIdentity, LampFirmware
from firmware_sim.fleet import LAMP_MODEL, Endpoint, Fleet
from store import migrate
from streetlight.cli import main as cli_main
from tests.conftest import skip_unless
from tests.helpers import count, log_events, wait_for
from tests.integration.test_security_mosquitto import MOSQUITTO, RUN_AS, _start

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SUB = shutil.which("mosquitto_sub")
PUB = shutil.which("mosquitto_pub")
LAMP = (
    b'{"ts":%d,"seq":%d,"level":80,"power_w":36.4,"voltage_v":221.7,"current_a":0.164,'
    b'"temp_c":21.5,"lux":3.2,"faults":[]}'
)
DEVICES = ["lamp-0", *(f"lamp-{i}" for i in range(1, 9))]
TAKEOVER = "already connected, closing old connection"  # Mosquitto 2.0.11's log line for a takeover


@dataclass
class Deployment:
    """Provisioned by the CLI, a broker on the generated files, the secrets the CLI issued."""

    state: Path
    out: Path
    port: int
    secrets: dict[str, str]
    secrets_file: Path
    proc: subprocess.Popen[bytes]
    log: Path


def _broker_store(base: Path) -> Path:
    """A persistence folder the broker, running as the `mosquitto` user, may write."""
    store = base / "store"
    store.mkdir()
    shutil.chown(store, "mosquitto", "mosquitto")
    return store


def _device_csv(path: Path, ids: list[str]) -> Path:
    path.write_text("id,kind,district_code\n" + "".join(f"{d},lamp,11230\n" for d in ids))
    return path


def _read_secrets(path: Path) -> dict[str, str]:
    with path.open() as fh:
        return {row["username"]: row["secret"] for row in csv.DictReader(fh)}


@contextlib.contextmanager
def deployed(workdir: Path) -> Iterator[Deployment]:
    """`streetlight provision` as documented, then mosquitto on its output."""
    skip_unless(
        MOSQUITTO is not None and SUB is not None and PUB is not None, "needs mosquitto and its clients"
    )
    port = free_port()
    state, out, secrets_file, log = (
        workdir / "state",
        workdir / "mosq",
        workdir / "issued.csv",
        workdir / "broker.log",
    )
    argv = ["provision", "--state-dir", str(state), "--out", str(out), "--dev-port", str(port)]
    (workdir / "store").mkdir()
    argv += ["--persistence-dir", str(workdir / "store")]  # as deployed, but not the system broker's
    argv += ["--broker-user", RUN_AS] if RUN_AS else []
    argv += [
        "--devices",
        str(_device_csv(workdir / "lamps.csv", DEVICES)),
        "--service",
        "ingest@0",
        "ingest@1",
        "controller@north-a",
    ]
    assert cli_main([*argv, "--secrets-out", str(secrets_file)]) == 0
    conf = out / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("log_dest stderr", f"log_dest file {log}"))
    proc = _start(conf, port, workdir / "stdout.log")
    try:
        yield Deployment(state, out, port, _read_secrets(secrets_file), secrets_file, proc, log)
    finally:
        terminate(proc)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with deployed(tmp_path_factory.mktemp("attacks")) as d:
        yield d


def sub(
    d: Deployment, user: str, topic: str, *, client_id: str | None = None, clean: bool = True
) -> subprocess.Popen[str]:
    """A mosquitto_sub printing `topic payload` lines; not a persistent session unless clean=False."""
    assert SUB is not None
    argv = [SUB, "-p", str(d.port), "-u", user, "-P", d.secrets[user], "-i", client_id or user]
    argv += ["-q", "1", "-t", topic, "-v"] + ([] if clean else ["-c"])
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pub(
    d: Deployment,
    user: str,
    topic: str,
    payloads: list[bytes],
    *,
    client_id: str | None = None,
    retain: bool = False,
) -> None:
    """Publish each payload at QoS 1 from one mosquitto_pub connection (stdin, one line each)."""
    assert PUB is not None
    argv = [PUB, "-p", str(d.port), "-u", user, "-P", d.secrets[user], "-i", client_id or user]
    argv += ["-q", "1", "-t", topic, "-l"] + (["-r"] if retain else [])
    subprocess.run(argv, input=b"\n".join(payloads) + b"\n", check=True, timeout=30)


def stop(p: subprocess.Popen[str]) -> str:
    """Stop a mosquitto_sub; its output."""
    p.send_signal(signal.SIGINT)
    try:
        out, _ = p.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        out, _ = p.communicate()
    return out


def takeovers(d: Deployment, client_id: str) -> int:
    return sum(TAKEOVER in line and f"Client {client_id} " in line for line in d.log.read_text().splitlines())


# -- 2. client ids bound to the identity ------------------------------------------------------------


def test_a_device_naming_another_devices_client_id_does_not_disconnect_it(deployment: Deployment) -> None:
    d = deployment
    victim = sub(d, "lamp-1", "sl/v1/11230/lamp-1/cmd")
    try:
        wait_for(lambda: "as lamp-1 " in d.log.read_text(), 5)
        attacker = sub(d, "lamp-2", "sl/v1/11230/lamp-2/cmd", client_id="lamp-1")
        time.sleep(1.0)
        stop(attacker)
        assert takeovers(d, "lamp-1") == 0, "the attacker's connection took lamp-1's over"
        # The victim still holds its connection: a command for it arrives.
        pub(d, "controller", "sl/v1/11230/lamp-1/cmd", [b'{"cmd_id":"still-there"}'])
        time.sleep(0.5)
    finally:
        out = stop(victim)
    assert "still-there" in out


def test_a_device_naming_ingests_client_id_does_not_kick_ingest(deployment: Deployment) -> None:
    d = deployment
    ingest = sub(d, "ingest@0", "sl/v1/11230/+/telemetry")
    try:
        wait_for(lambda: "as ingest@0 " in d.log.read_text(), 5)
        attackers = [
            sub(d, "lamp-3", "sl/v1/11230/lamp-3/cmd", client_id=cid)
            for cid in ("ingest@0", "streetlight-ingest-0", "ingest-0")
        ]
        time.sleep(1.0)
        pub(d, "lamp-4", "sl/v1/11230/lamp-4/telemetry", [LAMP % (1, i) for i in range(20)])
        time.sleep(0.5)
        for a in attackers:
            stop(a)
    finally:
        out = stop(ingest)
    assert takeovers(d, "ingest@0") == 0
    assert out.count("sl/v1/11230/lamp-4/telemetry") == 20, "ingest lost messages while attacked"


def test_a_device_cannot_resume_an_offline_devices_session_and_its_queued_command_survives(
    deployment: Deployment,
) -> None:
    d = deployment
    owner = sub(d, "lamp-5", "sl/v1/11230/lamp-5/cmd", clean=False)  # persistent session
    wait_for(lambda: "as lamp-5 " in d.log.read_text(), 5)
    stop(owner)
    pub(d, "controller", "sl/v1/11230/lamp-5/cmd", [b'{"cmd_id":"queued-while-offline"}'])
    # The attacker resumes "lamp-5" with a clean session: with the id free it would wipe the queue.
    attacker = sub(d, "lamp-6", "sl/v1/11230/lamp-6/cmd", client_id="lamp-5")
    time.sleep(1.0)
    assert "queued-while-offline" not in stop(attacker)
    back = sub(d, "lamp-5", "sl/v1/11230/lamp-5/cmd", clean=False)
    time.sleep(1.0)
    assert "queued-while-offline" in stop(back), "the device's own persistent session lost its command"


def test_the_generated_acl_passes_a_lamps_own_topic_attacks_so_the_services_must_refuse_them(
    deployment: Deployment,
) -> None:
    # The attacks of "Attacks tried (devices through the services)" stay on the attacker's own
    # topics. On the generated configuration they all reach ingest's account: the broker cannot
    # tell them from honest traffic, so the services' guards (tests/integration/
    # test_device_attacks.py, run there on a broker without accounts) are the wall, not the ACL.
    d = deployment
    base = "sl/v1/11230/lamp-8"
    watcher = sub(d, "ingest", f"{base}/#", client_id="ingest-watcher")
    wait_for(lambda: "as ingest " in d.log.read_text(), 5)
    time.sleep(0.3)  # its SUBACK
    ts = int(time.time() * 1000)
    try:
        pub(
            d,
            "lamp-8",
            f"{base}/ack",
            [b'{"cmd_id":"sos.0123456789abcdef0123456789abcdef","status":"applied"}'],
        )
        birth = (
            b'{"ts":%d,"bdseq":0,"kind":"blinker","lat":37.4979,"lon":127.0276,"paired_lamp":"lamp-1"}' % ts
        )
        pub(d, "lamp-8", f"{base}/birth", [birth])
        event = b'{"ts":%d,"seq":1,"type":"tamper","code":"door_open"}' % ts
        pub(d, "lamp-8", f"{base}/event", [event], retain=True)
        pub(d, "lamp-8", f"{base}/telemetry", [LAMP % (ts + i, i) for i in range(200)])
        time.sleep(3.0)
    finally:
        pub(d, "lamp-8", f"{base}/event", [b""], retain=True)  # clear the retained event
        out = stop(watcher)
    assert f"{base}/ack " in out and "cmd_id" in out
    assert f"{base}/birth " in out and '"kind":"blinker"' in out
    assert f"{base}/event " in out and "door_open" in out
    assert out.count(f"{base}/telemetry ") == 200


async def test_simulated_lamps_log_in_with_their_provisioned_secrets_and_publish(
    deployment: Deployment,
) -> None:
    # The simulator's devices send their device id as client id, which is their username: the
    # binding changes nothing for them.
    d = deployment
    watcher = sub(d, "ingest", "sl/v1/11230/lamp-6/#")
    wait_for(lambda: "as ingest " in d.log.read_text(), 5)
    await asyncio.sleep(0.3)  # its SUBACK
    fleet = Fleet([Endpoint("127.0.0.1", d.port)], interval_s=0.5)
    lamp = DeviceIdentity("lamp-6", "11230", "lamp", 37.56, 127.03, LAMP_MODEL)
    fleet.add(LampFirmware(lamp), d.secrets)
    async with fleet:
        assert await fleet.wait_connected(timeout_s=10)
        await asyncio.sleep(1.5)
    out = stop(watcher)
    assert "sl/v1/11230/lamp-6/birth" in out and "sl/v1/11230/lamp-6/telemetry" in out
    assert takeovers(d, "lamp-6") == 0


def test_a_controller_logs_in_on_its_instance_account_from_a_password_file(
    deployment: Deployment, db_url: str, tmp_path: Path
) -> None:
    d = deployment
    migrate(db_url, timescale=False)
    url = f"mqtt://controller%40north-a@127.0.0.1:{d.port}"
    env = _deployed_ingest_env(d, db_url, tmp_path) | {"MQTT_URL": url}
    log = tmp_path / "controller.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streetlight.cli", "controller", "--districts", "11230"],
            env=env,
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "as controller@north-a " in d.log.read_text(), 60)
        time.sleep(1.0)
        assert proc.poll() is None, log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert "not authorised" not in log.read_text().lower()
    assert takeovers(d, "controller@north-a") == 0


# -- 1. the ingest share group ----------------------------------------------------------------------


@dataclass
class Ingest:
    proc: subprocess.Popen[bytes]
    log: Path


@contextlib.contextmanager
def ingest_process(env: dict[str, str], log: Path, *args: str) -> Iterator[Ingest]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streetlight.cli.ingest", "--no-jobs", "--max-delay-ms", "50", *args],
            env=env | {"STREETLIGHT_LOG_FORMAT": "json"},  # the tests read the events' keys
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Ingest(proc, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _deployed_ingest_env(d: Deployment, db: str, data_dir: Path) -> dict[str, str]:
    # As the units run it: a URL without its secret, the secrets in a file, nothing on the command line.
    env = {k: v for k, v in os.environ.items() if k not in ("MQTT_PASSWORD", "MQTT_PASSWORD_FILE")}
    return env | {
        "MQTT_URL": f"mqtt://ingest@127.0.0.1:{d.port}",
        "MQTT_PASSWORD_FILE": str(d.secrets_file),
        "DATABASE_URL": db,
        "STREETLIGHT_DATA_DIR": str(data_dir),
    }


def test_provisioned_ingest_shares_its_subscription_and_six_devices_in_its_group_take_nothing(
    deployment: Deployment, db_url: str, tmp_path: Path
) -> None:
    d = deployment
    env = _deployed_ingest_env(d, db_url, tmp_path)
    with ingest_process(env, tmp_path / "ingest.log", "--workers", "2") as ingest:
        wait_for(lambda: "as ingest@0 " in d.log.read_text() and "as ingest@1 " in d.log.read_text(), 30)
        log = ingest.log.read_text()
        assert log_events(ingest.log, "subscription_mode", mode="shared"), log
        # Six lamps join every group a device could name for ingest's telemetry.
        attackers = [
            sub(d, f"lamp-{i}", f"$share/{group}/sl/v1/+/+/telemetry")
            for i, group in zip(
                range(1, 7), ["ingest", "ingest", "ingest", "ingest-0", "streetlight", "ingest"], strict=True
            )
        ]
        time.sleep(1.0)
        n = 40
        ts = int(time.time() * 1000)
        pub(d, "lamp-0", "sl/v1/11230/lamp-0/telemetry", [LAMP % (ts + i, i) for i in range(n)])
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: count(db_url, "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-0'") >= n, 10
            )
        stored = count(db_url, "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-0'")
        for a in attackers:
            stop(a)
    assert n - stored == 0, f"{n - stored} of {n} messages never reached the database"


def test_ingest_never_logs_its_share_group_and_a_rotated_group_leaves_the_devices_that_learnt_it_nothing(
    deployment: Deployment, db_url: str, tmp_path: Path
) -> None:
    d = deployment
    env = _deployed_ingest_env(d, db_url, tmp_path) | {"MQTT_URL": f"mqtt://ingest%400@127.0.0.1:{d.port}"}
    secret = "SELECT value FROM store_meta WHERE key = 'ingest_share_group'"
    migrate(db_url, timescale=False)
    with ingest_process(env, tmp_path / "first.log") as first:
        wait_for(lambda: bool(log_events(first.log, "ingest_connected")), 30)
        with psycopg.connect(db_url, autocommit=True) as conn:
            leaked = str((conn.execute(secret).fetchone() or ("",))[0])
        assert leaked and leaked not in first.log.read_text()
        connected = log_events(first.log, "ingest_connected")[0]
        assert "$share/ingest-…/sl/v1/+/+/telemetry" in connected["filters"]
    # Say the name leaked all the same (a backup of the database, an old log): three lamps join it.
    thieves = [sub(d, f"lamp-{i}", f"$share/ingest-{leaked}/sl/v1/+/+/telemetry") for i in (1, 2, 3)]
    try:
        assert cli_main(["provision", "--state-dir", str(d.state), "--rotate-share-group",
                         "--database-url", db_url]) == 0  # fmt: skip
        with psycopg.connect(db_url, autocommit=True) as conn:
            rotated = str((conn.execute(secret).fetchone() or ("",))[0])
        assert rotated and rotated != leaked
        # Restarted, ingest's persistent session still holds the old group's subscriptions: dropped.
        with ingest_process(env, tmp_path / "second.log") as again:
            # Connected, it unsubscribed the filters of the retired group.
            wait_for(lambda: any(e["retired_filters"] for e in log_events(again.log, "ingest_connected")), 30)
            time.sleep(0.5)  # the SUBACK
            n, ts = 40, int(time.time() * 1000)
            pub(d, "lamp-0", "sl/v1/11230/lamp-0/telemetry", [LAMP % (ts + i, i) for i in range(n)])
            rows = "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-0' AND ts >= %s"
            since = datetime.fromtimestamp(ts / 1000, UTC)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: count(db_url, rows, since) >= n, 10)
            assert count(db_url, rows, since) == n
            assert leaked not in again.log.read_text() and rotated not in again.log.read_text()
    finally:
        for t in thieves:
            stop(t)


def test_a_restarted_ingest_gets_what_was_queued_for_its_account_while_it_was_down(
    deployment: Deployment, db_url: str, tmp_path: Path
) -> None:
    # The broker gives any connection on the worker's account the worker's client id: a
    # clean-session probe at start would wipe the persistent session and what was queued in it.
    d = deployment
    env = _deployed_ingest_env(d, db_url, tmp_path) | {"MQTT_URL": f"mqtt://ingest%401@127.0.0.1:{d.port}"}
    rows = "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-7'"
    migrate(db_url, timescale=False)
    ts = int(time.time() * 1000)
    with ingest_process(env, tmp_path / "first.log") as first:
        wait_for(lambda: bool(log_events(first.log, "ingest_connected")), 30)
        time.sleep(0.5)  # the SUBACK
        pub(d, "lamp-7", "sl/v1/11230/lamp-7/telemetry", [LAMP % (ts, 0)])
        wait_for(lambda: count(db_url, rows) == 1, 30)
    n = 20
    pub(d, "lamp-7", "sl/v1/11230/lamp-7/telemetry", [LAMP % (ts + i, i) for i in range(1, n + 1)])
    with ingest_process(env, tmp_path / "second.log") as again:
        with contextlib.suppress(AssertionError):
            wait_for(lambda: count(db_url, rows) == n + 1, 30)
        assert log_events(again.log, "subscription_mode", mode="shared"), again.log.read_text()
    assert count(db_url, rows) == n + 1, "messages queued for the stopped worker were lost"


# -- 6. the registry check of the deployed ingest ---------------------------------------------------


def test_the_deployed_ingest_refuses_a_ghost_device_with_no_registry_flag(
    mqtt_service: MqttService, db_url: str, tmp_path: Path
) -> None:
    # provision mirrors the devices into the database; ingest, started as the units start it (no
    # --registry), reads them there. The broker here is the open test broker, standing in for a
    # misconfigured or bypassed ACL, which is what this second wall is for.
    skip_unless(mqtt_service.kind != "embedded", "needs mosquitto_pub")
    state = tmp_path / "state"
    devices = _device_csv(tmp_path / "lamps.csv", ["lamp-real"])
    assert (
        cli_main(
            ["provision", "--state-dir", str(state), "--devices", str(devices), "--database-url", db_url]
        )
        == 0
    )
    env = dict(os.environ, MQTT_URL=mqtt_service.url, DATABASE_URL=db_url, STREETLIGHT_DATA_DIR=str(tmp_path))
    with ingest_process(env, tmp_path / "ingest.log") as ingest:
        wait_for(lambda: bool(log_events(ingest.log, "registry_check", state="on")), 30)
        time.sleep(1.0)
        ts = int(time.time() * 1000)
        assert PUB is not None
        for dev in ("lamp-ghost", "lamp-real"):
            for channel, payload in (
                ("birth", b'{"kind":"lamp","fw":"1","model":"x","bdseq":1}'),
                ("telemetry", LAMP % (ts, 1)),
            ):
                subprocess.run(
                    [
                        PUB,
                        "-h",
                        mqtt_service.host,
                        "-p",
                        str(mqtt_service.port),
                        "-q",
                        "1",
                        "-t",
                        f"sl/v1/11230/{dev}/{channel}",
                        "-m",
                        payload.decode(),
                    ],
                    check=True,
                    timeout=10,
                )
        wait_for(
            lambda: count(db_url, "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-real'") == 1, 20
        )
        wait_for(
            lambda: (
                count(db_url, "SELECT count(*) FROM dead_letters WHERE topic LIKE %s", "%lamp-ghost%") >= 1
            ),
            20,
        )
    assert count(db_url, "SELECT count(*) FROM telemetry WHERE device_id = 'lamp-ghost'") == 0
    assert count(db_url, "SELECT count(*) FROM devices WHERE device_id = 'lamp-ghost'") == 0


def test_a_device_revoked_with_the_database_named_is_refused_by_ingests_registry(
    db_url: str, tmp_path: Path
) -> None:
    from ingest import DatabaseRegistry, sender_checker

    common = ["provision", "--state-dir", str(tmp_path / "state"), "--database-url", db_url]
    devices = _device_csv(tmp_path / "lamps.csv", ["lamp-ok", "lamp-gone"])
    assert cli_main([*common, "--devices", str(devices)]) == 0
    assert cli_main([*common, "--revoke", "lamp-gone"]) == 0
    check = sender_checker(DatabaseRegistry(db_url).lookup)
    assert check("lamp-ok", "11230", b"{}")[0] is None
    assert check("lamp-gone", "11230", b"{}")[0] == "revoked_device"
    assert check("lamp-never", "11230", b"{}")[0] == "unknown_device"
    assert check("lamp-ok", "11010", b"{}")[1] == "district_mismatch"


def test_rotating_or_revoking_a_lamp_voids_the_bdseq_its_old_credentials_stored(
    db_url: str, tmp_path: Path
) -> None:
    # A stolen lamp sent a retained offline with bdseq 2^63-1: every later state of the repaired
    # lamp would be older. New credentials start a new connection lineage.
    from store import set_connectivity

    common = ["provision", "--state-dir", str(tmp_path / "state"), "--database-url", db_url]
    devices = _device_csv(tmp_path / "lamps.csv", ["lamp-a", "lamp-b", "lamp-c"])
    assert cli_main([*common, "--devices", str(devices), "--secrets-out", str(tmp_path / "s1.csv")]) == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        for dev in ("lamp-a", "lamp-b", "lamp-c"):
            set_connectivity(conn, dev, online=False, bdseq=2**63 - 1)
    assert cli_main([*common, "--rotate", "lamp-a", "--secrets-out", str(tmp_path / "s2.csv")]) == 0
    assert cli_main([*common, "--revoke", "lamp-b"]) == 0
    assert cli_main(common) == 0  # a re-run changes nothing more
    bdseq = "SELECT bdseq FROM device_state WHERE device_id = %s"
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert [conn.execute(bdseq, (d,)).fetchone() for d in ("lamp-a", "lamp-b", "lamp-c")] == [
            (None,),
            (None,),
            (2**63 - 1,),
        ]
        assert set_connectivity(conn, "lamp-a", online=True, bdseq=0)  # the repaired lamp's first state
        assert not set_connectivity(conn, "lamp-c", online=True, bdseq=0)


# -- 3. revocation with the broker running as its own user ------------------------------------------


@contextlib.contextmanager
def broker_users_dir() -> Iterator[Path]:
    """A directory the `mosquitto` account can enter (pytest's tmp dirs are root-only)."""
    skip_unless(os.geteuid() == 0, "needs root to start mosquitto as root and let it drop to its user")
    try:
        pwd.getpwnam("mosquitto")
        have_account = True
    except KeyError:
        have_account = False
    skip_unless(have_account, "no mosquitto account on this machine")
    base = Path(tempfile.mkdtemp(prefix="sl-broker-user-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_revoking_one_device_with_the_documented_commands_cuts_off_only_that_device() -> None:
    with broker_users_dir() as base:
        port = free_port()
        common = ["--state-dir", str(base / "state"), "--out", str(base / "mosq"), "--dev-port", str(port)]
        common += ["--persistence-dir", str(_broker_store(base))]
        devices = _device_csv(base / "lamps.csv", ["lamp-keep", "lamp-stolen"])
        secrets_file = base / "issued.csv"
        assert (
            cli_main(
                [
                    "provision",
                    *common,
                    "--broker-user",
                    "mosquitto",
                    "--devices",
                    str(devices),
                    "--secrets-out",
                    str(secrets_file),
                ]
            )
            == 0
        )
        secrets = _read_secrets(secrets_file)
        # docs/security.md: the generated files are 0640; the broker's group reads them.
        subprocess.run(["chgrp", "-R", "mosquitto", str(base / "mosq")], check=True)
        proc = _start(base / "mosq" / "mosquitto.conf", port, base / "stdout.log")
        try:
            assert pwd.getpwuid(_proc_uid(proc.pid)).pw_name == "mosquitto"
            d = Deployment(
                base / "state", base / "mosq", port, secrets, secrets_file, proc, base / "stdout.log"
            )
            keep = sub(d, "lamp-keep", "sl/v1/11230/lamp-keep/cmd")
            stolen = sub(d, "lamp-stolen", "sl/v1/11230/lamp-stolen/cmd")
            time.sleep(0.5)
            assert (
                cli_main(
                    [
                        "provision",
                        *common,
                        "--broker-user",
                        "mosquitto",
                        "--revoke",
                        "lamp-stolen",
                        "--reload-pid",
                        str(proc.pid),
                    ]
                )
                == 0
            )
            time.sleep(1.0)
            for name in ("passwords", "acl"):
                st = (base / "mosq" / name).stat()
                assert (grp.getgrgid(st.st_gid).gr_name, oct(st.st_mode & 0o777)) == ("mosquitto", "0o640"), (
                    name
                )
            # The rest of the fleet still logs in and is served; the revoked device is refused.
            pub(d, "controller", "sl/v1/11230/lamp-keep/cmd", [b'{"cmd_id":"after-revoke"}'])
            time.sleep(0.5)
            assert "after-revoke" in stop(keep)
            stop(stolen)
            assert _connects(d, "lamp-keep") and _connects(d, "ingest")
            assert not _connects(d, "lamp-stolen")
        finally:
            terminate(proc)


def _proc_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def _connects(d: Deployment, user: str) -> bool:
    """Whether a fresh mosquitto_sub login as ``user`` gets CONNACK 0."""
    assert SUB is not None
    r = subprocess.run(
        [SUB, "-p", str(d.port), "-u", user, "-P", d.secrets[user], "-i", user, "-t", "x", "-W", "1", "-d"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return "received CONNACK (0)" in r.stdout


# -- 4. the documented TLS set-up -------------------------------------------------------------------


def _tls_sub(certs: Path, port: int, device: str, client_id: str, *args: str) -> list[str]:
    assert SUB is not None
    argv = [SUB, "-h", "localhost", "-p", str(port), "--cafile", str(certs / "ca.crt")]
    argv += ["--cert", str(certs / f"{device}.crt"), "--key", str(certs / f"{device}.key")]
    return [*argv, "-i", client_id, "-t", f"sl/v1/11230/{device}/cmd", "-q", "1", *args]


def test_the_documented_tls_setup_starts_and_a_device_connects_with_its_certificate() -> None:
    skip_unless(shutil.which("openssl") is not None, "needs openssl")
    with broker_users_dir() as base:
        certs, conf_dir = base / "certs", base / "streetlight"
        # The steps of docs/security.md "Mosquitto with mTLS", with these paths.
        subprocess.run(
            [
                "sh",
                str(ROOT / "broker/security/make_test_ca.sh"),
                str(certs),
                "localhost",
                "lamp-tls",
                "lamp-tls2",
            ],
            check=True,
            capture_output=True,
        )
        devices = _device_csv(base / "lamps.csv", ["lamp-tls", "lamp-tls2"])
        tls_port, dev_port = free_port(), free_port()
        argv = ["provision", "--devices", str(devices), "--state-dir", str(base / "state")]
        argv += ["--persistence-dir", str(_broker_store(base))]
        argv += ["--out", str(conf_dir), "--tls-port", str(tls_port), "--tls-dir", str(certs)]
        assert cli_main([*argv, "--dev-port", str(dev_port), "--secrets-out", str(base / "issued.csv")]) == 0
        subprocess.run(["chgrp", "-R", "mosquitto", str(conf_dir), str(certs)], check=True)
        log = base / "stdout.log"
        proc = _start(conf_dir / "mosquitto.conf", tls_port, log)
        try:
            r = subprocess.run(
                _tls_sub(certs, tls_port, "lamp-tls", "lamp-tls", "-C", "1", "-W", "2", "-d"),
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert "received CONNACK (0)" in r.stdout, r.stdout + r.stderr
            # With a certificate too, the client id is the identity (the CN), not what the client says.
            victim = subprocess.Popen(
                _tls_sub(certs, tls_port, "lamp-tls", "lamp-tls"), stdout=subprocess.PIPE, text=True
            )
            wait_for(lambda: log.read_text().count("as lamp-tls ") >= 2, 5)
            attacker = subprocess.run(
                _tls_sub(certs, tls_port, "lamp-tls2", "lamp-tls", "-W", "1", "-d"),
                capture_output=True,
                text=True,
                timeout=10,
            )
            assert "received CONNACK (0)" in attacker.stdout
            assert victim.poll() is None and TAKEOVER not in log.read_text()
            victim.terminate()
            victim.communicate(timeout=5)
        finally:
            terminate(proc)
