"""LateInteractionIndex: chunk bookkeeping, add/upsert/delete by id, persistence, and relevance with MiniLM."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragplug.errors import DuplicateIdError, EncoderMismatchError, InvalidInputError, UnknownIdError
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, LateInteractionIndex


def test_relevance_with_real_minilm(minilm_encoder: ColBERTEncoder, facts: dict[str, str]) -> None:
    index = LateInteractionIndex(minilm_encoder)
    index.add(list(facts.values()), ids=list(facts))
    questions = {
        "How long had Marley been dead?": "marley",
        "How much money did the clerk earn?": "cratchit",
        "Which child used a crutch?": "tim",
        "Who held a Christmas party for his apprentices?": "fezziwig",
        "What is the capital of France?": "paris",
    }
    for question, answer in questions.items():
        assert index.search(question, k=1)[0].id == answer, question
    batch = index.search_batch(list(questions), k=2)
    assert [hits[0].id for hits in batch] == list(questions.values())


def test_long_documents_are_chunked_with_parent_bookkeeping(stanford_encoder: ColBERTEncoder) -> None:
    index = LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=16, overlap=4))
    long_text = " ".join(f"scrooge counted coin number {i} in the cold counting house." for i in range(12))
    index.add([long_text, "marley was dead"], ids=["long", "short"], metadatas=[{"src": "a"}, {"src": "b"}])
    (short,) = index.get(["short"])
    assert short.metadata == {"src": "b"} and short.text == "marley was dead"
    chunks = index.get(["long"])
    assert len(chunks) > 3
    for n, chunk in enumerate(chunks):
        assert chunk.id == f"long#{n}"
        assert chunk.metadata == {
            "src": "a",
            "parent_id": "long",
            "chunk_index": n,
            "start_index": chunk.metadata["start_index"],
        }
        assert long_text[chunk.metadata["start_index"] :].startswith(chunk.text)
    index.delete(["long#1"])  # one chunk
    assert len(index.get(["long"])) == len(chunks) - 1
    index.add(["short again"], ids=["long"], upsert=True)  # upsert by parent id replaces every chunk
    assert [r.id for r in index.get(["long"])] == ["long"]
    index.delete(["long", "short"])
    assert len(index) == 0


def test_index_bad_input(stanford_encoder: ColBERTEncoder) -> None:
    index = LateInteractionIndex(stanford_encoder)
    with pytest.raises(InvalidInputError, match="empty"):
        index.add([])
    with pytest.raises(InvalidInputError, match="whitespace"):
        index.add(["fine", "   "])
    with pytest.raises(InvalidInputError, match="2 items but 1 ids"):
        index.add(["a", "b"], ids=["x"])
    with pytest.raises(DuplicateIdError):
        index.add(["a", "b"], ids=["x", "x"])
    with pytest.raises(InvalidInputError, match="reserved"):
        index.add(["a"], metadatas=[{"parent_id": "p"}])
    index.add(["marley was dead"], ids=["m"])
    with pytest.raises(DuplicateIdError):
        index.add(["again"], ids=["m"])
    for query in ("", "   ", None):
        with pytest.raises(InvalidInputError):
            index.search(query, k=1)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="k must be"):
        index.search("marley", k=0)
    with pytest.raises(UnknownIdError):
        index.delete(["m", "ghost"])
    assert [r.id for r in index.get(["m"])] == ["m"]  # the failed delete removed nothing


def test_store_dimension_must_match_encoder(stanford_encoder: ColBERTEncoder) -> None:
    with pytest.raises(EncoderMismatchError, match="dim"):
        LateInteractionIndex(stanford_encoder, InMemoryMultiVectorStore(dim=7))


def test_save_and_load(tmp_path: Path, stanford_encoder: ColBERTEncoder, pylate_encoder: ColBERTEncoder) -> None:
    index = LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=8, overlap=2))
    index.add(["marley was dead to begin with, there is no doubt whatever about that", "tiny tim"], ids=["a", "b"])
    index.save(tmp_path / "idx")
    loaded = LateInteractionIndex.load(tmp_path / "idx", stanford_encoder, chunker=index.chunker)
    assert loaded.search("marley", k=3) == index.search("marley", k=3)
    loaded.delete(["a"])  # chunk bookkeeping survived the round trip
    assert [r.id for r in loaded.store.records()] == ["b"]
    with pytest.raises(EncoderMismatchError):
        LateInteractionIndex.load(tmp_path / "idx", pylate_encoder)


async def test_async_search(stanford_encoder: ColBERTEncoder) -> None:
    index = LateInteractionIndex(stanford_encoder)
    await index.aadd(["marley was dead", "tiny tim"], ids=["a", "b"])
    hits = await index.asearch("marley was dead", k=2)
    assert {h.id for h in hits} == {"a", "b"}
    await index.adelete(["a"])
    assert [h.id for h in await index.asearch("marley", k=2)] == ["b"]


def test_a_parent_id_is_an_id_too(stanford_encoder: ColBERTEncoder) -> None:
    index = LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=16, overlap=4))
    long_text = " ".join(f"scrooge counted coin number {i} in the cold counting house." for i in range(6))
    index.add([long_text], ids=["long"])
    before = [r.id for r in index.get(["long"])]
    with pytest.raises(DuplicateIdError, match="long"):
        index.add(["a short text"], ids=["long"])  # would have sat beside the chunks of "long"
    index.add(["plain"], ids=["plain"])
    with pytest.raises(DuplicateIdError, match="plain"):
        index.add([long_text], ids=["plain"])  # its chunks would have been plain#0.. beside "plain"
    assert [r.id for r in index.get(["long"])] == before and [r.id for r in index.get(["plain"])] == ["plain"]


def test_concurrent_writers_keep_the_chunk_bookkeeping_consistent(stanford_encoder: ColBERTEncoder) -> None:
    from concurrent.futures import ThreadPoolExecutor

    index = LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=16, overlap=4))
    texts = [" ".join(f"marley was dead as a door nail, note {i}." for i in range(n)) for n in (1, 3, 6, 9)]

    def write(n: int) -> None:
        index.add([texts[n % 4]], ids=[f"doc{n % 3}"], upsert=True)
        if n % 5 == 0:
            index.delete([f"doc{n % 3}"])
            index.add([texts[0]], ids=[f"doc{n % 3}"], upsert=True)
        index.search("marley", k=3)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(40)))
    stored = {r.id: r for r in index.store.records()}
    for parent in ("doc0", "doc1", "doc2"):
        ids = [r.id for r in index.get([parent])]
        assert ids == [parent] or ids == [f"{parent}#{n}" for n in range(len(ids))], ids  # no stale chunks
    children = {cid for cid, r in stored.items() if "parent_id" in r.metadata}
    assert children == {cid for cid, r in stored.items() if r.parent_id is not None}
    assert all(cid.split("#")[0] in ("doc0", "doc1", "doc2") for cid in stored)


def test_a_failed_upsert_keeps_the_old_chunks(
    stanford_encoder: ColBERTEncoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=16, overlap=4))
    long_text = " ".join(f"scrooge counted coin number {i} in the cold counting house." for i in range(6))
    index.add([long_text], ids=["long"])
    before = [r.id for r in index.get(["long"])]

    def broken(*args: object, **kwargs: object) -> None:
        raise InvalidInputError("the store refused the new records")

    monkeypatch.setattr(index.store, "upsert", broken)
    with pytest.raises(InvalidInputError, match="refused"):
        index.add(["a short replacement"], ids=["long"], upsert=True)
    assert [r.id for r in index.get(["long"])] == before  # nothing was deleted ahead of the failed write
