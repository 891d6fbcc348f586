"""Instance accounts, client-id binding in the generated config, secrets kept off command lines,
and rewrites that keep the files' owner and mode (issue 15; docs/security.md)."""

from __future__ import annotations

import dataclasses
import grp
import os
import stat
from pathlib import Path

import pytest

from broker import MqttUrlError, parse_mqtt_url, read_password_file, with_credentials
from broker.security import (
    DeviceSpec,
    InvalidIdentityError,
    MosquittoOptions,
    Registry,
    check_service_account,
    grants_for,
    write_mosquitto,
    write_private,
)
from streetlight.cli import main as cli_main
from streetlight.settings import Settings
from tests.conftest import skip_unless

LAMP = DeviceSpec("lamp-a", "lamp", "11230")


def test_every_listener_of_the_generated_config_makes_the_client_id_the_username(tmp_path: Path) -> None:
    registry = Registry()
    registry.provision([LAMP])
    from broker.security import TlsFiles

    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    files = write_mosquitto(registry, tmp_path, MosquittoOptions(dev_port=1883, tls_port=8883, tls=tls))
    blocks = files.conf.read_text().split("\nlistener ")[1:]
    assert len(blocks) == 2
    assert all("use_username_as_clientid true" in block for block in blocks)


def test_service_instance_accounts_get_their_roles_rights_and_devices_cannot_use_their_names() -> None:
    registry = Registry()
    report = registry.provision([LAMP], services=["ingest@0", "ingest@1", "controller@north-a"])
    assert {"ingest@0", "ingest@1", "controller@north-a"} <= set(report.secrets)
    ingest0, ingest = registry.get("ingest@0"), registry.get("ingest")
    assert ingest0 is not None and ingest is not None and ingest0.role == "ingest"
    # The role's rights; the share check's probe topic is each account's own.
    assert grants_for(ingest0) == tuple(
        dataclasses.replace(g, topic=g.topic.replace("sharecheck/ingest", "sharecheck/ingest@0"))
        for g in grants_for(ingest)
    )
    assert ("write", "svc/v1/sharecheck/ingest@0") in {(g.access, g.topic) for g in grants_for(ingest0)}
    with pytest.raises(InvalidIdentityError):
        registry.provision([DeviceSpec("ingest@2", "lamp", "11230")])
    for bad in ("lamp-a", "ingest@", "ingest@#", "ingest@a/b", "root@0", "ingest@0@1"):
        with pytest.raises(InvalidIdentityError):
            check_service_account(bad)


def test_an_ingest_with_an_account_shares_its_subscription_without_probing_the_broker() -> None:
    # The generated ACL gives ingest nothing of $SYS, where the probe reads the broker's name: a
    # deployed ingest probing got nothing and fell back to one plain worker. Probing would also
    # have to log in as a worker, whose persistent session the broker would then hand it.
    import argparse

    from streetlight.cli.ingest import _decide_shared

    registry = Registry()
    registry.provision([])
    ingest = registry.get("ingest")
    assert ingest is not None
    assert not any(g.topic.startswith("$SYS") for g in grants_for(ingest))
    nowhere = parse_mqtt_url("mqtt://ingest%400:secret@127.0.0.1:1")  # nothing listens on port 1
    assert _decide_shared(argparse.Namespace(subscription="auto"), nowhere) is True


def test_a_secret_comes_from_the_provision_csv_row_of_the_user_or_a_one_line_file(tmp_path: Path) -> None:
    csv_file = tmp_path / "issued.csv"
    csv_file.write_text("username,secret\ningest@0,s0\ningest@1,s1\n")
    assert read_password_file(csv_file, "ingest@1") == "s1"
    with pytest.raises(MqttUrlError) as exc:
        read_password_file(csv_file, "controller")
    assert "s0" not in str(exc.value) and "s1" not in str(exc.value)
    one = tmp_path / "secret"
    one.write_text("only-this\n")
    assert read_password_file(one, "anyone") == "only-this"


def test_the_url_without_secret_takes_it_from_the_environment_or_the_file(tmp_path: Path) -> None:
    secrets = tmp_path / "s.csv"
    secrets.write_text("username,secret\ningest@0,from-file\n")
    url = "mqtt://ingest%400@127.0.0.1:1883"
    by_file = Settings.from_env({"MQTT_PASSWORD_FILE": str(secrets)}).mqtt_params(url)
    assert (by_file.username, by_file.password) == ("ingest@0", "from-file")
    by_env = Settings.from_env({"MQTT_PASSWORD": "from-env"}).mqtt_params(url)
    assert by_env.password == "from-env"
    # The old form still works; a URL with no user stays anonymous.
    assert with_credentials(parse_mqtt_url("mqtt://u:p@h:1")).password == "p"
    assert Settings.from_env({"MQTT_PASSWORD": "x"}).mqtt_params("mqtt://h:1").username is None


