"""Re-rank candidates with MaxSim: score arbitrary items against a query with any :class:`Encoder`.

Used by the framework rerankers (LangChain ``ColBERTReranker``, LlamaIndex ``ColBERTRerank``): candidates
come from another retriever, get encoded on the fly, and are ordered by their late-interaction score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction.base import Encoder, relevance_of
from ragplug.retrievers.late_interaction.maxsim import maxsim_all

__all__ = ["Ranked", "rerank"]


class Ranked(NamedTuple):
    """One re-ranked item: its position in the input, raw MaxSim score and relevance in [0, 1]."""

    position: int
    score: float
    relevance: float


def rerank(encoder: Encoder, query: str, items: Sequence[Any], top_n: int | None = None) -> list[Ranked]:
    """The items' :class:`Ranked` entries, best first, at most ``top_n`` of them."""
    if not isinstance(query, str) or not query.strip():
        msg = f"the query must be a non-empty string, got {query!r}"
        raise InvalidInputError(msg)
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n <= 0):
        msg = f"top_n must be a positive integer or None, got {top_n!r}"
        raise InvalidInputError(msg)
    if not items:
        return []
    (q,) = encoder.encode_queries([query])
    docs = encoder.encode_documents(list(items))
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    scores = maxsim_all(q, np.concatenate(docs), starts, lengths)
    order = np.argsort(-scores, kind="stable")[: top_n or len(items)]
    return [Ranked(int(i), float(scores[i]), relevance_of(scores[i], len(q))) for i in order]
