"""The production configurations in deploy/ call commands and options that exist.

They cannot run here (no systemd, no container runtime, no EMQX), so this checks what can
drift: every `streetlight ...` command line in the systemd units and compose files parses with
the real CLI, every variable in the environment files is one the settings read, and the YAML
is well formed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from streetlight.cli import build_parser

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS = (Path(__file__).resolve().parents[2] / "streetlight" / "settings.py").read_text()


def _parses(argv: list[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits on an unknown option
        raise AssertionError(f"streetlight {' '.join(argv)}: does not parse") from exc


def _unit_commands() -> list[tuple[str, list[str]]]:
    found = []
    env = {}
    for f in DEPLOY.glob("systemd/controller-*.env"):
        for line in f.read_text().splitlines():
            if line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k] = v
    for unit in sorted(DEPLOY.glob("systemd/*.service")):
        for line in unit.read_text().splitlines():
            if not line.startswith("ExecStart="):
                continue
            cmd = line.removeprefix("ExecStart=").replace("%i", "0")
            if cmd.startswith("/bin/sh -c "):
                cmd = shlex.split(cmd)[2].removeprefix("exec ")
            for k, v in env.items():
                cmd = cmd.replace(f'"${k}"', v)
            words = shlex.split(cmd)
            found.append(
                (unit.name, words[words.index(next(w for w in words if w.endswith("streetlight"))) + 1 :])
            )
    return found


@pytest.mark.parametrize(("unit", "argv"), _unit_commands())
def test_every_systemd_unit_runs_a_real_command(unit: str, argv: list[str]) -> None:
    _parses(argv)


def _compose_commands() -> list[tuple[str, list[str]]]:
    found = []
    for f in sorted(DEPLOY.glob("compose/*.yaml")):
        doc = yaml.safe_load(f.read_text())  # merge keys (<<) resolved: our services carry our image
        for name, svc in doc["services"].items():
            cmd = (svc or {}).get("command")
            ours = (svc or {}).get("image") == "streetlight:latest" or name == "ingest"  # override file
            if cmd and ours:
                found.append((f"{f.name}:{name}", [str(c) for c in cmd]))
    return found


@pytest.mark.parametrize(("service", "argv"), _compose_commands())
def test_every_compose_service_runs_a_real_command(service: str, argv: list[str]) -> None:
    _parses(argv)


def test_the_compose_files_name_the_services_a_city_needs() -> None:
    main = yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text())["services"]
    assert {
        "mosquitto",
        "db",
        "migrate",
        "ingest",
        "controller-north",
        "controller-south",
        "api",
        "proxy",
    } <= set(main)
    assert "timescale" in main["db"]["image"]
    emqx = yaml.safe_load((DEPLOY / "compose/compose.emqx.yaml").read_text())["services"]
    assert {"emqx1", "emqx2", "emqx3"} <= set(emqx)


def test_the_controller_shards_cover_all_25_districts_once() -> None:
    codes: list[str] = []
    for f in DEPLOY.glob("systemd/controller-*.env"):
        codes += re.findall(r"\b11\d{3}\b", f.read_text().split("=", 1)[1])
    from geo import Gazetteer

    assert sorted(codes) == sorted(d.code for d in Gazetteer.load().districts)


def test_environment_files_only_use_variables_the_settings_read() -> None:
    for f in [*DEPLOY.glob("systemd/*.env"), *DEPLOY.glob("compose/*.env")]:
        for line in f.read_text().splitlines():
            if not line or line.startswith("#"):
                continue
            name = line.split("=", 1)[0]
            if name == "STREETLIGHT_CONTROLLER_DISTRICTS":
                continue  # read by the unit's own command line
            assert f'"{name}"' in SETTINGS, f"{f.name}: {name} is not read by streetlight/settings.py"


def _deployed_mqtt_urls() -> list[tuple[str, str]]:
    found = []
    for f in [*DEPLOY.glob("systemd/*"), *DEPLOY.glob("compose/*")]:
        for url in re.findall(r"mqtts?://[^\s\"']+", f.read_text()):
            found.append((f.name, url.replace("%%", "%").replace("%i", "0")))
    return found


def test_every_deployed_mqtt_url_names_an_instance_account_and_carries_no_secret() -> None:
    # Secrets on a command line or in a unit are visible to every local user (ps, systemctl show);
    # they come from MQTT_PASSWORD_FILE. Each URL's user is an account `provision --service` makes.
    from broker import parse_mqtt_url
    from broker.security import check_service_account

    urls = _deployed_mqtt_urls()
    assert urls
    for where, url in urls:
        params = parse_mqtt_url(url)
        assert params.password is None, f"{where}: {url} carries a secret"
        assert params.username is not None, f"{where}: {url} names no account"
        check_service_account(params.username)


def test_no_two_deployed_controllers_share_an_mqtt_account() -> None:
    # The broker makes the client id the username: two instances on one account would take each
    # other's connection over, so each controller (and each standby) has its own.
    compose = yaml.safe_load((DEPLOY / "compose/compose.yaml").read_text())["services"]
    accounts = [
        svc["environment"]["MQTT_URL"] for name, svc in compose.items() if name.startswith("controller")
    ]
    assert len(accounts) == 4 and len(set(accounts)) == 4


def test_the_shipped_mosquitto_conf_carries_the_limits_that_provision_generates(tmp_path: Path) -> None:
    from broker.security import MosquittoOptions, Registry, write_mosquitto

    registry = Registry()
    registry.provision([])
    files = write_mosquitto(registry, tmp_path, MosquittoOptions())
    limits = re.compile(r"^(max_\w+|queue_qos0_messages|message_size_limit) ")
    generated = {line for line in files.conf.read_text().splitlines() if limits.match(line)}
    shipped = {
        line
        for line in (DEPLOY / "mosquitto" / "mosquitto.conf").read_text().splitlines()
        if limits.match(line)
    }
    assert "max_connections -1" in shipped and "max_connections -1" in generated  # per listener
    assert shipped == generated


def test_every_websocket_route_of_the_api_is_upgraded_by_the_shipped_nginx_config() -> None:
    from starlette.routing import WebSocketRoute

    from api.app import create_app
    from api.config import ApiConfig

    conf = (DEPLOY / "nginx" / "streetlight.conf").read_text()
    upgraded: list[tuple[bool, str]] = []  # (is_regex, pattern) of locations that upgrade
    for m in re.finditer(r"location\s+(~\s+)?(\S+)\s*\{([^}]*)\}", conf):
        if "Upgrade $http_upgrade" in m.group(3):
            upgraded.append((bool(m.group(1)), m.group(2)))

    def routes(items: list[Any]) -> list[Any]:  # included routers nest their routes
        out = []
        for r in items:
            inner = getattr(r, "original_router", None)
            out += routes(list(inner.routes)) if inner is not None else [r]
        return out

    paths = [
        r.path
        for r in routes(list(create_app(ApiConfig("postgresql://unused")).routes))
        if isinstance(r, WebSocketRoute)
    ]
    assert paths, "the API has WebSocket routes"
    for path in paths:
        concrete = re.sub(r"\{[^}]+\}", "w-123", path)
        assert any(
            re.search(pat, concrete) if is_re else concrete.startswith(pat) for is_re, pat in upgraded
        ), f"nginx does not upgrade {path}: behind the proxy the socket never opens"
