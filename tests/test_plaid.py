"""PLAID indexes built by colbert-ai 0.2.22 and RAGatouille 0.0.9 themselves, read back by ragplug without them.

The fixtures (tests/fixtures/plaid, made by make_fixture.py in a separate venv) hold the index folders, the
tiny colbert-ai checkpoint they were built with, colbert-ai's own ``decompress`` of every token and its
``Searcher`` (and RAGatouille's ``search``) top-10 for twelve queries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from ragplug.errors import EncoderMismatchError, InvalidInputError, StoreCorruptedError, UnknownIdError
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import (
    InMemoryMultiVectorStore,
    LateInteractionIndex,
    MemorySearchOptions,
    copy_records,
)
from ragplug.retrievers.late_interaction.stores.plaid import open_plaid_index, read_plaid_index

FIXTURES = Path(__file__).parent / "fixtures" / "plaid"
MODEL = FIXTURES / "model"
COLLECTION = FIXTURES / "collection.tsv"
INDEXES = ["colbert-2bit", "colbert-1bit", "ragatouille-4bit"]
EXACT = MemorySearchOptions(mode="exact")


def _expected(name: str) -> tuple[dict[str, Any], Any]:
    return json.loads((FIXTURES / f"{name}.expected.json").read_text()), np.load(FIXTURES / f"{name}.expected.npz")


def _open(name: str, folder: Path | None = None, **kwargs: Any) -> InMemoryMultiVectorStore:
    collection = COLLECTION if name.startswith("colbert") else None
    return open_plaid_index(folder or FIXTURES / name, collection=collection, **kwargs)


@pytest.fixture(scope="module")
def encoder() -> ColBERTEncoder:
    return ColBERTEncoder(MODEL, device="cpu", query_maxlen=32, doc_maxlen=48)


@pytest.fixture
def copy_of(tmp_path: Path):
    def make(name: str) -> Path:
        return Path(shutil.copytree(FIXTURES / name, tmp_path / name))

    return make


def _edit_json(file: Path, change: Any) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


# -- agreement with colbert-ai -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", INDEXES)
def test_decoded_tokens_match_colbert_decompress(name: str) -> None:
    _, expected = _expected(name)
    store, info = read_plaid_index(FIXTURES / name, collection=COLLECTION if name.startswith("colbert") else None)
    decoded = np.concatenate([record.vectors for record in store.records()])
    assert decoded.shape == expected["decompressed"].shape == (info.n_tokens, 32)
    diff = float(np.abs(decoded - expected["decompressed"]).max())
    assert diff < 1e-5, diff  # the issue asks < 1e-3; the same float32 arithmetic gives ~1e-7
    np.testing.assert_array_equal([len(r.vectors) for r in store.records()], expected["doclens"])


@pytest.mark.parametrize("name", INDEXES)
def test_store_columns_are_the_plaid_codes_and_residuals(name: str) -> None:
    store = _open(name)
    codes = torch.load(FIXTURES / name / "0.codes.pt", map_location="cpu", weights_only=True).numpy()
    residuals = torch.load(FIXTURES / name / "0.residuals.pt", map_location="cpu", weights_only=True).numpy()
    columns = store._tokens.columns()
    np.testing.assert_array_equal(columns["codes"], codes)
    np.testing.assert_array_equal(columns["residuals"], residuals)
    assert columns["codes"].dtype == np.uint16  # 512 centroids: 2-byte codes
    codec = store.codec
    assert codec is not None and codec.config.kind == "residual"
    assert store.nbytes == len(codes) * codec.bytes_per_token


def _search_keys(expected: dict[str, Any]) -> list[str]:
    return [key for key in expected if key.startswith(("searcher_", "ragatouille_search"))]


@pytest.mark.parametrize("name", INDEXES)
def test_top10_matches_colbert_searcher(name: str, encoder: ColBERTEncoder) -> None:
    expected, _ = _expected(name)
    store = _open(name)
    pid_of = {id_: pid for pid, id_ in enumerate(store.ids())}  # no passage deleted: pid order
    results = store.search_batch(encoder.encode_queries(expected["queries"]), k=10, options=EXACT)
    for key in _search_keys(expected):
        reference = expected[key]
        assert reference.get("settings", {"query_maxlen": 32})["query_maxlen"] == 32
        overlaps = []
        for hits, pids, scores in zip(results, reference["pids"], reference["scores"], strict=True):
            mine = {pid_of[h.id]: h.score for h in hits}
            overlaps.append(len(mine.keys() & set(pids)) / 10)
            for pid, score in zip(pids, scores, strict=True):
                if pid in mine:
                    assert mine[pid] == pytest.approx(score, abs=1e-3)
        assert min(overlaps) >= 0.9, (key, overlaps)  # measured: 1.0 for every query, scores within 4e-6
        if key == "ragatouille_search":
            for hits, doc_ids in zip(results, reference["document_ids"], strict=True):
                assert [h.parent_id or h.id for h in hits][:5] == doc_ids[:5]


def test_index_info_names_the_checkpoint_and_lengths() -> None:
    _, info = read_plaid_index(FIXTURES / "colbert-2bit", collection=COLLECTION)
    assert (info.dim, info.nbits, info.doc_maxlen, info.query_maxlen) == (32, 2, 48, 32)
    assert info.checkpoint is not None and info.checkpoint.endswith("model")
    assert (info.n_passages, info.n_records, info.n_centroids, info.ragatouille) == (40, 40, 512, False)
    _, rag = read_plaid_index(FIXTURES / "ragatouille-4bit")
    assert rag.nbits == 4 and rag.ragatouille and rag.n_records == rag.n_passages


# -- ids, metadata, texts --------------------------------------------------------------------------------
def test_ragatouille_documents_become_items_with_chunks() -> None:
    store = _open("ragatouille-4bit")
    pid_docid = json.loads((FIXTURES / "ragatouille-4bit" / "pid_docid_map.json").read_text())
    doc_meta = json.loads((FIXTURES / "ragatouille-4bit" / "docid_metadata_map.json").read_text())
    texts = json.loads((FIXTURES / "ragatouille-4bit" / "collection.json").read_text())
    records = list(store.records())
    assert [r.parent_id for r in records] == [pid_docid[str(pid)] for pid in range(len(records))]
    first = records[0]
    assert first.id == "carol-00#0" and first.text == texts[0]
    assert first.metadata == {**doc_meta["carol-00"], "parent_id": "carol-00", "chunk_index": 0}
    chunks = store.get(["carol-00"])
    assert [r.id for r in chunks] == [f"carol-00#{n}" for n in range(len(chunks))] and len(chunks) > 1
    hits = store.search(records[3].vectors, k=1, filter={"paragraph": records[3].metadata["paragraph"]})
    assert hits[0].id == records[3].id


def test_a_document_with_one_passage_keeps_its_own_id(copy_of) -> None:
    folder = copy_of("ragatouille-4bit")
    _edit_json(folder / "pid_docid_map.json", lambda m: m.update({k: f"doc{k}" for k in m}))
    _edit_json(folder / "docid_metadata_map.json", lambda m: m.update({"doc0": {"year": 1843}}))
    store = open_plaid_index(folder)
    assert store.ids()[:3] == ["doc0", "doc1", "doc2"]
    (record,) = store.get(["doc0"])
    assert record.parent_id is None and record.metadata == {"year": 1843}


def test_plain_colbert_ids_are_pids_and_texts_come_from_the_collection() -> None:
    store = _open("colbert-2bit")
    lines = COLLECTION.read_text(encoding="utf-8").splitlines()
    assert store.ids() == [str(pid) for pid in range(40)]
    assert [r.text for r in store.records()] == [line.split("\t", 1)[1] for line in lines]
    assert all(r.metadata == {} and r.parent_id is None for r in store.records())


def test_collection_found_next_to_the_index_or_left_out(copy_of) -> None:
    folder = copy_of("colbert-2bit")
    _edit_json(folder / "metadata.json", lambda m: m["config"].update(collection="/elsewhere/collection.tsv"))
    assert all(r.text is None for r in open_plaid_index(folder).records())  # named file absent: no texts
    shutil.copy(COLLECTION, folder / "collection.tsv")
    texts = [r.text for r in open_plaid_index(folder).records()]
    assert texts[0] is not None and texts[0].startswith("Marley was dead")
    assert [r.text for r in open_plaid_index(folder, collection=texts).records()] == texts


def test_passages_deleted_by_colbert_index_updater_are_skipped(copy_of) -> None:
    """colbert-ai's IndexUpdater deletes a passage by removing its tokens and setting its doclen to 0."""
    folder = copy_of("colbert-2bit")
    doclens = json.loads((folder / "doclens.0.json").read_text())
    lo, hi = sum(doclens[:5]), sum(doclens[:6])
    for part in ("codes", "residuals"):
        tensor = torch.load(folder / f"0.{part}.pt", weights_only=True)
        torch.save(torch.cat([tensor[:lo], tensor[hi:]]), folder / f"0.{part}.pt")
    doclens[5] = 0
    (folder / "doclens.0.json").write_text(json.dumps(doclens))
    _edit_json(folder / "0.metadata.json", lambda m: m.update(num_embeddings=m["num_embeddings"] - (hi - lo)))
    store = open_plaid_index(folder, collection=COLLECTION)
    assert "5" not in store and len(store) == 39 and store.ids()[5] == "6"
    _, expected = _expected("colbert-2bit")
    want = np.concatenate([expected["decompressed"][:lo], expected["decompressed"][hi:]])
    np.testing.assert_allclose(np.concatenate([r.vectors for r in store.records()]), want, atol=1e-5)
    assert store.get(["6"])[0].text == COLLECTION.read_text(encoding="utf-8").splitlines()[6].split("\t", 1)[1]


