"""``streetlight ingest``: MQTT -> PostgreSQL, one worker per process (docs/ingest.md)."""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.logs import bind_context, get_logger
from streetlight import bootstrap
from streetlight.settings import Settings, warn_secrets_in_flags

if TYPE_CHECKING:
    from broker import AmqpSource, ConnectionParams

HELP = "store every lamp and blinker message in PostgreSQL (shared subscription, N worker processes)"
log = get_logger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight ingest``."""
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: STREETLIGHT_INGEST_WORKERS or 1)",
    )
    parser.add_argument("--index", type=int, default=None, help=argparse.SUPPRESS)  # a child worker's number
    parser.add_argument(
        "--mqtt-url",
        help="broker URL without its secret, or a comma-separated list of a cluster's nodes "
        "(default: MQTT_URL)",
    )
    parser.add_argument(
        "--mqtt-password-file",
        type=Path,
        metavar="FILE",
        help="the MQTT secret, or provision's username,secret CSV (default: MQTT_PASSWORD_FILE, "
        "MQTT_PASSWORD); with --workers N, worker i logs in as USER@i",
    )
    parser.add_argument("--database-url", help="PostgreSQL URL (default: DATABASE_URL)")
    parser.add_argument(
        "--source",
        choices=["mqtt", "amqp"],
        default="mqtt",
        help="mqtt: subscribe on the MQTT broker (default); amqp: consume the durable quorum queue of a "
        "RabbitMQ cluster (AMQP 0-9-1, every worker a competing consumer)",
    )
    parser.add_argument(
        "--amqp-url",
        metavar="URL[,URL...]",
        help="with --source amqp: the RabbitMQ nodes, any live one serves (default: AMQP_URL)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=None,
        help="with --source amqp: unacknowledged messages one worker may hold (default 2000)",
    )
    parser.add_argument(
        "--queue",
        default=None,
        help="with --source amqp: the quorum queue (default streetlight.ingest)",
    )
    parser.add_argument(
        "--subscription",
        choices=["auto", "shared", "plain"],
        default="auto",
        help="shared ($share/ingest-SECRET/...) or plain; auto asks the broker (plain: one worker)",
    )
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1, help="subscription QoS (default 1)")
    parser.add_argument(
        "--client-id",
        default="streetlight-ingest",
        help="prefix of the workers' MQTT client ids without an account (with one it is the username)",
    )
    parser.add_argument(
        "--group",
        help="on a plain subscription: instances with the same group take turns, one consuming at a "
        "time (lease ingest/GROUP) on the group's MQTT session (client id GROUP); default: none, "
        "every instance consumes on its own session",
    )
    parser.add_argument(
        "--lease-ttl-s",
        type=float,
        default=15.0,
        help="time to live of the group's lease: a dead consumer is replaced within it (default 15)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="Prometheus /metrics and /health (worker i: port + i)"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1")
    parser.add_argument(
        "--registry",
        type=Path,
        help="provisioning registry file (default: the provisioned devices in the database)",
    )
    parser.add_argument(
        "--registry-check",
        choices=["auto", "on", "off"],
        default="auto",
        help="refuse ids provisioning never registered: auto = on once the database holds any (default)",
    )
    parser.add_argument("--max-rows", type=int, default=5000, help="rows per batch (default 5000)")
    parser.add_argument(
        "--max-delay-ms", type=float, default=200.0, help="longest wait before a batch is written"
    )
    parser.add_argument(
        "--spool-max-mb", type=float, default=1024.0, help="bound of the spool file per worker"
    )
    parser.add_argument(
        "--device-rate",
        type=float,
        default=None,
        help="messages per second one device may send, sustained (default 5; 0: no bound)",
    )
    parser.add_argument(
        "--device-burst", type=float, default=None, help="messages one device may send at once (default 100)"
    )
    parser.add_argument(
        "--no-jobs", action="store_true", help="never run the periodic alert/maintenance jobs"
    )
    parser.add_argument("--no-migrate", action="store_true", help="do not apply migrations at start")


def _decide_shared(args: argparse.Namespace, params: ConnectionParams) -> bool:
    from ingest import probe_shared_subscriptions

    if args.subscription == "shared":
        _refuse_ignored_share(params)
        return True
    if args.subscription != "auto":
        return False
    if params.username is not None:
        # A broker with accounts is one `streetlight provision` configured: Mosquitto or EMQX, both
        # share. Not probed: a probe would log in as a worker, the broker (binding the client id to
        # the username) would hand it that worker's persistent session, and a clean-session probe
        # would wipe what is queued there, a resumed one would take the queued QoS 0 messages.
        # Each worker checks in its own session instead (ingest.ShareSelfCheck) and exits 2 when
        # the broker delivers nothing to its shared subscription.
        why = "a broker with accounts (Mosquitto or EMQX as provisioned); each worker checks in session"
        log.info("subscription_mode", mode="shared", why=why)
        return True
    shared, why = probe_shared_subscriptions(params)
    log.info("subscription_mode", mode="shared" if shared else "plain", why=why)
    return shared


class SharedSubscriptionsIgnored(RuntimeError):
    """``--subscription shared`` on a broker that accepts ``$share`` and delivers nothing to it."""


def _refuse_ignored_share(params: ConnectionParams) -> None:
    """Fail loudly rather than consume nothing in silence (issue 16)."""
    from ingest import shared_subscriptions_ignored

    if params.username is not None:
        # Not probed with an account, for the reason _decide_shared does not probe: the probe's
        # logins would take over this worker's session where the broker binds client ids to users.
        # Each worker checks in its own session instead (ingest.ShareSelfCheck).
        log.info(
            "subscription_mode", mode="shared", why="forced; with an account each worker checks in session"
        )
        return
    why = shared_subscriptions_ignored(params)
    if why is not None:
        raise SharedSubscriptionsIgnored(
            f"--subscription shared: {why}; use --subscription plain (with --group for several instances)"
        )


def run(args: argparse.Namespace) -> int:
    """Start the workers (or, with --index, be one) until SIGTERM/SIGINT."""
    settings = Settings.from_env()
    if args.index is None:  # the supervisor warns once, not every worker
        warn_secrets_in_flags(
            "ingest",
            {"--mqtt-url": args.mqtt_url, "--database-url": args.database_url, "--amqp-url": args.amqp_url},
        )
    bootstrap.start_process(settings)
    if args.source == "amqp":
        return _run_amqp(args, settings)
    mqtt_url = args.mqtt_url or settings.mqtt_url
    database_url = args.database_url or settings.database_url
    if not mqtt_url or not database_url:
        print(
            "streetlight ingest: needs MQTT_URL and DATABASE_URL (or --mqtt-url/--database-url)",
            file=sys.stderr,
        )
        return 2
    if args.index is not None:
        return _run_worker(
            args, settings, mqtt_url, database_url, args.index, shared=args.subscription != "plain"
        )
    if not args.no_migrate:
        from store import migrate

        migrate(database_url)
    from broker import MqttUrlError

    workers = args.workers or settings.ingest_workers
    try:
        params = bootstrap.ingest_params(settings, mqtt_url, 0, workers, args.mqtt_password_file)
        shared = _decide_shared(args, params)
    except SharedSubscriptionsIgnored as exc:
        log.error("ingest_refused", reason="shared_subscriptions_ignored", detail=str(exc))
        print(f"streetlight ingest: {exc}", file=sys.stderr)
        return 2
    except (MqttUrlError, OSError) as exc:
        print(f"streetlight ingest: {exc}", file=sys.stderr)
        return 2
    if not shared and workers > 1:
        log.warning("shared_subscription_unavailable", workers_asked=workers, workers=1)
        workers = 1
    if workers == 1:
        return _run_worker(args, settings, mqtt_url, database_url, 0, shared=shared)
    return _supervise(args, workers)


def _amqp_source(args: argparse.Namespace, settings: Settings) -> AmqpSource:
    """The quorum queue to consume; AmqpUrlError (a ValueError) when the addresses or numbers are wrong."""
    from broker import AMQP_PREFETCH, INGEST_QUEUE, AmqpSource, AmqpUrlError, parse_amqp_urls

    spec = args.amqp_url or settings.amqp_url
    if not spec:
        raise AmqpUrlError("", "--source amqp needs AMQP_URL or --amqp-url")
    return AmqpSource(
        parse_amqp_urls(spec),
        queue=args.queue or INGEST_QUEUE,
        prefetch=args.prefetch if args.prefetch is not None else AMQP_PREFETCH,
    )


def _run_amqp(args: argparse.Namespace, settings: Settings) -> int:
    """Consumers of the cluster's quorum queue: no subscription mode to decide, no lease."""
    database_url = args.database_url or settings.database_url
    if not database_url:
        print("streetlight ingest: needs DATABASE_URL (or --database-url)", file=sys.stderr)
        return 2
    if args.group:
        print(
            "streetlight ingest: --group is for a plain MQTT subscription, not --source amqp", file=sys.stderr
        )
        return 2
    try:
        source = _amqp_source(args, settings)
    except ValueError as exc:
        print(f"streetlight ingest: {exc}", file=sys.stderr)
        return 2
    if args.index is not None:
        return _run_worker(args, settings, "", database_url, args.index, shared=False, amqp=source)
    if not args.no_migrate:
        from store import migrate

        migrate(database_url)
    workers = args.workers or settings.ingest_workers
    if workers == 1:
        return _run_worker(args, settings, "", database_url, 0, shared=False, amqp=source)
    return _supervise(args, workers)


