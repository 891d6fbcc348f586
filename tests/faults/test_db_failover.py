"""Issue 23 item 3: the PostgreSQL primary SIGKILLed, its streaming standby promoted, nothing lost.

Plain PostgreSQL 15 (a primary and a hot standby from ``pg_basebackup -R`` with a replication
slot, synchronous replication); TimescaleDB replicates the same way (physical WAL), so the
failover needs no TimescaleDB here. Figures go to ``.test-output/faults/8_db_failover.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devkit.faults.failover import db_failover
from devkit.faults.harness import write_figures
from devkit.localservices import pg_replication_installed
from tests.conftest import skip_unless

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("needs_mosquitto")]


def test_primary_killed_standby_promoted_nothing_acknowledged_lost_sos_refused_then_accepted(
    tmp_path: Path, figures_dir: Path
) -> None:
    skip_unless(
        pg_replication_installed(), "initdb/pg_ctl/pg_basebackup (PostgreSQL server binaries) for a standby"
    )
    f = db_failover(tmp_path, rate=300, before_s=4, promote_after_s=3, after_s=6, sos=9, synchronous=True)
    write_figures(figures_dir, "8_db_failover", f)
    assert f["new_primary_in_recovery"] is False
    # telemetry: everything the broker acknowledged is on the new primary, once
    assert f["sent"] == f["acked_by_broker"] > 0
    assert f["lost_after_puback"] == 0, "a message the broker acknowledged was lost with the primary"
    assert f["lost"] == 0 and f["duplicates"] == 0
    assert f["rows"] == f["distinct"] == f["sent"]
    assert f["spooled"] > 0 and f["replayed"] >= f["spooled"] and f["dropped"] == 0
    assert f["ingest_first_write_s_after_kill"] is not None
    # SOS: refused with 503 + Retry-After while no server accepts writes, accepted after, stored once
    assert f["sos_accepted"] == f["sos_raised"] == 9
    assert f["sos_refused_503_then_accepted"] >= 1 and f["sos_retry_after_header"]
    assert f["sos_accepted_missing"] == 0 and f["sos_stored"] == 9 and f["sos_stored_twice"] == 0
    assert f["sos_at_centre"] == 9, "the controller reconnected to the new primary and routed every SOS"
    assert f["sos_first_accepted_s_after_kill"] is not None
    assert f["seconds"] < 120
