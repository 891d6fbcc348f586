"""The generated SQL of both storage paths, checked without a database (TimescaleDB is not here)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from alerts import ACTIVE_STATES
from store.alerts import active_clause
from store.filters import Where
from store.partitions import partition_name
from store.schema import MIGRATIONS
from store.schema_sql import (
    DEDUP_INDEX_SQL,
    plain_lamp_hour_select,
    plain_timeseries_sql,
    timescale_jobs_sql,
    timescale_rollup_sql,
    timescale_timeseries_sql,
)
from store.writer import EVENT_FIELDS, EVENT_TYPES, LAYOUTS, TELEMETRY_FIELDS, TELEMETRY_TYPES


def _joined(stmts: list[str]) -> str:
    return "\n".join(stmts)


def test_migrations_are_numbered_strictly_upwards_from_one() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1))


def test_the_timescale_path_makes_telemetry_and_events_daily_hypertables() -> None:
    sql = _joined(timescale_timeseries_sql())
    for table in ("telemetry", "events"):
        assert f"SELECT create_hypertable('{table}', by_range('ts', INTERVAL '1 day')" in sql
        assert f"CREATE TABLE {table} (" in sql
    assert "PARTITION BY" not in sql


def test_the_timescale_path_uses_the_columnstore_api_by_device_and_sets_retention_per_table() -> None:
    stmts = timescale_timeseries_sql({"telemetry": timedelta(days=30), "events": timedelta(days=90)})
    sql = _joined(stmts)
    assert sql.count("timescaledb.enable_columnstore, timescaledb.segmentby = 'device_id'") == 2
    assert "CALL add_columnstore_policy('telemetry', after => INTERVAL" in sql
    for deprecated in ("add_compression_policy", "timescaledb.compress", "chunk_time_interval =>"):
        assert deprecated not in sql
    assert "add_retention_policy('telemetry', drop_after => INTERVAL '2592000 seconds'" in sql
    assert "add_retention_policy('events', drop_after => INTERVAL '7776000 seconds'" in sql
    # Compression policies need compression enabled first, and that needs the hypertable.
    for table in ("telemetry", "events"):
        order = [
            next(i for i, s in enumerate(stmts) if needle in s)
            for needle in (
                f"create_hypertable('{table}'",
                f"ALTER TABLE {table} SET",
                f"add_columnstore_policy('{table}'",
            )
        ]
        assert order == sorted(order)


def test_every_dedup_key_column_is_a_segmentby_or_orderby_column_of_compression() -> None:
    key = re.search(r"\((.*)\)", DEDUP_INDEX_SQL)
    assert key is not None
    settings = [s for s in timescale_timeseries_sql() + timescale_jobs_sql() if "timescaledb.orderby" in s]
    assert len(settings) == 3  # telemetry, events, then events again without segment-by
    for stmt in settings:
        for column in (c.strip() for c in key.group(1).split(",")):
            assert column in stmt


def test_the_timescale_path_defines_the_two_hourly_continuous_aggregates_with_policies() -> None:
    lamp, district, lamp_policy, district_policy = timescale_rollup_sql()
    assert lamp.startswith("CREATE MATERIALIZED VIEW telemetry_hourly_lamp WITH (timescaledb.continuous")
    assert "time_bucket(INTERVAL '1 hour', t.ts) AS bucket" in lamp
    assert "FROM telemetry_hourly_lamp" in district and "timescaledb.continuous" in district
    for view in (lamp, district):
        assert view.endswith("WITH NO DATA")  # allowed inside the migration's transaction
    assert "add_continuous_aggregate_policy('telemetry_hourly_lamp'" in lamp_policy
    assert "add_continuous_aggregate_policy('telemetry_hourly_district'" in district_policy
    for policy in (lamp_policy, district_policy):
        assert (
            "start_offset => " in policy and "end_offset => " in policy and "schedule_interval => " in policy
        )


def test_both_paths_compute_the_lamp_hour_with_the_same_columns() -> None:
    lamp = timescale_rollup_sql()[0]
    plain = plain_lamp_hour_select()
    assert "date_trunc('hour', t.ts) AS bucket" in plain
    for column in ("samples", "level_min", "level_avg", "level_max", "power_avg_w", "energy_wh", "uptime_s"):
        assert f"AS {column}" in plain and f"AS {column}" in lamp


def test_the_plain_path_partitions_by_time_with_a_default_partition() -> None:
    sql = _joined(plain_timeseries_sql())
    assert "CREATE TABLE telemetry (" in sql and "PARTITION BY RANGE (ts)" in sql
    assert "CREATE TABLE telemetry_default PARTITION OF telemetry DEFAULT" in sql
    assert "CREATE TABLE events_default PARTITION OF events DEFAULT" in sql
    assert "timescaledb" not in sql and "create_hypertable" not in sql


def test_partition_names_carry_the_utc_day() -> None:
    assert partition_name("telemetry", date(2026, 1, 2)) == "telemetry_p20260102"


def test_the_writer_layouts_match_their_field_lists_and_skip_duplicates() -> None:
    assert len(TELEMETRY_FIELDS) == len(TELEMETRY_TYPES)
    assert len(EVENT_FIELDS) == len(EVENT_TYPES)
    for kind in ("telemetry", "events"):
        assert LAYOUTS[kind].insert_sql.endswith("ON CONFLICT DO NOTHING")
        assert "ON COMMIT DELETE ROWS" in LAYOUTS[kind].stage_ddl


def test_the_where_builder_adds_only_the_filters_given_with_their_values_as_parameters() -> None:
    assert Where().equals("kind", None).any_of("status", None).sql == ""
    since = datetime(2024, 5, 1, tzinfo=UTC)
    where = (
        Where()
        .add("(a = ANY(%s) OR b > %s)", ["x"], 7)
        .overlaps("district_codes", ("11020",))
        .any_of("kind", [])
        .equals("data->>'source_id'", "res-1")
        .at_least("created_at", since)
    )
    assert where.sql == (
        " WHERE (a = ANY(%s) OR b > %s) AND district_codes && %s AND kind = ANY(%s)"
        " AND data->>'source_id' = %s AND created_at >= %s"
    )
    assert where.params == [["x"], 7, ["11020"], [], "res-1", since]
    assert where.sql.count("%s") == len(where.params)


def test_the_store_spells_an_active_alert_from_the_cores_one_list() -> None:
    clause, states = active_clause("a.status")
    assert clause == "a.status = ANY(%s)"
    assert states == [s.value for s in ACTIVE_STATES]
