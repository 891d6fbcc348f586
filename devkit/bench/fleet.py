"""``streetlight bench fleet``: how many simulated lamps one machine holds, each its own MQTT connection.

Starts its own Mosquitto broker(s) (``--brokers K``; lamps are sharded by district, as a city
would across broker nodes) and simulator processes (``--procs P``), then:

1. baseline: the raw-socket publisher (``fastpub``) on broker 0, messages per second;
2. connect: every lamp connects with its own client id and last will -> connect time and rate;
3. hold: telemetry every ``--interval`` s for ``--hold`` s -> achieved vs requested rate, CPU, RSS;
4. burst: every lamp publishes as fast as the fleet can for 5 s -> rate, and its ratio to fastpub;
5. wills: a sample of lamps drops its sockets without DISCONNECT; an observer counts the retained
   ``offline`` wills with the right ``bdseq`` -> ``lost_wills``;
6. clean disconnect of the rest; everything started is stopped.

The per-process open-file limit (20,000 here) bounds both a broker and a simulator process: keep
each under ~19,000 connections (the defaults do).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

HELP = (
    "connect N simulated lamps (own MQTT connection each), hold them, measure connect rate, RSS, CPU, wills"
)

# A process may hold this many sockets under the 20,000 open-file limit seen on these machines,
# leaving room for files, pipes and the listening socket.
PER_PROCESS_CONNECTIONS = 15_000
BURST_S = 5.0
BASELINE_MESSAGES = 200_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``streetlight bench fleet``."""
    parser.add_argument("--lamps", "--target", dest="lamps", type=int, default=10_000, metavar="N")
    parser.add_argument("--brokers", type=int, default=0, metavar="K", help="default: N / 15,000 rounded up")
    parser.add_argument("--procs", type=int, default=0, metavar="P", help="simulator processes (default: K)")
    parser.add_argument(
        "--interval", type=float, default=10.0, metavar="S", help="telemetry interval per lamp"
    )
    parser.add_argument("--hold", type=float, default=60.0, metavar="S", help="seconds to hold the fleet")
    parser.add_argument("--victims", type=int, default=100, metavar="V", help="lamps killed to check wills")


# -- worker process ---------------------------------------------------------------------------


