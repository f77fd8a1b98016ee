"""Operations written once as generators of SQL steps, run by a sync or an async driver.

An operation yields :class:`Query` and :class:`Copy` steps and receives each step's result (a row, the
rows, or ``None``); its return value is the operation's. :func:`drive` runs one on a psycopg cursor,
:func:`adrive` on an async cursor, so the sync and async faces of a store share every line of their logic.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Copy", "Op", "Query", "adrive", "drive"]


@dataclass(frozen=True)
class Query:
    query: Any
    params: Sequence[Any] = ()
    fetch: str = "none"  # "none" | "one" | "all"


@dataclass(frozen=True)
class Copy:
    statement: Any
    types: list[str]
    rows: list[tuple[Any, ...]] = field(default_factory=list)


Step = Query | Copy
Op = Generator[Step, Any, Any]


def drive(op: Op, cur: Any) -> Any:
    """Run ``op`` on a sync cursor; returns its value."""
    try:
        step = next(op)
        while True:
            step = op.send(_execute(cur, step))
    except StopIteration as stop:
        return stop.value


async def adrive(op: Op, cur: Any) -> Any:
    """Run ``op`` on an async cursor; returns its value."""
    try:
        step = next(op)
        while True:
            step = op.send(await _aexecute(cur, step))
    except StopIteration as stop:
        return stop.value


def _execute(cur: Any, step: Step) -> Any:
    if isinstance(step, Copy):
        with cur.copy(step.statement) as copy:
            copy.set_types(step.types)
            for row in step.rows:
                copy.write_row(row)
        return None
    cur.execute(step.query, step.params or None)
    if step.fetch == "one":
        return cur.fetchone()
    if step.fetch == "all":
        return cur.fetchall()
    return None


async def _aexecute(cur: Any, step: Step) -> Any:
    if isinstance(step, Copy):
        async with cur.copy(step.statement) as copy:
            copy.set_types(step.types)
            for row in step.rows:
                await copy.write_row(row)
        return None
    await cur.execute(step.query, step.params or None)
    if step.fetch == "one":
        return await cur.fetchone()
    if step.fetch == "all":
        return await cur.fetchall()
    return None
