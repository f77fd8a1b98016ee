"""A store's packed token vectors under a codec, read like a float32 matrix.

:class:`TokenMatrix` keeps every token of a store in one set of columns (:mod:`.codecs`): one row per
token, documents contiguous. Indexing it with a slice or an array of rows returns float32 vectors in the
codec's space, decoded on the fly, so the exact scorer (:mod:`.maxsim`) reads a compressed store as it
reads a float32 one. Without a trained codec (a codec that needs training, before the store has seen
enough tokens) it keeps float32 vectors as they came; :meth:`TokenMatrix.encoded` converts them once the
codec is trained.

Columns loaded from disk may be read-only memory maps: nothing is read until it is used, and the first
write copies them into memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug.retrievers.late_interaction.codecs import Codec, Columns

__all__ = ["TokenMatrix"]

FloatMatrix = npt.NDArray[np.float32]

#: Rows decoded at a time when converting a whole matrix (bounds the float32 temporary).
_CONVERT_ROWS = 1 << 16


class TokenMatrix:
    """Token vectors of a store: ``codec`` columns, or raw float32 vectors when ``codec`` is None."""

    def __init__(self, input_dim: int, codec: Codec | None = None, columns: Columns | None = None) -> None:
        self.input_dim = input_dim
        self.codec = codec
        self._columns = columns if columns is not None else self._empty()
        self._n = len(next(iter(self._columns.values())))

    def _empty(self) -> Columns:
        if self.codec is None:
            return {"vectors": np.empty((0, self.input_dim), dtype=np.float32)}
        return self.codec.empty()

    # -- reading --------------------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """Width of the decoded vectors (the codec's, after any projection)."""
        return self.codec.dim if self.codec is not None else self.input_dim

    @property
    def shape(self) -> tuple[int, int]:
        return (self._n, self.dim)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, rows: slice | npt.NDArray[np.integer[Any]]) -> FloatMatrix:
        """Float32 vectors of ``rows`` (a slice within ``len(self)`` or an array of row indices)."""
        if isinstance(rows, slice):
            rows = slice(*rows.indices(self._n))
        if self.codec is None or self.kept is not None:  # vectors as they are (or kept beside the codes)
            return np.asarray(self._columns["vectors"][rows], dtype=np.float32)
        return self.codec.decode({name: col[rows] for name, col in self._columns.items()})

    def similarities(self, query: FloatMatrix, rows: slice | npt.NDArray[np.integer[Any]]) -> FloatMatrix:
        """``query @ self[rows].T`` for a prepared query, computed by the codec without normalised copies of
        the rows (:meth:`.Codec.similarities`)."""
        if isinstance(rows, slice):
            rows = slice(*rows.indices(self._n))
        if self.codec is None:
            return np.ascontiguousarray(query, dtype=np.float32) @ self._columns["vectors"][rows].T
        return self.codec.similarities(query, {name: col[rows] for name, col in self._columns.items()})

    def prepare_query(self, query: FloatMatrix) -> FloatMatrix:
        """A query in the space the stored vectors are decoded into."""
        return self.codec.prepare(query) if self.codec is not None else query

    def lifted(self, lo: int, hi: int) -> FloatMatrix:
        """Rows ``lo:hi`` as encoder-space float32 vectors (a copy)."""
        return self.lift(self[lo:hi]).copy()

    def lift(self, vectors: FloatMatrix) -> FloatMatrix:
        """Decoded vectors mapped back into the encoder's space (see :meth:`.Codec.lift`)."""
        return self.codec.lift(vectors) if self.codec is not None else vectors

    def snapshot(self) -> TokenMatrix:
        """A matrix over the current rows that later writes do not change (they append past its rows into
        the same arrays, or replace the arrays)."""
        return TokenMatrix(self.input_dim, self.codec, self.columns())

    @property
    def raw(self) -> FloatMatrix | None:
        """The float32 vectors themselves when they are stored as they are (no decoding needed), else None."""
        if self.codec is None or self.codec.config.kind == "float32":
            return self._columns["vectors"][: self._n]
        return None

    @property
    def kept(self) -> FloatMatrix | None:
        """The float32 vectors a compressed codec keeps beside its codes (``keep_float32``), else None."""
        if self.codec is not None and self.codec.config.compressed and "vectors" in self._columns:
            return self._columns["vectors"][: self._n]
        return None

    def columns(self) -> Columns:
        """The columns trimmed to ``len(self)`` rows (views)."""
        return {name: col[: self._n] for name, col in self._columns.items()}

    @property
    def codes(self) -> npt.NDArray[np.integer[Any]] | None:
        """The centroid id of every token under a residual codec, else None."""
        return self._columns["codes"][: self._n] if "codes" in self._columns else None

    @property
    def nbytes(self) -> int:
        return sum(int(col[: self._n].nbytes) for col in self._columns.values())

    # -- writing (the store holds its lock) ------------------------------------------------------------
    def append(self, vectors: FloatMatrix) -> None:
        """Append encoder-space float32 vectors, encoded with the codec (grown by doubling)."""
        new = self.codec.encode(self.codec.prepare(vectors)) if self.codec is not None else {"vectors": vectors}
        needed = self._n + len(vectors)
        capacity = len(next(iter(self._columns.values())))
        if needed > capacity or not all(col.flags.writeable for col in self._columns.values()):
            size = max(needed, 2 * capacity, 1024)
            grown = {}
            for name, col in self._columns.items():
                bigger = np.empty((size, *col.shape[1:]), dtype=col.dtype)
                bigger[: self._n] = col[: self._n]
                grown[name] = bigger
            self._columns = grown
        for name, col in self._columns.items():
            col[self._n : needed] = new[name]
        self._n = needed

    def keep(self, mask: npt.NDArray[np.bool_]) -> None:
        """Keep the rows ``mask`` selects (compacting; ``mask`` covers ``len(self)`` rows)."""
        self._columns = {name: np.ascontiguousarray(col[: self._n][mask]) for name, col in self._columns.items()}
        self._n = int(mask.sum())

    def encoded(self, codec: Codec, *, progress: Callable[[int], object] | None = None) -> TokenMatrix:
        """A new matrix holding these tokens under ``codec`` (decoded and lifted from the current one first;
        ``progress`` is told the rows of each chunk done)."""
        out = TokenMatrix(self.input_dim, codec)
        for lo in range(0, self._n, _CONVERT_ROWS):
            hi = min(lo + _CONVERT_ROWS, self._n)
            out.append(self.lifted(lo, hi))
            if progress is not None:
                progress(hi - lo)
        return out

    @classmethod
    def from_columns(
        cls, input_dim: int, codec: Codec | None, columns: Mapping[str, np.ndarray[Any, Any]]
    ) -> TokenMatrix:
        """A matrix over saved columns (views are kept, not copied). The caller checks their shapes."""
        return cls(input_dim, codec, dict(columns))

    def codes_valid(self) -> bool:
        """True unless a residual matrix holds a centroid id its codec does not have."""
        codes = self.codes
        if codes is None or not len(codes) or self.codec is None or self.codec.centroids is None:
            return True
        return int(codes.max()) < len(self.codec.centroids) and int(codes.min()) >= 0

    def columns_fit(self, columns: Mapping[str, np.ndarray[Any, Any]]) -> bool:
        """True when saved ``columns`` have this matrix's names, dtypes and widths, and one row count."""
        expected = self._empty()
        if set(columns) != set(expected):
            return False
        rows = {len(col) for col in columns.values()}
        return len(rows) == 1 and all(
            columns[name].dtype == col.dtype and columns[name].shape[1:] == col.shape[1:]
            for name, col in expected.items()
        )