# -- a working store afterwards ----------------------------------------------------------------------------
def test_add_and_delete_after_opening(encoder: ColBERTEncoder, tmp_path: Path) -> None:
    index = LateInteractionIndex.from_plaid(FIXTURES / "colbert-2bit", MODEL, collection=COLLECTION)
    store = index.store
    assert isinstance(store, InMemoryMultiVectorStore)
    codec = store.codec
    assert codec is not None
    centroids = codec.centroids.copy()  # type: ignore[union-attr]
    text = "Scrooge bought the prize turkey and sent it to Bob Cratchit's house in Camden Town."
    index.add([text], ids=["turkey"], metadatas=[{"new": True}])
    assert store.codec is codec and np.array_equal(codec.centroids, centroids)  # the PLAID centroids stay
    (record,) = index.get(["turkey"])
    (raw,) = encoder.encode_documents([text])
    np.testing.assert_allclose(record.vectors, codec.decode(codec.encode(raw)), atol=1e-6)  # PLAID-coded
    hit = store.search(record.vectors, k=1, options=EXACT)[0]
    assert (hit.id, hit.text, hit.metadata) == ("turkey", text, {"new": True})

    index.delete(["3", "turkey"])
    assert "3" not in store and "turkey" not in store and len(store) == 39
    with pytest.raises(UnknownIdError):
        index.delete(["3"])
    assert all(h.id != "3" for h in index.search("Marley was dead", k=39))

    store.save(tmp_path / "saved")  # and it saves in ragplug's own format, codec included
    loaded = InMemoryMultiVectorStore.load(tmp_path / "saved")
    assert loaded.ids() == store.ids()
    np.testing.assert_array_equal(loaded.get(["7"])[0].vectors, store.get(["7"])[0].vectors)


