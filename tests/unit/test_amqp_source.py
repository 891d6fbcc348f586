"""``streetlight ingest --source amqp`` and ``streetlight up --cluster``: what they are given and
what they refuse, clearly and without a traceback (the cluster itself: tests/integration/
test_rabbitmq_cluster.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from broker import AmqpSource, AmqpUrlError, ingest_routing_keys, parse_amqp_urls, topic_of
from streetlight import bootstrap
from streetlight.cli import build_parser
from streetlight.cli import ingest as ingest_cli
from streetlight.cli import up as up_cli
from streetlight.settings import Settings


def test_the_queue_is_bound_for_the_uplink_topics_as_the_mqtt_plugin_routes_them() -> None:
    keys = ingest_routing_keys()
    assert "sl.v1.*.*.telemetry" in keys and "sl.v1.*.*.birth" in keys
    assert not any(k.endswith(".cmd") for k in keys), "commands to the lamps are not ingest's"
    assert topic_of("sl.v1.11230.lamp-00001.telemetry") == "sl/v1/11230/lamp-00001/telemetry"


def test_a_list_of_amqp_addresses_is_read_and_a_wrong_one_is_refused_by_name() -> None:
    urls = parse_amqp_urls("amqp://guest:guest@127.0.0.1:5672/%2F, amqp://guest:guest@127.0.0.1:5673/%2F")
    assert urls == ("amqp://guest:guest@127.0.0.1:5672/%2F", "amqp://guest:guest@127.0.0.1:5673/%2F")
    with pytest.raises(AmqpUrlError, match="scheme must be amqp"):
        parse_amqp_urls("amqp://h:5672/,mqtt://h:1883")
    with pytest.raises(AmqpUrlError, match="no AMQP address"):
        parse_amqp_urls(" , ")
    with pytest.raises(AmqpUrlError, match="prefetch"):
        AmqpSource(urls, prefetch=0)
    with pytest.raises(AmqpUrlError) as err:
        parse_amqp_urls("http://user:hunter2@h/")
    assert "hunter2" not in str(err.value), "the secret is not repeated in the error"


def test_an_amqp_workers_configuration_has_no_mqtt_and_no_retained_state_resync(tmp_path: Path) -> None:
    source = AmqpSource(("amqp://guest:guest@127.0.0.1:5672/%2F",), prefetch=500)
    options = bootstrap.IngestOptions(index=2, client_id_prefix="ing", amqp=source)
    config = bootstrap.ingest_worker_config(Settings(data_dir=tmp_path), None, "postgresql:///x", options)
    assert config.mqtt is None and config.amqp == source
    assert config.spool_path == tmp_path / "spool" / "ing-2.spool"
    assert config.state_resync is False


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--source", "amqp", "--database-url", "postgresql:///x"], "needs AMQP_URL or --amqp-url"),
        (["--source", "amqp", "--database-url", "postgresql:///x", "--amqp-url", "mqtt://h:1"], "amqp://"),
        (["--source", "amqp", "--amqp-url", "amqp://h:1/"], "needs DATABASE_URL"),
        (
            [
                "--source",
                "amqp",
                "--database-url",
                "postgresql:///x",
                "--amqp-url",
                "amqp://h:1/",
                "--group",
                "g",
            ],
            "--group is for a plain MQTT subscription",
        ),
    ],
)
def test_ingest_from_amqp_refuses_what_it_cannot_use_with_exit_status_2(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AMQP_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    assert ingest_cli.main(argv) == 2
    assert said in capsys.readouterr().err


def test_up_cluster_without_rabbitmq_says_so_and_exits_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import broker.rabbitmq

    monkeypatch.setattr(broker.rabbitmq, "rabbitmq_installed", lambda: False)
    monkeypatch.setenv("STREETLIGHT_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("MQTT_URL", raising=False)
    args: argparse.Namespace = build_parser().parse_args(["up", "--cluster", "--check"])
    assert up_cli.run(args) == 2
    err = capsys.readouterr().err
    assert "rabbitmq-server is not installed" in err and "without --cluster" in err
    assert not (tmp_path / "rabbitmq-cluster").exists()


class _Channel:
    """Records the acknowledgements a worker sends (the I/O thread's side)."""

    is_open = True

    def __init__(self) -> None:
        self.acks: list[tuple[int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append((tag, multiple))


def test_acks_close_the_gap_with_one_multiple_ack_and_never_ack_a_tag_twice(
    tmp_path: Path,
) -> None:
    from ingest import AmqpIngestWorker, WorkerConfig

    config = WorkerConfig(
        mqtt=None,
        amqp=AmqpSource(("amqp://guest:guest@127.0.0.1:5672/%2F",)),
        database_url="postgresql:///unused",
        spool_path=tmp_path / "w.spool",
        state_resync=False,
    )
    worker = AmqpIngestWorker(config)
    channel = _Channel()
    worker._channel = channel  # type: ignore[assignment]
    worker._generation = 1
    worker._ack_now(1, [3, 1, 2])  # a batch: one ack covers it
    worker._ack_now(1, [5, 6])  # 4 is not stored yet (its batch failed): 5 and 6 alone
    worker._ack_now(1, [6, 2])  # already acknowledged: nothing is sent twice
    worker._ack_now(0, [4])  # of an earlier channel: never on this one
    worker._ack_now(1, [4])  # the gap closes: 4 alone, as 5 and 6 are done
    worker._ack_now(1, [7, 8])
    assert channel.acks == [(3, True), (5, False), (6, False), (4, True), (8, True)]
    worker.spool.close()
