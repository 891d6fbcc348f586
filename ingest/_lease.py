"""One consumer at a time for ingest instances on a broker without shared subscriptions.

On such a broker (RabbitMQ, a Mosquitto bridge) every plain subscriber gets every message, so
instances of one *group* take turns instead: the holder of the lease ``ingest/<group>`` (a row
of ``controller_leases``, renewed every third of its time to live, as the controllers' district
leases are) connects with the group's MQTT client id and consumes; the others keep no MQTT
connection and try the lease again every third of its time to live. Because every holder resumes
the group's one persistent session, what was queued or left unacknowledged when a holder died is
delivered to the next one: nothing is lost, and a message the dead holder committed but had not
acknowledged yet is written again and dropped by the time series' dedup key.
"""

from __future__ import annotations

from typing import Final

from runtime.logs import get_logger
from store.errors import StoreUnavailable
from store.leases import LeaseConnection

log = get_logger(__name__)

LEASE_PREFIX: Final = "ingest/"
# Time to live of the lease: a dead holder is replaced within it (plus a third of it at most).
DEFAULT_LEASE_TTL_S: Final = 15.0


def lease_key(group: str) -> str:
    """The lease row of an ingest group (same table as the controllers', never a district code)."""
    return f"{LEASE_PREFIX}{group}"


class ConsumerLease:
    """Take, renew and give up the group's lease on a connection of its own."""

    def __init__(self, database_url: str, group: str, owner: str, ttl_s: float = DEFAULT_LEASE_TTL_S) -> None:
        self.database_url = database_url
        self.key = lease_key(group)
        self.owner = owner
        self.ttl_s = ttl_s
        self._link = LeaseConnection(database_url)

    def try_hold(self) -> bool | None:
        """Take or renew the lease: True held, False another owner holds it, None database unreachable."""
        try:
            return self._link.acquire(self.key, self.owner, self.ttl_s)
        except StoreUnavailable as exc:
            log.warning("ingest_lease_unconfirmed", key=self.key, owner=self.owner, error=str(exc))
            return None

    def release(self) -> None:
        """Give the lease up (clean stop) so a standby takes over at once."""
        try:
            self._link.release(self.key, self.owner)
        except StoreUnavailable as exc:
            log.warning("ingest_lease_not_released", key=self.key, owner=self.owner, error=str(exc))
        finally:
            self.close()

    def close(self) -> None:
        """Close the lease's connection (the lease itself runs out on its own)."""
        self._link.close()
