"""Issue 23 item 2: a node of a three-node RabbitMQ cluster SIGKILLed under the simulator's QoS 1
stream and under an SOS burst, then started again.

One cluster serves the module (``start_rabbitmq_cluster``: three nodes on loopback, ~20 s to boot
and join). Simulated lamps (``firmware_sim.Fleet``) are spread over the three nodes by district,
each with the other two as fallbacks; the real controller starts on the node that is killed and
has the others after it; ingest is two AMQP workers on the cluster's quorum queue, one of them on
the node that is killed. The lamps' telemetry is QoS 1 and every PUBACK is recorded, so the test
knows what the broker told a lamp it has, and compares that with the telemetry rows.

The figures printed (recovery times and the accounting) are the ones docs/reliability.md quotes
("A broker node lost", the RabbitMQ cluster): ``CI=true .venv/bin/pytest -s
tests/faults/test_cluster_kill.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import psycopg
import pytest

from broker import AmqpSource, parse_mqtt_url
from controller import ControllerConfig
from devkit.apiclient import fast_config, seed, serve
from devkit.localservices import RabbitCluster, rabbitmq_installed, start_rabbitmq_cluster
from firmware_sim.firmware import LampFirmware, Message
from firmware_sim.fleet import Endpoint, Fleet
from firmware_sim.placement import Placement, place_lamps
from ingest import AmqpIngestWorker, WorkerConfig
from tests.conftest import skip_unless
from tests.helpers import controller_running, count, online_states, running
from tests.integration.test_broker_failover import (
    _until,
    failover_controller,
    showing_again,
    walk_and_sos_applied,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    """Three RabbitMQ nodes joined in one cluster, for the whole module."""
    skip_unless(rabbitmq_installed(), "rabbitmq-server is not installed (/usr/lib/rabbitmq/bin)")
    workdir = Path(tempfile.mkdtemp(prefix="sl-test-cluster-kill-"))
    try:
        rabbit = start_rabbitmq_cluster(workdir)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    yield rabbit
    rabbit.stop()


def _wait_running(cluster: RabbitCluster, via: int, want: int, timeout_s: float = 60.0) -> float:
    """Wait until node ``via`` reports ``want`` running members; the seconds it took."""
    t0 = time.monotonic()
    while True:
        with contextlib.suppress(RuntimeError):
            if len(cluster.running_nodes(via)) == want:
                return time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"node {via} does not see {want} running nodes within {timeout_s} s")
        time.sleep(0.5)


@pytest.fixture
def whole(cluster: RabbitCluster) -> RabbitCluster:
    """The cluster with all its nodes running (a test before may have left one killed)."""
    for i, node in enumerate(cluster.nodes):
        if not node.alive:
            cluster.start_again(i)
    _wait_running(cluster, 0, len(cluster.nodes))
    return cluster


def _worker(
    cluster: RabbitCluster, db_url: str, tmp_path: Path, queue: str, order: list[int], index: int
) -> AmqpIngestWorker:
    """An AMQP ingest worker on ``queue``, given the nodes in ``order`` (it starts on the first)."""
    return AmqpIngestWorker(
        WorkerConfig(
            mqtt=None,
            amqp=AmqpSource(tuple(cluster.amqp_urls[i] for i in order), queue=queue, prefetch=200),
            database_url=db_url,
            spool_path=tmp_path / f"amqp-{index}.spool",
            index=index,
            shared=False,
            max_delay_s=0.05,
            state_resync=False,
            device_rate_per_s=0,
        )
    )


def _controller(cluster: RabbitCluster, db_url: str, placement: Placement, first: int) -> ControllerConfig:
    """The controller's configuration: the cluster's nodes, node ``first`` first."""
    n = len(cluster.nodes)
    urls = [cluster.mqtt_urls[(first + i) % n] for i in range(n)]
    return failover_controller(parse_mqtt_url(",".join(urls)), db_url, placement)


def _fleet(cluster: RabbitCluster, placement: Placement, **kw: object) -> Fleet:
    fleet = Fleet([Endpoint("127.0.0.1", n.mqtt_port) for n in cluster.nodes], **kw)  # type: ignore[arg-type]
    fleet.add_placement(placement, with_blinkers=False)
    return fleet


def _node_of(cluster: RabbitCluster, port: int) -> int:
    return next(i for i, n in enumerate(cluster.nodes) if n.mqtt_port == port)


def _sessions_stored(db_url: str, fleet: Fleet, ids: list[str]) -> bool:
    """Every lamp in ``ids`` online in the database with the bdseq of its current connection."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, online, bdseq FROM device_state WHERE device_id = ANY(%s)", (ids,)
        ).fetchall()
    got = {str(d): (bool(o), b) for d, o, b in rows}
    return all(got.get(i) == (True, fleet.firmware(i).bdseq) for i in ids)


