"""Graph RAG's first stage: documents cut into passages, the units the graph links entities to.

A passage should hold a few connected sentences: long enough that co-occurring entities are related, short
enough that a retrieved passage is a precise citation. Documents are cut at sentence ends into passages of
at most ``max_words`` words (a sentence longer than that becomes a passage of its own, cut at word
boundaries). A document that fits in one passage keeps its own id as the passage id, so a corpus of short
passages (Wikipedia paragraphs, FAQ entries) is indexed one-to-one; longer ones get ``<doc id>#<n>``.
Word counts, not tokens: the graph stage has no tokenizer of its own, and the ColBERT encoder re-cuts
whatever exceeds its length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragplug.errors import DuplicateIdError, InvalidInputError
from ragplug.retrievers.graph.model import Passage
from ragplug.retrievers.late_interaction.base import check_metadata, check_text

__all__ = ["PassageSplitter", "split_documents"]

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n\s*\n")


@dataclass(frozen=True)
class PassageSplitter:
    """Cut texts into passages of at most ``max_words`` words at sentence ends."""

    max_words: int = 200

    def __post_init__(self) -> None:
        if isinstance(self.max_words, bool) or not isinstance(self.max_words, int) or self.max_words < 8:
            msg = f"max_words must be an integer >= 8, got {self.max_words!r}"
            raise InvalidInputError(msg)

    def split(self, text: str) -> list[str]:
        """The passages of ``text`` (whitespace inside each kept as written; none for a blank text)."""
        pieces: list[str] = []
        current: list[str] = []
        words = 0
        for sentence in _sentences(text):
            n = len(sentence.split())
            if current and words + n > self.max_words:
                pieces.append(" ".join(current))
                current, words = [], 0
            if n > self.max_words:  # one overlong sentence: cut it at word boundaries
                tokens = sentence.split()
                for start in range(0, len(tokens), self.max_words):
                    pieces.append(" ".join(tokens[start : start + self.max_words]))
                continue
            current.append(sentence)
            words += n
        if current:
            pieces.append(" ".join(current))
        return pieces


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s and s.strip()]


def split_documents(
    texts: Sequence[str],
    ids: Sequence[str],
    metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    *,
    splitter: PassageSplitter | None = None,
) -> tuple[list[Passage], list[str]]:
    """The passages of documents ``texts`` (ids ``ids``), each with its document's metadata plus
    ``doc_id`` and ``passage_index``; and the ids of the documents that were blank (no passage)."""
    splitter = splitter or PassageSplitter()
    if isinstance(texts, str) or len(texts) != len(ids):
        msg = f"texts and ids must be lists of the same length, got {type(texts).__name__} and {len(ids)} ids"
        raise InvalidInputError(msg)
    if metadatas is not None and len(metadatas) != len(texts):
        msg = f"metadatas must be one dict (or None) per text: {len(metadatas)} for {len(texts)} texts"
        raise InvalidInputError(msg)
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dupes = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        msg = f"duplicate document ids in one call: {dupes[:5]}"
        raise DuplicateIdError(msg)
    passages: list[Passage] = []
    blank: list[str] = []
    for n, (text, doc_id) in enumerate(zip(texts, ids, strict=True)):
        check_text(text, f"text {n}")
        if not isinstance(doc_id, str) or not doc_id:
            msg = f"document ids must be non-empty strings, got {doc_id!r}"
            raise InvalidInputError(msg)
        meta = check_metadata(metadatas[n] or {}, f"metadatas[{n}]") if metadatas is not None else {}
        pieces = splitter.split(text)
        if not pieces:
            blank.append(doc_id)
            continue
        for i, piece in enumerate(pieces):
            pid = doc_id if len(pieces) == 1 else f"{doc_id}#{i}"
            passages.append(Passage(pid, piece, doc_id, {**meta, "doc_id": doc_id, "passage_index": i}))
    return passages, blank
