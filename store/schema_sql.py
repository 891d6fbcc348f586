"""The schema's SQL text: the core tables, the time series on either storage path (TimescaleDB
hypertables or native daily partitions), the hourly rollups, the late-row and job-watch tables,
and the constants they are built from. ``store.schema`` runs these as numbered migrations;
nothing here touches a database.

Over 500 lines on purpose: it is the schema itself, DDL text end to end, read as one document
(a table's columns here, its indexes and rollups a few screens below); split by table it would
scatter the one place a reader checks what the database holds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

# The telemetry interval the rollups assume for energy and uptime: each lamp sample stands for
# this many seconds (DESIGN.md / Settings.telemetry_interval_s defaults to 60 s).
ROLLUP_SAMPLE_S = 60

# Default retention per time-partitioned table (issue 4: telemetry 30 d, events 90 d).
DEFAULT_RETENTION: Mapping[str, timedelta] = {
    "telemetry": timedelta(days=30),
    "events": timedelta(days=90),
}
PARTITIONED_TABLES = tuple(DEFAULT_RETENTION)
# Compress chunks once they stop receiving late data (TimescaleDB path only).
COMPRESS_AFTER = timedelta(days=2)


# --------------------------------------------------------------------------- SQL: core tables

CORE_TABLES_SQL = """
CREATE TABLE districts (
    district_code text PRIMARY KEY,            -- 5-digit administrative code, e.g. 11230
    name_ko       text NOT NULL,
    name_en       text,
    geometry      jsonb                        -- GeoJSON geometry; PostGIS is not assumed
);

CREATE TABLE neighbourhoods (
    dong_code     text PRIMARY KEY,            -- administrative dong code
    district_code text NOT NULL REFERENCES districts (district_code),
    name_ko       text NOT NULL,
    name_en       text,
    geometry      jsonb
);
CREATE INDEX neighbourhoods_district ON neighbourhoods (district_code);

-- No foreign key to districts: a device's birth must never be refused because reference data
-- has not been loaded yet.
CREATE TABLE devices (
    device_id        text PRIMARY KEY,
    kind             text NOT NULL CHECK (kind IN ('lamp', 'blinker')),
    district_code    text NOT NULL,
    dong_code        text,
    lamp_number      text,
    lat              double precision,
    lon              double precision,
    firmware         text,
    model            text,
    paired_device_id text,
    provisioned      boolean NOT NULL DEFAULT false,
    credentials_hash text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_district ON devices (district_code, kind);

-- One row per device, written by ingest. No foreign key either: telemetry may precede birth.
CREATE TABLE device_state (
    device_id        text PRIMARY KEY,
    online           boolean NOT NULL DEFAULT false,
    bdseq            bigint,                   -- bdseq of the connection the state belongs to
    state_changed_at timestamptz,
    last_seen        timestamptz,
    last_seq         bigint,
    level            smallint,
    faults           text[] NOT NULL DEFAULT '{}',
    last_telemetry   jsonb,
    messages         bigint NOT NULL DEFAULT 0,
    seq_gaps         bigint NOT NULL DEFAULT 0,
    seq_duplicates   bigint NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE commands (
    cmd_id          text PRIMARY KEY,
    device_id       text NOT NULL,
    district_code   text,
    action          text NOT NULL CHECK (action IN ('set_level', 'blink', 'clear', 'config')),
    level           smallint,
    priority        text NOT NULL CHECK (priority IN ('sos', 'walk', 'manual', 'schedule')),
    source          text NOT NULL,             -- walk id, alert id or operator
    ttl_s           integer NOT NULL,
    sent_at         timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    status          text NOT NULL DEFAULT 'sent'
                    CHECK (status IN ('sent', 'applied', 'rejected', 'expired', 'unanswered')),
    acked_at        timestamptz,
    effective_level smallint,
    reason          text,
    attempts        integer NOT NULL DEFAULT 1
);
CREATE INDEX commands_device ON commands (device_id, sent_at DESC);
CREATE INDEX commands_waiting ON commands (sent_at) WHERE status = 'sent';
CREATE INDEX commands_source ON commands (source);

CREATE TABLE residents (
    resident_id text PRIMARY KEY,              -- pseudonymous, random; never a name or phone
    token_hash  text UNIQUE,                   -- hash of the per-install token; NULL once deleted
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE TABLE walks (
    walk_id       text PRIMARY KEY,
    resident_id   text NOT NULL,
    district_code text,
    started_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'ended', 'expired'))
);
CREATE INDEX walks_resident ON walks (resident_id, started_at DESC);
CREATE INDEX walks_active ON walks (started_at) WHERE status = 'active';

-- Short retention: deleted 24 h after the walk ends unless alert_id ties them to an SOS.
CREATE TABLE walk_positions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    walk_id     text NOT NULL REFERENCES walks (walk_id) ON DELETE CASCADE,
    ts          timestamptz NOT NULL,
    lat         double precision NOT NULL,
    lon         double precision NOT NULL,
    accuracy_m  real,
    heading_deg real,
    speed_m_s   real,
    accepted    boolean NOT NULL DEFAULT true,
    reason      text,                          -- why a position was refused or down-weighted
    alert_id    text
);
CREATE INDEX walk_positions_walk ON walk_positions (walk_id, ts);

