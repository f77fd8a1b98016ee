"""Maximal marginal relevance over multi-vectors: diverse results for one query.

MMR (Carbonell & Goldstein, 1998) picks results one at a time, each maximising
``lambda_mult * relevance(query, d) - (1 - lambda_mult) * max similarity(d, already picked)``. Here both
terms are late-interaction scores on the [0, 1] scale of :func:`~.base.relevance_of`: relevance is the
query's MaxSim normalised by its length, and the similarity of two documents is the mean of their MaxSim in
both directions, each normalised by the length of the side that searches. Single-vector MMR helpers (such
as langchain-core's) take one embedding per document, so they cannot be reused for token matrices; the
greedy loop itself is a few lines.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction.base import FloatMatrix, relevance_of

__all__ = ["check_mmr", "document_similarity", "mmr_order"]


def check_mmr(k: int, fetch_k: int, lambda_mult: float) -> None:
    """``fetch_k`` is a positive integer, at least ``k``; ``lambda_mult`` a number in [0, 1]."""
    if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or fetch_k < k:
        msg = f"fetch_k must be an integer >= k ({k}), got {fetch_k!r}"
        raise InvalidInputError(msg)
    if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, int | float) or not 0 <= lambda_mult <= 1:
        msg = f"lambda_mult must be a number in [0, 1], got {lambda_mult!r}"
        raise InvalidInputError(msg)


def document_similarity(a: FloatMatrix, b: FloatMatrix) -> float:
    """Symmetric late-interaction similarity of two documents in [0, 1]."""
    sims = np.asarray(a, dtype=np.float32) @ np.asarray(b, dtype=np.float32).T
    forward = relevance_of(float(sims.max(axis=1).sum()), len(a))
    backward = relevance_of(float(sims.max(axis=0).sum()), len(b))
    return (forward + backward) / 2


def mmr_order(relevance: Sequence[float], documents: Sequence[FloatMatrix], k: int, lambda_mult: float) -> list[int]:
    """Positions of the ``k`` documents MMR picks, in the order picked (the most relevant first)."""
    n = len(documents)
    if n == 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    penalty = np.full(n, -np.inf)  # max similarity to anything picked so far
    picked: list[int] = []
    available = np.ones(n, dtype=bool)
    while len(picked) < min(k, n):
        gain = lambda_mult * rel - (1 - lambda_mult) * np.where(np.isfinite(penalty), penalty, 0.0)
        gain[~available] = -np.inf
        best = int(np.argmax(gain))
        picked.append(best)
        available[best] = False
        for i in np.flatnonzero(available).tolist():
            penalty[i] = max(penalty[i], document_similarity(documents[i], documents[best]))
    return picked
