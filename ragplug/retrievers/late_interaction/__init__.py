"""The shared multi-vector (late interaction) engine: encoders, stores, MaxSim search.

ColBERT (text tokens) and ColPali (image patches) both plug in here: an :class:`Encoder` makes one
matrix per item, a :class:`MultiVectorStore` keeps and searches them, :class:`LateInteractionIndex`
ties the two together.
"""

from ragplug.retrievers.late_interaction.base import (
    Chunk,
    Chunker,
    Encoder,
    EncoderIdentity,
    Hit,
    MultiVectorStore,
    Record,
    SearchOptions,
)
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig
from ragplug.retrievers.late_interaction.filters import Filter, FilterNode, compile_filter, parse_filter
from ragplug.retrievers.late_interaction.index import LateInteractionIndex
from ragplug.retrievers.late_interaction.ivf import ApproximateConfig
from ragplug.retrievers.late_interaction.rerank import rerank
from ragplug.retrievers.late_interaction.stores import copy_records, create_store, load_store, register_store
from ragplug.retrievers.late_interaction.stores.memory import (
    InMemoryMultiVectorStore,
    MemorySearchOptions,
    SearchMode,
)

__all__ = [
    "ApproximateConfig",
    "Chunk",
    "Chunker",
    "Codec",
    "CodecConfig",
    "Encoder",
    "EncoderIdentity",
    "Filter",
    "FilterNode",
    "Hit",
    "InMemoryMultiVectorStore",
    "LateInteractionIndex",
    "MemorySearchOptions",
    "MultiVectorStore",
    "Record",
    "SearchMode",
    "SearchOptions",
    "compile_filter",
    "copy_records",
    "create_store",
    "load_store",
    "parse_filter",
    "register_store",
    "rerank",
]
