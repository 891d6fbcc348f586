"""The baseline of the ingest benchmark: a bare paho subscriber that only receives and decodes.

Run as its own process: ``python -m devkit.bench.baseline --port P --count N --qos Q``. It
prints ``ready`` once subscribed, then one JSON line: messages received and the receive rate,
measured from the first to the last message.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


def main(argv: list[str] | None = None) -> int:
    """Subscribe, count and decode until ``count`` messages arrived or ``idle_s`` passed without one."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--qos", type=int, choices=[0, 1], default=0)
    p.add_argument("--topic", default="sl/v1/+/+/telemetry")
    p.add_argument("--idle-s", type=float, default=10.0)
    a = p.parse_args(argv)

    state = {"got": 0, "first": 0.0, "last": 0.0}
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        if not state["got"]:
            state["first"] = now
        orjson.loads(msg.payload)
        state["got"] += 1
        state["last"] = now
        if state["got"] >= a.count:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-baseline-{time.monotonic_ns()}")
    client.max_inflight_messages_set(1000)
    client.on_message = on_message
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_connect = lambda c, *_a: c.subscribe(a.topic, qos=a.qos)
    client.connect(a.host, a.port, keepalive=60)
    client.loop_start()
    if not subscribed.wait(10):
        sys.stdout.write(json.dumps({"error": "not subscribed"}) + "\n")
        return 1
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    seen = -1
    while not done.wait(a.idle_s):
        if state["got"] == seen:
            break
        seen = int(state["got"])
    client.loop_stop()
    client.disconnect()
    span = state["last"] - state["first"]
    rate = state["got"] / span if span > 0 else 0.0
    sys.stdout.write(json.dumps({"received": state["got"], "rate_msgs_s": round(rate, 1)}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
