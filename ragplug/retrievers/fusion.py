"""Several retrievers as one: reciprocal rank fusion of their rankings (framework-free).

For pages, the image encoder (ColPali) and a text encoder over each page's extracted text (ColBERT) see
different evidence: a chart's values, or a sentence the image model reads poorly. :class:`FusionRetriever`
asks each retriever for ``fetch_k`` hits and ranks items by reciprocal rank fusion (Cormack, Clarke and
Büttcher, 2009): ``sum(weight / (rank_constant + rank))`` over the lists an item appears in. RRF needs no
score calibration between engines, which raw MaxSim sums of different encoders lack. Hits are matched by
item (a text chunk, which carries ``chunk_index``, counts for the item it was cut from), so a page indexed
whole by one retriever and as text chunks by another is one result; pages of one PDF stay separate. The
formula is two lines; a ranking library (ranx) would bring numba for it, so it is written here.

It satisfies :class:`~ragplug.retrievers.protocol.Retriever`, so both framework faces take it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction.base import Hit, SearchOptions, check_k
from ragplug.retrievers.late_interaction.filters import Filter, FilterNode
from ragplug.retrievers.protocol import Retriever

__all__ = ["FusionOptions", "FusionRetriever", "reciprocal_rank_fusion"]


@dataclass(frozen=True)
class FusionOptions(SearchOptions):
    """``fetch_k``: hits asked from each retriever (default ``max(20, 2 * k)``)."""

    fetch_k: int | None = None

    def __post_init__(self) -> None:
        if self.fetch_k is not None and (
            isinstance(self.fetch_k, bool) or not isinstance(self.fetch_k, int) or self.fetch_k <= 0
        ):
            msg = f"fetch_k must be a positive integer, got {self.fetch_k!r}"
            raise InvalidInputError(msg)


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Hit]], weights: Sequence[float], k: int, rank_constant: int = 60
) -> list[Hit]:
    """The ``k`` best items over ``rankings`` by weighted RRF. Each fused hit is the item's own hit from the
    first list that has one (else its best chunk's, renamed to the item), with ``score`` the fused score and
    ``relevance`` the best relevance any list gave it (on the [0, 1] scale every ragplug engine reports)."""
    fused: dict[str, float] = {}
    first: dict[str, Hit] = {}
    best: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[str] = set()
        for hit in ranking:
            item = hit.parent_id if hit.parent_id is not None and "chunk_index" in hit.metadata else hit.id
            if item in seen:  # another chunk of an item already ranked in this list
                continue
            seen.add(item)  # ranks count items, not chunks
            fused[item] = fused.get(item, 0.0) + weight / (rank_constant + len(seen))
            if item not in first or (first[item].id != item and hit.id == item):  # the item's own hit wins
                first[item] = hit
            if hit.relevance is not None:
                best[item] = max(best.get(item, 0.0), hit.relevance)
    order = sorted(fused, key=lambda item: (-fused[item], item))[:k]
    return [_as_item(first[item], item, fused[item], best.get(item)) for item in order]


def _as_item(hit: Hit, item: str, score: float, relevance: float | None) -> Hit:
    """The fused hit of ``item``: its own hit, or a chunk's (only a text index found it) named after the
    item, without the chunk's keys, its text the chunk's."""
    if hit.id == item:
        return replace(hit, score=score, relevance=relevance)
    metadata = {k: v for k, v in hit.metadata.items() if k not in ("parent_id", "chunk_index", "start_index")}
    return replace(hit, id=item, parent_id=None, metadata=metadata, score=score, relevance=relevance)


class FusionRetriever:
    """Reciprocal rank fusion of ``retrievers`` (e.g. a ColPali page index and a ColBERT index of the same
    pages' text, with the same item ids). ``weights`` default to 1 each; ``rank_constant`` is RRF's 60."""

    search_options = FusionOptions

    def __init__(
        self, retrievers: Sequence[Retriever], *, weights: Sequence[float] | None = None, rank_constant: int = 60
    ) -> None:
        retrievers = list(retrievers)
        if len(retrievers) < 2 or not all(isinstance(r, Retriever) for r in retrievers):
            msg = "FusionRetriever takes two or more ragplug Retrievers"
            raise InvalidInputError(msg)
        weights = [1.0] * len(retrievers) if weights is None else list(weights)
        if len(weights) != len(retrievers) or any(
            isinstance(w, bool) or not isinstance(w, int | float) or w < 0 for w in weights
        ):
            msg = f"weights must be one non-negative number per retriever, got {weights!r}"
            raise InvalidInputError(msg)
        if isinstance(rank_constant, bool) or not isinstance(rank_constant, int) or rank_constant < 1:
            msg = f"rank_constant must be a positive integer, got {rank_constant!r}"
            raise InvalidInputError(msg)
        self.retrievers, self.weights, self.rank_constant = retrievers, weights, rank_constant

    def _plan(self, k: int, options: dict[str, Any]) -> tuple[int, int]:
        k = check_k(k)
        typed = FusionOptions.from_kwargs(**options)
        return k, typed.fetch_k or max(20, 2 * k)

    def search(self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any) -> list[Hit]:
        """The ``k`` best items for ``query`` over every retriever (each filtered by ``filter``)."""
        k, fetch_k = self._plan(k, options)
        rankings = [r.search(query, k=fetch_k, filter=filter) for r in self.retrievers]
        return reciprocal_rank_fusion(rankings, self.weights, k, self.rank_constant)

    async def asearch(
        self, query: str, *, k: int = 4, filter: Filter | FilterNode | None = None, **options: Any
    ) -> list[Hit]:
        """:meth:`search`, asking the retrievers concurrently."""
        k, fetch_k = self._plan(k, options)
        rankings = await asyncio.gather(*(r.asearch(query, k=fetch_k, filter=filter) for r in self.retrievers))
        return reciprocal_rank_fusion(rankings, self.weights, k, self.rank_constant)
