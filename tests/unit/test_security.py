"""Provisioning, password hashes, ACL rules, config rendering and the backend sender check (no broker)."""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import shutil
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from broker import share_check_topic
from broker.security import (
    CITY_DISTRICT,
    SEOUL_DISTRICTS,
    DeviceFileError,
    DeviceSpec,
    InvalidIdentityError,
    MosquittoOptions,
    PasswordHash,
    ProvisioningError,
    Registry,
    TlsFiles,
    UnknownPrincipalError,
    acl_conf_text,
    acl_file_text,
    check_sender,
    grants_for,
    hash_secret,
    identity_problem,
    load_device_file,
    password_file_text,
    sync_devices,
    users_bootstrap,
    verify_secret,
    write_emqx,
    write_mosquitto,
)
from streetlight.cli import provision
from tests.conftest import skip_unless

ROOT = Path(__file__).resolve().parents[2]
LAMP_A = DeviceSpec("lamp-a", "lamp", "11230", dong_code="1123051", lamp_number="A-1", paired="blink-a")
BLINK_A = DeviceSpec("blink-a", "blinker", "11230", paired="lamp-a")


# -- password hashes ------------------------------------------------------------------------------


def test_a_hash_made_by_mosquitto_passwd_is_read_and_verified_by_our_code(tmp_path: Path) -> None:
    tool = shutil.which("mosquitto_passwd")
    skip_unless(tool is not None, "mosquitto_passwd is not installed")
    assert tool is not None
    pwfile = tmp_path / "pw"
    subprocess.run([tool, "-b", "-c", str(pwfile), "lamp-a", "s3cret-value"], check=True)
    user, _, text = pwfile.read_text().strip().partition(":")
    parsed = PasswordHash.from_mosquitto(text)
    assert user == "lamp-a" and text.startswith("$7$")
    assert verify_secret("s3cret-value", parsed)
    assert not verify_secret("s3cret-valuE", parsed)
    # Same inputs, same bytes: our PBKDF2-SHA512 is mosquitto's.
    ours = hash_secret("s3cret-value", iterations=parsed.iterations, salt=parsed.salt)
    assert ours.mosquitto() == text


def test_our_hash_has_the_mosquitto_2_layout_with_a_12_byte_ascii_salt() -> None:
    h = hash_secret("x")
    _, seven, iterations, salt_b64, key_b64 = h.mosquitto().split("$")
    assert (seven, iterations) == ("7", "101")
    assert len(h.salt) == 12 and h.salt.isascii() and len(h.key) == 64
    assert PasswordHash.from_mosquitto(h.mosquitto()) == h
    assert salt_b64 and key_b64


def test_a_salt_mosquitto_would_drop_is_refused() -> None:
    with pytest.raises(ValueError, match="12-byte salt"):
        hash_secret("x", salt=b"0123456789abcdef")


# -- identities -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "#",
        "+",
        "lamp+1",
        "lamp#",
        "a/b",
        "%c",
        "lamp%u",
        "",
        "-lamp",
        "_lamp",
        "lamp 1",
        "가로등",
        "x" * 65,
        "a\n",
    ],
)
def test_names_that_could_confuse_the_broker_are_refused_at_provisioning(name: str) -> None:
    assert identity_problem(name) is not None
    with pytest.raises(InvalidIdentityError):
        Registry().provision([DeviceSpec(name, "lamp", "11230")])


@pytest.mark.parametrize("name", ["lamp-a", "L1", "blink_0001", "x" * 64])
def test_ordinary_device_ids_are_accepted(name: str) -> None:
    assert identity_problem(name) is None


def test_seoul_district_codes_match_the_vendored_district_polygons() -> None:
    doc = json.loads((ROOT / "geo" / "data" / "seoul_districts.geojson").read_text(encoding="utf-8"))
    assert sorted(f["properties"]["code"] for f in doc["features"]) == list(SEOUL_DISTRICTS)


# -- provisioning -----------------------------------------------------------------------------------


