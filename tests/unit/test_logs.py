"""The one logging set-up: key-value events with bound context, JSON lines or a console, no secret."""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import logging
import logging.config
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import logs

# Loggers these tests write to that a server started earlier in the run may have configured
# (uvicorn applies its own dictConfig: handlers, a level, no propagation; a test may set a level).
_THIRD_PARTY = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "psycopg.pool",
    "websockets",
    "websockets.server",
    "paho",
)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    others = [logging.getLogger(name) for name in _THIRD_PARTY]
    saved = [(o.handlers[:], o.level, o.propagate, o.disabled) for o in others]
    for other in others:  # as in a fresh process
        other.handlers[:], other.propagate, other.disabled = [], True, False
        other.setLevel(logging.NOTSET)
    logs.clear_context()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for other, (h, lvl, propagate, disabled) in zip(others, saved, strict=True):
            other.handlers[:], other.propagate, other.disabled = h, propagate, disabled
            other.setLevel(lvl)
        logs.clear_context()


def json_lines(err: str) -> list[dict[str, Any]]:
    lines = err.splitlines()
    assert lines, "nothing logged"
    return [json.loads(line) for line in lines]  # every line one JSON object


def test_json_mode_writes_one_object_per_line_with_event_level_logger_time_and_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "json")
    log = logs.get_logger("controller.outbox")
    with logs.bound_context(alert=42, device="lamp-0007"):
        log.warning("command_not_published", cmd_id="c-17", error="timed out")
    log.info("outbox_drained", count=3)
    log.debug("not_shown")
    first, second = json_lines(capsys.readouterr().err)
    assert first["event"] == "command_not_published" and first["level"] == "warning"
    assert first["logger"] == "controller.outbox"
    assert (first["cmd_id"], first["error"], first["alert"], first["device"]) == (
        "c-17",
        "timed out",
        42,
        "lamp-0007",
    )
    stamp = datetime.datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() == datetime.timedelta(0)
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 60
    assert list(first)[:4] == ["timestamp", "level", "logger", "event"]
    assert second == {**second, "event": "outbox_drained", "count": 3} and "alert" not in second


def test_console_mode_is_one_readable_line_without_colours_off_a_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "console")
    logs.get_logger("broker.lite").warning("messages_dropped", client_id="stuck-1", count=390)
    (line,) = capsys.readouterr().err.splitlines()
    assert "\x1b[" not in line
    assert "[warning" in line and "messages_dropped" in line and "[broker.lite]" in line
    assert "client_id=stuck-1" in line and "count=390" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_without_a_format_json_off_a_terminal_and_the_console_on_one(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    logs.configure("INFO")
    logs.get_logger("t").info("piped")
    assert json_lines(capsys.readouterr().err)[0]["event"] == "piped"

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    logs.configure("INFO", None)
    logs.get_logger("t").info("on_a_terminal", n=1)
    line = terminal.getvalue()
    assert "on_a_terminal" in line and not line.startswith("{")
    with pytest.raises(ValueError, match="console, json"):
        logs.configure("INFO", "xml")


def test_stdlib_loggers_come_out_in_the_same_format_with_the_bound_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "json")
    with logs.bound_context(worker=2):
        logging.getLogger("uvicorn.error").info(
            "Started server process [%d]", 1234, extra={"color_message": "\x1b[1m...", "pid": 1234}
        )
        logging.getLogger("psycopg.pool").warning("error connecting in 'pool-1'")
    started, pool = json_lines(capsys.readouterr().err)
    assert started["event"] == "Started server process [1234]" and started["logger"] == "uvicorn.error"
    assert started["level"] == "info" and started["worker"] == 2 and started["pid"] == 1234
    assert "color_message" not in started and "timestamp" in started
    assert pool["level"] == "warning" and pool["logger"] == "psycopg.pool" and pool["worker"] == 2


