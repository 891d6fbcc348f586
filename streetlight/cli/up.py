"""``streetlight up``: the whole system in one command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import threading
import time
from typing import TYPE_CHECKING, NamedTuple

from broker.local import MqttService, provide_mqtt
from runtime.logs import get_logger
from runtime.procs import free_port, reserve_port
from store.embedded import PgService, configured_pg, start_embedded_pg
from streetlight import bootstrap
from streetlight.cli import COMMANDS, load_command
from streetlight.settings import Settings
from streetlight.supervisor import Supervisor, child_env

if TYPE_CHECKING:
    from broker.rabbitmq import RabbitCluster
    from streetlight.story import Story

log = get_logger(__name__)

HELP = "Run the whole system: broker and database (embedded when not configured), services, simulator."

# The services `up` supervises, in start order, with the arguments each gets. Migrations run
# once before they start, so the services skip theirs (it is safe either way).
SERVICES: list[tuple[str, list[str]]] = [
    ("ingest", ["ingest", "--no-migrate"]),
    ("controller", ["controller", "--districts", "all"]),
    ("api", ["api"]),
    ("sim", ["sim"]),  # its arguments are set in run()
]
DEMO_LOGIN = ("jung-gu", "city")  # shown at start (api.accounts.ensure_demo_operators makes them)
DEMO_PASSWORD = "streetlight"  # the same as api.accounts.DEMO_PASSWORD; demo only


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight up``."""
    parser.add_argument("--no-sim", action="store_true", help="do not start the simulator")
    parser.add_argument("--lamps", type=int, help="simulated lamps (default: the 3,500 of the 2022 zones)")
    parser.add_argument("--story", action="store_true", help="play the scripted evening (see README)")
    parser.add_argument(
        "--you-operate",
        action="store_true",
        help="with --story: wait for you to acknowledge, dispatch and resolve the SOS in the console",
    )
    parser.add_argument(
        "--exit-after-story",
        action="store_true",
        help="with --story: stop everything when the story ends (for tests); exit status 1 if it failed",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="a three-node RabbitMQ cluster on loopback instead of one broker: the clients get the "
        "three nodes' addresses, ingest consumes the cluster's quorum queue over AMQP with two "
        "workers (needs rabbitmq-server)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="start the broker and database, say what would run, then stop (for a quick look)",
    )


def _provide(settings: Settings) -> tuple[MqttService, PgService]:
    from broker import MqttUrlError

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        mqtt = provide_mqtt(settings.mqtt_url, settings.data_dir, local_kind=settings.local_broker)
    except MqttUrlError as exc:
        raise SystemExit(f"streetlight up: MQTT_URL {exc}") from None
    try:
        pg = _provide_database(settings)
    except BaseException:
        mqtt.stop()  # never leave a broker behind when the database does not come up
        raise
    return mqtt, pg


def _provide_database(settings: Settings) -> PgService:
    if settings.database_url:
        pg = configured_pg(settings.database_url)
        if pg is None:
            raise SystemExit(f"streetlight up: DATABASE_URL {settings.database_url} is not reachable")
        return pg
    # The embedded server keeps its data in the data folder, so a second `up` resumes.
    return start_embedded_pg(settings.data_dir / "pgdata")


