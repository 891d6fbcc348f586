"""Throwaway MQTT brokers and PostgreSQL servers for tests and benchmarks.

Choice, in order (DESIGN.md §5):

* broker: the ``MQTT_URL`` given (when reachable), else a private ``mosquitto`` on a free port
  when the binary is on PATH, else the embedded broker (``broker.lite``) in a child process
  (``broker.local``, what ``streetlight up`` uses too); a private RabbitMQ node,
  :func:`start_rabbitmq`, or a three-node cluster, :func:`start_rabbitmq_cluster`
  (``broker.rabbitmq``, what ``streetlight up --cluster`` starts), only when asked for;
* database: the ``DATABASE_URL`` given (when reachable), else a throwaway cluster from
  ``initdb``/``pg_ctl`` (run as the ``postgres`` user when we are root, since PostgreSQL refuses
  to run as root), else the embedded PostgreSQL from PyPI (``store.embedded``, ``up``'s).

Every handle says what it is (``kind``) so tests and benchmarks can report what they used. The
product's parts (``broker.local``, ``broker.rabbitmq``, ``store.embedded``, ``runtime.procs``) are
named here too, so a test or a benchmark imports its local services from one place.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
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
from broker.rabbitmq import (
    RABBITMQ_CTL,
    RABBITMQ_MQTT_PREFETCH,
    RABBITMQ_SERVER,
    RabbitCluster,
    RabbitNode,
    node_env,
    rabbitmq_config,
    rabbitmq_installed,
    rabbitmq_port,
    start_rabbitmq_cluster,
)
from runtime.logs import get_logger
from runtime.procs import free_port, reserve_port, tcp_reachable, terminate, wait_port
from store.embedded import PgService, configured_pg, start_embedded_pg

__all__ = [
    "RABBITMQ_CTL",
    "RABBITMQ_MQTT_PREFETCH",
    "RABBITMQ_SERVER",
    "MqttService",
    "PgCluster",
    "PgReplicaSet",
    "PgService",
    "RabbitCluster",
    "RabbitNode",
    "configured_mqtt",
    "configured_pg",
    "find_pg_bin",
    "free_port",
    "mosquitto_config",
    "pg_replication_installed",
    "provide_mqtt",
    "provide_pg",
    "rabbitmq_config",
    "rabbitmq_installed",
    "reserve_port",
    "start_embedded_broker",
    "start_embedded_pg",
    "start_mosquitto",
    "start_pg_cluster",
    "start_pg_replicated",
    "start_rabbitmq",
    "start_rabbitmq_cluster",
    "tcp_reachable",
    "terminate",
    "timescale_installed",
    "wait_port",
]

log = get_logger(__name__)
PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


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
    amqp_port, mqtt_port, dist_port = rabbitmq_port(), rabbitmq_port(), rabbitmq_port()
    node = f"sl-{os.getpid()}-{mqtt_port}@localhost"
    (workdir / "rabbitmq.conf").write_text(rabbitmq_config(amqp_port, mqtt_port, prefetch=prefetch))
    (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
    (workdir / "nodename").write_text(node + "\n")
    env = node_env(workdir, node, dist_port, workdir)
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
    options: str = ""
    """More ``-c name=value`` server options, after the others (replication: :func:`start_pg_replicated`)."""

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
        opts = f"{opts} {self.options}".rstrip()
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
    workdir: Path,
    *,
    port: int | None = None,
    timescale: bool = False,
    durable: bool = False,
    options: str = "",
) -> PgCluster:
    """initdb + pg_ctl start a throwaway cluster on a free port (as 'postgres' when we are root).

    ``timescale``: preload TimescaleDB and give its jobs worker slots (False: the state of a
    server right after the package is installed and before postgresql.conf is edited).
    ``durable``: fsync, synchronous commit and full page writes on, as a deployed server runs
    (False: the tests' settings, which skip every flush to disk). ``options``: more ``-c`` server
    options, given after those."""
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
        options=options,
    )
    svc.start_again()
    return svc


# A primary and its streaming hot standby (issue 23). The names are the standbys' application
# names (their ``cluster_name``), which ``synchronous_standby_names`` lists.
PRIMARY_NAME = "sl_primary"
STANDBY_NAME = "sl_standby"
REPLICATION_SLOT = "sl_standby_slot"


def pg_replication_installed(pg_bin: Path | None = None) -> bool:
    """True when this machine has the server binaries a primary and a standby need."""
    pg_bin = pg_bin or find_pg_bin()
    return pg_bin is not None and all((pg_bin / b).exists() for b in ("initdb", "pg_ctl", "pg_basebackup"))


@dataclass
class PgReplicaSet:
    """A PostgreSQL primary and a hot standby streaming from it through a replication slot.

    ``synchronous``: the primary lists the standby in ``synchronous_standby_names`` (with
    ``synchronous_commit=on``), so a commit returns only once the standby has flushed it to its WAL:
    a commit acknowledged before the primary is lost is on the standby. False: asynchronous
    streaming, a commit may be acknowledged and then lost with the primary (the RPO is the standby's
    lag). Both run ``durable`` (fsync on), as deployed: the cost of a commit is measured on them.
    """

    primary: PgCluster
    standby: PgCluster
    synchronous: bool

    def url(self, dbname: str) -> str:
        """The multi-host connection string the services use: whichever of the two accepts writes."""
        return (
            f"postgresql://postgres@127.0.0.1:{self.primary.port},127.0.0.1:{self.standby.port}/{dbname}"
            "?target_session_attrs=read-write&connect_timeout=2"
        )

    def streaming(self) -> dict[str, str]:
        """The primary's view of its standby: ``state`` (streaming) and ``sync_state`` (sync, async)."""
        import psycopg  # the devkit may use the driver; only here, to keep the module's import light

        with psycopg.connect(self.primary.url, autocommit=True, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT state, sync_state FROM pg_stat_replication WHERE application_name = %s",
                (STANDBY_NAME,),
            ).fetchone()
        return {"state": str(row[0]), "sync_state": str(row[1])} if row else {}

    def wait_streaming(self, timeout_s: float = 30.0) -> None:
        """Wait until the standby streams from the primary (and is its synchronous one when asked)."""
        want = "sync" if self.synchronous else "async"
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                if self.streaming() == {"state": "streaming", "sync_state": want}:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the standby is not streaming ({want}) from the primary")
            time.sleep(0.1)

    def kill_primary(self) -> int:
        """SIGKILL the primary's postmaster (its backends notice and exit); returns its pid."""
        assert self.primary.datadir is not None
        pid = int((self.primary.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        return pid

    def promote(self) -> None:
        """Promote the standby (``pg_ctl promote``, waiting until it accepts writes)."""
        if self.standby._pg_ctl("promote", "-w", "-t", "60") != 0:
            raise RuntimeError(f"pg_ctl promote failed; see {self.standby.datadir}/server.log")

    def stop(self) -> None:
        """Stop both servers (immediately: throwaway data) and remove their files."""
        for pg in (self.standby, self.primary):
            pg.stop("immediate")
            if pg.datadir is not None:
                shutil.rmtree(pg.datadir, ignore_errors=True)


def start_pg_replicated(workdir: Path, *, synchronous: bool = True, timeout_s: float = 60.0) -> PgReplicaSet:
    """A primary (``wal_level=replica``) and a hot standby made by ``pg_basebackup -R`` with a slot.

    As root both run as ``postgres`` (PostgreSQL refuses root), their files in a fresh folder
    under the system temp dir. See :class:`PgReplicaSet` for ``synchronous``."""
    pg_bin = find_pg_bin()
    if pg_bin is None or not pg_replication_installed(pg_bin):
        raise FileNotFoundError("initdb/pg_ctl/pg_basebackup are not installed")
    replication = "-c wal_level=replica -c max_wal_senders=4 -c max_replication_slots=4 -c hot_standby=on"
    sync = f" -c synchronous_standby_names={STANDBY_NAME}" if synchronous else ""
    primary = start_pg_cluster(
        workdir, durable=True, options=f"{replication} -c cluster_name={PRIMARY_NAME}{sync}"
    )
    assert primary.datadir is not None and primary.port is not None
    standby_dir = primary.datadir.parent / "standby"
    cmd = [
        str(pg_bin / "pg_basebackup"),
        "-D", str(standby_dir), "-h", "127.0.0.1", "-p", str(primary.port), "-U", "postgres",
        "-X", "stream", "-R", "-C", "-S", REPLICATION_SLOT, "--checkpoint=fast", "--no-sync",
    ]  # fmt: skip
    if primary.run_as:
        cmd = ["runuser", "-u", primary.run_as, "--", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout_s)
    if out.returncode != 0:
        primary.stop("immediate")
        raise RuntimeError(f"pg_basebackup failed: {out.stderr.strip()}")
    # Not synchronous_standby_names here: once promoted, it would wait for a standby it has not got.
    standby = PgCluster(
        "pg_ctl",
        f"postgresql://postgres@127.0.0.1:{(port := free_port())}/postgres",
        standby_dir,
        port,
        run_as=primary.run_as,
        pg_bin=pg_bin,
        durable=True,
        options=f"{replication} -c cluster_name={STANDBY_NAME}",
    )
    replicas = PgReplicaSet(primary, standby, synchronous)
    try:
        standby.start_again()
        replicas.wait_streaming(timeout_s)
    except (RuntimeError, TimeoutError):
        replicas.stop()
        raise
    log.info("pg_replicated_started", primary=primary.port, standby=standby.port, synchronous=synchronous)
    return replicas


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
