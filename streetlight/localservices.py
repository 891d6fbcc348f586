"""Private MQTT brokers and PostgreSQL servers for tests, benchmarks and ``streetlight up``.

Choice, in order (DESIGN.md §5):

* broker: the ``MQTT_URL`` given (when reachable), else a private ``mosquitto`` on a free port
  when the binary is on PATH, else the embedded broker (``broker.lite``) in a child process
  (a private RabbitMQ node, :func:`start_rabbitmq`, is started only when asked for);
* database: the ``DATABASE_URL`` given (when reachable), else a throwaway cluster from
  ``initdb``/``pg_ctl`` (run as the ``postgres`` user when we are root, since PostgreSQL refuses
  to run as root), else the embedded PostgreSQL from PyPI (``pgserver``).

Every handle says what it is (``kind``) so tests and benchmarks can report what they used.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

log = logging.getLogger(__name__)
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


# Ports this process handed out or was told are taken: a port is free only until someone binds
# it, so two calls (or a port chosen for a child that has not bound it yet) must not collide.
_TAKEN_PORTS: set[int] = set()


def reserve_port(port: int) -> None:
    """Tell `free_port` never to return `port` (e.g. the API's, bound later by a child)."""
    _TAKEN_PORTS.add(port)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now and this process has not handed out."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _TAKEN_PORTS:
            _TAKEN_PORTS.add(port)
            return port
    raise OSError("no free TCP port found")


def tcp_reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True when a TCP connection to host:port succeeds within the timeout."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _wait_port(host: str, port: int, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with status {proc.returncode} before listening on {port}")
        if tcp_reachable(host, port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s} s")


