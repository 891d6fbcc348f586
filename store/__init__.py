"""PostgreSQL/TimescaleDB storage: schema and migrations, the COPY batch writer, repositories, jobs.

Public names by module (the most used also importable from ``store``)::

    schema      apply_migrations, migrate, MigrationReport, timescale_enabled, schema_version
    schema_sql  the schema's SQL text (tables, time series, rollups) and its constants
    partitions  ensure_partitions, drop_expired_partitions (the plain path's daily partitions)
    connections connect, async_connection, connect_or_unavailable, batch_transaction, savepoint
    pools       sync_pool, async_pool (the API's)
    writer      write_telemetry, write_events, write_rows, BatchWriter, Batch,
                TELEMETRY_FIELDS, EVENT_FIELDS
    devices     upsert_device, set_connectivity, start_connection, update_device_states, StateUpdate,
                get_device, list_devices_with_state, silent_devices, active_overrides,
                insert_dead_letters, list_dead_letters, lamp_hours, district_hours
    walks       create_resident, resident_by_token_hash, delete_resident, start_walk, end_walk,
                get_walk, add_walk_positions, walk_positions, attach_walk_to_alert, active_walkers
    alerts      upsert_alert, append_alert_event, get_alert, list_alerts, alert_events,
                add_alert_positions, alert_track, claim_idempotency_key, active_clause,
                stream_catch_up, last_event_id; save_alert, load_alert, change_alert,
                active_alerts (alerts.Alert <-> rows)
    notes       the wake-up channels and their typed payloads: notify, decode
    listen      listening (a LISTENing connection), connection (a plain async one)
    operators   upsert_operator, get_operator, log_access, sessions, login places, audit_entries,
                the audit hash chain (audit_chain)
    privacy     SOS documents coarsened, deleted residents' alerts unlinked, a resident's export
    commands    insert_commands, CommandRecord, record_ack, record_acks, mark_unanswered,
                command_status_counts, get_command, write_batch (the controller's write queue),
                insert_pending, settle_unsent, pending_commands, operator_command,
                lamp_operator_commands (operators' commands and their status)
    leases      acquire_lease, release_lease, lease_owners, lease_round, LeaseConnection
    filters     Where (the one dynamic WHERE builder)
    jobs        refresh_rollups, run_retention, RetentionPolicy, run_maintenance, raw_retained_from,
                storage_job_problems, storage_jobs_report, JobProblem
    errors      StoreError, StoreUnavailable, StoreRejected, BufferFull, MigrationError
"""

from store.alerts import (
    add_alert_positions,
    alert_events,
    alert_track,
    append_alert_event,
    claim_idempotency_key,
    get_alert,
    list_alerts,
    upsert_alert,
)
from store.commands import (
    CommandRecord,
    command_status_counts,
    get_command,
    insert_commands,
    mark_unanswered,
    record_ack,
    record_acks,
)
from store.devices import (
    StateUpdate,
    district_hours,
    get_device,
    insert_dead_letters,
    lamp_hours,
    list_dead_letters,
    list_devices_with_state,
    set_connectivity,
    silent_devices,
    start_connection,
    update_device_states,
    upsert_device,
)
from store.errors import BufferFull, MigrationError, StoreError, StoreRejected, StoreUnavailable
from store.jobs import (
    JobProblem,
    RetentionPolicy,
    RollupRun,
    raw_retained_from,
    refresh_rollups,
    run_maintenance,
    run_retention,
    storage_job_problems,
    storage_jobs_report,
)
from store.leases import acquire_lease, lease_owners, release_lease
from store.operators import get_operator, log_access, upsert_operator
from store.partitions import drop_expired_partitions, ensure_partitions
from store.schema import MigrationReport, apply_migrations, migrate, schema_version, timescale_enabled
from store.types import Conn
from store.walks import (
    add_walk_positions,
    attach_walk_to_alert,
    create_resident,
    delete_resident,
    end_walk,
    get_walk,
    resident_by_token_hash,
    start_walk,
    walk_positions,
)
from store.writer import (
    EVENT_FIELDS,
    TELEMETRY_FIELDS,
    Batch,
    BatchWriter,
    write_events,
    write_rows,
    write_telemetry,
)

__all__ = [
    "EVENT_FIELDS",
    "TELEMETRY_FIELDS",
    "Batch",
    "BatchWriter",
    "BufferFull",
    "CommandRecord",
    "Conn",
    "JobProblem",
    "MigrationError",
    "MigrationReport",
    "RetentionPolicy",
    "RollupRun",
    "StateUpdate",
    "StoreError",
    "StoreRejected",
    "StoreUnavailable",
    "acquire_lease",
    "add_alert_positions",
    "add_walk_positions",
    "alert_events",
    "alert_track",
    "append_alert_event",
    "apply_migrations",
    "attach_walk_to_alert",
    "claim_idempotency_key",
    "command_status_counts",
    "create_resident",
    "delete_resident",
    "district_hours",
    "drop_expired_partitions",
    "end_walk",
    "ensure_partitions",
    "get_alert",
    "get_command",
    "get_device",
    "get_operator",
    "get_walk",
    "insert_commands",
    "insert_dead_letters",
    "lamp_hours",
    "lease_owners",
    "list_alerts",
    "list_dead_letters",
    "list_devices_with_state",
    "log_access",
    "mark_unanswered",
    "migrate",
    "raw_retained_from",
    "record_ack",
    "record_acks",
    "refresh_rollups",
    "release_lease",
    "resident_by_token_hash",
    "run_maintenance",
    "run_retention",
    "schema_version",
    "set_connectivity",
    "silent_devices",
    "start_connection",
    "start_walk",
    "storage_job_problems",
    "storage_jobs_report",
    "timescale_enabled",
    "update_device_states",
    "upsert_alert",
    "upsert_device",
    "upsert_operator",
    "walk_positions",
    "write_events",
    "write_rows",
    "write_telemetry",
]
