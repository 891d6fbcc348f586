"""Topic names of the v1 namespace (DESIGN.md §3): builders, a fast parser and subscription filters.

Device topics are ``sl/v1/{district}/{device_id}/{channel}``; control-centre topics are
``cc/v1/{district}/alerts``. The parser runs once per message on the ingest path, so it splits
the string and checks characters with ``str`` methods (C speed) instead of a regex.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple, get_args

from broker._errors import TopicError

Channel = Literal["birth", "state", "telemetry", "event", "cmd", "ack"]
CHANNELS: Final[frozenset[str]] = frozenset(get_args(Channel))
# What devices publish; ``cmd`` is the one channel the backend publishes on.
UPLINK_CHANNELS: Final[tuple[Channel, ...]] = ("birth", "state", "telemetry", "event", "ack")
DEVICE_PREFIX: Final = "sl/v1"
ALERTS_PREFIX: Final = "cc/v1"
DEVICE_ID_MAX_LEN: Final = 64  # DESIGN.md §3: ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$
DEVICE_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
INGEST_GROUP: Final = "ingest"
# MQTT 5 / EMQX / Mosquitto >= 2 shared subscription syntax: $share/{group}/{filter}.
INGEST_SHARED_FILTER: Final = f"$share/{INGEST_GROUP}/{DEVICE_PREFIX}/+/+/#"
# Where an ingest worker with a shared subscription checks, in its own session, that the broker
# delivers ``$share`` subscriptions (ingest/_sharecheck.py): one topic per client id, outside
# ``sl/v1`` so no ingest or controller filter matches it.
SHARE_CHECK_PREFIX: Final = "svc/v1/sharecheck"


def share_check_topic(client_id: str) -> str:
    """The topic a worker with client id ``client_id`` sends its share self-check to."""
    return f"{SHARE_CHECK_PREFIX}/{client_id}"


class DeviceTopic(NamedTuple):
    """A parsed ``sl/v1/{district_code}/{device_id}/{channel}`` topic."""

    district_code: str
    device_id: str
    channel: Channel


class AlertsTopic(NamedTuple):
    """A parsed ``cc/v1/{district_code}/alerts`` topic."""

    district_code: str


def device_id_problem(device_id: str) -> str | None:
    """Why ``device_id`` is not a valid device id, or None when it is."""
    if not device_id:
        return "device id is empty"
    if len(device_id) > DEVICE_ID_MAX_LEN:
        return f"device id is {len(device_id)} characters long, at most {DEVICE_ID_MAX_LEN} allowed"
    # isascii() first: str.isalnum() alone accepts non-ASCII letters and digits such as '가' or '٣'.
    if not device_id.isascii() or not device_id[0].isalnum():
        return f"device id must match {DEVICE_ID_PATTERN}"
    if not device_id.replace("-", "").replace("_", "").isalnum():
        return f"device id must match {DEVICE_ID_PATTERN} (no '/', '+', '#', spaces or other characters)"
    return None


def district_problem(district_code: str) -> str | None:
    """Why ``district_code`` is not a 5-digit district code, or None when it is."""
    if len(district_code) != 5 or not district_code.isascii() or not district_code.isdigit():
        return "district code must be 5 ASCII digits"
    return None


def is_valid_device_id(device_id: str) -> bool:
    """True when ``device_id`` matches ``^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$``."""
    return device_id_problem(device_id) is None


def _check(district_code: str, device_id: str | None = None) -> None:
    problem = district_problem(district_code)
    if problem is None and device_id is not None:
        problem = device_id_problem(device_id)
    if problem is not None:
        raise TopicError(f"{district_code}/{device_id}" if device_id is not None else district_code, problem)


def device_topic(district_code: str, device_id: str, channel: Channel) -> str:
    """The topic ``sl/v1/{district_code}/{device_id}/{channel}``; raises TopicError on bad parts."""
    _check(district_code, device_id)
    if channel not in CHANNELS:
        raise TopicError(channel, f"channel must be one of {sorted(CHANNELS)}")
    return f"{DEVICE_PREFIX}/{district_code}/{device_id}/{channel}"


def alerts_topic(district_code: str) -> str:
    """The control-centre topic ``cc/v1/{district_code}/alerts``."""
    _check(district_code)
    return f"{ALERTS_PREFIX}/{district_code}/alerts"


# Ingest sees the same topics over and over (16k lamps x 5 uplink channels in Seoul's zones): a
# dict hit costs about a tenth of a fresh parse (docs/protocol.md, "Decode speed"). Bounded, so a
# flood of made-up topics costs at most ~25 MB before the cache is cleared; only valid topics enter.
_PARSED_CACHE_MAX: Final = 131_072
_parsed: dict[str, DeviceTopic] = {}


def parse_device_topic(topic: str) -> DeviceTopic:
    """Split an ``sl/v1/...`` topic into its parts; raises TopicError with the reason otherwise."""
    parsed = _parsed.get(topic)
    if parsed is None:
        parsed = _parse_device_topic(topic)
        if len(_parsed) >= _PARSED_CACHE_MAX:
            _parsed.clear()
        _parsed[topic] = parsed
    return parsed


def _parse_device_topic(topic: str) -> DeviceTopic:
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "sl" or parts[1] != "v1":
        raise TopicError(topic, "not a device topic sl/v1/{district}/{device_id}/{channel}")
    _, _, district_code, device_id, channel = parts
    if channel not in CHANNELS:
        raise TopicError(topic, f"unknown channel {channel!r}; expected one of {sorted(CHANNELS)}")
    problem = district_problem(district_code) or device_id_problem(device_id)
    if problem is not None:
        raise TopicError(topic, problem)
    return DeviceTopic(district_code, device_id, channel)  # type: ignore[arg-type]  # checked above


def parse_alerts_topic(topic: str) -> AlertsTopic:
    """Parse ``cc/v1/{district_code}/alerts``; raises TopicError with the reason otherwise."""
    parts = topic.split("/")
    if len(parts) != 4 or parts[0] != "cc" or parts[1] != "v1" or parts[3] != "alerts":
        raise TopicError(topic, "not a control-centre topic cc/v1/{district}/alerts")
    problem = district_problem(parts[2])
    if problem is not None:
        raise TopicError(topic, problem)
    return AlertsTopic(parts[2])


def parse_topic(topic: str) -> DeviceTopic | AlertsTopic:
    """Parse any v1 topic (device or control centre)."""
    if topic.startswith("cc/"):
        return parse_alerts_topic(topic)
    return parse_device_topic(topic)


def device_filter(district_code: str = "+", device_id: str = "+", channel: str = "#") -> str:
    """A subscription filter over device topics; each part is a value or a wildcard."""
    if district_code != "+":
        _check(district_code)
    if device_id != "+" and (problem := device_id_problem(device_id)) is not None:
        raise TopicError(device_id, problem)
    if channel not in ("+", "#") and channel not in CHANNELS:
        raise TopicError(channel, f"channel must be '+', '#' or one of {sorted(CHANNELS)}")
    return f"{DEVICE_PREFIX}/{district_code}/{device_id}/{channel}"


def alerts_filter(district_code: str = "+") -> str:
    """A subscription filter over control-centre alert topics (one district or all)."""
    if district_code != "+":
        _check(district_code)
    return f"{ALERTS_PREFIX}/{district_code}/alerts"


def shared(group: str, topic_filter: str) -> str:
    """The shared-subscription form ``$share/{group}/{topic_filter}`` (load split across a group)."""
    if not group or any(c in group for c in "/+#") or not group.isprintable():
        raise TopicError(group, "a share group name must be non-empty without '/', '+' or '#'")
    return f"$share/{group}/{topic_filter}"


def unshared(topic_filter: str) -> str:
    """The plain filter inside a ``$share/{group}/...`` filter (unchanged when not shared)."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        if len(parts) == 3:
            return parts[2]
    return topic_filter


def ingest_filters(*, shared_subscription: bool = True, group: str = INGEST_GROUP) -> list[str]:
    """Filters for an ingest worker: the device-to-backend channels, shared (in ``group``) when the
    broker can. A deployed ingest uses a secret group name (ingest._registry.share_group)."""
    filters = [device_filter(channel=channel) for channel in UPLINK_CHANNELS]
    if shared_subscription:
        return [shared(group, f) for f in filters]
    return filters