def _rss_kb() -> int:
    with Path("/proc/self/status").open() as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _say(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _worker(cfg: dict[str, Any]) -> None:
    from firmware_sim.fleet import Endpoint, Fleet
    from firmware_sim.placement import place_lamps

    rss_before = _rss_kb()  # after the imports: what a process with no devices needs
    placement = place_lamps(cfg["lamps"], id_prefix=cfg["prefix"])
    mine = placement.lamps[cfg["index"] :: cfg["procs"]]
    fleet = Fleet([Endpoint("127.0.0.1", p) for p in cfg["ports"]], interval_s=cfg["interval"])
    sub = type(placement)(placement.seed, tuple(mine), placement.zones)
    fleet.add_placement(sub, with_blinkers=False)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    t0 = time.perf_counter()
    async with fleet:
        ok = await fleet.wait_connected(timeout_s=cfg["connect_timeout"])
        connect_s = time.perf_counter() - t0
        _say(
            phase="connected",
            connected=fleet.stats.connected,
            seconds=round(connect_s, 3),
            all=ok,
            rss_kb=_rss_kb(),
            rss_before_kb=rss_before,
            failures=fleet.stats.connect_failures,
            error=fleet.stats.last_error,
        )
        await reader.readline()  # "hold"
        sent0, cpu0, t1 = fleet.stats.telemetry, _cpu_s(), time.perf_counter()
        await asyncio.sleep(cfg["hold"])
        held = time.perf_counter() - t1
        _say(
            phase="held",
            telemetry=fleet.stats.telemetry - sent0,
            seconds=round(held, 3),
            cpu_s=round(_cpu_s() - cpu0, 3),
            connected=fleet.stats.connected,
            rss_kb=_rss_kb(),
        )
        await reader.readline()  # "burst"
        fleet.interval_s = len(fleet.links) / 1_000_000  # as fast as the loop goes
        sent0, t2 = fleet.stats.telemetry, time.perf_counter()
        await asyncio.sleep(BURST_S)
        fleet.interval_s = cfg["interval"]
        burst_s = time.perf_counter() - t2
        _say(phase="burst", telemetry=fleet.stats.telemetry - sent0, seconds=round(burst_s, 3))
        await reader.readline()  # "kill"
        for link in fleet.links[: cfg["victims"]]:
            link.stay_down()
        _say(phase="killed", victims=min(cfg["victims"], len(fleet.links)))
        await reader.readline()  # "stop"
    _say(phase="done")


# -- parent -----------------------------------------------------------------------------------


class _WillWatcher:
    """A paho subscriber on the victims' state topics: counts retained online, then offline wills."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.online: dict[str, int] = {}
        self.offline: dict[str, int] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-fleet-wills-{port}")

        def on_connect(c: Any, *_a: Any) -> None:
            c.subscribe([(t, 1) for t in topics])

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            state = orjson.loads(msg.payload)
            with self._lock:
                target = self.online if state["state"] == "online" else self.offline
                target[msg.topic] = int(state["bdseq"])

        self.client.on_connect = on_connect
        self.client.on_subscribe = lambda *_a: self._subscribed.set()
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=60)
        self.client.loop_start()
        self._subscribed.wait(15)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _read(proc: subprocess.Popen[str], timeout_s: float) -> dict[str, Any]:
    assert proc.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""))
    reader.start()
    reader.join(timeout_s)
    if not result or not result[0]:
        raise RuntimeError(f"simulator process {proc.pid} said nothing within {timeout_s} s")
    answer: dict[str, Any] = json.loads(result[0])
    return answer


def _tell(procs: list[subprocess.Popen[str]], word: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(word + "\n")
        proc.stdin.flush()


def _fastpub_rate(port: int) -> float:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "devkit.bench.fastpub",
            "--port",
            str(port),
            "--count",
            str(BASELINE_MESSAGES),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    return float(figures["sent"]) / max(float(figures["seconds"]), 1e-9)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the benchmark; returns the figures (printed as the last line by ``streetlight bench``)."""
    from devkit.localservices import start_mosquitto
    from firmware_sim.placement import place_lamps

    n = args.lamps
    brokers = args.brokers or max(1, math.ceil(n / PER_PROCESS_CONNECTIONS))
    procs_n = args.procs or max(brokers, math.ceil(n / PER_PROCESS_CONNECTIONS))
    prefix = f"bf{os.getpid() % 10000}"
    log = sys.stderr
    services = []
    workers: list[subprocess.Popen[str]] = []
    watchers: list[_WillWatcher] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        try:
            for k in range(brokers):
                # No persistence: 50k retained states saved every second would measure the disk.
                services.append(start_mosquitto(Path(tmp) / f"broker{k}", extra_config="persistence false\n"))
            ports = [s.port for s in services]
            print(f"bench fleet: {brokers} mosquitto on {ports}; baseline fastpub ...", file=log)
            baseline = _fastpub_rate(ports[0])
            print(
                f"bench fleet: fastpub {baseline:,.0f} msg/s; starting {procs_n} simulator process(es)",
                file=log,
            )
            victims_per = max(0, args.victims // procs_n)
            broker_cpu0 = sum(_proc_cpu_s(s.proc.pid) for s in services if s.proc)
            for i in range(procs_n):
                cfg = {
                    "lamps": n,
                    "prefix": prefix,
                    "index": i,
                    "procs": procs_n,
                    "ports": ports,
                    "interval": args.interval,
                    "hold": args.hold,
                    "victims": victims_per,
                    "connect_timeout": max(60.0, n / 200),
                }
                workers.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "devkit.bench.fleet", "--worker", json.dumps(cfg)],
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                )
            connected = [_read(w, 600) for w in workers]
            connect_s = max(c["seconds"] for c in connected)
            total_connected = sum(c["connected"] for c in connected)
            print(f"bench fleet: {total_connected}/{n} connected in {connect_s:.1f} s", file=log)
            _tell(workers, "hold")
            held = [_read(w, args.hold + 120) for w in workers]
            broker_cpu1 = sum(_proc_cpu_s(s.proc.pid) for s in services if s.proc)
            broker_rss_kb = sum(_proc_rss_kb(s.proc.pid) for s in services if s.proc)
            hold_s = max(h["seconds"] for h in held)
            achieved = sum(h["telemetry"] for h in held) / hold_s
            _tell(workers, "burst")
            bursts = [_read(w, 60) for w in workers]
            burst_rate = sum(b["telemetry"] for b in bursts) / max(b["seconds"] for b in bursts)
            # Wills: watch the victims' state topics, then drop their sockets.
            placement = place_lamps(n, id_prefix=prefix)
            victim_topics: dict[int, list[str]] = {}
            for i in range(procs_n):
                for lamp in placement.lamps[i::procs_n][:victims_per]:
                    port = ports[int(lamp.district_code) // 10 % len(ports)]
                    victim_topics.setdefault(port, []).append(
                        f"sl/v1/{lamp.district_code}/{lamp.lamp_id}/state"
                    )
            watchers = [_WillWatcher(port, topics) for port, topics in victim_topics.items()]
            time.sleep(1.0)
            _tell(workers, "kill")
            killed = sum(_read(w, 60)["victims"] for w in workers)
            deadline = time.monotonic() + 15

            def _fresh_wills() -> int:
                return sum(1 for w in watchers for t, b in w.offline.items() if w.online.get(t) == b)

            while time.monotonic() < deadline and _fresh_wills() < killed:
                time.sleep(0.2)
            wills = _fresh_wills()
            _tell(workers, "stop")
            for w in workers:
                _read(w, 60)
            rss_kb = sum(h["rss_kb"] for h in held)
            rss_fleet_kb = sum(h["rss_kb"] - c["rss_before_kb"] for h, c in zip(held, connected, strict=True))
            sim_cpu = sum(h["cpu_s"] for h in held) / hold_s
            return {
                "bench": "fleet",
                "target": n,
                "connected": total_connected,
                "brokers": brokers,
                "procs": procs_n,
                "connect_s": round(connect_s, 2),
                "connect_rate_per_s": round(total_connected / connect_s, 1) if connect_s else None,
                "requested_msgs_per_s": round(n / args.interval, 1),
                "achieved_msgs_per_s": round(achieved, 1),
                "achieved_ratio": round(achieved / (n / args.interval), 3),
                "held_connected": sum(h["connected"] for h in held),
                "sim_cpu_cores": round(sim_cpu, 3),
                "broker_cpu_cores": round((broker_cpu1 - broker_cpu0) / hold_s, 3),
                "rss_mb": round(rss_kb / 1024, 1),
                "rss_kb_per_device": round(rss_fleet_kb / max(1, total_connected), 2),
                "broker_rss_mb": round(broker_rss_kb / 1024, 1),
                "burst_msgs_per_s": round(burst_rate, 1),
                "baseline_fastpub_msgs_per_s": round(baseline, 1),
                "burst_vs_fastpub": round(burst_rate / baseline, 3),
                "victims": killed,
                "wills": wills,
                "lost_wills": killed - wills,
                "ok": total_connected == n and killed == wills,
            }
        finally:
            for watcher in watchers:
                watcher.stop()
            for w in workers:
                if w.poll() is None:
                    w.kill()
                    w.wait()
            for svc in services:
                svc.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m devkit.bench.fleet --worker CONFIG``: one simulator process of the benchmark."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--worker":
        asyncio.run(_worker(json.loads(argv[1])))
        return 0
    parser = argparse.ArgumentParser(description=HELP)
    add_arguments(parser)
    result = run(parser.parse_args(argv))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
