"""The graph store contract, one table-driven suite run against every backend.

Backends: ``MemoryGraphStore()`` (in process), ``MemoryGraphStore(folder)`` (saved at every write) and
``PgGraphStore`` on the session's embedded PostgreSQL (a fresh graph name per test, with quotes and spaces
in it, so every statement's identifiers and values are exercised). The graph used throughout:

- document ``d1``: ``p1`` mentions alice (twice) and bob and states alice -knows-> bob; ``p2`` mentions
  alice, bob and carol and states bob -co-occurs-> alice (weight 2) and alice -> carol;
- document ``d2``: ``p3`` mentions bob and dave and states bob -> dave;
- entity vectors: alice, bob, carol, dave along the four axes; a synonym edge carol ~ dave.

Deleting ``d1`` must leave bob (``d2`` mentions him) and remove alice and carol with carol's synonym edge
and vector.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragplug.errors import (
    DuplicateIdError,
    EncoderMismatchError,
    InvalidInputError,
    StoreCorruptedError,
    StoreError,
    UnknownIdError,
)
from ragplug.retrievers.graph.model import (
    SYNONYM,
    Community,
    Entity,
    Extraction,
    GraphBatch,
    GraphIdentity,
    GraphSnapshot,
    GraphStats,
    GraphStore,
    Passage,
    Relation,
)
from ragplug.retrievers.graph.stores import MemoryGraphStore

pytestmark = pytest.mark.integration

DIM = 4
AXES = {"alice": 0, "bob": 1, "carol": 2, "dave": 3}
IDENTITY = GraphIdentity(extractor="rules", extractor_settings={"min_len": 2}, encoder={"dim": DIM, "fingerprint": "f"})


def unit(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v


def ent(key: str) -> Entity:
    return Entity(key=key, name=key.title(), kind="name")


def passage_batch(
    doc_id: str,
    passages: dict[str, tuple[list[str], list[Relation]]],
    vectors: dict[str, np.ndarray] | None = None,
    synonyms: list[Relation] | None = None,
) -> GraphBatch:
    ps = [Passage(id=pid, text=f"text of {pid}", doc_id=doc_id, metadata={"n": i}) for i, pid in enumerate(passages)]
    ex = [Extraction(pid, tuple(ent(k) for k in keys), tuple(rels)) for pid, (keys, rels) in passages.items()]
    return GraphBatch(ps, ex, dict(vectors or {}), list(synonyms or []))


def d1() -> GraphBatch:
    return passage_batch(
        "d1",
        {
            "p1": (["alice", "alice", "bob"], [Relation("alice", "bob", "knows", 1.0)]),
            "p2": (["alice", "bob", "carol"], [Relation("bob", "alice", "co-occurs", 2.0), Relation("alice", "carol")]),
        },
        {k: unit(AXES[k]) for k in ("alice", "bob", "carol")},
    )


def d2() -> GraphBatch:
    return passage_batch(
        "d2",
        {"p3": (["bob", "dave"], [Relation("bob", "dave")])},
        {"dave": unit(AXES["dave"]), "bob": unit(0)},  # bob is stored: his vector stays the first one
        [Relation("carol", "dave", SYNONYM, 0.9)],
    )


def content(snap: GraphSnapshot) -> dict[str, Any]:
    """A snapshot as sets of names, independent of row order."""
    keys, pids = snap.entity_keys, snap.passage_ids
    return {
        "passages": set(pids),
        "entities": set(keys),
        "names": dict(zip(keys, snap.entity_names, strict=True)),
        "mentions": {
            (keys[e], pids[p], float(c)) for (e, p), c in zip(snap.mentions, snap.mention_counts, strict=True)
        },
        "relations": {
            (frozenset((keys[a], keys[b])), round(float(w), 5), label)
            for (a, b), w, label in zip(snap.relations, snap.relation_weights, snap.relation_labels, strict=True)
        },
    }


def edge(a: str, b: str, weight: float, label: str) -> tuple[frozenset[str], float, str]:
    return frozenset((a, b)), weight, label


# -- the backends -----------------------------------------------------------------------------------
@dataclass
class Backend:
    name: str
    make: Callable[[], Any]  # a store object on this test's graph (the same graph at every call)
    persistent: bool
    inject: Callable[[Any, pytest.MonkeyPatch], None]  # makes the next write fail after it has changed things
    opened: list[Any] = field(default_factory=list)


def _fail(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected failure")


def _fail_in_prune(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(store), "_prune", _fail)


def _fail_in_save(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import ragplug.retrievers.graph.stores.memory as memory

    monkeypatch.setattr(memory, "write_folder", _fail)


@pytest.fixture(params=["memory", "folder", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "memory":
        shared = MemoryGraphStore()
        yield Backend("memory", lambda: shared, False, _fail_in_prune)
    elif request.param == "folder":
        folder = tmp_path / "graph"
        yield Backend("folder", lambda: MemoryGraphStore(folder), True, _fail_in_save)
    else:
        from ragplug.retrievers.graph.stores import PgGraphStore

        dsn = request.getfixturevalue("postgres_dsn")
        name = f"graph \"{uuid.uuid4().hex[:8]}\" 'of' tests"
        b = Backend("postgres", lambda: None, True, _fail_in_prune)

        def make() -> Any:
            store = PgGraphStore(dsn, name=name, schema="graph tests", pool_size=2)
            b.opened.append(store)
            return store

        b.make = make
        yield b
        for store in b.opened:
            store.close()


@pytest.fixture
def store(backend: Backend) -> Any:
    return backend.make()


@pytest.fixture
def filled(store: Any) -> Any:
    store.bind(IDENTITY)
    store.add(d1())
    store.add(d2())
    return store


# -- the contract -----------------------------------------------------------------------------------
def test_the_store_satisfies_the_protocol(store: Any) -> None:
    assert isinstance(store, GraphStore)
    assert store.kind in {"memory", "postgres"}
    assert store.version == 0 and len(store) == 0 and store.identity is None
    assert store.documents() == [] and store.communities() == ([], None)


def test_add_then_read_passages_entities_vectors_and_snapshot(filled: Any) -> None:
    assert len(filled) == 3
    assert filled.documents() == ["d1", "d2"]
    assert filled.document_passages(["d2", "d1"]) == ["p3", "p1", "p2"]
    got = filled.passages(["p3", "p1"])
    assert [p.id for p in got] == ["p3", "p1"]
    assert got[1] == Passage(id="p1", text="text of p1", doc_id="d1", metadata={"n": 0})
    assert filled.entities(["dave", "nobody", "alice"]) == [ent("dave"), ent("alice")]
    vectors = filled.entity_vectors(["bob", "dave", "nobody"])
    assert set(vectors) == {"bob", "dave"}
    np.testing.assert_array_equal(vectors["bob"], unit(AXES["bob"]))  # the first vector stays
    snap = filled.snapshot()
    assert snap.version == filled.version == 2  # d1, d2 (bind records how, it changes no passage)
    assert content(snap) == {
        "passages": {"p1", "p2", "p3"},
        "entities": {"alice", "bob", "carol", "dave"},
        "names": {"alice": "Alice", "bob": "Bob", "carol": "Carol", "dave": "Dave"},
        "mentions": {
            ("alice", "p1", 2.0),
            ("bob", "p1", 1.0),
            ("alice", "p2", 1.0),
            ("bob", "p2", 1.0),
            ("carol", "p2", 1.0),
            ("bob", "p3", 1.0),
            ("dave", "p3", 1.0),
        },
        "relations": {
            edge("alice", "bob", 3.0, "co-occurs,knows"),
            edge("alice", "carol", 1.0, "co-occurs"),
            edge("bob", "dave", 1.0, "co-occurs"),
            edge("carol", "dave", 0.9, SYNONYM),
        },
    }
    assert snap.passage_ids == ["p1", "p2", "p3"]  # in the order they were added
    assert snap.entity_keys == ["alice", "bob", "carol", "dave"]


def test_stats(filled: Any) -> None:
    filled.add(passage_batch("d3", {"p4": ([], [])}))
    assert filled.stats() == GraphStats(
        documents=3, passages=4, entities=4, relations=4, mentions=7, communities=0, empty_passages=1
    )


def test_duplicate_passage_ids_are_refused_and_change_nothing(filled: Any) -> None:
    before, version = content(filled.snapshot()), filled.version
    again = passage_batch("d9", {"p9": (["erin"], []), "p3": (["frank"], [])})
    with pytest.raises(DuplicateIdError, match="p3"):
        filled.add(again)
    with pytest.raises(DuplicateIdError, match="p8"):
        filled.add(twice(passage_batch("d9", {"p8": ([], [])})))
    assert content(filled.snapshot()) == before and filled.version == version
    assert filled.entities(["erin", "frank"]) == [] and "d9" not in filled.documents()


def twice(batch: GraphBatch) -> GraphBatch:
    """The batch with each passage (and its extraction) twice."""
    return GraphBatch(batch.passages * 2, batch.extractions * 2)


def test_replace_documents_replaces_a_documents_passages(filled: Any) -> None:
    version = filled.version
    new = passage_batch("d1", {"p1": (["erin", "bob"], [Relation("erin", "bob")])}, {"erin": unit(0)})
    with pytest.raises(DuplicateIdError):
        filled.add(new)  # without replace_documents, p1 exists
    filled.add(new, replace_documents=True)
    assert filled.version == version + 1
    assert filled.document_passages(["d1"]) == ["p1"]
    assert filled.passages(["p1"])[0].text == "text of p1"
    assert sorted(filled.snapshot().entity_keys) == ["bob", "dave", "erin"]  # alice and carol: only in old d1
    assert content(filled.snapshot())["relations"] == {
        edge("bob", "erin", 1.0, "co-occurs"),
        edge("bob", "dave", 1.0, "co-occurs"),
    }
    assert filled.nearest_entities(unit(0)[None], 1) == [[("erin", pytest.approx(1.0))]]


def test_delete_removes_only_what_the_document_alone_supported(filled: Any) -> None:
    version = filled.version
    filled.delete_documents(["d1"])
    assert filled.version == version + 1
    assert filled.documents() == ["d2"] and len(filled) == 1
    with pytest.raises(UnknownIdError):
        filled.passages(["p1"])
    got = content(filled.snapshot())
    assert got["entities"] == {"bob", "dave"}  # bob is also mentioned by d2; alice and carol went
    assert got["mentions"] == {("bob", "p3", 1.0), ("dave", "p3", 1.0)}
    assert got["relations"] == {edge("bob", "dave", 1.0, "co-occurs")}  # carol's synonym edge went with her
    assert set(filled.entity_vectors(["alice", "bob", "carol", "dave"])) == {"bob", "dave"}
    assert [key for key, _ in filled.nearest_entities(unit(AXES["carol"])[None], 5)[0]] == ["bob", "dave"]
    filled.delete_documents(["d2"])
    assert filled.stats() == GraphStats(0, 0, 0, 0, 0, 0, 0)


def test_unknown_ids(filled: Any) -> None:
    with pytest.raises(UnknownIdError, match="nope"):
        filled.passages(["p1", "nope"])
    with pytest.raises(UnknownIdError, match="nope"):
        filled.document_passages(["nope"])
    with pytest.raises(UnknownIdError, match="nope"):
        filled.delete_documents(["d1", "nope"])
    assert filled.documents() == ["d1", "d2"] and len(filled) == 3  # d1 was not deleted either


def test_bind_refuses_another_identity(store: Any) -> None:
    store.bind(IDENTITY)
    store.bind(IDENTITY)  # the same one: fine
    assert store.identity == IDENTITY
    other = GraphIdentity(extractor="llm", extractor_settings={"min_len": 2}, encoder=IDENTITY.encoder)
    with pytest.raises(EncoderMismatchError, match="extractor"):
        store.bind(other)
    wider = GraphIdentity(extractor="rules", extractor_settings={"min_len": 2}, encoder={"dim": 8, "fingerprint": "f"})
    with pytest.raises(EncoderMismatchError, match="dim"):
        store.bind(wider)
    with pytest.raises(InvalidInputError, match="dimension 3"):  # the identity's encoder says 4
        store.add(passage_batch("d", {"p": (["x"], [])}, {"x": np.ones(3, dtype=np.float32)}))


def test_persistence(backend: Backend, filled: Any) -> None:
    if not backend.persistent:
        pytest.skip("an in-process store without a folder keeps nothing")
    filled.set_communities([Community("c0", ("alice", "bob"), ("p1",), "A and B", "summary")], filled.version)
    reopened = backend.make()
    assert reopened is not filled
    assert reopened.version == filled.version == 2
    assert reopened.identity == IDENTITY
    assert content(reopened.snapshot()) == content(filled.snapshot())
    assert reopened.snapshot().passage_ids == ["p1", "p2", "p3"]
    assert reopened.passages(["p2"]) == filled.passages(["p2"])
    assert reopened.communities() == filled.communities()
    np.testing.assert_array_equal(reopened.entity_vectors(["dave"])["dave"], unit(AXES["dave"]))
    reopened.delete_documents(["d2"])
    assert backend.make().version == 3


def test_a_write_that_fails_half_way_changes_nothing(backend: Backend, filled: Any, monkeypatch: Any) -> None:
    before, version = content(filled.snapshot()), filled.version
    bad_second = passage_batch("d1", {"p7": (["erin"], []), "p8": ([], [])})
    bad_second.passages[1] = Passage(id="p8", text=None, doc_id="d1")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="p8"):
        filled.add(bad_second, replace_documents=True)
    # the old d1 is removed first, then the new batch names an entity nothing defines
    dangling = passage_batch("d1", {"p1": (["erin"], [Relation("erin", "nobody")])})
    with pytest.raises(InvalidInputError, match="nobody"):
        filled.add(dangling, replace_documents=True)
    assert content(filled.snapshot()) == before and filled.version == version
    backend.inject(filled, monkeypatch)
    with pytest.raises((RuntimeError, StoreError)):
        filled.add(passage_batch("d1", {"p1": (["erin"], [])}), replace_documents=True)
    with pytest.raises((RuntimeError, StoreError)):
        filled.delete_documents(["d1"])
    monkeypatch.undo()
    assert content(filled.snapshot()) == before and filled.version == version
    assert filled.document_passages(["d1"]) == ["p1", "p2"]
    if backend.persistent:
        assert content(backend.make().snapshot()) == before


def test_version_increases_at_every_write(store: Any) -> None:
    seen = [store.version]
    store.add(d1())
    seen.append(store.version)
    store.add(d2())
    seen.append(store.version)
    store.add(passage_batch("d1", {"p1": ([], [])}), replace_documents=True)
    seen.append(store.version)
    store.delete_documents(["d2"])
    seen.append(store.version)
    assert seen == sorted(set(seen)) and len(seen) == 5


def test_nearest_entities_on_unit_vectors(filled: Any) -> None:
    query = np.stack([unit(0), np.array([0.0, 0.6, 0.8, 0.0], dtype=np.float32), unit(3) * 5])
    got = filled.nearest_entities(query, 2)
    assert [[k for k, _ in row] for row in got] == [["alice", "bob"], ["carol", "bob"], ["dave", "alice"]]
    assert [s for _, s in got[1]] == pytest.approx([0.8, 0.6], abs=1e-6)
    assert got[0][0][1] == pytest.approx(1.0, abs=1e-6) and got[2][0][1] == pytest.approx(1.0, abs=1e-6)
    assert got[0][1][1] == pytest.approx(0.0, abs=1e-6)  # ties at 0 broken by key: alice < bob < ...
    assert len(filled.nearest_entities(unit(1)[None], 10)[0]) == 4
    with pytest.raises(InvalidInputError, match="dimension"):
        filled.nearest_entities(np.ones((1, 3), dtype=np.float32), 2)
    with pytest.raises(InvalidInputError, match="k must be"):
        filled.nearest_entities(unit(0)[None], 0)


def test_nearest_entities_of_an_empty_graph(store: Any) -> None:
    assert store.nearest_entities(np.ones((2, 3), dtype=np.float32), 3) == [[], []]


def test_communities_round_trip(filled: Any) -> None:
    communities = [
        Community("c1", ("bob", "dave"), ("p3",), "Bob and Dave", "They co-occur.", level=0, rank=2.5),
        Community("c0", ("alice", "bob", "carol"), ("p1", "p2"), "Alice's circle", "Three friends.", level=1),
    ]
    version = filled.version
    filled.set_communities(communities, version)
    assert filled.communities() == (communities, version)
    assert filled.version == version  # the graph did not change
    assert filled.stats().communities == 2
    filled.delete_documents(["d2"])
    assert filled.communities() == (communities, version)  # kept, now stale: version moved on
    filled.set_communities([], filled.version)
    assert filled.communities() == ([], filled.version)
    with pytest.raises(InvalidInputError, match="version"):
        filled.set_communities(communities, filled.version + 1)
    with pytest.raises(DuplicateIdError, match="c1"):
        filled.set_communities([communities[0], communities[0]], filled.version)


async def test_async_twins(store: Any) -> None:
    try:
        await store.aadd(d1())
        await store.aadd(d2())
        assert [p.id for p in await store.apassages(["p3", "p1"])] == ["p3", "p1"]
        snap = await store.asnapshot()
        assert snap.version == 2 and set(snap.entity_keys) == {"alice", "bob", "carol", "dave"}
        await store.adelete_documents(["d1"])
        assert set((await store.asnapshot()).entity_keys) == {"bob", "dave"}
        with pytest.raises(UnknownIdError):
            await store.adelete_documents(["d1"])
        results = await asyncio.gather(*(store.apassages(["p3"]) for _ in range(4)))
        assert all(r[0].id == "p3" for r in results)
    finally:  # an async pool left open hangs the event loop's shutdown (its workers ignore the cancellation)
        if hasattr(store, "aclose"):
            await store.aclose()


def test_two_threads_adding_disjoint_documents_both_land(backend: Backend) -> None:
    stores = [backend.make(), backend.make()] if backend.name == "postgres" else [backend.make()] * 2
    if backend.name == "folder":  # one writer per folder: threads share one store object
        stores = [stores[0], stores[0]]
    errors: list[BaseException] = []

    def write(store: Any, prefix: str) -> None:
        try:
            for i in range(5):
                store.add(passage_batch(f"{prefix}{i}", {f"{prefix}{i}p": ([f"{prefix}-e", "shared"], [])}))
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(s, p)) for s, p in zip(stores, ("a", "b"), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    final = backend.make()
    assert len(final) == 10 and final.version == 10
    assert final.stats().entities == 3  # a-e, b-e, shared
    assert final.snapshot().mentions.shape == (20, 2)


# -- validation: the same input refused by every backend ---------------------------------------------
def _batch(**change: Any) -> GraphBatch:
    b = passage_batch("dv", {"v1": (["x", "y"], [Relation("x", "y")]), "v2": (["y"], [])}, {"x": unit(0)})
    for key, value in change.items():
        setattr(b, key, value)
    return b


INVALID: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("not a batch", lambda: [Passage("a", "b", "c")], InvalidInputError, "GraphBatch"),
    ("fewer extractions", lambda: _batch(extractions=_batch().extractions[:1]), InvalidInputError, "2 passages, 1"),
    (
        "extraction of another passage",
        lambda: _batch(extractions=list(reversed(_batch().extractions))),
        InvalidInputError,
        "'v2'",
    ),
    (
        "relation to an unknown entity",
        lambda: _batch(extractions=[Extraction("v1", (ent("x"),), (Relation("x", "ghost"),)), Extraction("v2")]),
        InvalidInputError,
        "ghost",
    ),
    (
        "synonym to an unknown entity",
        lambda: _batch(synonyms=[Relation("x", "phantom", SYNONYM, 0.9)]),
        InvalidInputError,
        "phantom",
    ),
    ("vector of an unknown entity", lambda: _batch(entity_vectors={"spook": unit(0)}), InvalidInputError, "spook"),
    (
        "vectors of two dimensions",
        lambda: _batch(entity_vectors={"x": unit(0), "y": unit(0, 5)}),
        InvalidInputError,
        "'y' has dimension 5",
    ),
    (
        "a non-finite vector",
        lambda: _batch(entity_vectors={"x": np.array([np.nan, 1, 0, 0], dtype=np.float32)}),
        InvalidInputError,
        "non-finite",
    ),
    ("a zero vector", lambda: _batch(entity_vectors={"x": np.zeros(4)}), InvalidInputError, "zeros"),
    (
        "a non-string passage id",
        lambda: _batch(passages=[Passage(7, "t", "dv"), _batch().passages[1]]),  # type: ignore[arg-type]
        InvalidInputError,
        "7",
    ),
    (
        "a non-string entity key",
        lambda: _batch(extractions=[Extraction("v1", (Entity(3, "x"),)), Extraction("v2")]),  # type: ignore[arg-type]
        InvalidInputError,
        "3",
    ),
    ("duplicate passage ids", lambda: twice(_batch()), DuplicateIdError, "v1"),
    (
        "a NUL character",
        lambda: _batch(passages=[Passage("v1", "a\x00b", "dv"), _batch().passages[1]]),
        InvalidInputError,
        "NUL",
    ),
    (
        "metadata that is not JSON",
        lambda: _batch(passages=[Passage("v1", "t", "dv", {"when": object()}), _batch().passages[1]]),
        InvalidInputError,
        "when",
    ),
    (
        "a non-finite weight",
        lambda: _batch(
            extractions=[Extraction("v1", (ent("x"), ent("y")), (Relation("x", "y", weight=np.inf),)), Extraction("v2")]
        ),
        InvalidInputError,
        "weight must be finite",
    ),
    (
        "a synonym of an entity with itself",
        lambda: _batch(synonyms=[Relation("x", "x", SYNONYM)]),
        InvalidInputError,
        "itself",
    ),
]


@pytest.mark.parametrize(("case", "make", "error", "match"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_batches_are_refused(
    store: Any, case: str, make: Callable[[], Any], error: type[Exception], match: str
) -> None:
    store.add(passage_batch("d0", {"p0": (["z"], [])}, {"z": unit(2)}))
    before, version = content(store.snapshot()), store.version
    with pytest.raises(error, match=match):
        store.add(make())
    assert content(store.snapshot()) == before and store.version == version


def test_a_batch_may_name_stored_entities(filled: Any) -> None:
    filled.add(
        passage_batch(
            "d3", {"p4": (["erin"], [Relation("erin", "alice")])}, synonyms=[Relation("erin", "dave", SYNONYM)]
        )
    )
    assert edge("alice", "erin", 1.0, "co-occurs") in content(filled.snapshot())["relations"]
    filled.delete_documents(["d1"])  # alice goes, and the relation that p4 stated about her with her
    assert content(filled.snapshot())["relations"] == {
        edge("bob", "dave", 1.0, "co-occurs"),
        edge("dave", "erin", 1.0, SYNONYM),
    }


# -- the folder -------------------------------------------------------------------------------------
def _saved(tmp_path: Path) -> Path:
    folder = tmp_path / "g"
    store = MemoryGraphStore(folder)
    store.add(d1())
    return folder


def test_a_folder_of_another_format_version_is_refused(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(StoreCorruptedError, match=r"manifest\.json.*version 99"):
        MemoryGraphStore(folder)


@pytest.mark.parametrize("damage", ["manifest", "graph json", "missing vectors", "checksum"])
def test_a_corrupted_folder_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    folder = _saved(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    graph, vectors = folder / manifest["files"]["graph"], folder / manifest["files"]["vectors"]
    if damage == "manifest":
        (folder / "manifest.json").write_text("{not json")
        name = "manifest.json"
    elif damage == "graph json":
        graph.write_bytes(b"[1, 2")
        name = graph.name
    elif damage == "missing vectors":
        vectors.unlink()
        name = vectors.name
    else:
        data = bytearray(vectors.read_bytes())
        data[-1] ^= 0xFF
        vectors.write_bytes(bytes(data))
        name = vectors.name
    with pytest.raises(StoreCorruptedError, match=name.replace(".", r"\.")):
        MemoryGraphStore(folder)


def test_a_folder_keeps_one_generation_of_files(tmp_path: Path) -> None:
    folder = _saved(tmp_path)
    store = MemoryGraphStore(folder)
    store.add(d2())
    store.delete_documents(["d1"])
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert names == sorted(["manifest.json", *manifest["files"].values()])
    assert MemoryGraphStore.open(folder).version == 3
    copy = tmp_path / "copy"
    store.save(copy)
    assert content(MemoryGraphStore.load(copy).snapshot()) == content(store.snapshot())
    store.add(d1())
    assert MemoryGraphStore.load(copy).version == 3 and MemoryGraphStore.load(folder).version == 4
    with pytest.raises(StoreError, match="no graph"):
        MemoryGraphStore.open(tmp_path / "empty")


# -- Postgres ---------------------------------------------------------------------------------------
def test_postgres_identifiers_with_quotes_and_spaces(postgres_dsn: str) -> None:
    from ragplug.retrievers.graph.stores import PgGraphStore

    schema = "we\"ird schema 'x'"
    a = PgGraphStore(postgres_dsn, name='a "graph"; DROP TABLE x; --', schema=schema, create_schema=False)
    b = PgGraphStore(postgres_dsn, name="another graph", schema=schema)
    try:
        with pytest.raises(StoreError, match="create_schema"):
            a.add(d1())
        a.create_schema()
        a.add(d1())
        b.add(passage_batch("d2", {"p3": (["bob"], [])}))
        assert a.documents() == ["d1"] and b.documents() == ["d2"]  # graphs sharing tables stay apart
        assert a.stats().entities == 3 and b.stats().entities == 1
        b.delete_documents(["d2"])
        assert len(a) == 2
    finally:
        a.close()
        b.close()


def test_postgres_tables_of_another_version_are_refused(postgres_dsn: str) -> None:
    import psycopg
    from psycopg import sql

    from ragplug.retrievers.graph.stores import PgGraphStore

    schema = f"old {uuid.uuid4().hex[:6]}"
    PgGraphStore(postgres_dsn, schema=schema).create_schema()
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("UPDATE {} SET version = 99").format(sql.Identifier(schema, "ragplug_graph_schema_version"))
        )
    store = PgGraphStore(postgres_dsn, schema=schema)
    try:
        with pytest.raises(StoreCorruptedError, match="version 99"):
            store.add(d1())
    finally:
        store.close()


def test_postgres_connection_errors_name_the_target() -> None:
    from ragplug.retrievers.graph.stores import PgGraphStore

    store = PgGraphStore("postgresql://someone:secret@127.0.0.1:1/nowhere")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1") as info:
        store.add(d1())
    assert "secret" not in str(info.value)
