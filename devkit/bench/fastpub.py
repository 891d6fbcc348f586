"""A fast MQTT publisher for benchmarks: pre-encoded PUBLISH packets written straight to a socket.

It is deliberately not the Python MQTT stack being measured: packets are built once, then written
in large chunks, so publishing costs almost no CPU and the subscriber side is what is measured.
Run as a separate process: ``python -m devkit.bench.fastpub --port P --count N ...``; it
prints one JSON line with what it sent.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time

from firmware_sim.mqtt import encode_connect, encode_publish


def connect_packet(client_id: str, keepalive_s: int = 60) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    return encode_connect(client_id, keepalive_s=keepalive_s)


def publish_packet(topic: str, payload: bytes, qos: int, packet_id: int) -> bytes:
    """An MQTT 3.1.1 PUBLISH (QoS 0 or 1)."""
    return encode_publish(topic, payload, qos=qos, packet_id=packet_id)


def telemetry_payload(seq: int, ts_ms: int, level: int) -> bytes:
    """A typical lamp telemetry message (DESIGN.md §3)."""
    power = round(0.4 * level, 1)
    return (
        b'{"ts":%d,"seq":%d,"level":%d,"power_w":%.1f,"voltage_v":221.3,"current_a":%.3f,'
        b'"temp_c":31.5,"lux":0.4,"faults":[]}' % (ts_ms, seq, level, power, power / 221.3)
    )


def build_stream(count: int, lamps: int, qos: int, district: str, prefix: str, ts_ms: int) -> list[bytes]:
    """All PUBLISH packets: ``count`` telemetry messages round-robin over ``lamps`` lamp ids."""
    packets = []
    for i in range(count):
        lamp = i % lamps
        seq = i // lamps
        topic = f"sl/v1/{district}/{prefix}{lamp:05d}/telemetry"
        packets.append(publish_packet(topic, telemetry_payload(seq, ts_ms + seq, 80), qos, (i % 65535) + 1))
    return packets


def _drain(sock: socket.socket, stop: threading.Event, closed: threading.Event, got: list[int]) -> None:
    # Read and discard CONNACK/PUBACKs so the broker never blocks on a full socket, counting the
    # bytes (a publisher receives only the 4-byte CONNACK and 4-byte PUBACKs); ``closed`` is set
    # when the broker closes the connection (after it has read our DISCONNECT).
    sock.settimeout(0.5)
    while not stop.is_set():
        try:
            data = sock.recv(65536)
            if not data:
                break
            got[0] += len(data)
        except TimeoutError:
            continue
        except OSError:
            break
    closed.set()


def publish(
    host: str,
    port: int,
    packets: list[bytes],
    rate_per_s: float | None,
    chunk: int = 500,
    *,
    pubacks_expected: int = 0,
) -> tuple[float, float, int]:
    """Send the packets (optionally paced); returns the Unix time of the first send, the seconds taken
    and the PUBACKs received.

    With ``pubacks_expected`` (the QoS 1 packets sent) the DISCONNECT waits for that many PUBACKs:
    RabbitMQ closes on DISCONNECT and drops the QoS 1 messages it has not acknowledged yet (up to
    8,000 of a 20,000-message burst), where Mosquitto finishes them."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_packet(f"fastpub-{time.monotonic_ns()}"))
    stop = threading.Event()
    closed = threading.Event()
    got = [0]
    reader = threading.Thread(target=_drain, args=(sock, stop, closed, got), daemon=True)
    reader.start()
    started_unix_s = time.time()
    t0 = time.perf_counter()
    for start in range(0, len(packets), chunk):
        sock.sendall(b"".join(packets[start : start + chunk]))
        if rate_per_s:
            ahead = (start + chunk) / rate_per_s - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)
    elapsed = time.perf_counter() - t0
    deadline = time.monotonic() + 120.0
    while got[0] < 4 + 4 * pubacks_expected and time.monotonic() < deadline and not closed.is_set():
        time.sleep(0.005)
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    # Close only once the broker has closed: it has then read every PUBLISH before the DISCONNECT.
    # Closing first (after a fixed 0.2 s) with PUBACKs unread made the kernel reset the connection,
    # and the broker lost what it had not read yet: up to 11,000 of 200,000 QoS 1 messages "lost"
    # in bench ingest, the baseline's 192,110-198,649 received.
    closed.wait(120.0)
    stop.set()
    sock.close()
    return started_unix_s, elapsed, max(0, got[0] - 4) // 4


def main(argv: list[str] | None = None) -> int:
    """Command line of the publisher process."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--lamps", type=int, default=500)
    p.add_argument("--qos", type=int, choices=[0, 1], default=0)
    p.add_argument("--district", default="11230")
    p.add_argument("--prefix", default="bench")
    p.add_argument("--rate", type=float, default=0.0, help="messages per second (0: as fast as possible)")
    p.add_argument("--ts-ms", type=int, default=0)
    a = p.parse_args(argv)
    ts_ms = a.ts_ms or int(time.time() * 1000)
    packets = build_stream(a.count, a.lamps, a.qos, a.district, a.prefix, ts_ms)
    started_unix_s, elapsed, pubacks = publish(
        a.host, a.port, packets, a.rate or None, pubacks_expected=a.count if a.qos == 1 else 0
    )
    sys.stdout.write(
        json.dumps(
            {
                "sent": a.count,
                "pubacks": pubacks,
                "started_unix_s": started_unix_s,
                "seconds": round(elapsed, 3),
            }
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
