"""The one data-loss alert: sequence gaps of many lamps in many batches are one alert for the city
centre, counted, until an operator resolves it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts import CITY_CENTRE, AlertKind, AlertState, data_loss_update, resolve, route

T0 = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


def test_gaps_of_many_lamps_open_one_alert_for_the_city_centre_counting_the_missing_messages() -> None:
    gaps = {f"lamp-{i}": ("11230", 40) for i in range(20)} | {"lamp-x": ("11110", 5)}
    alert, previous = data_loss_update([], gaps, now=T0, new_alert_id="mnt-1")
    assert previous is None and alert is not None
    assert alert.kind is AlertKind.DATA_LOSS and alert.state is AlertState.OPEN
    assert alert.count == 805 and len(alert.device_ids) == 21
    assert route(alert.place)[0] == CITY_CENTRE
    assert "805 messages missing from 21 devices (11230: 800, 11110: 5)" in alert.timeline[0].note


def test_later_gaps_count_into_the_same_alert_with_one_timeline_event_a_minute_at_most() -> None:
    alert, _ = data_loss_update([], {"lamp-1": ("11230", 3)}, now=T0, new_alert_id="mnt-1")
    assert alert is not None
    soon, previous = data_loss_update(
        [alert], {"lamp-2": ("11230", 2)}, now=T0 + timedelta(seconds=5), new_alert_id="mnt-2"
    )
    assert soon is not None and previous is alert
    assert (soon.id, soon.count, soon.device_ids, len(soon.timeline)) == ("mnt-1", 5, ("lamp-1", "lamp-2"), 1)
    later, _ = data_loss_update(
        [soon], {"lamp-3": ("11110", 1)}, now=T0 + timedelta(minutes=2), new_alert_id="mnt-3"
    )
    assert later is not None and later.id == "mnt-1" and later.count == 6 and len(later.timeline) == 2


def test_no_gap_changes_nothing_and_a_loss_after_the_operator_resolved_it_opens_a_new_alert() -> None:
    assert data_loss_update([], {}, now=T0, new_alert_id="mnt-1") == (None, None)
    alert, _ = data_loss_update([], {"lamp-1": ("11230", 3)}, now=T0, new_alert_id="mnt-1")
    assert alert is not None
    done = resolve(alert, T0 + timedelta(minutes=1), "operator:kim", "broker queue raised")
    again, previous = data_loss_update(
        [done], {"lamp-1": ("11230", 1)}, now=T0 + timedelta(minutes=2), new_alert_id="mnt-2"
    )
    assert previous is None and again is not None and again.id == "mnt-2" and again.count == 1
