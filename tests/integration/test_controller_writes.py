"""The controller's batched command records end as the rows applied one by one would (real PostgreSQL)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from controller._commands import LampCommand
from controller._writes import command_record
from store import migrate
from store.commands import AckRow, CommandWrite, UnansweredRows, write_batch

pytestmark = pytest.mark.integration

Conn = psycopg.Connection[Any]

_ONE_BY_ONE = {
    "cmd": "INSERT INTO commands (cmd_id, device_id, district_code, action, level, priority, source, ttl_s, "
    "sent_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s / 1000.0), "
    "to_timestamp(%s / 1000.0) + make_interval(secs => %s)) ON CONFLICT (cmd_id) DO UPDATE SET "
    "attempts = commands.attempts + 1, sent_at = EXCLUDED.sent_at, expires_at = EXCLUDED.expires_at",
    "ack": "UPDATE commands SET status = %s, acked_at = now(), effective_level = %s, reason = %s "
    "WHERE cmd_id = %s AND status IN ('sent', 'unanswered')",
    "unanswered": "UPDATE commands SET status = 'unanswered' WHERE cmd_id = %s AND status = 'sent'",
}


@pytest.fixture
def conn(db_url: str) -> Iterator[Conn]:
    migrate(db_url, timescale=False)  # the plain path, pinned
    with psycopg.connect(db_url, autocommit=True) as c:
        yield c


def _events(rng: random.Random, n: int) -> list[tuple[str, Any]]:
    """A plausible stream: acks and give-ups only for commands already sent; some commands re-sent."""
    sent: list[LampCommand] = []
    out: list[tuple[str, Any]] = []
    for k in range(n):
        roll = rng.random()
        if not sent or roll < 0.4:
            cmd = LampCommand(f"c{len(sent)}", f"lamp-{k % 7}", "11020", "set_level", "walk", "walk-1",
                              1_764_000_000_000 + k, 30, 100)  # fmt: skip
            sent.append(cmd)
            out.append(("cmd", cmd))
        elif roll < 0.5:
            out.append(("cmd", rng.choice(sent)))  # a retry, same cmd_id
        elif roll < 0.85:
            status = rng.choice(["applied", "applied", "rejected", "expired"])
            level = 100 if status == "applied" else None
            out.append(("ack", (rng.choice(sent).cmd_id, status, level, None if level else "busy")))
        else:
            out.append(("unanswered", [rng.choice(sent).cmd_id for _ in range(rng.randint(1, 3))]))
    return out


def _one_by_one(conn: Conn, events: list[tuple[str, Any]]) -> None:
    for kind, data in events:
        if kind == "cmd":
            c = data
            row = (c.cmd_id, c.device_id, c.district, c.action, c.level, c.priority, c.source, c.ttl_s)
            conn.execute(_ONE_BY_ONE["cmd"], (*row, c.ts_ms, c.ts_ms, c.ttl_s))
        elif kind == "ack":
            cmd_id, status, level, reason = data
            conn.execute(_ONE_BY_ONE["ack"], (status, level, reason, cmd_id))
        else:
            for cmd_id in data:
                conn.execute(_ONE_BY_ONE["unanswered"], (cmd_id,))


def _typed(events: list[tuple[str, Any]]) -> list[CommandWrite]:
    """The events as the controller queues them."""
    out: list[CommandWrite] = []
    for kind, data in events:
        if kind == "cmd":
            out.append(command_record(data))
        elif kind == "ack":
            out.append(AckRow(*data))
        else:
            out.append(UnansweredRows(tuple(data)))
    return out


def _table(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT cmd_id, device_id, action, level, priority, source, ttl_s, status, attempts, "
        "acked_at IS NOT NULL, effective_level, reason FROM commands ORDER BY cmd_id"
    ).fetchall()


def test_batched_command_rows_end_as_the_rows_applied_one_by_one(conn: Conn) -> None:
    rng = random.Random(5)
    for _ in range(25):
        events = _events(rng, rng.randint(1, 60))
        conn.execute("TRUNCATE commands")
        _one_by_one(conn, events)
        expected = _table(conn)
        conn.execute("TRUNCATE commands")
        cut = sorted(rng.sample(range(1, len(events)), k=min(len(events) - 1, rng.randint(0, 3))))
        for a, b in zip([0, *cut], [*cut, len(events)], strict=True):
            write_batch(conn, _typed(events[a:b]))  # batches as the writer gathers them
        assert _table(conn) == expected, events
