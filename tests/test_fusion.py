"""Reciprocal rank fusion of several retrievers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ragplug.errors import InvalidInputError
from ragplug.retrievers.fusion import FusionOptions, FusionRetriever, reciprocal_rank_fusion
from ragplug.retrievers.late_interaction.base import Hit
from ragplug.retrievers.protocol import Retriever


def _hits(*ids: str, relevance: float = 0.5) -> list[Hit]:
    return [Hit(i, 10.0 - n, {"n": n}, i, relevance=relevance) for n, i in enumerate(ids)]


def test_rrf_counts_items_not_chunks_and_keeps_the_best_relevance() -> None:
    images = _hits("p1", "p2", "p3", relevance=0.4)
    chunk = {"chunk_index": 0}
    text = [
        Hit("p3#0", 5.0, chunk, "t", "p3", 0.9),
        Hit("p3#1", 4.0, chunk, "t", "p3", 0.8),
        *_hits("p1", relevance=0.2),
    ]
    fused = reciprocal_rank_fusion([images, text], [1.0, 1.0], k=3)
    # p1: 1/61 + 1/62; p3: 1/63 + 1/61 (its two chunks are one item, ranked first in the text list); p2: 1/62
    assert [h.id for h in fused] == ["p1", "p3", "p2"]
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 62) and fused[1].score == pytest.approx(1 / 63 + 1 / 61)
    assert [h.relevance for h in fused] == [0.4, 0.9, 0.4]
    assert [h.id for h in reciprocal_rank_fusion([images, text], [0.0, 1.0], k=2)] == ["p3", "p1"]


class _Fixed:
    search_options = FusionOptions  # any SearchOptions class

    def __init__(self, *ids: str) -> None:
        self.ids = ids
        self.asked: list[int] = []

    def search(self, query: str, *, k: int = 4, filter: Any = None, **options: Any) -> list[Hit]:
        self.asked.append(k)
        return _hits(*self.ids)[:k]

    async def asearch(self, query: str, *, k: int = 4, filter: Any = None, **options: Any) -> list[Hit]:
        return self.search(query, k=k, filter=filter)


def test_fusion_retriever_is_a_retriever_and_checks_its_arguments() -> None:
    a, b = _Fixed("x", "y", "z"), _Fixed("z", "w")
    fusion = FusionRetriever([a, b])
    assert isinstance(fusion, Retriever)
    assert [h.id for h in fusion.search("q", k=2)] == ["z", "x"] and a.asked == [20]
    assert [h.id for h in asyncio.run(fusion.asearch("q", k=2, fetch_k=3))] == ["z", "x"]
    with pytest.raises(InvalidInputError, match="two or more"):
        FusionRetriever([a])
    with pytest.raises(InvalidInputError, match="one non-negative number per retriever"):
        FusionRetriever([a, b], weights=[1.0])
    with pytest.raises(InvalidInputError, match="unknown search options"):
        fusion.search("q", mode="exact")
    with pytest.raises(InvalidInputError, match="fetch_k must be a positive integer"):
        fusion.search("q", fetch_k=0)


def test_an_item_found_only_as_a_chunk_is_named_after_the_item() -> None:
    chunk = Hit("p9#1", 3.0, {"page": 9, "parent_id": "p9", "chunk_index": 1, "start_index": 40}, "tail", "p9", 0.7)
    fused = reciprocal_rank_fusion([_hits("p1"), [chunk]], [1.0, 1.0], k=2)
    assert [h.id for h in fused] == ["p1", "p9"]
    assert fused[1].metadata == {"page": 9} and fused[1].parent_id is None and fused[1].text == "tail"
    both = reciprocal_rank_fusion([[chunk], _hits("p9")], [1.0, 1.0], k=1)
    assert both[0].id == "p9" and both[0].metadata == {"n": 0}  # the page's own hit, though ranked second
