"""The exceptions of the alerts core (the tree is drawn in `alerts.__init__`)."""

from __future__ import annotations


class AlertError(Exception):
    """Base class of every error raised by `alerts`."""


class InvalidAlertData(AlertError, ValueError):
    """A value handed to `alerts` (a naive time, bad coordinates, a malformed dict) is refused."""


class InvalidTransition(AlertError):
    """An action that the alert's current state does not allow."""

    def __init__(self, alert_id: str, action: str, from_state: str, to_state: str) -> None:
        self.alert_id = alert_id
        self.action = action
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"alert {alert_id}: cannot {action} from state {from_state!r} to {to_state!r}")
