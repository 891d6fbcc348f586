"""Alerts: the pure core of SOS and maintenance alerts.

Values in, values out: no I/O, no clock (every function that needs the time takes `now`, a
timezone-aware datetime; times are kept in UTC), no mutable globals, stdlib only. Alerts are
frozen; transitions return new alerts whose timeline is the audit trail.

Decisions (details in each module's docstring):

- Time: aware datetimes in, UTC kept; CAP renders KST (+09:00, fixed offset).
- Lifecycle (`_lifecycle`): open -> acknowledged -> dispatched -> resolved; cancel from any
  non-terminal state; open -> dispatched records an implicit acknowledgement; open -> resolved
  only for device alerts (the device cleared itself), never for an SOS.
- Routing (`_routing`): the point's district, plus neighbouring districts near a border;
  outside the service area the city-level centre "11000" (Seoul's own administrative code),
  so every centre maps to `cc/v1/{d}/alerts` with a 5-digit `{d}`.
- Ids are chosen by the caller (`new_alert_id`), so the core needs no randomness.

Exceptions::

    AlertError                      base of everything raised here
    ├── InvalidAlertData            (also a ValueError) naive time, bad coordinates, malformed dict
    └── InvalidTransition           action not allowed in the alert's state; carries
                                    alert_id, action, from_state, to_state
"""

from alerts._cap import (
    CAP_NAMESPACE,
    DEFAULT_SENDER,
    KST,
    CapMessage,
    CapMsgType,
    CapReference,
    cap_msg_type,
    cap_reference,
    cap_time,
    render_cap,
)
from alerts._daynight import (
    DARK_EXPLAINED_BY,
    DEFAULT_DAYNIGHT,
    DayNightPolicy,
    LampCondition,
    LampReading,
    Observation,
    Sky,
    apply_observation,
    fleet_wide,
    lamp_output,
    observe,
    sky_at,
)
from alerts._dedup import (
    DEFAULT_MASS_OUTAGE,
    FAULT_FLOOD_CODE,
    MAX_OPEN_FAULTS_PER_DEVICE,
    SOS_REPEAT_WINDOW_S,
    MassOutagePolicy,
    OfflineReport,
    OutageCluster,
    covering_outage,
    detect_mass_outages,
    fold_sos_press,
    merge_device_fault,
    merge_fault,
    merge_mass_outage,
    merge_sos,
    suppress_covered,
)
from alerts._errors import AlertError, InvalidAlertData, InvalidTransition
from alerts._escalation import (
    DEFAULT_ESCALATION,
    POLICE,
    EscalationAction,
    EscalationKind,
    EscalationPolicy,
    due_escalations,
    escalations_done,
    next_escalation_at,
    record_escalation,
)
from alerts._lifecycle import (
    TARGET_STATE,
    Action,
    CancelReason,
    acknowledge,
    add_position,
    allowed_actions,
    can,
    cancel,
    dispatch,
    resolve,
    transition,
)
from alerts._model import (
    ACTIVE_STATES,
    DEFAULT_SEVERITY,
    DEVICE_KINDS,
    Alert,
    AlertKind,
    AlertState,
    Event,
    EventAction,
    NearestLamp,
    Place,
    Position,
    Severity,
    is_active_state,
    new_alert,
    place_in_words,
)
from alerts._recovery import OUTAGE_RESTORED_FRACTION, outage_restored, resolve_recovered
from alerts._routing import CITY_CENTRE, alerts_topic, is_centre_code, route
from alerts._serial import SCHEMA_VERSION, alert_from_dict, alert_to_dict, place_from_dict, place_to_dict
from alerts._storage import STORAGE_PLACE, STORAGE_SOURCE, storage_alert_update
from alerts._timeline import TimelineEntry, incident_timeline, merged_timeline

__all__ = [
    "ACTIVE_STATES",
    "CAP_NAMESPACE",
    "CITY_CENTRE",
    "DARK_EXPLAINED_BY",
    "DEFAULT_DAYNIGHT",
    "DEFAULT_ESCALATION",
    "DEFAULT_MASS_OUTAGE",
    "DEFAULT_SENDER",
    "DEFAULT_SEVERITY",
    "DEVICE_KINDS",
    "FAULT_FLOOD_CODE",
    "KST",
    "MAX_OPEN_FAULTS_PER_DEVICE",
    "OUTAGE_RESTORED_FRACTION",
    "POLICE",
    "SCHEMA_VERSION",
    "SOS_REPEAT_WINDOW_S",
    "STORAGE_PLACE",
    "STORAGE_SOURCE",
    "TARGET_STATE",
    "Action",
    "Alert",
    "AlertError",
    "AlertKind",
    "AlertState",
    "CancelReason",
    "CapMessage",
    "CapMsgType",
    "CapReference",
    "DayNightPolicy",
    "EscalationAction",
    "EscalationKind",
    "EscalationPolicy",
    "Event",
    "EventAction",
    "InvalidAlertData",
    "InvalidTransition",
    "LampCondition",
    "LampReading",
    "MassOutagePolicy",
    "NearestLamp",
    "Observation",
    "OfflineReport",
    "OutageCluster",
    "Place",
    "Position",
    "Severity",
    "Sky",
    "TimelineEntry",
    "acknowledge",
    "add_position",
    "alert_from_dict",
    "alert_to_dict",
    "alerts_topic",
    "allowed_actions",
    "apply_observation",
    "can",
    "cancel",
    "cap_msg_type",
    "cap_reference",
    "cap_time",
    "covering_outage",
    "detect_mass_outages",
    "dispatch",
    "due_escalations",
    "escalations_done",
    "fleet_wide",
    "fold_sos_press",
    "incident_timeline",
    "is_active_state",
    "is_centre_code",
    "lamp_output",
    "merge_device_fault",
    "merge_fault",
    "merge_mass_outage",
    "merge_sos",
    "merged_timeline",
    "new_alert",
    "next_escalation_at",
    "observe",
    "outage_restored",
    "place_from_dict",
    "place_in_words",
    "place_to_dict",
    "record_escalation",
    "render_cap",
    "resolve",
    "resolve_recovered",
    "route",
    "sky_at",
    "storage_alert_update",
    "suppress_covered",
    "transition",
]
