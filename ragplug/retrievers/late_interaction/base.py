"""Contracts of the late-interaction engine: encoders, stores, records and hits.

Nothing here assumes text. An :class:`Encoder` turns queries and documents (strings, page images,
anything) into one float matrix per item, one row per token or patch. A :class:`MultiVectorStore`
keeps those matrices by id with metadata and scores a query matrix against them with MaxSim.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragplug.errors import DuplicateIdError, InvalidInputError
from ragplug.retrievers.late_interaction.filters import Filter

__all__ = [
    "Encoder",
    "EncoderIdentity",
    "Hit",
    "MultiVectorStore",
    "Record",
    "as_matrix",
    "check_ids",
    "check_k",
]

FloatMatrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class EncoderIdentity:
    """What a persisted store remembers about the encoder that wrote it.

    Two identities are compatible when ``name``, ``dim`` and ``fingerprint`` all match; the fingerprint
    hashes whatever changes the vectors (weights file digest, markers, lengths, projection).
    """

    name: str
    dim: int
    fingerprint: str = ""

    @staticmethod
    def fingerprint_of(settings: Mapping[str, Any]) -> str:
        """A short stable hash of JSON-serialisable settings."""
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderIdentity:
        return cls(name=str(data["name"]), dim=int(data["dim"]), fingerprint=str(data.get("fingerprint", "")))


@runtime_checkable
class Encoder(Protocol):
    """Turns queries and documents into multi-vectors: one ``(n_tokens, dim)`` float32 matrix per item."""

    @property
    def identity(self) -> EncoderIdentity: ...

    def encode_queries(self, queries: Sequence[str]) -> list[FloatMatrix]: ...

    def encode_documents(self, documents: Sequence[Any], *, show_progress: bool = False) -> list[FloatMatrix]: ...


@dataclass
class Record:
    """One stored item: its id, multi-vector, metadata and (optionally) its text."""

    id: str
    vectors: FloatMatrix
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is the MaxSim score (higher is better)."""

    id: str
    score: float
    metadata: dict[str, Any]
    text: str | None = None


@runtime_checkable
class MultiVectorStore(Protocol):
    """Storage and MaxSim search for multi-vectors, keyed by string ids.

    ``add`` refuses ids that exist (:class:`~ragplug.errors.DuplicateIdError`); ``upsert`` replaces them;
    ``delete`` and ``get`` raise :class:`~ragplug.errors.UnknownIdError` for unknown ids. A call that
    raises changes nothing.
    """

    @property
    def dim(self) -> int | None: ...

    def __len__(self) -> int: ...

    def __contains__(self, id: object) -> bool: ...

    def ids(self) -> list[str]: ...

    def metadata(self) -> list[tuple[str, dict[str, Any]]]: ...

    def add(self, records: Sequence[Record]) -> None: ...

    def upsert(self, records: Sequence[Record], *, replacing: Sequence[str] = ()) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def get(self, ids: Sequence[str]) -> list[Record]: ...

    def search(self, query: FloatMatrix, *, k: int = 10, filter: Filter | None = None) -> list[Hit]: ...


def as_matrix(vectors: Any, dim: int | None, what: str) -> FloatMatrix:
    """Validate one multi-vector: a non-empty finite 2-D float matrix of width ``dim``."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        msg = f"{what} must be a non-empty 2-D matrix (n_vectors, dim), got shape {matrix.shape}"
        raise InvalidInputError(msg)
    if dim is not None and matrix.shape[1] != dim:
        msg = f"{what} has dimension {matrix.shape[1]}, but this store holds dimension {dim}"
        raise InvalidInputError(msg)
    if not np.isfinite(matrix).all():
        msg = f"{what} contains NaN or infinite values"
        raise InvalidInputError(msg)
    return np.ascontiguousarray(matrix)


def check_ids(ids: Sequence[str], what: str = "ids") -> list[str]:
    """Validate a list of ids: non-empty strings, no duplicates within the call."""
    if isinstance(ids, str):
        msg = f"{what} must be a list of strings, not a single string {ids!r}"
        raise InvalidInputError(msg)
    out = list(ids)
    for id_ in out:
        if not isinstance(id_, str) or not id_:
            msg = f"{what} must be non-empty strings, got {id_!r}"
            raise InvalidInputError(msg)
    if len(set(out)) != len(out):
        seen: set[str] = set()
        dupes = sorted({i for i in out if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        msg = f"duplicate {what} in one call: {dupes[:10]}"
        raise DuplicateIdError(msg)
    return out


def check_k(k: Any) -> int:
    """``k`` must be a positive integer."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k <= 0:
        msg = f"k must be a positive integer, got {k!r}"
        raise InvalidInputError(msg)
    return int(k)
