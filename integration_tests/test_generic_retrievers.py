"""One retriever class per framework over the framework-free Retriever protocol: any engine plugs in."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest
from llama_index.core.schema import QueryBundle

from ragplug.errors import InvalidInputError
from ragplug.plugins.langchain import ColBERTRetriever, RagplugRetriever
from ragplug.plugins.llamaindex import RagplugRetriever as LIRetriever
from ragplug.retrievers.late_interaction.base import Hit, SearchOptions
from ragplug.retrievers.protocol import DiverseRetriever, Retriever, WritableRetriever

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class _Options(SearchOptions):
    exact_word: bool = False


class WordCount:
    """A read-only engine that is not a LateInteractionIndex: ranks fixed pages by shared words."""

    search_options = _Options

    def __init__(self) -> None:
        self.pages = {
            "p1": ("", {"source": "scan.pdf", "page": 1, "page_count": 2}),  # an image-only page
            "p2": ("The clerk was paid fifteen shillings.", {"source": "scan.pdf", "page": 2, "page_count": 2}),
        }

    def search(self, query: str, *, k: int = 4, filter: Any = None, **options: Any) -> list[Hit]:
        _Options.from_kwargs(**options)
        words = set(query.lower().split())
        scored = [(len(words & set(t.lower().split())), i) for i, (t, _) in self.pages.items()]
        ranked = sorted(scored, key=lambda s: (-s[0], s[1]))[:k]
        return [
            Hit(i, float(s), dict(self.pages[i][1]), self.pages[i][0], relevance=min(1.0, s / 3)) for s, i in ranked
        ]

    async def asearch(self, query: str, *, k: int = 4, filter: Any = None, **options: Any) -> list[Hit]:
        return await asyncio.to_thread(self.search, query, k=k, filter=filter, **options)


def test_any_retriever_plugs_into_both_frameworks() -> None:
    engine = WordCount()
    assert isinstance(engine, Retriever) and not isinstance(engine, DiverseRetriever | WritableRetriever)
    docs = RagplugRetriever(index=engine, search_kwargs={"k": 2, "exact_word": True}).invoke("clerk paid")
    assert [d.id for d in docs] == ["p2", "p1"] and docs[0].metadata["relevance_score"] == pytest.approx(2 / 3)
    assert docs[1].page_content == "[page 1 of 2 of scan.pdf: an image without extractable text]"
    nodes = LIRetriever(engine, similarity_top_k=1).retrieve(QueryBundle("clerk paid"))
    assert nodes[0].node.node_id == "p2" and nodes[0].score == pytest.approx(2 / 3)
    assert ColBERTRetriever is RagplugRetriever


def test_what_an_engine_cannot_do_is_refused_up_front() -> None:
    engine = WordCount()
    with pytest.raises(InvalidInputError, match="needs a retriever that can diversify; WordCount cannot"):
        RagplugRetriever(index=engine, search_type="mmr")
    with pytest.raises(InvalidInputError, match=r"unknown search options \['mode'\]"):
        RagplugRetriever(index=engine, search_kwargs={"mode": "exact"})
    with pytest.raises(InvalidInputError, match="WordCount is read-only"):
        RagplugRetriever(index=engine).delete(["p1"])
    with pytest.raises(InvalidInputError, match="must be a ragplug Retriever"):
        RagplugRetriever(index=object())
    with pytest.raises(InvalidInputError, match="must be a ragplug Retriever"):
        LIRetriever(object())  # type: ignore[arg-type]
