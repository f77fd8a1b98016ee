"""The second stage every store shares: exact MaxSim over candidates, best ``k`` first.

A store's first stage (centroid lists in memory, an HNSW index of one vector per document in Postgres,
or simply the documents a filter lets through) proposes candidate documents; this module scores them
exactly against the query's token matrix and keeps the ``k`` best. The candidates' token vectors come as
a packed matrix (:mod:`.maxsim`): the memory store passes views of its own, the database stores pack what
they fetched.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ragplug.retrievers.late_interaction.maxsim import Rows, maxsim_all, maxsim_subset

__all__ = ["pack", "top_k_exact"]

FloatMatrix = npt.NDArray[np.float32]
Ints = npt.NDArray[np.int64]


def top_k_exact(
    query: FloatMatrix,
    vectors: FloatMatrix | Rows,
    starts: Ints,
    lengths: Ints,
    k: int,
    candidates: Ints | None = None,
    mask: npt.NDArray[np.bool_] | None = None,
) -> list[tuple[int, float]]:
    """``(document, exact MaxSim score)`` of the ``k`` best ``candidates`` (default: every document of the
    packed matrix, or those ``mask`` lets through), best first; ties keep the candidates' order."""
    if candidates is None:
        scores = maxsim_all(query, vectors, starts, lengths)
        docs = np.arange(len(scores))
        if mask is not None:
            docs, scores = docs[mask], scores[mask]
    else:
        scores = maxsim_subset(query, vectors, starts, lengths, candidates)
        docs = candidates
    if k < len(scores):
        part = np.argpartition(-scores, k - 1)[:k]
        top = part[np.lexsort((part, -scores[part]))]
    else:
        top = np.argsort(-scores, kind="stable")
    return [(int(docs[t]), float(scores[t])) for t in top]


def pack(matrices: list[FloatMatrix]) -> tuple[FloatMatrix, Ints, Ints]:
    """Token matrices as one packed matrix with ``starts`` and ``lengths``."""
    lengths = np.array([len(m) for m in matrices], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    vectors = np.concatenate(matrices).astype(np.float32, copy=False) if matrices else np.empty((0, 0), np.float32)
    return vectors, starts, lengths
