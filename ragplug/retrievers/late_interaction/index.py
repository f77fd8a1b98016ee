"""An encoder and a store tied together: add items, search with a query, delete by id, persist.

:class:`LateInteractionIndex` is what the framework plugins wrap. It is modality-free: the encoder
decides what an item is (a string for ColBERT, a page image for ColPali). An optional ``chunker`` splits
long items into chunks; chunks of one item share its id as ``parent_id`` (with ``chunk_index`` and
``start_index``, the character offset, in their metadata) and are stored as ``"<id>#<n>"``. An item that
fits in one chunk is stored under its own id with its metadata untouched. Deleting or upserting a parent
id acts on all of its chunks.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ragplug.errors import DuplicateIdError, InvalidInputError, UnknownIdError
from ragplug.retrievers.late_interaction.base import (
    SCORE_KEY,
    Encoder,
    Hit,
    MultiVectorStore,
    Record,
    check_ids,
    check_k,
    check_text,
)
from ragplug.retrievers.late_interaction.filters import Filter, compile_filter
from ragplug.retrievers.late_interaction.memory import InMemoryMultiVectorStore

__all__ = ["CHUNK_KEYS", "Chunk", "LateInteractionIndex"]

#: Metadata keys the index writes on chunks of a split item; user metadata may not use them.
CHUNK_KEYS = ("parent_id", "chunk_index", "start_index")
_RESERVED_KEYS = (*CHUNK_KEYS, SCORE_KEY)


@dataclass(frozen=True)
class Chunk:
    """One piece of a split item: what to encode, its text, and where it starts in the original."""

    item: Any
    text: str | None
    start: int = 0


Chunker = Callable[[Any], list[Chunk]]


class LateInteractionIndex:
    """Encoder + :class:`MultiVectorStore`, with chunk bookkeeping. Thread-safe as its store is."""

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
            store = InMemoryMultiVectorStore(encoder=identity)
        elif store.dim is not None and store.dim != identity.dim:
            msg = f"the store holds {store.dim}-dim vectors but the encoder {identity.name!r} makes {identity.dim}-dim"
            raise InvalidInputError(msg)
        if isinstance(store, InMemoryMultiVectorStore) and store.encoder is None:
            store.encoder = identity
        self.store = store
        self.chunker = chunker
        self._children: dict[str, list[str]] = {}
        self._write_lock = threading.RLock()  # chunk bookkeeping + store writes; encoding happens outside it
        for id_, metadata in store.metadata():
            if "parent_id" in metadata:
                self._note_child(id_, metadata)

    def _note_child(self, id_: str, metadata: dict[str, Any]) -> None:
        parent = metadata.get("parent_id")
        if isinstance(parent, str):
            self._children.setdefault(parent, []).append(id_)

    def __len__(self) -> int:
        """Number of stored records (chunks count one each)."""
        return len(self.store)

    # -- writes ---------------------------------------------------------------------------------------
    def add(
        self,
        items: Sequence[Any],
        *,
        ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        texts: Sequence[str | None] | None = None,
        upsert: bool = False,
        show_progress: bool = False,
    ) -> list[str]:
        """Encode and store ``items``; returns their ids (generated when not given).

        ``texts`` are the stored payloads (defaults to the items themselves when they are strings).
        With ``upsert=True`` existing ids (and all their chunks) are replaced; otherwise an existing id
        raises :class:`~ragplug.errors.DuplicateIdError` and nothing is stored.
        """
        items = list(items)
        if not items:
            msg = "nothing to add: the list of items is empty"
            raise InvalidInputError(msg)
        ids = check_ids(ids) if ids is not None else [uuid.uuid4().hex for _ in items]
        metadatas = list(metadatas) if metadatas is not None else [None] * len(items)
        if texts is None:
            texts = [item if isinstance(item, str) else None for item in items]
        texts = list(texts)
        for name, values in (("ids", ids), ("metadatas", metadatas), ("texts", texts)):
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
        if not upsert:
            self._refuse_existing(ids)  # before the (slow) encoding; checked again when storing
        metas = [dict(m or {}) for m in metadatas]
        for id_, meta in zip(ids, metas, strict=True):
            clash = [key for key in _RESERVED_KEYS if key in meta]
            if clash:
                msg = f"metadata of {id_!r} uses reserved keys {clash}; rename them"
                raise InvalidInputError(msg)

        pieces: list[tuple[str, Chunk, dict[str, Any]]] = []
        for id_, item, text, meta in zip(ids, items, texts, metas, strict=True):
            chunks = self.chunker(item) if self.chunker is not None else [Chunk(item, text)]
            if len(chunks) == 1:
                pieces.append((id_, Chunk(chunks[0].item, text), meta))
                continue
            for n, chunk in enumerate(chunks):
                chunk_meta = {**meta, "parent_id": id_, "chunk_index": n, "start_index": chunk.start}
                pieces.append((f"{id_}#{n}", chunk, chunk_meta))
        vectors = self.encoder.encode_documents([c.item for _, c, _ in pieces], show_progress=show_progress)
        records = [Record(rid, vec, meta, chunk.text) for (rid, chunk, meta), vec in zip(pieces, vectors, strict=True)]
        with self._write_lock:
            if upsert:  # old records (all chunks of a replaced item) go in the same step as the new arrive
                self._refuse_chunk_ids(ids)
                replaced = [i for i in ids if i in self._children or i in self.store]
                old = self._resolve(replaced) if replaced else []
                self._refuse_collisions(records, set(old))
                self.store.upsert(records, replacing=old)
                self._forget(old)
            else:
                self._refuse_existing(ids)
                self._refuse_collisions(records, set())
                self.store.add(records)
            for record in records:
                if "parent_id" in record.metadata:
                    self._note_child(record.id, record.metadata)
        return ids

    def _refuse_chunk_ids(self, ids: Sequence[str]) -> None:
        """An item id may not name the chunk of another item: upserting it would replace that chunk."""
        wanted = set(ids)
        owned = {chunk: parent for parent, chunks in self._children.items() for chunk in chunks if chunk in wanted}
        if owned:
            chunk, parent = next(iter(owned.items()))
            msg = f"id {chunk!r} is a chunk of item {parent!r}; upsert or delete {parent!r} instead"
            raise DuplicateIdError(msg)

    def _refuse_collisions(self, records: Sequence[Record], replaced: set[str]) -> None:
        """A new record may replace only what this upsert replaces: a chunk id (``"<id>#<n>"``) that is
        another item's id is a collision, never a silent overwrite."""
        clash = [r.id for r in records if r.id not in replaced and r.id in self.store]
        if clash:
            msg = (
                f"the chunks of this item would be stored as {clash[:5]}, which are ids of other stored items; "
                "choose another id for the item or delete those first"
            )
            raise DuplicateIdError(msg)

    def _refuse_existing(self, ids: Sequence[str]) -> None:
        """An id already stored, as a record or as the parent of chunks, is a duplicate."""
        taken = [i for i in ids if i in self._children or i in self.store]
        if taken:
            msg = f"ids already stored: {taken[:5]}{' ...' if len(taken) > 5 else ''}; use upsert=True to replace them"
            raise DuplicateIdError(msg)

    def _resolve(self, ids: Sequence[str]) -> list[str]:
        out: list[str] = []
        for id_ in ids:
            if id_ in self._children:
                out.extend(self._children[id_])
            elif id_ in self.store:
                out.append(id_)
            else:
                msg = f"unknown id: {id_!r}"
                raise UnknownIdError(msg)
        return out

    def _delete_resolved(self, record_ids: list[str]) -> None:
        self.store.delete(record_ids)
        self._forget(record_ids)

    def _forget(self, record_ids: list[str]) -> None:
        """Drop deleted chunk ids from the parent bookkeeping."""
        gone = set(record_ids)
        for parent in list(self._children):
            left = [c for c in self._children[parent] if c not in gone]
            if left:
                self._children[parent] = left
            else:
                del self._children[parent]

    def delete(self, ids: Sequence[str]) -> None:
        """Delete items (with all their chunks) or single chunks by id; unknown ids raise and delete nothing."""
        ids = check_ids(ids)
        with self._write_lock:
            self._delete_resolved(self._resolve(ids))

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Stored records for ids; a parent id expands to its chunks."""
        ids = check_ids(ids)
        with self._write_lock:
            return self.store.get(self._resolve(ids))

    # -- search ---------------------------------------------------------------------------------------
    def search(self, query: str, *, k: int = 4, filter: Filter | None = None, **options: Any) -> list[Hit]:
        """The ``k`` best records for ``query``; ``options`` go to the store's ``search``."""
        return self.search_batch([query], k=k, filter=filter, **options)[0]

    def search_batch(
        self,
        queries: Sequence[str],
        *,
        k: int = 4,
        filter: Filter | None = None,
        **options: Any,
    ) -> list[list[Hit]]:
        """One result list per query; queries are encoded in one batch."""
        check_k(k)
        compile_filter(filter)
        if isinstance(queries, str):
            msg = "search_batch takes a list of queries; use search for one"
            raise InvalidInputError(msg)
        for query in queries:
            if not isinstance(query, str) or not check_text(query, "a query").strip():
                msg = f"a query must be a non-empty string, got {query!r}"
                raise InvalidInputError(msg)
        self._check_options(options)
        if not queries:
            return []
        encoded = self.encoder.encode_queries(list(queries))
        return [self.store.search(q, k=k, filter=filter, **options) for q in encoded]

    def _check_options(self, options: dict[str, Any]) -> None:
        """Search options must be ones the store's ``search`` takes (an unknown one is an error, not a
        ``TypeError`` from deep inside the store)."""
        if not options:
            return
        try:
            parameters = inspect.signature(self.store.search).parameters
        except (TypeError, ValueError):  # pragma: no cover - a store whose signature cannot be read
            return
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        unknown = sorted(set(options) - {n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY})
        if unknown:
            known = sorted(n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY and n not in ("k", "filter"))
            msg = f"unknown search options {unknown} for {type(self.store).__name__}; it takes {known}"
            raise InvalidInputError(msg)

    async def asearch(self, query: str, *, k: int = 4, filter: Filter | None = None, **options: Any) -> list[Hit]:
        """:meth:`search` in a worker thread, so the event loop is never blocked."""
        return await asyncio.to_thread(self.search, query, k=k, filter=filter, **options)

    async def aadd(self, items: Sequence[Any], **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.add, items, **kwargs)

    async def adelete(self, ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete, ids)

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Persist the store (in-memory stores only; database stores persist by themselves)."""
        save = getattr(self.store, "save", None)
        if save is None:
            msg = f"{type(self.store).__name__} persists by itself; save() is for the in-memory store"
            raise InvalidInputError(msg)
        save(path)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], encoder: Encoder, *, chunker: Chunker | None = None
    ) -> LateInteractionIndex:
        """Load an in-memory store saved by :meth:`save`, checking it was written by ``encoder``."""
        store = InMemoryMultiVectorStore.load(path, encoder=encoder.identity)
        return cls(encoder, store, chunker=chunker)
