"""Errors of provisioning and broker-config generation.

ProvisioningError (ValueError)
├── InvalidIdentityError   a client id / username the broker could misread as a pattern
├── UnknownPrincipalError  --rotate / --revoke of a name that was never provisioned
├── DeviceFileError        a GeoJSON / CSV row that cannot be a device
└── UnsafeAclError         an ACL that would be empty (Mosquitto < 1.5.3 read that as allow-all)
"""

from __future__ import annotations


class ProvisioningError(ValueError):
    """Base class: provisioning or config generation refused to go on."""


class InvalidIdentityError(ProvisioningError):
    """A device id or account name that is not ``^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$``."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"refused identity {name!r}: {reason}")
        self.name = name
        self.reason = reason


class UnknownPrincipalError(ProvisioningError):
    """A name that is not in the registry."""

    def __init__(self, name: str) -> None:
        super().__init__(f"{name!r} is not provisioned (see `streetlight provision --list`)")
        self.name = name


class DeviceFileError(ProvisioningError):
    """A device list entry that cannot be read."""

    def __init__(self, source: str, where: str, reason: str) -> None:
        super().__init__(f"{source}: {where}: {reason}")
        self.source = source
        self.where = where
        self.reason = reason


class UnsafeAclError(ProvisioningError):
    """The generator refuses to write an ACL that grants nothing to anyone."""
