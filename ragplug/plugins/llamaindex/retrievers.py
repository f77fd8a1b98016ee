"""LlamaIndex retriever and reranker over ragplug's engines (late interaction, Graph RAG).

Thin glue only: hits become ``NodeWithScore(TextNode)`` whose ``score`` is the hit's relevance in [0, 1]
(MaxSim divided by the query's length, :func:`~ragplug.retrievers.late_interaction.base.relevance_of`, so
a ``SimilarityPostprocessor(similarity_cutoff=...)`` means the same for every query), with the raw MaxSim in
``metadata["ragplug_score"]``; LlamaIndex ``MetadataFilters`` are translated
into ragplug's filter language (``==, !=, >, >=, <, <=, in, nin`` with ``and`` / ``or``; other
operators raise :class:`~ragplug.errors.FilterError`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.callbacks import CallbackManager
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import (
    BaseNode,
    ImageNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from ragplug.errors import FilterError, InvalidInputError
from ragplug.retrievers.build import add_pages, build_index, make_encoder, open_index, page_retriever
from ragplug.retrievers.colbert.encoder import DEFAULT_MODEL
from ragplug.retrievers.colpali.pages import IMAGE_KEY, page_image_base64
from ragplug.retrievers.late_interaction import Encoder, Hit, LateInteractionIndex, MultiVectorStore, rerank
from ragplug.retrievers.late_interaction.base import SCORE_KEY
from ragplug.retrievers.late_interaction.filters import Filter
from ragplug.retrievers.protocol import Retriever, WritableRetriever, display_text
from ragplug.retrievers.search import arun_search, resolve_search, run_search

__all__ = ["ColBERTRerank", "ColBERTRetriever", "RagplugRetriever", "to_ragplug_filter"]

_OPERATORS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
}


def to_ragplug_filter(filters: MetadataFilters | Filter | None) -> Filter | None:
    """Translate LlamaIndex ``MetadataFilters`` (nested too) into a ragplug filter dict; dicts pass through."""
    if filters is None or isinstance(filters, dict):
        return filters
    if not isinstance(filters, MetadataFilters):
        msg = f"filters must be MetadataFilters or a ragplug filter dict, got {type(filters).__name__}"
        raise FilterError(msg)
    parts: list[dict[str, Any]] = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            sub = to_ragplug_filter(item)
            if sub:
                parts.append(dict(sub))
            continue
        assert isinstance(item, MetadataFilter)
        op = _OPERATORS.get(FilterOperator(item.operator))
        if op is None:
            msg = f"filter operator {item.operator!r} on {item.key!r} is not supported; use one of {sorted(_OPERATORS)}"
            raise FilterError(msg)
        parts.append({item.key: {op: item.value}})
    if not parts:
        return None
    condition = filters.condition or FilterCondition.AND
    if condition not in (FilterCondition.AND, FilterCondition.OR):
        msg = f"filter condition {condition!r} is not supported; use and / or"
        raise FilterError(msg)
    return parts[0] if len(parts) == 1 else {f"${condition.value}": parts}


def _to_node(hit: Hit, include_images: bool = False) -> NodeWithScore:
    """A ``TextNode``, or for a page (a hit whose metadata has an ``image`` reference) an ``ImageNode`` whose
    text is the page's text and whose image (base64 PNG) is filled when ``include_images``."""
    common: dict[str, Any] = {
        "id_": hit.id,
        "text": display_text(hit),
        "metadata": {**hit.metadata, SCORE_KEY: hit.score},
        "excluded_llm_metadata_keys": [SCORE_KEY, IMAGE_KEY],  # a score, an image: not text for the LLM
        "excluded_embed_metadata_keys": [SCORE_KEY, IMAGE_KEY],
    }
    node: TextNode
    if "page" in hit.metadata and ("image" in hit.metadata or IMAGE_KEY in hit.metadata):
        image = page_image_base64(hit.metadata) if include_images else None
        node = ImageNode(**common, image=image, image_mimetype="image/png")
    else:
        node = TextNode(**common)
    if hit.parent_id is not None:
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=hit.parent_id)
    return NodeWithScore(node=node, score=hit.relevance)


