"""``streetlight bench ingest``: MQTT -> PostgreSQL ingest rate on both storage paths, against
two subscribers that store nothing.

In one run, on a private Mosquitto (the deployed limits) or, with ``--broker rabbitmq``, a private
RabbitMQ node (``--prefetch``: its ``mqtt.prefetch``; ingest on a plain subscription, one worker),
and DATABASE_URL's server (a throwaway database on it) or a throwaway cluster, plus a throwaway
cluster with TimescaleDB preloaded:

1. baselines, each receiving N messages from ``devkit.bench.fastpub`` (a raw-socket
   publisher in its own process): ``devkit.bench.baseline`` (bare paho + orjson, first to
   last receive) and Mosquitto's own C subscriber ``mosquitto_sub -C N`` with its output
   discarded (the publisher's first send to its exit: the fastest receiver this broker allows);
2. ingest: ``streetlight ingest`` (its own processes) receives the same N messages and commits
   them, once into a plain-path database and once into a TimescaleDB one; the rate is rows
   committed over the time from the publisher's first send to the last commit, read from the
   workers' /metrics; lost = sent - distinct rows, duplicates = rows - distinct (device, seq);
3. naive: one INSERT with autocommit per message, on a sample (plain path).

Where TimescaleDB is not installed, its figures are replaced by ``timescaledb_skipped`` (why).

The last stdout line is the JSON result (DESIGN.md §7); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psycopg

from devkit.localservices import (
    RABBITMQ_MQTT_PREFETCH,
    TIMESCALE_WORKER_OPTIONS,
    PgCluster,
    PgService,
    free_port,
    start_mosquitto,
    start_pg_cluster,
    start_rabbitmq,
    start_rabbitmq_cluster,
    terminate,
    timescale_installed,
)

HELP = (
    "ingest rate (MQTT -> PostgreSQL, plain and TimescaleDB) vs paho and mosquitto_sub subscribers, "
    "lost/duplicates, naive INSERT rate"
)
NAIVE_SAMPLE = 3000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``streetlight bench ingest``."""
    parser.add_argument("--count", "--messages", dest="count", type=int, default=200_000)
    parser.add_argument("--lamps", type=int, default=500)
    parser.add_argument("--qos", type=int, choices=[0, 1], default=0)
    parser.add_argument(
        "--workers",
        type=int,
        # One, as `streetlight ingest` deploys by default: since PUBLISH packets are cut from the
        # read buffer, one worker commits 129-135k msg/s at QoS 0 here and two only 92-99k (they
        # and the broker's shared-subscription round robin compete for the same 2 cores);
        # docs/benchmarks.md. More workers are for availability, or for more cores.
        default=1,
        help="ingest worker processes on one shared subscription (default 1)",
    )
    parser.add_argument("--rate", type=float, default=0.0, help="publish rate (0: as fast as possible)")
    parser.add_argument("--naive-sample", type=int, default=NAIVE_SAMPLE)
    parser.add_argument(
        "--broker",
        choices=["mosquitto", "rabbitmq", "rabbitmq-cluster"],
        default="mosquitto",
        help="the private broker to start; rabbitmq-cluster: three RabbitMQ nodes (publishers spread over "
        "them, ingest on the quorum queue over AMQP) against a private Mosquitto in the same run",
    )
    parser.add_argument(
        "--amqp-prefetch",
        type=int,
        default=2000,
        help="with rabbitmq-cluster: unacknowledged messages one ingest worker may hold (default 2000)",
    )
    parser.add_argument(
        "--prefetch",
        type=int,
        default=RABBITMQ_MQTT_PREFETCH,
        help=f"RabbitMQ's mqtt.prefetch (default {RABBITMQ_MQTT_PREFETCH}; RabbitMQ's own is 10)",
    )


