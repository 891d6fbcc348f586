"""Dedup: repeated SOS within 120 s, repeated faults counted, mass outages as one alert."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alerts import (
    FAULT_FLOOD_CODE,
    MAX_OPEN_FAULTS_PER_DEVICE,
    Alert,
    AlertKind,
    AlertState,
    EventAction,
    InvalidAlertData,
    MassOutagePolicy,
    OfflineReport,
    Place,
    Position,
    acknowledge,
    covering_outage,
    detect_mass_outages,
    fold_sos_press,
    merge_device_fault,
    merge_fault,
    merge_mass_outage,
    merge_sos,
    resolve,
    suppress_covered,
)

T0 = datetime(2026, 11, 25, 13, 0, 0, tzinfo=UTC)
PLACE = Place(lat=37.5663, lon=126.9779, district_code="11140", dong_code="1114052000", dong_name="소공동")
DONG = "1114052000"
OTHER_DONG = "1114053000"


def press(active: list[Alert], seconds: float, resident: str = "resident-7") -> tuple[Alert, bool]:
    now = T0 + timedelta(seconds=seconds)
    position = Position(37.5663 + seconds * 1e-6, 126.9779, now, accuracy_m=10.0)
    return merge_sos(
        active, resident_id=resident, position=position, place=PLACE, now=now, new_alert_id=f"sos-{seconds}"
    )


def test_a_first_sos_opens_an_alert_with_its_position() -> None:
    alert, created = press([], 0)
    assert created and alert.kind is AlertKind.SOS and alert.state is AlertState.OPEN
    assert len(alert.track) == 1 and alert.count == 1 and alert.source_id == "resident-7"


def test_a_second_sos_from_the_same_resident_119_s_later_updates_the_open_alert() -> None:
    first, _ = press([], 0)
    second, created = press([first], 119)
    assert not created
    assert second.id == first.id and second.count == 2 and len(second.track) == 2
    assert second.timeline[-1].action is EventAction.REPEATED


def test_a_press_over_the_limit_counts_and_moves_the_alert_without_a_timeline_entry() -> None:
    first, _ = press([], 0)
    later = Position(37.57, 126.98, T0 + timedelta(seconds=5), accuracy_m=8.0)
    folded = fold_sos_press(first, position=later, place=PLACE)
    assert folded.id == first.id and folded.count == 2 and folded.track[-1] == later
    assert folded.timeline == first.timeline and folded.last_position == (37.57, 126.98)


def test_a_second_sos_121_s_later_opens_a_new_alert() -> None:
    first, _ = press([], 0)
    second, created = press([first], 121)
    assert created and second.id != first.id


def test_the_window_runs_from_the_latest_press_so_a_resident_pressing_every_minute_keeps_one_alert() -> None:
    alert, _ = press([], 0)
    for seconds in (60, 120, 180, 240):
        alert, created = press([alert], seconds)
        assert not created
    assert alert.count == 5


def test_an_sos_from_another_resident_opens_its_own_alert() -> None:
    first, _ = press([], 0)
    other, created = press([first], 10, resident="resident-8")
    assert created and other.id != first.id


def test_an_acknowledged_sos_still_absorbs_a_repeat_but_a_resolved_one_does_not() -> None:
    first, _ = press([], 0)
    acked = acknowledge(first, T0 + timedelta(seconds=5), "op-1")
    merged, created = press([acked], 30)
    assert not created and merged.state is AlertState.ACKNOWLEDGED
    resolved = resolve(acked, T0 + timedelta(seconds=6), "op-1")
    _, created = press([resolved], 30)
    assert created


def fault(active: list[Alert], seconds: float, device: str = "lamp-1", code: str = "lamp_failure") -> Alert:
    alert, _ = merge_fault(
        active,
        kind=AlertKind.LAMP_FAULT,
        device_id=device,
        fault_code=code,
        place=PLACE,
        now=T0 + timedelta(seconds=seconds),
        new_alert_id=f"fault-{device}-{code}-{seconds}",
    )
    return alert


def test_a_repeated_fault_of_one_device_counts_into_one_active_alert() -> None:
    alert = fault([], 0)
    for n in range(1, 10):
        alert = fault([alert], n * 3600)
    assert alert.count == 10 and alert.id == "fault-lamp-1-lamp_failure-0"
    assert [e.action for e in alert.timeline].count(EventAction.REPEATED) == 9


def test_another_fault_code_or_another_device_opens_another_alert() -> None:
    alert = fault([], 0)
    assert fault([alert], 1, code="supply_loss").id != alert.id
    assert fault([alert], 1, device="lamp-2").id != alert.id


def test_a_fault_after_its_alert_was_resolved_opens_a_new_alert() -> None:
    alert = resolve(fault([], 0), T0 + timedelta(seconds=1), "system")
    assert fault([alert], 2).id != alert.id


def test_merge_fault_refuses_non_device_kinds() -> None:
    with pytest.raises(InvalidAlertData, match="device alert kind"):
        merge_fault(
            [], kind=AlertKind.SOS, device_id="x", fault_code="", place=PLACE, now=T0, new_alert_id="x"
        )


def offline(device: str, seconds: float, dong: str = DONG) -> OfflineReport:
    return OfflineReport(device_id=device, dong_code=dong, at=T0 + timedelta(seconds=seconds))


def run_ingest(reports: list[OfflineReport], lamps_per_dong: dict[str, int] | None = None) -> list[Alert]:
    """Feed reports one at a time the way ingest would, returning every alert ever active."""
    alerts: dict[str, Alert] = {}
    seen: list[OfflineReport] = []
    for n, report in enumerate(reports):
        seen.append(report)
        active = [a for a in alerts.values() if a.is_active]
        if covering_outage(active, report.dong_code) is None:
            single, _ = merge_fault(
                active,
                kind=AlertKind.DEVICE_OFFLINE,
                device_id=report.device_id,
                fault_code="offline",
                place=PLACE,
                now=report.at,
                new_alert_id=f"off-{report.device_id}",
            )
            alerts[single.id] = single
        for cluster in detect_mass_outages(seen, report.at, lamps_per_dong):
            active = [a for a in alerts.values() if a.is_active]
            outage, _ = merge_mass_outage(active, cluster, place=PLACE, now=report.at, new_alert_id=f"mo-{n}")
            alerts[outage.id] = outage
            for suppressed in suppress_covered(active, outage, report.at):
                alerts[suppressed.id] = suppressed
    return list(alerts.values())


def test_200_lamps_of_one_neighbourhood_offline_within_2_minutes_make_exactly_one_alert_listing_all() -> None:
    reports = [offline(f"lamp-{i:03d}", i * 0.5) for i in range(200)]
    alerts = run_ingest(reports)
    outages = [a for a in alerts if a.kind is AlertKind.MASS_OUTAGE]
    assert len(outages) == 1
    assert outages[0].device_ids == tuple(sorted(f"lamp-{i:03d}" for i in range(200)))
    active_singles = [a for a in alerts if a.kind is AlertKind.DEVICE_OFFLINE and a.is_active]
    assert active_singles == []
    superseded = [a for a in alerts if a.kind is AlertKind.DEVICE_OFFLINE]
    assert all(a.timeline[-1].detail("superseded_by") == outages[0].id for a in superseded)


def test_lamps_going_dark_one_by_one_over_10_minutes_make_no_mass_outage() -> None:
    # 20 lamps, one every 30 s: never more than 5 in any 2-minute window.
    reports = [offline(f"lamp-{i:03d}", i * 30) for i in range(20)]
    alerts = run_ingest(reports, {DONG: 200})
    assert not [a for a in alerts if a.kind is AlertKind.MASS_OUTAGE]
    assert len([a for a in alerts if a.kind is AlertKind.DEVICE_OFFLINE and a.is_active]) == 20


def test_two_neighbourhoods_going_dark_make_two_mass_outages() -> None:
    reports = [offline(f"a-{i}", i * 0.2) for i in range(50)] + [
        offline(f"b-{i}", 10 + i * 0.2, OTHER_DONG) for i in range(50)
    ]
    alerts = run_ingest(reports)
    outages = sorted((a for a in alerts if a.kind is AlertKind.MASS_OUTAGE), key=lambda a: a.source_id)
    assert [(a.source_id, len(a.device_ids)) for a in outages] == [(DONG, 50), (OTHER_DONG, 50)]


def test_the_count_threshold_is_10_lamps_at_119_s_apart_at_most() -> None:
    nine = [offline(f"l{i}", i) for i in range(9)]
    assert detect_mass_outages(nine, T0 + timedelta(seconds=9)) == ()
    ten = [*nine, offline("l9", 119)]
    (cluster,) = detect_mass_outages(ten, T0 + timedelta(seconds=119))
    assert len(cluster.device_ids) == 10 and cluster.first_at == T0
    assert detect_mass_outages(ten, T0 + timedelta(seconds=121)) == ()


def test_30_percent_of_a_small_neighbourhood_is_an_outage_but_2_lamps_never_are() -> None:
    three = [offline(f"l{i}", i) for i in range(3)]
    assert len(detect_mass_outages(three, T0 + timedelta(seconds=3), {DONG: 10})) == 1
    assert detect_mass_outages(three, T0 + timedelta(seconds=3), {DONG: 11}) == ()
    assert detect_mass_outages(three[:2], T0 + timedelta(seconds=3), {DONG: 2}) == ()


def test_a_lamp_reported_twice_counts_once_and_future_reports_are_ignored() -> None:
    reports = [offline("same", i) for i in range(20)] + [offline(f"late-{i}", 500) for i in range(20)]
    assert detect_mass_outages(reports, T0 + timedelta(seconds=20)) == ()


def test_the_thresholds_are_configurable() -> None:
    reports = [offline(f"l{i}", i) for i in range(4)]
    policy = MassOutagePolicy(min_lamps=4)
    assert len(detect_mass_outages(reports, T0 + timedelta(seconds=4), policy=policy)) == 1


def test_a_mass_outage_grows_with_a_lamps_added_event_and_ignores_known_lamps() -> None:
    (first,) = detect_mass_outages([offline(f"l{i}", 0) for i in range(10)], T0)
    outage, created = merge_mass_outage([], first, place=PLACE, now=T0, new_alert_id="mo-1")
    assert created
    same, created = merge_mass_outage([outage], first, place=PLACE, now=T0, new_alert_id="mo-2")
    assert same is outage and not created
    (bigger,) = detect_mass_outages([offline(f"l{i}", 1) for i in range(12)], T0 + timedelta(seconds=1))
    grown, created = merge_mass_outage([outage], bigger, place=PLACE, now=T0, new_alert_id="mo-3")
    assert not created and len(grown.device_ids) == 12
    assert grown.timeline[-1].action is EventAction.LAMPS_ADDED


@given(
    reports=st.lists(
        st.builds(
            offline,
            st.sampled_from([f"l{i}" for i in range(15)]),
            st.integers(0, 300),
            st.sampled_from([DONG, OTHER_DONG]),
        ),
        max_size=60,
    ),
    now_s=st.integers(0, 300),
    total=st.integers(0, 40),
)
def test_detected_outages_agree_with_a_brute_force_count_per_neighbourhood(
    reports: list[OfflineReport], now_s: int, total: int
) -> None:
    now = T0 + timedelta(seconds=now_s)
    found = {c.dong_code: c for c in detect_mass_outages(reports, now, {DONG: total})}
    for dong in (DONG, OTHER_DONG):
        recent = {
            r.device_id
            for r in reports
            if r.dong_code == dong and now - timedelta(seconds=120) <= r.at <= now
        }
        dong_total = total if dong == DONG else 0
        expected = len(recent) >= 10 or (
            dong_total > 0 and len(recent) >= 3 and len(recent) >= 0.3 * dong_total
        )
        assert (dong in found) is expected
        if expected:
            assert found[dong].device_ids == tuple(sorted(recent))


def _ids() -> Callable[[], str]:
    counter = iter(range(10_000))
    return lambda: f"mnt-{next(counter)}"


def test_a_device_naming_ever_new_fault_codes_keeps_eight_open_and_folds_the_rest_into_one_tamper() -> None:
    open_alerts: dict[str, Alert] = {}
    ids = _ids()
    for message in range(50):
        codes = [f"c{message}n{j}" for j in range(32)]
        for alert in merge_device_fault(
            open_alerts.values(), device_id="lamp-2", fault_codes=codes, place=PLACE, now=T0, new_alert_id=ids
        ):
            open_alerts[alert.id] = alert
    faults = [a for a in open_alerts.values() if a.kind is AlertKind.LAMP_FAULT]
    (flood,) = [a for a in open_alerts.values() if a.kind is AlertKind.TAMPER]
    assert len(faults) == MAX_OPEN_FAULTS_PER_DEVICE and len(open_alerts) == MAX_OPEN_FAULTS_PER_DEVICE + 1
    assert flood.fault_code == FAULT_FLOOD_CODE and flood.count == 50 * 32 - MAX_OPEN_FAULTS_PER_DEVICE
    # Codes already open still count into their own alert, and another device is not affected.
    (again,) = merge_device_fault(
        open_alerts.values(), device_id="lamp-2", fault_codes=["c0n0"], place=PLACE, now=T0, new_alert_id=ids
    )
    assert again.kind is AlertKind.LAMP_FAULT and again.fault_code == "c0n0" and again.count == 2
    (other,) = merge_device_fault(
        open_alerts.values(), device_id="lamp-3", fault_codes=["c0n0"], place=PLACE, now=T0, new_alert_id=ids
    )
    assert other.kind is AlertKind.LAMP_FAULT and other.source_id == "lamp-3" and other.count == 1


def test_a_resolved_fault_frees_its_place_under_the_cap() -> None:
    ids = _ids()
    alerts = merge_device_fault(
        [], device_id="lamp-2", fault_codes=[f"f{i}" for i in range(8)], place=PLACE, now=T0, new_alert_id=ids
    )
    alerts[0] = resolve(alerts[0], T0, "device:lamp-2")
    (fresh,) = merge_device_fault(
        alerts, device_id="lamp-2", fault_codes=["lamp_failure"], place=PLACE, now=T0, new_alert_id=ids
    )
    assert fresh.kind is AlertKind.LAMP_FAULT and fresh.fault_code == "lamp_failure"


def test_tamper_codes_a_device_names_are_capped_apart_from_its_lamp_faults() -> None:
    ids = _ids()
    alerts = merge_device_fault(
        [], device_id="lamp-2", fault_codes=[f"f{i}" for i in range(8)], place=PLACE, now=T0, new_alert_id=ids
    )
    alerts += merge_device_fault(
        alerts, device_id="lamp-2", fault_codes=[f"t{i}" for i in range(10)], place=PLACE, now=T0,
        new_alert_id=ids, kind=AlertKind.TAMPER,
    )  # fmt: skip
    tampers = [a for a in alerts if a.kind is AlertKind.TAMPER]
    assert sorted(a.fault_code for a in tampers) == sorted([FAULT_FLOOD_CODE, *(f"t{i}" for i in range(8))])
    assert next(a for a in tampers if a.fault_code == FAULT_FLOOD_CODE).count == 2


def test_a_long_fault_code_flood_counts_every_code_and_adds_a_timeline_event_a_minute_at_most() -> None:
    ids = _ids()
    alerts = {a.id: a for a in merge_device_fault(
        [], device_id="lamp-2", fault_codes=[f"f{i}" for i in range(8)], place=PLACE, now=T0, new_alert_id=ids
    )}  # fmt: skip
    for second in range(0, 600):  # ten minutes at 5 messages a second, one batch a second
        now = T0 + timedelta(seconds=second)
        codes = [f"s{second}m{m}c{c}" for m in range(5) for c in range(32)]
        for alert in merge_device_fault(
            alerts.values(), device_id="lamp-2", fault_codes=codes, place=PLACE, now=now, new_alert_id=ids
        ):
            alerts[alert.id] = alert
    (flood,) = [a for a in alerts.values() if a.fault_code == FAULT_FLOOD_CODE]
    assert flood.count == 600 * 5 * 32
    assert len(flood.timeline) <= 2 + 10
