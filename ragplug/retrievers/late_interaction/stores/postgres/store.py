"""``PgVectorStore``: the multi-vector store in Postgres + pgvector, sync and async.

Each collection keeps its token matrices with a codec (:mod:`.coded`; by default each token's k-means
centroid id and its residual at 8 bits per dimension, trained once the collection holds
``CodecConfig.train_tokens`` tokens, fp16 until then; 2- or 4-bit residuals take 2-4 times less space
for some recall, fp16 with ``codes=True`` twice as much for none). Search runs in stages. Once a codec
with codes is trained, the collection's inverted lists in Postgres propose ``n_candidates`` records
(each query token probes ``n_probe`` centroids), which are ranked by centroid interaction (from their
codes alone); the ``n_rescore`` best ones' vectors or residuals are fetched (:mod:`.coded`). A filter
applies when candidates are fetched; when too few pass it, the next ones in the ranking are fetched, and
under a selective filter every matching record is considered, so it still yields every match. Before
that (and for float codecs without codes) an HNSW index over one summary vector per record (the mean
of its token vectors, or a MUVERA encoding: :mod:`~ragplug.retrievers.late_interaction.fde`;
``halfvec``) proposes the candidates, filtered in the same query (pgvector 0.8 iterative scans; when
fewer come back than asked, the query is re-run without the index). The survivors' token matrices are
re-scored with exact MaxSim in the client (:mod:`~ragplug.retrievers.late_interaction.twostage`).

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
from ragplug._progress import progress_bar
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
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig, codec_config, train_codec
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

    ``n_candidates``: records proposed by the first stage (default ``max(100, 4 * k)`` over summaries,
    ``max(1000, 16 * k)`` from the inverted lists of a collection with codes; at least ``k``);
    ``ef_search``: HNSW's search breadth over summaries (default ``max(n_candidates, 40)``, at most 1000);
    ``n_probe``: centroids probed per query token in the inverted lists (default 8); ``n_rescore``:
    candidates of a collection with codes re-scored exactly after centroid interaction (default
    ``max(200, 4 * k)``); ``exact``: no first stage: score the encodings of every (matching) record (a
    collection with codes: exact MaxSim over all of them).
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
    postings: bool = False  # its inverted lists are kept (a codec with codes, trained by schema version 3)


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
        config = codec_config(codec) if codec is not None else coded.default_codec()
        if config.keep_float32:
            msg = "CodecConfig.keep_float32 is for memory stores: a Postgres collection keeps only the codec's columns"
            raise InvalidInputError(msg)
        if connection is None:
            connection = start_embedded(embedded if embedded is not None else ".ragplug-postgres")
        self._connector = Connector(connection, pool_size=pool_size)
        self.collection = collection
        self.schema = schema
        self.summary = summary or SummaryConfig()
        self.hnsw = hnsw or HNSWConfig()
        self._codec_config = config
        self._codecs: dict[int, Codec] = {}  # trained codecs by version: their arrays are fetched once
        self._t = ddl.tables(schema)
        self._info: _Collection | None = None
        self._summarizers: dict[tuple[int, SummaryConfig], Summarizer] = {}
        self._tx = Transactions(
            self._connector, self._prepare, tables="ragplug tables", async_methods="aadd, asearch, ..."
        )
        self._create_schema = create_schema
        self._defer_new = False  # drop_index() before the collection existed: make it as a bulk load's
        self.pgvector_version: str | None = None

    @property
    def sync_capable(self) -> bool:
        """False when the store was given only an async connection or pool (use the ``a*`` methods)."""
        return self._connector.sync_capable

    def __repr__(self) -> str:
        return f"PgVectorStore({self._connector.description}, collection={self.collection!r})"

    # -- the drivers ----------------------------------------------------------------------------------
    def _run(self, op: Op, *, snapshot: bool = False) -> Any:
        before = self._info
        try:
            return self._tx.run(op, snapshot=snapshot)
        except BaseException:
            self._info = before  # what a rolled-back transaction read is not known to exist
            raise

    async def _arun(self, make_op: Any, *, snapshot: bool = False) -> Any:
        before = self._info
        try:
            return await self._tx.arun(make_op, snapshot=snapshot)
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
            postings=bool(state.get("postings", False)),
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
        config = self._codec_config
        state: dict[str, Any] = {"config": config.to_dict(), "trained": None, "version": 0}
        if not config.needs_training:  # float16/float32 without a projection: ready as it is
            state |= {"trained": Codec.untrained(config, dim).to_dict(), "version": 1}
        state["deferred"] = self._defer_new
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
        if not self._defer_new:
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
    def codec_config(self) -> CodecConfig | None:
        """What this collection keeps per token: the settings it was made with once it exists (None: made
        before codecs, fp16 for good), else those it will be made with (the ``codec`` given, or the default)."""
        info = self._info or self._run(self._collection())
        return info.codec_config if info is not None else self._codec_config

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
        """Drop this collection's HNSW index before a large bulk load: building it once afterwards with
        :meth:`create_index` is faster than growing it row by row. Searches scan without it meanwhile, and a
        codec still to be trained waits for :meth:`create_index` (which trains it on the whole load). Before
        the collection exists, it is then made without its index, as a bulk load's."""
        if self._run(self._collection()) is None:
            self._defer_new = True
            return
        self._run(self._drop_index(defer=True))

    def _drop_index(self, *, defer: bool = False) -> Op:
        name = sql.Identifier(self.schema, ddl.index_name(self.collection))
        yield Query(sql.SQL("DROP INDEX IF EXISTS {}").format(name))
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
        """Build this collection's HNSW index if it is missing (see :meth:`drop_index`). First its codec is
        trained if it still needs training, or re-trained if the collection has grown 4 times since."""
        self._defer_new = False
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

    def train_codec(self) -> bool:
        """(Re)train this collection's codec on a sample of its tokens and re-encode every record, in one
        transaction (writers wait meanwhile). A collection trains by itself once it holds ``train_tokens``
        tokens; call this after it has grown much larger, so the centroids follow the data. Returns False
        when there is nothing to train (an empty collection, or a codec that needs no training)."""
        return bool(self._run(self._train(force=True)))

    def compact(self, *, full: bool = False) -> dict[str, int]:
        """Rebuild this collection's inverted lists (without the records deleted since they were written),
        reclaim the space that re-encoding left behind, and return the tables' bytes after it.

        Postgres keeps a row's old version until ``VACUUM``: :meth:`train_codec` (and :meth:`create_index`
        after a bulk load, which trains the codec) rewrites every token matrix, so the table holds the old
        matrices beside the new ones until then. ``full=False`` runs ``VACUUM (ANALYZE)``: later writes reuse
        the space, readers and writers go on, but the files rarely shrink. ``full=True`` runs
        ``VACUUM (FULL, ANALYZE)``: the table is rewritten at its live size, under a lock that blocks every
        collection in this schema while it runs (the tables are shared). Returns :meth:`table_sizes`."""
        import psycopg

        tables = sql.SQL(", ").join([self._t["records"], self._t["postings"]])
        statement = sql.SQL("VACUUM (FULL, ANALYZE) {}" if full else "VACUUM (ANALYZE) {}").format(tables)
        self._run(self._rebuild_postings())  # also the store's first-use step (pgvector and schema checks)
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
        """Bytes of the tables that hold this schema's collections (all of them): the records table's
        ``heap``, ``toast`` (the token matrices) and ``indexes``, the inverted lists' ``postings`` (table and
        index), and the ``total`` of both tables."""
        return dict(self._run(self._sizes()))

    def _sizes(self) -> Op:
        rows = yield Query(
            "SELECT c.relname, pg_relation_size(c.oid), "
            "coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0), pg_indexes_size(c.oid), "
            "pg_total_relation_size(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname IN ('ragplug_records', 'ragplug_postings') ORDER BY c.relname",
            [self.schema],
            "all",
        )
        sizes = {r[0]: [int(v) for v in r[1:]] for r in rows}
        heap, toast, indexes, records = sizes["ragplug_records"]
        postings = sizes.get("ragplug_postings", [0, 0, 0, 0])[3]
        return {"heap": heap, "toast": toast, "indexes": indexes, "postings": postings, "total": records + postings}

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
        codec = train_codec(config, np.concatenate([self._lifted(info, *r) for r in sample_rows]), n_tokens=n_tokens)
        yield Query("CREATE TEMP TABLE ragplug_recode (id text PRIMARY KEY, tokens bytea, codes bytea) ON COMMIT DROP")
        parts: list[tuple[int, bytes]] = []
        after = 0
        bar = progress_bar(n_tokens, desc=f"coding tokens ({config.kind})", unit="token", late=True)
        with bar:
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
                    sql.SQL("COPY ragplug_recode (id, tokens, codes) FROM STDIN (FORMAT BINARY)"),
                    ["text", "bytea", "bytea"],
                    [(r[1], c.tokens, c.codes) for r, c in zip(page, encoded, strict=True)],
                )
                if codec.centroids is not None:
                    parts += coded.postings_parts([r[0] for r in page], [c.codes or b"" for c in encoded], codec)
                after = page[-1][0]
                bar.update(sum(int(r[2]) for r in page))
        yield Query(
            sql.SQL(
                "UPDATE {} AS r SET tokens = t.tokens, codes = t.codes FROM ragplug_recode AS t "
                "WHERE r.collection = %s AND r.id = t.id"
            ).format(self._t["records"]),
            [self.collection],
        )
        yield from self._replace_postings(coded.merge_parts(parts))
        version = info.codec_version + 1
        state = {"config": config.to_dict(), "trained": codec.to_dict(), "version": version}
        state |= {"trained_tokens": n_tokens, "deferred": info.deferred, "postings": codec.centroids is not None}
        yield Query(
            sql.SQL("UPDATE {} SET codec = %s, codec_arrays = %s WHERE name = %s").format(self._t["collections"]),
            [Jsonb(state), coded.codec_arrays_blob(codec), self.collection],
        )
        self._codecs = {version: codec}
        self._info = dataclasses.replace(info, codec=codec, codec_version=version, postings=bool(state["postings"]))
        return True

    # -- inverted lists (a codec with codes) -------------------------------------------------------------
    def _replace_postings(self, parts: list[tuple[int, bytes]]) -> Op:
        """Step: this collection's inverted lists become ``parts``."""
        yield Query(sql.SQL("DELETE FROM {} WHERE {}").format(self._t["postings"], self._where()))
        yield from self._insert_postings(parts)

    def _insert_postings(self, parts: list[tuple[int, bytes]]) -> Op:
        if parts:
            yield Copy(
                sql.SQL("COPY {} (collection, centroid, seqs) FROM STDIN (FORMAT BINARY)").format(self._t["postings"]),
                ["text", "int4", "bytea"],
                [(self.collection, c, blob) for c, blob in parts],
            )

    def _rebuild_postings(self, *, missing_only: bool = False) -> Op:
        """Rebuild the inverted lists from every record's codes (a collection with codes; compact(), and,
        ``missing_only``, a collection trained before schema version 3, which had none); returns it."""
        info = yield from self._collection()
        if info is None or info.codec is None or info.codec.centroids is None:
            return info
        info = yield from self._collection(lock="update")  # writers wait; so does a concurrent rebuild
        assert info is not None and info.codec is not None
        if missing_only and info.postings:  # another search built them meanwhile
            return info
        parts: list[tuple[int, bytes]] = []
        after = 0
        while True:
            page = yield Query(
                sql.SQL("SELECT seq, codes FROM {} WHERE {} AND seq > %s ORDER BY seq LIMIT 5000").format(
                    self._t["records"], self._where()
                ),
                [after],
                "all",
                binary=True,
            )
            if not page:
                break
            parts += coded.postings_parts([r[0] for r in page], [r[1] or b"" for r in page], info.codec)
            after = page[-1][0]
        yield from self._replace_postings(coded.merge_parts(parts))
        if not info.postings:
            yield Query(
                sql.SQL("UPDATE {} SET codec = jsonb_set(codec, '{{postings}}', 'true') WHERE name = %s").format(
                    self._t["collections"]
                ),
                [self.collection],
            )
            info = dataclasses.replace(info, postings=True)
            self._info = info
        return info

    def _append_postings(self, info: _Collection, ids: list[str], encoded: list[coded.Coded]) -> Op:
        """Step of a write: one part per centroid the new records touch, then merge the crowded ones."""
        assert info.codec is not None
        rows = yield Query(
            sql.SQL("SELECT id, seq FROM {} WHERE {} AND id = ANY(%s)").format(self._t["records"], self._where()),
            [ids],
            "all",
        )
        seq_of = dict(rows)
        parts = coded.postings_parts([seq_of[i] for i in ids], [c.codes or b"" for c in encoded], info.codec)
        yield from self._insert_postings(parts)
        locked = yield Query(  # one merger at a time per collection; the others leave it to the next write
            "SELECT pg_try_advisory_xact_lock(hashtextextended('ragplug.postings' || chr(31) || %s, 0))",
            [self.collection],
            "one",
        )
        if not locked[0]:
            return
        crowded = yield Query(
            sql.SQL(
                "SELECT centroid FROM {} WHERE {} AND centroid = ANY(%s) GROUP BY centroid HAVING count(*) > %s"
            ).format(self._t["postings"], self._where()),
            [[c for c, _ in parts], coded.MAX_PARTS],
            "all",
        )
        if not crowded:
            return
        old = yield Query(
            sql.SQL("DELETE FROM {} WHERE {} AND centroid = ANY(%s) RETURNING centroid, seqs").format(
                self._t["postings"], self._where()
            ),
            [[r[0] for r in crowded]],
            "all",
            binary=True,
        )
        listed = np.unique(np.concatenate([np.frombuffer(blob, dtype="<i8") for _, blob in old]))
        live = yield Query(
            sql.SQL("SELECT seq FROM {} WHERE {} AND seq = ANY(%s)").format(self._t["records"], self._where()),
            [listed.tolist()],
            "all",
        )
        yield from self._insert_postings(coded.merge_parts(old, np.array([r[0] for r in live], dtype=np.int64)))

    def drop(self) -> None:
        """Delete this collection and every record in it."""
        self._run(self._drop())
        self._info = None
        self._defer_new = False

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
            (self.collection, r.id, r.parent_id, Jsonb(meta), r.text, len(m), c.tokens, HalfVector(f), c.codes)
            for r, m, meta, f, c in zip(records, matrices, metadatas, summaries, encoded, strict=True)
        ]
        yield Copy(
            sql.SQL(
                "COPY {} (collection, id, parent_id, metadata, text, n_tokens, tokens, summary, codes) "
                "FROM STDIN (FORMAT BINARY)"
            ).format(self._t["records"]),
            ["text", "text", "text", "jsonb", "text", "int4", "bytea", "halfvec", "bytea"],
            rows_out,
        )
        if info.postings:
            yield from self._append_postings(info, new_ids, encoded)
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
        """One result list per query, all in one transaction that sees one state of the collection (a
        concurrent write, re-training or compaction is seen whole or not at all)."""
        args = self._search_args(queries, k, filter, options)
        if self._lists_missing(self._info or self._run(self._collection())):
            self._run(self._rebuild_postings(missing_only=True))
        return list(self._run(self._search(*args), snapshot=True))

    async def asearch_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        args = self._search_args(queries, k, filter, options)
        if self._lists_missing(self._info or await self._arun(self._collection)):
            await self._arun(lambda: self._rebuild_postings(missing_only=True))
        return list(await self._arun(lambda: self._search(*args), snapshot=True))

    @staticmethod
    def _lists_missing(info: _Collection | None) -> bool:
        """A collection with codes trained before schema version 3 (its lists are built before it is searched,
        in a transaction of their own)."""
        return info is not None and info.codec is not None and info.codec.centroids is not None and not info.postings

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
        if codec is not None and codec.centroids is not None:
            if not info.postings:  # search_batch builds them first (_lists_missing); a snapshot must not write
                msg = f"collection {self.collection!r} has no inverted lists yet; call compact() to build them"
                raise StoreError(msg)
            return (yield from self._search_postings(info, queries, k, node, options))
        n_cand = options.n_candidates or max(100, 4 * k)
        yield Query(
            "SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan', 'relaxed_order', true)",
            [str(min(1000, options.ef_search or max(n_cand, 40)))],
            "one",
        )
        where, params = self._filtered(node)
        statement = sql.SQL(
            "SELECT id, parent_id, metadata, text, n_tokens, tokens, codes FROM {} WHERE {} "
            "ORDER BY summary::halfvec({dim}) <#> %s::halfvec({dim}) LIMIT %s"
        ).format(self._t["records"], where, dim=sql.Literal(info.summary.dim(info.dim)))
        HalfVector = require("pgvector", "postgres").HalfVector
        summarizer = self._summarizer(info)
        if options.exact:
            yield Query("SELECT set_config('enable_indexscan', 'off', true)", (), "one")
        results: list[list[Hit]] = []
        for query in queries:
            prepared = codec.prepare(query) if codec is not None else query
            qvec = HalfVector(summarizer.query(query))
            rows = yield Query(statement, [*params, qvec, n_cand], "all", binary=True)
            if len(rows) < n_cand and not options.exact:  # too few passed the filter in the index scan: scan all
                yield Query("SELECT set_config('enable_indexscan', 'off', true)", (), "one")
                rows = yield Query(statement, [*params, qvec, n_cand], "all", binary=True)
                yield Query("SELECT set_config('enable_indexscan', 'on', true)", (), "one")
            if not rows:
                yield from self._explain_empty(node)
                results.append([])
                continue
            vectors, starts, lengths = coded.scoring_rows(codec, [(r[4], r[5], r[6]) for r in rows], info.dim)
            top = top_k_exact(prepared, vectors, starts, lengths, k)
            results.append([Hit(rows[d][0], s, rows[d][2], rows[d][3], rows[d][1]) for d, s in top])
        return results

    def _filtered(self, node: FilterNode | None) -> tuple[sql.Composable, list[Any]]:
        """This collection's rows, and those ``node`` lets through: a ``WHERE`` clause and its parameters."""
        if node is None:
            return self._where(), []
        clause, params = to_sql(node, sql.Identifier("metadata"))
        return sql.SQL("{} AND {}").format(self._where(), clause), list(params)

    def _search_postings(
        self, info: _Collection, queries: list[FloatMatrix], k: int, node: FilterNode | None, options: PgSearchOptions
    ) -> Op:
        """Search a collection with codes: inverted lists, centroid interaction, exact MaxSim (see :mod:`.coded`)."""
        codec = info.codec
        assert codec is not None
        n_cand = options.n_candidates or max(1000, 16 * k)
        where, params = self._filtered(node)
        records = self._t["records"]
        of_seqs = sql.SQL("FROM {} WHERE {} AND seq = ANY(%s)").format(records, where)
        results: list[list[Hit]] = []
        for query in queries:
            prepared = codec.prepare(query)
            found = coded.probe(codec, prepared, options.n_probe or 8)
            if options.exact:
                rows = yield Query(
                    sql.SQL("SELECT seq, codes FROM {} WHERE {}").format(records, where), params, "all", binary=True
                )
            else:
                rows = yield from self._candidates(found, n_cand, node, where, params)
            if not rows:
                yield from self._explain_empty(node)
                results.append([])
                continue
            survivors = [r[0] for r in rows]
            if not options.exact:
                n_rescore = min(len(rows), max(k, options.n_rescore or max(200, 4 * k)))
                interaction = coded.centroid_interaction(found.sims, [r[1] for r in rows], codec)
                survivors = [rows[i][0] for i in np.argpartition(-interaction, n_rescore - 1)[:n_rescore]]
            # one statement: what is scored is what is described (a record deleted meanwhile is in neither)
            scored = yield Query(
                sql.SQL("SELECT n_tokens, tokens, codes, id, parent_id, metadata, text {}").format(of_seqs),
                [*params, survivors],
                "all",
                binary=True,
            )
            if not scored:
                results.append([])
                continue
            vectors, starts, lengths = coded.scoring_rows(codec, [r[:3] for r in scored], info.dim)
            top = top_k_exact(prepared, vectors, starts, lengths, k)
            results.append([Hit(scored[d][3], s, scored[d][5], scored[d][6], scored[d][4]) for d, s in top])
        return results

    def _candidates(
        self, found: coded.Probe, n_cand: int, node: FilterNode | None, where: sql.Composable, params: list[Any]
    ) -> Op:
        """Step: ``(seq, codes)`` of the ``n_cand`` records the inverted lists rank best among those ``where``
        lets through. When too few pass (a filter, or records deleted since the lists were written), the
        next ones in the ranking are fetched as many as the share that passed predicts; when the lists
        hold too few, or that share is under a quarter (a selective filter), every matching record competes,
        those in no probed list after those in one: ``k`` results whenever ``k`` records match."""
        lists = yield Query(
            sql.SQL("SELECT centroid, seqs FROM {} WHERE {} AND centroid = ANY(%s)").format(
                self._t["postings"], self._where()
            ),
            [found.wanted],
            "all",
            binary=True,
        )
        listed, approx = coded.postings_scores(found, lists)
        of_seqs = sql.SQL("SELECT seq, codes FROM {} WHERE {} AND seq = ANY(%s)").format(self._t["records"], where)
        best = np.argpartition(-approx, n_cand - 1)[:n_cand] if len(listed) > n_cand else slice(None)
        asked = listed[best]
        rows = yield Query(of_seqs, [*params, asked.tolist()], "all", binary=True)
        if len(rows) >= n_cand:
            return rows
        ranked = listed[np.argsort(-approx, kind="stable")]
        passed = len(rows) / n_cand
        if len(listed) > n_cand and passed >= 0.25:  # the next ones (ties at the cut may order either way)
            rest = ranked[~np.isin(ranked, asked)]
            more = rest[: int((n_cand - len(rows)) / passed * 1.5) + 1]
            rows += yield Query(of_seqs, [*params, more.tolist()], "all", binary=True)
        if len(rows) >= n_cand or not (node is not None or len(listed) <= n_cand or passed < 0.25):
            return rows
        matching = yield Query(
            sql.SQL("SELECT seq FROM {} WHERE {}").format(self._t["records"], where), params, "all", binary=True
        )
        pool = np.array([r[0] for r in matching], dtype=np.int64)
        position = np.empty(len(ranked), dtype=np.int64)  # of each listed record (ascending seq) in the ranking
        position[np.searchsorted(listed, ranked)] = np.arange(len(ranked))
        rank = np.full(len(pool), len(ranked), dtype=np.int64)  # unlisted: after every listed one
        at = np.minimum(np.searchsorted(listed, pool), max(len(listed) - 1, 0))
        if len(listed):
            is_listed = listed[at] == pool
            rank[is_listed] = position[at[is_listed]]
        have = {r[0] for r in rows}
        extra = [int(q) for q in pool[np.argsort(rank, kind="stable")][:n_cand] if int(q) not in have]
        if extra:
            rows += yield Query(of_seqs, [*params, extra], "all", binary=True)
        return rows

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