def _say(text: str) -> None:
    sys.stderr.write(f"[bench ingest] {text}\n")
    sys.stderr.flush()


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _publish(port: int, args: argparse.Namespace, prefix: str, count: int | None = None) -> dict[str, Any]:
    cmd = _py(
        "devkit.bench.fastpub",
        "--port",
        str(port),
        "--count",
        str(args.count if count is None else count),
        "--lamps",
        str(args.lamps),
        "--qos",
        str(args.qos),
        "--prefix",
        prefix,
    )
    if args.rate:
        cmd += ["--rate", str(args.rate)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _baseline(port: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = _py(
        "devkit.bench.baseline",
        "--port",
        str(port),
        "--count",
        str(args.count),
        "--qos",
        str(args.qos),
        "--idle-s",
        "5",
    )
    sub = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "ready":
        terminate(sub)  # type: ignore[arg-type]
        raise RuntimeError("baseline subscriber did not start")
    _publish(port, args, "base")
    out, _ = sub.communicate(timeout=600)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _mosquitto_sub(port: int, args: argparse.Namespace) -> dict[str, Any]:
    """Mosquitto's C subscriber, output discarded: rate from the publisher's first send to its exit."""
    binary = shutil.which("mosquitto_sub")
    if binary is None:
        return {"error": "mosquitto_sub is not installed"}
    cmd = [binary, "-h", "127.0.0.1", "-p", str(port), "-q", str(args.qos), "-t", "sl/v1/+/+/telemetry"]
    cmd += ["-C", str(args.count), "-W", "600", "-i", f"bench-msub-{uuid.uuid4().hex[:6]}"]
    sub = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # It says nothing when subscribed; on loopback that takes milliseconds (a -C run that missed
    # messages would never exit and is reported as incomplete).
    time.sleep(1.0)
    sent = _publish(port, args, "msub")
    code = sub.wait(timeout=900)
    ended = time.time()
    if code != 0:
        return {"error": f"mosquitto_sub exited with {code} before {args.count} messages"}
    span = ended - float(sent["started_unix_s"])
    return {"received": args.count, "rate_msgs_s": round(args.count / span, 1) if span > 0 else 0.0}


def _metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name_labels, _, value = line.rpartition(" ")
        values[name_labels] = values.get(name_labels, 0.0) + float(value)
    return values


def _sum(values: dict[str, float], name: str) -> float:
    return sum(v for k, v in values.items() if k.split("{")[0] == name)


def _p99_ms(values: dict[str, float]) -> float | None:
    buckets: dict[float, float] = {}
    for key, v in values.items():
        if key.startswith("ingest_batch_latency_seconds_bucket"):
            le = key.split('le="')[1].split('"')[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + v
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return None
    for bound in sorted(buckets):
        if buckets[bound] >= 0.99 * total:
            return bound * 1000
    return None


def _publish_spread(ports: list[int], args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    """One publisher process per broker node at once, the messages split evenly between them."""
    if len(ports) == 1:
        return _publish(ports[0], args, prefix)
    share = [args.count // len(ports) + (1 if i < args.count % len(ports) else 0) for i in range(len(ports))]
    results: list[dict[str, Any]] = [{} for _ in ports]

    def one(i: int) -> None:
        results[i] = _publish(ports[i], args, f"{prefix}{i}-", share[i])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(ports))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "sent": sum(int(r["sent"]) for r in results),
        "pubacks": sum(int(r.get("pubacks") or 0) for r in results),
        "started_unix_s": min(float(r["started_unix_s"]) for r in results),
    }


def _ingest(
    port: int,
    db_url: str,
    args: argparse.Namespace,
    workdir: Path,
    *,
    publish_ports: list[int] | None = None,
    amqp_urls: list[str] | None = None,
) -> dict[str, Any]:
    """Run ``streetlight ingest`` (on ``port``'s broker, or with ``amqp_urls`` on the cluster's
    quorum queue), publish to ``publish_ports`` (default: ``port``) and time the commits."""
    metrics_port = free_port()
    env = dict(
        os.environ,
        MQTT_URL=f"mqtt://127.0.0.1:{port}",
        DATABASE_URL=db_url,
        STREETLIGHT_DATA_DIR=str(workdir / "ingest"),
        STREETLIGHT_LOG_LEVEL="WARNING",
    )
    cmd = _py(
        "streetlight.cli.ingest",
        "--workers",
        str(args.workers),
        "--subscription",
        "plain" if args.broker == "rabbitmq" else "shared",
        "--qos",
        str(args.qos),
        "--no-jobs",
        "--no-migrate",
        "--metrics-port",
        str(metrics_port),
        "--client-id",
        f"bench-{uuid.uuid4().hex[:6]}",
        # Each bench lamp sends hundreds of messages a second: far over a device's bound, which
        # stays on (its per-message cost is measured) but high enough never to refuse one.
        "--device-rate",
        "1e9",
        "--device-burst",
        "1e9",
    )
    if amqp_urls:
        cmd += ["--source", "amqp", "--amqp-url", ",".join(amqp_urls), "--prefetch", str(args.amqp_prefetch)]
    proc = subprocess.Popen(cmd, env=env)
    ports = [metrics_port + i for i in range(args.workers)]
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if all(_sum(_metrics(p), "ingest_subscribed") >= 1 for p in ports):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("ingest did not subscribe within 60 s")
            time.sleep(0.1)
        sent = _publish_spread(publish_ports or [port], args, "bench")
        # The span runs from the publisher's first send to the last commit the workers report
        # (their last-commit gauge): the whole stream, as the baseline's first-to-last receive,
        # plus the first message's trip and the last batch's flush delay.
        last_t = last_n = 0.0
        idle_since = time.monotonic()
        snapshot: dict[str, float] = {}
        while True:
            snapshot = {}
            for p in ports:
                for k, v in _metrics(p).items():
                    snapshot[k] = snapshot.get(k, 0.0) + v
                    if k.startswith("ingest_last_commit_timestamp_seconds"):
                        last_t = max(last_t, v)
            stored = _sum(snapshot, "ingest_rows_stored_total") + _sum(snapshot, "ingest_duplicates_total")
            now = time.monotonic()
            if stored > last_n:
                last_n, idle_since = stored, now
            if stored >= args.count or now - idle_since > 15:
                break
            time.sleep(0.1)
        span = last_t - float(sent["started_unix_s"])
        _say(f"{last_n:.0f} rows committed {span:.3f} s after the first send")
        rate = last_n / span if span > 0 else 0.0
        return {"sent": sent["sent"], "pubacks": sent.get("pubacks"), "rate": rate, "metrics": snapshot}
    finally:
        terminate(proc)


def _naive(db_url: str, sample: int) -> float:
    from broker import decode_telemetry
    from devkit.bench.fastpub import telemetry_payload

    now_ms = int(time.time() * 1000)
    payloads = [telemetry_payload(i, now_ms + i, 80) for i in range(sample)]
    sql = (
        "INSERT INTO telemetry (ts, device_id, bdseq, seq, level, power_w, voltage_v, current_a, temp_c, "
        "lux, faults) VALUES (to_timestamp(%s / 1000.0), %s, 0, %s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT DO NOTHING"
    )
    with psycopg.connect(db_url, autocommit=True) as conn:
        t0 = time.perf_counter()
        for i, payload in enumerate(payloads):
            t = decode_telemetry(payload, now_ms + 10**6)
            conn.execute(
                sql,
                (
                    t.ts,
                    f"naive{i % 500:05d}",
                    t.seq,
                    t.level,
                    t.power_w,
                    t.voltage_v,
                    t.current_a,
                    t.temp_c,
                    t.lux,
                    list(t.faults),
                ),
            )
        return sample / (time.perf_counter() - t0)


def _durable(pg: PgCluster) -> None:
    """Restart a throwaway cluster with production durability (fsync, synchronous commit).

    ``start_pg_cluster`` turns fsync off for test speed; a commit per message is only honestly
    priced with it on, and ingest pays its per-batch fsync too.
    """
    assert pg.pg_bin is not None and pg.datadir is not None and pg.port is not None
    pg.stop()
    opts = f"-p {pg.port} -k {pg.datadir} -c listen_addresses=127.0.0.1 -c shared_buffers=256MB"
    if pg.timescale:
        opts += f" {TIMESCALE_WORKER_OPTIONS}"
    cmd = [
        str(pg.pg_bin / "pg_ctl"),
        "-D",
        str(pg.datadir),
        "start",
        "-w",
        "-t",
        "60",
        "-l",
        str(pg.datadir / "server.log"),
        "-o",
        opts,
    ]
    if pg.run_as:
        cmd = ["runuser", "-u", pg.run_as, "--", *cmd]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stored(db_url: str) -> tuple[int, int]:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT (device_id, seq)) FROM telemetry WHERE device_id LIKE 'bench%'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _ratio(rate: float, baseline: float | None) -> float | None:
    return round(rate / baseline, 3) if baseline else None


def _timescale_server(workdir: Path, admin_url: str | None) -> tuple[PgCluster | None, str | None, str]:
    """(a cluster we started, the admin URL to use, why not) for the TimescaleDB run."""
    from store.schema import timescale_preloaded

    if admin_url:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            if timescale_preloaded(conn):
                return None, admin_url, ""
    if not timescale_installed():
        return None, None, "TimescaleDB is not installed in the local PostgreSQL"
    pg = start_pg_cluster(workdir / "pg-timescaledb", timescale=True)
    _durable(pg)
    return pg, pg.url, ""


def _accounting(ing: dict[str, Any], db_url: str) -> dict[str, Any]:
    rows, distinct = _stored(db_url)
    return {
        "rate_msgs_s": round(float(ing["rate"]), 1),
        "sent": ing["sent"],
        "acknowledged": ing["pubacks"],
        "stored": distinct,
        "rows": rows,
        "duplicates": rows - distinct,
        # Acknowledged by the broker and not stored (0 unless something lost a message).
        "lost_acknowledged": max(0, int(ing["pubacks"] or 0) - distinct),
        "p99_lag_ms": _p99_ms(ing["metrics"]),
    }


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) the processes used so far (Linux /proc; 0 where unreadable)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def run_cluster(args: argparse.Namespace) -> dict[str, Any]:
    """``--broker rabbitmq-cluster``: QoS 1 ingest through a private Mosquitto, then through three
    RabbitMQ nodes (publishers spread over them, ingest on the quorum queue), same database server."""
    from store import migrate

    workdir = Path(tempfile.mkdtemp(prefix="slbench-ingest-cluster-"))
    args.qos = 1
    pg: PgCluster | None = None
    admin_url = os.environ.get("DATABASE_URL")
    dbname = f"slbench_{uuid.uuid4().hex[:8]}"
    names = [f"{dbname}_mosquitto", f"{dbname}_cluster"]
    try:
        if not admin_url:
            pg = start_pg_cluster(workdir / "pg")
            _durable(pg)
            admin_url = pg.url
        urls = []
        for name in names:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            urls.append(PgService("configured", admin_url).database_url(name))
            migrate(urls[-1], timescale=False)
        mosquitto = start_mosquitto(workdir / "mosquitto")
        try:
            _say(f"mosquitto :{mosquitto.port}, {args.count} QoS 1 messages, {args.workers} worker(s)")
            pids = [mosquitto.proc.pid] if mosquitto.proc is not None else []
            cpu0 = _cpu_s(pids)
            single = _accounting(_ingest(mosquitto.port, urls[0], args, workdir), urls[0])
            single["broker_cpu_s"] = round(_cpu_s(pids) - cpu0, 2)
        finally:
            mosquitto.stop()
        _say(f"mosquitto: {single}")
        started = time.monotonic()
        cluster = start_rabbitmq_cluster(workdir / "cluster")
        boot_s = time.monotonic() - started
        try:
            ports = [n.mqtt_port for n in cluster.nodes]
            _say(f"cluster up in {boot_s:.1f} s, MQTT {ports}")
            pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
            node_cpu0 = [_cpu_s([pid]) for pid in pids]
            ing = _ingest(ports[0], urls[1], args, workdir, publish_ports=ports, amqp_urls=cluster.amqp_urls)
            three = _accounting(ing, urls[1])
            used = [_cpu_s([pid]) - c for pid, c in zip(pids, node_cpu0, strict=True)]
            three["broker_cpu_s"] = [round(u, 2) for u in used]
        finally:
            cluster.stop()
        _say(f"cluster: {three}")
        ok = all(r["duplicates"] == 0 and r["lost_acknowledged"] == 0 for r in (single, three))
        return {
            "bench": "ingest",
            "broker": "rabbitmq-cluster",
            "messages": args.count,
            "qos": 1,
            "workers": args.workers,
            "lamps": args.lamps,
            "mosquitto": single,
            "cluster": three
            | {"nodes": 3, "boot_and_join_s": round(boot_s, 1), "prefetch": args.amqp_prefetch},
            "cluster_to_mosquitto": _ratio(three["rate_msgs_s"], single["rate_msgs_s"]),
            "database": "configured (throwaway databases)"
            if pg is None
            else "pg_ctl throwaway cluster (fsync on)",
            "ok": ok,
        }
    finally:
        if pg is not None:
            pg.stop()
        elif admin_url:
            for name in names:
                with psycopg.connect(admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(workdir, ignore_errors=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the measurements and return the figures."""
    from store import migrate

    if args.broker == "rabbitmq-cluster":
        return run_cluster(args)
    workdir = Path(tempfile.mkdtemp(prefix="slbench-ingest-"))
    if args.broker == "rabbitmq":
        args.workers = 1  # no shared subscriptions: one consumer
        broker = start_rabbitmq(workdir / "rabbitmq", prefetch=args.prefetch)
    else:
        broker = start_mosquitto(workdir / "mosquitto")
    pg: PgCluster | None = None
    pg_ts: PgCluster | None = None
    admin_url = os.environ.get("DATABASE_URL")
    ts_admin_url: str | None = None
    dbname = f"slbench_{uuid.uuid4().hex[:8]}"
    try:
        if not admin_url:
            pg = start_pg_cluster(workdir / "pg")
            _durable(pg)
            admin_url = pg.url
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        db_url = PgService("configured", admin_url).database_url(dbname)
        migrate(db_url, timescale=False)
        pg_ts, ts_admin_url, ts_skipped = _timescale_server(workdir, os.environ.get("DATABASE_URL"))
        ts_url = None
        if ts_admin_url:
            with psycopg.connect(ts_admin_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{dbname}_ts"')
            ts_url = PgService("configured", ts_admin_url).database_url(f"{dbname}_ts")
            migrate(ts_url, timescale=True)
        _say(f"broker {broker.kind} :{broker.port}, database {db_url.split('@')[-1]}, timescaledb {ts_url}")
        base = _baseline(broker.port, args)
        _say(f"baseline (paho): {base}")
        msub = _mosquitto_sub(broker.port, args)
        _say(f"baseline (mosquitto_sub): {msub}")
        ing = _ingest(broker.port, db_url, args, workdir)
        rows, distinct = _stored(db_url)
        _say(f"ingest (plain): {ing['rate']:.0f} msg/s, rows {rows}")
        ts: dict[str, Any] = {}
        if ts_url is not None:
            # A fresh broker of the same configuration: the first run's persistent sessions
            # (QoS 1) stay members of the shared subscription and would take a share.
            broker.stop()
            if args.broker == "rabbitmq":
                broker = start_rabbitmq(workdir / "rabbitmq-timescaledb", prefetch=args.prefetch)
            else:
                broker = start_mosquitto(workdir / "mosquitto-timescaledb")
            ts = _ingest(broker.port, ts_url, args, workdir)
            ts["rows"], ts["distinct"] = _stored(ts_url)
            _say(f"ingest (timescaledb): {ts['rate']:.0f} msg/s, rows {ts['rows']}")
        naive = _naive(db_url, args.naive_sample)
        _say(f"naive: {naive:.0f} msg/s")
        baseline_rate = float(base.get("rate_msgs_s", 0.0))
        msub_rate = msub.get("rate_msgs_s")
        rate = float(ing["rate"])
        m = ing["metrics"]
        result: dict[str, Any] = {
            "bench": "ingest",
            "messages": args.count,
            "qos": args.qos,
            "workers": args.workers,
            "lamps": args.lamps,
            "rate_msgs_s": round(rate, 1),
            "baseline_rate_msgs_s": baseline_rate,
            "baseline_received": base.get("received"),
            "ratio": _ratio(rate, baseline_rate),
            "mosquitto_sub_rate_msgs_s": msub_rate,
            "mosquitto_sub_error": msub.get("error"),
            "ratio_mosquitto_sub": _ratio(rate, msub_rate),
            "rows": rows,
            "lost": ing["sent"] - distinct,
            # QoS 1 messages the broker acknowledged to the publisher (a broker that closes the
            # publisher's connection mid-burst never acknowledges the rest: not ingest's loss).
            "pubacks": ing["pubacks"],
            "duplicates": rows - distinct,
            "p99_lag_ms": _p99_ms(m),
            "naive_insert_rate_msgs_s": round(naive, 1),
            "speedup_vs_naive": round(rate / naive, 1) if naive else None,
            "dead_letters": _sum(m, "ingest_dead_letters_total"),
            "broker": "mosquitto (private, the deployed limits)"
            if args.broker == "mosquitto"
            else f"rabbitmq (private node, mqtt.prefetch {args.prefetch})",
            "database": "configured (throwaway database)"
            if pg is None
            else "pg_ctl throwaway cluster (fsync on)",
        }
        ok = result["lost"] == 0 and result["duplicates"] == 0
        if ts:
            ts_rate = float(ts["rate"])
            result |= {
                "timescaledb_rate_msgs_s": round(ts_rate, 1),
                "timescaledb_ratio": _ratio(ts_rate, baseline_rate),
                "timescaledb_ratio_mosquitto_sub": _ratio(ts_rate, msub_rate),
                "timescaledb_rows": ts["rows"],
                "timescaledb_lost": ts["sent"] - ts["distinct"],
                "timescaledb_duplicates": ts["rows"] - ts["distinct"],
                "timescaledb_p99_lag_ms": _p99_ms(ts["metrics"]),
                "timescaledb_database": "pg_ctl throwaway cluster, TimescaleDB preloaded (fsync on)"
                if pg_ts is not None
                else "configured (throwaway database)",
            }
            ok = ok and result["timescaledb_lost"] == 0 and result["timescaledb_duplicates"] == 0
        else:
            result["timescaledb_skipped"] = ts_skipped
        result["ok"] = bool(ok)
        return result
    finally:
        broker.stop()
        for svc, url, name in ((pg, admin_url, dbname), (pg_ts, ts_admin_url, f"{dbname}_ts")):
            if svc is not None:
                svc.stop()
            elif url:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
