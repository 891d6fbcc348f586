"""RabbitMQ (3.10, its MQTT plugin) as the services' broker: a private node, the behaviours the
services rely on, and the services end to end on it (issue 16, "A second real broker")."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from broker import parse_mqtt_url
from devkit.localservices import MqttService, start_embedded_broker
from ingest import shared_subscriptions_ignored
from tests.conftest import ROOT


def _client(svc: MqttService, client_id: str, *, clean: bool = True) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    c.connect(svc.host, svc.port, keepalive=30)
    c.loop_start()
    return c


def test_a_private_rabbitmq_node_delivers_a_qos1_message_and_an_exact_topics_retained_one(
    rabbitmq_service: MqttService, unique_id: str
) -> None:
    got: list[tuple[str, bytes, bool]] = []
    done = threading.Event()
    topic = f"sl/v1/11110/rmq{unique_id}/state"
    pub = _client(rabbitmq_service, f"pub-{unique_id}")
    pub.publish(topic, b'{"state": "online", "bdseq": 1}', qos=1, retain=True).wait_for_publish(10)

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
        done.set()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{unique_id}")
    sub.on_message = on_message
    sub.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
    sub.connect(rabbitmq_service.host, rabbitmq_service.port)
    sub.loop_start()
    try:
        assert done.wait(10), "the retained state was not delivered on its exact topic"
        assert got[0][:2] == (topic, b'{"state": "online", "bdseq": 1}')
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()


def test_ingest_forced_onto_shared_subscriptions_on_rabbitmq_exits_saying_the_broker_ignores_share(
    rabbitmq_service: MqttService, db_url: str, tmp_path: Path
) -> None:
    env = {**os.environ, "STREETLIGHT_DATA_DIR": str(tmp_path)}
    argv = [
        *(sys.executable, "-m", "streetlight.cli.ingest", "--subscription", "shared", "--no-jobs"),
        *("--mqtt-url", rabbitmq_service.url, "--database-url", db_url),
    ]
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 2
    assert b"does not implement shared subscriptions" in done.stderr
    assert b"--subscription plain" in done.stderr


def test_the_share_check_proves_rabbitmq_ignores_share_and_finds_nothing_against_sharing_brokers(
    rabbitmq_service: MqttService, mqtt_service: MqttService
) -> None:
    assert shared_subscriptions_ignored(parse_mqtt_url(rabbitmq_service.url)) is not None
    assert shared_subscriptions_ignored(parse_mqtt_url(mqtt_service.url)) is None
    embedded = start_embedded_broker()  # no $SYS: the probe messages decide
    try:
        assert shared_subscriptions_ignored(parse_mqtt_url(embedded.url)) is None
    finally:
        embedded.stop()