def test_ragatouille_item_delete_removes_all_its_passages() -> None:
    store = _open("ragatouille-4bit")
    n_chunks = len(store.get(["carol-04"]))
    store.delete(["carol-04"])
    assert "carol-04" not in store and "carol-04#0" not in store and len(store) == 55 - n_chunks


@pytest.mark.parametrize("name", ["colbert-2bit", "ragatouille-4bit"])
def test_copy_into_a_fresh_store(name: str, encoder: ColBERTEncoder) -> None:
    source = _open(name)
    target = InMemoryMultiVectorStore()
    assert copy_records(source, target) == len(source)
    assert target.ids() == source.ids()
    for a, b in zip(source.records(), target.records(), strict=True):
        assert (a.id, a.metadata, a.text, a.parent_id) == (b.id, b.metadata, b.text, b.parent_id)
        np.testing.assert_array_equal(a.vectors, b.vectors)  # decoded vectors, kept as float32
    queries = encoder.encode_queries(_expected(name)[0]["queries"][:4])
    assert [[h.id for h in r] for r in target.search_batch(queries, k=10, options=EXACT)] == [
        [h.id for h in r] for r in source.search_batch(queries, k=10, options=EXACT)
    ]


# -- from_plaid and the framework retrievers --------------------------------------------------------------
def test_from_plaid_builds_the_encoder_named_in_the_metadata(copy_of) -> None:
    folder = copy_of("colbert-2bit")
    _edit_json(folder / "metadata.json", lambda m: m["config"].update(checkpoint=str(MODEL.resolve())))
    index = LateInteractionIndex.from_plaid(folder, collection=COLLECTION)
    assert isinstance(index.encoder, ColBERTEncoder)
    assert (index.encoder.settings.query_maxlen, index.encoder.settings.doc_maxlen) == (32, 48)
    assert index.store.encoder == index.encoder.identity  # bound
    _edit_json(folder / "metadata.json", lambda m: m["config"].update(checkpoint="/nowhere/colbert-model"))
    with pytest.raises(InvalidInputError, match="not on this machine; pass model="):
        LateInteractionIndex.from_plaid(folder)


