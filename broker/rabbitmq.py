"""RabbitMQ nodes on loopback: the configuration of a private node and a cluster of them.

``streetlight up --cluster`` starts a three-node cluster for the demo, and the tests and
benchmarks (through ``devkit.localservices``) start single nodes and clusters. Nodes run as the
caller from ``/usr/lib/rabbitmq/bin/rabbitmq-server`` (the Debian/Ubuntu package's layout, without
its wrapper, which switches to the ``rabbitmq`` user), each with its own node name, Erlang
distribution port, files and listeners on 127.0.0.1, so the machine's own RabbitMQ is never
touched. Development only: anonymous MQTT and the ``guest`` account.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from runtime.logs import get_logger
from runtime.procs import free_port, reserve_port, wait_port

log = get_logger(__name__)

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
RABBITMQ_CTL = Path("/usr/lib/rabbitmq/bin/rabbitmqctl")
# The Erlang distribution ports rabbitmqctl itself takes (25672 + 10000 + 0..10) and the system
# node's: a private node must not pick any of them.
_RABBITMQ_RESERVED_PORTS = frozenset({25672, *range(35672, 35683)})
# mqtt.prefetch: QoS 1 messages a subscriber may hold unacknowledged. RabbitMQ's default (10)
# capped ingest at ~250 rows/s; 1,000 gave ~1,600 (issue 16): ingest acknowledges per batch.
RABBITMQ_MQTT_PREFETCH = 1000
# RabbitMQ 3.10's MQTT plugin keeps a QoS 1 subscription in a *durable* classic queue named after
# the client id (``mqtt-subscription-<id>qos1``), on the node the client is connected to, even for
# a clean session. SIGKILL that node and the queue stays in the cluster's metadata with a dead
# home: every later SUBSCRIBE at QoS 1 by that client id, on any node, fails (404 "home node ... is
# down or inaccessible") and the plugin closes the connection right after its CONNACK, until the
# node comes back. Lamps, the controller and ingest over MQTT all subscribe at QoS 1. This policy
# mirrors those queues to a second node and promotes the mirror when the home node dies, so the
# client's next connection, on whichever node, finds its queue alive (docs/reliability.md, "A
# broker node lost"; docs/operations.md).
RABBITMQ_MQTT_SUBSCRIPTION_POLICY = (
    "mqtt-subscriptions",
    "^mqtt-subscription-",
    '{"ha-mode":"exactly","ha-params":2,"ha-promote-on-failure":"always","ha-promote-on-shutdown":"always"}',
)


def rabbitmq_installed() -> bool:
    """True when this machine has the RabbitMQ server scripts (Debian/Ubuntu package layout)."""
    return RABBITMQ_SERVER.exists() and RABBITMQ_CTL.exists()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def rabbitmq_port() -> int:
    """A free loopback port below the kernel's ephemeral range, none of the Erlang distribution
    ports rabbitmqctl takes. A node binds its ports seconds after they are chosen: in the ephemeral
    range an outgoing connection (rabbitmqctl's, another test's) could take one meanwhile."""
    low, high = 20000, _ephemeral_low()
    for _ in range(200):
        port = random.randrange(low, high) if high > low + 100 else free_port()
        if port in _RABBITMQ_RESERVED_PORTS or port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        reserve_port(port)
        return port
    raise OSError("no free port for a RabbitMQ node")


_HANDED_OUT: set[int] = set()


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


@dataclass
class RabbitNode:
    """One node of a :class:`RabbitCluster`: its name, ports and files, and the process we started."""

    name: str  # the Erlang node name, ``sl-PID-PORT@localhost``
    amqp_port: int
    mqtt_port: int
    dist_port: int
    workdir: Path
    env: dict[str, str] = field(repr=False)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def mqtt_url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (anonymous)."""
        return f"mqtt://127.0.0.1:{self.mqtt_port}"

    @property
    def amqp_url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT/%2F`` (guest may log in over loopback only)."""
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    def boot(self) -> None:
        """Start the node's VM (its own process group, so a kill takes its helper processes too)."""
        log_file = (self.workdir / "stdout.log").open("ab")
        self.proc = subprocess.Popen(
            [str(RABBITMQ_SERVER)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
        )
        log_file.close()

    def wait_booted(self, timeout_s: float) -> None:
        """Wait until its MQTT listener (the last one a node opens) accepts connections."""
        wait_port("127.0.0.1", self.mqtt_port, timeout_s, self.proc)

    def log_tail(self, lines: int = 15) -> str:
        """The end of the node's log (its own log file, else what it printed)."""
        logs = sorted((self.workdir / "log").glob("*.log")) or [self.workdir / "stdout.log"]
        try:
            text = logs[0].read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    @property
    def alive(self) -> bool:
        """The node's VM runs."""
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the node's VM and every process of its group (``erl_child_setup``, ``inet_gethost``)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        """Stop the node (SIGTERM: a clean shutdown), killing it after 20 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass
class RabbitCluster:
    """Nodes of one RabbitMQ cluster on loopback (:func:`start_rabbitmq_cluster`); node 0 is the seed."""

    nodes: list[RabbitNode]
    workdir: Path

    @property
    def mqtt_urls(self) -> list[str]:
        """Each node's MQTT address, in node order."""
        return [n.mqtt_url for n in self.nodes]

    @property
    def amqp_urls(self) -> list[str]:
        """Each node's AMQP 0-9-1 address, in node order."""
        return [n.amqp_url for n in self.nodes]

    def ctl(self, node: int, *args: str, timeout_s: float = 60.0) -> str:
        """``rabbitmqctl -n NODE ARGS`` (with the cluster's cookie); RuntimeError when it fails."""
        out = subprocess.run(
            [str(RABBITMQ_CTL), "-n", self.nodes[node].name, *args],
            capture_output=True,
            text=True,
            env=self.nodes[node].env,
            timeout=timeout_s,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"rabbitmqctl {' '.join(args)} on node {node}: {out.stderr.strip() or out.stdout}"
            )
        return out.stdout

    def kill(self, node: int) -> None:
        """SIGKILL node ``node`` (its VM and the VM's helper processes): a crash, for fault tests."""
        self.nodes[node].kill()
        log.info("rabbitmq_node_killed", node=node, name=self.nodes[node].name)

    def start_again(self, node: int, timeout_s: float = 90.0) -> None:
        """Start node ``node`` again from its files: it rejoins the cluster it belongs to."""
        n = self.nodes[node]
        n.boot()
        n.wait_booted(timeout_s)
        log.info("rabbitmq_node_restarted", node=node, name=n.name)

    def running_nodes(self, via: int = 0) -> list[str]:
        """The cluster's running members as node ``via`` sees them."""
        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return sorted(str(n) for n in status.get("running_nodes", []))

    def stop(self) -> None:
        """Stop every node (in parallel) and remove the files."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(RabbitNode.stop, self.nodes))
        shutil.rmtree(self.workdir, ignore_errors=True)


def node_env(home: Path, name: str, dist_port: int, files: Path) -> dict[str, str]:
    """The environment that starts a private node: the cookie in ``home``, its node name and
    distribution port, its data, logs and configuration in ``files`` (rabbitmq.conf and
    enabled_plugins written there), the local epmd only."""
    env = {
        **os.environ,
        "HOME": str(home),
        "RABBITMQ_NODENAME": name,
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_MNESIA_BASE": str(files / "mnesia"),
        "RABBITMQ_LOG_BASE": str(files / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(files / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(files / "rabbitmq.conf"),
        "RABBITMQ_PID_FILE": str(files / "rabbitmq.pid"),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        # The start script then execs the Erlang VM itself: our child is the node, so SIGTERM
        # stops it cleanly and SIGKILL (fault injection) kills it, with no shell in between.
        "RUNNING_UNDER_SYSTEMD": "true",
    }
    env.pop("RABBITMQ_NODE_PORT", None)  # it would override the listeners of rabbitmq.conf
    return env


def start_rabbitmq_cluster(
    workdir: Path, nodes: int = 3, *, prefetch: int = RABBITMQ_MQTT_PREFETCH, timeout_s: float = 120.0
) -> RabbitCluster:
    """Start ``nodes`` RabbitMQ nodes on loopback and join them into one cluster.

    Each node has its own node name, files (``workdir/nodeI``) and AMQP, MQTT and distribution
    ports, the MQTT plugin and the single node's ``mqtt.prefetch``; all share one Erlang cookie
    (``HOME`` is ``workdir``). The nodes boot in parallel, then nodes 1.. join node 0
    (``rabbitmqctl stop_app``, ``join_cluster``, ``start_app``, the joiners in parallel), then the
    cluster gets :data:`RABBITMQ_MQTT_SUBSCRIPTION_POLICY` (without it a client whose node is
    killed cannot subscribe at QoS 1 anywhere until that node is back).
    About 20-30 s on two cores. FileNotFoundError without rabbitmq-server.
    """
    if not rabbitmq_installed():
        raise FileNotFoundError(f"rabbitmq-server is not installed ({RABBITMQ_SERVER})")
    workdir.mkdir(parents=True, exist_ok=True)
    cookie = workdir / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
    members: list[RabbitNode] = []
    for i in range(nodes):
        amqp_port, mqtt_port, dist_port = rabbitmq_port(), rabbitmq_port(), rabbitmq_port()
        node_dir = workdir / f"node{i}"
        node_dir.mkdir(exist_ok=True)
        name = f"sl-{os.getpid()}-{mqtt_port}@localhost"
        (node_dir / "rabbitmq.conf").write_text(rabbitmq_config(amqp_port, mqtt_port, prefetch=prefetch))
        (node_dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        env = node_env(workdir, name, dist_port, node_dir)  # HOME: the shared cookie
        members.append(RabbitNode(name, amqp_port, mqtt_port, dist_port, node_dir, env))
    cluster = RabbitCluster(members, workdir)
    started = time.monotonic()
    try:
        for n in members:
            n.boot()
        for n in members:
            n.wait_booted(timeout_s)
        booted = time.monotonic()

        def join(i: int) -> None:
            # On a loaded machine a step can take a minute (start_app waits for the tables to sync).
            cluster.ctl(i, "stop_app", timeout_s=timeout_s)
            cluster.ctl(i, "join_cluster", members[0].name, timeout_s=timeout_s)
            cluster.ctl(i, "start_app", timeout_s=timeout_s)

        with ThreadPoolExecutor(max(1, nodes - 1)) as pool:
            list(pool.map(join, range(1, nodes)))
        for n in members:
            n.wait_booted(timeout_s)
        name, pattern, definition = RABBITMQ_MQTT_SUBSCRIPTION_POLICY
        cluster.ctl(0, "set_policy", "--apply-to", "queues", name, pattern, definition, timeout_s=timeout_s)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
        dead = [f"node {i} ({n.name}):\n{n.log_tail()}" for i, n in enumerate(members) if not n.alive]
        cluster.stop()
        raise RuntimeError(f"the RabbitMQ cluster did not form: {exc}\n" + "\n".join(dead)) from exc
    except BaseException:
        cluster.stop()
        raise
    log.info(
        "rabbitmq_cluster_started",
        nodes=nodes,
        boot_s=round(booted - started, 1),
        join_s=round(time.monotonic() - booted, 1),
        mqtt=[n.mqtt_port for n in members],
        amqp=[n.amqp_port for n in members],
    )
    return cluster
