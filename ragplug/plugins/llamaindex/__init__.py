"""LlamaIndex components: ``ColBERTIndex`` (a ``BaseIndex``), ``ColBERTRetriever`` (a ``BaseRetriever``),
``ColBERTRerank`` (a node postprocessor) and ``LoRALLM`` (a ``FunctionCallingLLM`` over a local model with LoRA
adapters), ``llamaindex_chat_function`` (an LLM as ragplug's chat function), and evaluators
(``CorrectnessEvaluator``, ..., ``RagplugRetrievalMetric`` for ``RetrieverEvaluator``; :mod:`.evaluators`).

Needs ``pip install "ragplug[colbert,llamaindex]"`` (and ``[lora]`` for ``LoRALLM``). Each class is
imported when first used, so the retrievers work without the LoRA extra and vice versa.
"""

from ragplug._extras import lazy_attributes, require

require("llama_index.core", "llamaindex")

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from ragplug.plugins.llamaindex.chat_function import llamaindex_chat_function
    from ragplug.plugins.llamaindex.evaluators import (
        ContextRelevanceEvaluator,
        CorrectnessEvaluator,
        FaithfulnessEvaluator,
        PairwiseEvaluator,
        RagplugRetrievalMetric,
        retrieval_metrics,
    )
    from ragplug.plugins.llamaindex.index import ColBERTIndex, TokenWindowSplitter
    from ragplug.plugins.llamaindex.llms import LoRALLM
    from ragplug.plugins.llamaindex.retrievers import (
        ColBERTRerank,
        ColBERTRetriever,
        RagplugRetriever,
        to_ragplug_filter,
    )

__all__ = [
    "ColBERTIndex",
    "ColBERTRerank",
    "ColBERTRetriever",
    "ContextRelevanceEvaluator",
    "CorrectnessEvaluator",
    "FaithfulnessEvaluator",
    "LoRALLM",
    "PairwiseEvaluator",
    "RagplugRetrievalMetric",
    "RagplugRetriever",
    "TokenWindowSplitter",
    "llamaindex_chat_function",
    "retrieval_metrics",
    "to_ragplug_filter",
]

_WHERE = {
    "ContextRelevanceEvaluator": "ragplug.plugins.llamaindex.evaluators",
    "CorrectnessEvaluator": "ragplug.plugins.llamaindex.evaluators",
    "FaithfulnessEvaluator": "ragplug.plugins.llamaindex.evaluators",
    "PairwiseEvaluator": "ragplug.plugins.llamaindex.evaluators",
    "RagplugRetrievalMetric": "ragplug.plugins.llamaindex.evaluators",
    "retrieval_metrics": "ragplug.plugins.llamaindex.evaluators",
    "ColBERTIndex": "ragplug.plugins.llamaindex.index",
    "ColBERTRerank": "ragplug.plugins.llamaindex.retrievers",
    "ColBERTRetriever": "ragplug.plugins.llamaindex.retrievers",
    "RagplugRetriever": "ragplug.plugins.llamaindex.retrievers",
    "LoRALLM": "ragplug.plugins.llamaindex.llms",
    "TokenWindowSplitter": "ragplug.plugins.llamaindex.index",
    "llamaindex_chat_function": "ragplug.plugins.llamaindex.chat_function",
    "to_ragplug_filter": "ragplug.plugins.llamaindex.retrievers",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
