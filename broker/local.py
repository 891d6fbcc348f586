"""A broker on this machine for ``streetlight up`` and ``streetlight sim`` (and the tests): the one
``MQTT_URL`` names when it answers, else a private ``mosquitto`` on a free loopback port when the
binary is installed, else the embedded broker (``broker.lite``) in a child process (DESIGN.md §5).

Every handle says what it is (``kind``) so a caller can report what it used. Loopback only and
anonymous: a development broker, never a deployed one (``deploy/`` and ``streetlight provision``
configure those).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from broker._connection import BrokerAddress, parse_mqtt_url
from runtime.logs import get_logger
from runtime.procs import free_port, tcp_reachable, wait_port

log = get_logger(__name__)


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
    fallbacks: tuple[BrokerAddress, ...] = ()
    """The other nodes of a configured cluster (``MQTT_URL`` a list), after ``host:port``."""

    @property
    def url(self) -> str:
        """``mqtt://[user[:secret]@]host:port``, then ``,mqtt://...`` for each fallback node."""
        auth = ""
        if self.username:
            auth = self.username + (f":{self.password}" if self.password else "") + "@"
        nodes = [BrokerAddress(self.host, self.port), *self.fallbacks]
        return ",".join(f"mqtt://{auth}{node}" for node in nodes)

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
        wait_port(self.host, self.port, timeout_s, self.proc)

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


def configured_mqtt(url: str) -> MqttService | None:
    """The broker named by MQTT_URL (a URL, or a list of a cluster's nodes: it answers when one of
    them does), or None when it does not answer; raises MqttUrlError for a URL that names none."""
    params = parse_mqtt_url(url)
    if not any(tcp_reachable(a.host, a.port) for a in params.addresses):
        return None
    return MqttService(
        "configured", params.host, params.port, params.username, params.password, fallbacks=params.fallbacks
    )


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
        log.warning("mqtt_url_unreachable", mqtt_url=mqtt_url, action="starting a private broker")
    try:
        return start_mosquitto(workdir / "mosquitto")
    except FileNotFoundError:
        return start_embedded_broker(data_dir=workdir / "embedded-broker")
