"""Who may send as a device: the per-message identity check over a registry lookup (the
provisioning registry file or the provisioned devices in the database)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

import msgspec

from broker.security import Principal, Registered, Registry, check_sender
from ingest._process import SenderCheckFn


class _IdInPayload(msgspec.Struct):
    device_id: str | None = None


_ID_DECODER: Final = msgspec.json.Decoder(_IdInPayload)


def sender_checker(lookup: Callable[[str], Registered | None]) -> SenderCheckFn:
    """The per-message identity check (DESIGN.md §3 and issue 7's second wall) over a registry lookup."""

    def check(device_id: str, district: str, payload: bytes) -> tuple[str | None, str | None, str]:
        claimed = None
        if b'"device_id"' in payload:  # v1 payloads carry no id; one that claims one must match
            try:
                claimed = _ID_DECODER.decode(payload).device_id
            except (msgspec.DecodeError, msgspec.ValidationError):
                claimed = None
        verdict = check_sender(device_id, district, lookup(device_id), None, payload_device_id=claimed)
        if not verdict.accepted:
            return verdict.reason, None, verdict.detail
        return None, (verdict.flags[0] if verdict.flags else None), verdict.detail

    return check


def file_registry_lookup(path: Path) -> Callable[[str], Principal | None]:
    """Look devices up in the provisioning registry file (re-read when it changes)."""
    state: dict[str, object] = {"mtime": -1.0, "registry": Registry()}

    def lookup(device_id: str) -> Principal | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = -1.0
        if mtime != state["mtime"]:
            state["registry"] = Registry.load(path)
            state["mtime"] = mtime
        registry = state["registry"]
        assert isinstance(registry, Registry)
        return registry.device(device_id)

    return lookup
