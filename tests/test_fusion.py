"""Reciprocal rank fusion of several retrievers, and the text index of a page index it fuses with."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from ragplug.errors import InvalidInputError
from ragplug.retrievers.fusion import FusionOptions, FusionRetriever, reciprocal_rank_fusion
from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore
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


# -- the text index of a page index: texts and metadata read, never the pages' vectors -------------------------
class _Words:
    """A tiny text (or page) encoder: one 8-dim one-hot vector per word, hashed."""

    def __init__(self, name: str) -> None:
        from ragplug.retrievers.late_interaction import EncoderIdentity

        self.identity = EncoderIdentity(name, 8, name)
        self.documents: list[Any] = []

    def _encode(self, text: str) -> np.ndarray:
        words = text.split() or ["?"]
        out = np.zeros((len(words), 8), dtype=np.float32)
        out[np.arange(len(words)), [sum(map(ord, w)) % 8 for w in words]] = 1.0
        return out

    def encode_queries(self, queries: Any) -> list[np.ndarray]:
        return [self._encode(q) for q in queries]

    def encode_documents(self, documents: Any, *, show_progress: bool | None = None) -> list[np.ndarray]:
        self.documents += list(documents)
        return [self._encode(d) for d in documents]


class _NoVectorReads(InMemoryMultiVectorStore):
    """A memory store that fails the test whenever a page's vectors are asked for."""

    def records(self, *, vectors: bool = True) -> Any:
        if vectors:
            raise AssertionError("the pages' vectors were read")
        return super().records(vectors=False)

    def get(self, ids: Any) -> Any:
        raise AssertionError("the pages' vectors were read (get)")


def _page_index(store: InMemoryMultiVectorStore) -> Any:
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    pages = LateInteractionIndex(_Words("pages"), store)
    pages.add(
        ["image one", "image two", "image three"],
        ids=["a.pdf#p1", "a.pdf#p2", "b.png"],
        metadatas=[{"page": 1}, {"page": 2}, {"page": 1}],
        texts=["revenue grew", "   ", "cash fell"],
        parents=["a.pdf", "a.pdf", None],
    )
    return pages


def test_page_text_index_reads_texts_and_metadata_never_vectors(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragplug.retrievers.build import page_text_index
    from ragplug.retrievers.late_interaction.tokens import TokenMatrix

    pages = _page_index(_NoVectorReads())

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a stored vector was decoded")

    monkeypatch.setattr(TokenMatrix, "lifted", refuse)
    monkeypatch.setattr(TokenMatrix, "__getitem__", refuse)
    encoder = _Words("text")
    text = page_text_index(pages, encoder)
    assert encoder.documents == ["revenue grew", "cash fell"]  # the page without text is left out
    monkeypatch.undo()
    got = text.get(text.store.ids())
    assert [(r.id, r.metadata, r.text) for r in got] == [
        ("a.pdf#p1", {"page": 1}, "revenue grew"),
        ("b.png", {"page": 1}, "cash fell"),
    ]
    assert [h.id for h in text.search("cash fell", k=1)] == ["b.png"]


def test_stored_texts_of_a_store_without_a_records_iterator_goes_by_batches() -> None:
    from ragplug.retrievers.build import stored_texts

    class _GetOnly:
        def __init__(self, store: InMemoryMultiVectorStore) -> None:
            self.store, self.asked = store, []

        def ids(self) -> list[str]:
            return self.store.ids()

        def get(self, ids: list[str]) -> list[Any]:
            self.asked.append(len(ids))
            return self.store.get(ids)

    inner = InMemoryMultiVectorStore()
    _page_index(inner)
    store = _GetOnly(inner)
    assert [r.text for r in stored_texts(store, batch_size=2)] == ["revenue grew", "   ", "cash fell"]  # type: ignore[arg-type]
    assert store.asked == [2, 1]
    records = list(stored_texts(inner))
    assert [(r.id, r.parent_id) for r in records] == [("a.pdf#p1", "a.pdf"), ("a.pdf#p2", "a.pdf"), ("b.png", None)]
    assert all(r.vectors.shape == (0, 8) and r.vectors.dtype == np.float32 for r in records)