def test_provisioning_issues_devices_services_and_control_centres_their_own_secrets() -> None:
    registry = Registry()
    report = registry.provision([LAMP_A, BLINK_A])
    expected = {"lamp-a", "blink-a", "ingest", "controller", "api", f"cc-{CITY_DISTRICT}"}
    expected |= {f"cc-{d}" for d in SEOUL_DISTRICTS}
    assert set(report.secrets) == expected == set(report.added)
    assert len(set(report.secrets.values())) == len(expected)
    for name, secret in report.secrets.items():
        p = registry.get(name)
        assert p is not None and verify_secret(secret, p.password)


def test_re_provisioning_is_idempotent_and_keeps_existing_credentials(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    first = Registry()
    first.provision([LAMP_A])
    first.save(path)
    again = Registry.load(path)
    report = again.provision([LAMP_A, BLINK_A])
    assert report.added == ["blink-a"] and list(report.secrets) == ["blink-a"]
    assert again.get("lamp-a") == first.get("lamp-a")
    assert password_file_text(again).count("\n") == password_file_text(first).count("\n") + 1
    third = Registry.load(path)
    assert third.provision([LAMP_A]).secrets == {}


def test_the_registry_file_is_private_and_holds_no_secret(tmp_path: Path) -> None:
    registry = Registry()
    secrets = registry.provision([LAMP_A]).secrets
    path = tmp_path / "registry.json"
    registry.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert not any(secret in text for secret in secrets.values())


def test_a_moved_device_keeps_its_secret_and_its_acl_follows() -> None:
    registry = Registry()
    registry.provision([LAMP_A])
    before = registry.get("lamp-a")
    report = registry.provision([DeviceSpec("lamp-a", "lamp", "11010")])
    after = registry.get("lamp-a")
    assert report.updated == ["lamp-a"] and report.secrets == {}
    assert before is not None and after is not None and after.password == before.password
    assert {g.topic for g in grants_for(after)} >= {"sl/v1/11010/lamp-a/telemetry", "sl/v1/11010/lamp-a/cmd"}


def test_rotation_issues_a_new_secret_and_the_old_one_stops_working() -> None:
    registry = Registry()
    old = registry.provision([LAMP_A]).secrets["lamp-a"]
    new = registry.rotate("lamp-a")
    p = registry.get("lamp-a")
    assert p is not None and verify_secret(new, p.password) and not verify_secret(old, p.password)


def test_a_revoked_device_leaves_the_password_file_and_the_acl_until_rotated() -> None:
    registry = Registry()
    registry.provision([LAMP_A, BLINK_A])
    registry.revoke("lamp-a")
    assert "lamp-a:" not in password_file_text(registry)
    assert "user lamp-a\n" not in acl_file_text(registry)
    assert "lamp-a" not in json.dumps(users_bootstrap(registry))
    registry.provision([LAMP_A])  # re-running the device list does not resurrect it
    assert "lamp-a:" not in password_file_text(registry)
    registry.rotate("lamp-a")
    assert "lamp-a:" in password_file_text(registry)


def test_rotating_or_revoking_an_unknown_name_says_so() -> None:
    with pytest.raises(UnknownPrincipalError, match="ghost"):
        Registry().rotate("ghost")
    with pytest.raises(UnknownPrincipalError):
        Registry().revoke("ghost")


def test_a_device_cannot_take_a_service_accounts_name() -> None:
    with pytest.raises(ProvisioningError, match="already provisioned as ingest"):
        Registry().provision([DeviceSpec("ingest", "lamp", "11230")])


# -- device files -----------------------------------------------------------------------------------


def _geojson(tmp_path: Path, props: dict[str, object], coords: list[float] | None = None) -> Path:
    feature = {"type": "Feature", "geometry": {"type": "Point", "coordinates": coords or [127.03, 37.5]}}
    feature["properties"] = props
    path = tmp_path / "lamps.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


def test_devices_are_read_from_geojson_and_csv(tmp_path: Path) -> None:
    props = {
        "id": "lamp-a",
        "kind": "lamp",
        "district_code": "11230",
        "dong_code": "1123051",
        "lamp_number": 7,
    }
    [from_geojson] = load_device_file(_geojson(tmp_path, props))
    assert from_geojson == DeviceSpec("lamp-a", "lamp", "11230", "1123051", "7", None, 37.5, 127.03)
    csv_path = tmp_path / "lamps.csv"
    csv_path.write_text("id,kind,district_code,lat,lon,paired\nblink-a,blinker,11230,37.5,127.03,lamp-a\n")
    assert load_device_file(csv_path) == [
        DeviceSpec("blink-a", "blinker", "11230", None, None, "lamp-a", 37.5, 127.03)
    ]


@pytest.mark.parametrize(
    ("props", "reason"),
    [
        ({"id": "lamp#1", "kind": "lamp", "district_code": "11230"}, "refused identity"),
        ({"id": "lamp-1", "kind": "pole", "district_code": "11230"}, "kind must be"),
        ({"id": "lamp-1", "kind": "lamp", "district_code": "1123"}, "5 ASCII digits"),
        ({"id": "lamp-1", "kind": "lamp"}, "required"),
    ],
)
def test_a_bad_device_row_is_refused_with_where_and_why(
    tmp_path: Path, props: dict[str, object], reason: str
) -> None:
    with pytest.raises(DeviceFileError, match=reason) as info:
        load_device_file(_geojson(tmp_path, props))
    assert info.value.where == "feature 0"


def test_an_impossible_coordinate_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeviceFileError, match="out of range"):
        load_device_file(
            _geojson(tmp_path, {"id": "l", "kind": "lamp", "district_code": "11230"}, [127.0, 91.0])
        )