def test_create_operator_refuses_a_password_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(
        ["api", "--database-url", "postgresql://nowhere.invalid/x", "--create-operator", "op-kim", "hunter2"]
    )
    assert code == 2
    assert "visible to every local user" in capsys.readouterr().out


def test_rewriting_a_file_keeps_the_owner_group_and_mode_the_operator_gave_it(tmp_path: Path) -> None:
    target = tmp_path / "passwords"
    write_private(target, "a\n", mode=0o640)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    group = _another_group()
    os.chown(target, -1, group)
    target.chmod(0o644)
    write_private(target, "b\n", mode=0o640)
    st = target.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode), target.read_text()) == (group, 0o644, "b\n")


def _another_group() -> int:
    skip_unless(os.geteuid() == 0, "changing a file's group to another group needs root")
    for name in ("mosquitto", "nogroup", "daemon"):
        try:
            return grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    skip_unless(False, "no second group on this machine")
    raise AssertionError("unreachable")


def test_a_url_with_a_password_on_the_command_line_is_warned_about(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from streetlight.settings import warn_secrets_in_flags

    flags = {
        "--mqtt-url": "mqtt://ingest:s3cret@h:1883",
        "--database-url": "postgresql://u@h/db",
        "--x": None,
    }
    assert warn_secrets_in_flags("ingest", flags) == ["--mqtt-url"]
    err = capsys.readouterr().err
    assert "--mqtt-url carries a password" in err and "s3cret" not in err


def test_ingests_database_registry_keeps_its_table_and_waits_a_full_interval_while_the_database_is_down() -> (
    None
):
    from ingest import DatabaseRegistry
    from store.errors import StoreUnavailable

    now = [0.0]
    registry = DatabaseRegistry(
        "postgresql://unused", refresh_s=30.0, miss_refresh_s=5.0, clock=lambda: now[0]
    )
    attempts: list[float] = []

    def down() -> int:
        attempts.append(now[0])
        raise StoreUnavailable("connection refused")

    registry.load = down  # type: ignore[method-assign]
    assert registry.lookup("lamp-a") is None  # first lookup: tries, fails, no exception
    for t in (1.0, 6.0, 12.0, 29.0):  # unknown ids, but the last attempt failed: no new attempt
        now[0] = t
        assert registry.lookup("lamp-ghost") is None
    now[0] = 30.5
    registry.lookup("lamp-ghost")
    assert attempts == [0.0, 30.5]


def test_an_unreachable_database_is_store_unavailable_to_ingests_registry_share_group_and_lease() -> None:
    from ingest import ConsumerLease, DatabaseRegistry, share_group
    from store.errors import StoreUnavailable
    from store.registry import provisioned_devices_at

    nowhere = "postgresql://streetlight@127.0.0.1:1/streetlight"  # nothing listens on port 1
    with pytest.raises(StoreUnavailable):
        provisioned_devices_at(nowhere)
    with pytest.raises(StoreUnavailable):
        share_group(nowhere)
    assert DatabaseRegistry(nowhere).lookup("lamp-a") is None
    lease = ConsumerLease(nowhere, "g", "me", ttl_s=3.0)
    assert lease.try_hold() is None
    lease.release()  # logged, never raised


def test_the_auto_registry_check_turns_on_by_itself_once_provisioning_reached_the_database() -> None:
    from ingest import DatabaseRegistry
    from store.registry import ProvisionedDevice

    now = [0.0]
    registry = DatabaseRegistry("postgresql://unused", refresh_s=30.0, clock=lambda: now[0])
    table: dict[str, ProvisionedDevice] = {}

    def load() -> int:
        registry._devices = dict(table)
        registry._loaded_at = now[0]
        return len(table)

    registry.load = load  # type: ignore[method-assign]
    assert registry.active() is False  # a development database: every sender is stored
    table["lamp-a"] = ProvisionedDevice("lamp-a", "lamp", "11230", credentials_fingerprint="f")
    now[0] = 10.0
    assert registry.active() is False  # not re-read before the interval
    now[0] = 31.0
    assert registry.active() is True
    assert registry.lookup("lamp-a") is not None and registry.lookup("lamp-ghost") is None