def _options(
    args: argparse.Namespace, index: int, *, shared: bool, amqp: AmqpSource | None = None
) -> bootstrap.IngestOptions:
    return bootstrap.IngestOptions(
        index=index,
        shared=shared,
        client_id_prefix=args.client_id,
        group=args.group,
        lease_ttl_s=args.lease_ttl_s,
        qos=args.qos,
        max_rows=args.max_rows,
        max_delay_s=args.max_delay_ms / 1000,
        spool_max_bytes=int(args.spool_max_mb * 1024 * 1024),
        device_rate_per_s=args.device_rate,
        device_burst=args.device_burst,
        registry_file=args.registry,
        registry_check=args.registry_check,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        jobs=not args.no_jobs,
        amqp=amqp,
    )


def _run_worker(
    args: argparse.Namespace,
    settings: Settings,
    mqtt_url: str,
    database_url: str,
    index: int,
    *,
    shared: bool,
    amqp: AmqpSource | None = None,
) -> int:
    from broker import MqttUrlError
    from store.errors import DatabaseError, StoreError

    bind_context(worker=index)  # every line of this worker process
    # A child of the supervisor (--index) is one of several workers, each with its own account.
    workers = args.workers if args.index is not None and args.workers else 1
    options = _options(args, index, shared=shared, amqp=amqp)
    try:
        params = (
            None
            if amqp is not None
            else bootstrap.ingest_params(settings, mqtt_url, index, workers, args.mqtt_password_file)
        )
        config = bootstrap.ingest_worker_config(settings, params, database_url, options)
        check = bootstrap.ingest_sender_check(database_url, options)
    except (MqttUrlError, OSError) as exc:
        print(f"streetlight ingest: {exc}", file=sys.stderr)
        return 2
    except (DatabaseError, StoreError) as exc:
        print(f"streetlight ingest: cannot read the database: {exc}", file=sys.stderr)
        return 1
    try:
        bootstrap.run_ingest_worker(settings, config, options, check)
    except bootstrap.IngestRefused as exc:
        log.error("ingest_refused", reason=exc.reason, detail=str(exc))
        print(f"streetlight ingest: {exc}", file=sys.stderr)
        return 2
    return 0


