"""Maintenance planning (alerts._maintenance): fault reports, dark devices, the offline pass."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts import (
    FAULT_FLOOD_CODE,
    MAX_OPEN_FAULTS_PER_DEVICE,
    OFFLINE_COUNTS,
    SEOUL_CITY_HALL,
    Alert,
    AlertChange,
    AlertKind,
    AlertState,
    DarkDevice,
    DeviceLiveness,
    DeviceRecord,
    FaultReport,
    InvalidAlertData,
    MassOutagePolicy,
    OfflineReport,
    PowerLoss,
    alert_from_dict,
    alert_to_dict,
    alerting_reports,
    count_changes,
    dark_devices,
    device_place,
    fault_reports,
    merge_fault,
    plan_fault_alerts,
    plan_offline_alerts,
)

NOW = datetime(2026, 11, 25, 13, 0, 0, tzinfo=UTC)
DONG, OTHER_DONG = "1114052000", "1114053000"
RECORD = DeviceRecord("L1", district_code="11140", dong_code=DONG, lat=37.5663, lon=126.9779)


def ids(prefix: str = "a") -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter)}"


def replay(stored: Iterable[Alert], changes: Iterable[AlertChange]) -> dict[str, Alert]:
    """Apply changes to a store, checking each one names what the store holds as its previous."""
    store = {a.id: a for a in stored}
    for change in changes:
        assert store.get(change.alert.id) == change.previous, change
        store[change.alert.id] = change.alert
    return store


def active(store: dict[str, Alert]) -> list[Alert]:
    return [a for a in store.values() if a.is_active]


# -- faults


def test_fault_events_then_telemetry_faults_not_stored_yet_become_reports_in_order() -> None:
    events = [
        ("L1", "fault", "lamp_failure"),
        ("L1", "fault_cleared", "lamp_failure"),
        ("L2", "flood", "message_flood"),
        ("L3", "registration", "registration_mismatch"),
        ("L1", "tamper", "door_open"),
        ("L1", "power_loss", "power_loss"),
    ]
    telemetry = {"L1": ("overheat", "lamp_failure"), "L4": ("driver",)}
    reports = fault_reports(events, telemetry, {"L1": frozenset({"lamp_failure"})})
    lamp, tamper = AlertKind.LAMP_FAULT, AlertKind.TAMPER
    assert reports == [
        FaultReport("L1", lamp, "lamp_failure", capped=True),
        FaultReport("L1", lamp, "lamp_failure", cleared=True),
        FaultReport("L2", tamper, "message_flood"),
        FaultReport("L3", tamper, "registration_mismatch"),
        FaultReport("L1", tamper, "door_open", capped=True),
        FaultReport("L1", lamp, "power_loss", capped=True),
        FaultReport("L1", lamp, "overheat", capped=True),
        FaultReport("L4", lamp, "driver", capped=True),
    ]


def test_an_event_type_that_raises_no_alert_is_refused() -> None:
    with pytest.raises(InvalidAlertData, match="'reboot'"):
        fault_reports([("L1", "reboot", "x")], {}, {})


def test_a_fault_and_its_clear_in_one_batch_open_then_resolve_one_alert() -> None:
    reports = [
        FaultReport("L1", AlertKind.LAMP_FAULT, "lamp_failure", capped=True),
        FaultReport("L1", AlertKind.LAMP_FAULT, "lamp_failure", cleared=True),
    ]
    changes = plan_fault_alerts(reports, {}, {"L1": RECORD}, now=NOW, new_alert_id=ids())
    assert [(c.alert.id, c.alert.state, c.previous is None) for c in changes] == [
        ("a1", AlertState.OPEN, True),
        ("a1", AlertState.RESOLVED, False),
    ]
    assert changes[1].previous == changes[0].alert
    assert changes[0].alert.place == device_place(RECORD.lat, RECORD.lon, "11140", DONG)


def test_a_repeated_fault_counts_into_the_stored_alert() -> None:
    stored, _ = merge_fault(
        [],
        kind=AlertKind.LAMP_FAULT,
        device_id="L1",
        fault_code="lamp_failure",
        place=device_place(None, None),
        now=NOW - timedelta(hours=1),
        new_alert_id="old",
    )
    reports = [FaultReport("L1", AlertKind.LAMP_FAULT, "lamp_failure", capped=True)]
    (change,) = plan_fault_alerts(reports, {"L1": [stored]}, {}, now=NOW, new_alert_id=ids())
    assert change.previous == stored and change.alert.id == "old" and change.alert.count == 2


def test_ingests_own_findings_are_not_capped_and_a_device_without_a_row_is_placed_at_city_hall() -> None:
    reports = [FaultReport("ghost", AlertKind.TAMPER, "message_flood")] * 2
    changes = plan_fault_alerts(reports, {}, {}, now=NOW, new_alert_id=ids())
    assert [c.alert.count for c in changes] == [1, 2] and changes[1].previous == changes[0].alert
    place = changes[-1].alert.place
    assert (place.lat, place.lon, place.district_code) == (*SEOUL_CITY_HALL, "")


def test_codes_beyond_the_cap_fold_into_one_flood_alert_named_by_its_reason() -> None:
    codes = [f"code{i}" for i in range(MAX_OPEN_FAULTS_PER_DEVICE + 3)]
    reports = [FaultReport("L1", AlertKind.LAMP_FAULT, c, capped=True) for c in codes]
    changes = plan_fault_alerts(reports, {}, {"L1": RECORD}, now=NOW, new_alert_id=ids())
    flood = [c for c in changes if c.reason == FAULT_FLOOD_CODE]
    assert len(changes) == MAX_OPEN_FAULTS_PER_DEVICE + 1 and len(flood) == 1
    assert flood[0].alert.kind is AlertKind.TAMPER and flood[0].alert.count == 3
    assert flood[0].previous is None


def test_a_device_without_a_position_is_placed_at_city_hall_in_its_district() -> None:
    place = device_place(None, 127.0, "11140", DONG)
    assert (place.lat, place.lon, place.district_code, place.dong_code) == (*SEOUL_CITY_HALL, "11140", "")


_REPORT = st.builds(
    FaultReport,
    device_id=st.sampled_from(["L1", "L2"]),
    kind=st.sampled_from([AlertKind.LAMP_FAULT, AlertKind.TAMPER]),
    code=st.sampled_from([f"c{i}" for i in range(12)]),
    cleared=st.booleans(),
    capped=st.booleans(),
).map(lambda r: FaultReport(r.device_id, AlertKind.LAMP_FAULT, r.code, cleared=True) if r.cleared else r)


@settings(max_examples=150, deadline=None)
@given(st.lists(_REPORT, max_size=12), st.lists(_REPORT, max_size=30))
def test_any_batch_of_reports_keeps_one_alert_per_code_the_cap_and_counts_every_report(
    earlier: list[FaultReport], batch: list[FaultReport]
) -> None:
    first = replay([], plan_fault_alerts(earlier, {}, {}, now=NOW, new_alert_id=ids("e")))
    stored = active(first)
    by_device = {d: [a for a in stored if a.source_id == d] for d in ("L1", "L2")}
    later = NOW + timedelta(minutes=5)
    changes = plan_fault_alerts(batch, by_device, {}, now=later, new_alert_id=ids("b"))
    store = replay(stored, changes)  # every change names the stored version it replaces
    live = active(store)
    keys = [(a.source_id, a.kind, a.fault_code) for a in live]
    assert len(keys) == len(set(keys))
    for device in ("L1", "L2"):
        open_faults = [a for a in live if a.source_id == device and a.kind is AlertKind.LAMP_FAULT]
        assert len(open_faults) <= MAX_OPEN_FAULTS_PER_DEVICE
    raised = sum(1 for r in batch if not r.cleared)
    assert sum(a.count for a in store.values()) - sum(a.count for a in stored) == raised
    last: dict[tuple[str, AlertKind, str], FaultReport] = {}
    for r in batch:
        last[(r.device_id, r.kind, r.code)] = r
    for (device, kind, code), r in last.items():
        if r.cleared:
            assert (device, kind, code) not in keys
        else:
            flooded = (device, AlertKind.TAMPER, FAULT_FLOOD_CODE) in keys
            assert (device, kind, code) in keys or (r.capped and flooded)


# -- dark devices


def liveness(
    device_id: str, *, online: bool, changed_s: float | None = None, seen_s: float | None = None, **kw: object
) -> DeviceLiveness:
    changed = None if changed_s is None else NOW - timedelta(seconds=changed_s)
    seen = None if seen_s is None else NOW - timedelta(seconds=seen_s)
    defaults: dict[str, object] = {"district_code": "11140", "dong_code": DONG, "lat": 37.56, "lon": 126.97}
    return DeviceLiveness(device_id, online, changed, seen, **{**defaults, **kw})  # type: ignore[arg-type]


def test_offline_devices_are_dark_since_their_state_changed_and_silent_ones_after_the_silence() -> None:
    rows = [
        liveness("will", online=False, changed_s=30, seen_s=40),
        liveness("never", online=False, changed_s=None, seen_s=None),
        liveness("silent", online=True, changed_s=900, seen_s=400),
        liveness("reconnected", online=True, changed_s=100, seen_s=400),
        liveness("heard", online=True, changed_s=900, seen_s=10),
    ]
    dark = dark_devices(rows, NOW, silent_after_s=180)
    assert [(d.report.device_id, d.report.at) for d in dark] == [
        ("will", NOW - timedelta(seconds=30)),
        ("silent", NOW - timedelta(seconds=400 - 180)),
    ]
    assert all(d.report.dong_code == DONG for d in dark)


def test_a_device_without_a_dong_is_located_by_its_position_else_grouped_by_district() -> None:
    rows = [
        liveness("placed", online=False, changed_s=5, dong_code=""),
        liveness("nowhere", online=False, changed_s=5, dong_code="", lat=None, lon=None),
    ]
    calls: list[tuple[float, float]] = []

    def locate(lat: float, lon: float) -> tuple[str, str]:
        calls.append((lat, lon))
        return "11230", "1123051000"

    placed, nowhere = dark_devices(rows, NOW, silent_after_s=180, locate=locate)
    assert calls == [(37.56, 126.97)]
    assert placed.report.dong_code == "1123051000" and placed.device.district_code == "11230"
    assert nowhere.report.dong_code == "district:11140"
    assert dark_devices(rows[:1], NOW, silent_after_s=180)[0].report.dong_code == "district:11140"


_SECONDS = st.one_of(st.none(), st.integers(0, 3600))


@given(st.lists(st.tuples(st.booleans(), _SECONDS, _SECONDS), max_size=20), st.integers(1, 900))
def test_a_device_is_dark_exactly_when_offline_by_its_will_or_silent_longer_than_the_limit(
    rows: list[tuple[bool, int | None, int | None]], silent_after_s: int
) -> None:
    devices = [liveness(f"d{i}", online=o, changed_s=c, seen_s=s) for i, (o, c, s) in enumerate(rows)]
    dark = {
        d.report.device_id: d.report.at for d in dark_devices(devices, NOW, silent_after_s=silent_after_s)
    }
    for row in devices:
        if not row.online:
            expected = row.state_changed_at
        elif row.last_seen is None:
            expected = None
        else:
            heard = max(row.last_seen, row.state_changed_at or row.last_seen)
            silent = (NOW - heard).total_seconds() > silent_after_s
            expected = heard + timedelta(seconds=silent_after_s) if silent else None
        assert dark.get(row.device_id) == expected
        if expected is not None and row.online:
            assert expected < NOW


def test_a_naive_time_in_a_row_is_refused() -> None:
    with pytest.raises(InvalidAlertData):
        DeviceLiveness("x", False, datetime(2026, 1, 1), None)


# -- the offline pass


def dark(device_id: str, seconds_ago: float, *, dong: str = DONG, online: bool = False) -> DarkDevice:
    at = NOW - timedelta(seconds=seconds_ago)
    row = DeviceLiveness(
        device_id, online, at, at, district_code="11140", dong_code=dong, lat=37.56, lon=126.97
    )
    return DarkDevice(OfflineReport(device_id, dong, at), row)


def test_lamps_of_one_dong_going_dark_together_are_one_outage_and_a_lone_one_waits_its_grace() -> None:
    cluster = [dark(f"M{i:02d}", 30) for i in range(12)]
    lone_old, lone_new = dark("X", 200, dong=OTHER_DONG), dark("Y", 10, dong=OTHER_DONG, online=True)
    changes = plan_offline_alerts(
        [*cluster, lone_old, lone_new], [], {DONG: 40, OTHER_DONG: 40}, now=NOW, new_alert_id=ids()
    )
    counts = count_changes(changes, OFFLINE_COUNTS)
    assert counts == {**dict.fromkeys(OFFLINE_COUNTS, 0), "mass_outage_new": 1, "device_offline_new": 1}
    outage, single = (c.alert for c in changes)
    assert outage.kind is AlertKind.MASS_OUTAGE and len(outage.device_ids) == 12
    assert outage.place.dong_code == DONG
    assert single.source_id == "X" and single.fault_code == "offline"


def test_an_outage_supersedes_the_single_alerts_it_covers_and_resolves_when_most_lamps_are_back() -> None:
    singles = plan_offline_alerts([dark("M00", 300)], [], {}, now=NOW, new_alert_id=ids("s"))
    (single,) = (c.alert for c in singles)
    cluster = [dark(f"M{i:02d}", 60) for i in range(1, 12)] + [dark("M00", 300)]
    later = NOW  # the single is 300 s old, the others 60 s: M00 is outside the 120 s window
    changes = plan_offline_alerts(cluster, [single], {}, now=later, new_alert_id=ids("o"))
    assert [c.reason for c in changes] == ["mass_outage_new"]
    cluster = [dark(f"M{i:02d}", 60) for i in range(12)]
    changes = plan_offline_alerts(cluster, [single], {}, now=later, new_alert_id=ids("o"))
    assert [c.reason for c in changes] == ["mass_outage_new", "superseded"]
    outage = changes[0].alert
    assert changes[1].alert.state is AlertState.CANCELLED and changes[1].previous == single
    # 10 of 12 back: resolved; the 2 still dark, past their grace, get an alert each.
    back_at = later + timedelta(seconds=120)
    back = plan_offline_alerts(cluster[:2], [outage], {}, now=back_at, new_alert_id=ids("r"))
    assert [c.reason for c in back] == ["mass_outage_resolved", "device_offline_new", "device_offline_new"]


@st.composite
def _fleets(draw: st.DrawFn) -> list[DarkDevice]:
    out = []
    for i in range(draw(st.integers(0, 16))):
        if draw(st.booleans()):
            dong = DONG if i % 3 else OTHER_DONG  # a device stays in its neighbourhood
            out.append(dark(f"D{i:02d}", draw(st.integers(0, 400)), dong=dong, online=draw(st.booleans())))
    return out


@settings(max_examples=150, deadline=None)
@given(_fleets(), _fleets(), st.integers(1, 600))
def test_any_two_passes_account_for_every_dark_device_once_and_a_third_changes_nothing(
    first: list[DarkDevice], second: list[DarkDevice], gap_s: int
) -> None:
    policy = MassOutagePolicy(min_lamps=5)
    per_dong = {DONG: 10, OTHER_DONG: 30}
    store = replay(
        [], plan_offline_alerts(first, [], per_dong, now=NOW, new_alert_id=ids("p"), policy=policy)
    )
    later = NOW + timedelta(seconds=gap_s)
    second = [
        DarkDevice(OfflineReport(d.report.device_id, d.report.dong_code, min(d.report.at, later)), d.device)
        for d in second
    ]
    changes = plan_offline_alerts(
        second, active(store), per_dong, now=later, new_alert_id=ids("q"), policy=policy
    )
    store = replay(store.values(), changes)
    live = active(store)
    singles = [a.source_id for a in live if a.kind is AlertKind.DEVICE_OFFLINE]
    in_outages = {d for a in live if a.kind is AlertKind.MASS_OUTAGE for d in a.device_ids}
    assert len(singles) == len(set(singles)) and not set(singles) & in_outages
    dark_now = {d.report.device_id for d in second}
    assert set(singles) <= dark_now  # a device back is never left with an alert
    for d in second:
        if (later - d.report.at).total_seconds() >= 120 or d.report.device_id in in_outages:
            assert d.report.device_id in set(singles) | in_outages
    again = plan_offline_alerts(second, live, per_dong, now=later, new_alert_id=ids("r"), policy=policy)
    assert again == []


# -- power cuts: one alert per outage


def loss_alert(device_id: str, dong: str = DONG, alert_id: str | None = None) -> Alert:
    """A stored power_loss alert (raised by an earlier pass, before the outage was recognised)."""
    alert, _ = merge_fault(
        (),
        kind=AlertKind.LAMP_FAULT,
        device_id=device_id,
        fault_code="power_loss",
        place=device_place(37.56, 126.97, "11140", dong),
        now=NOW,
        new_alert_id=alert_id or f"pl-{device_id}",
    )
    return alert


def loss(
    device_id: str,
    seconds_ago: float | None,
    *,
    dong: str = DONG,
    kind: str = "blinker",
    district: str = "11140",
) -> PowerLoss:
    """A recorded power loss (None: known from telemetry only)."""
    since = None if seconds_ago is None else NOW - timedelta(seconds=seconds_ago)
    record = DeviceRecord(device_id, kind=kind, district_code=district, dong_code=dong, lat=37.56, lon=126.97)
    return PowerLoss(record, since)


def test_a_power_loss_raises_nothing_on_arrival_and_its_clear_still_resolves_an_open_one() -> None:
    reports = [
        FaultReport("L1", AlertKind.LAMP_FAULT, "power_loss", capped=True),  # the last gasp
        FaultReport("L1", AlertKind.LAMP_FAULT, "lamp_failure", capped=True),
    ]
    changes = plan_fault_alerts(reports, {}, {"L1": RECORD}, now=NOW, new_alert_id=ids())
    assert [c.alert.fault_code for c in changes] == ["lamp_failure"]
    open_loss = loss_alert("L1")
    cleared = FaultReport("L1", AlertKind.LAMP_FAULT, "power_loss", cleared=True)
    assert alerting_reports([*reports, cleared]) == [reports[1], cleared]  # what ingest locks and reads
    [change] = plan_fault_alerts([cleared], {"L1": [open_loss]}, {"L1": RECORD}, now=NOW, new_alert_id=ids())
    assert change.previous == open_loss and change.alert.state is AlertState.RESOLVED


def test_a_lone_power_loss_is_raised_after_its_grace_and_is_the_dark_lamps_one_alert() -> None:
    lamp = dark("L1", 30)
    pending = [loss("L1", 31, kind="lamp"), loss("B1", None, dong=OTHER_DONG)]
    early = plan_offline_alerts([lamp], [], {}, now=NOW, new_alert_id=ids("a"), pending=pending)
    # Within the grace, nothing for the lamp; a power loss known from telemetry only is due at once.
    assert [(c.reason, c.alert.source_id) for c in early] == [("power_loss_new", "B1")]
    later = NOW + timedelta(seconds=120)
    lamp = DarkDevice(lamp.report, lamp.device)
    changes = plan_offline_alerts(
        [lamp], [], {}, now=later, new_alert_id=ids("b"), pending=pending, power_losses=[early[0].alert]
    )
    [raised] = changes  # its power loss, not a device_offline beside it
    assert (raised.reason, raised.alert.source_id, raised.alert.fault_code) == (
        "power_loss_new",
        "L1",
        "power_loss",
    )
    assert raised.alert.kind is AlertKind.LAMP_FAULT and raised.alert.place.dong_code == DONG
    again = plan_offline_alerts(
        [lamp],
        [],
        {},
        now=later,
        new_alert_id=ids("c"),
        pending=pending,
        power_losses=[early[0].alert, raised.alert],
    )
    assert again == []
    shorter = plan_offline_alerts(
        [lamp], [], {}, now=NOW, new_alert_id=ids("d"), pending=pending[:1], power_loss_grace_s=20
    )
    assert [c.reason for c in shorter] == ["power_loss_new"]


def test_a_cut_is_one_outage_alert_and_no_power_loss_ever_for_its_devices() -> None:
    lamps = [dark(f"M{i:02d}", 5) for i in range(12)]
    pending = [loss(f"M{i:02d}", 6, kind="lamp") for i in range(12)] + [
        loss(f"B{i:02d}", 6) for i in range(12)
    ]
    changes = plan_offline_alerts(lamps, [], {}, now=NOW, new_alert_id=ids("o"), pending=pending)
    [created] = changes
    outage = created.alert
    assert created.reason == "mass_outage_new" and outage.count == len(outage.device_ids) == 12
    assert outage.areas == (DONG,)
    later = NOW + timedelta(seconds=600)  # long past the grace: the outage is still their alert
    assert plan_offline_alerts(lamps, [outage], {}, now=later, new_alert_id=ids("x"), pending=pending) == []


def test_power_losses_raised_before_the_outage_are_folded_into_it_and_its_count_is_its_lamps() -> None:
    cluster = [dark(f"M{i:02d}", 30) for i in range(12)]
    before = [loss_alert("M00"), loss_alert("B00"), loss_alert("Z", dong=OTHER_DONG)]
    changes = plan_offline_alerts(cluster, [], {}, now=NOW, new_alert_id=ids("o"), power_losses=before)
    assert [c.reason for c in changes] == ["mass_outage_new", "power_loss_folded", "power_loss_folded"]
    outage = changes[0].alert
    assert outage.count == len(outage.device_ids) == 12
    for change in changes[1:]:
        assert change.alert.state is AlertState.CANCELLED and change.alert.source_id in {"M00", "B00"}
        assert change.alert.timeline[-1].detail("superseded_by") == outage.id


def test_a_device_without_a_dong_is_matched_to_the_outage_by_its_located_position() -> None:
    cluster = [dark(f"M{i:02d}", 30) for i in range(12)]
    [created] = plan_offline_alerts(cluster, [], {}, now=NOW, new_alert_id=ids("o"))
    outage = created.alert
    pending = [loss("B", 300, dong="")]
    kept = plan_offline_alerts(cluster, [outage], {}, now=NOW, new_alert_id=ids(), pending=pending)
    assert [c.reason for c in kept] == ["power_loss_new"]  # grouped by district without a locator
    folded = plan_offline_alerts(
        cluster,
        [outage],
        {},
        now=NOW,
        new_alert_id=ids(),
        pending=pending,
        locate=lambda la, lo: ("11140", DONG),
    )
    assert folded == []


def test_a_lamp_back_online_resolves_its_power_loss_and_a_blinker_back_does_not() -> None:
    lamp, blinker = loss_alert("L1"), loss_alert("B1")
    records = {"L1": RECORD, "B1": DeviceRecord("B1", kind="blinker", dong_code=DONG, lat=37.5, lon=126.9)}
    changes = plan_fault_alerts(
        [],
        {"L1": [lamp], "B1": [blinker]},
        records,
        now=NOW,
        new_alert_id=ids(),
        back=["L1", "B1", "unknown"],
    )
    [change] = changes
    assert change.reason == "power_loss_back_online" and change.previous == lamp
    assert change.alert.state is AlertState.RESOLVED


def test_when_an_outage_ends_a_device_still_without_power_and_a_lamp_still_dark_get_their_own_alerts() -> (
    None
):
    cluster = [dark(f"M{i:02d}", 60) for i in range(12)]
    [created] = plan_offline_alerts(cluster, [], {}, now=NOW, new_alert_id=ids("o"))
    outage = created.alert
    pending = [loss("B00", 61), loss("B99", 61, dong=OTHER_DONG), loss("M01", 61, kind="lamp")]
    later = NOW + timedelta(seconds=30)  # within the grace, but the outage was their grace
    still = [cluster[0], cluster[1]]
    changes = plan_offline_alerts(still, [outage], {}, now=later, new_alert_id=ids("e"), pending=pending)
    assert [(c.reason, c.alert.source_id) for c in changes] == [
        ("mass_outage_resolved", DONG),
        ("power_loss_after_outage", "B00"),
        ("power_loss_after_outage", "M01"),
        ("device_offline_new", "M00"),
    ]
    # While it is open, nothing is raised for them (B99, elsewhere, is still within its grace).
    assert plan_offline_alerts(cluster, [outage], {}, now=later, new_alert_id=ids("x"), pending=pending) == []


# -- district outages

DISTRICT, OTHER_DISTRICT = "11140", "11110"
THIRD_DONG, FAR_DONG = "1114054000", "1111051500"


def lamps_of(
    dong: str, n: int, seconds_ago: float, district: str = DISTRICT, prefix: str = ""
) -> list[DarkDevice]:
    at = NOW - timedelta(seconds=seconds_ago)
    return [
        DarkDevice(
            OfflineReport(f"{prefix or dong}-{i:02d}", dong, at),
            DeviceLiveness(
                f"{prefix or dong}-{i:02d}",
                False,
                at,
                at,
                district_code=district,
                dong_code=dong,
                lat=37.56 + i * 1e-4,
                lon=126.97,
            ),
        )
        for i in range(n)
    ]


def test_neighbourhoods_of_a_district_out_together_are_one_district_outage_counting_every_lamp() -> None:
    fleet = [
        *lamps_of(DONG, 12, 20),
        *lamps_of(OTHER_DONG, 15, 25),
        *lamps_of(THIRD_DONG, 11, 10),
        *lamps_of(FAR_DONG, 10, 20, district=OTHER_DISTRICT),  # another district: its own outage
    ]
    pending = [loss(f"B{i}", 5, dong=d) for i, d in enumerate((DONG, OTHER_DONG, THIRD_DONG, FAR_DONG))]
    changes = plan_offline_alerts(fleet, [], {}, now=NOW, new_alert_id=ids("o"), pending=pending)
    assert [c.reason for c in changes] == ["mass_outage_new", "mass_outage_new"]
    district, far = (c.alert for c in changes)
    assert district.source_id == f"district:{DISTRICT}" and district.place.district_code == DISTRICT
    assert district.place.dong_code == "" and district.areas == tuple(sorted((DONG, OTHER_DONG, THIRD_DONG)))
    assert district.count == len(district.device_ids) == 12 + 15 + 11
    assert (far.source_id, far.areas, far.count) == (FAR_DONG, (FAR_DONG,), 10)
    assert alert_from_dict(alert_to_dict(district)) == district
    # A late lamp of one of its neighbourhoods joins it; the blinkers' power losses never show.
    late = lamps_of(OTHER_DONG, 1, 0, prefix="late")
    later = NOW + timedelta(seconds=200)
    grown = plan_offline_alerts(
        [*fleet, *late], [district, far], {}, now=later, new_alert_id=ids("g"), pending=pending
    )
    assert [(c.reason, c.alert.id) for c in grown] == [("mass_outage_grown", district.id)]
    assert grown[0].alert.count == 12 + 15 + 11 + 1


def test_a_neighbourhood_outage_opened_moments_before_is_folded_into_the_district_outage() -> None:
    first = lamps_of(DONG, 12, 40)
    [opened] = plan_offline_alerts(first, [], {}, now=NOW - timedelta(seconds=30), new_alert_id=ids("n"))
    neighbourhood = opened.alert
    second = lamps_of(OTHER_DONG, 10, 10)
    changes = plan_offline_alerts([*first, *second], [neighbourhood], {}, now=NOW, new_alert_id=ids("d"))
    assert [c.reason for c in changes] == ["mass_outage_new", "mass_outage_merged"]
    district, merged = changes[0].alert, changes[1].alert
    assert district.count == 22 and district.areas == (DONG, OTHER_DONG)
    assert merged.id == neighbourhood.id and merged.state is AlertState.CANCELLED
    assert merged.timeline[-1].detail("superseded_by") == district.id
    # A neighbourhood going dark long after the district's outage opened is an outage of its own.
    much_later = lamps_of(OTHER_DONG, 10, -590)  # dark 590 s after NOW
    long_after = plan_offline_alerts(
        [*first, *much_later], [neighbourhood], {}, now=NOW + timedelta(seconds=600), new_alert_id=ids("s")
    )
    assert [(c.reason, c.alert.source_id) for c in long_after] == [("mass_outage_new", OTHER_DONG)]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([DONG, OTHER_DONG, THIRD_DONG, FAR_DONG]), st.integers(0, 14), st.integers(0, 100)
        ),
        max_size=5,
    ),
    st.lists(
        st.tuples(st.sampled_from([DONG, OTHER_DONG, THIRD_DONG, FAR_DONG]), st.integers(0, 300) | st.none()),
        max_size=8,
    ),
)
def test_after_a_pass_each_district_has_one_outage_and_no_power_loss_beside_it(
    groups: list[tuple[str, int, int]], losses: list[tuple[str, int | None]]
) -> None:
    policy = MassOutagePolicy(min_lamps=5)
    fleet = {
        d.report.device_id: d
        for dong, n, ago in groups
        for d in lamps_of(dong, n, ago, district=OTHER_DISTRICT if dong == FAR_DONG else DISTRICT)
    }
    pending = [
        loss(f"P{i}", ago, dong=dong, district=OTHER_DISTRICT if dong == FAR_DONG else DISTRICT)
        for i, (dong, ago) in enumerate(losses)
    ]
    changes = plan_offline_alerts(
        list(fleet.values()), [], {}, now=NOW, new_alert_id=ids("p"), policy=policy, pending=pending
    )
    store = replay([], changes)
    live = active(store)
    outages = [a for a in live if a.kind is AlertKind.MASS_OUTAGE]
    districts = [a.place.district_code for a in outages]
    assert len(districts) == len(set(districts))  # one outage per district in one pass
    for outage in outages:
        assert outage.count == len(outage.device_ids) and outage.areas
    covered = {area for a in outages for area in a.areas}
    raised = [a for a in live if a.fault_code == "power_loss"]
    assert not [a for a in raised if a.place.dong_code in covered]
    for p in pending:
        if p.device.dong_code not in covered and (p.since is None or (NOW - p.since).total_seconds() >= 120):
            assert p.device.device_id in {a.source_id for a in raised}
    assert (
        plan_offline_alerts(
            list(fleet.values()),
            live,
            {},
            now=NOW,
            new_alert_id=ids("q"),
            policy=policy,
            pending=pending,
            power_losses=raised,
        )
        == []
    )
