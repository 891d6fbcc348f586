"""Day burning and dark at night (alerts._daynight), and offline/outage recovery (alerts._recovery)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import (
    DEFAULT_DAYNIGHT,
    Alert,
    AlertKind,
    AlertState,
    DayNightCandidate,
    DayNightPolicy,
    InvalidAlertData,
    LampCondition,
    LampReading,
    LampSnapshot,
    MassOutagePolicy,
    Observation,
    OutageCluster,
    Place,
    Sky,
    SunElevation,
    apply_observation,
    daynight_change,
    fleet_wide,
    judge_lamps,
    merge_fault,
    merge_mass_outage,
    observe,
    outage_restored,
    resolve_recovered,
    sky_at,
)
from geo.solar import sun_elevation_deg

NOW = datetime(2025, 6, 1, 3, 0, tzinfo=UTC)  # 12:00 KST
SEOUL = (37.5665, 126.9780)
PLACE = Place(lat=SEOUL[0], lon=SEOUL[1], district_code="11140")
DAY, NIGHT, DUSK = 40.0, -20.0, 0.0


def reading(level: int | None = 0, power_w: float | None = None, **kw: object) -> LampReading:
    return LampReading("L1", kw.pop("at", NOW - timedelta(seconds=30)), level, power_w, **kw)  # type: ignore[arg-type]


def test_the_sky_has_margins_around_sunrise_and_sunset() -> None:
    assert sky_at(3.01) is Sky.DAY and sky_at(-3.01) is Sky.NIGHT
    assert sky_at(3.0) is sky_at(-3.0) is sky_at(0.0) is sky_at(float("nan")) is Sky.TWILIGHT


def test_seoul_noon_is_day_and_midnight_is_night_with_geo_solar() -> None:
    assert sky_at(sun_elevation_deg(*SEOUL, NOW)) is Sky.DAY
    assert sky_at(sun_elevation_deg(*SEOUL, NOW + timedelta(hours=12))) is Sky.NIGHT


@pytest.mark.parametrize(
    ("level", "power", "elevation", "expected"),
    [
        (100, 40.0, DAY, (LampCondition.DAY_BURNING, True)),
        (0, 38.0, DAY, (LampCondition.DAY_BURNING, True)),  # stuck driver: level 0, power drawn
        (0, 0.5, DAY, (LampCondition.DAY_BURNING, False)),  # standby power is no light
        (0, None, NIGHT, (LampCondition.DARK_AT_NIGHT, True)),
        (30, 12.0, NIGHT, (LampCondition.DARK_AT_NIGHT, False)),  # dimmed is fine
        (100, 40.0, DUSK, None),
        (0, 0.0, DUSK, None),
        (None, None, DAY, None),
    ],
)
def test_observe_judges_output_against_the_sky(
    level: int | None, power: float | None, elevation: float, expected: tuple[LampCondition, bool] | None
) -> None:
    got = observe(reading(level, power), elevation, NOW)
    assert (None if got is None else (got.condition, got.present)) == expected


@pytest.mark.parametrize(
    "kw",
    [
        {"override": True},  # a walk / SOS / manual override is legitimately bright or dark
        {"online": False},
        {"at": NOW - timedelta(seconds=DEFAULT_DAYNIGHT.stale_after_s + 1)},
        {"faults": frozenset({"lamp_failure"})},
        {"faults": frozenset({"power_loss"})},
    ],
)
def test_nothing_is_judged_for_an_override_offline_stale_or_explained_dark_lamp(
    kw: dict[str, object],
) -> None:
    assert observe(reading(0, 0.0, **kw), NIGHT, NOW) is None


def test_a_reported_fault_does_not_hide_day_burning() -> None:
    got = observe(reading(100, 40.0, faults=frozenset({"day_burning"})), DAY, NOW)
    assert got == Observation(LampCondition.DAY_BURNING, True, NOW - timedelta(seconds=30))


def test_naive_times_are_refused() -> None:
    with pytest.raises(InvalidAlertData):
        observe(reading(), DAY, datetime(2025, 6, 1, 12))
    with pytest.raises(InvalidAlertData):
        DayNightPolicy(day_above_deg=-5.0, night_below_deg=5.0)


def _seen(present: bool, at: datetime, condition: LampCondition = LampCondition.DAY_BURNING) -> Observation:
    return Observation(condition, present, at)


def test_one_alert_per_device_and_condition_counts_new_readings_and_resolves_after_a_while() -> None:
    first = apply_observation([], _seen(True, NOW), device_id="L1", place=PLACE, now=NOW, new_alert_id="a1")
    assert first is not None and first.kind is AlertKind.LAMP_FAULT and first.fault_code == "day_burning"
    later = NOW + timedelta(minutes=5)
    # the same reading seen again by the next pass is not counted twice
    assert (
        apply_observation([first], _seen(True, NOW), device_id="L1", place=PLACE, now=later, new_alert_id="x")
        is None
    )
    second = apply_observation(
        [first], _seen(True, later), device_id="L1", place=PLACE, now=later, new_alert_id="x"
    )
    assert second is not None and second.id == "a1" and second.count == 2
    # the other condition is another alert
    dark = apply_observation(
        [second],
        _seen(True, later, LampCondition.DARK_AT_NIGHT),
        device_id="L1",
        place=PLACE,
        now=later,
        new_alert_id="a2",
    )
    assert dark is not None and dark.id == "a2" and dark.fault_code == "dark_at_night"
    # cleared, but not for long enough yet; then for long enough
    soon = later + timedelta(minutes=5)
    assert (
        apply_observation(
            [second], _seen(False, soon), device_id="L1", place=PLACE, now=soon, new_alert_id="x"
        )
        is None
    )
    after = later + timedelta(seconds=DEFAULT_DAYNIGHT.clear_after_s)
    done = apply_observation(
        [second], _seen(False, after), device_id="L1", place=PLACE, now=after, new_alert_id="x"
    )
    assert done is not None and done.state is AlertState.RESOLVED and done.id == "a1"


def test_the_lamps_own_day_burning_fault_and_the_judgement_share_one_alert() -> None:
    own, _ = merge_fault(
        [],
        kind=AlertKind.LAMP_FAULT,
        device_id="L1",
        fault_code="day_burning",
        place=PLACE,
        now=NOW,
        new_alert_id="f1",
    )
    later = NOW + timedelta(minutes=1)
    merged = apply_observation(
        [own], _seen(True, later), device_id="L1", place=PLACE, now=later, new_alert_id="x"
    )
    assert merged is not None and merged.id == "f1" and merged.count == 2


times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2090, 1, 1),
    timezones=st.just(timezone(timedelta(hours=9))),
)


@given(
    level=st.one_of(st.none(), st.integers(0, 100)),
    power=st.one_of(st.none(), st.floats(0, 2000)),
    elevation=st.floats(-90, 90),
    age_s=st.floats(0, 1000),
    online=st.booleans(),
    override=st.booleans(),
    now=times,
)
def test_observe_never_judges_what_it_cannot_see(
    level: int | None,
    power: float | None,
    elevation: float,
    age_s: float,
    online: bool,
    override: bool,
    now: datetime,
) -> None:
    r = LampReading("L", now - timedelta(seconds=age_s), level, power, online=online, override=override)
    got = observe(r, elevation, now)
    if got is None:
        return
    assert online and not override and age_s <= DEFAULT_DAYNIGHT.stale_after_s
    lit = (level or 0) > 0 or (power or 0.0) > DEFAULT_DAYNIGHT.standby_w
    if got.condition is LampCondition.DAY_BURNING:
        assert elevation > DEFAULT_DAYNIGHT.day_above_deg and got.present == lit
    else:
        assert elevation < DEFAULT_DAYNIGHT.night_below_deg and got.present == (not lit)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3600)), min_size=1, max_size=30))
def test_a_stream_of_observations_keeps_at_most_one_active_alert(steps: list[tuple[bool, int]]) -> None:
    active: list[Alert] = []
    at = NOW
    for i, (present, gap_s) in enumerate(steps):
        at = at + timedelta(seconds=gap_s + 1)
        new = apply_observation(
            active, _seen(present, at), device_id="L1", place=PLACE, now=at, new_alert_id=f"a{i}"
        )
        if new is not None:
            active = [a for a in active if a.id != new.id] + ([new] if new.is_active else [])
        assert len(active) <= 1
        if present:
            assert len(active) == 1


def _outage(n: int) -> Alert:
    cluster = OutageCluster("1114055000", tuple(f"M{i:02d}" for i in range(n)), NOW, NOW)
    alert, _ = merge_mass_outage([], cluster, place=PLACE, now=NOW, new_alert_id="o1")
    return alert


def test_offline_alerts_resolve_when_their_device_is_back_and_an_outage_when_80_percent_are() -> None:
    outage = _outage(10)
    offline, _ = merge_fault(
        [],
        kind=AlertKind.DEVICE_OFFLINE,
        device_id="X",
        fault_code="offline",
        place=PLACE,
        now=NOW,
        new_alert_id="d1",
    )
    silent, _ = merge_fault(
        [],
        kind=AlertKind.DEVICE_OFFLINE,
        device_id="Y",
        fault_code="silent",
        place=PLACE,
        now=NOW,
        new_alert_id="d2",
    )
    alerts = [outage, offline, silent]
    later = NOW + timedelta(minutes=1)
    assert resolve_recovered(alerts, {"X", "Y", "M00", "M01", "M02"}, later) == ()
    done = resolve_recovered(alerts, {"Y", "M00", "M01"}, later)
    assert sorted(a.id for a in done) == ["d1", "o1"]
    assert all(a.state is AlertState.RESOLVED for a in done)
    assert resolve_recovered(alerts, set(), later, restored_fraction=1.0)[-1].id == "d2"


@given(n=st.integers(1, 300), dark=st.integers(0, 300), fraction=st.floats(0.01, 1.0))
def test_an_outage_is_restored_exactly_when_enough_lamps_are_back(n: int, dark: int, fraction: float) -> None:
    outage = _outage(n)
    still = {f"M{i:02d}" for i in range(min(dark, n))}
    assert outage_restored(outage, still, fraction) == (n - len(still) >= fraction * n)
    assert MassOutagePolicy().window_s == 120.0


def test_most_of_the_fleet_out_of_step_is_the_sky_not_the_lamps() -> None:
    burning = [_seen(True, NOW)] * 10
    fine = [_seen(False, NOW)] * 10
    dark = [_seen(True, NOW, LampCondition.DARK_AT_NIGHT)] * 3
    assert fleet_wide(burning + fine + dark) == {LampCondition.DAY_BURNING}
    assert fleet_wide(burning[:9] + fine + dark) == frozenset()  # 9 of 19: below 20 judged
    assert fleet_wide(burning[:3] + fine * 2 + dark) == frozenset()  # 3 of 23: a few bad lamps


# -- a pass over the fleet


def lamp(
    device_id: str, level: int, *, at: datetime = NOW - timedelta(seconds=30), **kw: object
) -> LampSnapshot:
    return LampSnapshot(device_id, SEOUL[0], SEOUL[1], at, level, **kw)  # type: ignore[arg-type]


def sky(elevation: float, calls: list[tuple[float, float, datetime]] | None = None) -> SunElevation:
    def sun(lat: float, lon: float, at: datetime) -> float:
        if calls is not None:
            calls.append((lat, lon, at))
        return elevation

    return sun


def _saved(candidates: tuple[DayNightCandidate, ...], stored: list[Alert], now: datetime) -> list[Alert]:
    """Decide every candidate on what is stored and save it, as ingest does."""
    store = {a.id: a for a in stored}
    for i, candidate in enumerate(candidates):
        change = daynight_change(list(store.values()), candidate, now=now, new_alert_id=f"dn{i}")
        if change is not None:
            assert store.get(change.alert.id) == change.previous
            store[change.alert.id] = change.alert
    return [a for a in store.values() if a.is_active]


def test_a_pass_keeps_the_lamps_whose_alert_changes_and_asks_the_sun_once_per_place_and_minute() -> None:
    calls: list[tuple[float, float, datetime]] = []
    lamps = [
        lamp("burning", 100),
        lamp("dark", 0),
        lamp("walk", 100, override=True),
        lamp("off", 100, online=False),
    ]
    judged = judge_lamps(lamps, [], NOW, sun=sky(DAY, calls))
    assert len(calls) == 1 and judged.judged == 2 and judged.suspect == frozenset()
    assert [(c.device_id, c.observation.present) for c in judged.candidates] == [("burning", True)]
    assert judged.candidates[0].place.district_code == "" and judged.candidates[0].place.lat == SEOUL[0]
    (alert,) = _saved(judged.candidates, [], NOW)
    assert alert.fault_code == "day_burning" and alert.source_id == "burning"
    # the same reading judged again by the next pass changes nothing
    assert judge_lamps(lamps, [alert], NOW + timedelta(minutes=1), sun=sky(DAY)).candidates == ()


def test_a_dark_lamp_at_night_is_not_a_candidate_when_its_failure_is_alerted_already() -> None:
    failure, _ = merge_fault(
        [], kind=AlertKind.LAMP_FAULT, device_id="L1", fault_code="lamp_failure", place=PLACE, now=NOW,
        new_alert_id="f1",
    )  # fmt: skip
    assert judge_lamps([lamp("L1", 0)], [failure], NOW, sun=sky(NIGHT)).candidates == ()
    assert len(judge_lamps([lamp("L1", 0)], [], NOW, sun=sky(NIGHT)).candidates) == 1


def test_a_condition_in_most_of_the_fleet_opens_no_alert_but_still_counts_into_an_open_one() -> None:
    earlier = NOW - timedelta(minutes=10)
    (open_one,) = _saved(
        judge_lamps([lamp("L00", 100, at=earlier)], [], earlier, sun=sky(DAY)).candidates, [], earlier
    )
    lamps = [lamp(f"L{i:02d}", 100) for i in range(25)]
    judged = judge_lamps(lamps, [open_one], NOW, sun=sky(DAY))
    assert judged.suspect == {LampCondition.DAY_BURNING} and judged.judged == 25
    assert [c.device_id for c in judged.candidates] == ["L00"]
    (counted,) = _saved(judged.candidates, [open_one], NOW)
    assert counted.id == open_one.id and counted.count == 2


def test_the_decision_under_the_lock_names_what_it_did() -> None:
    candidate = DayNightCandidate("L1", _seen(True, NOW), PLACE)
    new = daynight_change([], candidate, now=NOW, new_alert_id="a1")
    assert new is not None and new.previous is None and new.reason == "daynight_new"
    assert daynight_change([new.alert], candidate, now=NOW, new_alert_id="x") is None  # counted already
    later = NOW + timedelta(minutes=1)
    again = daynight_change(
        [new.alert], DayNightCandidate("L1", _seen(True, later), PLACE), now=later, new_alert_id="x"
    )
    assert again is not None and again.reason == "daynight_repeated" and again.previous == new.alert
    gone_at = later + timedelta(seconds=DEFAULT_DAYNIGHT.clear_after_s)
    gone = DayNightCandidate("L1", _seen(False, gone_at), PLACE)
    resolved = daynight_change([again.alert], gone, now=gone_at, new_alert_id="x")
    assert resolved is not None and resolved.reason == "daynight_resolved"
    # another lamp_fault of the device is not a day/night alert
    other, _ = merge_fault(
        [], kind=AlertKind.LAMP_FAULT, device_id="L1", fault_code="day_burning_x", place=PLACE, now=NOW,
        new_alert_id="o1",
    )  # fmt: skip
    assert daynight_change([other], gone, now=gone_at, new_alert_id="x") is None


_LAMP = st.tuples(st.integers(0, 100), st.integers(0, 400), st.booleans(), st.booleans())


@given(st.lists(_LAMP, max_size=30), st.sampled_from([DAY, NIGHT, DUSK]), st.integers(0, 1200))
def test_any_pass_saved_then_run_again_on_the_same_readings_changes_nothing(
    readings: list[tuple[int, int, bool, bool]], elevation: float, age_s: int
) -> None:
    earlier = NOW - timedelta(seconds=age_s)
    before = [lamp(f"L{i:02d}", level, at=earlier) for i, (level, _a, _o, _v) in enumerate(readings)]
    stored = _saved(judge_lamps(before, [], earlier, sun=sky(elevation)).candidates, [], earlier)
    lamps = [
        lamp(f"L{i:02d}", level, at=NOW - timedelta(seconds=a), online=online, override=override)
        for i, (level, a, online, override) in enumerate(readings)
    ]
    judged = judge_lamps(lamps, stored, NOW, sun=sky(elevation))
    assert judged.judged <= len(lamps)
    after = _saved(judged.candidates, stored, NOW)
    per_device = [(a.source_id, a.fault_code) for a in after]
    assert len(per_device) == len(set(per_device))
    assert judge_lamps(lamps, after, NOW, sun=sky(elevation)).candidates == ()