@dataclass
class MqttService:
    """A broker we use; ``proc`` is set when we started it ourselves."""

    kind: str  # "configured", "mosquitto", "embedded" or "rabbitmq"
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    config_path: Path | None = None
    workdir: Path | None = None
    _argv: list[str] = field(default_factory=list)
    _env: dict[str, str] | None = None

    @property
    def url(self) -> str:
        auth = ""
        if self.username:
            auth = self.username + (f":{self.password}" if self.password else "") + "@"
        return f"mqtt://{auth}{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL the broker we started (fault injection)."""
        if self.proc is None:
            raise RuntimeError("cannot kill a broker this process did not start")
        self.proc.kill()
        self.proc.wait()

    def start_again(self, timeout_s: float = 10.0) -> None:
        """Start the same broker again on the same port (after kill or stop)."""
        if not self._argv:
            raise RuntimeError("cannot restart a broker this process did not start")
        self.proc = subprocess.Popen(
            self._argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self._env
        )
        _wait_port(self.host, self.port, timeout_s, self.proc)

    def stop(self) -> None:
        """Stop the broker we started; nothing for a configured one."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20 if self.kind == "rabbitmq" else 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def mosquitto_config(port: int, workdir: Path, *, persistence: bool = True, extra: str = "") -> str:
    """A development mosquitto.conf: loopback only and anonymous, with the deployed limits.

    Queues, in-flight window and size limits are the ones `streetlight provision` writes
    (``MosquittoOptions``' defaults), so what the tests and fault scenarios measure on a private
    broker is what a deployed one does; only authentication and ACLs are left out.
    """
    from broker.security import MAX_PAYLOAD_BYTES, PACKET_HEADROOM_BYTES, MosquittoOptions

    deployed = MosquittoOptions()
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        f"persistence {'true' if persistence else 'false'}",
        f"persistence_location {workdir}/",
        "autosave_interval 1",
        f"message_size_limit {MAX_PAYLOAD_BYTES}",
        f"max_packet_size {MAX_PAYLOAD_BYTES + PACKET_HEADROOM_BYTES}",
        f"max_queued_messages {deployed.max_queued_messages}",
        f"max_queued_bytes {deployed.max_queued_bytes}",
        "queue_qos0_messages true",
        f"max_inflight_messages {deployed.max_inflight_messages}",
        "max_keepalive 600",
        "log_dest none",
    ]
    return "\n".join(lines) + "\n" + extra


def start_mosquitto(workdir: Path, *, port: int | None = None, extra_config: str = "") -> MqttService:
    """Start a private mosquitto on a free loopback port; its store (``mosquitto.db``) is in ``workdir``.

    Run as root, mosquitto would drop privileges to the ``mosquitto`` user, which cannot enter a
    private (0700) parent such as pytest's ``tmp_path``: persistence would then silently save
    nothing (no ``mosquitto.db``; retained messages and persistent sessions gone at a kill). So a
    root caller's private broker gets ``user root`` in its generated config and keeps running as
    root, writing exactly where it was asked, whatever the parents' modes; no folder's mode or
    owner is changed. It listens on loopback only and is meant for tests, benchmarks and
    ``streetlight up``, never as a deployed broker (deploy/ has its own configuration).
    """
    binary = shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
    )
    if binary is None:
        raise FileNotFoundError("mosquitto is not installed")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    # As root: stay root (see above), so the store is written wherever workdir is.
    run_as = "user root\n" if os.geteuid() == 0 else ""
    conf.write_text(mosquitto_config(port, workdir, extra=run_as + extra_config))
    argv = [binary, "-c", str(conf)]
    svc = MqttService("mosquitto", "127.0.0.1", port, config_path=conf, workdir=workdir, _argv=argv)
    svc.start_again()
    return svc


def start_embedded_broker(*, port: int | None = None, data_dir: Path | None = None) -> MqttService:
    """Start the embedded (lite) broker in a child process; ``data_dir`` keeps its retained messages."""
    port = port or free_port()
    argv = [sys.executable, "-m", "broker.embedded", "--host", "127.0.0.1", "--port", str(port)]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    svc = MqttService("embedded", "127.0.0.1", port, _argv=argv)
    svc.start_again(timeout_s=30.0)
    return svc


RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQ_CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
# The Erlang distribution ports rabbitmqctl itself takes (25672 + 10000 + 0..10) and the system
# node's: a private node must not pick any of them.
_RABBITMQ_RESERVED_PORTS = frozenset({25672, *range(35672, 35683)})
# mqtt.prefetch: QoS 1 messages a subscriber may hold unacknowledged. RabbitMQ's default (10)
# capped ingest at ~250 rows/s; 1,000 gave ~1,600 (issue 16): ingest acknowledges per batch.
RABBITMQ_MQTT_PREFETCH = 1000


def rabbitmq_installed() -> bool:
    """True when this machine has the RabbitMQ server scripts (Debian/Ubuntu package layout)."""
    return RABBITMQ_SERVER.exists() and RABBITMQ_CTL.exists()


def _rabbitmq_port() -> int:
    while True:
        port = free_port()
        if port not in _RABBITMQ_RESERVED_PORTS:
            return port


def rabbitmq_config(amqp_port: int, mqtt_port: int, *, prefetch: int = RABBITMQ_MQTT_PREFETCH) -> str:
    """A development rabbitmq.conf: loopback only, anonymous MQTT, ingest-sized prefetch."""
    return "\n".join(
        [
            f"listeners.tcp.default = 127.0.0.1:{amqp_port}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{mqtt_port}",
            "mqtt.allow_anonymous = true",
            "loopback_users = none",
            f"mqtt.prefetch = {prefetch}",
            "log.console = false",
            "log.file.level = warning",
            "",
        ]
    )


def start_rabbitmq(
    workdir: Path, *, prefetch: int = RABBITMQ_MQTT_PREFETCH, timeout_s: float = 90.0
) -> MqttService:
    """Start a private RabbitMQ node with its MQTT plugin on free loopback ports, its files in ``workdir``.

    The node runs as the caller (no Debian wrapper, which switches to the ``rabbitmq`` user) with
    its own Erlang cookie (``HOME`` is ``workdir``), node name and distribution port, so the
    machine's own RabbitMQ is never touched. Boot takes 6-10 s. For ``rabbitmqctl``, use the same
    ``HOME`` (the cookie) and ``-n`` with the node name written to ``workdir/nodename``.
    """
    if not rabbitmq_installed():
        raise FileNotFoundError(f"rabbitmq-server is not installed ({RABBITMQ_SERVER})")
    workdir.mkdir(parents=True, exist_ok=True)
    amqp_port, mqtt_port, dist_port = _rabbitmq_port(), _rabbitmq_port(), _rabbitmq_port()
    node = f"sl-{os.getpid()}-{mqtt_port}@localhost"
    (workdir / "rabbitmq.conf").write_text(rabbitmq_config(amqp_port, mqtt_port, prefetch=prefetch))
    (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    (workdir / "nodename").write_text(node + "\n")
    env = {
        **os.environ,
        "HOME": str(workdir),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq.conf"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        # The start script then execs the Erlang VM itself: our child is the node, so SIGTERM
        # stops it cleanly and SIGKILL (fault injection) kills it, with no shell in between.
        "RUNNING_UNDER_SYSTEMD": "true",
    }
    env.pop("RABBITMQ_NODE_PORT", None)  # it would override the listener above
    svc = MqttService(
        "rabbitmq",
        "127.0.0.1",
        mqtt_port,
        config_path=workdir / "rabbitmq.conf",
        workdir=workdir,
        _argv=[str(RABBITMQ_SERVER)],
        _env=env,
    )
    try:
        svc.start_again(timeout_s=timeout_s)
    except (RuntimeError, TimeoutError):
        svc.stop()
        raise
    return svc


def configured_mqtt(url: str) -> MqttService | None:
    """The broker named by MQTT_URL, or None when it does not answer."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 1883
    if not tcp_reachable(host, port):
        return None
    return MqttService("configured", host, port, parts.username, parts.password)


def provide_mqtt(mqtt_url: str | None, workdir: Path, *, local_kind: str = "auto") -> MqttService:
    """The configured broker when reachable, else a private mosquitto, else the embedded broker.

    ``local_kind`` picks the local broker: ``auto`` (mosquitto when installed), ``mosquitto`` or
    ``embedded`` (what a machine with only Python gets; useful to try that path anywhere)."""
    if local_kind == "embedded" and not mqtt_url:
        return start_embedded_broker(data_dir=workdir / "embedded-broker")
    if mqtt_url:
        svc = configured_mqtt(mqtt_url)
        if svc is not None:
            return svc
        log.warning("MQTT_URL %s is not reachable; starting a private broker", mqtt_url)
    try:
        return start_mosquitto(workdir / "mosquitto")
    except FileNotFoundError:
        return start_embedded_broker(data_dir=workdir / "embedded-broker")


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PgService:
    """A PostgreSQL server we use; ``datadir`` is set when we started it ourselves."""

    kind: str  # "configured", "pg_ctl" or "embedded"
    url: str
    datadir: Path | None = None
    port: int | None = None
    run_as: str | None = None
    pg_bin: Path | None = None
    timescale: bool = False
    """Started with TimescaleDB preloaded (and worker slots for its jobs)."""
    durable: bool = False
    """Started with fsync and synchronous commit on, as deployed (benchmarks), not the test settings."""
    _server: object = None

    def database_url(self, dbname: str) -> str:
        """The same server, another database."""
        parts = urlsplit(self.url)
        return parts._replace(path=f"/{dbname}").geturl()

    def _pg_ctl(self, *args: str) -> int:
        assert self.pg_bin is not None and self.datadir is not None
        cmd = [str(self.pg_bin / "pg_ctl"), "-D", str(self.datadir), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server we started (``mode``: smart, fast or immediate)."""
        if self.kind == "pg_ctl":
            self._pg_ctl("stop", "-m", mode, "-w")
        elif self.kind == "embedded" and self._server is not None:
            self._server.cleanup()  # type: ignore[attr-defined]

    def start_again(self) -> None:
        """Start the pg_ctl cluster again after stop (fault injection)."""
        if self.kind != "pg_ctl":
            raise RuntimeError("only a pg_ctl cluster started by this process can be restarted")
        assert self.datadir is not None
        opts = _pg_options(self.port or 5432, self.datadir, timescale=self.timescale, durable=self.durable)
        if self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.datadir / "server.log"), "-o", opts) != 0:
            raise RuntimeError(f"pg_ctl start failed; see {self.datadir}/server.log")


# TimescaleDB's jobs each take a background worker while they run, plus one scheduler per
# database with the extension and one launcher: 8 slots (the default) ran out with this
# project's 7 jobs; the tests keep a few databases alive at once, hence the margin.
TIMESCALE_WORKER_OPTIONS = (
    "-c shared_preload_libraries=timescaledb -c max_worker_processes=32 "
    "-c timescaledb.max_background_workers=24"
)


def _pg_options(port: int, datadir: Path, *, timescale: bool = False, durable: bool = False) -> str:
    opts = (
        f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c max_connections=200 -c shared_buffers=256MB"
    )
    if not durable:  # a throwaway cluster for tests: nothing to keep across a crash of the machine
        opts += " -c synchronous_commit=off -c fsync=off -c full_page_writes=off"
    return f"{opts} {TIMESCALE_WORKER_OPTIONS}" if timescale else opts


def timescale_installed(pg_bin: Path | None = None) -> bool:
    """True when the PostgreSQL whose binaries are in ``pg_bin`` has TimescaleDB's files."""
    pg_bin = pg_bin or find_pg_bin()
    if pg_bin is None:
        return False
    try:
        out = subprocess.run(
            [str(pg_bin / "pg_config"), "--pkglibdir", "--sharedir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return False
    if len(out) != 2:
        return False
    lib, share = Path(out[0]), Path(out[1])
    return (lib / "timescaledb.so").exists() and (share / "extension" / "timescaledb.control").exists()


def find_pg_bin() -> Path | None:
    """The directory holding initdb and pg_ctl, or None."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    for d in PG_BIN_DIRS:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


def start_pg_cluster(
    workdir: Path, *, port: int | None = None, timescale: bool = False, durable: bool = False
) -> PgService:
    """initdb + pg_ctl start a throwaway cluster on a free port (as 'postgres' when we are root).

    ``timescale``: preload TimescaleDB and give its jobs worker slots (False: the state of a
    server right after the package is installed and before postgresql.conf is edited).
    ``durable``: fsync, synchronous commit and full page writes on, as a deployed server runs
    (False: the tests' settings, which skip every flush to disk)."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        raise FileNotFoundError("initdb/pg_ctl are not installed")
    port = port or free_port()
    run_as = None
    if os.geteuid() == 0:
        run_as = "postgres"
        pw = pwd.getpwnam(run_as)
        # The cluster must live where the postgres user can write, and nowhere under /root.
        workdir = Path(tempfile.mkdtemp(prefix="streetlight-pg-"))
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
    workdir.mkdir(parents=True, exist_ok=True)
    datadir = workdir / "data"
    cmd = [
        str(pg_bin / "initdb"),
        "-D",
        str(datadir),
        "-U",
        "postgres",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-sync",
    ]
    if run_as:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"initdb failed: {out.stderr.strip()}")
    svc = PgService(
        "pg_ctl",
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        datadir,
        port,
        run_as,
        pg_bin,
        timescale,
        durable,
    )
    svc.start_again()
    return svc


def start_embedded_pg(datadir: Path) -> PgService:
    """The embedded PostgreSQL from PyPI (pgserver), data kept in ``datadir``."""
    with warnings.catch_warnings():
        # pgserver asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (root
        # in a container, CI) platformdirs warns and falls back to /tmp/runtime-<uid>, which works.
        warnings.simplefilter("ignore")
        import pgserver  # type: ignore[attr-defined,unused-ignore]

    datadir.mkdir(parents=True, exist_ok=True)
    # pgserver gives `pg_ctl start -w` a fixed 10 s; on a loaded machine that can run out after
    # the server is already up (seen once in a full test run). Asking again finds it running.
    for attempt in range(3):
        try:
            server = pgserver.get_server(  # type: ignore[attr-defined,unused-ignore]
                datadir, cleanup_mode="stop"
            )
            break
        except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
            if attempt == 2:
                raise
            log.warning("embedded PostgreSQL slow to start (%s); asking again", type(exc).__name__)
    return PgService("embedded", server.get_uri(), datadir, _server=server)


def configured_pg(url: str) -> PgService | None:
    """The server named by DATABASE_URL, or None when it does not answer."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("select 1")
    except psycopg.Error:
        return None
    return PgService("configured", url)


def provide_pg(
    database_url: str | None, workdir: Path, *, local_kind: str = "auto", durable: bool = False
) -> PgService:
    """The configured database when reachable, else a pg_ctl cluster, else the embedded one.

    ``local_kind``: ``auto``, ``pg_ctl`` or ``embedded`` (what a machine with only Python gets).
    ``durable``: a pg_ctl cluster flushes its commits to disk as deployed (benchmarks)."""
    if local_kind == "embedded" and not database_url:
        return start_embedded_pg(workdir / "pgserver")
    if database_url:
        svc = configured_pg(database_url)
        if svc is not None:
            return svc
        log.warning("DATABASE_URL %s is not reachable; starting a private PostgreSQL", database_url)
    try:
        return start_pg_cluster(workdir / "pg", durable=durable)
    except FileNotFoundError:
        return start_embedded_pg(workdir / "pgserver")


def terminate(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> int:
    """SIGTERM a child, then SIGKILL after the timeout; returns its status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
