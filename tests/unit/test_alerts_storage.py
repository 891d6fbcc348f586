"""The one storage alert: opened on a failing job, updated when the set changes, resolved after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alerts import CITY_CENTRE, AlertKind, AlertState, route, storage_alert_update

T0 = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


def test_a_failing_job_opens_one_storage_alert_for_the_city_centre() -> None:
    alert, previous = storage_alert_update([], ["maintenance: failed"], now=T0, new_alert_id="mnt-1")
    assert previous is None and alert is not None
    assert alert.kind is AlertKind.STORAGE and alert.state is AlertState.OPEN
    assert route(alert.place)[0] == CITY_CENTRE
    assert "maintenance: failed" in alert.timeline[0].note


def test_the_same_problems_change_nothing_and_more_problems_update_the_same_alert() -> None:
    alert, _ = storage_alert_update([], ["maintenance: failed"], now=T0, new_alert_id="mnt-1")
    assert alert is not None
    assert storage_alert_update([alert], ["maintenance: failed"], now=T0, new_alert_id="mnt-2") == (
        None,
        None,
    )
    more, previous = storage_alert_update(
        [alert],
        ["maintenance: failed", "policy_retention telemetry (job 1001): late"],
        now=T0,
        new_alert_id="x",
    )
    assert previous is alert and more is not None
    assert more.id == "mnt-1" and more.count == 2 and "policy_retention" in more.timeline[-1].note


def test_the_alert_resolves_when_every_job_succeeds_again_and_nothing_opens_without_problems() -> None:
    alert, _ = storage_alert_update([], ["maintenance: late"], now=T0, new_alert_id="mnt-1")
    assert alert is not None
    done, previous = storage_alert_update([alert], [], now=T0 + timedelta(minutes=10), new_alert_id="mnt-2")
    assert previous is alert and done is not None and done.state is AlertState.RESOLVED
    assert storage_alert_update([done], [], now=T0, new_alert_id="mnt-3") == (None, None)
