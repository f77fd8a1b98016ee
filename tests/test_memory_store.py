"""The in-memory multi-vector store: CRUD by id, exact and approximate MaxSim, persistence, bad input."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ragplug.errors import (
    DuplicateIdError,
    EncoderMismatchError,
    FilterError,
    InvalidInputError,
    StoreCorruptedError,
    StoreError,
    UnknownIdError,
)
from ragplug.retrievers.late_interaction import (
    ApproximateConfig,
    EncoderIdentity,
    InMemoryMultiVectorStore,
    MemorySearchOptions,
    Record,
    SearchMode,
)
from ragplug.retrievers.late_interaction.ivf import CentroidIndex
from ragplug.retrievers.late_interaction.maxsim import maxsim_all

DIM = 8


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _records(n: int, seed: int = 0, dim: int = DIM) -> list[Record]:
    rng = np.random.default_rng(seed)
    return [
        Record(f"doc{i}", _unit(rng, int(rng.integers(1, 9)), dim), {"i": i, "even": i % 2 == 0}, f"text {i}")
        for i in range(n)
    ]


def _reference_scores(query: np.ndarray, records: list[Record]) -> dict[str, float]:
    """A deliberately naive MaxSim: one document at a time."""
    return {r.id: float(sum((q @ r.vectors.T).max() for q in query)) for r in records}


@pytest.fixture
def store() -> InMemoryMultiVectorStore:
    s = InMemoryMultiVectorStore()
    s.add(_records(30))
    return s


def test_exact_search_matches_reference(store: InMemoryMultiVectorStore) -> None:
    records = _records(30)
    query = _unit(np.random.default_rng(9), 5)
    ref = _reference_scores(query, records)
    hits = store.search(query, k=30, options=MemorySearchOptions(mode="exact"))
    assert [h.id for h in hits] == sorted(ref, key=lambda i: -ref[i])
    for hit in hits:
        assert hit.score == pytest.approx(ref[hit.id], abs=1e-5)
        assert hit.text == f"text {hit.metadata['i']}"


def test_blocked_scoring_matches_unblocked(monkeypatch: pytest.MonkeyPatch) -> None:
    from ragplug.retrievers.late_interaction import maxsim

    records = _records(50, seed=3)
    vectors = np.concatenate([r.vectors for r in records])
    lengths = np.array([len(r.vectors) for r in records])
    starts = np.cumsum(lengths) - lengths
    query = _unit(np.random.default_rng(4), 3)
    whole = maxsim_all(query, vectors, starts, lengths)
    monkeypatch.setattr(maxsim, "BLOCK_TOKENS", 7)  # many small blocks, documents never split
    np.testing.assert_allclose(maxsim.maxsim_all(query, vectors, starts, lengths), whole, atol=1e-6)
    docs = np.array([7, 3, 41, 3, 0])
    views = maxsim.maxsim_subset(query, vectors, starts, lengths, docs)
    monkeypatch.setattr(maxsim, "VIEW_LIMIT", 0)  # the gathered path
    np.testing.assert_allclose(maxsim.maxsim_subset(query, vectors, starts, lengths, docs), views, atol=1e-6)
    np.testing.assert_allclose(views, whole[docs], atol=1e-5)


def test_k_and_filter(store: InMemoryMultiVectorStore) -> None:
    query = _unit(np.random.default_rng(1), 4)
    hits = store.search(query, k=5, filter={"even": True})
    assert len(hits) == 5 and all(h.metadata["even"] for h in hits)
    ref = _reference_scores(query, [r for r in _records(30) if r.metadata["even"]])
    assert [h.id for h in hits] == sorted(ref, key=lambda i: -ref[i])[:5]
    few = store.search(query, k=5, filter={"i": {"$in": [3, 4]}})
    assert sorted(h.id for h in few) == ["doc3", "doc4"]
    assert store.search(query, k=5, filter={"i": {"$gt": 1000}}) == []
    with pytest.raises(FilterError):
        store.search(query, k=5, filter={"i": {"$like": 3}})


def test_add_upsert_get_delete(store: InMemoryMultiVectorStore) -> None:
    assert len(store) == 30 and "doc3" in store
    new = Record("doc3", np.ones((2, DIM), np.float32) / np.sqrt(DIM), {"i": 99}, "replaced")
    with pytest.raises(DuplicateIdError, match="doc3"):
        store.add([new])
    store.upsert([new])
    (got,) = store.get(["doc3"])
    assert got.text == "replaced" and got.metadata == {"i": 99}
    np.testing.assert_allclose(got.vectors, new.vectors)
    store.delete(["doc3", "doc10"])
    assert len(store) == 29 - 1 and "doc3" not in store
    query = _unit(np.random.default_rng(2), 3)
    remaining = [r for r in _records(30) if r.id not in ("doc3", "doc10")]
    ref = _reference_scores(query, remaining)
    assert [h.id for h in store.search(query, k=28)] == sorted(ref, key=lambda i: -ref[i])


def test_failed_calls_change_nothing(store: InMemoryMultiVectorStore) -> None:
    before = store.ids()
    with pytest.raises(UnknownIdError, match="nope"):
        store.delete(["doc1", "nope"])
    with pytest.raises(DuplicateIdError):
        store.add([Record("x", np.ones((1, DIM), np.float32)), Record("x", np.ones((1, DIM), np.float32))])
    with pytest.raises(InvalidInputError, match="dimension"):
        store.add([Record("y", np.ones((1, DIM), np.float32)), Record("z", np.ones((1, DIM + 1), np.float32))])
    with pytest.raises(InvalidInputError, match="NaN"):
        store.upsert([Record("doc1", np.full((1, DIM), np.nan, np.float32))])
    with pytest.raises(InvalidInputError, match="JSON"):
        store.add([Record("w", np.ones((1, DIM), np.float32), {"bad": object()})])
    assert store.ids() == before


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.search(np.ones((1, DIM), np.float32), k=0), InvalidInputError),
        (lambda s: s.search(np.ones((1, DIM), np.float32), k=-1), InvalidInputError),
        (lambda s: s.search(np.ones((1, DIM), np.float32), k=2.5), InvalidInputError),
        (lambda s: s.search(np.ones((0, DIM), np.float32), k=1), InvalidInputError),
        (lambda s: s.search(np.ones((2, DIM + 1), np.float32), k=1), InvalidInputError),
        (lambda s: s.add([]), InvalidInputError),
        (lambda s: s.add([Record("", np.ones((1, DIM), np.float32))]), InvalidInputError),
        (lambda s: s.add([Record("e", np.ones((0, DIM), np.float32))]), InvalidInputError),
        (lambda s: s.get(["missing"]), UnknownIdError),
        (lambda s: s.delete("doc1"), InvalidInputError),
        (lambda s: s.delete(["doc1", "doc1"]), DuplicateIdError),
    ],
)
def test_bad_input(store: InMemoryMultiVectorStore, call, error) -> None:
    with pytest.raises(error):
        call(store)
    assert len(store) == 30


def test_empty_store_search_returns_nothing() -> None:
    assert InMemoryMultiVectorStore(dim=DIM).search(np.ones((1, DIM), np.float32), k=3) == []


def _clustered_corpus(n_families: int, seed: int = 0) -> tuple[list[Record], np.ndarray]:
    """Families of 10 documents sharing 6 specific vectors, plus tokens drawn from 64 shared topics.

    A query made from a family's vectors has that family as its unambiguous exact top 10.
    """
    rng = np.random.default_rng(seed)
    topics = _unit(rng, 64, 32)
    families = np.stack([_unit(rng, 6, 32) for _ in range(n_families)])
    out = []
    for f in range(n_families):
        for j in range(10):
            shared = topics[rng.choice(64, size=int(rng.integers(4, 12)))]
            vecs = np.concatenate([families[f], shared])
            vecs = vecs + 0.05 * rng.standard_normal(vecs.shape).astype(np.float32)  # noise norm ~0.3
            out.append(Record(f"d{f * 10 + j}", vecs / np.linalg.norm(vecs, axis=1, keepdims=True), {"g": j % 3}))
    return out, families


def test_approximate_search_recall_against_exact() -> None:
    records, families = _clustered_corpus(200)
    store = InMemoryMultiVectorStore(approximate=ApproximateConfig(n_probe=4, n_candidates=40))
    store.add(records)
    rng = np.random.default_rng(5)
    recalls = []
    for q in range(20):
        family = families[int(rng.integers(len(families)))]
        query = family + 0.05 * rng.standard_normal(family.shape).astype(np.float32)
        exact = {h.id for h in store.search(query, k=10, options=MemorySearchOptions(mode="exact"))}
        approx = store.search(
            query,
            k=10,
            options=MemorySearchOptions(mode="approximate"),
            filter={"g": {"$in": [0, 1, 2]}} if q % 2 else None,
        )
        recalls.append(len(exact & {h.id for h in approx}) / 10)
        exact_scores = {
            h.id: h.score for h in store.search(query, k=len(records), options=MemorySearchOptions(mode="exact"))
        }
        for hit in approx:  # approximate hits carry exact MaxSim scores
            assert hit.score == pytest.approx(exact_scores[hit.id], abs=1e-4)
    assert np.mean(recalls) >= 0.95
    # The knob: with one probe and the minimum of candidates, recall drops; probing everything restores it.
    query = families[0] + 0.05 * rng.standard_normal(families[0].shape).astype(np.float32)
    exact_top = [h.id for h in store.search(query, k=10, options=MemorySearchOptions(mode="exact"))]
    wide = [
        h.id
        for h in store.search(
            query, k=10, options=MemorySearchOptions(mode="approximate", n_probe=4096, n_candidates=2000)
        )
    ]
    assert wide == exact_top


def test_approximate_index_follows_adds_and_deletes() -> None:
    records, families = _clustered_corpus(30, seed=1)
    store = InMemoryMultiVectorStore(mode=SearchMode.APPROXIMATE)
    store.add(records[:200])
    store.build_index()
    store.add(records[200:])  # families 20..29 arrive after the centroids were fitted
    store.delete([f"d{i}" for i in range(0, 300, 3)])
    hits = store.search(families[25], k=5)
    assert {int(h.id[1:]) // 10 for h in hits} == {25}
    assert all(int(h.id[1:]) % 3 != 0 for h in hits)


def test_auto_mode_switches_on_size_once_the_background_index_is_ready() -> None:
    store = InMemoryMultiVectorStore(approximate_min_tokens=100)
    store.add(_records(5))
    query = _unit(np.random.default_rng(9), 3)
    assert store._resolve_mode(None) is SearchMode.EXACT and store.index_status == "none"
    store.add(_records(60, seed=2)[5:])
    exact = store.search(query, k=5, options=MemorySearchOptions(mode="exact"))
    assert store.search(query, k=5) == exact  # served exactly while the index is fitted in the background
    assert store.index_status in ("building", "ready")
    assert store.wait_for_index(timeout=60) and store.index_status == "ready"
    assert store._resolve_mode(None) is SearchMode.APPROXIMATE
    assert len(store.search(query, k=5)) == 5


def _blocking(monkeypatch: pytest.MonkeyPatch, target: object, name: str) -> tuple[threading.Event, threading.Event]:
    """Make ``target.name`` wait for a release (so a test can act while it is running)."""
    started, release = threading.Event(), threading.Event()
    real = getattr(target, name)

    def wait_then_run(*args: object, **kwargs: object) -> object:
        started.set()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, wait_then_run)
    return started, release


def test_searches_and_writes_go_on_while_the_index_is_fitted(monkeypatch: pytest.MonkeyPatch) -> None:
    records, families = _clustered_corpus(30, seed=1)
    store = InMemoryMultiVectorStore()
    store.add(records[:200])
    started, release = _blocking(monkeypatch, CentroidIndex, "fit")
    with ThreadPoolExecutor(2) as pool:
        try:
            build = pool.submit(store.build_index)
            assert started.wait(30)
            assert store.index_status == "none"
            search = pool.submit(store.search, families[3], k=3, options=MemorySearchOptions(mode="exact"))
            assert {int(h.id[1:]) // 10 for h in search.result(timeout=10)} == {3}  # not blocked by the fit
            store.add(records[200:])  # families 20..29 arrive while the centroids are being fitted
            store.delete(["d250", "d251"])
        finally:
            release.set()
        build.result(timeout=60)
    assert store.index_status == "ready"
    assert len(store._ivf.codes) == store.n_tokens  # the tokens that arrived meanwhile were coded too
    hits = store.search(families[25], k=5, options=MemorySearchOptions(mode="approximate"))
    assert {int(h.id[1:]) // 10 for h in hits} == {25} and not {"d250", "d251"} & {h.id for h in hits}


def test_searches_go_on_while_the_store_is_saved(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: InMemoryMultiVectorStore
) -> None:
    import ragplug.retrievers.late_interaction.stores.folder as folder

    started, release = _blocking(monkeypatch, folder, "_sha256")
    query = _unit(np.random.default_rng(4), 2)
    with ThreadPoolExecutor(2) as pool:
        try:
            save = pool.submit(store.save, tmp_path / "s")
            assert started.wait(30)
            assert len(pool.submit(store.search, query, k=3).result(timeout=10)) == 3
            store.add([Record("late", _unit(np.random.default_rng(5), 2))])
        finally:
            release.set()
        save.result(timeout=60)
    loaded = InMemoryMultiVectorStore.load(tmp_path / "s")
    assert len(loaded) == 30 and "late" not in loaded  # the snapshot taken when save() began
    assert len(store) == 31


def test_n_candidates_per_search_is_used_as_given(
    monkeypatch: pytest.MonkeyPatch, store: InMemoryMultiVectorStore
) -> None:
    import ragplug.retrievers.late_interaction.twostage as twostage

    rescored: list[int] = []
    real = twostage.maxsim_subset

    def counting(query, vectors, starts, lengths, docs):  # type: ignore[no-untyped-def]
        rescored.append(len(docs))
        return real(query, vectors, starts, lengths, docs)

    monkeypatch.setattr(twostage, "maxsim_subset", counting)
    query = _unit(np.random.default_rng(4), 2)
    store.search(query, k=2, options=MemorySearchOptions(mode="approximate", n_candidates=3))
    store.search(
        query, k=2, options=MemorySearchOptions(mode="approximate")
    )  # default: the store's setting (256), capped by the corpus
    assert rescored == [3, 30]
    with pytest.raises(InvalidInputError, match="at least k"):
        store.search(query, k=5, options=MemorySearchOptions(mode="approximate", n_candidates=4))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(InvalidInputError, match="n_probe"):
            MemorySearchOptions(mode="approximate", n_probe=bad)


def test_approximate_config_is_validated() -> None:
    with pytest.raises(InvalidInputError, match="n_probe"):
        ApproximateConfig(n_probe=0)
    with pytest.raises(InvalidInputError, match="n_centroids"):
        ApproximateConfig(n_centroids=0)


IDENTITY = EncoderIdentity("tiny", DIM, "abc123")


def test_save_load_roundtrip(tmp_path: Path, store: InMemoryMultiVectorStore) -> None:
    store.bind_encoder(IDENTITY)
    store.build_index()
    store.save(tmp_path / "idx")
    loaded = InMemoryMultiVectorStore.load(tmp_path / "idx", encoder=IDENTITY)
    assert loaded.ids() == store.ids() and loaded.encoder == IDENTITY
    query = _unit(np.random.default_rng(3), 4)
    for mode in ("exact", "approximate"):
        opts = MemorySearchOptions(mode=mode)
        assert loaded.search(query, k=7, options=opts) == store.search(query, k=7, options=opts)
    # saving again replaces the data files and removes the old ones
    loaded.delete(["doc0"])
    loaded.save(tmp_path / "idx")
    files = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert len([f for f in files if f.startswith("vectors-")]) == 1
    assert not [f for f in files if f.endswith(".tmp")]
    assert len(InMemoryMultiVectorStore.load(tmp_path / "idx")) == 29


def test_load_refuses_other_encoder(tmp_path: Path, store: InMemoryMultiVectorStore) -> None:
    store.bind_encoder(IDENTITY)
    store.save(tmp_path / "idx")
    with pytest.raises(EncoderMismatchError, match="written by encoder 'tiny'"):
        InMemoryMultiVectorStore.load(tmp_path / "idx", encoder=EncoderIdentity("other", DIM, "zzz"))
    with pytest.raises(EncoderMismatchError):
        InMemoryMultiVectorStore.load(tmp_path / "idx", encoder=EncoderIdentity("tiny", DIM * 2, "abc123"))


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


@pytest.mark.parametrize("target", ["vectors", "records"])
def test_truncated_data_file_is_detected(tmp_path: Path, store: InMemoryMultiVectorStore, target: str) -> None:
    store.save(tmp_path / "idx")
    file = tmp_path / "idx" / _manifest(tmp_path / "idx")["files"][target]
    file.write_bytes(file.read_bytes()[:-40])
    with pytest.raises(StoreCorruptedError, match="corrupted"):
        InMemoryMultiVectorStore.load(tmp_path / "idx")


def test_corrupted_manifest_and_missing_store(tmp_path: Path, store: InMemoryMultiVectorStore) -> None:
    with pytest.raises(StoreError, match="no ragplug store"):
        InMemoryMultiVectorStore.load(tmp_path / "nothing")
    store.save(tmp_path / "idx")
    manifest = tmp_path / "idx" / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(StoreCorruptedError):
        InMemoryMultiVectorStore.load(tmp_path / "idx")
    data = json.loads(text)
    data["format_version"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(StoreCorruptedError, match="format version 99"):
        InMemoryMultiVectorStore.load(tmp_path / "idx")


def test_crash_during_save_leaves_previous_store_intact(
    tmp_path: Path, store: InMemoryMultiVectorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save(tmp_path / "idx")
    store.delete(["doc1", "doc2"])

    def explode(*args, **kwargs):
        raise OSError("disk full")

    import safetensors.numpy

    monkeypatch.setattr(safetensors.numpy, "save_file", explode)
    with pytest.raises(StoreError, match="disk full"):
        store.save(tmp_path / "idx")
    loaded = InMemoryMultiVectorStore.load(tmp_path / "idx")
    assert len(loaded) == 30 and "doc1" in loaded
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.endswith(".tmp")]


def test_approximate_scores_match_a_naive_reference() -> None:
    """Per query vector: the best probed-centroid similarity among a document's token codes, or the weakest
    probed similarity when none of its tokens is in a probed centroid; summed over query vectors."""
    rng = np.random.default_rng(11)
    lengths = rng.integers(1, 12, size=300).astype(np.int64)
    vectors = _unit(rng, int(lengths.sum()), 16)
    index = CentroidIndex.fit(vectors, ApproximateConfig(n_centroids=32))
    starts = np.cumsum(lengths) - lengths
    for n_probe in (1, 4, 32):
        query = _unit(rng, 5, 16)
        sims = query @ index.centroids.T
        probed = np.argsort(-sims, axis=1)[:, :n_probe]
        expected = np.zeros(len(lengths))
        for d, (start, length) in enumerate(zip(starts, lengths, strict=True)):
            codes = set(index.codes[start : start + length].tolist())
            for q in range(len(query)):
                hits = [sims[q, c] for c in probed[q] if c in codes]
                expected[d] += max(hits) if hits else sims[q, probed[q]].min()
        got = index.approximate_scores(query, lengths, n_probe)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lie", ["shape", "dtype", "header", "negative", "huge", "float-shape", "header-length"])
def test_a_data_file_whose_header_lies_is_refused(tmp_path: Path, store: InMemoryMultiVectorStore, lie: str) -> None:
    """A file that matches its checksum but whose safetensors header does not describe its bytes."""
    import hashlib
    import struct

    store.save(tmp_path / "s")
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    file = tmp_path / "s" / manifest["files"]["vectors"]
    raw = file.read_bytes()
    (n,) = struct.unpack_from("<Q", raw, 0)
    header = json.loads(raw[8 : 8 + n])
    if lie == "shape":
        header["vectors"]["shape"][0] += 1
    elif lie == "dtype":
        header["vectors"]["dtype"] = "BF16"
    elif lie == "negative":
        header["vectors"]["shape"] = [-1]
        header["vectors"]["data_offsets"] = [4, 0]
    elif lie == "huge":
        header["vectors"]["shape"] = [2**70, 2**70]
    elif lie == "float-shape":
        header["vectors"]["shape"] = [float(x) for x in header["vectors"]["shape"]]
    elif lie == "header":
        header = ["not", "a", "mapping"]
    encoded = json.dumps(header).encode()
    length = len(encoded) if lie != "header-length" else len(raw) * 4
    file.write_bytes(struct.pack("<Q", length) + encoded + raw[8 + n :])
    manifest["sha256"]["vectors"] = hashlib.sha256(file.read_bytes()).hexdigest()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreCorruptedError, match="cannot read"):
        InMemoryMultiVectorStore.load(tmp_path / "s")


def test_approximate_searches_use_the_old_index_while_it_is_refitted(monkeypatch: pytest.MonkeyPatch) -> None:
    records, families = _clustered_corpus(20, seed=3)
    store = InMemoryMultiVectorStore(mode=SearchMode.APPROXIMATE)
    store.add(records[:150])
    store.build_index()
    started, release = _blocking(monkeypatch, CentroidIndex, "fit")
    with ThreadPoolExecutor(2) as pool:
        try:
            refit = pool.submit(store.build_index)
            assert started.wait(30)
            search = pool.submit(store.search, families[4], k=3)
            assert {int(h.id[1:]) // 10 for h in search.result(timeout=10)} == {4}  # not waiting for the refit
            store.add(records[150:])  # appended during the refit: coded when the new index is installed
        finally:
            release.set()
        refit.result(timeout=60)
    assert len(store._ivf.codes) == store.n_tokens
    assert {int(h.id[1:]) // 10 for h in store.search(families[17], k=3)} == {17}


def test_upsert_replaces_every_record_of_an_item_in_one_step(store: InMemoryMultiVectorStore) -> None:
    rng = np.random.default_rng(1)
    chunks = [Record(f"long#{n}", _unit(rng, 2), {"n": n}, parent_id="long") for n in range(3)]
    store.add(chunks)
    assert "long" in store and [r.id for r in store.get(["long"])] == ["long#0", "long#1", "long#2"]
    before = {r.id: r.vectors.copy() for r in store.records()}
    bad = Record("long#0", np.full((1, DIM), np.nan, np.float32), parent_id="long")
    with pytest.raises(InvalidInputError):
        store.upsert([bad])
    assert {r.id: r.vectors.tolist() for r in store.records()} == {k: v.tolist() for k, v in before.items()}
    store.upsert([Record("long#0", _unit(rng, 1), parent_id="long"), Record("doc3", _unit(rng, 1))])
    assert [r.id for r in store.get(["long"])] == ["long#0"]  # the item's old chunks went in the same step
    assert len(store) == 30 + 1
    store.upsert([Record("long", _unit(rng, 2))])  # a plain record replaces an item stored as chunks
    assert [r.id for r in store.get(["long"])] == ["long"] and "long#0" not in store
    with pytest.raises(DuplicateIdError, match=r"already stored: \['doc4'\]"):
        store.add([Record("x#0", _unit(rng, 1), parent_id="doc4")])  # doc4 is a stored record
    with pytest.raises(DuplicateIdError, match="already stored"):
        store.add([Record("long#5", _unit(rng, 1), parent_id="long")])
    store.delete(["long"])
    assert "long" not in store