CREATE TABLE alerts (
    alert_id         text PRIMARY KEY,
    kind             text NOT NULL,
    status           text NOT NULL,
    severity         text NOT NULL,
    district_codes   text[] NOT NULL,
    resident_id      text,
    walk_id          text,
    device_id        text,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    acknowledged_by  text,
    acknowledged_at  timestamptz,
    resolved_at      timestamptz,
    data             jsonb NOT NULL DEFAULT '{}'  -- the full alert as the alerts core renders it
);
CREATE INDEX alerts_districts ON alerts USING gin (district_codes);
CREATE INDEX alerts_status ON alerts (status, created_at DESC);
CREATE INDEX alerts_resident ON alerts (resident_id) WHERE resident_id IS NOT NULL;

-- Audit trail: append-only.
CREATE TABLE alert_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id text NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    ts       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    note     text,
    details  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, id);

-- An SOS track: kept for the SOS retention period, then coarsened.
CREATE TABLE alert_positions (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id   text NOT NULL REFERENCES alerts (alert_id) ON DELETE CASCADE,
    ts         timestamptz NOT NULL,
    lat        double precision NOT NULL,
    lon        double precision NOT NULL,
    accuracy_m real,
    coarsened  boolean NOT NULL DEFAULT false
);
CREATE INDEX alert_positions_alert ON alert_positions (alert_id, ts);

CREATE TABLE idempotency_keys (
    resident_id text NOT NULL,
    key         text NOT NULL,
    alert_id    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (resident_id, key)
);

CREATE TABLE operators (
    username      text PRIMARY KEY,
    password_hash text NOT NULL,
    role          text NOT NULL CHECK (role IN ('district', 'city', 'maintenance', 'admin')),
    district_code text,
    display_name  text,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'district' OR district_code IS NOT NULL)
);

-- Who read which resident's data, and when (privacy); append-only.
CREATE TABLE audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ts           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    action       text NOT NULL,
    subject_kind text NOT NULL,
    subject_id   text NOT NULL,
    details      jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_subject ON audit_log (subject_kind, subject_id, ts);

CREATE TABLE dead_letters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    topic       text NOT NULL,
    payload     bytea NOT NULL,                -- the bytes as received, valid UTF-8 or not
    reason      text NOT NULL,
    client_id   text
);
CREATE INDEX dead_letters_received ON dead_letters (received_at);

-- District ownership for sharded controllers (DESIGN.md §6): a row per district, renewed by
-- its owner; another controller takes it over once expires_at has passed.
CREATE TABLE controller_leases (
    district_code text PRIMARY KEY,
    owner         text NOT NULL,
    acquired_at   timestamptz NOT NULL,
    renewed_at    timestamptz NOT NULL,
    expires_at    timestamptz NOT NULL
);

