"""Broker security: device identities, credentials, ACLs and broker configuration.

Public names only; the modules behind them are private. See docs/security.md.
"""

from broker.security._acl import Grant, acl_table, grants_for
from broker.security._emqx import (
    EmqxFiles,
    acl_conf_text,
    authz_rules,
    emqx_conf_text,
    users_bootstrap,
    write_emqx,
)
from broker.security._errors import (
    DeviceFileError,
    InvalidIdentityError,
    ProvisioningError,
    UnknownPrincipalError,
    UnsafeAclError,
)
from broker.security._ids import (
    CITY_DISTRICT,
    SEOUL_DISTRICTS,
    SERVICE_ROLES,
    check_identity,
    check_service_account,
    identity_problem,
    register_device_id,
    service_role,
)
from broker.security._mosquitto import (
    MAX_PAYLOAD_BYTES,
    PACKET_HEADROOM_BYTES,
    MosquittoFiles,
    MosquittoOptions,
    TlsFiles,
    acl_file_text,
    mosquitto_conf_text,
    password_file_text,
    reload_mosquitto,
    write_mosquitto,
)
from broker.security._passwords import PasswordHash, hash_secret, new_secret, verify_secret
from broker.security._registry import (
    REGISTRY_FILE,
    DeviceSink,
    DeviceSpec,
    Principal,
    ProvisionReport,
    Registry,
    load_device_file,
    sync_devices,
    write_private,
)
from broker.security._sender import Registered, Verdict, check_sender

__all__ = [
    "CITY_DISTRICT",
    "MAX_PAYLOAD_BYTES",
    "PACKET_HEADROOM_BYTES",
    "REGISTRY_FILE",
    "SEOUL_DISTRICTS",
    "SERVICE_ROLES",
    "DeviceFileError",
    "DeviceSink",
    "DeviceSpec",
    "EmqxFiles",
    "Grant",
    "InvalidIdentityError",
    "MosquittoFiles",
    "MosquittoOptions",
    "PasswordHash",
    "Principal",
    "ProvisionReport",
    "ProvisioningError",
    "Registered",
    "Registry",
    "TlsFiles",
    "UnknownPrincipalError",
    "UnsafeAclError",
    "Verdict",
    "acl_conf_text",
    "acl_file_text",
    "acl_table",
    "authz_rules",
    "check_identity",
    "check_sender",
    "check_service_account",
    "emqx_conf_text",
    "grants_for",
    "hash_secret",
    "identity_problem",
    "load_device_file",
    "mosquitto_conf_text",
    "new_secret",
    "password_file_text",
    "register_device_id",
    "reload_mosquitto",
    "service_role",
    "sync_devices",
    "users_bootstrap",
    "verify_secret",
    "write_emqx",
    "write_mosquitto",
    "write_private",
]
