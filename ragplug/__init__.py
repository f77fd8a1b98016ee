"""ragplug: drop-in retrieval and local-LLM components for LangChain and LlamaIndex.

The top-level import is deliberately light: it loads no torch, transformers, langchain or
llama_index. Import the role you need (``ragplug.retrievers``, ``ragplug.plugins.langchain``, ...).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
