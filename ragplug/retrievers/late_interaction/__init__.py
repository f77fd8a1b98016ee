"""The shared multi-vector (late interaction) engine: encoders, stores, MaxSim search.

ColBERT (text tokens) and ColPali (image patches) both plug in here: an :class:`Encoder` makes one
matrix per item, a :class:`MultiVectorStore` keeps and searches them, :class:`LateInteractionIndex`
ties the two together.
"""

from ragplug.retrievers.late_interaction.base import (
    Encoder,
    EncoderIdentity,
    Hit,
    MultiVectorStore,
    Record,
)
from ragplug.retrievers.late_interaction.filters import Filter, compile_filter
from ragplug.retrievers.late_interaction.index import LateInteractionIndex
from ragplug.retrievers.late_interaction.ivf import ApproximateConfig
from ragplug.retrievers.late_interaction.memory import InMemoryMultiVectorStore, SearchMode
from ragplug.retrievers.late_interaction.rerank import rerank

__all__ = [
    "ApproximateConfig",
    "Encoder",
    "EncoderIdentity",
    "Filter",
    "Hit",
    "InMemoryMultiVectorStore",
    "LateInteractionIndex",
    "MultiVectorStore",
    "Record",
    "SearchMode",
    "compile_filter",
    "rerank",
]
