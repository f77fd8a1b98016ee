"""One search request resolved from the layers a framework face offers (framework-free).

LangChain users pass ``search_type`` and ``search_kwargs`` (``k``, ``filter``, ``fetch_k``, ``lambda_mult``,
``score_threshold``) to ``as_retriever``, then per-call keywords to ``invoke``; LlamaIndex users pass
``similarity_top_k``, ``filters`` and a query mode. :func:`resolve_search` merges those layers — a later
layer wins key by key: per call > ``search_kwargs`` > the face's own defaults — and validates the result
once: unknown keys, a ``score_threshold`` outside [0, 1], MMR settings without MMR (or MMR from a retriever
that cannot diversify), and search options the retriever does not take are
:class:`~ragplug.errors.InvalidInputError` at once, not a ``TypeError`` at the first query.
:func:`run_search` / :func:`arun_search` then run it on any :class:`~ragplug.retrievers.protocol.Retriever`.

``score_threshold`` applies to :attr:`Hit.relevance` (MaxSim normalised by the query's length, in [0, 1]).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction import Hit
from ragplug.retrievers.late_interaction.base import check_k
from ragplug.retrievers.late_interaction.filters import FilterNode, parse_filter
from ragplug.retrievers.late_interaction.mmr import check_mmr
from ragplug.retrievers.protocol import DiverseRetriever, Retriever

__all__ = ["SEARCH_KEYS", "SearchRequest", "SearchType", "arun_search", "resolve_search", "run_search"]

SearchType = Literal["similarity", "mmr", "similarity_score_threshold"]
#: The keys a search takes besides the store's own search options.
SEARCH_KEYS = ("k", "filter", "fetch_k", "lambda_mult", "score_threshold")


@dataclass(frozen=True)
class SearchRequest:
    """A validated search: what to run and the store options to run it with."""

    search_type: SearchType = "similarity"
    k: int = 4
    filter: FilterNode | None = None
    fetch_k: int = 20
    lambda_mult: float = 0.5
    score_threshold: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


def resolve_search(index: Retriever, search_type: str, *layers: Mapping[str, Any] | None) -> SearchRequest:
    """Merge ``layers`` (later wins, key by key; ``None`` values are unset) and validate the result for the
    retriever ``index``."""
    if search_type not in get_args(SearchType):
        msg = f"search_type must be one of {list(get_args(SearchType))}, got {search_type!r}"
        raise InvalidInputError(msg)
    if search_type == "mmr" and not isinstance(index, DiverseRetriever):
        msg = f"search_type='mmr' needs a retriever that can diversify; {type(index).__name__} cannot"
        raise InvalidInputError(msg)
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update({key: value for key, value in (layer or {}).items() if value is not None})
    options = {key: merged.pop(key) for key in list(merged) if key not in SEARCH_KEYS}
    index.search_options.from_kwargs(**options)  # refuses what the store does not take, naming what it does
    k = check_k(merged.get("k", 4))
    threshold = merged.get("score_threshold")
    if threshold is not None and (
        isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1
    ):
        msg = f"score_threshold must be a number in [0, 1] (a relevance, see Hit.relevance), got {threshold!r}"
        raise InvalidInputError(msg)
    if search_type == "similarity_score_threshold" and threshold is None:
        msg = "search_type='similarity_score_threshold' needs search_kwargs={'score_threshold': <0..1>}"
        raise InvalidInputError(msg)
    mmr_keys = sorted({"fetch_k", "lambda_mult"} & set(merged))
    if mmr_keys and search_type != "mmr":
        msg = f"{mmr_keys} apply to search_type='mmr' only (this search is {search_type!r})"
        raise InvalidInputError(msg)
    fetch_k = merged.get("fetch_k", max(20, k))
    lambda_mult = merged.get("lambda_mult", 0.5)
    check_mmr(k, fetch_k, lambda_mult)
    return SearchRequest(
        search_type,  # type: ignore[arg-type]  # checked against SearchType above
        k,
        parse_filter(merged.get("filter")),
        fetch_k,
        float(lambda_mult),
        None if threshold is None else float(threshold),
        options,
    )


def _keep(request: SearchRequest, hits: list[Hit]) -> list[Hit]:
    if request.score_threshold is None:
        return hits
    return [h for h in hits if h.relevance is not None and h.relevance >= request.score_threshold]


def run_search(index: Retriever, query: str, request: SearchRequest) -> list[Hit]:
    """The hits of ``request`` for ``query``."""
    if request.search_type == "mmr":
        assert isinstance(index, DiverseRetriever)  # checked by resolve_search
        hits = index.search_mmr(
            query,
            k=request.k,
            fetch_k=request.fetch_k,
            lambda_mult=request.lambda_mult,
            filter=request.filter,
            **request.options,
        )
    else:
        hits = index.search(query, k=request.k, filter=request.filter, **request.options)
    return _keep(request, hits)


async def arun_search(index: Retriever, query: str, request: SearchRequest) -> list[Hit]:
    """:func:`run_search` with the index's async search."""
    if request.search_type == "mmr":
        assert isinstance(index, DiverseRetriever)  # checked by resolve_search
        hits = await index.asearch_mmr(
            query,
            k=request.k,
            fetch_k=request.fetch_k,
            lambda_mult=request.lambda_mult,
            filter=request.filter,
            **request.options,
        )
    else:
        hits = await index.asearch(query, k=request.k, filter=request.filter, **request.options)
    return _keep(request, hits)
