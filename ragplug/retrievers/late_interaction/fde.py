"""One vector per multi-vector, for a single-vector index: the mean, or a fixed-dimensional encoding (MUVERA).

:class:`SummaryConfig` / :class:`Summarizer` choose between them (see there for the measurements).

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

__all__ = ["FDEConfig", "FixedDimensionalEncoder", "Summarizer", "SummaryConfig"]

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


@dataclass(frozen=True)
class SummaryConfig:
    """The one vector per record that a database's vector index holds, to propose candidates for MaxSim.

    ``kind="mean"``: the L2-normalised mean of the record's token vectors (queries likewise), ``dim``
    dimensions. ``kind="fde"``: the MUVERA encoding under ``fde``. ``benchmarks/first_stage_recall.py``
    measures both in a 100k-document SciFact haystack (MiniLM token vectors, 128 dims): exact MaxSim's top
    10 lie in the first stage's top 100 for 0.64 of queries with the mean and 0.58 with a 1,792-dim FDE
    (raw MiniLM token vectors share a strong common direction, which SimHash buckets split badly). The
    default is therefore the mean; both are weak at that scale (see the benchmark for a better candidate).
    """

    kind: str = "mean"
    fde: FDEConfig = FDEConfig()

    def __post_init__(self) -> None:
        if self.kind not in ("mean", "fde"):
            msg = f"SummaryConfig.kind must be 'mean' or 'fde', got {self.kind!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.fde, FDEConfig):
            msg = f"SummaryConfig.fde must be an FDEConfig, got {type(self.fde).__name__}"
            raise InvalidInputError(msg)

    def dim(self, token_dim: int) -> int:
        return token_dim if self.kind == "mean" else self.fde.dim

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fde": self.fde.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SummaryConfig:
        return cls(kind=str(data["kind"]), fde=FDEConfig(**data["fde"]))


class Summarizer:
    """Makes the vectors of :class:`SummaryConfig` for ``dim``-dimensional multi-vectors."""

    def __init__(self, dim: int, config: SummaryConfig) -> None:
        self.config = config
        self.dim = config.dim(dim)
        self._fde = FixedDimensionalEncoder(dim, config.fde) if config.kind == "fde" else None

    def documents(self, matrices: list[FloatMatrix]) -> FloatMatrix:
        if self._fde is not None:
            return self._fde.documents(matrices)
        return _normalised(np.stack([np.asarray(m, dtype=np.float32).mean(axis=0) for m in matrices]))

    def query(self, matrix: FloatMatrix) -> FloatMatrix:
        if self._fde is not None:
            return self._fde.query(matrix)
        return _normalised(np.asarray(matrix, dtype=np.float32).mean(axis=0))


def _normalised(x: FloatMatrix) -> FloatMatrix:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)
