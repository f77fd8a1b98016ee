"""Operations written once as generators of SQL steps, run by a sync or an async driver.

An operation yields :class:`Query` and :class:`Copy` steps and receives each step's result (a row, the
rows, or ``None``); its return value is the operation's. :func:`drive` runs one on a psycopg cursor,
:func:`adrive` on an async cursor, so the sync and async faces of a store share every line of their logic.
:class:`Transactions` runs each operation in one transaction on a connection of a
:class:`~ragplug._postgres.Connector` (every ragplug Postgres store: the multi-vector and the graph store).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ragplug.errors import DuplicateIdError, InvalidInputError, StoreError

__all__ = ["Copy", "Op", "Query", "Transactions", "adrive", "drive", "translate"]


@dataclass(frozen=True)
class Query:
    query: Any
    params: Sequence[Any] = ()
    fetch: str = "none"  # "none" | "one" | "all"
    binary: bool = False  # results in binary format (bytea arrives as bytes, not hex text to decode)


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
    cur.execute(step.query, step.params or None, binary=step.binary)
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
    await cur.execute(step.query, step.params or None, binary=step.binary)
    if step.fetch == "one":
        return await cur.fetchone()
    if step.fetch == "all":
        return await cur.fetchall()
    return None


class Transactions:
    """Runs a store's operations, each in one transaction on a connection from ``connector``: the store's
    schema step (``prepare``: check pgvector, create or require the tables) once per store, pgvector's
    types registered on the connection, psycopg errors as ragplug errors (:func:`translate`; ``tables``
    names the store's tables in them). ``async_methods`` names the store's async methods for the error a
    sync call gets when the store was given only an async connection or pool."""

    def __init__(self, connector: Any, prepare: Callable[[], Op], *, tables: str, async_methods: str) -> None:
        self.connector, self.prepare, self.tables, self.async_methods = connector, prepare, tables, async_methods
        self.ready = False  # the schema step has run (or is running, in create_schema)

    def run(self, op: Op, *, snapshot: bool = False) -> Any:
        """Run ``op`` on a sync connection; returns its value. ``snapshot``: every statement of ``op`` sees one
        state of the database (``REPEATABLE READ``), unless the caller's connection is already in a
        transaction of its own (its isolation applies)."""
        import psycopg

        from ragplug._postgres import register_types

        if not self.connector.sync_capable:
            op.close()
            msg = f"this store was given an async connection or pool; use its async methods ({self.async_methods})"
            raise InvalidInputError(msg)
        with self.connector.connection() as conn:
            try:
                if not self.ready:
                    with conn.transaction(), conn.cursor() as cur:
                        drive(self.prepare(), cur)
                    self.ready = True
                register_types(conn)
                fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                with conn.transaction(), conn.cursor() as cur:
                    if snapshot and fresh:
                        cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    return drive(op, cur)
            except psycopg.Error as err:
                raise translate(err, self.connector.description, self.tables) from err
            finally:
                op.close()

    async def arun(self, make_op: Callable[[], Op], *, snapshot: bool = False) -> Any:
        """Run ``make_op()`` on an async connection (a sync one given by the caller: in a worker thread)."""
        import psycopg

        from ragplug._postgres import aregister_types

        async with self.connector.aconnection() as conn:
            if conn is None:  # a sync connection or pool was given: the sync driver in a worker thread
                return await asyncio.to_thread(lambda: self.run(make_op(), snapshot=snapshot))
            try:
                if not self.ready:
                    async with conn.transaction(), conn.cursor() as cur:
                        await adrive(self.prepare(), cur)
                    self.ready = True
                await aregister_types(conn)
                fresh = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                async with conn.transaction(), conn.cursor() as cur:
                    if snapshot and fresh:
                        await cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    return await adrive(make_op(), cur)
            except psycopg.Error as err:
                raise translate(err, self.connector.description, self.tables) from err


def translate(err: Exception, where: str, tables: str = "ragplug tables") -> Exception:
    """A psycopg error as a ragplug error (the transaction was rolled back: nothing was written)."""
    import psycopg

    errors = psycopg.errors
    if isinstance(err, errors.UniqueViolation):
        return DuplicateIdError(f"an id was stored meanwhile by another writer: {err.diag.message_detail or err}")
    if isinstance(err, errors.UndefinedTable):
        return StoreError(f"the {tables} are missing in {where} (dropped?): {err}")
    if isinstance(err, psycopg.OperationalError) and (err.sqlstate is None or err.sqlstate[:2] in ("08", "57")):
        return StoreError(
            f"the connection to {where} failed; the operation was rolled back, nothing was written: {err}"
        )
    return StoreError(f"Postgres error from {where}; the operation was rolled back: {err}")
