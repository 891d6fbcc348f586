"""paho-mqtt 2 helpers for devices and the high-rate ingest path (threaded, callback API v2)."""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from broker._connection import BACKOFF_BASE_S, BACKOFF_CAP_S, ConnectionParams
from broker._payloads import Birth, encode, online_state
from broker._topics import device_topic
from broker._will import Will, device_will

log = logging.getLogger(__name__)


def paho_client(
    params: ConnectionParams,
    client_id: str,
    *,
    clean_session: bool = True,
    will: Will | None = None,
    manual_ack: bool = False,
    reconnect_base_s: float = BACKOFF_BASE_S,
    reconnect_cap_s: float = BACKOFF_CAP_S,
    protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    rng: random.Random | None = None,
) -> mqtt.Client:
    """A configured, unconnected paho client (callback API v2); call ``connect`` and a loop yourself.

    ``manual_ack=True`` leaves QoS 1 acknowledgement to the caller (``client.ack(mid, qos)``), so
    ingest can acknowledge only after a message is durable.
    """
    rng = rng or random.Random()
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=clean_session if protocol != MQTTProtocolVersion.MQTTv5 else None,
        protocol=protocol,
        manual_ack=manual_ack,
    )
    if params.username is not None:
        client.username_pw_set(params.username, params.password)
    if params.tls:
        client.tls_set_context(ssl.create_default_context())
    if will is not None:
        client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)
    # paho's own reconnect loop doubles from min_delay up to max_delay with no jitter; drawing both
    # per client spreads 16k lamps reconnecting after a broker restart over the window instead of
    # in lockstep waves (the thundering herd that full jitter avoids in the asyncio session).
    min_delay = rng.randint(1, max(1, round(2 * reconnect_base_s)))
    cap = max(min_delay, round(reconnect_cap_s))
    max_delay = rng.randint(max(min_delay, cap // 2), cap)
    client.reconnect_delay_set(min_delay=min_delay, max_delay=max_delay)
    return client


class DeviceLink:
    """A device's connection lifecycle on a paho client: will per connection, birth and online after connect.

    Each connection has its own ``bdseq``: the will set before connecting carries it, the birth and
    the retained ``online`` state after CONNACK repeat it, and a disconnect increments it and sets the
    next will before paho reconnects. So the backend can tell a stale ``offline`` from a fresh one.
    """

    def __init__(
        self,
        client: mqtt.Client,
        district_code: str,
        device_id: str,
        birth: Callable[[int], Birth],
        *,
        bdseq: int = 0,
        on_connected: Callable[[mqtt.Client], None] | None = None,
    ) -> None:
        self.client = client
        self.district_code = district_code
        self.device_id = device_id
        self.bdseq = bdseq
        self._birth = birth
        self._on_connected = on_connected
        self.cmd_topic = device_topic(district_code, device_id, "cmd")
        self._set_will()
        client.on_connect = self._handle_connect
        client.on_disconnect = self._handle_disconnect

    def _set_will(self) -> None:
        will = device_will(self.district_code, self.device_id, self.bdseq)
        self.client.will_set(will.topic, will.payload, qos=will.qos, retain=will.retain)

    def _handle_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("device connect refused device_id=%s reason=%s", self.device_id, reason)
            return
        client.subscribe(self.cmd_topic, qos=1)
        topic = device_topic(self.district_code, self.device_id, "birth")
        client.publish(topic, encode(self._birth(self.bdseq)), qos=1)
        state = device_topic(self.district_code, self.device_id, "state")
        client.publish(state, online_state(self.bdseq), qos=1, retain=True)
        if self._on_connected is not None:
            self._on_connected(client)

    def _handle_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, _reason: Any, _props: Any
    ) -> None:
        self.bdseq += 1
        self._set_will()
