"""Exact MaxSim (late interaction) over a packed token matrix, vectorised over documents.

All token vectors of all documents live in one contiguous ``(n_tokens, dim)`` matrix; document ``i``
owns rows ``starts[i] : starts[i] + lengths[i]``. The score of a document is
``sum_q max_t <query_q, doc_t>``. One matrix product per block of documents and one
``np.maximum.reduceat`` per block: no Python loop per document, no padding.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

__all__ = ["Rows", "gather_rows", "maxsim_all", "maxsim_subset"]


class Rows(Protocol):
    """Token vectors that decode rows when indexed (a compressed :class:`~.tokens.TokenMatrix`), and that
    score a query against rows without keeping decoded copies of them (``similarities``: ``query @ rows.T``)."""

    def __getitem__(self, rows: slice | npt.NDArray[np.int64], /) -> npt.NDArray[np.float32]: ...

    def similarities(
        self, query: npt.NDArray[np.float32], rows: slice | npt.NDArray[np.int64], /
    ) -> npt.NDArray[np.float32]: ...

    def __len__(self) -> int: ...


#: Tokens scored per matrix product; bounds the similarity block to ``BLOCK_TOKENS * n_query_tokens`` floats
#: (8 MB for 32 query tokens), allocated once per call and reused: measured 8% faster than fresh 2**18-token
#: blocks on 1,000 pages x 755 x 128 (the block stays in cache, no page faults per block).
BLOCK_TOKENS = 1 << 16

#: Up to this many documents, :func:`maxsim_subset` scores views one document at a time (no copy).
VIEW_LIMIT = 2048


def maxsim_all(
    query: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32] | Rows,
    starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """MaxSim of ``query`` against every document of a packed matrix whose documents are contiguous and ordered.

    ``starts`` must be increasing with ``starts[i + 1] == starts[i] + lengths[i]``.
    """
    n_docs = len(starts)
    scores = np.empty(n_docs, dtype=np.float32)
    if n_docs == 0:
        return scores
    query_c = np.ascontiguousarray(query, dtype=np.float32)
    ends = starts + lengths
    n_query = len(query_c)
    buffer = np.empty(n_query * (min(BLOCK_TOKENS, int(ends[-1])) + int(lengths.max())), dtype=np.float32)
    doc = 0
    while doc < n_docs:
        # Take whole documents until the block holds about BLOCK_TOKENS tokens (at least one document).
        limit = starts[doc] + BLOCK_TOKENS
        last = max(doc + 1, int(np.searchsorted(ends, limit, side="right")))
        lo, hi = int(starts[doc]), int(ends[last - 1])
        # (n_query, block_tokens): each query token's similarities are one contiguous row, so the per-document
        # max runs along rows (measured 1.8x faster than the (block_tokens, n_query) layout at 755k x 128).
        sims = buffer[: n_query * (hi - lo)].reshape(n_query, hi - lo)
        if isinstance(vectors, np.ndarray):
            np.matmul(query_c, vectors[lo:hi].T, out=sims)
        else:
            sims[...] = vectors.similarities(query_c, slice(lo, hi))
        per_doc = np.maximum.reduceat(sims, starts[doc:last] - lo, axis=1)  # (n_query, block_docs)
        scores[doc:last] = per_doc.sum(axis=0)
        doc = last
    return scores


def gather_rows(
    starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64], docs: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Row indices of the tokens of ``docs`` (in order) and each document's start within them."""
    lens = lengths[docs]
    local_starts = np.cumsum(lens) - lens
    rows = np.repeat(starts[docs] - local_starts, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    return rows, local_starts


def maxsim_subset(
    query: npt.NDArray[np.float32],
    vectors: npt.NDArray[np.float32] | Rows,
    starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    docs: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """MaxSim of ``query`` against the documents ``docs`` only (any order); returns one score per entry.

    A few documents (re-scoring candidates) are scored on views of the packed matrix, which copies
    nothing; many (a broad filter) are gathered into one block and scored with one product. Measured on
    SciFact (256 candidates, 384 dims), the views took about 40% of the gather's time, which is
    dominated by copying the rows. ``vectors`` that decode rows when indexed (a compressed
    :class:`~.tokens.TokenMatrix`) are always gathered, so the candidates are decoded in one call.
    """
    if len(docs) == 0:
        return np.empty(0, dtype=np.float32)
    query_t = np.ascontiguousarray(query.T)
    if isinstance(vectors, np.ndarray) and len(docs) <= VIEW_LIMIT:
        out = np.empty(len(docs), dtype=np.float32)
        for i, doc in enumerate(docs.tolist()):
            lo = int(starts[doc])
            out[i] = (vectors[lo : lo + int(lengths[doc])] @ query_t).max(axis=0).sum()
        return out
    rows, local_starts = gather_rows(starts, lengths, docs)
    query_c = np.ascontiguousarray(query, dtype=np.float32)
    # (n_query, rows): per-document max along rows
    sims = query_c @ vectors[rows].T if isinstance(vectors, np.ndarray) else vectors.similarities(query_c, rows)
    return np.maximum.reduceat(sims, local_starts, axis=1).sum(axis=0).astype(np.float32, copy=False)