-- Each run of the retention job, with what it did (privacy: runs are logged).
CREATE TABLE retention_runs (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ran_at  timestamptz NOT NULL DEFAULT now(),
    details jsonb NOT NULL
);
"""

# --------------------------------------------------------------------------- SQL: time series

# Lamps and blinkers share one table with nullable per-kind columns: one COPY stream and one
# dedup index for ingest, and a NULL costs one bit of the row's null bitmap.
TELEMETRY_COLUMNS_SQL = """
    ts        timestamptz NOT NULL,
    device_id text NOT NULL,
    bdseq     bigint NOT NULL DEFAULT 0,
    seq       bigint NOT NULL,
    level     smallint,
    power_w   real,
    voltage_v real,
    current_a real,
    temp_c    real,
    lux       real,
    faults    text[],
    rssi_dbm  smallint,
    battery_v real,
    blinking  boolean,
    sightings integer
"""

EVENTS_COLUMNS_SQL = """
    ts         timestamptz NOT NULL,
    device_id  text NOT NULL,
    bdseq      bigint NOT NULL DEFAULT 0,
    seq        bigint NOT NULL,
    type       text NOT NULL,
    code       text,
    token_hash text,
    rssi       smallint,
    payload    jsonb
"""

# The dedup key. A partitioned table's unique index must contain the partition key, so ts is in
# it; a redelivered message carries the same ts, seq and bdseq, so true redeliveries collide.
# ts comes second so the same index serves "this device's rows between t0 and t1".
DEDUP_INDEX_SQL = "CREATE UNIQUE INDEX {table}_dedup ON {table} (device_id, ts, seq, bdseq)"
EVENTS_TYPE_INDEX_SQL = "CREATE INDEX events_type_ts ON events (type, ts)"


def plain_timeseries_sql() -> list[str]:
    """The statements creating telemetry and events on native partitioning (plain path)."""
    stmts: list[str] = []
    for table, cols in (("telemetry", TELEMETRY_COLUMNS_SQL), ("events", EVENTS_COLUMNS_SQL)):
        stmts.append(f"CREATE TABLE {table} ({cols}) PARTITION BY RANGE (ts)")
        # A row outside every daily partition (late, or from a skewed clock) lands here instead
        # of failing the whole batch.
        stmts.append(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        stmts.append(DEDUP_INDEX_SQL.format(table=table))
    stmts.append(EVENTS_TYPE_INDEX_SQL)
    return stmts


def _interval(td: timedelta) -> str:
    return f"INTERVAL '{int(td.total_seconds())} seconds'"


def timescale_timeseries_sql(retention: Mapping[str, timedelta] = DEFAULT_RETENTION) -> list[str]:
    """The statements creating telemetry and events as TimescaleDB hypertables with policies."""
    stmts: list[str] = []
    for table, cols in (("telemetry", TELEMETRY_COLUMNS_SQL), ("events", EVENTS_COLUMNS_SQL)):
        stmts.append(f"CREATE TABLE {table} ({cols})")
        # No default ts index: the dedup index leads with device_id and chunk exclusion serves
        # time-range scans; migration 4 adds a BRIN index on ts for the rollup refreshes.
        stmts.append(
            f"SELECT create_hypertable('{table}', by_range('ts', INTERVAL '1 day'), "
            "create_default_indexes => FALSE, if_not_exists => TRUE)"
        )
        stmts.append(DEDUP_INDEX_SQL.format(table=table))
        # Every column of a unique index must be a segmentby or orderby column of the columnstore.
        stmts.append(
            f"ALTER TABLE {table} SET (timescaledb.enable_columnstore, "
            "timescaledb.segmentby = 'device_id', "
            "timescaledb.orderby = 'ts DESC, seq DESC, bdseq DESC')"
        )
        stmts.append(
            f"CALL add_columnstore_policy('{table}', after => {_interval(COMPRESS_AFTER)}, "
            "if_not_exists => TRUE)"
        )
        stmts.append(
            f"SELECT add_retention_policy('{table}', drop_after => {_interval(retention[table])}, "
            "if_not_exists => TRUE)"
        )
    stmts.append(EVENTS_TYPE_INDEX_SQL)
    return stmts


# --------------------------------------------------------------------------- SQL: rollups

# The per-lamp hour: the SELECT list is shared by the plain refresh and the continuous aggregate
# so both paths compute the same figures. Energy: each sample stands for ROLLUP_SAMPLE_S seconds
# of its power; uptime: seconds covered by samples, capped at the hour.
LAMP_HOUR_SELECT = f"""
    time_bucket_expr AS bucket,
    t.device_id,
    d.district_code,
    count(*) AS samples,
    min(t.level) AS level_min,
    avg(t.level)::double precision AS level_avg,
    max(t.level) AS level_max,
    avg(t.power_w)::double precision AS power_avg_w,
    (coalesce(sum(t.power_w), 0) * {ROLLUP_SAMPLE_S} / 3600.0)::double precision AS energy_wh,
    least(3600, count(*) * {ROLLUP_SAMPLE_S})::integer AS uptime_s
