"""The store's exceptions, translated from psycopg's at the boundary.

StoreError                 anything the store raises on purpose
├── StoreUnavailable       the database cannot be reached or dropped the connection: spool and retry
├── BufferFull             the batch writer's bounded buffer is full: back-pressure or spool
└── MigrationError         the schema could not be brought up to date

The database driver's own errors that reach the store's callers keep their classes; they are
named here so that no module outside ``store/`` imports the driver:

DatabaseError              any error of the driver (psycopg.Error)
├── DatabaseUnavailable    no connection, a connection lost, or none free in the pool in time
└── ValueRefused           the database (or the driver's encoder) refused a value: a NUL byte,
                           an untranslatable character, a number out of range
"""

from __future__ import annotations

import psycopg

DatabaseError = psycopg.Error
DatabaseUnavailable = psycopg.OperationalError  # psycopg_pool.PoolTimeout is one too
ValueRefused = psycopg.DataError


class StoreError(Exception):
    """Base class of the store's own errors."""


class StoreUnavailable(StoreError):
    """The database is unreachable; ``rows`` (when set) were not written and are the caller's to spool."""

    def __init__(self, message: str, rows: int = 0) -> None:
        super().__init__(message)
        self.rows = rows


class StoreRejected(StoreError):
    """The database (or the COPY encoder) refused the rows; retrying them cannot succeed."""

    def __init__(self, message: str, rows: int = 0) -> None:
        super().__init__(message)
        self.rows = rows


class BufferFull(StoreError):
    """The writer's buffer holds ``capacity`` rows already; the row was not accepted."""

    def __init__(self, capacity: int) -> None:
        super().__init__(f"batch writer buffer is full ({capacity} rows)")
        self.capacity = capacity


class MigrationError(StoreError):
    """A migration failed; ``version`` names it."""

    def __init__(self, version: int, message: str) -> None:
        super().__init__(f"migration {version} failed: {message}")
        self.version = version
