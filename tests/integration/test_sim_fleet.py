"""Simulated lamps against a real broker: birth then retained online, seq, commands, wills, reconnect."""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import Iterator

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devkit.localservices import MqttService
from firmware_sim.fleet import Endpoint, Fleet
from firmware_sim.placement import place_lamps

pytestmark = pytest.mark.integration


class Watcher:
    """A paho subscriber queueing (topic, payload, retained) for the test's own devices."""

    def __init__(self, svc: MqttService, topics: list[str]) -> None:
        self.q: queue.Queue[tuple[str, dict[str, object], bool]] = queue.Queue()
        ready = queue.Queue[bool]()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"watch-{time.monotonic_ns()}")
        if svc.username:
            self.client.username_pw_set(svc.username, svc.password)
        self.client.on_connect = lambda c, *_a: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_a: ready.put(True)
        self.client.on_message = lambda _c, _u, m: self.q.put((m.topic, orjson.loads(m.payload), m.retain))
        self.client.connect(svc.host, svc.port)
        self.client.loop_start()
        ready.get(timeout=10)

    def collect(self, until: float, stop: object = None) -> list[tuple[str, dict[str, object], bool]]:
        out = []
        deadline = time.monotonic() + until
        while time.monotonic() < deadline:
            try:
                item = self.q.get(timeout=0.1)
            except queue.Empty:
                continue
            out.append(item)
            if callable(stop) and stop(out):
                break
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def watcher_factory(mqtt_service: MqttService) -> Iterator[object]:
    made: list[Watcher] = []

    def make(topics: list[str]) -> Watcher:
        w = Watcher(mqtt_service, topics)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def _fleet(svc: MqttService, prefix: str, lamps: int, interval_s: float) -> Fleet:
    fleet = Fleet([Endpoint(svc.host, svc.port)], interval_s=interval_s)
    fleet.add_placement(place_lamps(lamps, zones=["1"], id_prefix=prefix), with_blinkers=False)
    return fleet


async def test_fifty_lamps_send_birth_then_retained_online_then_telemetry_with_rising_seq(
    mqtt_service: MqttService, unique_id: str, watcher_factory: object
) -> None:
    prefix = f"t{unique_id}-"
    fleet = _fleet(mqtt_service, prefix, 50, interval_s=1.0)
    watch = watcher_factory(["sl/v1/+/+/birth", "sl/v1/+/+/state", "sl/v1/+/+/telemetry"])  # type: ignore[operator]
    async with fleet:
        assert await fleet.wait_connected(timeout_s=30)
        got = await asyncio.to_thread(watch.collect, 6.0)
    mine = [(t, p, r) for t, p, r in got if t.split("/")[3].startswith(prefix)]
    by_device: dict[str, list[tuple[str, dict[str, object], bool]]] = {}
    for item in mine:
        by_device.setdefault(item[0].split("/")[3], []).append(item)
    assert len(by_device) == 50
    for device_id, items in by_device.items():
        channels = [t.rsplit("/", 1)[1] for t, _, _ in items]
        assert channels[:2] == ["birth", "state"], device_id
        birth, online = items[0][1], items[1][1]
        assert birth["kind"] == "lamp" and birth["bdseq"] == 1
        assert online == {"state": "online", "bdseq": 1}
        seqs = [int(str(p["seq"])) for t, p, _ in items if "seq" in p]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) and len(seqs) >= 3


async def test_a_command_is_acked_and_changes_the_reported_level(
    mqtt_service: MqttService, unique_id: str, watcher_factory: object
) -> None:
    prefix = f"c{unique_id}-"
    fleet = _fleet(mqtt_service, prefix, 3, interval_s=0.5)
    async with fleet:
        assert await fleet.wait_connected(timeout_s=30)
        link = fleet.links[0]
        topic_prefix = link.firmware.identity.topic_prefix
        watch = watcher_factory([f"{topic_prefix}/ack", f"{topic_prefix}/telemetry"])  # type: ignore[operator]
        await asyncio.sleep(0.3)  # our subscription to the cmd topic is in place by now
        cmd = {
            "cmd_id": f"cmd-{unique_id}",
            "ts": fleet.clock.now_ms(),
            "action": "set_level",
            "level": 37,
            "ttl_s": 60,
            "priority": "manual",
            "source": "operator-test",
        }
        watch.client.publish(f"{topic_prefix}/cmd", orjson.dumps(cmd), qos=1)
        got = await asyncio.to_thread(
            watch.collect,
            10.0,
            lambda out: any(t.endswith("telemetry") and p.get("level") == 37 for t, p, _ in out),
        )
    acks = [p for t, p, _ in got if t.endswith("/ack")]
    assert acks and acks[0]["cmd_id"] == cmd["cmd_id"] and acks[0]["status"] == "applied"
    assert acks[0]["effective_level"] == 37
    assert any(t.endswith("telemetry") and p["level"] == 37 for t, p, _ in got)
    assert fleet.stats.applied == 1


async def test_a_dropped_socket_fires_the_retained_offline_will_and_reconnect_increments_bdseq(
    mqtt_service: MqttService, unique_id: str, watcher_factory: object
) -> None:
    prefix = f"k{unique_id}-"
    fleet = _fleet(mqtt_service, prefix, 2, interval_s=60.0)
    async with fleet:
        assert await fleet.wait_connected(timeout_s=30)
        link = fleet.links[0]
        p = link.firmware.identity.topic_prefix
        watch = watcher_factory([f"{p}/state", f"{p}/birth"])  # type: ignore[operator]
        first = await asyncio.to_thread(watch.collect, 3.0, lambda out: len(out) >= 1)
        assert first[0][1] == {"state": "online", "bdseq": 1} and first[0][2]  # retained
        link.kill(0.5)  # silent death: no DISCONNECT
        got = await asyncio.to_thread(
            watch.collect, 15.0, lambda out: any(pl == {"state": "online", "bdseq": 2} for _, pl, _ in out)
        )
    states = [pl for t, pl, _ in got if t.endswith("/state")]
    births = [pl for t, pl, _ in got if t.endswith("/birth")]
    assert states[0] == {"state": "offline", "bdseq": 1}
    assert {"state": "online", "bdseq": 2} in states
    assert births and births[0]["bdseq"] == 2
    assert link.firmware.seq >= 2  # seq runs on across the reconnect (birth 1, birth 2)


async def test_a_clean_stop_leaves_every_device_retained_offline_with_its_bdseq(
    mqtt_service: MqttService, unique_id: str, watcher_factory: object
) -> None:
    prefix = f"s{unique_id}-"
    fleet = _fleet(mqtt_service, prefix, 5, interval_s=60.0)
    topics = [f"{link.firmware.identity.topic_prefix}/state" for link in fleet.links]
    async with fleet:
        assert await fleet.wait_connected(timeout_s=30)
        live = watcher_factory(topics)  # type: ignore[operator]
        online = await asyncio.to_thread(live.collect, 5.0, lambda out: len(out) >= len(topics))
        assert {tuple(sorted(p.items())) for _, p, _ in online} == {(("bdseq", 1), ("state", "online"))}
    # A subscriber that arrives after the clean stop sees what the backend would: every device's
    # retained state, which the devices themselves set to offline before their DISCONNECT.
    after = watcher_factory(topics)  # type: ignore[operator]
    got = await asyncio.to_thread(after.collect, 5.0, lambda out: len(out) >= len(topics))
    assert sorted(t for t, _, _ in got) == sorted(topics)
    assert all(p == {"state": "offline", "bdseq": 1} and retained for _, p, retained in got), got