"""

PLAIN_ROLLUP_TABLES_SQL = """
CREATE TABLE telemetry_hourly_lamp (
    bucket        timestamptz NOT NULL,
    device_id     text NOT NULL,
    district_code text NOT NULL,
    samples       bigint NOT NULL,
    level_min     smallint,
    level_avg     double precision,
    level_max     smallint,
    power_avg_w   double precision,
    energy_wh     double precision NOT NULL,
    uptime_s      integer NOT NULL,
    PRIMARY KEY (bucket, device_id)
);
CREATE INDEX telemetry_hourly_lamp_device ON telemetry_hourly_lamp (device_id, bucket);

CREATE TABLE telemetry_hourly_district (
    bucket        timestamptz NOT NULL,
    district_code text NOT NULL,
    lamps_online  bigint NOT NULL,   -- lamps that reported in the hour
    energy_wh     double precision NOT NULL,
    PRIMARY KEY (bucket, district_code)
);
"""


def plain_lamp_hour_select() -> str:
    """The per-lamp hourly SELECT list for the plain path (date_trunc instead of time_bucket)."""
    return LAMP_HOUR_SELECT.replace("time_bucket_expr", "date_trunc('hour', t.ts)")


def timescale_rollup_sql() -> list[str]:
    """The continuous aggregates (hourly per lamp, hourly per district) and their refresh policies."""
    lamp_select = LAMP_HOUR_SELECT.replace("time_bucket_expr", "time_bucket(INTERVAL '1 hour', t.ts)")
    return [
        # A join with one regular table needs TimescaleDB >= 2.10; blinkers have no level, so
        # only lamps' rows count.
        "CREATE MATERIALIZED VIEW telemetry_hourly_lamp "
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
        f"SELECT {lamp_select} FROM telemetry t JOIN devices d ON t.device_id = d.device_id "
        "WHERE t.level IS NOT NULL "
        "GROUP BY time_bucket(INTERVAL '1 hour', t.ts), t.device_id, d.district_code "
        "WITH NO DATA",
        # Hierarchical continuous aggregate (TimescaleDB >= 2.9) on the per-lamp one.
        "CREATE MATERIALIZED VIEW telemetry_hourly_district "
        "WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS "
        "SELECT time_bucket(INTERVAL '1 hour', l.bucket) AS bucket, l.district_code, "
        "count(*) AS lamps_online, sum(l.energy_wh) AS energy_wh "
        "FROM telemetry_hourly_lamp l "
        "GROUP BY time_bucket(INTERVAL '1 hour', l.bucket), l.district_code "
        "WITH NO DATA",
        # Refresh the last few closed hours every 30 min; the open hour comes from real-time
        # aggregation (materialized_only = false).
        "SELECT add_continuous_aggregate_policy('telemetry_hourly_lamp', "
        "start_offset => INTERVAL '6 hours', end_offset => INTERVAL '1 hour', "
        "schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE)",
        "SELECT add_continuous_aggregate_policy('telemetry_hourly_district', "
        "start_offset => INTERVAL '7 hours', end_offset => INTERVAL '1 hour', "
        "schedule_interval => INTERVAL '30 minutes', if_not_exists => TRUE)",
    ]


# --------------------------------------------------------------------------- SQL: late rows, job watch

# Rows older than this (by the writer's clock) when written are "late": the regular rollup refresh
# (from its last run minus a 3 h look-back) may have passed their hour, so the writer records the
# hour in rollup_dirty_hours and the next refresh recomputes it (plain path). On TimescaleDB the
# continuous aggregates' own invalidation log records every changed range whatever its age.
LATE_AFTER = timedelta(hours=1)

JOBS_SQL = """
-- Hours that received late telemetry and must be recomputed by the next rollup refresh.
CREATE TABLE rollup_dirty_hours (
    hour      timestamptz PRIMARY KEY,
    marked_at timestamptz NOT NULL DEFAULT now()
);