def test_from_plaid_refuses_an_encoder_of_another_dimension(pylate_encoder: Any) -> None:
    with pytest.raises(EncoderMismatchError, match="32-dim"):
        LateInteractionIndex.from_plaid(FIXTURES / "colbert-2bit", pylate_encoder)


def test_langchain_retriever_over_a_plaid_index(encoder: ColBERTEncoder) -> None:
    pytest.importorskip("langchain_core")
    from ragplug.plugins.langchain import ColBERTRetriever

    index = LateInteractionIndex.from_plaid(FIXTURES / "ragatouille-4bit", encoder)
    retriever = ColBERTRetriever(index=index, k=3)
    docs = retriever.invoke("Tiny Tim and his crutch")
    hits = index.search("Tiny Tim and his crutch", k=3)
    assert [d.id for d in docs] == [h.id for h in hits]
    assert docs[0].page_content == hits[0].text and docs[0].metadata["parent_id"] == hits[0].parent_id
    assert retriever.invoke("Tiny Tim", filter={"parent_id": "carol-02"})[0].metadata["parent_id"] == "carol-02"


def test_llamaindex_retriever_over_a_plaid_index(encoder: ColBERTEncoder) -> None:
    pytest.importorskip("llama_index.core")
    from ragplug.plugins.llamaindex import ColBERTRetriever

    index = LateInteractionIndex.from_plaid(FIXTURES / "colbert-2bit", encoder, collection=COLLECTION)
    nodes = ColBERTRetriever(index, similarity_top_k=2).retrieve("Marley was dead to begin with")
    assert [n.node.node_id for n in nodes] == [h.id for h in index.search("Marley was dead to begin with", k=2)]


# -- bad input: a clear error, nothing written ---------------------------------------------------------
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


