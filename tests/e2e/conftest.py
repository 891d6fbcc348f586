"""What the console's browser tests share: a headless Chromium and the console's login."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.apiclient import PASSWORD
from tests.conftest import skip_unless
from tests.e2e.cdp import Browser, find_chromium


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    exe = find_chromium()
    skip_unless(
        exe is not None, "no chromium on PATH (python3 dev.py test installs Debian's chromium as root)"
    )
    assert exe is not None
    b = Browser(exe, tmp_path / "profile")
    yield b
    b.close()


def log_in(browser: Browser, username: str = "op-jung") -> None:
    """Fill in the console's login form (an open page) with ``username`` and the demo password, and
    submit it."""
    browser.type("#login-user", username)
    browser.type("#login-pass", PASSWORD)
    browser.click("#login-submit")
