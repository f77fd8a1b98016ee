"""LangChain retriever and reranker over ragplug's engines.

Thin glue only. :class:`RagplugRetriever` is one retriever class for every engine: it wraps any
:class:`~ragplug.retrievers.protocol.Retriever` (ColBERT over text, ColPali over pages: a
:class:`~ragplug.retrievers.late_interaction.LateInteractionIndex`; Graph RAG: a
:class:`~ragplug.retrievers.graph.GraphIndex`, whose hits carry their evidence in metadata), and its
builders make the common ones. ``ColBERTRetriever`` is the same class under the name most users look for.
It converts hits into ``Document`` objects: ``id``, the text as ``page_content`` (for a page without a
text layer, a line naming the page, never an empty string), metadata, the raw MaxSim score in
``metadata["ragplug_score"]`` and the relevance in [0, 1] (MaxSim divided by the query's length, see
:func:`~ragplug.retrievers.late_interaction.base.relevance_of`) in ``metadata["relevance_score"]`` — keys
reserved so that they never overwrite a field of the user's own. The reranker writes the same two keys, so
a reranked document carries one score, the reranker's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
    Callbacks,
)
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.tools import BaseTool, ToolException, create_retriever_tool
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from ragplug.errors import InvalidInputError, RagplugError
from ragplug.retrievers.build import add_pages, build_index, make_encoder, open_index, page_retriever
from ragplug.retrievers.colbert.encoder import DEFAULT_MODEL
from ragplug.retrievers.colpali.pages import IMAGE_KEY, page_image_base64
from ragplug.retrievers.late_interaction import Encoder, Hit, LateInteractionIndex, MultiVectorStore, rerank
from ragplug.retrievers.late_interaction.base import RELEVANCE_KEY, SCORE_KEY
from ragplug.retrievers.late_interaction.filters import Filter
from ragplug.retrievers.protocol import Retriever, WritableRetriever, display_text
from ragplug.retrievers.search import SearchRequest, SearchType, arun_search, resolve_search, run_search

__all__ = ["ColBERTReranker", "ColBERTRetriever", "RagplugRetriever"]


def _to_document(hit: Hit, include_images: bool = False) -> Document:
    scores = {SCORE_KEY: hit.score, RELEVANCE_KEY: hit.relevance}
    metadata = {**hit.metadata, **scores}
    if include_images and "image" in hit.metadata:
        image = page_image_base64(hit.metadata)
        if image is not None:
            metadata[IMAGE_KEY] = image
    return Document(page_content=display_text(hit), id=hit.id, metadata=metadata)


class RagplugRetriever(BaseRetriever):
    """Any ragplug engine as a LangChain retriever (``index``: a :class:`~ragplug.retrievers.protocol.Retriever`,
    e.g. a ColBERT or ColPali :class:`~ragplug.retrievers.late_interaction.LateInteractionIndex`).

    Settings come in three layers, a later one winning key by key: the retriever's ``k`` / ``filter``
    fields (defaults 4 and none), then ``search_kwargs`` (as ``vectorstore.as_retriever(search_kwargs=...)``
    takes them), then keywords of one call (``invoke(query, k=2, filter=...)``). Giving ``k`` (or
    ``filter``) both as a field and in ``search_kwargs`` is refused as ambiguous.

    ``search_type``: ``"similarity"`` (default), ``"mmr"`` (diverse results: ``fetch_k`` candidates,
    ``lambda_mult`` from 0 = most diverse to 1 = most relevant) or ``"similarity_score_threshold"`` (needs
    ``score_threshold``). ``score_threshold`` (any type) keeps hits whose relevance in [0, 1] reaches it.
    Other keys are the store's search options (``mode``, ``n_probe``...); unknown ones are refused here,
    at construction.

    ``include_images=True``: documents of pages (ColPali) also carry the page image as base64 PNG in
    ``metadata["image_base64"]`` (re-rendered from the page's ``image`` reference; see
    :func:`~ragplug.plugins.langchain.multimodal.page_images_message` to hand them to a chat model).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    index: Any  # a Retriever (checked in __init__)
    k: int | None = None
    filter: dict[str, Any] | None = None
    search_type: SearchType = "similarity"
    search_kwargs: dict[str, Any] = Field(default_factory=dict)
    include_images: bool = False
    _defaults: SearchRequest = PrivateAttr()

    def __init__(self, **kwargs: Any) -> None:
        search_kwargs = kwargs.get("search_kwargs") or {}
        for key in ("k", "filter"):
            if kwargs.get(key) is not None and search_kwargs.get(key) is not None:
                msg = f"{key} is given both as {key}= and in search_kwargs; give it once"
                raise InvalidInputError(msg)
        index = kwargs.get("index")
        if not isinstance(index, Retriever):
            msg = f"index must be a ragplug Retriever (e.g. a LateInteractionIndex), got {type(index).__name__}"
            raise InvalidInputError(msg)
        # Checked before pydantic runs, so bad values raise ragplug errors rather than a ValidationError.
        defaults = resolve_search(
            index,
            kwargs.get("search_type", "similarity"),
            {"k": kwargs.get("k"), "filter": kwargs.get("filter")},
            search_kwargs,
        )
        super().__init__(**kwargs)
        self._defaults = defaults

    def _request(self, k: int | None, filter: Filter | None, kwargs: dict[str, Any]) -> SearchRequest:
        if k is None and filter is None and not kwargs:
            return self._defaults
        return resolve_search(
            self.index,
            self.search_type,
            {"k": self.k, "filter": self.filter},
            self.search_kwargs,
            {**kwargs, "k": k, "filter": filter},
        )

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        model: str | Path | Encoder = DEFAULT_MODEL,
        store: MultiVectorStore | None = None,
        k: int | None = None,
        *,
        chunk: bool = True,
        encoder_kwargs: dict[str, Any] | None = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> RagplugRetriever:
        """Encode ``texts`` with ``model`` (hub id, folder or :class:`Encoder`) into ``store`` (default: in memory).

        Long texts are split into overlapping token windows when ``chunk`` is true; their chunks carry
        ``parent_id``, ``chunk_index`` and ``start_index`` in their metadata.
        """
        index = build_index(
            texts,
            metadatas=metadatas,
            ids=ids,
            model=model,
            store=store,
            chunk=chunk,
            encoder_kwargs=encoder_kwargs,
            show_progress=show_progress,
        )
        return cls(index=index, k=k, **kwargs)

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> RagplugRetriever:
        """Like :meth:`from_texts`; ids come from ``ids`` or else from each ``Document.id`` when all have one."""
        texts, metadatas, doc_ids = _unpack(documents, ids)
        return cls.from_texts(texts, metadatas=metadatas, ids=doc_ids, **kwargs)

    @classmethod
    def from_pages(
        cls,
        sources: Sequence[Any],
        model: str | Path | Encoder | None = None,
        store: MultiVectorStore | None = None,
        *,
        text_model: str | Path | Encoder | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        show_progress: bool | None = None,
        **kwargs: Any,
    ) -> RagplugRetriever:
        """Page retrieval (ColPali): render and encode the pages of ``sources`` (PDFs, images, folders, PIL
        images) with ``model`` (a ColPali-family hub id or folder, default ``vidore/colqwen2-v1.0``, or an
        encoder) into ``store`` (default: in memory). With ``text_model`` (a ColBERT checkpoint or encoder),
        hybrid: a text index of the pages' extracted text is fused with the image ranking by reciprocal rank
        fusion (:class:`~ragplug.retrievers.fusion.FusionRetriever`; read-only)."""
        engine = page_retriever(
            sources,
            model=model,
            store=store,
            text_model=text_model,
            encoder_kwargs=encoder_kwargs,
            show_progress=show_progress,
        )
        return cls(index=engine, **kwargs)

    @classmethod
    def from_index(
        cls,
        source: str | Path | MultiVectorStore,
        model: str | Path | Encoder | None = None,
        *,
        encoder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RagplugRetriever:
        """Reopen an index: a folder saved with :meth:`save`, or a store that already holds one (a Postgres
        collection written by another process). The encoder is the one the index records, rebuilt from its
        manifest (``encoder_kwargs`` such as ``device`` go to it); an explicit ``model`` is checked against
        the record and refused, naming what differs, when it is another encoder."""
        return cls(index=open_index(source, model, encoder_kwargs), **kwargs)

    @classmethod
    def from_store(
        cls,
        store: MultiVectorStore,
        model: str | Path | Encoder | None = None,
        *,
        encoder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RagplugRetriever:
        """:meth:`from_index` over a store."""
        return cls.from_index(store, model, encoder_kwargs=encoder_kwargs, **kwargs)

    @classmethod
    def load(
        cls,
        path: str | Path,
        model: str | Path | Encoder | None = None,
        *,
        encoder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> RagplugRetriever:
        """:meth:`from_index` over a saved folder."""
        return cls.from_index(path, model, encoder_kwargs=encoder_kwargs, **kwargs)

    def save(self, path: str | Path) -> None:
        """Persist the in-memory index to the folder ``path`` (atomically)."""
        save = getattr(self.index, "save", None)
        if save is None:
            msg = f"{type(self.index).__name__} cannot be saved to a folder"
            raise InvalidInputError(msg)
        save(path)

    # -- writes ---------------------------------------------------------------------------------------
    def add_documents(
        self, documents: Sequence[Document], ids: Sequence[str] | None = None, **kwargs: Any
    ) -> list[str]:
        """Add documents (``upsert=True`` replaces existing ids); returns their ids."""
        texts, metadatas, doc_ids = _unpack(documents, ids)
        return self._writable().add(texts, ids=doc_ids, metadatas=metadatas, **kwargs)

    async def aadd_documents(
        self, documents: Sequence[Document], ids: Sequence[str] | None = None, **kwargs: Any
    ) -> list[str]:
        return await asyncio.to_thread(self.add_documents, documents, ids, **kwargs)

    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        return self._writable().add(list(texts), ids=ids, metadatas=metadatas, **kwargs)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete documents (all their chunks) or single chunks by id."""
        self._writable().delete(ids)

    async def adelete(self, ids: Sequence[str]) -> None:
        await self._writable().adelete(ids)

    def get_by_ids(self, ids: Sequence[str]) -> list[Document]:
        """Stored documents by id (a parent id returns its chunks)."""
        return [
            Document(page_content=display_text(r), id=r.id, metadata=dict(r.metadata))
            for r in self._writable().get(ids)
        ]

    def add_pages(
        self, sources: Sequence[Any], *, upsert: bool = False, show_progress: bool | None = None
    ) -> list[str]:
        """Add the pages of more PDFs, images or folders to a page index (see :meth:`from_pages`); a PDF is
        one document: ``upsert=True`` replaces its stored pages, and deleting its path deletes them."""
        index = self._writable()
        if not isinstance(index, LateInteractionIndex):
            msg = f"pages are added to a LateInteractionIndex, not to a {type(index).__name__}"
            raise InvalidInputError(msg)
        return add_pages(index, sources, upsert=upsert, show_progress=show_progress)

    def _writable(self) -> WritableRetriever:
        if not isinstance(self.index, WritableRetriever):
            msg = f"{type(self.index).__name__} is read-only: it cannot add, get or delete documents"
            raise InvalidInputError(msg)
        return self.index

    # -- retrieval ------------------------------------------------------------------------------------
    def _get_relevant_documents(
        self,
        query: str,
        *,
        run_manager: CallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = run_search(self.index, query, self._request(k, filter, kwargs))
        return [_to_document(h, self.include_images) for h in hits]

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
        filter: Filter | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        hits = await arun_search(self.index, query, self._request(k, filter, kwargs))
        return [_to_document(h, self.include_images) for h in hits]

    def as_tool(
        self,
        args_schema: type[BaseModel] | None = None,
        *,
        name: str | None = None,
        description: str | None = None,
        arg_types: dict[str, type] | None = None,
    ) -> BaseTool:
        """A tool for agents: takes ``query``, returns the passages as text (and the ``Document``s as artifact).

        The query must contain a non-space character (stated in the tool's schema, so grammar-constrained
        callers respect it), and bad input comes back to the agent as the tool's error message instead of
        ending the run.
        """
        if args_schema is not None or arg_types is not None:
            return super().as_tool(args_schema, name=name, description=description, arg_types=arg_types)
        tool = create_retriever_tool(
            self,
            name or "search_documents",
            description or "Search the indexed documents and return the passages most relevant to the query.",
            response_format="content_and_artifact",
        )
        tool.args_schema = _QueryInput
        tool.func = _reporting(tool.func)
        tool.coroutine = _areporting(tool.coroutine)
        tool.handle_tool_error = True
        return tool


#: The name most users look for: the same class.
ColBERTRetriever = RagplugRetriever


class _QueryInput(BaseModel):
    query: str = Field(description="what to search for", pattern=r"[\s\S]*\S[\s\S]*")


def _reporting(func: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RagplugError as err:
            raise ToolException(str(err)) from err

    return run


def _areporting(coroutine: Any) -> Any:
    async def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return await coroutine(*args, **kwargs)
        except RagplugError as err:
            raise ToolException(str(err)) from err

    return run


def _unpack(
    documents: Sequence[Document], ids: Sequence[str] | None
) -> tuple[list[str], list[dict[str, Any]], list[str] | None]:
    documents = list(documents)
    if not documents:
        msg = "no documents given"
        raise InvalidInputError(msg)
    texts = [d.page_content for d in documents]
    metadatas = [dict(d.metadata) for d in documents]
    if ids is None and all(d.id for d in documents):
        ids = [str(d.id) for d in documents]
    return texts, metadatas, (list(ids) if ids is not None else None)


class ColBERTReranker(BaseDocumentCompressor):
    """Re-order documents from any retriever by ColBERT MaxSim against the query; keeps the ``top_n`` best.

    Each returned document gets the rerank's scores: ``metadata["relevance_score"]`` (in [0, 1]) and
    ``metadata["ragplug_score"]`` (raw MaxSim), replacing any a retriever set, so one score describes it.
    Use it in a ``ContextualCompressionRetriever`` or directly.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    encoder: Encoder
    top_n: int | None = 3

    @classmethod
    def from_model(
        cls, model: str | Path = DEFAULT_MODEL, *, top_n: int | None = 3, **encoder_kwargs: Any
    ) -> ColBERTReranker:
        return cls(encoder=make_encoder(model, encoder_kwargs), top_n=top_n)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        ranked = rerank(self.encoder, query, [d.page_content for d in documents], self.top_n)
        out = []
        for r in ranked:
            doc = documents[r.position]
            scores = {SCORE_KEY: r.score, RELEVANCE_KEY: r.relevance}  # replace the retriever's scores, if any
            out.append(Document(page_content=doc.page_content, id=doc.id, metadata={**doc.metadata, **scores}))
        return out

    async def acompress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        return await asyncio.to_thread(self.compress_documents, documents, query, callbacks)