-- The project's own storage jobs (the maintenance job on either path): when each last started,
-- succeeded and failed, so a failing or stalled job is seen (readyz, metrics, one alert).
CREATE TABLE storage_job_runs (
    job             text PRIMARY KEY,
    last_start      timestamptz,
    last_success    timestamptz,
    last_failure    timestamptz,
    last_error      text,
    failures_in_row integer NOT NULL DEFAULT 0
);
"""

# Block-range index on ts: a refresh of one hour reads the blocks of that hour instead of the
# whole day partition/chunk (the dedup index leads with device_id); rows arrive nearly in ts
# order, so ranges stay narrow, and it costs ingest a fraction of a B-tree (docs/benchmarks.md).
TS_BRIN_SQL = "CREATE INDEX telemetry_ts_brin ON telemetry USING brin (ts)"

# One job refreshes both continuous aggregates in order (lamp, then district built on it), so the
# district figures never lag the lamp figures by a cycle. The window reaches back to what raw
# retention still holds (minus an hour of margin, never into dropped chunks, whose invalidations
# would wipe materialised hours): late rows of any age within retention are materialised.
TS_REFRESH_PROCEDURE_SQL = """
CREATE OR REPLACE PROCEDURE streetlight_refresh_rollups(job_id integer, config jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    retained interval;
    window_start timestamptz;
    window_end timestamptz := now() - (config->>'end_offset')::interval;
BEGIN
    SELECT (j.config->>'drop_after')::interval INTO retained
    FROM timescaledb_information.jobs j
    WHERE j.proc_name = 'policy_retention' AND j.hypertable_name = 'telemetry';
    window_start := now() - (config->>'start_offset')::interval;
    IF retained IS NOT NULL THEN
        window_start := greatest(window_start, now() - retained + interval '1 hour');
    END IF;
    CALL refresh_continuous_aggregate('telemetry_hourly_lamp', window_start, window_end);
    COMMIT;
    CALL refresh_continuous_aggregate('telemetry_hourly_district', window_start, window_end);
END
$$
"""
ROLLUP_JOB_EVERY = timedelta(minutes=30)


def timescale_jobs_sql(retention: Mapping[str, timedelta] = DEFAULT_RETENTION) -> list[str]:
    """Migration 4 on TimescaleDB: one ordered refresh job over the retained window, BRIN on ts,
    events in the columnstore without segment-by (sparse: a few rows per device and day)."""
    start = retention["telemetry"] - timedelta(days=1)
    config = f'{{"start_offset": "{int(start.total_seconds())} seconds", "end_offset": "3600 seconds"}}'
    return [
        JOBS_SQL,
        TS_BRIN_SQL,
        "SELECT remove_continuous_aggregate_policy('telemetry_hourly_lamp', if_exists => TRUE)",
        "SELECT remove_continuous_aggregate_policy('telemetry_hourly_district', if_exists => TRUE)",
        TS_REFRESH_PROCEDURE_SQL,
        "SELECT add_job('streetlight_refresh_rollups', "
        f"{_interval(ROLLUP_JOB_EVERY)}, config => '{config}'::jsonb)",
        "ALTER TABLE events SET (timescaledb.segmentby = '', "
        "timescaledb.orderby = 'device_id, ts DESC, seq DESC, bdseq DESC')",
    ]


# An hour's district in the aggregates is the lamp's district as registered: when a device row
# appears (telemetry may come before the birth) or its district changes, its stored hours within
# raw retention are marked for the next refresh to recompute (both paths; on TimescaleDB a forced
# refresh of those hours). The lookup uses the dedup index (device_id, ts, ...) and runs only on
# those two rare writes, never on a plain re-birth.
DEVICE_DISTRICT_TRIGGER_SQL = """
CREATE FUNCTION streetlight_mark_device_hours() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rollup_dirty_hours (hour)
    SELECT DISTINCT date_trunc('hour', t.ts) FROM telemetry t
    WHERE t.device_id = NEW.device_id AND t.ts >= now() - interval '%(days)s days'
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER devices_mark_hours_on_insert AFTER INSERT ON devices
    FOR EACH ROW EXECUTE FUNCTION streetlight_mark_device_hours();
CREATE TRIGGER devices_mark_hours_on_move AFTER UPDATE OF district_code ON devices
    FOR EACH ROW WHEN (OLD.district_code IS DISTINCT FROM NEW.district_code)
    EXECUTE FUNCTION streetlight_mark_device_hours();
"""


# Operators' sessions (a token is checked against its session and the account as they are now),
# the places each operator logged in from (never locked out from there), and the source of each SOS
# (an HMAC of the client address, never the address) so a burst from one source is grouped.
ACCOUNTS_AND_SOS_SOURCE_SQL = """
CREATE TABLE operator_sessions (
    session_id  text PRIMARY KEY,              -- random; carried in the signed token
    username    text NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX operator_sessions_user ON operator_sessions (username) WHERE revoked_at IS NULL;

CREATE TABLE operator_login_places (
    username    text NOT NULL REFERENCES operators (username) ON DELETE CASCADE,
    address     text NOT NULL,
    first_at    timestamptz NOT NULL DEFAULT now(),
    last_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (username, address)
);

ALTER TABLE alerts ADD COLUMN source_key text;
ALTER TABLE alerts ADD COLUMN burst_group text;
ALTER TABLE alerts ADD COLUMN suspected_burst boolean NOT NULL DEFAULT false;
CREATE INDEX alerts_source ON alerts (source_key, created_at) WHERE source_key IS NOT NULL;
"""


LAMP_REGISTER_SQL = """
ALTER TABLE devices ADD COLUMN address text;           -- road address, else the lot address
ALTER TABLE devices ADD COLUMN lamp_count integer;     -- lamps on the pole (설치개수)
CREATE INDEX devices_dong ON devices (dong_code) WHERE dong_code IS NOT NULL;
"""

# The operator's working day: history search pages by (created_at, alert_id) newest first, and
# the shift hand-over reads the timeline's events by time.
ALERT_HISTORY_SQL = """
CREATE INDEX alerts_created_id ON alerts (created_at DESC, alert_id DESC);
CREATE INDEX alert_events_ts ON alert_events (ts);
"""

# Commands an operator can follow: the API writes an override's row as ``pending`` (with its
# cmd_id) in the transaction of its note; a command the controller could not send is
# ``undelivered`` with its reason (unknown_device, offline, ...).
OPERATOR_COMMANDS_SQL = """
ALTER TABLE commands DROP CONSTRAINT commands_status_check;
ALTER TABLE commands ADD CONSTRAINT commands_status_check CHECK (status IN
    ('pending', 'sent', 'applied', 'rejected', 'expired', 'unanswered', 'undelivered'));
CREATE INDEX commands_pending ON commands (district_code, sent_at) WHERE status = 'pending';
CREATE INDEX commands_manual ON commands (device_id, sent_at DESC) WHERE priority = 'manual';
"""

# The camera register (전국CCTV표준데이터), written by `streetlight provision --cameras`.
CAMERAS_SQL = """
CREATE TABLE cameras (
    camera_id      text PRIMARY KEY,
    lat            double precision NOT NULL,
    lon            double precision NOT NULL,
    district_code  text NOT NULL,
    dong_code      text,
    management_no  text,
    gov_code       text,
    organisation   text,
    road_address   text,
    lot_address    text,
    purpose        text,
    camera_count   integer,
    pixels         integer,
    facing         text,
    retention_days integer,
    installed      text,
    phone          text,
    data_date      text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cameras_district ON cameras (district_code);
"""
