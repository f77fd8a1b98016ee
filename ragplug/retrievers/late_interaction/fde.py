"""Fixed-dimensional encodings (MUVERA) of multi-vectors: one vector per document for a single-vector index.

A database's vector index (pgvector's HNSW) holds one vector per row. MUVERA (Dhulipala et al., 2024)
turns a multi-vector into one vector whose inner product approximates the MaxSim (Chamfer) score:

1. Each of ``repetitions`` rounds draws ``k_sim`` random hyperplanes (SimHash); a token's signs against
   them pick one of ``2**k_sim`` buckets.
2. Per bucket, a document keeps the mean of its tokens there (an empty bucket takes the token nearest to it
   in Hamming distance), a query the sum of its tokens there.
3. Each bucket's vector is projected to ``d_proj`` dimensions with a random ±1 matrix; all buckets of all
   rounds are concatenated: ``repetitions * 2**k_sim * d_proj`` dimensions.

The encoding is only a first stage: candidates it finds are re-scored with exact MaxSim
(:mod:`.twostage`). Written here in numpy (a few dozen lines) rather than taken from a library: the
reference implementation is C++ inside Google's graph-mining repository, not a Python package. Vectors
are assumed L2-normalised, as ColBERT-style encoders make them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug.errors import InvalidInputError

__all__ = ["FDEConfig", "FixedDimensionalEncoder"]

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class FDEConfig:
    """Settings of the encoding; checked at construction. Defaults give 1,792 dimensions."""

    k_sim: int = 4
    d_proj: int = 16
    repetitions: int = 7
    seed: int = 0

    def __post_init__(self) -> None:
        limits = {"k_sim": (1, 10), "d_proj": (1, 1024), "repetitions": (1, 64), "seed": (0, 2**31)}
        for name, (low, high) in limits.items():
            value = getattr(self, name)
            if type(value) is not int or not low <= value <= high:
                msg = f"FDEConfig.{name} must be an integer in [{low}, {high}], got {value!r}"
                raise InvalidInputError(msg)

    @property
    def dim(self) -> int:
        return self.repetitions * (2**self.k_sim) * self.d_proj

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FixedDimensionalEncoder:
    """MUVERA encodings of ``dim``-dimensional multi-vectors under ``config`` (deterministic per seed)."""

    def __init__(self, dim: int, config: FDEConfig | None = None) -> None:
        self.config = config or FDEConfig()
        self.dim = dim
        c = self.config
        rng = np.random.default_rng(c.seed)
        self._planes = rng.standard_normal((c.repetitions, dim, c.k_sim)).astype(np.float32)
        signs = rng.integers(0, 2, size=(c.repetitions, dim, c.d_proj)).astype(np.float32) * 2 - 1
        self._projections = signs / np.sqrt(c.d_proj)
        self._powers = (1 << np.arange(c.k_sim)).astype(np.int64)
        buckets = np.arange(2**c.k_sim)
        xor = buckets[:, None] ^ buckets[None, :]
        self._hamming = np.array([[bin(int(x)).count("1") for x in row] for row in xor], dtype=np.int64)

    @property
    def output_dim(self) -> int:
        return self.config.dim

    def _codes_and_projected(self, matrix: FloatMatrix) -> tuple[npt.NDArray[np.int64], FloatMatrix]:
        """Per round: each token's bucket ``(rounds, n)`` and its projection ``(rounds, n, d_proj)``."""
        signs = np.einsum("nd,rdk->rnk", matrix, self._planes) > 0
        codes = (signs.astype(np.int64) * self._powers).sum(axis=2)
        projected = np.einsum("nd,rdp->rnp", matrix, self._projections)
        return codes, projected

    def query(self, matrix: FloatMatrix) -> FloatMatrix:
        """The encoding of one query matrix (bucket sums)."""
        c = self.config
        codes, projected = self._codes_and_projected(np.asarray(matrix, dtype=np.float32))
        out = np.zeros((c.repetitions, 2**c.k_sim, c.d_proj), dtype=np.float32)
        for r in range(c.repetitions):
            np.add.at(out[r], codes[r], projected[r])
        return out.reshape(-1)

    def documents(self, matrices: list[FloatMatrix]) -> FloatMatrix:
        """The encodings of documents, one row each (bucket means; empty buckets filled)."""
        out = np.empty((len(matrices), self.output_dim), dtype=np.float32)
        for i, matrix in enumerate(matrices):
            out[i] = self._document(np.asarray(matrix, dtype=np.float32))
        return out

    def _document(self, matrix: FloatMatrix) -> FloatMatrix:
        c = self.config
        n_buckets = 2**c.k_sim
        codes, projected = self._codes_and_projected(matrix)
        out = np.zeros((c.repetitions, n_buckets, c.d_proj), dtype=np.float32)
        for r in range(c.repetitions):
            counts = np.bincount(codes[r], minlength=n_buckets)
            np.add.at(out[r], codes[r], projected[r])
            filled = counts > 0
            out[r, filled] /= counts[filled, None]
            empty = np.flatnonzero(~filled)
            if len(empty):  # the token whose bucket is nearest in Hamming distance stands in
                nearest = self._hamming[empty][:, codes[r]].argmin(axis=1)
                out[r, empty] = projected[r, nearest]
        return out.reshape(-1)
