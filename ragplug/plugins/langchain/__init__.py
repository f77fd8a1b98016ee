"""LangChain components: ``ColBERTVectorStore`` (a ``VectorStore``), ``ColBERTRetriever`` (a
``BaseRetriever``), ``ColBERTReranker`` (a document compressor) and ``ChatLoRA`` (a ``BaseChatModel`` over a
local model with LoRA adapters), and ``langchain_chat_function`` (a chat model as Graph RAG's chat function).

Needs ``pip install "ragplug[colbert,langchain]"`` (and ``[lora]`` for ``ChatLoRA``). Each class is
imported when first used, so the retrievers work without the LoRA extra and vice versa.
"""

from ragplug._extras import lazy_attributes, require

require("langchain_core", "langchain")

from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from ragplug.plugins.langchain.chat_function import langchain_chat_function
    from ragplug.plugins.langchain.chat_models import ChatLoRA
    from ragplug.plugins.langchain.retrievers import ColBERTReranker, ColBERTRetriever, RagplugRetriever
    from ragplug.plugins.langchain.vectorstores import ColBERTVectorStore

__all__ = [
    "ChatLoRA",
    "ColBERTReranker",
    "ColBERTRetriever",
    "ColBERTVectorStore",
    "RagplugRetriever",
    "langchain_chat_function",
]

_WHERE = {
    "ChatLoRA": "ragplug.plugins.langchain.chat_models",
    "ColBERTReranker": "ragplug.plugins.langchain.retrievers",
    "ColBERTRetriever": "ragplug.plugins.langchain.retrievers",
    "RagplugRetriever": "ragplug.plugins.langchain.retrievers",
    "ColBERTVectorStore": "ragplug.plugins.langchain.vectorstores",
    "langchain_chat_function": "ragplug.plugins.langchain.chat_function",
}


__getattr__ = lazy_attributes(__name__, _WHERE)
