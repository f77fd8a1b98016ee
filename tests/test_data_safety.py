"""No stored data lost or shared: chunk ids never overwrite user ids, results never alias stored metadata,
metadata keys never merge, a user's own fields are never overwritten, and every bad input is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from ragplug.errors import DuplicateIdError, FilterError, InvalidInputError
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, LateInteractionIndex, Record, compile_filter

LONG = " ".join(f"scrooge counted coin number {i} in the cold counting house." for i in range(12))


@pytest.fixture
def index(stanford_encoder: ColBERTEncoder) -> LateInteractionIndex:
    return LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=16, overlap=4))


def test_chunks_of_an_upserted_item_never_overwrite_a_users_record(index: LateInteractionIndex) -> None:
    index.add(["a note of my own"], ids=["doc#0"], metadatas=[{"mine": True}])
    with pytest.raises(DuplicateIdError, match="doc#0"):
        index.add([LONG], ids=["doc"], upsert=True)
    with pytest.raises(DuplicateIdError, match="doc#0"):
        index.add([LONG], ids=["doc"])
    (note,) = index.get(["doc#0"])
    assert note.text == "a note of my own" and note.metadata == {"mine": True}
    assert len(index) == 1


def test_an_item_id_may_not_replace_another_items_chunk(index: LateInteractionIndex) -> None:
    index.add([LONG], ids=["doc"])
    n_chunks = len(index.get(["doc"]))
    with pytest.raises(DuplicateIdError, match="chunk of item 'doc'"):
        index.add(["replacement"], ids=["doc#1"], upsert=True)
    assert len(index.get(["doc"])) == n_chunks
    index.add([LONG + " more"], ids=["doc"], upsert=True)  # its own chunks are replaced as before
    assert all(r.metadata["parent_id"] == "doc" for r in index.get(["doc"]))


def test_results_share_no_nested_metadata_with_the_store(index: LateInteractionIndex) -> None:
    index.add(["marley was dead"], ids=["m"], metadatas=[{"tags": ["ghost"], "who": {"name": "Marley"}}])
    hit = index.search("marley", k=1)[0]
    hit.metadata["tags"].append("changed")
    hit.metadata["who"]["name"] = "changed"
    (record,) = index.get(["m"])
    record.metadata["tags"].append("changed too")
    _, stored = index.store.metadata()[0]
    stored["tags"].clear()
    assert index.get(["m"])[0].metadata == {"tags": ["ghost"], "who": {"name": "Marley"}}
    assert index.search("marley", k=1)[0].metadata == {"tags": ["ghost"], "who": {"name": "Marley"}}


def test_metadata_given_by_the_caller_is_copied_on_the_way_in() -> None:
    store = InMemoryMultiVectorStore()
    meta = {"tags": ["a"]}
    store.add([Record("x", np.eye(2, dtype=np.float32), meta)])
    meta["tags"].append("b")
    assert store.get(["x"])[0].metadata == {"tags": ["a"]}


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({1: "a", "1": "b"}, "non-string key 1"),
        ({"nested": {2: "x"}}, "non-string key 2"),
        ({"x": float("nan")}, "finite"),
        ({"x": [1, float("inf")]}, "finite"),
        ({"x": object()}, "must be JSON"),
        ({"x": {1, 2}}, "must be JSON"),
        ({"x": "bad \udc80 text"}, "lone surrogate"),
        ({"bad \ud800": 1}, "lone surrogate"),
    ],
)
def test_metadata_must_be_json_with_string_keys(metadata: dict, match: str) -> None:
    store = InMemoryMultiVectorStore()
    with pytest.raises(InvalidInputError, match=match):
        store.add([Record("x", np.eye(2, dtype=np.float32), metadata)])
    assert len(store) == 0


def test_deeply_nested_metadata_is_refused() -> None:
    deep: dict = {}
    node = deep
    for _ in range(5000):
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidInputError, match="nested more than"):
        InMemoryMultiVectorStore().add([Record("x", np.eye(2, dtype=np.float32), deep)])


def test_a_users_score_field_is_kept_and_ours_has_a_reserved_name(stanford_encoder: ColBERTEncoder) -> None:
    pytest.importorskip("langchain_core")
    from ragplug.plugins.langchain import ColBERTRetriever

    retriever = ColBERTRetriever.from_texts(
        ["marley was dead", "bob was a clerk"], metadatas=[{"score": "A+"}, {"score": 3}], model=stanford_encoder
    )
    docs = retriever.invoke("marley", k=2)
    assert {d.metadata["score"] for d in docs} == {"A+", 3}
    assert all(isinstance(d.metadata["ragplug_score"], float) for d in docs)
    with pytest.raises(InvalidInputError, match="reserved"):
        retriever.add_texts(["tim"], metadatas=[{"ragplug_score": 1.0}])


@pytest.mark.parametrize(
    "vectors",
    [[["a", "b"]], [[1.0, 2.0], [3.0]], "text", [[{"x": 1}]], None],
)
def test_vectors_that_are_not_a_numeric_matrix_are_refused(vectors: object) -> None:
    store = InMemoryMultiVectorStore()
    with pytest.raises(InvalidInputError, match="matrix"):
        store.add([Record("x", vectors)])  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="matrix"):
        store.add([Record("y", np.eye(2, dtype=np.float32))]) or store.search(vectors)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["\udc80", "ok \ud800 then"])
def test_lone_surrogates_in_documents_queries_and_ids_are_refused(index: LateInteractionIndex, bad: str) -> None:
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        index.add([bad + " marley"])
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        index.add(["marley"], ids=[bad])
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        index.add(["marley"], texts=[bad])
    index.add(["marley was dead"], ids=["m"])
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        index.search(bad)
    assert [r.id for r in index.get(["m"])] == ["m"]


def test_unknown_search_options_and_modes_are_clear_errors(index: LateInteractionIndex) -> None:
    index.add(["marley was dead"], ids=["m"])
    with pytest.raises(InvalidInputError, match=r"unknown search options \['score_threshold'\]"):
        index.search("marley", score_threshold=0.5)
    with pytest.raises(InvalidInputError, match="unknown search mode 'fastest'"):
        index.search("marley", mode="fastest")
    with pytest.raises(InvalidInputError, match="unknown search mode"):
        InMemoryMultiVectorStore(mode="fastest")


def test_ids_that_are_not_a_list_are_clear_errors() -> None:
    store = InMemoryMultiVectorStore()
    store.add([Record("x", np.eye(2, dtype=np.float32))])
    for bad in (None, 3, "x", b"x"):
        with pytest.raises(InvalidInputError, match="list of strings"):
            store.delete(bad)  # type: ignore[arg-type]
    assert "x" in store


def test_a_filter_nested_thousands_deep_is_a_filter_error() -> None:
    node: dict = {"a": 1}
    for _ in range(5000):
        node = {"$and": [node]}
    with pytest.raises(FilterError, match="nested more than"):
        compile_filter(node)
    node = {"a": 1}
    for _ in range(30):
        node = {"$or": [node, {"b": 2}]}
    assert compile_filter(node)({"a": 1})


def test_fuzzed_filters_raise_only_filter_errors() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    keys = st.sampled_from(["a", "b", "$and", "$or", "$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$x"])
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
    filters = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys | st.text(max_size=3), inner, max_size=3),
        max_leaves=12,
    )
    metadata = st.dictionaries(st.sampled_from(["a", "b", "c"]), scalars | st.lists(scalars, max_size=2), max_size=3)

    @hypothesis.settings(max_examples=400, deadline=None, database=None)
    @hypothesis.given(filter=filters, meta=metadata)
    def check(filter: object, meta: dict) -> None:
        try:
            predicate = compile_filter(filter)  # type: ignore[arg-type]
        except FilterError:
            return
        assert predicate(meta) in (True, False)

    check()


def test_lone_surrogates_reaching_the_encoder_or_the_reranker_are_refused(stanford_encoder: ColBERTEncoder) -> None:
    from ragplug.retrievers.late_interaction import rerank

    with pytest.raises(InvalidInputError, match="lone surrogate"):
        stanford_encoder.encode_queries(["ok", "bad \udc80"])
    with pytest.raises(InvalidInputError, match="document 1 holds a lone surrogate"):
        rerank(stanford_encoder, "marley", ["fine", "bad \udc80"])
