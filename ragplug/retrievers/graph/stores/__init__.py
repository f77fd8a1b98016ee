"""Graph stores: where Graph RAG keeps its knowledge graph.

:class:`MemoryGraphStore` (in process, optionally saved to a folder) needs nothing beyond numpy and
safetensors; :class:`PgGraphStore` (plain Postgres tables + pgvector, extra ``postgres``) is imported only
when first asked for, so that ``import ragplug.retrievers.graph.stores`` never loads psycopg. Both check
their input with the same functions (:mod:`._check`) and pass the same contract suite
(``integration_tests/test_graph_store_contract.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ragplug.retrievers.graph.stores.memory import MemoryGraphStore

if TYPE_CHECKING:
    from ragplug.retrievers.graph.stores.postgres import PgGraphStore

__all__ = ["MemoryGraphStore", "PgGraphStore"]


def __getattr__(name: str) -> Any:
    if name == "PgGraphStore":
        from ragplug.retrievers.graph.stores.postgres import PgGraphStore

        return PgGraphStore
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
