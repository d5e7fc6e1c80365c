"""SQL statements as the repositories write them: plain strings with numbered
parameters, prepared by asyncpg on first use and cached per connection.

Statements are module constants (column names from tuples, never input),
so each is prepared once per connection; a statement assembled from
optional filters has one variant per combination in use.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_PARAMETER = re.compile(r"\$(\d+)")


class Write(NamedTuple):
    """A data-modifying statement, numbering its parameters from $1."""

    sql: str
    parameters: int


def in_one_round_trip(*writes: Write) -> str:
    """One statement running several writes: all but the last as
    data-modifying CTEs, which PostgreSQL runs together, with one snapshot
    (so none of them sees the others' rows), each with its parameters
    renumbered after those of the writes before it. The last may be a query
    (whose rows the statement returns; it does not see the writes either)."""
    offset, pieces = 0, []
    for write in writes:
        pieces.append(_renumbered(write.sql, offset))
        offset += write.parameters
    *ctes, last = pieces
    if not ctes:
        return last
    return "WITH " + ", ".join(f"w{i} AS ({cte})" for i, cte in enumerate(ctes)) + " " + last


def _renumbered(sql: str, shift: int) -> str:
    return _PARAMETER.sub(lambda match: f"${int(match.group(1)) + shift}", sql)


def rows_affected(status: str) -> int:
    """Rows touched, from the command tag asyncpg returns ("UPDATE 1", "INSERT 0 1")."""
    return int(status.rsplit(" ", 1)[-1])


class Conditions:
    """A WHERE clause built from optional filters, numbering parameters in order."""

    def __init__(self, *, first_parameter: int = 1) -> None:
        self.clauses: list[str] = []
        self.args: list[object] = []
        self._first = first_parameter

    def add(self, clause: str, *values: object) -> None:
        """`clause` names its values `{}`, `{}`… in order: they become $n, $n+1…"""
        numbers = [f"${self._first + len(self.args) + i}" for i in range(len(values))]
        self.clauses.append(clause.format(*numbers))
        self.args.extend(values)

    def next_parameter(self) -> str:
        return f"${self._first + len(self.args)}"

    def where(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""
