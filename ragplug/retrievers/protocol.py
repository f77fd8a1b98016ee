"""The framework-free retriever contract that every framework face wraps (query in, hits out).

One LangChain retriever class and one LlamaIndex retriever class serve every engine: ColBERT over text,
ColPali over pages, the Graph retrievers to come. Each engine is an object satisfying :class:`Retriever`;
the optional capabilities are separate protocols the faces check for (MMR, writes), so a read-only engine
is a complete retriever and a face refuses, at construction, what its engine cannot do.
:class:`~ragplug.retrievers.late_interaction.LateInteractionIndex` satisfies all three.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ragplug.retrievers.late_interaction.base import Hit, Record, SearchOptions
from ragplug.retrievers.late_interaction.filters import Filter, FilterNode

__all__ = ["DiverseRetriever", "Retriever", "WritableRetriever", "display_text"]


@runtime_checkable
class Retriever(Protocol):
    """Ranks stored items for a query. ``search_options`` is the typed class of its per-search options
    (what ``search_kwargs`` may name besides ``k`` and ``filter``)."""

    @property
    def search_options(self) -> type[SearchOptions]: ...

    def search(
        self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any
    ) -> list[Hit]: ...

    async def asearch(
        self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any
    ) -> list[Hit]: ...


@runtime_checkable
class DiverseRetriever(Retriever, Protocol):
    """A retriever that can diversify its results (maximal marginal relevance)."""

    def search_mmr(
        self,
        query: str,
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | FilterNode | None = None,
        **options: Any,
    ) -> list[Hit]: ...

    async def asearch_mmr(
        self,
        query: str,
        *,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: Filter | FilterNode | None = None,
        **options: Any,
    ) -> list[Hit]: ...


@runtime_checkable
class WritableRetriever(Protocol):
    """A retriever whose items can be added, read and deleted by id."""

    def add(self, items: Sequence[Any], **kwargs: Any) -> list[str]: ...

    async def aadd(self, items: Sequence[Any], **kwargs: Any) -> list[str]: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    async def adelete(self, ids: Sequence[str]) -> None: ...

    def get(self, ids: Sequence[str]) -> list[Record]: ...


def display_text(hit: Hit | Record) -> str:
    """What a framework shows as a hit's content: its text; for a page without a text layer (a scan, a
    chart), a line naming the page, never an empty string."""
    if hit.text and hit.text.strip():
        return hit.text
    meta = hit.metadata
    if "page" in meta:
        of = f" of {meta['page_count']}" if "page_count" in meta else ""
        return f"[page {meta['page']}{of} of {meta.get('source', hit.id)}: an image without extractable text]"
    return hit.text or f"[{hit.id}: no text]"
