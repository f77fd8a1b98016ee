"""Graph RAG's passage splitter: sentence-bounded passages, ids, metadata, blank documents, bad input."""

from __future__ import annotations

import pytest

from ragplug.errors import DuplicateIdError, InvalidInputError
from ragplug.retrievers.graph.chunking import PassageSplitter, split_documents


def test_short_documents_keep_their_id_and_long_ones_are_cut_at_sentence_ends() -> None:
    long = " ".join(f"Sentence number {i} talks about Scrooge." for i in range(30))  # 150 words
    passages, blank = split_documents(
        ["Marley was dead.", long], ["a", "b"], [{"lang": "en"}, None], splitter=PassageSplitter(max_words=40)
    )
    assert blank == []
    assert passages[0].id == "a" and passages[0].doc_id == "a"
    assert passages[0].metadata == {"lang": "en", "doc_id": "a", "passage_index": 0}
    rest = passages[1:]
    assert [p.id for p in rest] == [f"b#{i}" for i in range(len(rest))]
    assert all(p.doc_id == "b" for p in rest)
    assert all(len(p.text.split()) <= 40 for p in rest)
    assert all(p.text.endswith("Scrooge.") for p in rest)  # cut at sentence ends only
    assert " ".join(p.text for p in rest) == long  # nothing lost, nothing repeated


def test_an_overlong_sentence_is_cut_at_word_boundaries() -> None:
    words = [f"w{i}" for i in range(25)]
    pieces = PassageSplitter(max_words=10).split(" ".join(words))
    assert [len(p.split()) for p in pieces] == [10, 10, 5]
    assert " ".join(pieces).split() == words


def test_blank_documents_are_reported_not_stored() -> None:
    passages, blank = split_documents(["", "  \n ", "Bob Cratchit."], ["x", "y", "z"])
    assert blank == ["x", "y"]
    assert [p.id for p in passages] == ["z"]


@pytest.mark.parametrize(
    ("texts", "ids", "metadatas", "error", "match"),
    [
        ("one string", ["a"], None, InvalidInputError, "same length"),
        (["a", "b"], ["a"], None, InvalidInputError, "same length"),
        (["a"], ["a"], [{}, {}], InvalidInputError, "one dict"),
        (["a", "b"], ["d", "d"], None, DuplicateIdError, "duplicate document ids"),
        (["a"], [""], None, InvalidInputError, "non-empty strings"),
        ([3], ["a"], None, InvalidInputError, "must be a string"),
        (["a"], ["a"], [{"x": float("nan")}], InvalidInputError, "metadatas"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(texts, ids, metadatas, error, match) -> None:
    with pytest.raises(error, match=match):
        split_documents(texts, ids, metadatas)


def test_max_words_is_checked() -> None:
    with pytest.raises(InvalidInputError, match="max_words"):
        PassageSplitter(max_words=3)
