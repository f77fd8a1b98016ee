"""``PgVectorStore``: the multi-vector store in Postgres + pgvector, sync and async.

Each collection keeps its token matrices with a codec (:mod:`.coded`; by default each token's k-means
centroid id and its residual at 8 bits per dimension, trained once the collection holds
``CodecConfig.train_tokens`` tokens, fp16 until then; 2- or 4-bit residuals take 2-4 times less space
for some recall, fp16 with ``codes=True`` twice as much for none). Search runs in stages.
Inside Postgres, an HNSW index proposes ``n_candidates`` records, filtered
in the same query (pgvector 0.8 iterative scans keep scanning until enough rows pass the filter; when
fewer come back than asked, the query is re-run without the index, so a selective filter still yields
every match): over each record's bag of centroids once a codec with codes is trained, else over one summary
vector per record (the mean of its token vectors, or a MUVERA encoding:
:mod:`~ragplug.retrievers.late_interaction.fde`; ``halfvec``). A collection with codes then ranks the
candidates by centroid interaction (from their codes alone) and fetches the ``n_rescore`` best ones'
vectors or residuals. The survivors' token matrices are re-scored with exact MaxSim in the client
(:mod:`~ragplug.retrievers.late_interaction.twostage`).

Every operation is one transaction: a write that fails (a duplicate, a lost connection) leaves nothing
half-written. Writers of one item serialise on a transaction-scoped advisory lock, so two processes
writing one collection lose nothing. Each operation is written once, as a generator of SQL steps, and run
by a sync driver (psycopg ``Connection``) or an async one (``AsyncConnection``): the two faces cannot drift
apart, and neither ever calls ``run_until_complete``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ragplug._extras import require
from ragplug._postgres import Connector
from ragplug._postgres import embedded as start_embedded
from ragplug.errors import InvalidInputError, StoreCorruptedError, StoreError, UnknownIdError
from ragplug.retrievers.late_interaction.base import (
    EncoderIdentity,
    FloatMatrix,
    Hit,
    Record,
    SearchOptions,
    as_matrix,
    check_encoder,
    check_ids,
    check_k,
    check_records,
    plan_write,
)
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig, codec_config
from ragplug.retrievers.late_interaction.fde import Summarizer, SummaryConfig
from ragplug.retrievers.late_interaction.filters import (
    Filter,
    FilterNode,
    explain_empty,
    fields_of,
    parse_filter,
)
from ragplug.retrievers.late_interaction.twostage import top_k_exact

psycopg = require("psycopg", "postgres")
from psycopg import sql  # noqa: E402
from psycopg.types.json import Jsonb  # noqa: E402

from ragplug.retrievers.late_interaction.stores.postgres import coded  # noqa: E402
from ragplug.retrievers.late_interaction.stores.postgres import schema as ddl  # noqa: E402
from ragplug.retrievers.late_interaction.stores.postgres.filters import to_sql  # noqa: E402
from ragplug.retrievers.late_interaction.stores.postgres.steps import (  # noqa: E402
    Copy,
    Op,
    Query,
    Transactions,
    translate,
)

__all__ = ["HNSWConfig", "PgSearchOptions", "PgVectorStore"]


@dataclass(frozen=True)
class HNSWConfig:
    """The HNSW index over a collection's encodings (pgvector's ``m`` and ``ef_construction``)."""

    m: int = 16
    ef_construction: int = 64

    def __post_init__(self) -> None:
        for name, low in (("m", 2), ("ef_construction", 4)):
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= 1000:
                msg = f"HNSWConfig.{name} must be an integer in [{low}, 1000], got {value!r}"
                raise InvalidInputError(msg)


@dataclass(frozen=True)
class PgSearchOptions(SearchOptions):
    """Per-search settings of :class:`PgVectorStore`.

    ``n_candidates``: records proposed by the index (default ``max(100, 4 * k)`` over summaries, ``max(1000,
    16 * k)`` over bags of centroids; at least ``k``); ``ef_search``: HNSW's search breadth (default
    ``max(n_candidates, 40)``, at most 1000); ``n_probe``: centroids weighted per query token in the bag
    query (default 8); ``n_rescore``: candidates of a collection with codes re-scored exactly after centroid
    interaction (default ``max(400, 4 * k)``); ``exact``: skip the index and score the encodings of every
    (matching) record.
    """

    n_candidates: int | None = None
    ef_search: int | None = None
    n_probe: int | None = None
    n_rescore: int | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        for name in ("n_candidates", "ef_search", "n_probe", "n_rescore"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or not 1 <= value <= 100_000):
                msg = f"{name} must be an integer in [1, 100000], got {value!r}"
                raise InvalidInputError(msg)
        if not isinstance(self.exact, bool):
            msg = f"exact must be a bool, got {self.exact!r}"
            raise InvalidInputError(msg)


_DEFAULT_OPTIONS = PgSearchOptions()
_FP16_MAX = 65504.0


@dataclass(frozen=True)
class _Collection:
    dim: int
    encoder: EncoderIdentity | None
    summary: SummaryConfig
    codec_config: CodecConfig | None  # None: a collection made before codecs (fp16 for good)
    codec: Codec | None  # the trained codec, None until trained
    codec_version: int
    deferred: bool = False  # a bulk load is under way (drop_index): training waits for create_index
    trained_tokens: int = 0  # the collection's size when its codec was trained


class PgVectorStore:
    """A :class:`~ragplug.retrievers.late_interaction.base.MultiVectorStore` in Postgres with pgvector.

    ``connection`` is a DSN, a psycopg ``Connection``/``AsyncConnection`` or a ``psycopg_pool`` pool that the
    caller owns; or pass ``embedded="folder"`` to have ragplug start PostgreSQL with pgvector itself (the
    default when neither is given: ``./.ragplug-postgres``). Collections are rows, not tables: many
    stores share the tables of one ``schema``. ``create_schema=False`` expects the tables to exist
    (see :meth:`create_schema`). ``codec`` is what a new collection keeps per token (see :mod:`.coded`;
    an existing collection keeps the codec it was made with).
    """

    search_options: ClassVar[type[SearchOptions]] = PgSearchOptions

    def __init__(
        self,
        connection: Any = None,
        *,
        embedded: str | os.PathLike[str] | None = None,
        collection: str = "default",
        schema: str = "public",
        summary: SummaryConfig | None = None,
        hnsw: HNSWConfig | None = None,
        create_schema: bool = True,
        pool_size: int = 4,
        codec: CodecConfig | str | None = None,
    ) -> None:
        if connection is not None and embedded is not None:
            msg = "pass either connection or embedded, not both"
            raise InvalidInputError(msg)
        for name, value in (("collection", collection), ("schema", schema)):
            if not isinstance(value, str) or not value or len(value.encode()) > 1000 or "\x00" in value:
                msg = f"{name} must be a non-empty string without NUL characters, got {value!r}"
                raise InvalidInputError(msg)
        if connection is None:
            connection = start_embedded(embedded if embedded is not None else ".ragplug-postgres")
        self._connector = Connector(connection, pool_size=pool_size)
        self.collection = collection
        self.schema = schema
        self.summary = summary or SummaryConfig()
        self.hnsw = hnsw or HNSWConfig()
        self.codec_config = codec_config(codec) if codec is not None else coded.default_codec()
        self._codecs: dict[int, Codec] = {}  # trained codecs by version: their arrays are fetched once
        self._t = ddl.tables(schema)
        self._info: _Collection | None = None
        self._summarizers: dict[tuple[int, SummaryConfig], Summarizer] = {}
        self._tx = Transactions(
            self._connector, self._prepare, tables="ragplug tables", async_methods="aadd, asearch, ..."
        )
        self._create_schema = create_schema
        self.pgvector_version: str | None = None

    @property
    def sync_capable(self) -> bool:
        """False when the store was given only an async connection or pool (use the ``a*`` methods)."""
        return self._connector.sync_capable

    def __repr__(self) -> str:
        return f"PgVectorStore({self._connector.description}, collection={self.collection!r})"

    # -- the drivers ----------------------------------------------------------------------------------
    def _run(self, op: Op) -> Any:
        before = self._info
        try:
            return self._tx.run(op)
        except BaseException:
            self._info = before  # what a rolled-back transaction read is not known to exist
            raise

    async def _arun(self, make_op: Any) -> Any:
        before = self._info
        try:
            return await self._tx.arun(make_op)
        except BaseException:
            self._info = before
            raise

    def _prepare(self, *, create: bool | None = None) -> Op:
        self.pgvector_version = yield from ddl.check_pgvector()
        if self._create_schema if create is None else create:
            yield from ddl.create_schema(self.schema)
        else:
            yield from ddl.require_schema(self.schema)

    def create_schema(self) -> None:
        """Create the store's tables (idempotent) and check pgvector; done on first use unless the store was
        made with ``create_schema=False``."""
        self._run(self._prepare(create=True))
        self._tx.ready = True

    # -- the collection -------------------------------------------------------------------------------
    def _collection(self, *, lock: str = "") -> Op:
        """Step: this collection's row, optionally locked (``"share"`` while writing records, so it cannot be
        dropped meanwhile; ``"update"`` to change it)."""
        suffix = {"": "", "share": " FOR SHARE", "update": " FOR UPDATE"}[lock]
        row = yield Query(
            sql.SQL("SELECT dim, encoder, summary, codec FROM {} WHERE name = %s" + suffix).format(
                self._t["collections"]
            ),
            [self.collection],
            "one",
        )
        if row is None:
            if self._info is not None:
                raise self._dropped()
            return None
        state = row[3] or {}
        where = f"collection {self.collection!r}"
        try:
            config = CodecConfig.from_dict(state["config"]) if state else None
            version = int(state.get("version", 0))
        except (InvalidInputError, KeyError, TypeError, ValueError, AttributeError) as err:
            msg = f"{where}: its codec settings are invalid: {err}"
            raise StoreCorruptedError(msg) from err
        codec = None
        if state.get("trained") is not None:
            codec = self._codecs.get(version)
            if codec is None:
                blob = yield Query(
                    sql.SQL("SELECT codec_arrays FROM {} WHERE name = %s").format(self._t["collections"]),
                    [self.collection],
                    "one",
                )
                codec = coded.restore_codec(state["trained"], blob[0] if blob else None, where)
                self._codecs = {version: codec}
        info = _Collection(
            dim=int(row[0]),
            encoder=EncoderIdentity.from_dict(row[1]) if row[1] else None,
            summary=SummaryConfig.from_dict(row[2]),
            codec_config=config,
            codec=codec,
            codec_version=version,
            deferred=bool(state.get("deferred", False)),
            trained_tokens=int(state.get("trained_tokens", 0)),
        )
        self._info = info
        return info

    def _dropped(self) -> StoreError:
        return StoreError(f"collection {self.collection!r} was dropped (by another client?) while this store used it")

    def _create_collection(self, dim: int, encoder: EncoderIdentity | None) -> Op:
        """Create the collection and its HNSW index if missing, in a transaction of its own: creators wait on
        one lock (two index builds on the shared table inside write transactions deadlock each other)."""
        info = yield from self._collection()
        if info is not None:
            return info
        yield Query("SELECT pg_advisory_xact_lock(hashtext('ragplug.create_collection'))", (), "one")
        info = yield from self._collection()
        if info is not None:
            return info
        config = self.codec_config
        state: dict[str, Any] = {"config": config.to_dict(), "trained": None, "version": 0}
        if not config.needs_training:  # float16/float32 without a projection: ready as it is
            state |= {"trained": Codec.untrained(config, dim).to_dict(), "version": 1}
        yield Query(
            sql.SQL("INSERT INTO {} (name, dim, encoder, summary, codec) VALUES (%s, %s, %s, %s, %s)").format(
                self._t["collections"]
            ),
            [
                self.collection,
                dim,
                Jsonb(encoder.to_dict()) if encoder else None,
                Jsonb(self.summary.to_dict()),
                Jsonb(state),
            ],
        )
        yield from ddl.create_collection_index(
            self.schema, self.collection, self.summary.dim(dim), self.hnsw.m, self.hnsw.ef_construction
        )
        return (yield from self._collection())

    def _ensure_collection(self, dim: int, encoder: EncoderIdentity | None = None) -> None:
        if self._info is None:
            self._run(self._create_collection(dim, encoder))

    async def _aensure_collection(self, dim: int, encoder: EncoderIdentity | None = None) -> None:
        if self._info is None:
            await self._arun(lambda: self._create_collection(dim, encoder))

    def _summarizer(self, info: _Collection) -> Summarizer:
        key = (info.dim, info.summary)
        if key not in self._summarizers:
            self._summarizers[key] = Summarizer(info.dim, info.summary)
        return self._summarizers[key]

    @property
    def dim(self) -> int | None:
        info = self._info or self._run(self._collection())
        return info.dim if info else None

    @property
    def encoder(self) -> EncoderIdentity | None:
        info = self._run(self._collection())
        return info.encoder if info else None

    def bind_encoder(self, identity: EncoderIdentity) -> None:
        """Record the encoder of this collection (creating it); refuse another encoder or dimension."""
        self._ensure_collection(identity.dim, identity)
        self._run(self._bind(identity))

    async def abind_encoder(self, identity: EncoderIdentity) -> None:
        await self._aensure_collection(identity.dim, identity)
        await self._arun(lambda: self._bind(identity))

    def _bind(self, identity: EncoderIdentity) -> Op:
        info = yield from self._collection(lock="update")
        if info is None:
            raise self._dropped()
        check_encoder(info.encoder, identity, f"collection {self.collection!r}")
        if info.dim != identity.dim:
            msg = (
                f"collection {self.collection!r} holds {info.dim}-dim vectors; "
                f"encoder {identity.name!r} makes {identity.dim}-dim"
            )
            raise StoreError(msg)
        if info.encoder is None:
            yield Query(
                sql.SQL("UPDATE {} SET encoder = %s WHERE name = %s").format(self._t["collections"]),
                [Jsonb(identity.to_dict()), self.collection],
            )
            self._info = dataclasses.replace(info, encoder=identity)

    def drop_index(self) -> None:
        """Drop this collection's HNSW indexes before a large bulk load: building them once afterwards with
        :meth:`create_index` is faster than growing them row by row. Searches scan without them meanwhile,
        and a codec still to be trained waits for :meth:`create_index` (which trains it on the whole load)."""
        self._run(self._drop_index(defer=True))

    def _drop_index(self, *, defer: bool = False) -> Op:
        for name in (ddl.index_name(self.collection), ddl.bag_index_name(self.collection)):
            yield Query(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.schema, name)))
        if defer:
            yield from self._set_deferred(True)

    def _set_deferred(self, deferred: bool) -> Op:
        yield Query(
            sql.SQL(
                "UPDATE {} SET codec = jsonb_set(codec, '{{deferred}}', %s) WHERE name = %s AND codec IS NOT NULL"
            ).format(self._t["collections"]),
            [Jsonb(deferred), self.collection],
        )

    def create_index(self, *, maintenance_work_mem: str = "1GB") -> None:
        """Build this collection's HNSW indexes if they are missing (see :meth:`drop_index`). First its codec
        is trained if it still needs training, or re-trained if the collection has grown 4 times since."""
        self._run(self._train(force=False, anyway=True))
        self._run(self._create_index(maintenance_work_mem))

    def _create_index(self, maintenance_work_mem: str) -> Op:
        info = yield from self._collection()
        if info is None:
            msg = f"collection {self.collection!r} does not exist yet: nothing to index"
            raise StoreError(msg)
        yield Query("SELECT set_config('maintenance_work_mem', %s, true)", [maintenance_work_mem], "one")
        yield from self._set_deferred(False)
        yield from ddl.create_collection_index(
            self.schema, self.collection, info.summary.dim(info.dim), self.hnsw.m, self.hnsw.ef_construction
        )
        if info.codec is not None and info.codec.centroids is not None:
            yield from ddl.create_bag_index(
                self.schema, self.collection, coded.BAG_DIM, self.hnsw.m, self.hnsw.ef_construction
            )

    def train_codec(self) -> bool:
        """(Re)train this collection's codec on a sample of its tokens and re-encode every record, in one
        transaction (writers wait meanwhile). A collection trains by itself once it holds ``train_tokens``
        tokens; call this after it has grown much larger, so the centroids follow the data. Returns False
        when there is nothing to train (an empty collection, or a codec that needs no training)."""
        return bool(self._run(self._train(force=True)))

    def compact(self, *, full: bool = False) -> dict[str, int]:
        """Reclaim the space that re-encoding left behind, and return the records table's bytes after it.

        Postgres keeps a row's old version until ``VACUUM``: :meth:`train_codec` (and :meth:`create_index`
        after a bulk load, which trains the codec) rewrites every token matrix, so the table holds the old
        matrices beside the new ones until then. ``full=False`` runs ``VACUUM (ANALYZE)``: later writes reuse
        the space, readers and writers go on, but the files rarely shrink. ``full=True`` runs
        ``VACUUM (FULL, ANALYZE)``: the table is rewritten at its live size, under a lock that blocks every
        collection in this schema while it runs (the table is shared). Returns ``heap``, ``toast``,
        ``indexes`` and ``total`` in bytes, for the whole records table (all collections)."""
        import psycopg

        table = self._t["records"]
        statement = sql.SQL("VACUUM (FULL, ANALYZE) {}" if full else "VACUUM (ANALYZE) {}").format(table)
        self._run(self._collection())  # the store's first-use step (pgvector and schema checks) runs first
        with self._connector.connection() as conn:
            autocommit = conn.autocommit
            try:
                conn.autocommit = True  # VACUUM cannot run inside a transaction block (a caller's open one refuses)
                conn.execute(statement)
            except psycopg.Error as err:
                raise translate(err, self._connector.description, "ragplug tables") from err
            finally:
                if conn.autocommit != autocommit:
                    conn.autocommit = autocommit
        return self.table_sizes()

    def table_sizes(self) -> dict[str, int]:
        """Bytes of the records table that holds this schema's collections: ``heap``, ``toast`` (the token
        matrices), ``indexes`` and ``total``."""
        return dict(self._run(self._sizes()))

    def _sizes(self) -> Op:
        row = yield Query(
            "SELECT pg_relation_size(c.oid), coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), "
            "pg_indexes_size(c.oid), pg_total_relation_size(c.oid) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'ragplug_records'",
            [self.schema],
            "one",
        )
        return dict(zip(("heap", "toast", "indexes", "total"), (int(v) for v in row), strict=True))

    @property
    def codec(self) -> Codec | None:
        """This collection's trained codec (None before training, or for an fp16 collection)."""
        info = self._run(self._collection())
        return info.codec if info else None

    def _lifted(self, info: _Collection, n_tokens: int, tokens: bytes, codes: bytes | None) -> FloatMatrix:
        """A row's token matrix in the encoder's space."""
        matrix = coded.decode_row(info.codec, n_tokens, tokens, codes, info.dim)
        return info.codec.lift(matrix) if info.codec is not None else matrix

    def _train(self, *, force: bool, anyway: bool = False) -> Op:
        """Train the codec when due (``force``: again; ``anyway``: below ``train_tokens`` too), re-encoding
        every row; True when it trained."""
        info = yield from self._collection(lock="update")  # writers of this collection wait
        if info is None:
            return False
        config = info.codec_config
        if config is None or not config.needs_training:
            return False
        row = yield Query(
            sql.SQL("SELECT coalesce(sum(n_tokens), 0) FROM {} WHERE {}").format(self._t["records"], self._where()),
            (),
            "one",
        )
        n_tokens = int(row[0])
        grown = info.codec is not None and anyway and n_tokens >= 4 * max(info.trained_tokens, 1)
        if info.codec is not None and not (force or grown):
            return False
        if not n_tokens or (n_tokens < config.train_tokens and not (force or anyway)):
            return False
        # the sample is drawn by a seeded hash of each id and read in insertion order, never in the heap's
        # physical order (which space freed by other collections reshuffles): one codec for one collection
        sample_rows = yield Query(
            sql.SQL(
                "SELECT n_tokens, tokens, codes FROM {} WHERE {} AND (hashtextextended(id, %s::bigint) & 1048575) < %s "
                "ORDER BY seq"
            ).format(self._t["records"], self._where()),
            [config.seed % (1 << 63), min(1.0, 1.2 * config.training_rows / n_tokens) * 1048576],
            "all",
        )
        if not sample_rows:
            sample_rows = yield Query(
                sql.SQL("SELECT n_tokens, tokens, codes FROM {} WHERE {} ORDER BY seq LIMIT 100").format(
                    self._t["records"], self._where()
                ),
                (),
                "all",
            )
        codec = Codec.train(config, np.concatenate([self._lifted(info, *r) for r in sample_rows]), n_tokens=n_tokens)
        yield Query(
            sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(self.schema, ddl.bag_index_name(self.collection)))
        )
        yield Query(
            "CREATE TEMP TABLE ragplug_recode (id text PRIMARY KEY, tokens bytea, codes bytea, bag sparsevec) "
            "ON COMMIT DROP"
        )
        after = 0
        while True:
            page = yield Query(
                sql.SQL(
                    "SELECT seq, id, n_tokens, tokens, codes FROM {} WHERE {} AND seq > %s ORDER BY seq LIMIT 2000"
                ).format(self._t["records"], self._where()),
                [after],
                "all",
            )
            if not page:
                break
            encoded = coded.encode_rows(codec, [self._lifted(info, r[2], r[3], r[4]) for r in page])
            yield Copy(
                sql.SQL("COPY ragplug_recode (id, tokens, codes, bag) FROM STDIN (FORMAT BINARY)"),
                ["text", "bytea", "bytea", "sparsevec"],
                [(r[1], c.tokens, c.codes, c.bag) for r, c in zip(page, encoded, strict=True)],
            )
            after = page[-1][0]
        yield Query(
            sql.SQL(
                "UPDATE {} AS r SET tokens = t.tokens, codes = t.codes, bag = t.bag FROM ragplug_recode AS t "
                "WHERE r.collection = %s AND r.id = t.id"
            ).format(self._t["records"]),
            [self.collection],
        )
        version = info.codec_version + 1
        state = {"config": config.to_dict(), "trained": codec.to_dict(), "version": version}
        state |= {"trained_tokens": n_tokens, "deferred": info.deferred}
        yield Query(
            sql.SQL("UPDATE {} SET codec = %s, codec_arrays = %s WHERE name = %s").format(self._t["collections"]),
            [Jsonb(state), coded.codec_arrays_blob(codec), self.collection],
        )
        if codec.centroids is not None:
            yield from ddl.create_bag_index(
                self.schema, self.collection, coded.BAG_DIM, self.hnsw.m, self.hnsw.ef_construction
            )
        self._codecs = {version: codec}
        self._info = dataclasses.replace(info, codec=codec, codec_version=version)
        return True

    def drop(self) -> None:
        """Delete this collection and every record in it."""
        self._run(self._drop())
        self._info = None

    def _drop(self) -> Op:
        yield from self._drop_index()
        yield Query(sql.SQL("DELETE FROM {} WHERE name = %s").format(self._t["collections"]), [self.collection])

    def close(self) -> None:
        """Close the connections ragplug opened (a caller's connection or pool stays open)."""
        self._connector.close()

    async def aclose(self) -> None:
        await self._connector.aclose()

    # -- introspection --------------------------------------------------------------------------------
    def _where(self) -> sql.Composable:
        return sql.SQL("collection = {}").format(sql.Literal(self.collection))

    def __len__(self) -> int:
        return int(self._run(self._count()))

    def _count(self) -> Op:
        yield from self._collection()
        row = yield Query(
            sql.SQL("SELECT count(*) FROM {} WHERE {}").format(self._t["records"], self._where()), (), "one"
        )
        return row[0]

    def __contains__(self, id: object) -> bool:
        if not isinstance(id, str):
            return False
        return bool(self._run(self._contains(id)))

    def _contains(self, id_: str) -> Op:
        row = yield Query(
            sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} AND (id = %s OR parent_id = %s))").format(
                self._t["records"], self._where()
            ),
            [id_, id_],
            "one",
        )
        return row[0]

    def ids(self) -> list[str]:
        return list(self._run(self._ids()))

    def _ids(self) -> Op:
        rows = yield Query(
            sql.SQL("SELECT id FROM {} WHERE {} ORDER BY seq").format(self._t["records"], self._where()), (), "all"
        )
        return [r[0] for r in rows]

    def records(self, *, batch_size: int = 1000, vectors: bool = True) -> Iterator[Record]:
        """Every record, in insertion order, fetched ``batch_size`` at a time (each page is its own
        transaction: records written meanwhile may or may not appear). ``vectors=False`` reads ids, parents,
        texts and metadata only (the token columns are not selected): each record's ``vectors`` is an empty
        ``(0, dim)`` matrix, which no store accepts."""
        after = 0
        while True:
            page = self._run(self._page(after, batch_size, vectors=vectors))
            if not page:
                return
            after = page[-1][0]
            yield from (record for _, record in page)

    def _page(self, after: int, size: int, *, vectors: bool = True) -> Op:
        info = yield from self._collection()
        if info is None:
            return []
        if not vectors:
            rows = yield Query(
                sql.SQL(
                    "SELECT seq, id, parent_id, metadata, text FROM {} WHERE {} AND seq > %s ORDER BY seq LIMIT %s"
                ).format(self._t["records"], self._where()),
                [after, size],
                "all",
            )
            empty = np.empty((0, info.dim), dtype=np.float32)
            return [(r[0], Record(r[1], empty.copy(), r[3], r[4], r[2])) for r in rows]
        rows = yield Query(
            sql.SQL(
                "SELECT seq, id, parent_id, metadata, text, n_tokens, tokens, codes FROM {} WHERE {} AND seq > %s "
                "ORDER BY seq LIMIT %s"
            ).format(self._t["records"], self._where()),
            [after, size],
            "all",
        )
        return [(r[0], Record(r[1], self._lifted(info, r[5], r[6], r[7]), r[3], r[4], r[2])) for r in rows]

    # -- writes ---------------------------------------------------------------------------------------
    def add(self, records: Sequence[Record]) -> None:
        """Add new records; an id or item that exists raises :class:`DuplicateIdError` and adds nothing."""
        self._store(records, upsert=False)

    async def aadd(self, records: Sequence[Record]) -> None:
        await self._astore(records, upsert=False)

    def upsert(self, records: Sequence[Record]) -> None:
        """Add records, replacing in the same transaction every stored record of the items they belong to."""
        self._store(records, upsert=True)

    async def aupsert(self, records: Sequence[Record]) -> None:
        await self._astore(records, upsert=True)

    def _store(self, records: Sequence[Record], *, upsert: bool) -> None:
        prepared = self._prepared(records)
        self._ensure_collection(prepared[1][0].shape[1])
        if self._run(self._write(prepared, upsert=upsert)):
            self._run(self._train(force=False))

    async def _astore(self, records: Sequence[Record], *, upsert: bool) -> None:
        prepared = self._prepared(records)
        await self._aensure_collection(prepared[1][0].shape[1])
        if await self._arun(lambda: self._write(prepared, upsert=upsert)):
            await self._arun(lambda: self._train(force=False))

    def _prepared(self, records: Sequence[Record]) -> tuple[list[Record], list[FloatMatrix], list[dict[str, Any]]]:
        matrices, metadatas = check_records(records, self._info.dim if self._info else None)
        for record, matrix in zip(records, matrices, strict=True):
            if float(np.abs(matrix).max()) > _FP16_MAX:
                msg = f"vectors of {record.id!r} exceed {_FP16_MAX:g}, the range of the fp16 this store keeps"
                raise InvalidInputError(msg)
        return list(records), matrices, metadatas

    def _write(self, prepared: tuple[list[Record], list[FloatMatrix], list[dict[str, Any]]], *, upsert: bool) -> Op:
        records, matrices, metadatas = prepared
        dim = matrices[0].shape[1]
        info = yield from self._collection(lock="share")
        if info is None:
            raise self._dropped()
        if info.dim != dim:
            msg = f"the vectors have dimension {dim}, but collection {self.collection!r} holds dimension {info.dim}"
            raise InvalidInputError(msg)
        items = sorted({r.item_id for r in records})
        new_ids = [r.id for r in records]
        yield from self._lock_items(sorted(set(items) | set(new_ids)))
        rows = yield Query(
            sql.SQL(
                "SELECT id, parent_id FROM {} WHERE {} AND "
                "(id = ANY(%s) OR id = ANY(%s) OR parent_id = ANY(%s) OR parent_id = ANY(%s))"
            ).format(self._t["records"], self._where()),
            [new_ids, items, items, new_ids],
            "all",
        )
        gone = plan_write(records, {r[0]: r[1] for r in rows}, upsert=upsert)
        if gone:
            yield Query(
                sql.SQL("DELETE FROM {} WHERE {} AND id = ANY(%s)").format(self._t["records"], self._where()), [gone]
            )
        summaries = self._summarizer(info).documents(matrices)
        HalfVector = require("pgvector", "postgres").HalfVector
        encoded = coded.encode_rows(info.codec, matrices)
        rows_out = [
            (self.collection, r.id, r.parent_id, Jsonb(meta), r.text, len(m), c.tokens, HalfVector(f), c.codes, c.bag)
            for r, m, meta, f, c in zip(records, matrices, metadatas, summaries, encoded, strict=True)
        ]
        yield Copy(
            sql.SQL(
                "COPY {} (collection, id, parent_id, metadata, text, n_tokens, tokens, summary, codes, bag) "
                "FROM STDIN (FORMAT BINARY)"
            ).format(self._t["records"]),
            ["text", "text", "text", "jsonb", "text", "int4", "bytea", "halfvec", "bytea", "sparsevec"],
            rows_out,
        )
        config = info.codec_config
        if info.codec is not None or config is None or not config.needs_training or info.deferred:
            return False
        row = yield Query(
            sql.SQL("SELECT coalesce(sum(n_tokens), 0) FROM {} WHERE {}").format(self._t["records"], self._where()),
            (),
            "one",
        )
        return int(row[0]) >= config.train_tokens  # train, in a transaction of its own

    def delete(self, ids: Sequence[str]) -> None:
        """Delete records or whole items by id; an unknown id raises :class:`UnknownIdError` and deletes nothing."""
        self._run(self._delete(check_ids(ids)))

    async def adelete(self, ids: Sequence[str]) -> None:
        checked = check_ids(ids)
        await self._arun(lambda: self._delete(checked))

    def _delete(self, ids: list[str]) -> Op:
        info = yield from self._collection(lock="share")
        if info is None:
            msg = f"unknown ids: {ids[:10]}"
            raise UnknownIdError(msg)
        yield from self._lock_items(sorted(ids))  # an upsert of one of these items waits, or is waited for
        rows = yield Query(  # one statement: what it deletes is one consistent state of each item
            sql.SQL("DELETE FROM {} WHERE {} AND (id = ANY(%s) OR parent_id = ANY(%s)) RETURNING id, parent_id").format(
                self._t["records"], self._where()
            ),
            [ids, ids],
            "all",
        )
        _refuse_unknown(ids, rows)  # raising rolls the transaction back: nothing is deleted

    def _lock_items(self, keys: list[str]) -> Op:
        """Transaction-scoped advisory locks on item and record ids (sorted by the caller: no deadlocks)."""
        yield Query(
            sql.SQL(
                "SELECT count(pg_advisory_xact_lock(hashtextextended(%s || chr(31) || k, 0))) "
                "FROM unnest(%s::text[]) AS k"
            ),
            [self.collection, keys],
            "one",
        )

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records by id, in the order asked (an item id gives its chunks); an unknown id raises
        :class:`UnknownIdError`."""
        return list(self._run(self._get(check_ids(ids))))

    async def aget(self, ids: Sequence[str]) -> list[Record]:
        checked = check_ids(ids)
        return list(await self._arun(lambda: self._get(checked)))

    def _get(self, ids: list[str]) -> Op:
        info = yield from self._collection()
        rows = []
        if info is not None:
            rows = yield Query(
                sql.SQL(
                    "SELECT id, parent_id, metadata, text, n_tokens, tokens, codes FROM {} WHERE {} "
                    "AND (id = ANY(%s) OR parent_id = ANY(%s)) ORDER BY seq"
                ).format(self._t["records"], self._where()),
                [ids, ids],
                "all",
            )
        _refuse_unknown(ids, rows)
        by_id = {r[0]: r for r in rows}
        children: dict[str, list[str]] = {}
        for r in rows:
            if r[1] is not None:
                children.setdefault(r[1], []).append(r[0])
        out = []
        for id_ in ids:
            for rid in children.get(id_, [id_]) if id_ not in by_id else [id_]:
                r = by_id[rid]
                out.append(Record(r[0], self._lifted(info, r[4], r[5], r[6]), r[2], r[3], r[1]))
        return out

    # -- search ---------------------------------------------------------------------------------------
    def search(
        self,
        query: FloatMatrix,
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[Hit]:
        """The ``k`` best records for ``query`` by MaxSim, best first, among those matching ``filter``."""
        return self.search_batch([query], k=k, filter=filter, options=options)[0]

    async def asearch(
        self,
        query: FloatMatrix,
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[Hit]:
        return (await self.asearch_batch([query], k=k, filter=filter, options=options))[0]

    def search_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        """One result list per query, all in one transaction."""
        args = self._search_args(queries, k, filter, options)
        return list(self._run(self._search(*args)))

    async def asearch_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        args = self._search_args(queries, k, filter, options)
        return list(await self._arun(lambda: self._search(*args)))

    def _search_args(
        self,
        queries: Sequence[FloatMatrix],
        k: int,
        filter: FilterNode | Filter | None,
        options: SearchOptions | None,
    ) -> tuple[list[FloatMatrix], int, FilterNode | None, PgSearchOptions]:
        k = check_k(k)
        node = parse_filter(filter)
        options = options or _DEFAULT_OPTIONS
        if not isinstance(options, PgSearchOptions):
            msg = f"options must be PgSearchOptions, got {type(options).__name__}"
            raise InvalidInputError(msg)
        if options.n_candidates is not None and options.n_candidates < k:
            msg = f"n_candidates ({options.n_candidates}) must be at least k ({k})"
            raise InvalidInputError(msg)
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            msg = "search_batch takes a list of query matrices; use search for one"
            raise InvalidInputError(msg)
        matrices = [as_matrix(q, None, f"query {i}") for i, q in enumerate(queries)]
        return matrices, k, node, options

    def _search(self, queries: list[FloatMatrix], k: int, node: FilterNode | None, options: PgSearchOptions) -> Op:
        info = yield from self._collection()
        if info is None or not queries:
            return [[] for _ in queries]
        for i, q in enumerate(queries):
            if q.shape[1] != info.dim:
                msg = f"query {i} has dimension {q.shape[1]}, but this store holds dimension {info.dim}"
                raise InvalidInputError(msg)
        codec = info.codec
        bags = codec is not None and codec.centroids is not None
        n_cand = options.n_candidates or (max(1000, 16 * k) if bags else max(100, 4 * k))
        yield Query(
            "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
            [str(min(1000, options.ef_search or max(n_cand, 40)))],
            "one",
        )
        where: sql.Composable = self._where()
        params: list[Any] = []
        if node is not None:
            clause, params = to_sql(node, sql.Identifier("metadata"))
            where = sql.SQL("{} AND {}").format(where, clause)
        full = sql.SQL("id, parent_id, metadata, text, n_tokens, tokens, codes")
        if bags:
            assert codec is not None and codec.centroids is not None
            statement = sql.SQL(
                "SELECT id, n_tokens, codes FROM {} WHERE {} ORDER BY bag::sparsevec({dim}) <#> %s::sparsevec({dim}) "
                "LIMIT %s"
            ).format(self._t["records"], where, dim=sql.Literal(coded.BAG_DIM))
        else:
            statement = sql.SQL(
                "SELECT {} FROM {} WHERE {} ORDER BY summary::halfvec({dim}) <#> %s::halfvec({dim}) LIMIT %s"
            ).format(full, self._t["records"], where, dim=sql.Literal(info.summary.dim(info.dim)))
        HalfVector = require("pgvector", "postgres").HalfVector
        summarizer = self._summarizer(info)
        exact = options.exact
        if exact:
            yield Query("SELECT set_config('enable_indexscan', 'off', true)", (), "one")
        results: list[list[Hit]] = []
        for query in queries:
            prepared = codec.prepare(query) if codec is not None else query
            if bags:
                assert codec is not None
                qvec, sims = coded.query_bag(codec, prepared, options.n_probe or 8)
            else:
                qvec = HalfVector(summarizer.query(query))
            rows = yield Query(statement, [*params, qvec, n_cand], "all")
            if len(rows) < n_cand and not exact:  # too few passed the filter in the index scan: scan them all
                yield Query("SELECT set_config('enable_indexscan', 'off', true)", (), "one")
                rows = yield Query(statement, [*params, qvec, n_cand], "all")
                yield Query("SELECT set_config('enable_indexscan', 'on', true)", (), "one")
            if not rows:
                yield from self._explain_empty(node)
                results.append([])
                continue
            if bags:  # centroid interaction from the codes, then the survivors' vectors or residuals
                assert codec is not None
                scores = coded.centroid_interaction(sims, [r[2] for r in rows], codec)
                n_rescore = min(len(rows), options.n_rescore or max(400, 4 * k))
                best = np.argpartition(-scores, n_rescore - 1)[:n_rescore]
                rows = yield Query(
                    sql.SQL("SELECT {} FROM {} WHERE {} AND id = ANY(%s)").format(
                        full, self._t["records"], self._where()
                    ),
                    [[rows[i][0] for i in best]],
                    "all",
                )
            vectors, starts, lengths = coded.scoring_rows(codec, [(r[4], r[5], r[6]) for r in rows], info.dim)
            top = top_k_exact(prepared, vectors, starts, lengths, k)
            results.append([Hit(rows[d][0], s, rows[d][2], rows[d][3], rows[d][1]) for d, s in top])
        return results

    def _explain_empty(self, node: FilterNode | None) -> Op:
        """A filter that matched nothing: find out whether it is a mistake (:func:`explain_empty`)."""
        if node is None:
            return
        rows = yield Query(
            sql.SQL(
                "SELECT f, array_agg(DISTINCT jsonb_typeof(metadata -> f)) FROM {}, unnest(%s::text[]) AS f "
                "WHERE {} AND metadata ? f GROUP BY f"
            ).format(self._t["records"], self._where()),
            [fields_of(node)],
            "all",
        )
        explain_empty(node, {r[0]: set(r[1]) for r in rows})


def _refuse_unknown(ids: list[str], rows: list[Any]) -> None:
    """Rows are ``(id, parent_id, ...)``: an asked id that is neither a record nor a parent is unknown."""
    known = {r[0] for r in rows} | {r[1] for r in rows if r[1] is not None}
    missing = [i for i in ids if i not in known]
    if missing:
        msg = f"unknown ids: {missing[:10]}"
        raise UnknownIdError(msg)
