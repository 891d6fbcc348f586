"""The one logging set-up of every process (filled in by the structured-logging change)."""

from __future__ import annotations

import logging


def configure(level: str = "INFO", fmt: str | None = None) -> None:
    """Set up logging for this process: ``fmt`` is ``"console"``, ``"json"`` or None (console on a
    terminal, JSON otherwise)."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
