"""LangChain components: ``ColBERTVectorStore`` (a ``VectorStore``), ``ColBERTRetriever`` (a
``BaseRetriever``), ``ColBERTReranker`` (a document compressor) and ``ChatLoRA`` (a ``BaseChatModel`` over a
local model with LoRA adapters), ``langchain_chat_function`` (a chat model as ragplug's chat function), and
LangSmith-style evaluators (``correctness_evaluator``, ``faithfulness_evaluator``, ... from :mod:`.evaluators`).

Needs ``pip install "ragplug[colbert,langchain]"`` (and ``[lora]`` for ``ChatLoRA``). Each class is
imported when first used, so the retrievers work without the LoRA extra and vice versa.
"""

from ragplug._extras import lazy_attributes, require

require("langchain_core", "langchain")

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from ragplug.plugins.langchain.chat_function import langchain_chat_function
    from ragplug.plugins.langchain.chat_models import ChatLoRA
    from ragplug.plugins.langchain.evaluators import (
        context_relevance_evaluator,
        correctness_evaluator,
        exact_match_evaluator,
        faithfulness_evaluator,
        pairwise_evaluator,
        token_f1_evaluator,
    )
    from ragplug.plugins.langchain.retrievers import ColBERTReranker, ColBERTRetriever, RagplugRetriever
    from ragplug.plugins.langchain.vectorstores import ColBERTVectorStore

__all__ = [
    "ChatLoRA",
    "ColBERTReranker",
    "ColBERTRetriever",
    "ColBERTVectorStore",
    "RagplugRetriever",
    "context_relevance_evaluator",
    "correctness_evaluator",
    "exact_match_evaluator",
    "faithfulness_evaluator",
    "langchain_chat_function",
    "pairwise_evaluator",
    "token_f1_evaluator",
]

_WHERE = {
    "context_relevance_evaluator": "ragplug.plugins.langchain.evaluators",
    "correctness_evaluator": "ragplug.plugins.langchain.evaluators",
    "exact_match_evaluator": "ragplug.plugins.langchain.evaluators",
    "faithfulness_evaluator": "ragplug.plugins.langchain.evaluators",
    "pairwise_evaluator": "ragplug.plugins.langchain.evaluators",
    "token_f1_evaluator": "ragplug.plugins.langchain.evaluators",
    "ChatLoRA": "ragplug.plugins.langchain.chat_models",
    "ColBERTReranker": "ragplug.plugins.langchain.retrievers",
    "ColBERTRetriever": "ragplug.plugins.langchain.retrievers",
    "RagplugRetriever": "ragplug.plugins.langchain.retrievers",
    "ColBERTVectorStore": "ragplug.plugins.langchain.vectorstores",
    "langchain_chat_function": "ragplug.plugins.langchain.chat_function",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
