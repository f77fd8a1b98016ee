"""The store contract, one table of cases run against every backend: in memory and in Postgres (embedded).

Each test gets a fresh store: a new ``InMemoryMultiVectorStore`` (float32, or the float16 codec), or a
new collection in the session's embedded PostgreSQL. Scores are compared with a tolerance: Postgres keeps
token matrices as fp16. The lossy residual codec has its own tests (``tests/test_codecs.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ragplug.errors import (
    DuplicateIdError,
    EncoderMismatchError,
    FilterError,
    InvalidInputError,
    StoreError,
    UnknownIdError,
)
from ragplug.retrievers.late_interaction import (
    EncoderIdentity,
    InMemoryMultiVectorStore,
    MultiVectorStore,
    Record,
    load_store,
)

pytestmark = pytest.mark.integration

DIM = 16
IDENTITY = EncoderIdentity("tiny", DIM, "f00d")
BACKENDS = ["memory", "memory-float16", "postgres"]


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(n: int, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    return [Record(f"doc{i}", _unit(rng, 1 + i % 5), {"i": i, "even": i % 2 == 0}, f"text {i}") for i in range(n)]


def _maxsim(query: np.ndarray, vectors: np.ndarray) -> float:
    return float((query @ vectors.T).max(axis=1).sum())


def _pg(dsn: str, collection: str | None = None):
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    return PgVectorStore(dsn, collection=collection or f"c-{uuid.uuid4().hex[:10]}")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(backend: str, request: pytest.FixtureRequest):
    """A factory of fresh, empty stores of the backend under test (a second call: another store)."""
    made = []

    def make(collection: str | None = None) -> MultiVectorStore:
        if backend.startswith("memory"):
            store: MultiVectorStore = InMemoryMultiVectorStore(codec=backend.partition("-")[2] or None)
        else:
            store = _pg(request.getfixturevalue("postgres_dsn"), collection)
        made.append(store)
        return store

    yield make
    for store in made:
        close = getattr(store, "close", None)
        if close is not None:
            close()


@pytest.fixture
def store(make_store) -> MultiVectorStore:
    s = make_store()
    s.add(_records(30))
    return s


# -- writes and reads -------------------------------------------------------------------------------
def test_add_get_len_contains(store: MultiVectorStore) -> None:
    assert len(store) == 30 and "doc3" in store and "nope" not in store
    assert store.ids()[:3] == ["doc0", "doc1", "doc2"]
    originals = {r.id: r for r in _records(30)}
    got = store.get(["doc7", "doc2"])
    assert [r.id for r in got] == ["doc7", "doc2"]
    for record in got:
        np.testing.assert_allclose(record.vectors, originals[record.id].vectors, atol=2e-3)
        assert record.metadata == originals[record.id].metadata and record.text == originals[record.id].text


def test_add_refuses_existing_ids_and_changes_nothing(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(1)
    with pytest.raises(DuplicateIdError):
        store.add([Record("new", _unit(rng, 2)), Record("doc3", _unit(rng, 2))])
    with pytest.raises(DuplicateIdError):
        store.add([Record("x", _unit(rng, 2)), Record("x", _unit(rng, 2))])
    assert len(store) == 30 and "new" not in store


def test_upsert_replaces_whole_items_and_never_another_items_records(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(2)
    store.upsert([Record("doc3", _unit(rng, 2), {"v": 2}), Record("fresh", _unit(rng, 1))])
    assert store.get(["doc3"])[0].metadata == {"v": 2} and len(store) == 31
    store.upsert([Record(f"long#{n}", _unit(rng, 2), {"n": n}, parent_id="long") for n in range(3)])
    assert [r.id for r in store.get(["long"])] == ["long#0", "long#1", "long#2"] and "long" in store
    store.upsert([Record("long#0", _unit(rng, 2), parent_id="long")])  # the item's other chunks go too
    assert [r.id for r in store.get(["long"])] == ["long#0"]
    with pytest.raises(DuplicateIdError, match="chunk of item 'long'"):
        store.upsert([Record("long#0", _unit(rng, 2))])  # an item id naming another item's chunk
    store.add([Record("doc#0", _unit(rng, 1), {"mine": True})])
    with pytest.raises(DuplicateIdError, match="doc#0"):
        store.upsert([Record("doc#0", _unit(rng, 1), parent_id="doc"), Record("doc#1", _unit(rng, 1), parent_id="doc")])
    assert store.get(["doc#0"])[0].metadata == {"mine": True}
    store.upsert([Record("long", _unit(rng, 2))])  # a plain record replaces an item stored as chunks
    assert [r.id for r in store.get(["long"])] == ["long"] and "long#0" not in store


def test_delete_records_and_items(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(3)
    store.add([Record(f"p#{n}", _unit(rng, 2), parent_id="p") for n in range(4)])
    with pytest.raises(UnknownIdError):
        store.delete(["doc1", "ghost"])
    assert "doc1" in store and len(store) == 34
    store.delete(["p#1"])
    assert [r.id for r in store.get(["p"])] == ["p#0", "p#2", "p#3"]
    store.delete(["p", "doc1"])
    assert "p" not in store and "doc1" not in store and len(store) == 29
    with pytest.raises(UnknownIdError):
        store.get(["p"])


def test_bad_input_is_a_clear_error(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(4)
    cases = [
        ([Record("a", _unit(rng, 2, DIM + 1))], InvalidInputError, "dimension"),
        ([Record("a", np.full((1, DIM), np.nan, np.float32))], InvalidInputError, "NaN"),
        ([Record("", _unit(rng, 1))], InvalidInputError, "non-empty"),
        ([Record("a", _unit(rng, 1), {1: "x"})], InvalidInputError, "non-string key"),
        ([Record("a", _unit(rng, 1), text="nul\x00")], InvalidInputError, "NUL"),
        ([Record("a", _unit(rng, 1), parent_id="a")], InvalidInputError, "itself"),
        ([], InvalidInputError, "no records"),
    ]
    for records, error, match in cases:
        with pytest.raises(error, match=match):
            store.add(records)
    query = _unit(rng, 2)
    with pytest.raises(InvalidInputError, match="k must be"):
        store.search(query, k=0)
    with pytest.raises(InvalidInputError, match="dimension"):
        store.search(_unit(rng, 2, DIM + 2), k=2)
    with pytest.raises(FilterError):
        store.search(query, k=2, filter={"i": {"$regex": "x"}})
    with pytest.raises(InvalidInputError, match="unknown search options"):
        store.search_options.from_kwargs(score_threshold=0.5)
    for bad in (None, "doc1", 3):
        with pytest.raises(InvalidInputError):
            store.delete(bad)  # type: ignore[arg-type]
    assert len(store) == 30


def test_encoder_binding(make_store) -> None:
    store = make_store()
    store.bind_encoder(IDENTITY)
    store.bind_encoder(IDENTITY)
    assert store.encoder == IDENTITY and store.dim == DIM
    with pytest.raises(EncoderMismatchError):
        store.bind_encoder(EncoderIdentity("other", DIM, "beef"))
    with pytest.raises(StoreError):
        store.bind_encoder(EncoderIdentity("tiny", DIM * 2, "f00d"))


# -- search -----------------------------------------------------------------------------------------
def test_search_ranks_by_maxsim(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(5)
    records = {r.id: r for r in _records(30)}
    for _ in range(5):
        query = _unit(rng, 3)
        reference = sorted(records, key=lambda i: -_maxsim(query, records[i].vectors))
        hits = store.search(query, k=5)
        assert [h.id for h in hits] == reference[:5]
        for hit in hits:
            assert hit.score == pytest.approx(_maxsim(query, records[hit.id].vectors), abs=1e-2)
            assert hit.metadata == records[hit.id].metadata and hit.text == records[hit.id].text


def test_search_batch_matches_single_searches_and_async_twins(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(6)
    queries = [_unit(rng, 2) for _ in range(3)]
    batch = store.search_batch(queries, k=4, filter={"even": True})
    assert batch == [store.search(q, k=4, filter={"even": True}) for q in queries]

    async def run() -> None:
        assert await store.asearch_batch(queries, k=4, filter={"even": True}) == batch
        await store.aadd([Record("async", _unit(rng, 2))])
        assert [r.id for r in await store.aget(["async"])] == ["async"]
        await store.aupsert([Record("async", _unit(rng, 1), {"v": 2})])
        await store.adelete(["async"])

    asyncio.run(run())
    assert "async" not in store and len(store) == 30


FILTER_DOCS = [
    {"id": 0, "year": 1843, "tag": "ghost", "lang": "en", "flag": True},
    {"id": 1, "year": 1844, "tag": "miser", "lang": "en", "flag": 1},
    {"id": 2, "year": 1850, "tag": "ghost", "lang": "fr", "n": 1.5},
    {"id": 3, "tag": "feast", "nested": {"a": [1, 2]}},
    {"id": 4, "year": "unknown", "tag": ["a", "b"], "name": "Émile"},
    {"id": 5, "year": 1843.0, "tag": "ghost", "name": "Zoë"},
]
FILTERS = [
    {"tag": "ghost"},
    {"tag": {"$ne": "ghost"}},
    {"tag": {"$in": ["ghost", "feast"]}},
    {"tag": {"$nin": ["ghost", "feast"]}},
    {"lang": {"$nin": ["fr"]}},
    {"year": 1843},
    {"year": {"$gt": 1843}},
    {"year": {"$gte": 1843, "$lt": 1850}},
    {"year": {"$gt": "1800"}},
    {"flag": 1},
    {"flag": True},
    {"flag": {"$ne": True}},
    {"tag": {"$eq": ["a", "b"]}},
    {"nested": {"$eq": {"a": [1, 2]}}},
    {"n": {"$lte": 1.5}},
    {"name": {"$gt": "Z"}},
    {"name": {"$lt": "Zz"}},
    {"$or": [{"tag": "miser"}, {"lang": "fr"}]},
    {"$and": [{"tag": "ghost"}, {"year": {"$gt": 1843}}]},
    {"$or": [{"$and": [{"tag": "ghost"}, {"lang": "en"}]}, {"tag": "feast"}]},
    {"missing": {"$nin": [1]}},
    {"missing": {"$ne": 1}, "tag": "ghost"},
]


def test_filters_mean_the_same_on_every_backend(make_store) -> None:
    from ragplug.retrievers.late_interaction import compile_filter

    store = make_store()
    rng = np.random.default_rng(7)
    store.add([Record(f"f{d['id']}", _unit(rng, 2), d) for d in FILTER_DOCS])
    query = _unit(rng, 2)
    for filter_ in FILTERS:
        expected = {f"f{d['id']}" for d in FILTER_DOCS if compile_filter(filter_)(d)}
        got = {h.id for h in store.search(query, k=10, filter=filter_)}
        assert got == expected, filter_


def test_a_filter_that_can_never_match_the_stored_values_is_an_error(
    store: MultiVectorStore, caplog: pytest.LogCaptureFixture
) -> None:
    query = _unit(np.random.default_rng(11), 2)
    with pytest.raises(FilterError, match=r"\$gt '2' on field 'i' can never match: stored records hold number"):
        store.search(query, k=3, filter={"i": {"$gt": "2"}})
    with pytest.raises(FilterError, match=r"field 'i' can never match.*the bound is string"):
        store.search(query, k=3, filter={"$or": [{"i": "1"}, {"i": {"$in": ["2"]}}]})
    assert store.search(query, k=3, filter={"i": -1}) == []  # a comparable bound that matches nothing
    with caplog.at_level("DEBUG", logger="ragplug.retrievers.late_interaction.filters"):
        assert store.search(query, k=3, filter={"stave": {"$gte": 3}}) == []  # no record has it: allowed
    assert "['stave'] that no stored record has" in caplog.text
    assert len(store.search(query, k=3, filter={"stave": {"$ne": 3}})) == 3


def test_a_selective_filter_still_returns_k_results(make_store) -> None:
    store = make_store()
    rng = np.random.default_rng(8)
    store.add([Record(f"d{i}", _unit(rng, 4), {"rare": i % 100 == 0}) for i in range(1000)])  # 1% match
    hits = store.search(_unit(rng, 3), k=8, filter={"rare": True})
    assert len(hits) == 8 and all(h.metadata["rare"] for h in hits)


def test_results_do_not_alias_stored_metadata(store: MultiVectorStore) -> None:
    store.upsert([Record("m", _unit(np.random.default_rng(9), 2), {"tags": ["a"]})])
    store.get(["m"])[0].metadata["tags"].append("x")
    hit = store.search(store.get(["m"])[0].vectors, k=1)[0]
    hit.metadata["tags"].append("y")
    assert store.get(["m"])[0].metadata == {"tags": ["a"]}


# -- persistence and concurrency --------------------------------------------------------------------
def test_persistence(backend: str, make_store, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    store = make_store()
    store.bind_encoder(IDENTITY)
    store.add(_records(12))
    store.add([Record("p#0", _unit(np.random.default_rng(1), 2), parent_id="p")])
    if backend.startswith("memory"):
        store.save(tmp_path / "s")  # type: ignore[attr-defined]
        reopened = load_store(tmp_path / "s", encoder=IDENTITY)
    else:
        reopened = _pg(request.getfixturevalue("postgres_dsn"), store.collection)  # type: ignore[attr-defined]
        reopened.bind_encoder(IDENTITY)
    assert reopened.ids() == store.ids() and reopened.encoder == IDENTITY
    assert [r.id for r in reopened.get(["p"])] == ["p#0"]
    query = _unit(np.random.default_rng(2), 2)
    assert [h.id for h in reopened.search(query, k=5)] == [h.id for h in store.search(query, k=5)]
    with pytest.raises(EncoderMismatchError):
        reopened.bind_encoder(EncoderIdentity("other", DIM, "beef"))


def test_concurrent_writers_lose_nothing(store: MultiVectorStore) -> None:
    def write(n: int) -> None:
        rng = np.random.default_rng(100 + n)
        store.add([Record(f"w{n}-{j}", _unit(rng, 2)) for j in range(5)])
        store.upsert([Record(f"item{n % 4}#{j}", _unit(rng, 1), parent_id=f"item{n % 4}") for j in range(1 + n % 3)])
        store.search(_unit(rng, 2), k=3)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(16)))
    ids = set(store.ids())
    assert {f"w{n}-{j}" for n in range(16) for j in range(5)} <= ids
    for item in range(4):
        chunks = [r.id for r in store.get([f"item{item}"])]
        assert chunks == [f"item{item}#{j}" for j in range(len(chunks))]  # one upsert's chunks, never a mix


@pytest.mark.parametrize("name", ["x'); DROP TABLE ragplug_records; --", 'quo"te', "semi;colon", "ünï"])
def test_sql_looking_names_ids_and_filter_keys_are_data(make_store, backend: str, name: str) -> None:
    store = make_store(collection=name) if backend == "postgres" else make_store()
    rng = np.random.default_rng(10)
    store.add([Record(name, _unit(rng, 2), {name: name}), Record("other", _unit(rng, 2), {"k": 1})])
    assert [h.id for h in store.search(_unit(rng, 2), k=5, filter={name: name})] == [name]
    assert [r.id for r in store.get([name])] == [name]
    store.delete([name])
    assert store.ids() == ["other"]


def test_an_id_is_a_record_or_an_item_never_both(store: MultiVectorStore, tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(12)
    with pytest.raises(InvalidInputError, match="both as records and as the parent"):
        store.add([Record("p", _unit(rng, 1)), Record("p#0", _unit(rng, 1), parent_id="p")])
    with pytest.raises(InvalidInputError, match="both as records and as the parent"):
        store.upsert([Record("c", _unit(rng, 1), parent_id="p"), Record("d", _unit(rng, 1), parent_id="c")])
    store.add([Record("x", _unit(rng, 1), parent_id="q")])  # "q" is now an item stored as chunks
    with pytest.raises(DuplicateIdError):
        store.upsert([Record("q", _unit(rng, 1), parent_id="z")])  # "q" as a chunk of another item
    with pytest.raises(DuplicateIdError):
        store.add([Record("q", _unit(rng, 1), parent_id="z")])
    with pytest.raises(DuplicateIdError):
        store.add([Record("y", _unit(rng, 1), parent_id="x")])  # a chunk of a chunk
    assert [r.id for r in store.get(["q"])] == ["x"] and len(store) == 31
    if backend.startswith("memory"):
        store.save(tmp_path / "s")  # type: ignore[attr-defined]
        assert len(load_store(tmp_path / "s")) == 31  # what was saved loads


def test_deletes_and_upserts_of_one_item_never_leave_half_an_item(store: MultiVectorStore) -> None:
    rng = np.random.default_rng(13)
    stop = False

    def upserts() -> None:
        n = 0
        while not stop:
            n += 1
            store.upsert([Record(f"p#{j}", _unit(rng, 1), {"n": n}, parent_id="p") for j in range(1 + n % 3)])

    with ThreadPoolExecutor(1) as pool:
        writer = pool.submit(upserts)
        try:
            for _ in range(60):
                with contextlib.suppress(UnknownIdError):
                    store.delete(["p"])
                try:
                    chunks = store.get(["p"])
                except UnknownIdError:
                    continue
                versions = {r.metadata["n"] for r in chunks}
                assert len(versions) == 1 and len(chunks) == 1 + versions.pop() % 3  # one whole upsert
        finally:
            stop = True
            writer.result(timeout=60)


def test_records_copy_between_backends_without_re_encoding(store: MultiVectorStore, make_store) -> None:
    from ragplug.retrievers.late_interaction import copy_records

    store.bind_encoder(IDENTITY)
    store.add([Record(f"c#{n}", _unit(np.random.default_rng(14), 2), {"n": n}, parent_id="c") for n in range(2)])
    target = InMemoryMultiVectorStore()
    assert copy_records(store, target, batch_size=7) == 32
    assert target.ids() == store.ids() and target.encoder == IDENTITY
    assert [r.id for r in target.get(["c"])] == ["c#0", "c#1"]
    back = make_store()
    assert copy_records(target, back) == 32
    query = _unit(np.random.default_rng(15), 2)
    assert [h.id for h in back.search(query, k=5)] == [h.id for h in store.search(query, k=5)]


def test_records_without_vectors_read_no_vector(
    store: MultiVectorStore, make_store, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``records(vectors=False)`` (what a page index's text index reads) gives every record's id, parent,
    text and metadata, and decodes no vector: each ``vectors`` is an empty matrix that no store accepts."""
    store.add([Record(f"c#{n}", _unit(np.random.default_rng(16), 2), {"n": n}, parent_id="c") for n in range(2)])
    want = [(r.id, r.parent_id, r.text, r.metadata) for r in store.records()]  # type: ignore[attr-defined]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a vector was read")

    if backend == "postgres":
        from ragplug.retrievers.late_interaction.stores.postgres import coded

        monkeypatch.setattr(coded, "decode_row", refuse)
    else:
        from ragplug.retrievers.late_interaction.tokens import TokenMatrix

        monkeypatch.setattr(TokenMatrix, "lifted", refuse)
        monkeypatch.setattr(TokenMatrix, "__getitem__", refuse)
    got = list(store.records(vectors=False))  # type: ignore[attr-defined]
    monkeypatch.undo()
    assert [(r.id, r.parent_id, r.text, r.metadata) for r in got] == want and len(got) == 32
    assert all(r.vectors.shape == (0, DIM) and r.vectors.dtype == np.float32 for r in got)
    with pytest.raises(InvalidInputError, match="non-empty 2-D matrix"):
        make_store().add(got[:1])
