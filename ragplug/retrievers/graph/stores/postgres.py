"""``PgGraphStore``: a knowledge graph in plain Postgres tables with pgvector, sync and async.

Why plain tables and not Apache AGE: the graph is read whole (a snapshot for PageRank and Leiden) or by
key, never walked by a query language, and plain tables run on any Postgres with pgvector, including the
embedded server (:func:`ragplug._postgres.embedded`).

Tables (in the store's ``schema``, ``public`` by default; shared by every graph, which is a row of
``ragplug_graphs`` keyed by ``name``: collections as data, not as tables):

- ``ragplug_graph_schema_version``: one row, the layout version (:data:`GRAPH_FORMAT`); tables of another
  version are refused with :class:`~ragplug.errors.StoreCorruptedError`;
- ``ragplug_graphs``: ``name``, ``identity jsonb`` (:class:`GraphIdentity`), ``version bigint`` (incremented by
  every write of the graph, in the write's transaction), ``communities_version``;
- ``ragplug_graph_passages``: ``(graph, id)``, ``doc_id``, ``text``, ``metadata jsonb``;
- ``ragplug_graph_entities``: ``(graph, key)``, ``name``, ``kind``, ``description``, ``vector``: pgvector's
  ``vector`` type without a fixed dimension (float32, so vectors read back exactly as written; a graph's
  dimension is checked by the store). Nearest entities are found by an exact scan of one graph's vectors
  with the cosine distance operator ``<=>``: a graph holds thousands of entities, and an HNSW index would
  need a fixed dimension per graph;
- ``ragplug_graph_mentions``: ``(graph, entity, passage)``, ``count``;
- ``ragplug_graph_relations``: ``source``, ``target``, ``label``, ``weight``, ``passage`` (the passage that
  states it; ``NULL`` for a synonym edge, one per unordered pair);
- ``ragplug_graph_communities``: ``(graph, id)``, ``level``, ``title``, ``summary``, ``entities text[]``,
  ``passages text[]``, ``rank``.

Foreign keys with ``ON DELETE CASCADE`` carry deletions: deleting a passage deletes its mentions and the
relations it states; deleting an entity deletes every relation touching it (its synonym edges among them).
Deleting a document is then three statements in one transaction: its mentions (returning the entities they
named), its passages, and the entities no passage mentions any more.

Every write is one transaction that first locks its graph's row (writers of one graph take turns; writers of
different graphs do not wait for each other), loads rows with ``COPY ... (FORMAT BINARY)``, and increments
the graph's ``version``: a write that fails changes nothing. A snapshot is read in one ``REPEATABLE READ``
transaction, so it is one consistent state. Every identifier is composed with
:class:`psycopg.sql.Identifier`. Operations are written once as generators of SQL steps
(:mod:`ragplug.retrievers.late_interaction.stores.postgres.steps`) and run by a sync or an async driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from ragplug._extras import require
from ragplug._postgres import Connector
from ragplug.errors import DuplicateIdError, InvalidInputError, StoreCorruptedError, StoreError, UnknownIdError
from ragplug.retrievers.graph.model import (
    GRAPH_FORMAT,
    Community,
    Entity,
    FloatMatrix,
    GraphBatch,
    GraphIdentity,
    GraphSnapshot,
    GraphStats,
    Passage,
)
from ragplug.retrievers.graph.stores._check import (
    CheckedBatch,
    check_batch,
    check_communities,
    check_dim,
    check_doc_ids,
    check_k,
    check_queries,
    check_stored_keys,
    check_strings,
    encoder_dim,
)

psycopg = require("psycopg", "postgres")
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from ragplug.retrievers.late_interaction.stores.postgres.schema import check_pgvector  # noqa: E402
from ragplug.retrievers.late_interaction.stores.postgres.steps import Copy, Op, Query, Transactions  # noqa: E402

__all__ = ["PgGraphStore", "create_graph_schema", "graph_tables"]

_TABLES = {
    "schema_version": "ragplug_graph_schema_version",
    "graphs": "ragplug_graphs",
    "passages": "ragplug_graph_passages",
    "entities": "ragplug_graph_entities",
    "mentions": "ragplug_graph_mentions",
    "relations": "ragplug_graph_relations",
    "communities": "ragplug_graph_communities",
}


def graph_tables(schema: str) -> dict[str, sql.Composable]:
    """The qualified names of the graph tables in ``schema``."""
    return {key: sql.Identifier(schema, name) for key, name in _TABLES.items()}


_DDL = [
    """CREATE TABLE IF NOT EXISTS {graphs} (
        name text PRIMARY KEY,
        identity jsonb,
        version bigint NOT NULL DEFAULT 0,
        communities_version bigint,
        created_at timestamptz NOT NULL DEFAULT now()
    )""",
    """CREATE TABLE IF NOT EXISTS {passages} (
        graph text NOT NULL REFERENCES {graphs} (name) ON DELETE CASCADE,
        id text NOT NULL,
        seq bigserial NOT NULL,
        doc_id text NOT NULL,
        text text NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        PRIMARY KEY (graph, id)
    )""",
    "CREATE INDEX IF NOT EXISTS ragplug_graph_passages_doc ON {passages} (graph, doc_id)",
    """CREATE TABLE IF NOT EXISTS {entities} (
        graph text NOT NULL REFERENCES {graphs} (name) ON DELETE CASCADE,
        key text NOT NULL,
        seq bigserial NOT NULL,
        name text NOT NULL,
        kind text NOT NULL,
        description text NOT NULL,
        vector vector,
        PRIMARY KEY (graph, key)
    )""",
    """CREATE TABLE IF NOT EXISTS {mentions} (
        graph text NOT NULL,
        entity text NOT NULL,
        passage text NOT NULL,
        count integer NOT NULL CHECK (count > 0),
        PRIMARY KEY (graph, passage, entity),
        FOREIGN KEY (graph, entity) REFERENCES {entities} (graph, key) ON DELETE CASCADE,
        FOREIGN KEY (graph, passage) REFERENCES {passages} (graph, id) ON DELETE CASCADE
    )""",
    "CREATE INDEX IF NOT EXISTS ragplug_graph_mentions_entity ON {mentions} (graph, entity)",
    """CREATE TABLE IF NOT EXISTS {relations} (
        graph text NOT NULL,
        seq bigserial NOT NULL,
        source text NOT NULL,
        target text NOT NULL,
        label text NOT NULL,
        weight double precision NOT NULL,
        passage text,
        FOREIGN KEY (graph, source) REFERENCES {entities} (graph, key) ON DELETE CASCADE,
        FOREIGN KEY (graph, target) REFERENCES {entities} (graph, key) ON DELETE CASCADE,
        FOREIGN KEY (graph, passage) REFERENCES {passages} (graph, id) ON DELETE CASCADE
    )""",
    "CREATE INDEX IF NOT EXISTS ragplug_graph_relations_passage ON {relations} (graph, passage)",
    "CREATE INDEX IF NOT EXISTS ragplug_graph_relations_source ON {relations} (graph, source)",
    "CREATE INDEX IF NOT EXISTS ragplug_graph_relations_target ON {relations} (graph, target)",
    """CREATE UNIQUE INDEX IF NOT EXISTS ragplug_graph_relations_synonym
        ON {relations} (graph, (least(source, target)), (greatest(source, target))) WHERE passage IS NULL""",
    """CREATE TABLE IF NOT EXISTS {communities} (
        graph text NOT NULL REFERENCES {graphs} (name) ON DELETE CASCADE,
        id text NOT NULL,
        ord integer NOT NULL,
        level integer NOT NULL,
        title text NOT NULL,
        summary text NOT NULL,
        entities text[] NOT NULL,
        passages text[] NOT NULL,
        rank double precision NOT NULL,
        PRIMARY KEY (graph, id)
    )""",
]


def _check_version(found: Any, schema: str) -> None:
    if found is not None and found != GRAPH_FORMAT:
        msg = (
            f"the ragplug graph tables in schema {schema!r} are version {found}; this ragplug reads version "
            f"{GRAPH_FORMAT} (use a ragplug of that version, or another schema)"
        )
        raise StoreCorruptedError(msg)


def create_graph_schema(schema: str) -> Op:
    """Step: create the graph tables in ``schema`` if missing (idempotent); refuse tables of another version."""
    t = graph_tables(schema)
    yield Query("SELECT pg_advisory_xact_lock(hashtext('ragplug.graph.create_schema'))", (), "one")  # creators wait
    yield Query(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
    yield Query(sql.SQL("CREATE TABLE IF NOT EXISTS {} (version integer NOT NULL)").format(t["schema_version"]))
    row = yield Query(sql.SQL("SELECT max(version) FROM {}").format(t["schema_version"]), (), "one")
    found = row[0] if row else None
    _check_version(found, schema)
    for statement in _DDL:
        yield Query(sql.SQL(statement).format(**t))
    if found is None:
        yield Query(sql.SQL("INSERT INTO {} (version) VALUES (%s)").format(t["schema_version"]), [GRAPH_FORMAT])


def _require_graph_schema(schema: str) -> Op:
    """Step: refuse missing tables or tables of another version (a store made with ``create_schema=False``)."""
    row = yield Query("SELECT to_regclass(quote_ident(%s) || '.ragplug_graph_schema_version')", [schema], "one")
    if row is None or row[0] is None:
        msg = f"the ragplug graph tables do not exist in schema {schema!r}; call create_schema() first"
        raise StoreError(msg)
    row = yield Query(sql.SQL("SELECT max(version) FROM {}").format(graph_tables(schema)["schema_version"]), (), "one")
    _check_version(row[0] if row else None, schema)


class PgGraphStore:
    """A :class:`~ragplug.retrievers.graph.model.GraphStore` in Postgres (see the module docstring).

    ``target`` is anything :class:`~ragplug._postgres.Connector` takes: a DSN (an ``embedded(folder)`` one
    included), or a psycopg ``Connection`` / ``AsyncConnection`` / pool the caller owns. ``name`` names the
    graph among those sharing the tables of ``schema``. The tables are created on first use unless
    ``create_schema=False`` (then :meth:`create_schema` creates them).
    """

    kind: ClassVar[str] = "postgres"

    def __init__(
        self,
        target: Any,
        *,
        name: str = "default",
        schema: str = "public",
        pool_size: int = 4,
        create_schema: bool = True,
    ) -> None:
        for what, value in (("name", name), ("schema", schema)):
            if not isinstance(value, str) or not value or len(value.encode()) > 1000 or "\x00" in value:
                msg = f"{what} must be a non-empty string without NUL characters, got {value!r}"
                raise InvalidInputError(msg)
        self._connector = Connector(target, pool_size=pool_size)
        self.name = name
        self.schema = schema
        self._t = graph_tables(schema)
        self._create_schema = create_schema
        self._tx = Transactions(
            self._connector, self._prepare, tables="ragplug graph tables", async_methods="aadd, asnapshot, ..."
        )

    def __repr__(self) -> str:
        return f"PgGraphStore({self._connector.description}, name={self.name!r}, schema={self.schema!r})"

    def _where(self) -> str:
        return f"graph {self.name!r} in schema {self.schema!r}"

    # -- the drivers ----------------------------------------------------------------------------------
    def _run(self, op: Op) -> Any:
        return self._tx.run(op)

    async def _arun(self, make_op: Any) -> Any:
        return await self._tx.arun(make_op)

    def _prepare(self, *, create: bool | None = None) -> Op:
        yield from check_pgvector()
        if self._create_schema if create is None else create:
            yield from create_graph_schema(self.schema)
        else:
            yield from _require_graph_schema(self.schema)

    def create_schema(self) -> None:
        """Create the graph tables (idempotent) and check pgvector; done on first use by default."""
        ready, self._tx.ready = self._tx.ready, True  # this call prepares: _run must not check the tables first
        try:
            self._run(self._prepare(create=True))
        except BaseException:
            self._tx.ready = ready
            raise

    def close(self) -> None:
        """Close the connection pools ragplug opened (never the caller's)."""
        self._connector.close()

    async def aclose(self) -> None:
        await self._connector.aclose()

    # -- the graph row --------------------------------------------------------------------------------
    def _graph(self) -> Op:
        """Step: ``(identity, version, communities_version)`` of this graph, or ``None`` before its first write."""
        row = yield Query(
            sql.SQL("SELECT identity, version, communities_version FROM {} WHERE name = %s").format(self._t["graphs"]),
            [self.name],
            "one",
        )
        if row is None:
            return None
        return (_identity(row[0], self._where()), int(row[1]), None if row[2] is None else int(row[2]))

    def _lock_graph(self) -> Op:
        """Step: create this graph's row if missing and lock it for the transaction (writers take turns);
        returns ``(identity, version)``."""
        yield Query(
            sql.SQL("INSERT INTO {} (name) VALUES (%s) ON CONFLICT (name) DO NOTHING").format(self._t["graphs"]),
            [self.name],
        )
        row = yield Query(
            sql.SQL("SELECT identity, version FROM {} WHERE name = %s FOR UPDATE").format(self._t["graphs"]),
            [self.name],
            "one",
        )
        return _identity(row[0], self._where()), int(row[1])

    def _bump(self) -> Op:
        """Step: the write's last: increment the graph's version."""
        yield Query(
            sql.SQL("UPDATE {} SET version = version + 1 WHERE name = %s").format(self._t["graphs"]), [self.name]
        )

    def _stored_dim(self, identity: GraphIdentity | None) -> Op:
        dim = encoder_dim(identity)
        if dim is not None:
            return dim
        row = yield Query(
            sql.SQL("SELECT vector_dims(vector) FROM {} WHERE graph = %s AND vector IS NOT NULL LIMIT 1").format(
                self._t["entities"]
            ),
            [self.name],
            "one",
        )
        return None if row is None else int(row[0])

    @property
    def identity(self) -> GraphIdentity | None:
        info = self._run(self._graph())
        return None if info is None else info[0]

    @property
    def version(self) -> int:
        info = self._run(self._graph())
        return 0 if info is None else info[1]

    def bind(self, identity: GraphIdentity) -> None:
        """Record ``identity`` (a graph without one), or check it against the recorded one."""
        self._run(self._bind(_checked_identity(identity)))

    async def abind(self, identity: GraphIdentity) -> None:
        checked = _checked_identity(identity)
        await self._arun(lambda: self._bind(checked))

    def _bind(self, identity: GraphIdentity) -> Op:
        stored, _ = yield from self._lock_graph()
        if stored is not None:
            stored.check(identity, self._where())
            return
        dim = yield from self._stored_dim(None)
        check_dim(encoder_dim(identity), dim, self._where())
        yield Query(
            sql.SQL("UPDATE {} SET identity = %s WHERE name = %s").format(self._t["graphs"]),
            [Jsonb(identity.to_dict()), self.name],
        )

    # -- writes ---------------------------------------------------------------------------------------
    def add(self, batch: GraphBatch, *, replace_documents: bool = False) -> None:
        """Store ``batch`` (see :class:`~ragplug.retrievers.graph.model.GraphStore`), in one transaction."""
        self._run(self._add(check_batch(batch), replace_documents))

    async def aadd(self, batch: GraphBatch, *, replace_documents: bool = False) -> None:
        checked = check_batch(batch)
        await self._arun(lambda: self._add(checked, replace_documents))

    def _add(self, batch: CheckedBatch, replace: bool) -> Op:
        identity, _ = yield from self._lock_graph()
        t, g = self._t, self.name
        candidates: list[str] = []
        if replace and batch.doc_ids:
            candidates, _ = yield from self._remove_documents(batch.doc_ids)
        ids = [p.id for p in batch.passages]
        if ids:
            rows = yield Query(
                sql.SQL("SELECT id FROM {} WHERE graph = %s AND id = ANY(%s)").format(t["passages"]), [g, ids], "all"
            )
            if rows:
                taken = [pid for pid in ids if pid in {r[0] for r in rows}]
                msg = f"passage ids already stored: {taken[:10]}"
                raise DuplicateIdError(msg)
        keys = [*batch.entities, *batch.needs_stored]
        rows = yield Query(
            sql.SQL("SELECT key, vector IS NOT NULL FROM {} WHERE graph = %s AND key = ANY(%s)").format(t["entities"]),
            [g, keys],
            "all",
        )
        stored = {r[0]: bool(r[1]) for r in rows}
        check_stored_keys(batch.needs_stored, stored)
        if batch.vectors:
            dim = yield from self._stored_dim(identity)
            check_dim(batch.dim, dim, self._where())
        Vector = require("pgvector", "postgres").Vector
        fresh = [e for key, e in batch.entities.items() if key not in stored]
        if fresh:
            yield Copy(
                sql.SQL("COPY {} (graph, key, name, kind, description, vector) FROM STDIN (FORMAT BINARY)").format(
                    t["entities"]
                ),
                ["text", "text", "text", "text", "text", "vector"],
                [(g, e.key, e.name, e.kind, e.description, _vector(batch.vectors.get(e.key), Vector)) for e in fresh],
            )
        for key, has_vector in stored.items():  # stored entities keep their vector; one without gets this one
            if not has_vector and key in batch.vectors:
                yield Query(
                    sql.SQL("UPDATE {} SET vector = %s WHERE graph = %s AND key = %s").format(t["entities"]),
                    [Vector(batch.vectors[key]), g, key],
                )
        if batch.passages:
            yield Copy(
                sql.SQL("COPY {} (graph, id, doc_id, text, metadata) FROM STDIN (FORMAT BINARY)").format(t["passages"]),
                ["text", "text", "text", "text", "jsonb"],
                [(g, p.id, p.doc_id, p.text, Jsonb(dict(p.metadata))) for p in batch.passages],
            )
        if batch.mentions:
            yield Copy(
                sql.SQL("COPY {} (graph, entity, passage, count) FROM STDIN (FORMAT BINARY)").format(t["mentions"]),
                ["text", "text", "text", "int4"],
                [(g, *row) for row in batch.mentions],
            )
        if batch.relations:
            yield Copy(
                sql.SQL("COPY {} (graph, source, target, label, weight, passage) FROM STDIN (FORMAT BINARY)").format(
                    t["relations"]
                ),
                ["text", "text", "text", "text", "float8", "text"],
                [(g, *row) for row in batch.relations],
            )
        if batch.synonyms:
            columns = [list(c) for c in zip(*(row[:4] for row in batch.synonyms), strict=True)]
            yield Query(
                sql.SQL(
                    "INSERT INTO {} (graph, source, target, label, weight) "
                    "SELECT %s, s, t, l, w "
                    "FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS v(s, t, l, w) "
                    "ON CONFLICT (graph, (least(source, target)), (greatest(source, target))) WHERE passage IS NULL "
                    "DO UPDATE SET source = EXCLUDED.source, target = EXCLUDED.target, label = EXCLUDED.label, "
                    "weight = EXCLUDED.weight"
                ).format(t["relations"]),
                [g, *columns],
            )
        yield from self._prune(candidates)
        yield from self._bump()

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        """Delete documents and what only they supported, in one transaction; an unknown id deletes nothing."""
        self._run(self._delete_documents(check_doc_ids(doc_ids)))

    async def adelete_documents(self, doc_ids: Sequence[str]) -> None:
        ids = check_doc_ids(doc_ids)
        await self._arun(lambda: self._delete_documents(ids))

    def _delete_documents(self, doc_ids: list[str]) -> Op:
        yield from self._lock_graph()
        candidates, deleted = yield from self._remove_documents(doc_ids)
        unknown = [d for d in doc_ids if d not in deleted]
        if unknown:  # raising rolls the transaction back: nothing is deleted
            msg = f"unknown document ids: {unknown[:10]}"
            raise UnknownIdError(msg)
        yield from self._prune(candidates)
        yield from self._bump()

    def _remove_documents(self, doc_ids: list[str]) -> Op:
        """Step: delete the documents' mentions and passages (their relations cascade); returns the entities
        those passages mentioned and the documents found."""
        t, g = self._t, self.name
        rows = yield Query(
            sql.SQL(
                "DELETE FROM {mentions} m USING {passages} p WHERE m.graph = %s AND p.graph = %s "
                "AND p.id = m.passage AND p.doc_id = ANY(%s) RETURNING m.entity"
            ).format(mentions=t["mentions"], passages=t["passages"]),
            [g, g, doc_ids],
            "all",
        )
        docs = yield Query(
            sql.SQL("DELETE FROM {} WHERE graph = %s AND doc_id = ANY(%s) RETURNING doc_id").format(t["passages"]),
            [g, doc_ids],
            "all",
        )
        return sorted({r[0] for r in rows}), {r[0] for r in docs}

    def _prune(self, candidates: list[str]) -> Op:
        """Step: delete the ``candidates`` no passage mentions (their relations and synonym edges cascade)."""
        if not candidates:
            return
        yield Query(
            sql.SQL(
                "DELETE FROM {entities} e WHERE e.graph = %s AND e.key = ANY(%s) AND NOT EXISTS "
                "(SELECT 1 FROM {mentions} m WHERE m.graph = e.graph AND m.entity = e.key)"
            ).format(entities=self._t["entities"], mentions=self._t["mentions"]),
            [self.name, candidates],
        )

    def set_communities(self, communities: Sequence[Community], version: int) -> None:
        """Replace the stored communities; they do not change :attr:`version` (the graph is the same)."""
        self._run(self._set_communities(list(communities), version))

    async def aset_communities(self, communities: Sequence[Community], version: int) -> None:
        listed = list(communities)
        await self._arun(lambda: self._set_communities(listed, version))

    def _set_communities(self, communities: list[Community], version: int) -> Op:
        _, current = yield from self._lock_graph()
        checked = check_communities(communities, version, current)
        t, g = self._t, self.name
        yield Query(sql.SQL("DELETE FROM {} WHERE graph = %s").format(t["communities"]), [g])
        if checked:
            yield Copy(
                sql.SQL(
                    "COPY {} (graph, id, ord, level, title, summary, entities, passages, rank) "
                    "FROM STDIN (FORMAT BINARY)"
                ).format(t["communities"]),
                ["text", "text", "int4", "int4", "text", "text", "text[]", "text[]", "float8"],
                [
                    (g, c.id, i, c.level, c.title, c.summary, list(c.entities), list(c.passages), c.rank)
                    for i, c in enumerate(checked)
                ],
            )
        yield Query(
            sql.SQL("UPDATE {} SET communities_version = %s WHERE name = %s").format(t["graphs"]), [int(version), g]
        )

    # -- reads ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._run(self._count()))

    def _count(self) -> Op:
        row = yield Query(
            sql.SQL("SELECT count(*) FROM {} WHERE graph = %s").format(self._t["passages"]), [self.name], "one"
        )
        return row[0]

    def documents(self) -> list[str]:
        return list(self._run(self._documents()))

    def _documents(self) -> Op:
        rows = yield Query(
            sql.SQL('SELECT DISTINCT doc_id COLLATE "C" AS d FROM {} WHERE graph = %s ORDER BY d').format(
                self._t["passages"]
            ),
            [self.name],
            "all",
        )
        return [r[0] for r in rows]

    def passages(self, ids: Sequence[str]) -> list[Passage]:
        return list(self._run(self._passages(check_strings(ids, "passage ids"))))

    async def apassages(self, ids: Sequence[str]) -> list[Passage]:
        wanted = check_strings(ids, "passage ids")
        return list(await self._arun(lambda: self._passages(wanted)))

    def _passages(self, ids: list[str]) -> Op:
        rows = yield Query(
            sql.SQL("SELECT id, doc_id, text, metadata FROM {} WHERE graph = %s AND id = ANY(%s)").format(
                self._t["passages"]
            ),
            [self.name, ids],
            "all",
        )
        found = {r[0]: Passage(id=r[0], text=r[2], doc_id=r[1], metadata=r[3]) for r in rows}
        unknown = [i for i in ids if i not in found]
        if unknown:
            msg = f"unknown passage ids: {unknown[:10]}"
            raise UnknownIdError(msg)
        return [found[i] for i in ids]

    def document_passages(self, doc_ids: Sequence[str]) -> list[str]:
        return list(self._run(self._document_passages(check_strings(doc_ids, "document ids"))))

    def _document_passages(self, doc_ids: list[str]) -> Op:
        rows = yield Query(
            sql.SQL("SELECT doc_id, id FROM {} WHERE graph = %s AND doc_id = ANY(%s) ORDER BY seq").format(
                self._t["passages"]
            ),
            [self.name, doc_ids],
            "all",
        )
        by_doc: dict[str, list[str]] = {}
        for doc_id, pid in rows:
            by_doc.setdefault(doc_id, []).append(pid)
        unknown = [d for d in doc_ids if d not in by_doc]
        if unknown:
            msg = f"unknown document ids: {unknown[:10]}"
            raise UnknownIdError(msg)
        return [pid for d in dict.fromkeys(doc_ids) for pid in by_doc[d]]

    def entities(self, keys: Sequence[str]) -> list[Entity]:
        return list(self._run(self._entities(check_strings(keys, "entity keys"))))

    def _entities(self, keys: list[str]) -> Op:
        rows = yield Query(
            sql.SQL("SELECT key, name, kind, description FROM {} WHERE graph = %s AND key = ANY(%s)").format(
                self._t["entities"]
            ),
            [self.name, keys],
            "all",
        )
        found = {r[0]: Entity(key=r[0], name=r[1], kind=r[2], description=r[3]) for r in rows}
        return [found[k] for k in keys if k in found]

    def entity_vectors(self, keys: Sequence[str]) -> dict[str, FloatMatrix]:
        return dict(self._run(self._entity_vectors(check_strings(keys, "entity keys"))))

    def _entity_vectors(self, keys: list[str]) -> Op:
        rows = yield Query(
            sql.SQL("SELECT key, vector FROM {} WHERE graph = %s AND key = ANY(%s) AND vector IS NOT NULL").format(
                self._t["entities"]
            ),
            [self.name, keys],
            "all",
        )
        found = {r[0]: _array(r[1]) for r in rows}
        return {k: found[k] for k in keys if k in found}

    def nearest_entities(self, vectors: FloatMatrix, k: int) -> list[list[tuple[str, float]]]:
        """Exact cosine similarity (pgvector's ``<=>``) over the graph's entity vectors; ties broken by key."""
        return list(self._run(self._nearest(vectors, check_k(k))))

    async def anearest_entities(self, vectors: FloatMatrix, k: int) -> list[list[tuple[str, float]]]:
        checked_k = check_k(k)
        return list(await self._arun(lambda: self._nearest(vectors, checked_k)))

    def _nearest(self, vectors: FloatMatrix, k: int) -> Op:
        info = yield from self._graph()
        dim = yield from self._stored_dim(None if info is None else info[0])
        queries = check_queries(vectors, dim)
        Vector = require("pgvector", "postgres").Vector
        out = []
        for query in queries:
            rows = yield Query(
                sql.SQL(
                    "SELECT key, 1 - (vector <=> %s) AS similarity FROM {} WHERE graph = %s AND vector IS NOT NULL "
                    'ORDER BY vector <=> %s, key COLLATE "C" LIMIT %s'
                ).format(self._t["entities"]),
                [Vector(query), self.name, Vector(query), k],
                "all",
            )
            out.append([(r[0], float(r[1])) for r in rows])
        return out

    def snapshot(self) -> GraphSnapshot:
        return self._run(self._snapshot())

    async def asnapshot(self) -> GraphSnapshot:
        return await self._arun(self._snapshot)

    def _snapshot(self) -> Op:
        yield Query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one state for every SELECT
        t, g = self._t, [self.name]
        info = yield from self._graph()
        passages = yield Query(
            sql.SQL("SELECT id FROM {} WHERE graph = %s ORDER BY seq").format(t["passages"]), g, "all"
        )
        entities = yield Query(
            sql.SQL("SELECT key, name FROM {} WHERE graph = %s ORDER BY seq").format(t["entities"]), g, "all"
        )
        mentions = yield Query(
            sql.SQL("SELECT entity, passage, count FROM {} WHERE graph = %s").format(t["mentions"]), g, "all"
        )
        relations = yield Query(
            sql.SQL("SELECT source, target, label, weight FROM {} WHERE graph = %s ORDER BY seq").format(
                t["relations"]
            ),
            g,
            "all",
        )
        return GraphSnapshot.build(
            0 if info is None else info[1],
            [r[0] for r in passages],
            [(r[0], r[1]) for r in entities],
            [(r[0], r[1], float(r[2])) for r in mentions],
            [(r[0], r[1], r[2], float(r[3])) for r in relations],
        )

    def communities(self) -> tuple[list[Community], int | None]:
        return self._run(self._communities())

    async def acommunities(self) -> tuple[list[Community], int | None]:
        return await self._arun(self._communities)

    def _communities(self) -> Op:
        info = yield from self._graph()
        rows = yield Query(
            sql.SQL(
                "SELECT id, entities, passages, title, summary, level, rank FROM {} WHERE graph = %s ORDER BY ord"
            ).format(self._t["communities"]),
            [self.name],
            "all",
        )
        found = [
            Community(
                id=r[0], entities=tuple(r[1]), passages=tuple(r[2]), title=r[3], summary=r[4], level=r[5], rank=r[6]
            )
            for r in rows
        ]
        return found, None if info is None else info[2]

    def stats(self) -> GraphStats:
        return self._run(self._stats())

    async def astats(self) -> GraphStats:
        return await self._arun(self._stats)

    def _stats(self) -> Op:
        t = self._t
        row = yield Query(  # one statement: one consistent state
            sql.SQL(
                """SELECT
                (SELECT count(DISTINCT doc_id) FROM {passages} WHERE graph = %s),
                (SELECT count(*) FROM {passages} WHERE graph = %s),
                (SELECT count(*) FROM {entities} WHERE graph = %s),
                (SELECT count(*) FROM (SELECT DISTINCT least(source, target), greatest(source, target)
                    FROM {relations} WHERE graph = %s AND source <> target) AS pairs),
                (SELECT count(*) FROM {mentions} WHERE graph = %s),
                (SELECT count(*) FROM {communities} WHERE graph = %s),
                (SELECT count(*) FROM {passages} p WHERE p.graph = %s AND NOT EXISTS
                    (SELECT 1 FROM {mentions} m WHERE m.graph = p.graph AND m.passage = p.id))"""
            ).format(**t),
            [self.name] * 7,
            "one",
        )
        return GraphStats(*(int(x) for x in row))


def _checked_identity(identity: Any) -> GraphIdentity:
    if not isinstance(identity, GraphIdentity):
        msg = f"bind takes a GraphIdentity, got {type(identity).__name__}"
        raise InvalidInputError(msg)
    return identity


def _identity(data: Any, where: str) -> GraphIdentity | None:
    if data is None:
        return None
    try:
        return GraphIdentity.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        msg = f"{where}: its recorded identity is invalid: {data!r:.200}"
        raise StoreCorruptedError(msg) from err


def _vector(value: FloatMatrix | None, vector_type: Any) -> Any:
    return None if value is None else vector_type(value)


def _array(value: Any) -> FloatMatrix:
    if hasattr(value, "to_numpy"):
        value = value.to_numpy()
    return np.asarray(value, dtype=np.float32)
