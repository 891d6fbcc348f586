"""Ingest: every lamp and blinker message from MQTT into PostgreSQL, nothing acknowledged lost.

One worker per process (``streetlight ingest --workers N``); see docs/ingest.md for the design,
the guarantees, the spool, the metrics and the measured figures.
"""

from ingest._alerts import Locator, new_alert_id, offline_reports, raise_fault_alerts, raise_offline_alerts
from ingest._amqp import AmqpIngestWorker, declare_ingest_queue
from ingest._jobs import JOBS_LOCK_KEY, JobsLeader
from ingest._lease import ConsumerLease, lease_key
from ingest._metrics import IngestMetrics, serve_metrics
from ingest._process import (
    ROW_BDSEQ,
    DeadLetter,
    DeviceBatch,
    Processed,
    RawMessage,
    SenderCheckFn,
    SeqTracker,
    ack_seq,
    process,
)
from ingest._registry import DatabaseRegistry, redact_group, retired_share_group, share_group
from ingest._senders import file_registry_lookup, sender_checker
from ingest._sharecheck import probe_shared_subscriptions, shared_subscriptions_ignored
from ingest._spool import Spool, SpoolFull, SpoolLocked
from ingest._worker import IngestWorker, WorkerConfig
from ingest._write import WriteResult, write_batch

__all__ = [
    "JOBS_LOCK_KEY",
    "ROW_BDSEQ",
    "AmqpIngestWorker",
    "ConsumerLease",
    "DatabaseRegistry",
    "DeadLetter",
    "DeviceBatch",
    "IngestMetrics",
    "IngestWorker",
    "JobsLeader",
    "Locator",
    "Processed",
    "RawMessage",
    "SenderCheckFn",
    "SeqTracker",
    "Spool",
    "SpoolFull",
    "SpoolLocked",
    "WorkerConfig",
    "WriteResult",
    "ack_seq",
    "declare_ingest_queue",
    "file_registry_lookup",
    "lease_key",
    "new_alert_id",
    "offline_reports",
    "probe_shared_subscriptions",
    "process",
    "raise_fault_alerts",
    "raise_offline_alerts",
    "redact_group",
    "retired_share_group",
    "sender_checker",
    "serve_metrics",
    "share_group",
    "shared_subscriptions_ignored",
    "write_batch",
]