def test_stdlib_loggers_on_the_console_too(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "console")
    logging.getLogger("paho").warning("Connection failed, retrying")
    (line,) = capsys.readouterr().err.splitlines()
    assert "[warning" in line and "Connection failed, retrying" in line and "[paho]" in line


async def test_context_bound_in_one_asyncio_task_does_not_leak_into_another(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "json")
    log = logs.get_logger("controller.walks")
    bound = asyncio.Event()

    async def follows_a_walk() -> None:
        logs.bind_context(walk=7)
        bound.set()
        await asyncio.sleep(0)
        log.info("walk_lamps_lit", lamps=4)

    async def serves_an_alert() -> None:
        await bound.wait()
        log.info("alert_routed", alert=9)

    logs.bind_context(worker=1)  # the parent's context: both tasks start with a copy of it
    await asyncio.gather(follows_a_walk(), serves_an_alert())
    log.info("tasks_done")
    lines = {line["event"]: line for line in json_lines(capsys.readouterr().err)}
    walk, alert, done = lines["walk_lamps_lit"], lines["alert_routed"], lines["tasks_done"]
    assert walk["walk"] == 7 and walk["worker"] == 1
    assert "walk" not in alert and alert["alert"] == 9 and alert["worker"] == 1
    assert "walk" not in done and done["worker"] == 1


def test_configuring_twice_or_after_basic_config_writes_each_event_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logging.basicConfig(level="INFO", format="%(message)s")
    logs.configure("INFO", "console")
    logs.configure("INFO", "json")
    logs.get_logger("t").info("once")
    logging.getLogger("t.stdlib").info("once too")
    assert [e["event"] for e in json_lines(capsys.readouterr().err)] == ["once", "once too"]


def test_the_dict_config_for_uvicorn_workers_is_the_same_set_up(capsys: pytest.CaptureFixture[str]) -> None:
    config = logs.dict_config("INFO", "json")
    logging.config.dictConfig(config)
    access = logging.getLogger("uvicorn.access")
    access.handlers.append(logging.StreamHandler())  # uvicorn's own default, replaced below
    logging.config.dictConfig(config)
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.1:5000", "GET", "/v1/alerts", "1.1", 200)
    (line,) = json_lines(capsys.readouterr().err)
    assert line["logger"] == "uvicorn.access" and "/v1/alerts" in line["event"]