# -- ACL rules --------------------------------------------------------------------------------------


def test_a_device_may_publish_only_its_own_uplink_topics_and_read_only_its_cmd() -> None:
    registry = Registry()
    registry.provision([LAMP_A])
    p = registry.get("lamp-a")
    assert p is not None
    grants = {(g.access, g.topic) for g in grants_for(p)}
    assert grants == {
        *(("write", f"sl/v1/11230/lamp-a/{ch}") for ch in ("birth", "state", "telemetry", "event", "ack")),
        ("read", "sl/v1/11230/lamp-a/cmd"),
    }


def test_services_get_only_what_they_need() -> None:
    registry = Registry()
    registry.provision([])
    by_role = {
        name: {(g.access, g.topic) for g in grants_for(p)}
        for name in ("ingest", "api", "controller")
        if (p := registry.get(name))
    }
    # Its one publish: the in-session share check, to its own topic, read back through its group.
    assert {t for access, t in by_role["ingest"] if access == "write"} == {"svc/v1/sharecheck/ingest"}
    assert ("read", "svc/v1/sharecheck/ingest") in by_role["ingest"]
    assert ("read", "$share/ingest/sl/v1/+/+/#") in by_role["ingest"]
    assert all(access == "read" for access, _ in by_role["api"])
    assert not any("telemetry" in t or t.endswith("#") for _, t in by_role["api"])
    assert ("write", "sl/v1/+/+/cmd") in by_role["controller"]
    assert not any(a == "write" and "telemetry" in t for a, t in by_role["controller"])


def test_the_share_check_topic_the_acl_grants_is_the_one_ingest_uses() -> None:
    registry = Registry()
    registry.provision([], services=["ingest@3"])
    ingest = registry.get("ingest@3")  # the client id the broker gives this account
    assert ingest is not None
    writes = [g.topic for g in grants_for(ingest) if g.access == "write"]
    assert writes == [share_check_topic("ingest@3")]
    # No wildcard: the grant is one literal topic per account, never a pattern.
    assert not any(c in writes[0] for c in "+#%")


def test_a_control_centre_reads_only_its_districts_alerts_and_the_city_reads_all() -> None:
    registry = Registry()
    registry.provision([])
    jongno, city = registry.get("cc-11010"), registry.get("cc-11000")
    assert jongno is not None and city is not None
    assert [(g.access, g.topic) for g in grants_for(jongno)] == [("read", "cc/v1/11010/alerts")]
    assert [(g.access, g.topic) for g in grants_for(city)] == [("read", "cc/v1/+/alerts")]


