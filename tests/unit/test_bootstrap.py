"""The one wiring module builds each service's configuration from the settings, and nothing else
hands configuration around (no environment written, no owner invented below the shell)."""

from __future__ import annotations

import dataclasses

import pytest

from broker import ConnectionParams
from streetlight import bootstrap
from streetlight.settings import Settings


def test_the_log_format_is_read_from_the_environment_and_a_wrong_one_is_refused() -> None:
    assert Settings.from_env({}).log_format is None
    assert Settings.from_env({"STREETLIGHT_LOG_FORMAT": "json"}).log_format == "json"
    assert Settings.from_env({"STREETLIGHT_LOG_FORMAT": "console"}).log_format == "console"
    with pytest.raises(ValueError, match="STREETLIGHT_LOG_FORMAT"):
        Settings.from_env({"STREETLIGHT_LOG_FORMAT": "xml"})


def test_the_api_configuration_carries_the_settings_and_the_gazetteer_given() -> None:
    settings = Settings.from_env(
        {
            "STREETLIGHT_API_TOKEN_SECRET": "s3cret",
            "STREETLIGHT_API_KDF_TIME_COST": "2",
            "STREETLIGHT_API_REGISTRATIONS_PER_HOUR": "0",
            "STREETLIGHT_API_METRICS_TOKEN": "scrape",
        }
    )
    gazetteer = bootstrap.load_gazetteer()
    config = bootstrap.api_config(settings, "postgresql://db/x", gazetteer=gazetteer)
    assert config.database_url == "postgresql://db/x"
    assert (config.token_secret, config.kdf_time_cost, config.registrations_per_hour) == ("s3cret", 2, 0)
    assert config.metrics_token == "scrape"
    assert config.gazetteer is gazetteer


def test_the_api_server_options_are_uvicorns_without_its_logging_and_refuse_any_proxy() -> None:
    options = bootstrap.ApiServer("127.0.0.1", 0, trusted_proxies="10.0.0.1").uvicorn_options()
    assert options["log_config"] is None  # the process's own logging set-up, not uvicorn's
    assert options["proxy_headers"] is True and options["forwarded_allow_ips"] == "10.0.0.1"
    with pytest.raises(ValueError):
        bootstrap.ApiServer("127.0.0.1", 0, trusted_proxies="*").uvicorn_options()


def test_the_controller_gets_its_owner_from_the_bootstrap_and_its_policies_from_the_settings() -> None:
    settings = Settings.from_env({"STREETLIGHT_ESCALATE_AFTER_S": "12", "STREETLIGHT_POLICE_AFTER_S": "40"})
    gazetteer = bootstrap.load_gazetteer()
    config = bootstrap.controller_config(
        settings,
        mqtt=ConnectionParams(host="127.0.0.1", port=1883),
        database_url="postgresql://db/x",
        districts=bootstrap.district_codes("all", gazetteer),
        gazetteer=gazetteer,
        hold_s=20,
    )
    assert len(config.districts) == 26 and config.gazetteer is gazetteer
    assert (
        config.owner
        and config.owner
        != bootstrap.controller_config(
            settings, mqtt=config.mqtt, database_url="x", districts=("11230",), gazetteer=gazetteer
        ).owner
    )  # one name per controller
    assert config.escalation.renotify_after_s == 12 and config.escalation.police_after_s == 40
    assert config.holds.hold_s == 20
    assert dataclasses.replace(config, owner="named").owner == "named"
    with pytest.raises(ValueError, match="5 digits"):
        bootstrap.district_codes("11230,gangnam", gazetteer)


def test_an_ingest_workers_configuration_names_its_spool_like_its_session() -> None:
    settings = Settings.from_env({"STREETLIGHT_DATA_DIR": "/srv/sl"})
    options = bootstrap.IngestOptions(index=2, shared=False, client_id_prefix="ing", device_rate_per_s=0.0)
    config = bootstrap.ingest_worker_config(
        settings, ConnectionParams(host="127.0.0.1", port=1883), "postgresql://db/x", options
    )
    assert config.client_id == "ing-2"
    assert str(config.spool_path) == "/srv/sl/spool/ing-2.spool"
    assert config.device_rate_per_s == 0.0 and not config.shared


def test_the_basemap_setting_reaches_the_api_and_a_wrong_template_is_refused_by_name() -> None:
    from api.config import MapTiles
    from api.guards import console_csp

    assert bootstrap.api_config(Settings.from_env({}), "postgresql://db/x").map_tiles is None
    settings = Settings.from_env(
        {
            "STREETLIGHT_MAP_TILES": "https://{s}.tiles.example.go.kr/base/{z}/{x}/{y}{r}.png",
            "STREETLIGHT_MAP_ATTRIBUTION": "© city",
            "STREETLIGHT_MAP_MAX_ZOOM": "18",
        }
    )
    tiles = bootstrap.api_config(settings, "postgresql://db/x").map_tiles
    assert tiles == MapTiles("https://{s}.tiles.example.go.kr/base/{z}/{x}/{y}{r}.png", "© city", 18)
    assert tiles.origin == "https://*.tiles.example.go.kr"
    assert "img-src 'self' data: https://*.tiles.example.go.kr;" in console_csp(tiles.origin)
    assert "img-src 'self' data:;" in console_csp(None)
    for bad, said in [
        ("tile.openstreetmap.org/{z}/{x}/{y}.png", "http"),
        ("https://tile.openstreetmap.org/{z}/{x}.png", "{y}"),
        ("https://tile.example/{z}/{x}/{y}.png?key={key}", "{key}"),
        ("https://a{s}.example/{z}/{x}/{y}.png", "{s}"),
    ]:
        with pytest.raises(ValueError, match="STREETLIGHT_MAP_TILES") as err:
            bootstrap.api_config(Settings.from_env({"STREETLIGHT_MAP_TILES": bad}), "postgresql://db/x")
        assert said in str(err.value)
    with pytest.raises(ValueError, match="STREETLIGHT_MAP_MAX_ZOOM"):
        MapTiles("https://t.example/{z}/{x}/{y}.png", max_zoom=30)
