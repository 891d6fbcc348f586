"""Smart streetlights with emergency response: command line, settings and wiring."""

__version__ = "0.1.0"
