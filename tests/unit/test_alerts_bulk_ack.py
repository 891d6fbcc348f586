"""Bulk acknowledgement: maintenance alerts only, never an SOS, only open ones; the event says so."""

from __future__ import annotations

from datetime import timedelta

import pytest

from alerts import (
    BULK_ACK_KINDS,
    AlertKind,
    AlertState,
    EventAction,
    InvalidTransition,
    bulk_acknowledge,
    bulk_refusal,
)
from tests.unit.test_alerts_lifecycle import T0, in_state

MAINTENANCE = [k for k in AlertKind if k is not AlertKind.SOS]


def test_every_maintenance_kind_and_no_sos_is_bulk_acknowledgeable() -> None:
    assert AlertKind.SOS not in BULK_ACK_KINDS
    assert set(MAINTENANCE) == set(BULK_ACK_KINDS)


@pytest.mark.parametrize("kind", MAINTENANCE)
def test_an_open_maintenance_alert_is_acknowledged_with_a_bulk_event(kind: AlertKind) -> None:
    alert = in_state(AlertState.OPEN, kind)
    assert bulk_refusal(alert) is None
    after = bulk_acknowledge(alert, T0 + timedelta(minutes=1), "operator:op-maint", "storm round")
    assert after.state is AlertState.ACKNOWLEDGED
    event = after.timeline[-1]
    assert event.action is EventAction.ACKNOWLEDGED and event.actor == "operator:op-maint"
    assert event.note == "storm round" and event.detail("bulk") == "true"


@pytest.mark.parametrize("state", list(AlertState))
def test_an_sos_is_refused_in_every_state(state: AlertState) -> None:
    alert = in_state(state, AlertKind.SOS)
    reason = bulk_refusal(alert)
    assert reason is not None and "SOS" in reason
    with pytest.raises(InvalidTransition, match="bulk acknowledge"):
        bulk_acknowledge(alert, T0 + timedelta(minutes=1), "operator:op-jung")


@pytest.mark.parametrize("state", [s for s in AlertState if s is not AlertState.OPEN])
def test_a_maintenance_alert_past_open_is_refused_saying_its_state(state: AlertState) -> None:
    alert = in_state(state, AlertKind.LAMP_FAULT)
    reason = bulk_refusal(alert)
    assert reason is not None and state.value in reason
    with pytest.raises(InvalidTransition):
        bulk_acknowledge(alert, T0 + timedelta(minutes=1), "operator:op-maint")