def _stored_telemetry(db_url: str, ids: list[str]) -> tuple[int, set[tuple[str, int]]]:
    """(rows, distinct (device, seq)) of these lamps' telemetry."""
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT device_id, seq FROM telemetry WHERE device_id = ANY(%s)", (ids,)
        ).fetchall()
    return len(rows), {(str(d), int(s)) for d, s in rows}


def _report(name: str, figures: Mapping[str, object], figures_dir: Path) -> None:
    print(f"{name}:", json.dumps(figures))
    (figures_dir / f"{name}.json").write_text(json.dumps(figures, indent=2) + "\n")


async def test_amqp_workers_acknowledge_their_batches_without_asking_for_them_again(
    whole: RabbitCluster, db_url: str, unique_id: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A batch written is acknowledged and done: no failed batch (a failure after the
    acknowledgement asks for a redelivery, so the worker reconnects and stores its unacknowledged
    messages a second time, refused by the dedup key) and no redelivery."""
    seed(db_url)
    placement = place_lamps(6, zones=["1"], id_prefix=f"a{unique_id}-")
    ids = [lamp.lamp_id for lamp in placement.lamps]
    acked: set[tuple[str, int]] = set()
    fleet = _fleet(
        whole,
        placement,
        interval_s=0.1,
        telemetry_qos=1,
        on_acked=lambda d, m: (
            acked.add((d, int(str(m.payload["seq"])))) if m.channel == "telemetry" else None
        ),
    )
    worker = _worker(whole, db_url, tmp_path, f"ingest-ack-{unique_id}", [0, 1, 2], 0)
    with caplog.at_level(logging.ERROR), running(worker):
        async with fleet:
            assert await fleet.wait_connected(timeout_s=30)
            await asyncio.sleep(3.0)
            fleet.interval_s = 0
            await asyncio.sleep(1.0)
        await _until("stored", lambda: acked <= _stored_telemetry(db_url, ids)[1], 20, t0=time.monotonic())
    assert len(acked) > 100
    assert not [r for r in caplog.records if "batch_failed" in r.getMessage()]
    assert worker.metrics.redelivered == 0
    assert _stored_telemetry(db_url, ids)[0] == len(_stored_telemetry(db_url, ids)[1])


async def test_a_node_killed_under_a_qos1_stream_loses_nothing_acked_and_its_lamps_move_with_their_states(
    whole: RabbitCluster, db_url: str, unique_id: str, tmp_path: Path, figures_dir: Path
) -> None:
    cluster = whole
    seed(db_url)  # the schema and the operators; the lamps register by their births
    placement = place_lamps(30, zones=["1", "batch1"], id_prefix=f"k{unique_id}-")
    ids = [lamp.lamp_id for lamp in placement.lamps]
    acked: set[tuple[str, int]] = set()

    def on_acked(device_id: str, message: Message) -> None:
        if message.channel == "telemetry":
            acked.add((device_id, int(str(message.payload["seq"]))))

    fleet = _fleet(cluster, placement, interval_s=0.25, telemetry_qos=1, on_acked=on_acked)
    homes = {_node_of(cluster, link.endpoint.port) for link in fleet.links}
    assert homes == {0, 1, 2}, "the lamps are spread over the three nodes"
    lamp0 = placement.lamps[0]
    victim = _node_of(cluster, fleet.by_id[lamp0.lamp_id].endpoint.port)
    survivors = [i for i in range(3) if i != victim]
    on_victim = [
        link.device_id for link in fleet.links if link.endpoint.port == cluster.nodes[victim].mqtt_port
    ]
    queue = f"ingest-kill-{unique_id}"
    # One worker consumes from the node to be killed, the other from a survivor.
    worker_a = _worker(cluster, db_url, tmp_path, queue, [victim, *survivors], 0)
    worker_b = _worker(cluster, db_url, tmp_path, queue, [*survivors, victim], 1)
    sent_at_kill = acked_at_kill = 0
    with running(worker_a), running(worker_b):
        assert worker_a.node == 0 and worker_b.node in (0, 1)  # the index in each one's own list
        async with controller_running(_controller(cluster, db_url, placement, victim)) as controller, fleet:
            t_start = time.monotonic()
            walk_id, alert_id = await walk_and_sos_applied(fleet, db_url, ids, lamp0, t0=t_start)
            await asyncio.sleep(2.0)  # the stream runs on every node
            now = fleet.clock.now_ms()
            lamps = {i: fleet.firmware(i) for i in ids}
            held = {i: set(fw.overrides) for i, fw in lamps.items() if fw.overrides and i in on_victim}
            assert any(walk_id in s for s in held.values()) and any(alert_id[:64] in s for s in held.values())
            shown = {i: lamps[i].output(now) for i in held}
            assert (
                controller.mqtt is not None
                and controller.mqtt.address.port == cluster.nodes[victim].mqtt_port
            )

            sent_at_kill, acked_at_kill = fleet.stats.telemetry, len(acked)
            connects_at_kill, failures_at_kill = fleet.stats.connects, fleet.stats.connect_failures
            cluster.kill(victim)  # SIGKILL: its connections, queues' replicas and retained states go
            t0 = time.monotonic()
            # Treat what these lamps got through the dead node as lost (a lamp rebooted while away):
            # only the controller's answer to their births on the new node brings it back.
            for i in held:
                assert isinstance(lamps[i], LampFirmware)
                lamps[i].overrides.clear()
            dead_port = cluster.nodes[victim].mqtt_port

            def all_moved() -> bool:
                return fleet.stats.connected == len(ids) and all(
                    link.online and link.endpoint.port != dead_port for link in fleet.links
                )

            t_devices = await _until("every lamp connected to a live node", all_moved, 15, t0=t0)
            connects = fleet.stats.connects - connects_at_kill
            failures = fleet.stats.connect_failures - failures_at_kill

            # 30 s: well inside the walk's hold; the figures (docs/reliability.md) are 0.9-2.6 s.
            t_states = await _until(
                "walk and SOS shown again", showing_again(fleet, lamps, held, shown), 30, t0=t0
            )
            t_sessions = await _until(
                "every moved lamp's new session online in the database",
                lambda: _sessions_stored(db_url, fleet, on_victim),
                20,
                t0=t0,
            )
            assert controller.mqtt is not None and controller.mqtt.connected
            assert controller.mqtt.address.port != dead_port
            assert controller.stats["lamp_back_resent"] >= len(held)
            await _until(
                "both ingest workers consuming again",
                lambda: worker_a.node >= 0 and worker_b.node >= 0,
                15,
                t0=t0,
            )
            assert worker_a.node != 0, "the worker of the dead node moved to a live one"

            await asyncio.sleep(2.0)  # the stream goes on through the survivors
            fleet.interval_s = 0  # stop the stream; let the last PUBACKs arrive
            await asyncio.sleep(1.5)
            sent = fleet.stats.telemetry

            def all_acked_stored() -> bool:
                return acked <= _stored_telemetry(db_url, ids)[1]

            with contextlib.suppress(AssertionError):
                await _until("every acknowledged message stored", all_acked_stored, 30, t0=t0)
    rows, distinct = _stored_telemetry(db_url, ids)
    lost_acked = acked - distinct
    figures = {
        "lamps": len(ids),
        "lamps_on_killed_node": len(on_victim),
        "lamps_with_overrides_on_killed_node": len(held),
        "kill_to_every_lamp_connected_to_a_live_node_s": round(t_devices, 2),
        "lamp_connections_until_then": connects,  # one per lamp of the killed node; more: dropped again
        "lamp_failed_connection_attempts_until_then": failures,
        "kill_to_walk_and_sos_shown_again_s": round(t_states, 2),
        "kill_to_every_new_session_online_in_the_database_s": round(t_sessions, 2),
        "telemetry_sent": sent,
        "telemetry_sent_before_kill": sent_at_kill,
        "telemetry_acked": len(acked),
        "telemetry_acked_before_kill": acked_at_kill,
        "stored_rows": rows,
        "stored_distinct": len(distinct),
        "duplicates": rows - len(distinct),
        "acked_not_stored": len(lost_acked),
        "stored_not_acked": len(distinct - acked),
        "sent_neither_acked_nor_stored": sent - len(acked | distinct),
        "ingest_redelivered": worker_a.metrics.redelivered + worker_b.metrics.redelivered,
        "ingest_duplicates_refused": worker_a.metrics.duplicates + worker_b.metrics.duplicates,
    }
    _report("cluster_kill_stream", figures, figures_dir)
    assert not lost_acked, f"{len(lost_acked)} messages the broker acknowledged were not stored"
    assert rows == len(distinct), "a message was stored twice"
    assert len(acked) > acked_at_kill, "lamps' telemetry was acknowledged after the kill"


async def test_an_sos_burst_while_a_node_is_killed_stores_every_sos_once_and_blinks_their_lamps(
    whole: RabbitCluster, db_url: str, unique_id: str, tmp_path: Path, figures_dir: Path
) -> None:
    cluster = whole
    seed(db_url)
    placement = place_lamps(30, zones=["1", "batch1"], id_prefix=f"s{unique_id}-")
    ids = [lamp.lamp_id for lamp in placement.lamps]
    fleet = _fleet(cluster, placement, interval_s=1.0)
    # Kill the node of the first SOS's lamps, where the controller starts too.
    victim = _node_of(cluster, fleet.by_id[placement.lamps[0].lamp_id].endpoint.port)
    survivors = [i for i in range(3) if i != victim]
    queue = f"ingest-sos-{unique_id}"
    worker_a = _worker(cluster, db_url, tmp_path, queue, [victim, *survivors], 0)
    worker_b = _worker(cluster, db_url, tmp_path, queue, [*survivors, victim], 1)
    sites = placement.lamps[::3]  # ten SOS, at every third lamp, over every node's districts
    with running(worker_a), running(worker_b):
        async with controller_running(_controller(cluster, db_url, placement, victim)), fleet:
            t_start = time.monotonic()
            assert await fleet.wait_connected(timeout_s=30)
            await _until(
                "online", lambda: online_states(db_url, ids) == dict.fromkeys(ids, True), 30, t0=t_start
            )
            await asyncio.sleep(1.0)  # the controller's next reload of the lamps
            with serve(fast_config(db_url)) as base:
                async with httpx.AsyncClient(base_url=base, timeout=15.0) as c:
                    tokens = [(await c.post("/v1/residents")).json()["token"] for _ in sites]

                    async def sos(i: int) -> str:
                        lamp = sites[i]
                        r = await c.post(
                            "/v1/sos",
                            json={"lat": lamp.lat_deg, "lon": lamp.lon_deg, "accuracy_m": 5.0},
                            headers={"Authorization": f"Bearer {tokens[i]}"},
                        )
                        assert r.status_code == 202, r.text
                        return str(r.json()["alert_id"])

                    half = len(sites) // 2
                    before = await asyncio.gather(*(sos(i) for i in range(half)))
                    cluster.kill(victim)
                    t0 = time.monotonic()
                    # What the lamps of the dead node showed is treated as lost (rebooted while
                    # away): only a re-send on their births brings the first SOS's blinks back.
                    for link in fleet.links:
                        if link.endpoint.port == cluster.nodes[victim].mqtt_port:
                            link.firmware.overrides.clear()
                    after = await asyncio.gather(*(sos(i) for i in range(half, len(sites))))
            alerts = [*before, *after]
            assert len(set(alerts)) == len(sites)
            stored = "SELECT count(*) FROM alerts WHERE alert_id = ANY(%s)"
            assert count(db_url, stored, alerts) == len(sites)
            assert count(db_url, "SELECT count(*) FROM alerts WHERE kind = 'sos'") == len(sites)

            def blinking() -> bool:
                """Every SOS has lamps whose blink was applied, and they show it now."""
                with psycopg.connect(db_url) as conn:
                    rows = conn.execute(
                        "SELECT source, device_id FROM commands WHERE source = ANY(%s) "
                        "AND status = 'applied'",
                        ([a[:64] for a in alerts],),
                    ).fetchall()
                lamps: dict[str, set[str]] = {}
                for source, device in rows:
                    lamps.setdefault(str(source), set()).add(str(device))
                return len(lamps) == len(alerts) and all(
                    source in fleet.firmware(d).overrides for source, ds in lamps.items() for d in ds
                )

            def applied() -> bool:
                with psycopg.connect(db_url) as conn:
                    rows = conn.execute(
                        "SELECT DISTINCT source FROM commands WHERE source = ANY(%s) AND status = 'applied'",
                        ([a[:64] for a in alerts],),
                    ).fetchall()
                return len(rows) == len(alerts)

            def shown() -> bool:
                return all(any(a[:64] in fleet.firmware(i).overrides for i in ids) for a in alerts)

            t_shown = await _until("every SOS blinking on a lamp", shown, 30, t0=t0)
            t_applied = await _until("every SOS's blink acked", applied, 30, t0=t0)
            t_blink = await _until("every SOS's lamps blinking, acked", blinking, 30, t0=t0)
            dead_port = cluster.nodes[victim].mqtt_port

            def stray() -> list[tuple[str, int, bool]]:
                return [
                    (link.device_id, link.endpoint.port, link.online)
                    for link in fleet.links
                    if not link.online or link.endpoint.port == dead_port
                ]

            with contextlib.suppress(AssertionError):
                await _until("every lamp on a live node", lambda: not stray(), 15, t0=t0)
            assert not stray(), f"lamps not connected to a live node: {stray()}; {fleet.stats.as_dict()}"
    figures = {
        "sos": len(sites),
        "sos_before_kill": len(before),
        "sos_after_kill": len(after),
        "alerts_stored": len(sites),
        "kill_to_every_sos_blinking_on_a_lamp_s": round(t_shown, 2),
        "kill_to_every_sos_blink_acked_in_the_database_s": round(t_applied, 2),
        "kill_to_every_lamp_with_an_acked_blink_showing_it_s": round(t_blink, 2),
    }
    _report("cluster_kill_sos", figures, figures_dir)


async def test_the_killed_node_restarts_rejoins_and_takes_clients_again(
    cluster: RabbitCluster, db_url: str, unique_id: str, tmp_path: Path, figures_dir: Path
) -> None:
    dead = [i for i, n in enumerate(cluster.nodes) if not n.alive]
    if not dead:  # run alone: kill one first
        cluster.kill(2)
        dead = [2]
    node = dead[0]
    t0 = time.monotonic()
    cluster.start_again(node)
    t_listening = time.monotonic() - t0
    for via in range(3):
        _wait_running(cluster, via, 3)
    t_rejoined = time.monotonic() - t0
    assert cluster.nodes[node].name in cluster.running_nodes(node)
    # Clients on that node only: lamps over MQTT, ingest over AMQP.
    seed(db_url)
    placement = place_lamps(4, zones=["1"], id_prefix=f"r{unique_id}-")
    ids = [lamp.lamp_id for lamp in placement.lamps]
    fleet = Fleet([Endpoint("127.0.0.1", cluster.nodes[node].mqtt_port)], interval_s=0.5, telemetry_qos=1)
    fleet.add_placement(placement, with_blinkers=False)
    worker = _worker(cluster, db_url, tmp_path, f"ingest-back-{unique_id}", [node], 0)
    with running(worker):
        async with fleet:
            assert await fleet.wait_connected(timeout_s=20)
            await _until("online", lambda: _sessions_stored(db_url, fleet, ids), 20, t0=time.monotonic())
            await _until(
                "telemetry through the restarted node",
                lambda: len(_stored_telemetry(db_url, ids)[1]) >= 2 * len(ids),
                20,
                t0=time.monotonic(),
            )
    assert fleet.stats.acked > 0
    _report(
        "cluster_kill_restart",
        {"start_to_listening_s": round(t_listening, 2), "start_to_three_running_s": round(t_rejoined, 2)},
        figures_dir,
    )