def _wait_ready(url: str, *, timeout_s: float) -> bool:
    """Poll a readiness URL until it answers 200; False (and a warning) on timeout."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2.0) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    log.warning("not_ready_going_on", url=url, timeout_s=timeout_s)
    return False


def _prepare_database(database_url: str, *, with_operators: bool) -> None:
    """Apply migrations once and create the demo operators (only those missing)."""
    from store.connections import connect
    from store.schema import migrate

    migrate(database_url)
    if with_operators:
        from api.accounts import ensure_demo_operators

        with connect(database_url) as conn:
            ensure_demo_operators(conn)


def run(args: argparse.Namespace) -> int:
    """Start the broker, the database and every service that exists; supervise until Ctrl-C."""
    settings = Settings.from_env()
    bootstrap.start_process(settings)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every pg_ctl call at INFO
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the story's requests, one line each
    reserve_port(settings.api_port)  # the API binds it later: no other service may get it
    if args.cluster:
        return _run_cluster(args, settings)
    mqtt, pg = _provide(settings)
    try:
        return _run_with(args, settings, Brokers(f"{mqtt.kind} at {mqtt.host}:{mqtt.port}", mqtt.url), pg)
    finally:
        mqtt.stop()
        pg.stop()


class Brokers(NamedTuple):
    """What the services are told about the broker(s) ``up`` provides."""

    described: str  # for the start-up lines
    mqtt_url: str  # MQTT_URL: one broker, or a cluster's nodes separated by commas
    amqp_url: str | None = None  # a cluster's nodes for ingest's quorum queue (AMQP_URL)


def _run_cluster(args: argparse.Namespace, settings: Settings) -> int:
    """``--cluster``: three RabbitMQ nodes on loopback (rabbitmq-server must be installed)."""
    from broker.rabbitmq import RABBITMQ_SERVER, rabbitmq_installed, start_rabbitmq_cluster

    if not rabbitmq_installed():
        print(
            f"streetlight up --cluster: rabbitmq-server is not installed ({RABBITMQ_SERVER} not found); "
            "install it (apt install rabbitmq-server) or run streetlight up without --cluster",
            file=sys.stderr,
        )
        return 2
    if settings.mqtt_url:
        print("streetlight up --cluster: starts its own broker nodes; unset MQTT_URL", file=sys.stderr)
        return 2
    workdir = settings.data_dir / "rabbitmq-cluster"
    shutil.rmtree(workdir, ignore_errors=True)  # node names are per run: a fresh cluster each time
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print("starting a three-node RabbitMQ cluster (about 20 s) ...", flush=True)
    cluster: RabbitCluster = start_rabbitmq_cluster(workdir)
    try:
        pg = _provide_database(settings)
    except BaseException:
        cluster.stop()
        raise
    ports = ", ".join(f"{n.mqtt_port}/{n.amqp_port}" for n in cluster.nodes)
    brokers = Brokers(
        f"rabbitmq cluster of {len(cluster.nodes)} nodes at 127.0.0.1 (MQTT/AMQP ports {ports})",
        ",".join(cluster.mqtt_urls),
        ",".join(cluster.amqp_urls),
    )
    try:
        return _run_with(args, settings, brokers, pg)
    finally:
        cluster.stop()
        pg.stop()


def _run_with(args: argparse.Namespace, settings: Settings, brokers: Brokers, pg: PgService) -> int:
    """Everything after the broker and database are up (the caller stops those)."""
    print(f"broker:   {brokers.described}")
    print(f"database: {pg.kind} ({pg.url.split('@')[-1]})")
    print(f"data:     {settings.data_dir}")
    missing = [name for name, _ in SERVICES if load_command(COMMANDS[name]) is None]
    wanted = [(n, a) for n, a in SERVICES if n not in missing and not (args.no_sim and n == "sim")]
    if args.story:
        # The story runs its own simulator in this process, so it can make things happen.
        wanted = [(n, a) for n, a in wanted if n != "sim"]
    _prepare_database(pg.url, with_operators=any(n == "api" for n, _ in wanted))
    api_url = f"http://{settings.api_host}:{settings.api_port}"
    extra = {"AMQP_URL": brokers.amqp_url} if brokers.amqp_url else None
    sup = Supervisor(child_env(brokers.mqtt_url, pg.url, extra))
    ingest_port = free_port()
    for name, argv in wanted:
        if name == "sim":
            continue  # added once ingest listens, so no device's birth goes unheard
        if name == "ingest":
            argv = [*argv, "--metrics-port", str(ingest_port)]
            if brokers.amqp_url:  # competing consumers on the cluster's quorum queue
                argv = [*argv, "--source", "amqp", "--workers", "2"]
        sup.add(name, argv)
    print("running:  " + (", ".join(n for n, _ in wanted) or "broker and database only"))
    if missing:
        print("not built yet in this version: " + ", ".join(missing), file=sys.stderr)
    if any(n == "api" for n, _ in wanted):
        print(f"console:  {api_url}/")
        who = f"{DEMO_LOGIN[0]} (Jung-gu operator) or {DEMO_LOGIN[1]} (all districts)"
        print(f"login:    {who}, password: {DEMO_PASSWORD}")
    if args.check:
        return 0
    print("Ctrl-C stops everything.")
    sup.start_all()
    try:
        story = _start_services_then_story(args, sup, wanted, api_url, brokers.mqtt_url, ingest_port)
        sup.run_until_signal(done=(lambda: story.finished) if story and args.exit_after_story else None)
    finally:
        sup.stop_all()  # also when starting failed half-way; stopping twice is harmless
    if story is not None and story.error:
        print(f"the story stopped: {story.error}", file=sys.stderr)
        return 1
    return 0


def _start_services_then_story(
    args: argparse.Namespace,
    sup: Supervisor,
    wanted: list[tuple[str, list[str]]],
    api_url: str,
    mqtt_url: str,
    ingest_port: int,
) -> _StoryThread | None:
    """Start the simulator (or the story) once ingest listens, so no device's birth goes unheard."""
    if any(n == "sim" for n, _ in wanted):
        if any(n == "ingest" for n, _ in wanted):
            _wait_ready(f"http://127.0.0.1:{ingest_port}/ready", timeout_s=60.0)
        sim_argv = ["sim", "--night", "--walkers", "3", "--api-url", api_url]
        sup.add("sim", [*sim_argv, *(["--lamps", str(args.lamps)] if args.lamps else [])])
        sup.start_all()
    if not args.story:
        return None
    if any(n == "ingest" for n, _ in wanted):
        _wait_ready(f"http://127.0.0.1:{ingest_port}/ready", timeout_s=60.0)
    return _start_story(args, api_url, mqtt_url)


class _StoryThread(threading.Thread):
    """The story in its own thread and event loop, beside the supervisor's watch."""

    def __init__(self, story: Story) -> None:
        super().__init__(name="story", daemon=True)
        self.story = story
        self.finished = False
        self.error: str | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.story.play())
        except Exception as exc:  # reported, and `up` keeps running for the user to look
            self.error = f"{type(exc).__name__}: {exc}"
            self.story.say(f"stopped: {self.error}")
        finally:
            self.finished = True


def _start_story(args: argparse.Namespace, api_url: str, mqtt_url: str) -> _StoryThread:
    from streetlight.story import Story, StoryTiming  # the simulator is only needed here

    timing = StoryTiming(scripted_operator=not args.you_operate)
    thread = _StoryThread(Story(api_url=api_url, mqtt_url=mqtt_url, lamps=args.lamps, timing=timing))
    thread.start()
    return thread