class RagplugRetriever(BaseRetriever):
    """Any ragplug engine as a LlamaIndex retriever: one class for ColBERT over text, ColPali over pages and
    Graph RAG (a :class:`~ragplug.retrievers.graph.GraphIndex`; ``search_kwargs={"mode": "hybrid"}``).
    ``ColBERTRetriever`` is the same class under the name most users look for.

    Args:
        index: the engine, a :class:`~ragplug.retrievers.protocol.Retriever` (see :meth:`from_texts` /
            :meth:`from_documents` to build a ColBERT one).
        similarity_top_k: how many nodes to return.
        filters: ``MetadataFilters`` or a ragplug filter dict applied to every query.
        vector_store_query_mode: ``"default"`` (similarity) or ``"mmr"`` (diverse results), LlamaIndex's name.
        search_kwargs: ``score_threshold`` (keep nodes whose score, a relevance in [0, 1], reaches it),
            ``fetch_k`` / ``lambda_mult`` for MMR, and the store's search options (``{"mode": "approximate"}``);
            unknown keys are refused here, at construction.
        include_images: page hits (ColPali) become ``ImageNode``s in any case; with this, their ``image``
            holds the page as base64 PNG (re-rendered from the page's ``image`` reference).
    """

    def __init__(
        self,
        index: Retriever,
        *,
        similarity_top_k: int = 4,
        filters: MetadataFilters | Filter | None = None,
        vector_store_query_mode: str = "default",
        search_kwargs: dict[str, Any] | None = None,
        include_images: bool = False,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(index, Retriever):
            msg = f"index must be a ragplug Retriever (e.g. a LateInteractionIndex), got {type(index).__name__}"
            raise InvalidInputError(msg)
        modes = {"default": "similarity", "mmr": "mmr"}
        if vector_store_query_mode not in modes:
            msg = f"vector_store_query_mode must be one of {sorted(modes)}, got {vector_store_query_mode!r}"
            raise InvalidInputError(msg)
        search_kwargs = dict(search_kwargs or {})
        for key in ("k", "filter"):
            if key in search_kwargs:
                msg = f"give {key!r} as {'similarity_top_k' if key == 'k' else 'filters'}=, not in search_kwargs"
                raise InvalidInputError(msg)
        self.index = index
        self.similarity_top_k = similarity_top_k
        self.filters = to_ragplug_filter(filters)
        self.search_kwargs = search_kwargs
        self.include_images = include_images
        self._request = resolve_search(
            index, modes[vector_store_query_mode], {"k": similarity_top_k, "filter": self.filters}, search_kwargs
        )
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        ids: Sequence[str] | None = None,
        model: str | Path | Encoder = DEFAULT_MODEL,
        store: MultiVectorStore | None = None,
        *,
        chunk: bool = True,
        encoder_kwargs: dict[str, Any] | None = None,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> RagplugRetriever:
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
        return cls(index, **kwargs)

    @classmethod
    def from_documents(cls, documents: Sequence[BaseNode], **kwargs: Any) -> RagplugRetriever:
        """Build from LlamaIndex ``Document``s or nodes; their ``id_`` and metadata are kept."""
        texts, metadatas, ids = _unpack(documents)
        return cls.from_texts(texts, metadatas=metadatas, ids=ids, **kwargs)

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
        return cls(engine, **kwargs)

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
        return cls(open_index(source, model, encoder_kwargs), **kwargs)

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
        save = getattr(self.index, "save", None)
        if save is None:
            msg = f"{type(self.index).__name__} cannot be saved to a folder"
            raise InvalidInputError(msg)
        save(path)

    def insert(self, documents: Sequence[BaseNode], *, upsert: bool = False) -> list[str]:
        """Add documents or nodes (``upsert=True`` replaces existing ids); returns their ids."""
        texts, metadatas, ids = _unpack(documents)
        return self._writable().add(texts, ids=ids, metadatas=metadatas, upsert=upsert)

    async def ainsert(self, documents: Sequence[BaseNode], *, upsert: bool = False) -> list[str]:
        return await asyncio.to_thread(self.insert, documents, upsert=upsert)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete by id (a document id removes all its chunks)."""
        self._writable().delete(ids)

    async def adelete(self, ids: Sequence[str]) -> None:
        await self._writable().adelete(ids)

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
            msg = f"{type(self.index).__name__} is read-only: it cannot insert or delete nodes"
            raise InvalidInputError(msg)
        return self.index

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = run_search(self.index, query_bundle.query_str, self._request)
        return [_to_node(h, self.include_images) for h in hits]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        hits = await arun_search(self.index, query_bundle.query_str, self._request)
        return [_to_node(h, self.include_images) for h in hits]


#: The name most users look for: the same class.
ColBERTRetriever = RagplugRetriever


def _unpack(documents: Sequence[BaseNode]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    documents = list(documents)
    if not documents:
        msg = "no documents given"
        raise InvalidInputError(msg)
    texts = [d.get_content(metadata_mode=MetadataMode.NONE) for d in documents]
    return texts, [dict(d.metadata) for d in documents], [d.node_id for d in documents]


class ColBERTRerank(BaseNodePostprocessor):
    """Re-order retrieved nodes by ColBERT MaxSim against the query; keeps the ``top_n`` best."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    encoder: Any = Field(description="a ragplug Encoder (e.g. ColBERTEncoder)")
    top_n: int = Field(default=3, description="nodes kept")

    @classmethod
    def from_model(cls, model: str | Path = DEFAULT_MODEL, *, top_n: int = 3, **encoder_kwargs: Any) -> ColBERTRerank:
        return cls(encoder=make_encoder(model, encoder_kwargs), top_n=top_n)

    @classmethod
    def class_name(cls) -> str:
        return "ColBERTRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            msg = "ColBERTRerank needs the query (query_bundle)"
            raise InvalidInputError(msg)
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]
        ranked = rerank(self.encoder, query_bundle.query_str, texts, self.top_n)
        return [NodeWithScore(node=nodes[r.position].node, score=r.relevance) for r in ranked]
