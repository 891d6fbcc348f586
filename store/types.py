"""Type names shared by the store's modules."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg

# Repositories take any psycopg connection, whatever its row factory.
Conn: TypeAlias = psycopg.Connection[Any]
