"""The embedded broker (lite by default) does what the zero-install mode relies on.

Pub/sub, retained messages (kept across a restart with a data dir), wills, shared subscriptions;
amqtt stays available behind ``--impl amqtt``. The protocol details are in test_broker_lite.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from broker import ConnectionParams, MqttSession, device_topic
from broker.embedded import EmbeddedBroker, Impl
from devkit.localservices import MqttService, free_port, start_embedded_broker, tcp_reachable, terminate
from ingest import probe_shared_subscriptions
from tests.conftest import ROOT
from tests.integration.test_broker_session import assert_will_is_retained_offline_with_bdseq, params_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded_process() -> Iterator[MqttService]:
    """``python -m broker.embedded`` in a child process, as ``streetlight up`` and the fixtures start it."""
    svc = start_embedded_broker()
    yield svc
    svc.stop()
    assert svc.proc is not None
    assert svc.proc.returncode == 0, "SIGTERM should stop the embedded broker cleanly"


@pytest.mark.parametrize("impl", ["lite", "amqtt"])
async def test_the_in_process_broker_delivers_published_and_retained_messages(
    unique_id: str, impl: Impl
) -> None:
    port = free_port()
    topic = device_topic("11230", f"L-{unique_id}", "state")
    async with EmbeddedBroker("127.0.0.1", port, impl=impl):
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{unique_id}") as pub:
            await pub.publish(topic, b'{"state":"online","bdseq":1}', qos=1, retain=True)
        async with aiomqtt.Client("127.0.0.1", port, identifier=f"sub-{unique_id}") as sub:
            await sub.subscribe(topic, qos=1)
            retained = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
            assert retained.retain
            assert retained.payload == b'{"state":"online","bdseq":1}'
            async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub2-{unique_id}") as pub:
                await pub.publish(topic, b"live", qos=1)
            live = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
            assert live.payload == b"live"


async def test_a_session_round_trips_through_the_embedded_broker_process(
    embedded_process: MqttService, unique_id: str
) -> None:
    topic = device_topic("11230", f"L-{unique_id}", "telemetry")
    async with MqttSession(
        params_of(embedded_process), client_id=f"s-{unique_id}", subscriptions=[(topic, 1)]
    ) as s:
        await s.wait_connected(10)
        await s.publish(topic, b"{}", qos=1)
        msg = await asyncio.wait_for(anext(aiter(s.messages())), 10)
    assert (msg.topic, msg.payload) == (topic, b"{}")


def test_the_embedded_broker_fires_a_dead_devices_will_as_retained_offline(
    embedded_process: MqttService, unique_id: str
) -> None:
    assert_will_is_retained_offline_with_bdseq(embedded_process, unique_id)


def test_the_embedded_broker_passes_the_ingest_shared_subscription_probe(
    embedded_process: MqttService,
) -> None:
    assert embedded_process.kind == "embedded"
    ok, why = probe_shared_subscriptions(ConnectionParams(host="127.0.0.1", port=embedded_process.port))
    assert ok, why


def test_the_embedded_process_keeps_retained_messages_across_a_restart(
    tmp_path: Path, unique_id: str
) -> None:
    topic = device_topic("11230", f"L-{unique_id}", "state")
    svc = start_embedded_broker(data_dir=tmp_path)
    try:
        publish_retained = subprocess.run(
            [sys.executable, "-c", PUBLISH_RETAINED, str(svc.port), topic], cwd=ROOT, timeout=20, check=False
        )
        assert publish_retained.returncode == 0
        svc.stop()
        assert (tmp_path / "retained.bin").exists()
        svc.start_again(timeout_s=30.0)
        got = asyncio.run(_first_message(svc.port, topic))
        assert got == b'{"state":"offline","bdseq":3}'
    finally:
        svc.stop()


PUBLISH_RETAINED = """
import sys, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="retain-pub")
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
c.publish(sys.argv[2], b'{"state":"offline","bdseq":3}', qos=1, retain=True).wait_for_publish(10)
c.disconnect()
c.loop_stop()
"""


async def _first_message(port: int, topic: str) -> bytes:
    async with aiomqtt.Client("127.0.0.1", port, identifier="retain-sub") as sub:
        await sub.subscribe(topic, qos=1)
        msg = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
        assert msg.retain
        assert isinstance(msg.payload, bytes)
        return msg.payload


@pytest.mark.parametrize("impl", ["lite", "amqtt"])
async def test_starting_on_a_port_in_use_is_a_broker_error(unique_id: str, impl: Impl) -> None:
    from broker import BrokerError

    port = free_port()
    async with EmbeddedBroker("127.0.0.1", port):
        with pytest.raises(BrokerError, match="did not start"):
            async with EmbeddedBroker("127.0.0.1", port, impl=impl):
                pass


def test_streetlight_broker_runs_in_the_foreground_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streetlight.cli", "broker", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not tcp_reachable("127.0.0.1", port, 0.2):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "streetlight broker did not start listening"
            time.sleep(0.05)
    finally:
        status = terminate(proc)
        _, err = proc.communicate()
    assert status == 0
    listening = [line for line in err.decode().splitlines() if "broker_listening" in line]
    assert len(listening) == 1 and "mqtt://127.0.0.1:" in listening[0], err


def test_streetlight_broker_prints_a_development_mosquitto_config(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "streetlight.cli", "broker", "--mosquitto-config", "--port", "1999",
         "--data-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "listener 1999 127.0.0.1" in out.stdout
    assert f"persistence_location {tmp_path}/" in out.stdout
