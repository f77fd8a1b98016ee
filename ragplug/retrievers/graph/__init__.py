"""Graph RAG: a knowledge graph built from documents, searched locally (personalized PageRank), globally
(communities) and in hybrid with ColBERT.

Stages, each its own module over injected storages: :mod:`.chunking` (documents → passages),
:mod:`.extract` (:class:`PhraseExtractor`, LLM-free, the default) and :mod:`.llm` (:class:`LLMExtractor`
through any :class:`~.model.ChatFunction`), :mod:`.stores` (:class:`MemoryGraphStore`, :class:`PgGraphStore`),
:mod:`.communities` (Leiden + summaries), :mod:`.search`, tied together by :class:`GraphIndex`;
:mod:`.export` writes GraphML/JSON and draws an entity's neighbourhood. The typed contract between the
stages is :mod:`.model`. Names are imported on first use, so this package loads nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragplug._extras import lazy_attributes

if TYPE_CHECKING:
    from ragplug.adapters.lora.chat_function import lora_chat_function
    from ragplug.retrievers.graph.chunking import PassageSplitter
    from ragplug.retrievers.graph.extract import PhraseExtractor
    from ragplug.retrievers.graph.index import GraphIndex, IndexReport
    from ragplug.retrievers.graph.llm import ExtractionCache, LLMExtractor
    from ragplug.retrievers.graph.model import ChatFunction, Community, Entity, Passage, Relation
    from ragplug.retrievers.graph.search import GraphSearchOptions
    from ragplug.retrievers.graph.stores import MemoryGraphStore, PgGraphStore

_WHERE = {
    "ChatFunction": "ragplug.retrievers.graph.model",
    "Community": "ragplug.retrievers.graph.model",
    "Entity": "ragplug.retrievers.graph.model",
    "ExtractionCache": "ragplug.retrievers.graph.llm",
    "GraphIndex": "ragplug.retrievers.graph.index",
    "GraphSearchOptions": "ragplug.retrievers.graph.search",
    "IndexReport": "ragplug.retrievers.graph.index",
    "LLMExtractor": "ragplug.retrievers.graph.llm",
    "MemoryGraphStore": "ragplug.retrievers.graph.stores",
    "Passage": "ragplug.retrievers.graph.model",
    "PassageSplitter": "ragplug.retrievers.graph.chunking",
    "PgGraphStore": "ragplug.retrievers.graph.stores",
    "PhraseExtractor": "ragplug.retrievers.graph.extract",
    "Relation": "ragplug.retrievers.graph.model",
    "lora_chat_function": "ragplug.adapters.lora.chat_function",
}

__all__ = [
    "ChatFunction",
    "Community",
    "Entity",
    "ExtractionCache",
    "GraphIndex",
    "GraphSearchOptions",
    "IndexReport",
    "LLMExtractor",
    "MemoryGraphStore",
    "Passage",
    "PassageSplitter",
    "PgGraphStore",
    "PhraseExtractor",
    "Relation",
    "lora_chat_function",
]

__getattr__ = lazy_attributes(__name__, _WHERE)
