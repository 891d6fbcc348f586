"""Offline and mass-outage alerts that resolve themselves when the lamps come back.

- A ``device_offline`` alert resolves when its device is no longer dark: back online (a newer
  connection's ``online`` state or birth, for an alert raised by the will) or reporting again
  (telemetry, for a silent device). The caller says which devices are still dark.
- A ``mass_outage`` alert resolves when **at least ``restored_fraction`` (80 %) of its lamps are
  back**: a neighbourhood is lit again although a few lamps still need a visit; those get a
  ``device_offline`` alert each from the next offline pass (they are no longer covered).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from datetime import datetime

from alerts._errors import InvalidAlertData
from alerts._lifecycle import resolve
from alerts._model import Alert, AlertKind, require_aware

OUTAGE_RESTORED_FRACTION = 0.8


def outage_restored(
    alert: Alert, still_dark: Collection[str], restored_fraction: float = OUTAGE_RESTORED_FRACTION
) -> bool:
    """True when at least `restored_fraction` of the outage's lamps are not in `still_dark`."""
    if not (0.0 < restored_fraction <= 1.0) or math.isnan(restored_fraction):
        raise InvalidAlertData(f"restored_fraction must be in (0, 1], got {restored_fraction!r}")
    lamps = set(alert.device_ids)
    if not lamps:
        return True
    back = len(lamps - set(still_dark))
    return back >= restored_fraction * len(lamps)


def resolve_recovered(
    active_alerts: Iterable[Alert],
    still_dark: Collection[str],
    now: datetime,
    restored_fraction: float = OUTAGE_RESTORED_FRACTION,
) -> tuple[Alert, ...]:
    """The active device_offline and mass_outage alerts whose lamps are back, resolved at `now`."""
    at = require_aware(now, "now")
    dark = set(still_dark)
    out: list[Alert] = []
    for alert in active_alerts:
        if not alert.is_active:
            continue
        if alert.kind is AlertKind.DEVICE_OFFLINE and alert.source_id not in dark:
            note = "back online" if alert.fault_code == "offline" else "reporting again"
            out.append(resolve(alert, at, f"device:{alert.source_id}", note=note))
        elif alert.kind is AlertKind.MASS_OUTAGE and outage_restored(alert, dark, restored_fraction):
            back = len(set(alert.device_ids) - dark)
            out.append(resolve(alert, at, "system", note=f"{back} of {len(alert.device_ids)} lamps back"))
    return tuple(out)
