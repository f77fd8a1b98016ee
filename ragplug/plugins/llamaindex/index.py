"""``ColBERTIndex``: a LlamaIndex index (a ``BaseIndex``) whose vectors live in ragplug's late-interaction engine.

It behaves like ``VectorStoreIndex`` where LlamaIndex users look: ``from_documents(docs, show_progress=True)``,
``as_retriever`` / ``as_query_engine`` / ``as_chat_engine``, ``insert``, ``delete_ref_doc``,
``refresh_ref_docs``, ``storage_context.persist(persist_dir)`` and ``load_index_from_storage``.

How it is put together:

- **Nodes.** Documents go through LlamaIndex transformations as in ``VectorStoreIndex.from_documents``. The
  default transformation is :class:`TokenWindowSplitter`: ragplug's token-window chunker as a LlamaIndex node
  parser, windows counted in the encoder's own tokens and just shorter than its document window (``doc_maxlen``),
  so every node is encoded whole. (LlamaIndex's default ``SentenceSplitter`` makes 1024-token chunks, which a
  ColBERT encoder would truncate to its window, and it shrinks chunks by the metadata's length although ragplug
  does not encode metadata.) Pass ``transformations=`` to use others; a node longer than the window is then
  truncated by the encoder, with a warning. Text is split once: the engine's own chunker is off, so each node
  is one ragplug record and **node ids are the ragplug ids**.
- **Storage.** Nodes are kept in the docstore (with their relationships, as ``VectorStoreIndex`` keeps them
  when its vector store holds no text), so ``ref_doc_info``, ``delete_ref_doc`` and ``refresh_ref_docs`` work;
  the index struct is an ``IndexDict`` of its own type, registered with LlamaIndex so that
  ``load_index_from_storage`` returns a ``ColBERTIndex`` (import ``ragplug.plugins.llamaindex.ColBERTIndex``
  before loading; the error otherwise names that type).
- **Persistence.** The storage context's default vector store is a small adapter over the engine; LlamaIndex's
  ``StorageContext.persist`` calls its ``persist``, which saves an in-process store (the memory default) to
  ``<persist_dir>/ragplug/`` and writes ``default__vector_store.json`` saying where the vectors are (the
  folder's absolute path and the path as given, with a digest of the record ids that a reload checks). A
  database store (``PgVectorStore``) persists by itself: only LlamaIndex's docstore and index store are written,
  and the load reconnects through ``store=``::

      index.storage_context.persist("storage")
      index = load_index_from_storage(
          StorageContext.from_defaults(persist_dir="storage"),
          store=PgVectorStore(dsn, collection="docs"),  # only for a database store
      )

  The encoder is rebuilt from what the saved index records (its manifest); an explicit ``model=`` is checked
  against it and refused, naming the setting that differs, when it is another encoder. When the persisted
  folder has moved since, pass ``persist_dir=`` too (or use :meth:`ColBERTIndex.from_index` on the folder).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.callbacks import CallbackManager
from llama_index.core.constants import DEFAULT_SIMILARITY_TOP_K
from llama_index.core.data_structs.data_structs import IndexDict
from llama_index.core.data_structs.registry import INDEX_STRUCT_TYPE_TO_INDEX_STRUCT_CLASS
from llama_index.core.data_structs.struct_type import IndexStructType
from llama_index.core.indices.base import BaseIndex
from llama_index.core.indices.registry import INDEX_STRUCT_TYPE_TO_INDEX_CLASS
from llama_index.core.ingestion import run_transformations
from llama_index.core.node_parser import TextSplitter
from llama_index.core.schema import BaseNode, Document, MetadataMode, NodeWithScore, QueryBundle, TextNode
from llama_index.core.settings import Settings
from llama_index.core.storage.docstore.types import BaseDocumentStore, RefDocInfo
from llama_index.core.storage.storage_context import StorageContext
from llama_index.core.vector_stores.simple import DEFAULT_VECTOR_STORE, SimpleVectorStore
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    VectorStoreQuery,
    VectorStoreQueryResult,
)

from ragplug.errors import InvalidInputError
from ragplug.plugins.llamaindex.retrievers import ColBERTRetriever, to_ragplug_filter
from ragplug.retrievers.build import make_encoder
from ragplug.retrievers.colbert.encoder import DEFAULT_MODEL
from ragplug.retrievers.late_interaction import Encoder, LateInteractionIndex, MultiVectorStore

__all__ = ["ColBERTIndex", "ColBERTIndexDict", "TokenWindowSplitter"]

logger = logging.getLogger(__name__)

#: The index struct type a persisted ``ColBERTIndex`` is recorded under (and found by in LlamaIndex's registries).
STRUCT_TYPE = "ragplug.plugins.llamaindex.ColBERTIndex"
#: The folder, inside a persist_dir, that an in-process store is saved to.
VECTORS_FOLDER = "ragplug"
_MARKER_KEY = "ragplug"
_MARKER_FORMAT = "ragplug.llamaindex.vectors"
#: Tokens a default window leaves free: a window cut inside a word can take a token more when re-tokenized
#: (about 2% of windows on English prose), which the encoder would then truncate.
_MARGIN = 4
_RETRIEVER_KEYWORDS = frozenset(inspect.signature(ColBERTRetriever.__init__).parameters) - {"self", "index"}


class TokenWindowSplitter(TextSplitter):
    """A LlamaIndex node parser cutting text into overlapping windows of an encoder's own tokens (ragplug's
    token-window chunker): by default a few tokens fewer than the encoder's document window holds, so no node is
    truncated when encoded. Build it with :meth:`from_encoder`."""

    chunk_tokens: int = Field(description="tokens per window (the encoder's tokenizer)")
    overlap: int = Field(description="tokens shared by consecutive windows")
    encoder_name: str = Field(default="", description="the encoder whose tokenizer counts the tokens")
    _chunker: Any = PrivateAttr(default=None)

    @classmethod
    def from_encoder(
        cls, encoder: Encoder, chunk_tokens: int | None = None, overlap: int = 32, **kwargs: Any
    ) -> TokenWindowSplitter:
        """Windows of ``chunk_tokens`` (default: the encoder's document window less a margin of 4) overlapping
        by ``overlap``; ``kwargs`` are node parser settings (``include_metadata``, ``include_prev_next_rel``,
        ``id_func``)."""
        make_chunker = getattr(encoder, "chunker", None)
        if make_chunker is None:
            msg = f"{type(encoder).__name__} cannot split text (it has no chunker()); pass transformations="
            raise InvalidInputError(msg)
        full = getattr(make_chunker(), "size", None)
        if chunk_tokens is None and isinstance(full, int) and full - _MARGIN > overlap:
            chunk_tokens = full - _MARGIN
        chunker = make_chunker(chunk_tokens, overlap)
        splitter = cls(
            chunk_tokens=int(getattr(chunker, "size", chunk_tokens or 0)),
            overlap=int(getattr(chunker, "overlap", overlap)),
            encoder_name=encoder.identity.name,
            **kwargs,
        )
        splitter._chunker = chunker
        return splitter

    @classmethod
    def class_name(cls) -> str:
        return "RagplugTokenWindowSplitter"

    def split_text(self, text: str) -> list[str]:
        if self._chunker is None:
            msg = "TokenWindowSplitter has no tokenizer; build it with TokenWindowSplitter.from_encoder(encoder)"
            raise InvalidInputError(msg)
        if not text.strip():
            return []
        return [chunk.text for chunk in self._chunker(text)]


@dataclass
class ColBERTIndexDict(IndexDict):
    """``IndexDict`` (node id -> node id) recorded under its own type, so a reload builds a ``ColBERTIndex``."""

    @classmethod
    def get_type(cls) -> IndexStructType:
        return cast(IndexStructType, STRUCT_TYPE)  # a plain string key: IndexStructType is a closed enum


class _EngineVectorStore(BasePydanticVectorStore):
    """The storage context's vector store of a :class:`ColBERTIndex`: the ragplug engine as a LlamaIndex vector
    store, there so that ``StorageContext.persist`` saves the vectors with everything else (see the module
    docstring). Queries are text (``is_embedding_query=False``); it is not meant for ``VectorStoreIndex``, which
    would embed nodes with another model first."""

    stores_text: bool = True
    is_embedding_query: bool = False
    _engine: LateInteractionIndex = PrivateAttr()
    _docstore: BaseDocumentStore | None = PrivateAttr(default=None)

    def __init__(self, engine: LateInteractionIndex, docstore: BaseDocumentStore | None = None) -> None:
        super().__init__(stores_text=True, is_embedding_query=False)
        self._engine = engine
        self._docstore = docstore

    @classmethod
    def class_name(cls) -> str:
        return "RagplugLateInteractionVectorStore"

    @property
    def client(self) -> LateInteractionIndex:
        return self._engine

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Encode and store nodes under their ids (replacing those stored); returns the ids."""
        nodes = list(nodes)
        if not nodes:
            return []
        return self._engine.add(
            [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
            ids=[n.node_id for n in nodes],
            metadatas=[dict(n.metadata) for n in nodes],
            upsert=True,
        )

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete the nodes of a document (known from the index's docstore), or the ragplug item of that id."""
        info = self._docstore.get_ref_doc_info(ref_doc_id) if self._docstore is not None else None
        ids = [i for i in (info.node_ids if info is not None else [ref_doc_id]) if i in self._engine.store]
        if ids:
            self._engine.delete(ids)

    def delete_nodes(self, node_ids: list[str] | None = None, filters: Any = None, **delete_kwargs: Any) -> None:
        if filters is not None:
            msg = "deleting by filters is not supported; pass node_ids"
            raise InvalidInputError(msg)
        if node_ids:
            self._engine.delete(node_ids)

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        if not query.query_str:
            msg = "a ragplug vector store searches with the query's text (query_str), not an embedding"
            raise InvalidInputError(msg)
        hits = self._engine.search(
            query.query_str, k=query.similarity_top_k, filter=to_ragplug_filter(query.filters), **kwargs
        )
        return VectorStoreQueryResult(
            nodes=[TextNode(id_=h.id, text=h.text or "", metadata=dict(h.metadata)) for h in hits],
            similarities=[h.relevance if h.relevance is not None else h.score for h in hits],
            ids=[h.id for h in hits],
        )

    def persist(self, persist_path: str, fs: Any = None) -> None:
        """Save an in-process store next to ``persist_path`` (in ``ragplug/``) and write ``persist_path``: a
        ``SimpleVectorStore`` file (so LlamaIndex's loader reads it) whose metadata says where the vectors are."""
        if fs is not None and "file" not in _protocols(fs):
            msg = f"ragplug saves its vectors to a local folder; a {type(fs).__name__} (fs=) is not supported"
            raise InvalidInputError(msg)
        store = self._engine.store
        marker: dict[str, Any] = {"format": _MARKER_FORMAT, "version": 1}
        if getattr(store, "save", None) is None:
            marker |= {"kind": "store", "store": type(store).__name__, "collection": getattr(store, "collection", None)}
        else:
            folder = os.path.join(os.path.dirname(os.fspath(persist_path)), VECTORS_FOLDER)
            self._engine.save(folder)
            marker |= {
                "kind": "folder",
                "path": os.path.abspath(folder),
                "given": folder,
                "ids_digest": _ids_digest(store),
            }
        data = {"embedding_dict": {}, "text_id_to_ref_doc_id": {}, "metadata_dict": {_MARKER_KEY: marker}}
        os.makedirs(os.path.dirname(os.path.abspath(persist_path)), exist_ok=True)
        with open(persist_path, "w", encoding="utf-8") as f:
            json.dump(data, f)


def _protocols(fs: Any) -> tuple[str, ...]:
    protocol = getattr(fs, "protocol", ())
    return (protocol,) if isinstance(protocol, str) else tuple(protocol)


def _ids_digest(store: MultiVectorStore) -> str:
    return hashlib.sha256("\n".join(sorted(store.ids())).encode()).hexdigest()[:16]


def _marker(vector_store: BasePydanticVectorStore | None) -> dict[str, Any] | None:
    if not isinstance(vector_store, SimpleVectorStore):
        return None
    marker = vector_store.data.metadata_dict.get(_MARKER_KEY)
    return marker if isinstance(marker, dict) and marker.get("format") == _MARKER_FORMAT else None


def _saved_store(marker: dict[str, Any], persist_dir: str | os.PathLike[str] | None) -> MultiVectorStore:
    """The saved vectors of this index: under ``persist_dir`` when given, else where the persist wrote them
    (its absolute path, then the path as given, from here), checked against the recorded digest of ids."""
    from ragplug.retrievers.late_interaction.stores import load_store

    if persist_dir is not None:
        candidates = [os.path.join(os.fspath(persist_dir), VECTORS_FOLDER)]
    else:
        candidates = list(dict.fromkeys(str(marker[key]) for key in ("path", "given") if marker.get(key)))
    stale = []
    for folder in candidates:
        if os.path.isdir(folder):
            store = load_store(folder)
            if _ids_digest(store) == marker.get("ids_digest"):
                return store
            stale.append(folder)
    if stale:
        msg = f"{' and '.join(stale)} holds other vectors than this index's (saved again since?)"
    else:
        msg = f"the vectors of this index were saved to {' or '.join(candidates)}, which does not exist"
    msg += "; pass persist_dir= (the folder persisted), e.g. load_index_from_storage(storage_context, persist_dir=...)"
    raise InvalidInputError(msg)


def _window_free(engine: LateInteractionIndex) -> LateInteractionIndex:
    """The engine without its own chunker (nodes are split by the transformations, once)."""
    return engine if engine.chunker is None else LateInteractionIndex(engine.encoder, engine.store)


class _IndexRetriever(ColBERTRetriever):
    """A :class:`ColBERTRetriever` whose nodes also carry what the docstore knows of them: relationships (source
    document, previous / next node), character offsets, which metadata keys the LLM is not shown, templates;
    as ``VectorStoreIndex``'s retriever's nodes do."""

    def __init__(self, engine: LateInteractionIndex, docstore: BaseDocumentStore, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self._docstore = docstore

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._with_sources(super()._retrieve(query_bundle))

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._with_sources(await super()._aretrieve(query_bundle))

    def _with_sources(self, found: list[NodeWithScore]) -> list[NodeWithScore]:
        for item in found:
            stored = self._docstore.get_node(item.node.node_id, raise_error=False)
            if stored is None:
                continue
            node = item.node
            node.relationships = {**stored.relationships, **node.relationships}
            node.excluded_llm_metadata_keys = list(stored.excluded_llm_metadata_keys)
            node.excluded_embed_metadata_keys = list(stored.excluded_embed_metadata_keys)
            if isinstance(stored, TextNode) and isinstance(node, TextNode):
                node.start_char_idx, node.end_char_idx = stored.start_char_idx, stored.end_char_idx
                node.metadata_template, node.metadata_separator = stored.metadata_template, stored.metadata_separator
                node.text_template = stored.text_template
        return found


class ColBERTIndex(BaseIndex[ColBERTIndexDict]):
    """A LlamaIndex index over ragplug's late-interaction (ColBERT, MaxSim) engine.

    Build it with :meth:`from_documents` (or from nodes: ``ColBERTIndex(nodes, model=...)``), reopen a ragplug
    index with :meth:`from_index`, or reload a persisted one with LlamaIndex's ``load_index_from_storage``.

    Args:
        nodes: nodes to index (documents go through :meth:`from_documents`).
        model: the encoder: a hub id or folder (loaded as a ColBERT checkpoint) or a ragplug ``Encoder``;
            default ragplug's default ColBERT model. When reloading, default the encoder the saved index
            records; one given is checked against that record.
        store: a ragplug ``MultiVectorStore`` for the vectors (default in memory; a ``PgVectorStore`` works
            the same). When reloading an index whose store persists by itself (Postgres), the store to
            reconnect to.
        engine: an existing ``LateInteractionIndex`` to use instead of ``model`` / ``store``.
        encoder_kwargs: passed to the encoder built from ``model`` or from the saved record (``device``...).
        persist_dir: when reloading, the folder persisted, if it has moved since the persist.
        transformations: how inserted documents become nodes (default :class:`TokenWindowSplitter` over the
            encoder).
        index_struct, storage_context, callback_manager, show_progress: as in every LlamaIndex index
            (``show_progress=None`` lets ragplug show progress for long jobs).
    """

    index_struct_cls = ColBERTIndexDict

    def __init__(
        self,
        nodes: Sequence[BaseNode] | None = None,
        *,
        model: str | Path | Encoder | None = None,
        store: MultiVectorStore | None = None,
        engine: LateInteractionIndex | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
        persist_dir: str | os.PathLike[str] | None = None,
        index_struct: ColBERTIndexDict | None = None,
        storage_context: StorageContext | None = None,
        callback_manager: CallbackManager | None = None,
        transformations: list[Any] | None = None,
        show_progress: bool | None = None,
    ) -> None:
        storage_context = storage_context or StorageContext.from_defaults()
        current = storage_context.vector_stores.get(DEFAULT_VECTOR_STORE)
        engine = self._engine_for(engine, model, store, encoder_kwargs, persist_dir, index_struct, current)
        self._engine = engine
        encoder = engine.encoder
        make_chunker = getattr(encoder, "chunker", None)
        # a node longer than this window loses more than a few tokens to truncation: _indexable warns
        self._window: Any = None
        if make_chunker is not None:
            full = getattr(make_chunker(), "size", None)
            self._window = make_chunker(full + _MARGIN) if isinstance(full, int) else None
        if transformations is None:
            transformations = default_transformations(encoder)
        if not (isinstance(current, _EngineVectorStore) and current.client is engine):
            storage_context.add_vector_store(_EngineVectorStore(engine, storage_context.docstore), DEFAULT_VECTOR_STORE)
        super().__init__(
            nodes=list(nodes) if nodes is not None else None,
            index_struct=index_struct,
            storage_context=storage_context,
            callback_manager=callback_manager,
            transformations=transformations,
            show_progress=show_progress,  # type: ignore[arg-type]  # None: ragplug decides by the job's size
        )
        self._transformations = transformations  # as given, even empty (BaseIndex would take Settings' for [])

    @staticmethod
    def _engine_for(
        engine: LateInteractionIndex | None,
        model: str | Path | Encoder | None,
        store: MultiVectorStore | None,
        encoder_kwargs: dict[str, Any] | None,
        persist_dir: str | os.PathLike[str] | None,
        index_struct: ColBERTIndexDict | None,
        current: BasePydanticVectorStore | None,
    ) -> LateInteractionIndex:
        if engine is not None and (model is not None or store is not None or encoder_kwargs):
            msg = "pass engine= or model= / store= / encoder_kwargs=, not both"
            raise InvalidInputError(msg)
        if isinstance(current, _EngineVectorStore):  # a storage context an index's engine is already in
            if engine is None and model is None and store is None:
                return current.client
            if engine is not None and engine.store is current.client.store:
                return _window_free(engine)
            msg = "this storage context already holds another ColBERTIndex's vectors; give each index its own"
            raise InvalidInputError(msg)
        marker = _marker(current)
        foreign = not isinstance(current, SimpleVectorStore) or bool(current.data.embedding_dict)
        if current is not None and marker is None and foreign:
            msg = (
                f"the storage context's vector store ({type(current).__name__}) holds other vectors; a "
                "ColBERTIndex keeps its vectors in a ragplug store: pass store= (a MultiVectorStore) and a "
                "storage context without a vector store"
            )
            raise InvalidInputError(msg)
        if engine is not None:
            return _window_free(engine)
        if index_struct is None:  # a new index
            encoder = make_encoder(model if model is not None else DEFAULT_MODEL, encoder_kwargs)
            return LateInteractionIndex(encoder, store)
        # reloading a persisted index
        if store is None:
            if marker is None:
                msg = (
                    "this storage context holds no ragplug vectors for the ColBERTIndex (it was persisted without "
                    "them?); pass store= (the MultiVectorStore holding them)"
                )
                raise InvalidInputError(msg)
            if marker.get("kind") == "store":
                msg = (
                    f"the vectors of this index are in a {marker.get('store')} (collection "
                    f"{marker.get('collection')!r}), which persists by itself; reconnect with "
                    "load_index_from_storage(storage_context, store=<that store>)"
                )
                raise InvalidInputError(msg)
            store = _saved_store(marker, persist_dir)
        return LateInteractionIndex.open(store, model, chunk=False, **(encoder_kwargs or {}))

    # -- construction ---------------------------------------------------------------------------------
    @classmethod
    def from_documents(  # type: ignore[override]  # returns a ColBERTIndex; takes the encoder settings
        cls,
        documents: Sequence[Document],
        storage_context: StorageContext | None = None,
        show_progress: bool | None = None,
        callback_manager: CallbackManager | None = None,
        transformations: list[Any] | None = None,
        *,
        model: str | Path | Encoder = DEFAULT_MODEL,
        store: MultiVectorStore | None = None,
        encoder_kwargs: dict[str, Any] | None = None,
    ) -> ColBERTIndex:
        """Split ``documents`` into nodes (``transformations``, default :class:`TokenWindowSplitter` over the
        encoder) and index them. ``model``: a hub id, folder or ragplug ``Encoder``; ``store``: any ragplug
        ``MultiVectorStore`` (default in memory)."""
        storage_context = storage_context or StorageContext.from_defaults()
        callback_manager = callback_manager or Settings.callback_manager
        engine = LateInteractionIndex(make_encoder(model, encoder_kwargs), store)  # first: the splitter needs it
        if transformations is None:
            transformations = default_transformations(engine.encoder)
        documents = list(documents)
        with callback_manager.as_trace("index_construction"):
            nodes = run_transformations(documents, transformations, show_progress=bool(show_progress))
            index = cls(
                nodes,
                engine=engine,
                storage_context=storage_context,
                callback_manager=callback_manager,
                transformations=transformations,
                show_progress=show_progress,
            )
        for doc in documents:  # after indexing, so a failed build is not taken for indexed documents
            storage_context.docstore.set_document_hash(doc.id_, doc.hash)
        return index

    @classmethod
    def from_index(
        cls,
        source: str | os.PathLike[str] | MultiVectorStore,
        model: str | Path | Encoder | None = None,
        *,
        encoder_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> ColBERTIndex:
        """Reopen from a path alone: a folder persisted by ``storage_context.persist`` (everything comes back),
        a ragplug index folder saved with ``save`` or a store already holding vectors (a Postgres collection).
        The encoder is the one the index records (``encoder_kwargs`` such as ``device`` go to it); an explicit
        ``model`` is checked against it. Opened from a ragplug folder or store, the index has its vectors but
        no LlamaIndex docstore: retrieval and the engines work, ``insert`` / ``delete_ref_doc`` address ragplug
        items by their ids, and ``ref_doc_info`` lists what is inserted from then on. ``kwargs`` go to the
        constructor (``storage_context``, ``transformations``...; ``store=`` for a persisted Postgres index)."""
        if not isinstance(source, str | os.PathLike):
            engine = LateInteractionIndex.open(source, model, chunk=False, **(encoder_kwargs or {}))
            return cls([], engine=engine, **kwargs)
        folder = os.fspath(source)
        if os.path.isfile(os.path.join(folder, "index_store.json")):
            from llama_index.core import load_index_from_storage

            context = StorageContext.from_defaults(persist_dir=folder)
            index = load_index_from_storage(
                context, model=model, encoder_kwargs=encoder_kwargs, persist_dir=folder, **kwargs
            )
            if not isinstance(index, cls):
                msg = f"{folder} holds a {type(index).__name__}, not a {cls.__name__}"
                raise InvalidInputError(msg)
            return index
        engine = LateInteractionIndex.open(folder, model, chunk=False, **(encoder_kwargs or {}))
        return cls([], engine=engine, **kwargs)

    # -- what BaseIndex asks of an index ---------------------------------------------------------------
    @property
    def engine(self) -> LateInteractionIndex:
        """The ragplug engine (encoder + store) holding the vectors."""
        return self._engine

    def build_index_from_nodes(self, nodes: Sequence[BaseNode], **build_kwargs: Any) -> ColBERTIndexDict:
        """Index ``nodes`` (empty ones are skipped, as ``VectorStoreIndex`` skips them)."""
        return self._build_index_from_nodes(nodes, **build_kwargs)

    def _build_index_from_nodes(self, nodes: Sequence[BaseNode], **build_kwargs: Any) -> ColBERTIndexDict:
        index_struct = self.index_struct_cls()
        self._add(index_struct, nodes)
        return index_struct

    def _indexable(self, nodes: Sequence[BaseNode]) -> tuple[list[BaseNode], list[str]]:
        kept, texts = [], []
        for node in nodes:
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if text.strip():
                kept.append(node)
                texts.append(text)
        if len(kept) != len(nodes):
            logger.info("skipped %d nodes without text", len(nodes) - len(kept))
        if self._window is not None:
            long = [n.node_id for n, t in zip(kept, texts, strict=True) if len(self._window(t)) > 1]
            if long:
                logger.warning(
                    "%d nodes are longer than the encoder's window, so only their beginning is searchable "
                    "(e.g. %s); split them first (the default TokenWindowSplitter does)",
                    len(long),
                    long[:3],
                )
        return kept, texts

    def _add(self, index_struct: ColBERTIndexDict, nodes: Sequence[BaseNode]) -> None:
        kept, texts = self._indexable(nodes)
        if not kept:
            return
        self._engine.add(
            texts,
            ids=[n.node_id for n in kept],
            metadatas=[dict(n.metadata) for n in kept],
            upsert=True,
            show_progress=self._show_progress,
        )
        self._docstore.add_documents(kept, allow_update=True)
        for node in kept:
            index_struct.add_node(node)

    async def _aadd(self, index_struct: ColBERTIndexDict, nodes: Sequence[BaseNode]) -> None:
        kept, texts = self._indexable(nodes)
        if not kept:
            return
        await self._engine.aadd(
            texts,
            ids=[n.node_id for n in kept],
            metadatas=[dict(n.metadata) for n in kept],
            upsert=True,
            show_progress=self._show_progress,
        )
        await self._docstore.async_add_documents(kept, allow_update=True)
        for node in kept:
            index_struct.add_node(node)

    def _insert(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        self._add(self._index_struct, nodes)

    def insert_nodes(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        """Index nodes (an id already indexed is replaced): vectors first, then the docstore."""
        with self._callback_manager.as_trace("insert_nodes"):
            self._add(self._index_struct, nodes)
            self._storage_context.index_store.add_index_struct(self._index_struct)

    async def ainsert_nodes(self, nodes: Sequence[BaseNode], **insert_kwargs: Any) -> None:
        with self._callback_manager.as_trace("ainsert_nodes"):
            await self._aadd(self._index_struct, nodes)
            await self._storage_context.index_store.async_add_index_struct(self._index_struct)

    def insert(self, document: Document, **insert_kwargs: Any) -> None:
        """Split ``document`` with the index's transformations and index its nodes. A ragplug item of the same
        id that LlamaIndex does not know (one written before :meth:`from_index`) is replaced."""
        self._replace_unknown_item(document.id_)
        super().insert(document, **insert_kwargs)

    async def ainsert(self, document: Document, **insert_kwargs: Any) -> None:
        self._replace_unknown_item(document.id_)
        await super().ainsert(document, **insert_kwargs)

    def _replace_unknown_item(self, doc_id: str) -> None:
        if self._docstore.get_ref_doc_info(doc_id) is None and doc_id in self._engine.store:
            self._engine.delete([doc_id])

    def _delete_node(self, node_id: str, **delete_kwargs: Any) -> None:
        self._engine.delete([node_id])
        self._index_struct.nodes_dict.pop(node_id, None)

    def delete_nodes(self, node_ids: list[str], delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        """Delete nodes by id (unknown ids raise ``UnknownIdError`` and delete nothing)."""
        node_ids = list(node_ids)
        if node_ids:
            self._engine.delete(node_ids)
        self._forget(node_ids, delete_from_docstore)

    async def adelete_nodes(
        self, node_ids: list[str], delete_from_docstore: bool = False, **delete_kwargs: Any
    ) -> None:
        node_ids = list(node_ids)
        if node_ids:
            await self._engine.adelete(node_ids)
        self._forget(node_ids, delete_from_docstore)

    def _forget(self, node_ids: list[str], delete_from_docstore: bool) -> None:
        for node_id in node_ids:
            self._index_struct.nodes_dict.pop(node_id, None)
            if delete_from_docstore:
                self._docstore.delete_document(node_id, raise_error=False)
        self._storage_context.index_store.add_index_struct(self._index_struct)

    def _held(self, ref_doc_id: str) -> list[str] | None:
        """The indexed nodes of a document; ``None`` when the docstore does not know it."""
        info = self._docstore.get_ref_doc_info(ref_doc_id)
        if info is None:
            return None
        return [i for i in info.node_ids if i in self._index_struct.nodes_dict]

    def delete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        """Delete every node of the document ``ref_doc_id`` (with ``delete_from_docstore=True``, from the
        docstore too, so :meth:`refresh_ref_docs` indexes it again when seen). An id LlamaIndex does not know
        but the ragplug store holds (an item written before :meth:`from_index`) is deleted from the store."""
        held = self._held(ref_doc_id)
        if held is None:
            if ref_doc_id in self._engine.store:
                self._engine.delete([ref_doc_id])
            else:
                logger.warning("ref_doc_id %s not found, nothing deleted", ref_doc_id)
            return
        self.delete_nodes(held, delete_from_docstore=delete_from_docstore)
        if delete_from_docstore:
            self._docstore.delete_ref_doc(ref_doc_id, raise_error=False)

    async def adelete_ref_doc(self, ref_doc_id: str, delete_from_docstore: bool = False, **delete_kwargs: Any) -> None:
        held = self._held(ref_doc_id)
        if held is None:
            if ref_doc_id in self._engine.store:
                await self._engine.adelete([ref_doc_id])
            else:
                logger.warning("ref_doc_id %s not found, nothing deleted", ref_doc_id)
            return
        await self.adelete_nodes(held, delete_from_docstore=delete_from_docstore)
        if delete_from_docstore:
            await self._docstore.adelete_ref_doc(ref_doc_id, raise_error=False)

    @property
    def ref_doc_info(self) -> dict[str, RefDocInfo]:
        """The indexed documents: ref_doc_id -> its node ids and metadata."""
        out: dict[str, RefDocInfo] = {}
        nodes = self._docstore.get_nodes(list(self._index_struct.nodes_dict.values()), raise_error=False)
        for node in nodes:
            ref_doc_id = node.ref_doc_id
            if ref_doc_id is None or ref_doc_id in out:
                continue
            info = self._docstore.get_ref_doc_info(ref_doc_id)
            if info is not None:
                out[ref_doc_id] = info
        return out

    def as_retriever(self, **kwargs: Any) -> ColBERTRetriever:
        """A :class:`ColBERTRetriever` over the engine: ``similarity_top_k`` (default 2, as for
        ``VectorStoreIndex``), ``filters`` (``MetadataFilters`` or a ragplug filter), ``vector_store_query_mode``
        and ``search_kwargs`` as it takes them. Other keywords are left to the query and chat engines
        (``as_query_engine`` / ``as_chat_engine`` pass theirs through here, as LlamaIndex does)."""
        options = {key: value for key, value in kwargs.items() if key in _RETRIEVER_KEYWORDS}
        options.setdefault("similarity_top_k", DEFAULT_SIMILARITY_TOP_K)
        options.setdefault("callback_manager", self._callback_manager)
        ignored = sorted(set(kwargs) - _RETRIEVER_KEYWORDS)
        if ignored:
            logger.debug("as_retriever: %s are not retriever settings, left to the engine", ignored)
        return _IndexRetriever(self._engine, self._docstore, **options)


def default_transformations(encoder: Encoder) -> list[Any]:
    """:class:`TokenWindowSplitter` over ``encoder`` when it can split text, else LlamaIndex's defaults."""
    if getattr(encoder, "chunker", None) is None:
        return list(Settings.transformations)
    return [TokenWindowSplitter.from_encoder(encoder)]


# load_index_from_storage finds an index class by its struct's type in these registries.
INDEX_STRUCT_TYPE_TO_INDEX_STRUCT_CLASS[cast(IndexStructType, STRUCT_TYPE)] = ColBERTIndexDict
INDEX_STRUCT_TYPE_TO_INDEX_CLASS[cast(IndexStructType, STRUCT_TYPE)] = ColBERTIndex
