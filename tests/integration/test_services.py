"""The test suite's own services are real: a publish/subscribe round trip and a table written and read."""

from __future__ import annotations

import threading

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion

from devkit.localservices import MqttService


def test_a_message_published_to_the_broker_reaches_a_subscriber(
    mqtt_service: MqttService, unique_id: str
) -> None:
    topic = f"test/{unique_id}/roundtrip"
    got: list[bytes] = []
    subscribed = threading.Event()
    received = threading.Event()

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{unique_id}")
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload)
        received.set()

    sub.on_message = on_message
    sub.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
    sub.connect(mqtt_service.host, mqtt_service.port)
    sub.loop_start()
    try:
        assert subscribed.wait(10), "subscription not acknowledged"
        pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{unique_id}")
        pub.connect(mqtt_service.host, mqtt_service.port)
        pub.loop_start()
        pub.publish(topic, b'{"hello": "seoul"}', qos=1).wait_for_publish(10)
        pub.loop_stop()
        pub.disconnect()
        assert received.wait(10), "message not delivered"
        assert got == [b'{"hello": "seoul"}']
    finally:
        sub.loop_stop()
        sub.disconnect()


def test_a_table_created_in_postgresql_can_be_written_and_read(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        conn.execute("CREATE TABLE lamp_probe (id text PRIMARY KEY, level int NOT NULL)")
        conn.execute("INSERT INTO lamp_probe VALUES (%s, %s)", ("11020-03-0001", 80))
        conn.commit()
        row = conn.execute("SELECT level FROM lamp_probe WHERE id = %s", ("11020-03-0001",)).fetchone()
    assert row == (80,)