def _supervise(args: argparse.Namespace, workers: int) -> int:
    """Run ``workers`` child processes on the shared subscription; restart one that dies, except
    one that exits 2 (refused: its spool is another's, or the broker ignores its shared
    subscription; a restart would refuse again): then every worker stops and this returns 2."""
    argv_tail = _child_args(args)
    children: dict[int, subprocess.Popen[bytes]] = {}

    def start(i: int) -> None:
        children[i] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streetlight.cli.ingest",
                "--index",
                str(i),
                "--subscription",
                "plain" if args.source == "amqp" else "shared",
                "--workers",
                str(workers),
                *argv_tail,
            ]
        )
        log.info("ingest_worker_started", worker=i, pid=children[i].pid)

    stopping = False
    refused = False

    def _on_signal(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    for i in range(workers):
        start(i)
    while not stopping:
        time.sleep(0.5)
        for i, proc in list(children.items()):
            if proc.poll() is not None and not stopping:
                if proc.returncode == 2:
                    log.error("ingest_worker_exited", worker=i, status=2, restarting=False, stopping_all=True)
                    stopping = refused = True
                    break
                log.warning("ingest_worker_exited", worker=i, status=proc.returncode, restarting=True)
                time.sleep(1.0)
                start(i)
    for proc in children.values():
        proc.send_signal(signal.SIGTERM)
    for proc in children.values():
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    return 2 if refused else 0


def _child_args(args: argparse.Namespace) -> list[str]:
    out = [
        "--qos",
        str(args.qos),
        "--client-id",
        args.client_id,
        "--max-rows",
        str(args.max_rows),
        "--max-delay-ms",
        str(args.max_delay_ms),
        "--spool-max-mb",
        str(args.spool_max_mb),
        "--metrics-host",
        args.metrics_host,
        "--metrics-port",
        str(args.metrics_port),
    ]
    out += ["--registry-check", args.registry_check, "--source", args.source]
    if args.amqp_url:
        out += ["--amqp-url", args.amqp_url]
    if args.prefetch is not None:
        out += ["--prefetch", str(args.prefetch)]
    if args.queue:
        out += ["--queue", args.queue]
    if args.mqtt_url:
        out += ["--mqtt-url", args.mqtt_url]
    if args.mqtt_password_file:
        out += ["--mqtt-password-file", str(args.mqtt_password_file)]
    if args.database_url:
        out += ["--database-url", args.database_url]
    if args.registry:
        out += ["--registry", str(args.registry)]
    if args.group:
        out += ["--group", args.group, "--lease-ttl-s", str(args.lease_ttl_s)]
    if args.no_jobs:
        out.append("--no-jobs")
    if args.device_rate is not None:
        out += ["--device-rate", str(args.device_rate)]
    if args.device_burst is not None:
        out += ["--device-burst", str(args.device_burst)]
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m streetlight.cli.ingest``: the same command without the whole CLI."""
    parser = argparse.ArgumentParser(prog="streetlight ingest", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
