"""Which exact state topics ingest asks for and gives up (ingest/_resync.py), without a broker."""

from __future__ import annotations

import pytest

from ingest import _resync
from ingest._resync import StateResync, chunks


def test_a_device_heard_without_a_state_is_asked_for_once_and_dropped_when_its_state_arrives() -> None:
    r = StateResync(wait_s=10.0)
    ask, drop = r.after_batch([("11140", "lamp-1"), ("11140", "lamp-2")], ["lamp-2"], now_s=0.0)
    assert ask == ["sl/v1/11140/lamp-1/state"] and drop == []
    assert r.after_batch([("11140", "lamp-1")], [], now_s=1.0) == ([], [])  # asked already
    assert r.after_batch([], ["lamp-1"], now_s=2.0) == ([], ["sl/v1/11140/lamp-1/state"])
    assert r.after_batch([("11140", "lamp-1")], [], now_s=3.0) == ([], [])  # known now


def test_a_device_without_a_retained_state_is_given_up_after_the_wait_and_not_asked_again() -> None:
    r = StateResync(wait_s=10.0)
    r.after_batch([("11140", "lamp-9")], [], now_s=0.0)
    assert r.expired(9.9) == []
    assert r.expired(10.0) == ["sl/v1/11140/lamp-9/state"]
    assert r.after_batch([("11140", "lamp-9")], [], now_s=11.0) == ([], [])


def test_a_subscription_that_could_not_be_sent_is_asked_again_when_the_device_is_heard_again() -> None:
    r = StateResync()
    ask, _ = r.after_batch([("11140", "lamp-3")], [], now_s=0.0)
    r.forget_asked(ask)
    assert r.after_batch([("11140", "lamp-3")], [], now_s=1.0)[0] == ask


def test_topics_are_cut_into_packets_of_at_most_the_size_given() -> None:
    assert [len(c) for c in chunks([str(i) for i in range(450)], 200)] == [200, 200, 50]


def test_the_memory_of_known_devices_is_bounded_and_starts_again_past_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_resync, "MAX_REMEMBERED", 3)
    r = StateResync()
    r.after_batch([], [f"fake-{i}" for i in range(4)], now_s=0.0)
    ask, _ = r.after_batch([("11140", "fake-0")], [], now_s=1.0)
    assert ask == ["sl/v1/11140/fake-0/state"]  # forgotten, so asked once more
