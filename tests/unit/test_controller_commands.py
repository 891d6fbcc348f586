"""The states of a lamp command (pure): which moves are allowed, and what becomes of an
operator's pending command when the controller reads it."""

from __future__ import annotations

import re

import pytest

from controller._commands import (
    FINAL_STATES,
    NOT_SENT,
    OFFLINE,
    TRANSITIONS,
    UNKNOWN_DEVICE,
    CommandState,
    Unsent,
    may_move,
    unsent_verdict,
)
from store import commands as store_commands

S = CommandState


def test_every_state_has_its_transitions_and_the_final_ones_have_none() -> None:
    assert set(TRANSITIONS) == set(CommandState)
    assert {S.APPLIED, S.REJECTED, S.EXPIRED, S.UNDELIVERED} == FINAL_STATES


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        ("pending", "sent", True),
        ("pending", "undelivered", True),
        ("pending", "expired", True),
        ("pending", "applied", True),  # the ack overtook the row's "sent"
        ("pending", "unanswered", False),  # never sent: it cannot go unanswered
        ("sent", "applied", True),
        ("sent", "rejected", True),
        ("sent", "unanswered", True),
        ("sent", "undelivered", False),
        ("sent", "pending", False),
        ("unanswered", "applied", True),  # a late ack still counts
        ("unanswered", "sent", False),
        ("applied", "rejected", False),
        ("rejected", "applied", False),
        ("undelivered", "sent", False),
        ("expired", "applied", False),
        ("bogus", "sent", False),
        ("sent", "bogus", False),
    ],
)
def test_moves_between_states(current: str, new: str, allowed: bool) -> None:
    assert may_move(current, new) is allowed


def test_the_store_only_settles_commands_in_the_states_the_core_allows() -> None:
    """The SQL's ``status IN (...)`` conditions are the transitions of the pure core."""
    answerable = {s for s, nexts in TRANSITIONS.items() if S.APPLIED in nexts}
    import inspect

    src = inspect.getsource(store_commands)
    for fn in ("record_ack", "record_acks"):
        body = inspect.getsource(getattr(store_commands, fn))
        found = re.search(r"status IN \(([^)]*)\)", body)
        assert found is not None, fn
        assert {x.strip(" '") for x in found.group(1).split(",")} == answerable
    unsent = inspect.getsource(store_commands.settle_unsent)
    assert "c.status = 'pending'" in unsent and "undelivered" in src


NOW = 1_000_000


def test_a_known_online_lamp_gets_its_command() -> None:
    assert (
        unsent_verdict(district="11140", device_district="11140", online=True, expires_ms=None, now_ms=NOW)
        is None
    )
    assert (
        unsent_verdict(district="11140", device_district="11140", online=True, expires_ms=NOW + 1, now_ms=NOW)
        is None
    )


def test_an_unknown_lamp_or_one_gone_to_another_district_is_undelivered() -> None:
    for device_district in (None, "11110"):
        verdict = unsent_verdict(
            district="11140", device_district=device_district, online=True, expires_ms=None, now_ms=NOW
        )
        assert verdict == Unsent(S.UNDELIVERED, UNKNOWN_DEVICE)


def test_an_offline_lamp_is_undelivered_and_a_command_past_its_time_expired_unsent() -> None:
    assert unsent_verdict(
        district="11140", device_district="11140", online=False, expires_ms=None, now_ms=NOW
    ) == Unsent(S.UNDELIVERED, OFFLINE)
    # Expiry first: a command too late is expired whatever became of its lamp.
    assert unsent_verdict(
        district="11140", device_district=None, online=False, expires_ms=NOW, now_ms=NOW
    ) == Unsent(S.EXPIRED, NOT_SENT)
    for verdict in (Unsent(S.UNDELIVERED, OFFLINE), Unsent(S.EXPIRED, NOT_SENT)):
        assert may_move(S.PENDING, verdict.state)