def test_the_mosquitto_acl_uses_literal_user_blocks_only() -> None:
    registry = Registry()
    registry.provision([LAMP_A])
    acl = acl_file_text(registry)
    body = [line for line in acl.splitlines() if line and not line.startswith("#")]
    assert all(line.startswith(("user ", "topic read ", "topic write ")) for line in body)
    assert "%" not in acl


# -- generated files --------------------------------------------------------------------------------


def test_the_mosquitto_conf_has_the_limits_and_the_mtls_listener(tmp_path: Path) -> None:
    registry = Registry()
    registry.provision([LAMP_A])
    tls = TlsFiles(tmp_path / "ca.crt", tmp_path / "server.crt", tmp_path / "server.key")
    files = write_mosquitto(registry, tmp_path / "m", MosquittoOptions(dev_port=1883, tls_port=8883, tls=tls))
    conf = files.conf.read_text().splitlines()
    for line in [
        "allow_anonymous false",
        "per_listener_settings false",
        "check_retain_source true",
        "message_size_limit 16384",
        "max_packet_size 17408",
        "listener 1883 127.0.0.1",
        "require_certificate true",
        "use_identity_as_username true",
    ]:
        assert line in conf
    assert stat.S_IMODE(files.password_file.stat().st_mode) == 0o640


def test_the_emqx_files_deny_by_default_and_reuse_the_same_hash(tmp_path: Path) -> None:
    registry = Registry()
    secret = registry.provision([LAMP_A]).secrets["lamp-a"]
    files = write_emqx(registry, tmp_path)
    assert "no_match = deny" in files.conf.read_text()
    assert acl_conf_text(registry).rstrip().endswith("{deny, all}.")
    assert (
        '{allow, {username, "lamp-a"}, subscribe, ["sl/v1/11230/lamp-a/cmd"]}.' in files.acl_conf.read_text()
    )
    [user] = [u for u in json.loads(files.users.read_text()) if u["user_id"] == "lamp-a"]
    assert (
        hashlib.pbkdf2_hmac("sha512", secret.encode(), user["salt"].encode(), 101).hex()
        == user["password_hash"]
    )


# -- backend second wall ----------------------------------------------------------------------------


def _registry_with_lamp() -> Registry:
    registry = Registry()
    registry.provision([LAMP_A])
    return registry


def test_a_registered_device_on_its_own_topic_is_accepted() -> None:
    v = check_sender("lamp-a", "11230", _registry_with_lamp().device("lamp-a"), "lamp-a")
    assert v.accepted and v.flags == ()


def test_an_unknown_device_is_refused() -> None:
    v = check_sender("lamp-z", "11230", _registry_with_lamp().device("lamp-z"), None)
    assert not v.accepted and v.reason == "unknown_device"


def test_a_username_or_payload_claiming_another_device_is_refused() -> None:
    entry = _registry_with_lamp().device("lamp-a")
    assert check_sender("lamp-a", "11230", entry, "lamp-b").reason == "username_mismatch"
    assert (
        check_sender("lamp-a", "11230", entry, None, payload_device_id="lamp-b").reason
        == "payload_id_mismatch"
    )


def test_a_revoked_device_or_an_account_is_refused() -> None:
    registry = _registry_with_lamp()
    assert check_sender("ingest", "11230", registry.get("ingest"), None).reason == "not_a_device"
    registry.revoke("lamp-a")
    assert check_sender("lamp-a", "11230", registry.device("lamp-a"), None).reason == "revoked_device"


def test_a_device_speaking_from_another_district_than_registered_is_flagged() -> None:
    v = check_sender("lamp-a", "11010", _registry_with_lamp().device("lamp-a"), "lamp-a")
    assert v.accepted and v.flags == ("district_mismatch",)


# -- the command ------------------------------------------------------------------------------------


