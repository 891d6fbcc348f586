"""Throwaway MQTT brokers and PostgreSQL servers for tests and benchmarks.

Choice, in order (DESIGN.md §5):

* broker: the ``MQTT_URL`` given (when reachable), else a private ``mosquitto`` on a free port
  when the binary is on PATH, else the embedded broker (``broker.lite``) in a child process
  (``broker.local``, what ``streetlight up`` uses too); a private RabbitMQ node,
  :func:`start_rabbitmq`, is started only when asked for;
* database: the ``DATABASE_URL`` given (when reachable), else a throwaway cluster from
  ``initdb``/``pg_ctl`` (run as the ``postgres`` user when we are root, since PostgreSQL refuses
  to run as root), else the embedded PostgreSQL from PyPI (``store.embedded``, ``up``'s).

Every handle says what it is (``kind``) so tests and benchmarks can report what they used. The
product's parts (``broker.local``, ``store.embedded``, ``runtime.procs``) are named here too, so a
test or a benchmark imports its local services from one place.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from broker.local import (
    MqttService,
    configured_mqtt,
    mosquitto_config,
    provide_mqtt,
    start_embedded_broker,
    start_mosquitto,
)
from runtime.logs import get_logger
from runtime.procs import free_port, reserve_port, tcp_reachable, terminate, wait_port
from store.embedded import PgService, configured_pg, start_embedded_pg

__all__ = [
    "MqttService",
    "PgCluster",
    "PgService",
    "configured_mqtt",
    "configured_pg",
    "find_pg_bin",
    "free_port",
    "mosquitto_config",
    "provide_mqtt",
    "provide_pg",
    "rabbitmq_installed",
    "reserve_port",
    "start_embedded_broker",
    "start_embedded_pg",
    "start_mosquitto",
    "start_pg_cluster",
    "start_rabbitmq",
    "tcp_reachable",
    "terminate",
    "timescale_installed",
    "wait_port",
]

log = get_logger(__name__)
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


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


# --------------------------------------------------------------------------- PostgreSQL


@dataclass
class PgCluster(PgService):
    """A throwaway ``initdb``/``pg_ctl`` cluster this process started (kind ``pg_ctl``)."""

    run_as: str | None = None
    pg_bin: Path | None = None
    timescale: bool = False
    """Started with TimescaleDB preloaded (and worker slots for its jobs)."""
    durable: bool = False
    """Started with fsync and synchronous commit on, as deployed (benchmarks), not the test settings."""

    def _pg_ctl(self, *args: str) -> int:
        assert self.pg_bin is not None and self.datadir is not None
        cmd = [str(self.pg_bin / "pg_ctl"), "-D", str(self.datadir), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        return subprocess.call(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``mode``: smart, fast or immediate)."""
        self._pg_ctl("stop", "-m", mode, "-w")

    def start_again(self) -> None:
        """Start the cluster again after stop (fault injection)."""
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
) -> PgCluster:
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
    svc = PgCluster(
        "pg_ctl",
        f"postgresql://postgres@127.0.0.1:{port}/postgres",
        datadir,
        port,
        run_as=run_as,
        pg_bin=pg_bin,
        timescale=timescale,
        durable=durable,
    )
    svc.start_again()
    return svc


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
        log.warning("database_unreachable_starting_private_postgres", database=database_url)
    try:
        return start_pg_cluster(workdir / "pg", durable=durable)
    except FileNotFoundError:
        return start_embedded_pg(workdir / "pgserver")
