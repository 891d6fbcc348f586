"""The one builder of a dynamic WHERE clause: optional filters in, SQL text and parameters out.

A list endpoint or a service's read filters by what the caller gave (districts, kinds, statuses,
a time) and leaves the rest open. Each filter left as None adds nothing; the clauses are joined
with AND; values always travel as parameters (``%s``), never in the SQL text. Column names are
the callers' constants, never input::

    where = Where().overlaps("district_codes", districts).any_of("kind", kinds).at_least("created_at", since)
    conn.execute("SELECT * FROM alerts" + where.sql + " ORDER BY created_at", where.params)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Self


class Where:
    """AND-ed conditions with their parameters, in the order added."""

    __slots__ = ("_clauses", "params")

    def __init__(self) -> None:
        self._clauses: list[str] = []
        self.params: list[object] = []

    def add(self, clause: str, *params: object) -> Self:
        """A condition of the caller's own (``%s`` placeholders, one per parameter)."""
        self._clauses.append(clause)
        self.params.extend(params)
        return self

    def equals(self, column: str, value: object | None) -> Self:
        """``column = value``, unless `value` is None."""
        return self if value is None else self.add(f"{column} = %s", value)

    def any_of(self, column: str, values: Iterable[object] | None) -> Self:
        """``column`` is one of `values` (none of an empty list), unless `values` is None."""
        return self if values is None else self.add(f"{column} = ANY(%s)", list(values))

    def overlaps(self, column: str, values: Iterable[object] | None) -> Self:
        """The array ``column`` shares an element with `values`, unless `values` is None."""
        return self if values is None else self.add(f"{column} && %s", list(values))

    def at_least(self, column: str, value: object | None) -> Self:
        """``column >= value``, unless `value` is None."""
        return self if value is None else self.add(f"{column} >= %s", value)

    def below(self, column: str, value: object | None) -> Self:
        """``column < value``, unless `value` is None (with `at_least`: a half-open range)."""
        return self if value is None else self.add(f"{column} < %s", value)

    @property
    def sql(self) -> str:
        """`` WHERE a AND b`` (with its leading space), or an empty string with no condition."""
        return " WHERE " + " AND ".join(self._clauses) if self._clauses else ""

    def __bool__(self) -> bool:
        return bool(self._clauses)
