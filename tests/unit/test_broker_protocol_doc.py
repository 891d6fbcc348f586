"""docs/protocol.md is the contract: every JSON example in its payload sections decodes as documented."""

from __future__ import annotations

import re

import pytest

from broker import decode
from tests.conftest import ROOT

NOW_MS = 1_764_100_000_000
SECTION = re.compile(r"^### 4\.\d+ \w+ — `[^`]*/(?P<channel>\w+)`", re.MULTILINE)


def examples() -> list[tuple[str, str]]:
    text = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
    found: list[tuple[str, str]] = []
    heads = list(SECTION.finditer(text))
    for head, nxt in zip(heads, [*heads[1:], None], strict=True):
        body = text[head.end() : nxt.start() if nxt else len(text)]
        kind = "alert" if head["channel"] == "alerts" else head["channel"]
        for block in re.findall(r"```json\n(.*?)```", body, re.DOTALL):
            found.extend((kind, line) for line in block.strip().splitlines())
    return found


def test_the_protocol_document_has_an_example_for_every_message_kind() -> None:
    assert {kind for kind, _ in examples()} == {"birth", "state", "telemetry", "event", "cmd", "ack", "alert"}


@pytest.mark.parametrize(("kind", "example"), examples())
def test_every_documented_example_decodes(kind: str, example: str) -> None:
    decode(kind, example.encode(), NOW_MS)
