"""The controller's pure decisions: position checks, holds, blink sets, command tracking, leases."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import decode
from controller import (
    BlinkPolicy,
    BlinkSet,
    CommandState,
    CommandTracker,
    Fix,
    HoldBook,
    HoldPolicy,
    LampCommand,
    PositionPolicy,
    Track,
    advance,
    blink_targets,
    check_fix,
)
from controller._blink import confirm, fail, move_to, refresh_due
from controller._commands import Answered, CommandIds, WrongDevice
from controller._leases import plan_leases

NOW = 1_764_100_000_000
LAT, LON = 37.5650, 126.9800
M_LAT = 1 / 111_000


def fix(dlat_m: float = 0.0, dt_s: float = 0.0, **kw: float) -> Fix:
    return Fix(LAT + dlat_m * M_LAT, LON, round(NOW + dt_s * 1000), **kw)  # type: ignore[arg-type]


# ------------------------------------------------------------------ positions


def test_a_good_fix_is_accepted_for_the_corridor_too() -> None:
    verdict = check_fix(fix(accuracy_m=5.0, heading_deg=10.0, speed_mps=1.4), NOW)
    assert verdict.accepted and verdict.use_corridor and verdict.reason is None


def test_a_fix_the_api_placed_is_not_located_again_but_still_checked_for_the_rest() -> None:
    busan = Fix(35.1796, 129.0756, NOW, 5.0)  # outside Seoul: the gazetteer refuses it
    assert "service area" in (check_fix(busan, NOW).reason or "")
    # Placed by the API (it stored the position with its district): the gazetteer is not asked.
    assert check_fix(busan, NOW, placed=True).accepted
    assert not check_fix(Fix(math.nan, LON, NOW), NOW, placed=True).accepted
    assert not check_fix(fix(accuracy_m=150.0), NOW, placed=True).accepted


def test_nan_positions_are_refused_with_a_reason() -> None:
    verdict = check_fix(Fix(math.nan, LON, NOW), NOW)
    assert not verdict.accepted and verdict.reason == "position is not a finite number"


def test_accuracy_worse_than_100_m_is_refused_and_worse_than_50_m_is_near_only() -> None:
    assert not check_fix(fix(accuracy_m=150.0), NOW).accepted
    mid = check_fix(fix(accuracy_m=70.0), NOW)
    assert mid.accepted and not mid.use_corridor and "near lamps only" in (mid.reason or "")


def test_timestamps_far_from_now_are_refused_and_late_ones_down_weighted() -> None:
    assert "stale" in (check_fix(fix(dt_s=-120), NOW).reason or "")
    assert "future" in (check_fix(fix(dt_s=120), NOW).reason or "")
    late = check_fix(fix(dt_s=-15), NOW)
    assert late.accepted and late.near_only


def test_nan_heading_keeps_the_near_lamps_but_not_the_corridor() -> None:
    verdict = check_fix(fix(heading_deg=math.nan, speed_mps=1.0), NOW)
    assert verdict.accepted and verdict.near_only


def test_an_impossible_jump_is_refused_and_a_persistent_new_place_re_anchors() -> None:
    track, first = advance(Track(), fix(), NOW)
    assert first.accepted
    track, jump = advance(track, fix(dlat_m=1000, dt_s=1), NOW + 1000)
    assert not jump.accepted and "impossible jump" in (jump.reason or "")
    track, again = advance(track, fix(dlat_m=1001, dt_s=2), NOW + 2000)
    assert not again.accepted
    track, third = advance(track, fix(dlat_m=1002, dt_s=3), NOW + 3000)
    assert third.accepted and third.near_only and "re-anchored" in (third.reason or "")
    assert track.anchor is not None and track.refused_in_row == 0


def test_a_single_glitch_does_not_move_the_anchor() -> None:
    track, _ = advance(Track(), fix(), NOW)
    track, glitch = advance(track, fix(dlat_m=2000, dt_s=1), NOW + 1000)
    track, back = advance(track, fix(dlat_m=2, dt_s=2), NOW + 2000)
    assert not glitch.accepted and back.accepted and back.use_corridor


@given(
    speed=st.floats(min_value=0.0, max_value=14.0),
    steps=st.integers(min_value=1, max_value=20),
    accuracy=st.floats(min_value=0.0, max_value=50.0),
)
def test_walking_or_running_below_15_m_s_is_never_refused(speed: float, steps: int, accuracy: float) -> None:
    track = Track()
    for k in range(steps):
        f = fix(dlat_m=speed * k, dt_s=k, accuracy_m=accuracy, heading_deg=0.0, speed_mps=speed)
        track, verdict = advance(track, f, f.ts_ms)
        assert verdict.accepted, verdict.reason


@given(speed=st.floats(min_value=16.0, max_value=500.0), dt=st.floats(min_value=0.5, max_value=20.0))
def test_a_single_move_faster_than_15_m_s_is_refused(speed: float, dt: float) -> None:
    track, _ = advance(Track(), fix(accuracy_m=0.0), NOW)
    later = fix(dlat_m=speed * dt, dt_s=dt, accuracy_m=0.0)
    _, verdict = advance(track, later, later.ts_ms, PositionPolicy())
    assert not verdict.accepted


# ------------------------------------------------------------------ holds


def test_a_lamp_with_more_than_half_its_hold_left_is_not_commanded_again() -> None:
    book = HoldBook(HoldPolicy(hold_s=30, refresh_jitter=0.0))
    assert book.plan("w1", ["a", "b"], NOW) == ["a", "b"]
    assert book.plan("w1", ["a", "b", "c"], NOW + 10_000) == ["c"]
    assert book.plan("w1", ["a", "b"], NOW + 15_000) == ["a", "b"]  # half left: refresh


def test_two_walkers_near_one_lamp_each_hold_their_own_override() -> None:
    book = HoldBook()
    assert book.plan("w1", ["a"], NOW) == ["a"]
    assert book.plan("w2", ["a"], NOW) == ["a"]
    assert sorted(book.held("w1", NOW + 1) + book.held("w2", NOW + 1)) == ["a", "a"]


@given(
    times=st.lists(st.integers(min_value=0, max_value=600_000), min_size=1, max_size=200),
    hold_s=st.integers(min_value=2, max_value=60),
)
def test_commands_for_one_lamp_are_at_most_one_per_half_hold(times: list[int], hold_s: int) -> None:
    """Position updates at any rate: the lamp is commanded at most once per half hold time."""
    book = HoldBook(HoldPolicy(hold_s=hold_s))
    sent = [t for t in sorted(times) if book.plan("w", ["a"], NOW + t)]
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(g >= hold_s * 500 for g in gaps)
    # ...and never left without an override while updates keep coming within the hold.
    assert sent[0] == min(times)


@given(
    times=st.lists(st.integers(min_value=0, max_value=600_000), min_size=1, max_size=200),
    hold_s=st.integers(min_value=2, max_value=60),
    jitter=st.floats(min_value=0.0, max_value=0.4),
    source=st.text(max_size=8),
)
def test_spread_refreshes_come_between_half_and_half_minus_jitter_left(
    times: list[int], hold_s: int, jitter: float, source: str
) -> None:
    """With the refresh point spread, still at most once per half hold, and never later than
    `refresh_fraction - refresh_jitter` of the hold left while updates keep coming every second."""
    book = HoldBook(HoldPolicy(hold_s=hold_s, refresh_jitter=jitter))
    sent = [t for t in sorted(times) if book.plan(source, ["a"], NOW + t)]
    assert all(b - a >= hold_s * 500 for a, b in itertools.pairwise(sent))
    every_second = [t for t in range(0, 3 * hold_s * 1000, 1000) if book.plan(source + "x", ["a"], NOW + t)]
    assert all(b - a <= hold_s * 1000 * (0.5 + jitter) + 1000 for a, b in itertools.pairwise(every_second))


def test_a_failed_command_lets_the_next_position_command_the_lamp_again() -> None:
    book = HoldBook()
    book.plan("w", ["a"], NOW)
    book.forget("w", "a")
    assert book.plan("w", ["a"], NOW + 1) == ["a"]


def test_a_lamp_that_comes_back_is_owed_its_live_holds_for_the_time_they_have_left() -> None:
    book = HoldBook(HoldPolicy(hold_s=30, refresh_jitter=0.0))
    book.plan("w1", ["a", "b"], NOW)
    book.plan("bcn-1", ["a"], NOW + 10_000)
    book.plan("w2", ["a"], NOW - 40_000)  # long expired
    assert book.on_lamp("a", NOW + 12_500) == [("bcn-1", 28), ("w1", 18)]
    book.forget("w1", "a")
    assert book.on_lamp("a", NOW + 12_500) == [("bcn-1", 28)]
    book.prune(NOW + 50_000)
    assert book.on_lamp("a", NOW + 12_500) == []
    assert book.on_lamp("never-held", NOW) == []


# ------------------------------------------------------------------ blink sets

LAMPS = {"l0": 0.0, "l1": 20.0, "l2": 40.0, "l3": 60.0, "l4": 80.0}


def within(lat: float, lon: float, radius_m: float) -> list[str]:
    return [k for k, d in LAMPS.items() if d <= radius_m]


def nearest(lat: float, lon: float, k: int) -> list[str]:
    return list(LAMPS)[:k]


def test_the_lamps_within_50_m_blink_and_the_nearest_when_none_is_that_close() -> None:
    assert blink_targets(within, nearest, LAT, LON, BlinkPolicy()) == ["l0", "l1", "l2"]
    assert blink_targets(lambda *_a: [], nearest, LAT, LON, BlinkPolicy(fallback_lamps=2)) == ["l0", "l1"]


def test_a_lamp_that_does_not_confirm_is_reported_and_the_next_nearest_added() -> None:
    blinks = BlinkSet("A1", "A1")
    change = move_to(blinks, ["l0", "l1", "l2"], NOW)
    assert change.blink == ("l0", "l1", "l2") and change.clear == ()
    assert confirm(blinks, "l0") and not confirm(blinks, "l0")  # recorded once
    assert fail(blinks, "l1", nearest, LAT, LON, BlinkPolicy(), NOW) == "l3"
    assert blinks.take_news() == (("confirmed", "l0"), ("unconfirmed", "l1"), ("added", "l3"))
    assert not blinks.has_news()


def test_moving_resident_clears_lamps_left_behind() -> None:
    blinks = BlinkSet("A1", "A1")
    move_to(blinks, ["l0", "l1"], NOW)
    change = move_to(blinks, ["l1", "l2"], NOW + 1000)
    assert change.blink == ("l2",) and change.clear == ("l0",)


def test_blinks_are_refreshed_when_half_their_time_to_live_is_gone() -> None:
    blinks = BlinkSet("A1", "A1")
    move_to(blinks, ["l0"], NOW)
    policy = BlinkPolicy(ttl_s=60)
    assert refresh_due(blinks, NOW + 29_000, policy) == []
    assert refresh_due(blinks, NOW + 30_000, policy) == ["l0"]
    assert refresh_due(blinks, NOW + 31_000, policy) == []


# ------------------------------------------------------------------ commands


def cmd(cmd_id: str, district: str = "11140") -> LampCommand:
    return LampCommand(cmd_id, "lamp-1", district, "set_level", "walk", "w1", NOW, 30, 100)


def test_an_unanswered_command_is_retried_once_after_5_s_then_given_up() -> None:
    tracker = CommandTracker()
    tracker.sent(cmd("c1"), NOW)
    assert tracker.due(NOW + 4_999).retries == ()
    assert [c.cmd_id for c in tracker.due(NOW + 5_000).retries] == ["c1"]
    assert tracker.due(NOW + 9_999).unanswered == ()
    assert [c.cmd_id for c in tracker.due(NOW + 10_000).unanswered] == ["c1"]
    assert tracker.counts[CommandState.UNANSWERED] == 1 and not tracker.pending


def test_acks_are_matched_by_id_and_others_ignored() -> None:
    tracker = CommandTracker()
    tracker.sent(cmd("c1"), NOW)
    assert tracker.acked("someone-elses", "applied", NOW + 10, sender="lamp-1") is None
    answered = tracker.acked("c1", "applied", NOW + 12, sender="lamp-1")
    assert isinstance(answered, Answered)
    assert answered.state is CommandState.APPLIED and answered.latency_ms == 12
    assert tracker.acked("c1", "applied", NOW + 13, sender="lamp-1") is None  # settled once


def test_an_ack_from_another_device_than_the_commands_is_refused_and_the_command_keeps_waiting() -> None:
    tracker = CommandTracker()
    tracker.sent(cmd("c1"), NOW)  # sent to lamp-1
    refused = tracker.acked("c1", "applied", NOW + 10, sender="lamp-2")
    assert isinstance(refused, WrongDevice) and refused.sender == "lamp-2"
    assert "c1" in tracker.pending and tracker.counts["wrong_device"] == 1
    assert tracker.counts[CommandState.APPLIED] == 0
    # The lamp it was sent to still answers it; without that, it ends unanswered as usual.
    answered = tracker.acked("c1", "applied", NOW + 20, sender="lamp-1")
    assert isinstance(answered, Answered) and answered.state is CommandState.APPLIED


def test_command_ids_are_unguessable_from_one_another_and_fit_the_protocol() -> None:
    ids = CommandIds("c1a2b3c4d5")
    issued = [ids() for _ in range(2000)]
    assert len(set(issued)) == len(issued)
    suffixes = [int(i.rsplit(".", 1)[1], 16) for i in issued]
    assert all(len(i.rsplit(".", 1)[1]) == 32 for i in issued)  # 128 bits each
    # Neither the next id nor a neighbour of it: no two ids issued in a row are close.
    assert min(abs(b - a) for a, b in itertools.pairwise(suffixes)) > 2**64
    for cmd_id in issued[:50]:
        decode(
            "cmd",
            b'{"cmd_id":"%s","ts":%d,"action":"clear","source":"s"}' % (cmd_id.encode(), NOW),
            NOW,
        )
    with pytest.raises(ValueError):
        CommandIds("x" * 31)


def test_the_wire_payload_is_a_valid_v1_command() -> None:
    wire = cmd("c1").to_wire()
    assert (wire.action, wire.priority, wire.level, wire.ttl_s, wire.source) == (
        "set_level",
        "walk",
        100,
        30,
        "w1",
    )


# ------------------------------------------------------------------ leases


def test_a_newcomer_gets_a_fair_share_and_the_old_controller_gives_up_the_rest() -> None:
    districts = ["a", "b", "c", "d"]
    held = {d: "old" for d in districts}
    old = plan_leases("old", districts, held, 2, {}, 0.0, 6.0)
    assert old.acquire == ("a", "b") and old.release == ("c", "d")
    new = plan_leases("new", districts, {"a": "old", "b": "old"}, 2, {}, 0.0, 6.0)
    assert new.acquire == ("c", "d") and new.release == ()


def test_a_district_nobody_takes_is_taken_after_a_lease_time_whatever_the_share() -> None:
    districts = ["a", "b"]
    plan = plan_leases("me", districts, {"a": "me"}, 2, {"b": 0.0}, 5.0, 6.0)
    assert plan.acquire == ("a",)
    plan = plan_leases("me", districts, {"a": "me"}, 2, {"b": 0.0}, 6.0, 6.0)
    assert plan.acquire == ("a", "b")


@given(
    n_districts=st.integers(min_value=1, max_value=26),
    n_controllers=st.integers(min_value=1, max_value=6),
)
def test_controllers_taking_turns_never_hold_a_district_twice_and_cover_all(
    n_districts: int, n_controllers: int
) -> None:
    districts = [f"{11110 + i * 10}" for i in range(n_districts)]
    owners = [f"c{i}" for i in range(n_controllers)]
    held: dict[str, str] = {}
    for _round in range(3):
        for me in owners:
            plan = plan_leases(me, districts, held, n_controllers, {}, 0.0, 6.0)
            for d in plan.release:
                held.pop(d, None)
            for d in plan.acquire:
                assert held.get(d, me) == me  # a live lease of another is never taken
                held[d] = me
    assert set(held) == set(districts)
    share = math.ceil(n_districts / n_controllers)
    assert all(sum(1 for o in held.values() if o == me) <= share for me in owners)


# ------------------------------------------------------------------ guards


def test_the_guard_patrol_window_wraps_midnight_in_seoul_time() -> None:
    import datetime as dt

    from controller._guards import on_patrol

    start, end = dt.time(21, 0), dt.time(2, 30)
    kst = dt.timezone(dt.timedelta(hours=9))
    at = [
        dt.datetime(2026, 11, 26, h, m, tzinfo=kst) for h, m in ((20, 59), (21, 0), (0, 10), (2, 29), (2, 30))
    ]
    assert [on_patrol(t, start, end) for t in at] == [False, True, True, True, False]
    # 12:00 UTC is 21:00 in Seoul.
    assert on_patrol(dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC), start, end)


def test_an_sos_reaches_the_guards_only_inside_a_guard_zone_during_patrol() -> None:
    import datetime as dt

    from alerts import AlertKind, Place, new_alert
    from controller._guards import guard_zone
    from geo import load_safety_zones

    zones = load_safety_zones()
    zone = zones.guard_zones[0]
    night = dt.datetime(2026, 11, 26, 13, 0, tzinfo=dt.UTC)  # 22:00 KST
    day = dt.datetime(2026, 11, 26, 3, 0, tzinfo=dt.UTC)  # 12:00 KST

    def sos(dong: str) -> object:
        place = Place(lat=LAT, lon=LON, district_code=zone.district_code, dong_code=dong)
        return new_alert(alert_id="A", kind=AlertKind.SOS, place=place, source_id="r", now=night)

    assert guard_zone(sos(zone.dong_code), zones, night) == zone  # type: ignore[arg-type]
    assert guard_zone(sos(zone.dong_code), zones, day) is None  # type: ignore[arg-type]
    assert guard_zone(sos("9999999"), zones, night) is None  # type: ignore[arg-type]
