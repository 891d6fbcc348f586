"""Type names shared by the store's modules and their callers (who then need no psycopg import)."""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool

# Repositories take any psycopg connection, whatever its row factory.
Conn: TypeAlias = psycopg.Connection[Any]
AsyncConn: TypeAlias = psycopg.AsyncConnection[Any]
Pool: TypeAlias = ConnectionPool[Conn]
AsyncPool: TypeAlias = AsyncConnectionPool[AsyncConn]
# A row read with ``dict_row``: column name -> value.
Row: TypeAlias = dict[str, Any]
