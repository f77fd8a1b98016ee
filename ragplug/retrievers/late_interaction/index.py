"""An encoder and a store tied together: add items, search with a query, delete by id, persist.

:class:`LateInteractionIndex` is what the framework plugins wrap. It is modality-free: the encoder
decides what an item is (a string for ColBERT, a page image for ColPali). An optional ``chunker`` splits
long items into chunks; chunks of one item are stored as ``"<id>#<n>"`` with the item's id as their
``parent_id`` (also in their metadata, with ``chunk_index`` and ``start_index``, the character offset). An
item that fits in one chunk is stored under its own id with its metadata untouched. The store owns the
parent/chunk relation: deleting, getting or upserting an item id acts on all of its chunks, whichever
process wrote them.

Arguments are validated once, here, where they enter: ``k``, the filter (parsed into nodes), the query
and the store's search options (``search_kwargs``, turned into the store's typed options).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ragplug._progress import summary, wants_progress
from ragplug.errors import DuplicateIdError, InvalidInputError
from ragplug.retrievers.late_interaction.base import (
    RELEVANCE_KEY,
    SCORE_KEY,
    Chunk,
    Chunker,
    Encoder,
    FloatMatrix,
    Hit,
    MultiVectorStore,
    Record,
    SearchOptions,
    check_ids,
    check_k,
    check_text,
    relevance_of,
)
from ragplug.retrievers.late_interaction.filters import Filter, FilterNode, parse_filter
from ragplug.retrievers.late_interaction.mmr import check_mmr, mmr_order
from ragplug.retrievers.late_interaction.stores import create_store, load_store

__all__ = ["CHUNK_KEYS", "Chunk", "Chunker", "LateInteractionIndex"]

#: Metadata keys the index writes on chunks of a split item; user metadata may not use them.
CHUNK_KEYS = ("parent_id", "chunk_index", "start_index")
_RESERVED_KEYS = (*CHUNK_KEYS, SCORE_KEY, RELEVANCE_KEY)


class LateInteractionIndex:
    """Encoder + :class:`MultiVectorStore`. Thread-safe as its store is; keeps no state of its own."""

    def __init__(
        self,
        encoder: Encoder,
        store: MultiVectorStore | None = None,
        *,
        chunker: Chunker | None = None,
    ) -> None:
        self.encoder = encoder
        identity = encoder.identity
        if store is None:
            store = create_store("memory", encoder=identity)
        self.store = store
        self.chunker = chunker
        self._bound = False
        if getattr(store, "sync_capable", True):
            self._bind()  # refuses a store of another encoder or dimension now
        # else: a store with only an async connection is bound by the first async call

    def _bind(self) -> None:
        if not self._bound:
            self.store.bind_encoder(self.encoder.identity)
            self._bound = True

    async def _abind(self) -> None:
        if not self._bound:
            await self.store.abind_encoder(self.encoder.identity)
            self._bound = True

    @property
    def search_options(self) -> type[SearchOptions]:
        """The store's typed search options (what ``search`` takes besides ``k`` and ``filter``)."""
        return self.store.search_options

    def __len__(self) -> int:
        """Number of stored records (chunks count one each)."""
        return len(self.store)

    # -- writes ---------------------------------------------------------------------------------------
    def prepare(
        self,
        items: Sequence[Any],
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        texts: Sequence[str | None] | None = None,
        show_progress: bool | None = None,
        parents: Sequence[str | None] | None = None,
    ) -> tuple[list[str], list[Record]]:
        """The records :meth:`add` would store, without storing them: the arguments validated, the items
        chunked and encoded. With :meth:`write`, a caller can encode a large document part by part (a PDF's
        pages, a batch at a time) and store it in one write."""
        if isinstance(items, str | bytes):
            msg = "add takes a list of items, not a single string"
            raise InvalidInputError(msg)
        items = list(items)
        if not items:
            msg = "nothing to add: the list of items is empty"
            raise InvalidInputError(msg)
        ids = check_ids(ids) if ids is not None else [uuid.uuid4().hex for _ in items]
        metadatas = list(metadatas) if metadatas is not None else [None] * len(items)
        if texts is None:
            texts = [item if isinstance(item, str) else None for item in items]
        texts = list(texts)
        parents = list(parents) if parents is not None else [None] * len(items)
        for name, values in (("ids", ids), ("metadatas", metadatas), ("texts", texts), ("parents", parents)):
            if len(values) != len(items):
                msg = f"{len(items)} items but {len(values)} {name}"
                raise InvalidInputError(msg)
        for i, item in enumerate(items):
            if isinstance(item, str) and not check_text(item, f"item {i} (id {ids[i]!r})").strip():
                msg = f"item {i} (id {ids[i]!r}) is empty or whitespace"
                raise InvalidInputError(msg)
        for i, text in enumerate(texts):
            if text is not None:
                check_text(text, f"text {i} (id {ids[i]!r})")
        metas = []
        for id_, meta in zip(ids, metadatas, strict=True):
            if meta is not None and not isinstance(meta, dict):
                msg = f"metadata of {id_!r} must be a dict, got {type(meta).__name__}"
                raise InvalidInputError(msg)
            clash = [key for key in _RESERVED_KEYS if key in (meta or {})]
            if clash:
                msg = f"metadata of {id_!r} uses reserved keys {clash}; rename them"
                raise InvalidInputError(msg)
            metas.append(dict(meta or {}))

        items_here = set(ids)
        for id_, parent in zip(ids, parents, strict=True):
            if parent is not None:
                check_ids([parent], f"the parent of {id_!r}")
                if parent in items_here:  # itself, or another item of this call
                    msg = f"the parent of {id_!r} is {parent!r}, which is an item of this call, not a document"
                    raise InvalidInputError(msg)

        pieces: list[tuple[str, str | None, Chunk, dict[str, Any]]] = []
        for id_, item, text, meta, parent in zip(ids, items, texts, metas, parents, strict=True):
            if parent is not None:  # a part of a document (a page): stored whole, under its document
                pieces.append((id_, parent, Chunk(item, text), meta))
                continue
            chunks = self.chunker(item) if self.chunker is not None else [Chunk(item, text)]
            if len(chunks) == 1:
                pieces.append((id_, None, Chunk(chunks[0].item, text), meta))
                continue
            for n, chunk in enumerate(chunks):
                chunk_meta = {**meta, "parent_id": id_, "chunk_index": n, "start_index": chunk.start}
                pieces.append((f"{id_}#{n}", id_, chunk, chunk_meta))
        vectors = self.encoder.encode_documents([c.item for _, _, c, _ in pieces], show_progress=show_progress)
        records = [
            Record(rid, vec, meta, chunk.text, parent)
            for (rid, parent, chunk, meta), vec in zip(pieces, vectors, strict=True)
        ]
        return ids, records

    def add(
        self,
        items: Sequence[Any],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        texts: Sequence[str | None] | None = None,
        parents: Sequence[str | None] | None = None,
        upsert: bool = False,
        show_progress: bool | None = None,
    ) -> list[str]:
        """Encode and store ``items``; returns their ids (generated when not given).

        ``texts`` are the stored payloads (defaults to the items themselves when they are strings).
        ``parents`` name the document each item is part of (a page's PDF): such an item is stored whole
        (not chunked) with that ``parent_id``, so getting or deleting the document acts on all its parts.
        With ``upsert=True`` existing ids (and all their chunks) are replaced; otherwise an existing id
        raises :class:`~ragplug.errors.DuplicateIdError` and nothing is stored.
        """
        if not upsert and ids is not None:
            self._refuse_existing(check_ids(ids))  # before the (slow) encoding; the store checks again
        self._bind()
        started = time.perf_counter()
        stored_ids, records = self.prepare(items, ids, metadatas, texts, show_progress, parents)
        self.write(records, upsert=upsert)
        self._report(stored_ids, records, show_progress, started)
        return stored_ids

    async def aadd(
        self,
        items: Sequence[Any],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        texts: Sequence[str | None] | None = None,
        parents: Sequence[str | None] | None = None,
        upsert: bool = False,
        show_progress: bool | None = None,
    ) -> list[str]:
        """:meth:`add`, with the encoding in a worker thread and the store's own async write."""
        await self._abind()
        started = time.perf_counter()
        stored_ids, records = await asyncio.to_thread(
            self.prepare, items, ids, metadatas, texts, show_progress, parents
        )
        await (self.store.aupsert if upsert else self.store.aadd)(records)
        self._report(stored_ids, records, show_progress, started)
        return stored_ids

    def write(self, records: Sequence[Record], *, upsert: bool = False) -> None:
        """Store records made by :meth:`prepare` in one write (``upsert``: replacing every stored record of
        their items)."""
        self._bind()
        (self.store.upsert if upsert else self.store.add)(records)

    def _report(self, ids: list[str], records: list[Record], show_progress: bool | None, started: float) -> None:
        """After work long enough to show a bar (see :func:`ragplug._progress.wants_progress`), one line on
        standard error: items, chunks, vectors, bytes under the store's codec, seconds, items/s."""
        if not wants_progress(show_progress, len(records)):
            return
        vectors = sum(len(r.vectors) for r in records)
        codec = getattr(self.store, "codec", None)
        per_token = getattr(codec, "bytes_per_token", None) or 4 * records[0].vectors.shape[1]
        line = summary(len(ids), len(records), vectors, time.perf_counter() - started, vectors * per_token)
        from tqdm.auto import tqdm

        tqdm.write(line, file=sys.stderr)  # beside any bar still on screen, never through it

    def _refuse_existing(self, ids: Sequence[str]) -> None:
        taken = [i for i in ids if i in self.store]
        if taken:
            msg = f"ids already stored: {taken[:5]}{' ...' if len(taken) > 5 else ''}; use upsert=True to replace them"
            raise DuplicateIdError(msg)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete items (with all their chunks) or single chunks by id; unknown ids raise and delete nothing."""
        self.store.delete(ids)

    async def adelete(self, ids: Sequence[str]) -> None:
        await self.store.adelete(ids)

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Stored records for ids; an item id expands to its chunks."""
        return self.store.get(ids)

    async def aget(self, ids: Sequence[str]) -> list[Record]:
        return await self.store.aget(ids)

    # -- search ---------------------------------------------------------------------------------------
    def _prepare(
        self, queries: Sequence[str], k: int, filter: Filter | FilterNode | None, options: dict[str, Any]
    ) -> tuple[int, FilterNode | None, SearchOptions]:
        k = check_k(k)
        node = parse_filter(filter)
        if isinstance(queries, str):
            msg = "search_batch takes a list of queries; use search for one"
            raise InvalidInputError(msg)
        for query in queries:
            if not isinstance(query, str) or not check_text(query, "a query").strip():
                msg = f"a query must be a non-empty string, got {query!r:.200}"
                raise InvalidInputError(msg)
        return k, node, self.store.search_options.from_kwargs(**options)

    def search(self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any) -> list[Hit]:
        """The ``k`` best records for ``query``; ``options`` are the store's search options (for the memory
        store: ``mode``, ``n_probe``, ``n_candidates``)."""
        return self.search_batch([query], k=k, filter=filter, **options)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 4,
        filter: Filter | FilterNode | None = None,
        **options: Any,
    ) -> list[list[Hit]]:
        """One result list per query; queries are encoded in one batch."""
        k, node, typed = self._prepare(queries, k, filter, options)
        if not queries:
            return []
        encoded = self.encoder.encode_queries(list(queries))
        return _with_relevance(encoded, self.store.search_batch(encoded, k=k, filter=node, options=typed))

    def search_mmr(
        self,
        query: str,
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | FilterNode | None = None,
        **options: Any,
    ) -> list[Hit]:
        """Diverse results (maximal marginal relevance, :mod:`.mmr`): the ``fetch_k`` best records, of which
        ``k`` are picked one by one trading relevance (``lambda_mult`` = 1) against similarity to those
        already picked (``lambda_mult`` = 0)."""
        check_mmr(check_k(k), fetch_k, lambda_mult)
        return self._mmr(self.search(query, k=fetch_k, filter=filter, **options), k, lambda_mult)

    async def asearch_mmr(
        self,
        query: str,
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | FilterNode | None = None,
        **options: Any,
    ) -> list[Hit]:
        """:meth:`search_mmr` with the store's async search."""
        check_mmr(check_k(k), fetch_k, lambda_mult)
        hits = await self.asearch(query, k=fetch_k, filter=filter, **options)
        return await asyncio.to_thread(self._mmr, hits, k, lambda_mult)

    def _mmr(self, hits: list[Hit], k: int, lambda_mult: float) -> list[Hit]:
        if len(hits) <= 1:
            return hits
        vectors = {r.id: r.vectors for r in self.store.get([h.id for h in hits])}
        relevance = [h.relevance if h.relevance is not None else 0.0 for h in hits]
        return [hits[i] for i in mmr_order(relevance, [vectors[h.id] for h in hits], k, lambda_mult)]

    async def asearch(
        self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any
    ) -> list[Hit]:
        """:meth:`search` with the query encoded in a worker thread and the store's own async search."""
        return (await self.asearch_batch([query], k=k, filter=filter, **options))[0]

    async def asearch_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 4,
        filter: Filter | FilterNode | None = None,
        **options: Any,
    ) -> list[list[Hit]]:
        k, node, typed = self._prepare(queries, k, filter, options)
        if not queries:
            return []
        await self._abind()
        encoded: list[FloatMatrix] = await asyncio.to_thread(self.encoder.encode_queries, list(queries))
        return _with_relevance(encoded, await self.store.asearch_batch(encoded, k=k, filter=node, options=typed))

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist the store (in-process stores only; database stores persist by themselves)."""
        save = getattr(self.store, "save", None)
        if save is None:
            msg = f"{type(self.store).__name__} persists by itself; save() is for in-process stores"
            raise InvalidInputError(msg)
        save(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], encoder: Encoder, *, chunker: Chunker | None = None
    ) -> LateInteractionIndex:
        """Open a store saved by :meth:`save`, checking it was written by ``encoder``."""
        return cls(encoder, load_store(path, encoder=encoder.identity), chunker=chunker)

    @classmethod
    def open(
        cls,
        source: str | os.PathLike[str] | MultiVectorStore,
        model: str | os.PathLike[str] | Encoder | None = None,
        *,
        chunk: bool = True,
        **encoder_kwargs: Any,
    ) -> LateInteractionIndex:
        """Reopen an index with the encoder that wrote it: ``source`` is a folder saved by :meth:`save` or a
        store that already holds vectors (a Postgres collection). Without ``model`` the encoder is rebuilt
        from what the index recorded (:func:`.encoders.encoder_from_identity`; ``encoder_kwargs`` such as
        ``device`` go to it); with ``model`` (an encoder, hub id or folder) that encoder is checked against
        the record and refused, naming the setting that differs, when it is another. Long items added later
        are chunked when ``chunk`` is true and the encoder can chunk."""
        from ragplug.retrievers.late_interaction.encoders import encoder_from_identity, encoder_of_kind

        if isinstance(source, str | os.PathLike):
            where = os.fspath(source)
            store = load_store(source)
        else:
            where, store = f"the {type(source).__name__}", source
        if isinstance(model, Encoder):
            encoder = model
        elif model is not None:  # of the kind the index records (a ColPali index takes a ColPali model)
            recorded = store.encoder.settings if store.encoder is not None else {}
            encoder = encoder_of_kind(str(recorded.get("encoder", "colbert")), os.fspath(model), **encoder_kwargs)
        else:
            encoder = encoder_from_identity(store.encoder, where, **encoder_kwargs)
        make_chunker = getattr(encoder, "chunker", None)
        return cls(encoder, store, chunker=make_chunker() if chunk and make_chunker is not None else None)

    @classmethod
    def from_byaldi(
        cls,
        path: str | os.PathLike[str],
        model: str | os.PathLike[str] | Encoder | None = None,
        **kwargs: Any,
    ) -> LateInteractionIndex:
        """Open a byaldi index folder without re-encoding (:func:`ragplug.retrievers.colpali.byaldi.open_byaldi_index`:
        pages with their documents as parents, byaldi's metadata and stored images, a ColPali encoder for
        queries and new pages)."""
        from ragplug.retrievers.colpali.byaldi import open_byaldi_index

        return open_byaldi_index(path, model, **kwargs)

    @classmethod
    def from_plaid(
        cls,
        path: str | os.PathLike[str],
        model: str | os.PathLike[str] | Encoder | None = None,
        *,
        collection: Any = None,
        chunker: Chunker | None = None,
        **encoder_kwargs: Any,
    ) -> LateInteractionIndex:
        """Open a colbert-ai / RAGatouille PLAID index folder (:mod:`.stores.plaid`) with a ColBERT encoder for
        its queries and new documents: ``model`` (an encoder, hub id or folder), else the checkpoint the
        index's metadata names, with the index's ``query_maxlen`` / ``doc_maxlen`` unless ``encoder_kwargs``
        (``device``, ``query_maxlen``...) say otherwise. ``collection``: the passages' texts (see
        :func:`.stores.plaid.read_plaid_index`)."""
        from ragplug.retrievers.late_interaction.stores.plaid import read_plaid_index

        store, info = read_plaid_index(path, collection=collection)
        if isinstance(model, Encoder):
            return cls(model, store, chunker=chunker)
        name = model if model is not None else info.checkpoint
        if name is None or (model is None and os.path.isabs(name) and not os.path.isdir(name)):
            msg = (
                f"{path} was built with the checkpoint {name!r}, which is not on this machine; "
                "pass model= (its folder or hub id)"
            )
            raise InvalidInputError(msg)
        from ragplug.retrievers.colbert import ColBERTEncoder

        lengths = {"query_maxlen": info.query_maxlen, "doc_maxlen": info.doc_maxlen}
        kwargs = {k: v for k, v in lengths.items() if v is not None} | encoder_kwargs
        return cls(ColBERTEncoder(os.fspath(name), **kwargs), store, chunker=chunker)


def _with_relevance(queries: Sequence[FloatMatrix], results: list[list[Hit]]) -> list[list[Hit]]:
    """Each hit with its :func:`~.base.relevance_of` score for its query."""
    return [
        [replace(hit, relevance=relevance_of(hit.score, len(query))) for hit in hits]
        for query, hits in zip(queries, results, strict=True)
    ]
