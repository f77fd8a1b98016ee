"""A byaldi index (tests/fixtures/byaldi, built by byaldi 0.0.7 itself) copied or imported straight into Postgres
without re-encoding: byaldi's scores, delete by document, SQL metadata filters, and a ColPali index over the
Postgres collection."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragplug.errors import StoreCorruptedError, UnknownIdError
from ragplug.retrievers.colpali.byaldi import page_id, read_byaldi_index
from ragplug.retrievers.late_interaction import LateInteractionIndex, copy_records

pytestmark = pytest.mark.integration

from ragplug.retrievers.late_interaction.stores.postgres import PgSearchOptions, PgVectorStore  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "byaldi"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
EXACT = PgSearchOptions(exact=True)


def _queries() -> list[np.ndarray]:
    data = np.load(FIXTURES / "queries.npz")
    return [data[f"q{i}"] for i in range(len(EXPECTED["queries"]))]


def _copied(dsn: str, name: str = "pages-images") -> tuple[Any, PgVectorStore]:
    source, _ = read_byaldi_index(FIXTURES / name)
    target = PgVectorStore(dsn, collection=f"byaldi-{uuid.uuid4().hex[:10]}")
    assert copy_records(source, target) == len(source)
    return source, target


def test_copied_pages_keep_ids_documents_metadata_and_byaldis_scores(postgres_dsn: str) -> None:
    source, target = _copied(postgres_dsn)
    assert sorted(target.ids()) == sorted(source.ids())
    for record in source.records():
        (copied,) = target.get([record.id])
        assert (copied.parent_id, copied.metadata, copied.text) == (record.parent_id, record.metadata, None)
    assert [r.id for r in target.get(["0"])] == ["0#p1", "0#p2", "0#p3"]
    expected = EXPECTED["indexes"]["pages-images"]
    for query, float32, hits in zip(_queries(), expected["scores_float32"], expected["search"]["k=3"], strict=True):
        mine = {h.id: h.score for h in target.search(query, k=7, options=EXACT)}
        theirs = dict(zip(source.ids(), float32, strict=True))
        assert max(abs(mine[i] - theirs[i]) for i in theirs) < 1e-4  # float16 in Postgres holds bf16 values exactly
        approximate = [h.id for h in target.search(query, k=3)]  # through the store's index
        assert set(approximate) <= set(theirs)
        for hit in hits:  # byaldi's own (bf16) top-3 scores
            assert mine[page_id(hit["doc_id"], hit["page_num"])] == pytest.approx(hit["score"], rel=2**-7)


def test_delete_a_document_and_filter_in_sql(postgres_dsn: str) -> None:
    _, target = _copied(postgres_dsn)
    query = _queries()[0]
    target.delete(["0"])
    assert len(target) == 4 and "0#p2" not in target
    with pytest.raises(UnknownIdError):
        target.delete(["0"])
    found = {h.id for h in target.search(query, k=10, filter={"page": {"$gte": 2}}, options=EXACT)}
    assert found == {"2#p2"}
    found = {h.id for h in target.search(query, k=10, filter={"year": {"$lte": 1844}, "kind": {"$ne": "memo"}})}
    assert found == {"1#p1"}


def test_colpali_index_over_the_postgres_collection(postgres_dsn: str) -> None:
    pytest.importorskip("colpali_engine")
    from PIL import Image

    from ragplug.retrievers.colpali import ColPaliEncoder

    encoder = ColPaliEncoder(FIXTURES / "tiny-colpali", device="cpu", dtype="bfloat16")
    _, target = _copied(postgres_dsn, "pages")
    index = LateInteractionIndex(encoder, target)
    index.add([Image.new("RGB", (40, 60), (200, 30, 30))], ids=["40#p1"], metadatas=[{"kind": "new", "page": 1}])
    assert [h.id for h in index.search(EXPECTED["queries"][1], k=1, filter={"kind": "new"})] == ["40#p1"]
    index.delete(["10"])
    assert sorted(target.ids()) == ["20#p1", "30#p1", "30#p2", "40#p1"]
    reopened = LateInteractionIndex.open(PgVectorStore(postgres_dsn, collection=target.collection))
    assert reopened.encoder.identity == encoder.identity  # the collection remembers the encoder


def test_imported_straight_into_postgres_batch_by_batch(postgres_dsn: str) -> None:
    """``read_byaldi_index(store=...)`` writes the pages into the collection a few documents at a time (no
    in-memory copy of the index first): the same records and byaldi's scores as the in-memory import."""
    source, info = read_byaldi_index(FIXTURES / "pages-images")
    target = PgVectorStore(postgres_dsn, collection=f"byaldi-{uuid.uuid4().hex[:10]}")
    store, read = read_byaldi_index(FIXTURES / "pages-images", store=target, batch_pages=2)
    assert store is target and read == info
    assert target.ids() == source.ids()
    for record, copied in zip(source.records(), target.records(), strict=True):
        assert (copied.id, copied.parent_id, copied.metadata, copied.text) == (
            record.id,
            record.parent_id,
            record.metadata,
            None,
        )
        np.testing.assert_array_equal(copied.vectors, record.vectors)  # float16 holds byaldi's bf16 values exactly
    assert [r.id for r in target.get(["2"])] == ["2#p1", "2#p2"]
    expected = EXPECTED["indexes"]["pages-images"]
    for query, float32 in zip(_queries(), expected["scores_float32"], strict=True):
        mine = {h.id: h.score for h in target.search(query, k=7, options=EXACT)}
        today = {h.id: h.score for h in source.search(query, k=7)}
        assert max(abs(mine[i] - today[i]) for i in today) < 1e-3
        assert max(abs(mine[i] - s) for i, s in zip(source.ids(), float32, strict=True)) < 1e-4


def test_a_failed_import_into_postgres_leaves_the_collection_as_it_was(postgres_dsn: str, tmp_path: Path) -> None:
    import torch

    folder = Path(shutil.copytree(FIXTURES / "pages-images", tmp_path / "pages-images"))
    file = folder / "embeddings" / "embeddings_0.pt"
    pages = torch.load(file, weights_only=True)
    pages[4] = torch.full_like(pages[4], float("inf"))
    torch.save(pages, file)
    target = PgVectorStore(postgres_dsn, collection=f"byaldi-{uuid.uuid4().hex[:10]}")
    with pytest.raises(StoreCorruptedError, match="page 4 holds NaN or infinite values"):
        read_byaldi_index(folder, store=target, batch_pages=1)  # documents 0 and 1 were written, then removed
    assert len(target) == 0


def test_open_a_byaldi_index_into_postgres_with_its_encoder(postgres_dsn: str) -> None:
    pytest.importorskip("colpali_engine")
    from ragplug.retrievers.colpali import ColPaliEncoder

    encoder = ColPaliEncoder(FIXTURES / "tiny-colpali", device="cpu", dtype="bfloat16")
    target = PgVectorStore(postgres_dsn, collection=f"byaldi-{uuid.uuid4().hex[:10]}")
    index = LateInteractionIndex.from_byaldi(FIXTURES / "pages-images", encoder, store=target)
    assert index.store is target and len(target) == 7
    reopened = LateInteractionIndex.open(PgVectorStore(postgres_dsn, collection=target.collection))
    assert reopened.encoder.identity == encoder.identity  # bound before the first page was written
    query = EXPECTED["queries"][0]
    assert [h.id for h in reopened.search(query, k=3, exact=True)] == [
        h.id for h in index.search(query, k=3, exact=True)
    ]
