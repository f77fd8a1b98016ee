"""LangChain components: ``ColBERTRetriever`` (a ``BaseRetriever``), ``ColBERTReranker`` (a document
compressor) and ``ChatLoRA`` (a ``BaseChatModel`` over a local model with LoRA adapters).

Needs ``pip install "ragplug[colbert,langchain]"`` (and ``[lora]`` for ``ChatLoRA``). Each class is
imported when first used, so the retrievers work without the LoRA extra and vice versa.
"""

from ragplug._extras import require

require("langchain_core", "langchain")

from typing import TYPE_CHECKING, Any  # noqa: E402

if TYPE_CHECKING:
    from ragplug.plugins.langchain.chat_models import ChatLoRA
    from ragplug.plugins.langchain.retrievers import ColBERTReranker, ColBERTRetriever

__all__ = ["ChatLoRA", "ColBERTReranker", "ColBERTRetriever"]

_WHERE = {
    "ChatLoRA": "ragplug.plugins.langchain.chat_models",
    "ColBERTReranker": "ragplug.plugins.langchain.retrievers",
    "ColBERTRetriever": "ragplug.plugins.langchain.retrievers",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
