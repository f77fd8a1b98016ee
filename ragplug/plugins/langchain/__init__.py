"""LangChain components: ``ColBERTRetriever`` (a ``BaseRetriever``) and ``ColBERTReranker`` (a document compressor).

Needs ``pip install "ragplug[colbert,langchain]"``.
"""

from ragplug._extras import require

require("langchain_core", "langchain")

from ragplug.plugins.langchain.retrievers import ColBERTReranker, ColBERTRetriever  # noqa: E402

__all__ = ["ColBERTReranker", "ColBERTRetriever"]
