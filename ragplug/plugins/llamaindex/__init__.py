"""LlamaIndex components: ``ColBERTRetriever`` (a ``BaseRetriever``) and ``ColBERTRerank`` (a node postprocessor).

Needs ``pip install "ragplug[colbert,llamaindex]"``.
"""

from ragplug._extras import require

require("llama_index.core", "llamaindex")

from ragplug.plugins.llamaindex.retrievers import ColBERTRerank, ColBERTRetriever, to_ragplug_filter  # noqa: E402

__all__ = ["ColBERTRerank", "ColBERTRetriever", "to_ragplug_filter"]