def _run(tmp_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    provision.add_arguments(parser)
    return provision.run(parser.parse_args(["--state-dir", str(tmp_path / "state"), *argv]))


def test_the_command_provisions_writes_a_private_secrets_file_and_is_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = _geojson(tmp_path, {"id": "lamp-a", "kind": "lamp", "district_code": "11230"})
    secrets_file = tmp_path / "issued.csv"
    assert _run(tmp_path, "--devices", str(devices), "--secrets-out", str(secrets_file)) == 0
    out = capsys.readouterr().out
    assert "1 devices (1 new" in out and str(secrets_file) in out
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    rows = {r["username"]: r["secret"] for r in csv.DictReader(secrets_file.read_text().splitlines())}
    assert "lamp-a" in rows and "cc-11250" in rows
    assert (tmp_path / "state" / "mosquitto" / "acl").exists()
    assert (tmp_path / "state" / "emqx" / "acl.conf").exists()

    assert _run(tmp_path, "--devices", str(devices)) == 0
    assert "none issued" in capsys.readouterr().out
    assert not (tmp_path / "state" / "secrets").exists()


def test_the_command_rotates_and_revokes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = _geojson(tmp_path, {"id": "lamp-a", "kind": "lamp", "district_code": "11230"})
    assert _run(tmp_path, "--devices", str(devices), "--print-secrets") == 0
    capsys.readouterr()
    assert _run(tmp_path, "--rotate", "lamp-a", "--print-secrets") == 0
    out = capsys.readouterr().out
    assert out.startswith("username,secret\nlamp-a,") and "rotated    lamp-a" in out
    assert _run(tmp_path, "--revoke", "lamp-a") == 0
    assert "1 revoked" in capsys.readouterr().out
    assert "lamp-a:" not in (tmp_path / "state" / "mosquitto" / "passwords").read_text()


def test_the_command_refuses_a_wildcard_device_id_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = _geojson(tmp_path, {"id": "lamp+1", "kind": "lamp", "district_code": "11230"})
    assert _run(tmp_path, "--devices", str(devices)) == 1
    assert "refused identity 'lamp+1'" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_the_command_refuses_to_revoke_the_last_principal_with_rights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "--print-secrets") == 0
    registry_before = (tmp_path / "state" / "registry.json").read_text()
    names = [p.name for p in Registry.load(tmp_path / "state" / "registry.json")]
    capsys.readouterr()
    assert _run(tmp_path, *(arg for n in names for arg in ("--revoke", n))) == 1
    assert "no rules" in capsys.readouterr().err
    assert (tmp_path / "state" / "registry.json").read_text() == registry_before


def test_the_command_lists_principals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    devices = _geojson(tmp_path, {"id": "lamp-a", "kind": "lamp", "district_code": "11230"})
    assert _run(tmp_path, "--devices", str(devices), "--print-secrets", "--revoke", "lamp-a") == 0
    capsys.readouterr()
    assert _run(tmp_path, "--list") == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["lamp-a", "device", "11230", "revoked"] for line in lines)
    assert any(line.split() == ["cc-11000", "control_centre", "11000", "active"] for line in lines)


def test_the_command_reports_an_unknown_name_to_revoke(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "--revoke", "ghost") == 1
    assert "'ghost' is not provisioned" in capsys.readouterr().err


# -- the database mirror (interface only; store/ owns the table) -------------------------------------


class FakeDeviceSink:
    def __init__(self) -> None:
        self.upserted: list[DeviceSpec] = []
        self.revoked: list[str] = []

    def upsert_devices(self, devices: Sequence[DeviceSpec]) -> None:
        self.upserted.extend(devices)

    def mark_revoked(self, device_id: str) -> None:
        self.revoked.append(device_id)


def test_the_registry_can_be_mirrored_into_a_device_sink() -> None:
    registry = Registry()
    registry.provision([LAMP_A, BLINK_A])
    registry.revoke("blink-a")
    sink = FakeDeviceSink()
    sync_devices(registry, sink)
    assert sink.upserted == [LAMP_A] and sink.revoked == ["blink-a"]
