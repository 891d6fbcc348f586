"""Counters of one ingest worker and their Prometheus text exposition (format 0.0.4).

Plain integers updated by the worker's own threads (one writer per counter; reading a slightly
old value is fine for a scrape), so the hot path pays no lock per message.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any

from runtime.logs import get_logger
from runtime.status import check, serve_status

log = get_logger(__name__)

# Batch latency buckets (seconds) around the 200 ms flush delay.
LATENCY_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class IngestMetrics:
    """What one worker counted since it started."""

    worker: int = 0
    received: int = 0
    stored_rows: int = 0  # telemetry + event rows newly inserted
    offered_rows: int = 0  # rows handed to the database (inserted + duplicates)
    duplicates: int = 0  # rows the dedup key refused (redeliveries)
    dead_letters: Counter[str] = field(default_factory=Counter)  # by reason kind
    seq_gaps: int = 0
    seq_repeats: int = 0
    births: int = 0
    states: int = 0
    stale_states: int = 0  # online/offline of an older connection than the device's current one
    state_resyncs: int = 0  # devices whose retained state was asked for on its exact topic
    acks_seen: int = 0  # device command acks stored as events
    flags: Counter[str] = field(default_factory=Counter)  # accepted but suspicious (district_mismatch)
    spooled: int = 0  # messages written to the spool
    replayed: int = 0  # messages replayed from the spool
    spool_bytes: int = 0
    spool_messages: int = 0
    dropped: int = 0  # messages neither stored nor spooled (spool full); QoS 1 ones stay at the broker
    rate_limited: int = 0  # messages over their device's rate bound, not stored (acknowledged)
    retained_ignored: int = 0  # non-state messages from the broker's retained store, not stored
    redelivered: int = 0  # AMQP deliveries marked redelivered (another consumer had them unacked)
    batches: int = 0
    db_failures: int = 0
    db_up: bool = True
    subscribed: bool = False
    standby: bool = False  # a --group instance waiting for the group's lease
    pending: int = 0
    lag_ms_last: float = 0.0
    last_commit_unix_s: float = 0.0  # wall-clock time of the last committed batch (0: none yet)
    storage_job_problems: int = 0  # failed or late storage jobs (set by the worker running the jobs)
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS_S) + 1))
    latency_sum_s: float = 0.0

    def observe_batch(self, seconds: float) -> None:
        """Record one batch's time from its oldest message's arrival to its commit."""
        self.batches += 1
        self.latency_sum_s += seconds
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            if seconds <= bound:
                self.latency_buckets[i] += 1
                return
        self.latency_buckets[-1] += 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain JSON-able values (for health checks and the benchmark)."""
        return {
            "received": self.received,
            "stored_rows": self.stored_rows,
            "duplicates": self.duplicates,
            "dead_letters": dict(self.dead_letters),
            "seq_gaps": self.seq_gaps,
            "seq_repeats": self.seq_repeats,
            "spooled": self.spooled,
            "replayed": self.replayed,
            "spool_bytes": self.spool_bytes,
            "dropped": self.dropped,
            "rate_limited": self.rate_limited,
            "retained_ignored": self.retained_ignored,
            "redelivered": self.redelivered,
            "stale_states": self.stale_states,
            "db_up": self.db_up,
            "subscribed": self.subscribed,
            "batches": self.batches,
        }

    def exposition(self) -> str:
        """Prometheus text format."""
        w = f'worker="{self.worker}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(f"{name}{{{labels}}} {value}" for labels, value in samples)

        metric("ingest_messages_received_total", "counter", "MQTT messages received", [(w, self.received)])
        metric(
            "ingest_rows_stored_total",
            "counter",
            "telemetry and event rows newly stored",
            [(w, self.stored_rows)],
        )
        metric(
            "ingest_duplicates_total",
            "counter",
            "rows refused by the dedup key (redeliveries)",
            [(w, self.duplicates)],
        )
        metric(
            "ingest_dead_letters_total",
            "counter",
            "messages refused, by reason",
            [(f'{w},reason="{k}"', v) for k, v in sorted(self.dead_letters.items())] or [(w, 0)],
        )
        metric(
            "ingest_seq_gaps_total",
            "counter",
            "telemetry seq numbers skipped in this worker's share of the streams",
            [(w, self.seq_gaps)],
        )
        metric(
            "ingest_seq_repeats_total", "counter", "telemetry seq numbers seen again", [(w, self.seq_repeats)]
        )
        metric(
            "ingest_flags_total",
            "counter",
            "accepted messages flagged (e.g. district_mismatch)",
            [(f'{w},flag="{k}"', v) for k, v in sorted(self.flags.items())] or [(w, 0)],
        )
        metric("ingest_spooled_total", "counter", "messages written to the spool", [(w, self.spooled)])
        metric("ingest_replayed_total", "counter", "messages replayed from the spool", [(w, self.replayed)])
        metric("ingest_dropped_total", "counter", "messages neither stored nor spooled", [(w, self.dropped)])
        metric(
            "ingest_rate_limited_total",
            "counter",
            "messages over their device's rate bound, acknowledged and not stored",
            [(w, self.rate_limited)],
        )
        metric(
            "ingest_stale_states_total",
            "counter",
            "online/offline states of an older connection than the device's current one, ignored",
            [(w, self.stale_states)],
        )
        metric(
            "ingest_retained_ignored_total",
            "counter",
            "messages other than state from the broker's retained store, not stored",
            [(w, self.retained_ignored)],
        )
        metric(
            "ingest_redelivered_total",
            "counter",
            "deliveries from the AMQP queue marked redelivered (a consumer before had them unacknowledged)",
            [(w, self.redelivered)],
        )
        metric("ingest_spool_bytes", "gauge", "bytes waiting in the spool", [(w, self.spool_bytes)])
        metric(
            "ingest_pending_messages", "gauge", "messages received, not yet committed", [(w, self.pending)]
        )
        metric(
            "ingest_state_resyncs_total",
            "counter",
            "retained states asked for on a device's exact topic",
            [(w, self.state_resyncs)],
        )
        metric("ingest_subscribed", "gauge", "1 while subscribed", [(w, int(self.subscribed))])
        metric(
            "ingest_standby",
            "gauge",
            "1 while waiting for the group's lease (another instance consumes)",
            [(w, int(self.standby))],
        )
        metric(
            "ingest_database_up",
            "gauge",
            "1 when the last write reached the database",
            [(w, 1 if self.db_up else 0)],
        )
        metric(
            "ingest_lag_ms",
            "gauge",
            "newest committed telemetry: receive time minus device ts",
            [(w, round(self.lag_ms_last, 1))],
        )
        metric(
            "ingest_last_commit_timestamp_seconds",
            "gauge",
            "Unix time of the last batch committed (alert when it stops moving under load)",
            [(w, round(self.last_commit_unix_s, 6))],
        )
        metric(
            "ingest_storage_job_problems",
            "gauge",
            "storage jobs failed or late (maintenance, TimescaleDB jobs); set by the jobs leader",
            [(w, self.storage_job_problems)],
        )
        name = "ingest_batch_latency_seconds"
        lines.append(f"# HELP {name} time from a batch's first message to its commit")
        lines.append(f"# TYPE {name} histogram")
        cumulative = 0
        for bound, count in zip((*LATENCY_BUCKETS_S, float("inf")), self.latency_buckets, strict=True):
            cumulative += count
            le = "+Inf" if bound == float("inf") else f"{bound}"
            lines.append(f'{name}_bucket{{{w},le="{le}"}} {cumulative}')
        lines.append(f"{name}_sum{{{w}}} {self.latency_sum_s:.6f}")
        lines.append(f"{name}_count{{{w}}} {self.batches}")
        return "\n".join(lines) + "\n"


def serve_metrics(metrics: IngestMetrics, host: str, port: int) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (Prometheus text), ``/health`` (200 while the database is up) and ``/ready``
    (200 once subscribed: devices that connect from now on are heard, births included) in a thread."""
    server = serve_status(
        {
            "/metrics": lambda: (200, metrics.exposition()),
            "/ready": lambda: check(metrics.subscribed, "subscribed", "not subscribed yet"),
            "/health": lambda: check(metrics.db_up, "ok", "database unreachable, spooling"),
        },
        host,
        port,
        name="ingest-metrics",
    )
    log.info("metrics_serving", url=f"http://{host}:{server.server_address[1]}/metrics")
    return server