class _Touch:
    """A pickled object whose unpickling would create a file (what weights_only=True must refuse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


BAD = {
    "missing metadata.json": (
        lambda f: (f / "metadata.json").unlink(),
        StoreCorruptedError,
        "metadata.json is missing",
    ),
    "missing centroids.pt": (lambda f: (f / "centroids.pt").unlink(), StoreCorruptedError, "centroids.pt is missing"),
    "missing buckets.pt": (lambda f: (f / "buckets.pt").unlink(), StoreCorruptedError, "buckets.pt is missing"),
    "missing codes": (lambda f: (f / "0.codes.pt").unlink(), StoreCorruptedError, "0.codes.pt is missing"),
    "missing residuals": (lambda f: (f / "0.residuals.pt").unlink(), StoreCorruptedError, "residuals.pt is missing"),
    "missing doclens": (lambda f: (f / "doclens.0.json").unlink(), StoreCorruptedError, "doclens.0.json is missing"),
    "truncated codes": (lambda f: _truncate(f / "0.codes.pt"), StoreCorruptedError, "cannot read .*0.codes.pt"),
    "truncated residuals": (lambda f: _truncate(f / "0.residuals.pt"), StoreCorruptedError, "cannot read"),
    "truncated centroids": (lambda f: _truncate(f / "centroids.pt"), StoreCorruptedError, "truncated, corrupted"),
    "truncated metadata": (lambda f: _truncate(f / "metadata.json"), StoreCorruptedError, "cannot read .*metadata"),
    "truncated doclens": (lambda f: _truncate(f / "doclens.0.json"), StoreCorruptedError, "doclens.0.json"),
    "empty codes file": (lambda f: (f / "0.codes.pt").write_bytes(b""), StoreCorruptedError, "cannot read"),
    "dict instead of a tensor": (
        lambda f: torch.save({"codes": torch.zeros(3, dtype=torch.int32)}, f / "0.codes.pt"),
        StoreCorruptedError,
        "holds a dict where the centroid codes",
    ),
    "buckets not a pair": (
        lambda f: torch.save(torch.zeros(3), f / "buckets.pt"),
        StoreCorruptedError,
        r"must hold \(bucket_cutoffs, bucket_weights\)",
    ),
    "float codes": (
        lambda f: torch.save(torch.zeros(1709), f / "0.codes.pt"),
        StoreCorruptedError,
        "1-D tensor of kind 'iu'",
    ),
    "doclens disagree with codes": (
        lambda f: _edit_json(f / "doclens.0.json", lambda d: d.__setitem__(0, d[0] + 1)),
        StoreCorruptedError,
        r"counts 1710 tokens, but 0.codes.pt holds 1709 codes",
    ),
    "doclens not counts": (
        lambda f: _edit_json(f / "doclens.0.json", lambda d: d.__setitem__(0, -1)),
        StoreCorruptedError,
        "integers >= 0",
    ),
    "chunk metadata disagrees": (
        lambda f: _edit_json(f / "0.metadata.json", lambda m: m.update(num_passages=41)),
        StoreCorruptedError,
        "0.metadata.json says",
    ),
    "nbits 3": (
        lambda f: _edit_json(f / "metadata.json", lambda m: m["config"].update(nbits=3)),
        InvalidInputError,
        r"nbits=3 .* PLAID writes \[1, 2, 4\]",
    ),
    "nbits 8": (
        lambda f: _edit_json(f / "metadata.json", lambda m: m["config"].update(nbits=8)),
        InvalidInputError,
        "nbits=8",
    ),
    "nbits 4 on a 2-bit index": (
        lambda f: _edit_json(f / "metadata.json", lambda m: m["config"].update(nbits=4)),
        StoreCorruptedError,
        "do not fit nbits=4",
    ),
    "dim * nbits not bytes": (
        lambda f: _edit_json(f / "metadata.json", lambda m: m["config"].update(dim=31)),
        StoreCorruptedError,
        "not a whole number of bytes",
    ),
    "dim disagrees with centroids": (
        lambda f: _edit_json(f / "metadata.json", lambda m: m["config"].update(dim=64)),
        StoreCorruptedError,
        "centroids of shape",
    ),
    "residual width disagrees": (
        lambda f: torch.save(torch.zeros(1709, 4, dtype=torch.uint8), f / "0.residuals.pt"),
        StoreCorruptedError,
        "8 bytes per token",
    ),
    "codes past the centroids": (
        lambda f: torch.save(torch.full((1709,), 512, dtype=torch.int32), f / "0.codes.pt"),
        StoreCorruptedError,
        "names centroid 512, but centroids.pt holds 512",
    ),
    "no config": (
        lambda f: _edit_json(f / "metadata.json", lambda m: m.pop("config")),
        StoreCorruptedError,
        "no 'config' object",
    ),
    "collection of another length": (
        lambda f: (f / "collection.tsv").write_text("0\tone passage\n"),
        StoreCorruptedError,
        "holds 1 texts; the index has 40 passages",
    ),
    "collection with wrong pids": (
        lambda f: (f / "collection.tsv").write_text("".join(f"{i + 1}\tp\n" for i in range(40))),
        StoreCorruptedError,
        "line 1: .* is not 'pid<TAB>text' with pid 0",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_index_folder(case: str, copy_of) -> None:
    folder = copy_of("colbert-2bit")
    _edit_json(folder / "metadata.json", lambda m: m["config"].update(collection=str(folder / "collection.tsv")))
    shutil.copy(COLLECTION, folder / "collection.tsv")
    damage, error, message = BAD[case]
    damage(folder)
    before = _snapshot(folder)
    with pytest.raises(error, match=message):
        open_plaid_index(folder)
    assert _snapshot(folder) == before  # nothing written


def test_pickled_object_in_a_pt_file_is_refused_unrun(copy_of, tmp_path: Path) -> None:
    folder = copy_of("colbert-2bit")
    marker = tmp_path / "unpickled-and-ran"
    torch.save(_Touch(marker), folder / "centroids.pt")
    with pytest.raises(StoreCorruptedError, match=r"centroids\.pt.*weights_only=True"):
        open_plaid_index(folder, collection=COLLECTION)
    assert not marker.exists()


def test_bad_ragatouille_maps(copy_of) -> None:
    folder = copy_of("ragatouille-4bit")
    _edit_json(folder / "pid_docid_map.json", lambda m: m.pop("7"))
    with pytest.raises(StoreCorruptedError, match=r"no document id for passages \[7\]"):
        open_plaid_index(folder)
    _edit_json(folder / "pid_docid_map.json", lambda m: m.update({"7": ["not", "an", "id"]}))
    with pytest.raises(StoreCorruptedError, match="strings or integers"):
        open_plaid_index(folder)
    _edit_json(folder / "pid_docid_map.json", lambda m: m.update({"7": "carol-01"}))
    _edit_json(folder / "docid_metadata_map.json", lambda m: m.update({"carol-01": "not an object"}))
    with pytest.raises(StoreCorruptedError, match="not an object"):
        open_plaid_index(folder)


def test_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="is not a folder"):
        open_plaid_index(tmp_path / "nothing-here")


def test_ids_that_cannot_be_held_are_a_clear_error(copy_of) -> None:
    folder = copy_of("ragatouille-4bit")
    # document "carol-00" has several passages, so its chunks are "carol-00#0"...; a document already named so
    _edit_json(folder / "pid_docid_map.json", lambda m: m.update({"54": "carol-00#0"}))
    with pytest.raises(InvalidInputError, match="cannot open this index as a ragplug store: duplicate ids"):
        open_plaid_index(folder)


def test_from_columns_refuses_columns_that_do_not_fit() -> None:
    store = _open("colbert-1bit")
    codec, columns = store.codec, store._tokens.columns()
    assert codec is not None
    lengths = [len(r.vectors) for r in store.records()]
    with pytest.raises(InvalidInputError, match="do not fit together"):
        InMemoryMultiVectorStore.from_columns(codec, columns, lengths[:-1], store.ids()[:-1])
    with pytest.raises(InvalidInputError, match="do not fit together"):
        InMemoryMultiVectorStore.from_columns(codec, {"codes": columns["codes"].astype(np.int32)}, lengths, store.ids())
    rebuilt = InMemoryMultiVectorStore.from_columns(codec, columns, lengths, store.ids())
    assert rebuilt.ids() == store.ids() and rebuilt.n_tokens == store.n_tokens


def test_reading_plaid_does_not_import_torch_until_opened() -> None:
    code = "import sys, ragplug.retrievers.late_interaction.stores.plaid; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