@pytest.mark.parametrize("configured", [False, True], ids=["before configure", "after configure"])
def test_the_test_log_capture_sees_the_events_fields(
    configured: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # Without configure too: a library's events reach the stdlib logger (and so pytest's caplog).
    if configured:
        logs.configure("INFO", "json")
    with caplog.at_level(logging.INFO, logger="broker.lite"):
        logs.get_logger("broker.lite").warning("messages_dropped", client_id="c", count=3)
        logs.get_logger("broker.lite").debug("too_low")
    (record,) = caplog.records
    assert record.levelno == logging.WARNING and record.name == "broker.lite"
    assert (
        record.filename == "test_logs.py"
        and record.funcName == "test_the_test_log_capture_sees_the_events_fields"
    )
    assert record.msg["event"] == "messages_dropped" and record.msg["count"] == 3  # type: ignore[index]
    assert record.getMessage() == "messages_dropped client_id='c' count=3"


def test_an_exception_is_logged_with_its_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO", "json")
    try:
        raise RuntimeError("the pool is closed")
    except RuntimeError:
        logs.get_logger("t").exception("write_failed", device="lamp-1")
    (line,) = json_lines(capsys.readouterr().err)
    assert line["level"] == "error" and line["device"] == "lamp-1"
    assert "Traceback" in line["exception"] and "RuntimeError: the pool is closed" in line["exception"]


SECRET = "s3cr3t-Xy9"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_no_credential_reaches_a_line(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("DEBUG", fmt)
    log = logs.get_logger("t")
    log.info(
        "connecting",
        database=f"postgresql://streetlight:{SECRET}@db:5432/streetlight",
        broker=f"mqtts://ingest:{SECRET}@broker:8883",
        dsn=f"host=db user=sl password={SECRET}",
        filters=[f"$share/ingest-{SECRET}/sl/v1/+/+/telemetry", "sl/v1/+/+/ack"],
        password=SECRET,
        api_token=SECRET,
        headers={"Authorization": f"Bearer {SECRET}", "Host": "example"},
    )
    with logs.bound_context(session_token=SECRET):
        log.info("bound_secret")
    # What the API's websocket and uvicorn loggers write at DEBUG (api/logredact.py's cases),
    # here without that filter installed.
    ws = logging.getLogger("websockets.server")
    ws.debug("< %s: %s", "Authorization", f"Bearer {SECRET}")
    ws.debug("< %s: %s", "Sec-WebSocket-Protocol", f"streetlight.v1, bearer.{SECRET}")
    ws.debug("< %s", f'TEXT \'{{"token": "{SECRET}"}}\' [16 bytes]')
    logging.getLogger("paho").warning("subscribed to %s", f"$share/ingest-{SECRET}/sl/v1/+/+/birth")
    try:
        raise ConnectionError(f"cannot reach mqtt://lamp:{SECRET}@broker:1883")
    except ConnectionError as exc:
        log.exception("connect_failed", error=str(exc))
    err = capsys.readouterr().err
    assert SECRET not in err
    # What is not a secret stays readable.
    for kept in (
        "postgresql://streetlight:***@db:5432/streetlight",
        "$share/ingest-…/sl/v1/+/+/telemetry",
        "sl/v1/+/+/ack",
        "Host",
        "Sec-WebSocket-Protocol: [redacted]",
        "Authorization: [redacted]",
        "cannot reach mqtt://lamp:***@broker:1883",
    ):
        assert kept in err, kept


def test_the_redaction_leaves_ordinary_events_alone() -> None:
    event = {"event": "lamp_brightened", "device": "lamp-1", "level_pct": 80, "topic": "sl/v1/d/lamp-1/cmd"}
    assert logs.redact(None, "info", dict(event)) == event


NOT_YET: tuple[str, ...] = ()


def test_the_converted_packages_log_events_not_sentences() -> None:
    from devkit.logcalls import PACKAGES, prose_calls
    from tests.conftest import ROOT

    calls = prose_calls(ROOT / package for package in PACKAGES)
    left = [str(call) for call in calls if call.path.relative_to(ROOT).as_posix() not in NOT_YET]
    assert left == [], "log events are snake_case names with keys (runtime/logs.py):\n" + "\n".join(left)


def test_the_prose_finder_notices_a_sentence_and_a_stdlib_module_logger(tmp_path: Path) -> None:
    from devkit.logcalls import prose_calls

    module = tmp_path / "m.py"
    module.write_text(
        "import logging\n"
        "log = logging.getLogger(__name__)\n"
        "log.info('command_sent', cmd_id=1)\n"
        "log.warning('command not published cmd_id=%s: %s', 1, 'x')\n"
        "log.info('step', extra={'a': 1})\n"
    )
    found = prose_calls([module])
    assert [(c.line, c.method) for c in found] == [(2, "getLogger"), (4, "warning"), (5, "info")]
    assert found[1].suggestion() == "command_not_published_cmd_id" and found[1].args == ("1", "'x'")


def test_phone_keys_and_numbers_are_redacted() -> None:
    from runtime.logs import REDACTED, redact

    secret = "k2:q83vEjRWeJASNFZ4kBI0VniQEjRWeJASNFZ4kBI0Vng="
    event = {
        "event": f"bad setting STREETLIGHT_PHONE_KEYS={secret}",
        "phone_keys": secret,
        "phone": "+821012345678",
        "resident_phone": "+821012345678",
        "settings": {"phone_keys": secret},
    }
    out = redact(None, "info", dict(event))
    assert secret not in str(out) and "12345678" not in str(out)
    assert out["phone_keys"] == REDACTED and out["settings"] == {"phone_keys": REDACTED}
