"""An index carries its encoder: reopened from its path alone, an explicit model checked against the record,
and a mismatch that names the setting that differs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragplug.errors import EncoderMismatchError, InvalidInputError
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import LateInteractionIndex
from ragplug.retrievers.late_interaction.base import relevance_of


@pytest.fixture
def saved(tmp_path: Path, stanford_encoder: ColBERTEncoder, facts: dict[str, str]) -> Path:
    index = LateInteractionIndex(stanford_encoder)
    index.add(list(facts.values()), ids=list(facts))
    index.save(tmp_path / "idx")
    return tmp_path / "idx"


def test_reopens_from_path_alone_with_the_same_results(saved: Path, stanford_encoder: ColBERTEncoder) -> None:
    reopened = LateInteractionIndex.open(saved)
    assert reopened.encoder.identity.fingerprint == stanford_encoder.identity.fingerprint
    assert reopened.encoder.identity.settings["doc_maxlen"] == 40  # the checkpoint's, recorded
    original = LateInteractionIndex.load(saved, stanford_encoder)
    query = "Who was paid fifteen shillings?"
    assert [(h.id, round(h.score, 4)) for h in reopened.search(query, k=3)] == [
        (h.id, round(h.score, 4)) for h in original.search(query, k=3)
    ]


def test_explicit_model_is_checked_and_the_differing_setting_named(saved: Path, stanford_checkpoint: Path) -> None:
    assert len(LateInteractionIndex.open(saved, stanford_checkpoint)) == 6
    with pytest.raises(EncoderMismatchError, match=r"doc_maxlen: 40 != 64"):
        LateInteractionIndex.open(saved, stanford_checkpoint, doc_maxlen=64)


def test_mismatch_from_other_weights_says_so(saved: Path, pylate_checkpoint: Path) -> None:
    with pytest.raises(EncoderMismatchError, match=r"Stored vs given: .*format: 'stanford' != 'pylate'"):
        LateInteractionIndex.open(saved, pylate_checkpoint)


def test_a_model_folder_gone_is_named(saved: Path, tmp_path: Path) -> None:
    manifest = next(p for p in saved.iterdir() if p.suffix == ".json" and "encoder" in p.read_text())
    data = json.loads(manifest.read_text())
    data["encoder"]["settings"]["model"] = str(tmp_path / "moved-away")
    manifest.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="moved-away, which is not on this machine; pass model="):
        LateInteractionIndex.open(saved)


def test_relevance_is_the_mean_best_cosine(stanford_encoder: ColBERTEncoder, facts: dict[str, str]) -> None:
    index = LateInteractionIndex(stanford_encoder)
    index.add(list(facts.values()), ids=list(facts))
    for query in ("Scrooge", "Who sent the prize turkey to the Cratchits on Christmas morning?"):
        n = len(stanford_encoder.encode_queries([query])[0])
        hits = index.search(query, k=6)
        assert all(0.0 <= h.relevance <= 1.0 for h in hits)
        assert [h.relevance for h in hits] == [relevance_of(h.score, n) for h in hits]
        assert [h.relevance for h in hits] == sorted((h.relevance for h in hits), reverse=True)


def test_long_adds_end_with_a_one_line_summary(
    stanford_encoder: ColBERTEncoder, capsys: pytest.CaptureFixture[str]
) -> None:
    index = LateInteractionIndex(stanford_encoder)
    index.add([f"Scrooge counted coin number {i}." for i in range(300)])  # above the threshold: on by default
    err = capsys.readouterr().err
    assert "indexed 300 items (300 chunks, " in err and "vectors, " in err and "items/s)" in err
    index.add(["Marley was dead."] * 3)  # short work stays silent
    assert capsys.readouterr().err == ""
    index.add(["Marley was dead."] * 3, show_progress=True)
    assert "indexed 3 items" in capsys.readouterr().err


def test_delete_none_and_save_onto_a_file_are_clear_errors(stanford_encoder: ColBERTEncoder, tmp_path: Path) -> None:
    from ragplug.errors import StoreError

    index = LateInteractionIndex(stanford_encoder)
    index.add(["Marley was dead."], ids=["m"])
    with pytest.raises(InvalidInputError, match="ids must be a list of strings, got NoneType"):
        index.delete(None)  # type: ignore[arg-type]
    (tmp_path / "file").write_text("mine")
    with pytest.raises(StoreError, match="it is an existing file, not a folder"):
        index.save(tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine" and len(index) == 1


def test_parts_of_a_document_are_stored_whole_under_it(stanford_encoder: ColBERTEncoder) -> None:
    index = LateInteractionIndex(stanford_encoder, chunker=stanford_encoder.chunker(chunk_tokens=4, overlap=0))
    long = "Marley was dead to begin with and there is no doubt whatever about that."
    index.add([long, "Scrooge signed it."], ids=["doc#p1", "doc#p2"], parents=["doc", "doc"])
    assert len(index) == 2 and {r.parent_id for r in index.get(["doc"])} == {"doc"}  # not chunked
    with pytest.raises(InvalidInputError, match="which is an item of this call"):
        index.add(["x", "y"], ids=["a", "b"], parents=["b", None])
    index.delete(["doc"])
    assert len(index) == 0
