"""Contracts of the late-interaction engine: encoders, stores, records and hits.

Nothing here assumes text. An :class:`Encoder` turns queries and documents (strings, page images,
anything) into one float matrix per item, one row per token or patch. A :class:`MultiVectorStore`
keeps those matrices by id with metadata and scores a query matrix against them with MaxSim.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragplug._text import check_unicode
from ragplug.errors import DuplicateIdError, EncoderMismatchError, InvalidInputError
from ragplug.retrievers.late_interaction.filters import Filter, FilterNode

_Options = TypeVar("_Options", bound="SearchOptions")

__all__ = [
    "RELEVANCE_KEY",
    "SCORE_KEY",
    "Chunk",
    "Chunker",
    "Encoder",
    "EncoderIdentity",
    "Hit",
    "MultiVectorStore",
    "Record",
    "SearchOptions",
    "ThreadedAsync",
    "as_matrix",
    "check_encoder",
    "check_ids",
    "check_k",
    "check_metadata",
    "check_records",
    "check_text",
    "copy_metadata",
    "plan_write",
    "relevance_of",
]

FloatMatrix = npt.NDArray[np.float32]

#: The metadata key under which the framework faces report a hit's score (LangChain ``Document.metadata``).
#: Reserved: a stored item's own metadata may not use it, so a user's field is never overwritten.
SCORE_KEY = "ragplug_score"
#: The metadata key of a hit's relevance in [0, 1] (:func:`relevance_of`), LangChain's usual name for it.
#: Reserved like :data:`SCORE_KEY`.
RELEVANCE_KEY = "relevance_score"

_MAX_METADATA_DEPTH = 32


@dataclass(frozen=True)
class EncoderIdentity:
    """What a persisted store remembers about the encoder that wrote it.

    Two identities are compatible when ``dim`` and ``fingerprint`` match; the fingerprint hashes whatever
    changes the vectors (weights file digest, markers, lengths, projection). ``settings`` (JSON) records
    how to rebuild the encoder — ``{"encoder": "colbert", "model": ..., "query_maxlen": ...}`` — so that an
    index reopens from its path alone and a mismatch names the setting that differs.
    """

    name: str
    dim: int
    fingerprint: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @staticmethod
    def fingerprint_of(settings: Mapping[str, Any]) -> str:
        """A short stable hash of JSON-serialisable settings."""
        blob = json.dumps(settings, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint}
        if self.settings:
            out["settings"] = json.loads(json.dumps(dict(self.settings), default=str))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EncoderIdentity:
        settings = data.get("settings")
        return cls(
            name=str(data["name"]),
            dim=int(data["dim"]),
            fingerprint=str(data.get("fingerprint", "")),
            settings=dict(settings) if isinstance(settings, Mapping) else {},
        )

    def differences(self, other: EncoderIdentity) -> list[str]:
        """What differs from ``other``, in words: each setting (``"doc_maxlen: 180 != 300"``), the
        dimension, or, when every recorded setting agrees, the model files themselves."""
        out = []
        if self.dim != other.dim:
            out.append(f"dim: {self.dim} != {other.dim}")
        for key in sorted(set(self.settings) | set(other.settings)):
            if key == "model":
                continue
            mine, theirs = self.settings.get(key, "unset"), other.settings.get(key, "unset")
            if mine != theirs:
                out.append(f"{key}: {mine!r} != {theirs!r}")
        if not out and self.fingerprint != other.fingerprint:
            out.append("the model's weights, config or tokenizer files differ")
        return out


@runtime_checkable
class Encoder(Protocol):
    """Turns queries and documents into multi-vectors: one ``(n_tokens, dim)`` float32 matrix per item."""

    @property
    def identity(self) -> EncoderIdentity: ...

    def encode_queries(self, queries: Sequence[str]) -> list[FloatMatrix]: ...

    def encode_documents(self, documents: Sequence[Any], *, show_progress: bool | None = None) -> list[FloatMatrix]:
        """One matrix per document; ``show_progress`` ``None`` lets the encoder decide (on for long work)."""
        ...


@dataclass
class Record:
    """One stored record: its id, multi-vector, metadata and (optionally) its text.

    A long item split into chunks is stored as one record per chunk, each with the item's id as
    ``parent_id``; stores expand a parent id in ``get`` and ``delete`` and replace all of an item's
    records in ``upsert``.
    """

    id: str
    vectors: FloatMatrix
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    parent_id: str | None = None

    @property
    def item_id(self) -> str:
        """The id of the item this record belongs to: its parent's, or its own."""
        return self.parent_id if self.parent_id is not None else self.id


@dataclass(frozen=True)
class Hit:
    """One search result. ``score`` is the raw MaxSim score (higher is better; it grows with the query's
    length); ``relevance`` is the same score on a fixed scale, see :func:`relevance_of` (set by
    :class:`~ragplug.retrievers.late_interaction.LateInteractionIndex`, ``None`` from a bare store)."""

    id: str
    score: float
    metadata: dict[str, Any]
    text: str | None = None
    parent_id: str | None = None
    relevance: float | None = None


def relevance_of(score: float, n_query_vectors: int) -> float:
    """A MaxSim score as a relevance in [0, 1]: divided by the number of query vectors, it is the mean over
    query tokens of each one's best cosine similarity in the document (for unit-norm vectors, as ColBERT and
    ColPali make them), clipped to [0, 1]. Comparable across queries of any length, so a ``score_threshold``
    means the same for every query; ranks within one query are unchanged (except below 0, all 0).

    >>> relevance_of(24.0, 32), relevance_of(-3.0, 32)
    (0.75, 0.0)
    """
    return min(1.0, max(0.0, float(score) / max(1, int(n_query_vectors))))


@dataclass(frozen=True)
class Chunk:
    """One piece of a split item: what to encode, its text, and where it starts in the original."""

    item: Any
    text: str | None
    start: int = 0


Chunker = Callable[[Any], list[Chunk]]


@dataclass(frozen=True)
class SearchOptions:
    """Per-search settings of a store; each store declares its own subclass as ``search_options``.

    Fields are checked at construction; :meth:`from_kwargs` turns keyword arguments (a retriever's
    ``search_kwargs``) into options, refusing names the store does not take.
    """

    @classmethod
    def from_kwargs(cls: type[_Options], **kwargs: Any) -> _Options:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            msg = f"unknown search options {unknown}; this store takes {sorted(names)}"
            raise InvalidInputError(msg)
        return cls(**kwargs)


@runtime_checkable
class MultiVectorStore(Protocol):
    """Storage and MaxSim search for multi-vectors, keyed by string ids.

    Ids name records; an item split into chunks is also addressable by its id (the chunks'
    ``parent_id``). ``add`` refuses an id or item that exists (:class:`~ragplug.errors.DuplicateIdError`);
    ``upsert`` replaces every record of the items it is given; ``delete`` and ``get`` expand item ids
    to their chunks and raise :class:`~ragplug.errors.UnknownIdError` for unknown ids. A record may never
    silently replace another item's record. A call that raises changes nothing.

    ``encoder`` is the identity of the encoder the stored vectors came from (``None`` until known);
    ``bind_encoder`` records it, or raises :class:`~ragplug.errors.EncoderMismatchError` when it differs.
    Every method has an ``a``-prefixed async twin; in-process stores run the sync body in a thread.

    Optional, outside the protocol (both built-in stores have it): ``records(*, vectors: bool = True)``, an
    iterator over every record in insertion order. ``vectors=False`` reads ids, parents, texts and metadata
    only, never a vector: each record's ``vectors`` is then an empty ``(0, dim)`` float32 matrix, which no
    store accepts, so such records cannot be written back by mistake.
    """

    search_options: ClassVar[type[SearchOptions]]

    @property
    def dim(self) -> int | None: ...

    @property
    def encoder(self) -> EncoderIdentity | None: ...

    def bind_encoder(self, identity: EncoderIdentity) -> None: ...

    async def abind_encoder(self, identity: EncoderIdentity) -> None: ...

    def __len__(self) -> int: ...

    def __contains__(self, id: object) -> bool: ...

    def ids(self) -> list[str]: ...

    def add(self, records: Sequence[Record]) -> None: ...

    def upsert(self, records: Sequence[Record]) -> None: ...

    def delete(self, ids: Sequence[str]) -> None: ...

    def get(self, ids: Sequence[str]) -> list[Record]: ...

    def search(
        self,
        query: FloatMatrix,
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[Hit]: ...

    def search_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]: ...

    async def aadd(self, records: Sequence[Record]) -> None: ...

    async def aupsert(self, records: Sequence[Record]) -> None: ...

    async def adelete(self, ids: Sequence[str]) -> None: ...

    async def aget(self, ids: Sequence[str]) -> list[Record]: ...

    async def asearch_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]: ...


class ThreadedAsync:
    """Async twins for an in-process store: each runs the sync method in a worker thread."""

    async def abind_encoder(self, identity: EncoderIdentity) -> None:
        await asyncio.to_thread(self.bind_encoder, identity)  # type: ignore[attr-defined]

    async def aadd(self, records: Sequence[Record]) -> None:
        await asyncio.to_thread(self.add, records)  # type: ignore[attr-defined]

    async def aupsert(self, records: Sequence[Record]) -> None:
        await asyncio.to_thread(self.upsert, records)  # type: ignore[attr-defined]

    async def adelete(self, ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete, ids)  # type: ignore[attr-defined]

    async def aget(self, ids: Sequence[str]) -> list[Record]:
        return await asyncio.to_thread(self.get, ids)  # type: ignore[attr-defined]

    async def asearch_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        search = self.search_batch  # type: ignore[attr-defined]
        return await asyncio.to_thread(search, queries, k=k, filter=filter, options=options)


def check_encoder(stored: EncoderIdentity | None, given: EncoderIdentity, where: str) -> None:
    """Refuse vectors of one encoder in a store (or saved index) written by another, saying what differs."""
    if stored is None:
        return
    if (stored.dim, stored.fingerprint) != (given.dim, given.fingerprint):
        differs = "; ".join(stored.differences(given)) or "fingerprints differ"
        msg = (
            f"{where} was written by encoder {stored.name!r} (dim {stored.dim}, fingerprint {stored.fingerprint}), "
            f"not by {given.name!r} (dim {given.dim}, fingerprint {given.fingerprint}). Stored vs given: {differs}. "
            "Re-index with this encoder, or open the index with the encoder it was written by"
        )
        raise EncoderMismatchError(msg)


def as_matrix(vectors: Any, dim: int | None, what: str) -> FloatMatrix:
    """Validate one multi-vector: a non-empty finite 2-D float matrix of width ``dim``."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (ValueError, TypeError) as err:  # strings, ragged lists, objects
        msg = f"{what} must be a 2-D matrix of numbers (n_vectors, dim): {err}"
        raise InvalidInputError(msg) from None
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
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        msg = f"{what} must be a list of strings, got {type(ids).__name__} {ids!r:.80}"
        raise InvalidInputError(msg)
    out = list(ids)
    for id_ in out:
        if not isinstance(id_, str) or not id_:
            msg = f"{what} must be non-empty strings, got {id_!r}"
            raise InvalidInputError(msg)
        check_text(id_, f"id {id_!r}")
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


def check_text(text: Any, what: str) -> str:
    """A string that every store can keep and every encoder read: a ``str`` without lone surrogates (not
    UTF-8) or NUL characters (Postgres text cannot hold them)."""
    if not isinstance(text, str):
        msg = f"{what} must be a string, got {type(text).__name__}: {text!r:.80}"
        raise InvalidInputError(msg)
    if "\x00" in text:
        msg = f"{what} holds a NUL character (\\x00) at position {text.index(chr(0))}; stores cannot keep it"
        raise InvalidInputError(msg)
    return check_unicode(text, what)


def check_metadata(metadata: Any, what: str) -> dict[str, Any]:
    """A validated deep copy of a metadata dict: JSON values only (string keys, finite numbers, valid text),
    nested at most 32 deep. Tuples become lists, as they would through JSON."""
    if not isinstance(metadata, Mapping):
        msg = f"{what} must be a dict, got {type(metadata).__name__}"
        raise InvalidInputError(msg)
    return _checked_value(metadata, what, 0)


def _checked_value(value: Any, path: str, depth: int) -> Any:
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{path} is {value!r}; metadata numbers must be finite"
            raise InvalidInputError(msg)
        return value
    if isinstance(value, str):
        return check_text(value, path)
    if depth >= _MAX_METADATA_DEPTH:
        msg = f"{path} is nested more than {_MAX_METADATA_DEPTH} levels deep"
        raise InvalidInputError(msg)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                msg = f"{path} has a non-string key {key!r}; metadata keys must be strings"
                raise InvalidInputError(msg)
            check_text(key, f"a key of {path}")
            out[key] = _checked_value(item, f"{path}[{key!r}]", depth + 1)
        return out
    if isinstance(value, list | tuple):
        return [_checked_value(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value)]
    if isinstance(value, np.generic):
        return _checked_value(value.item(), path, depth)
    msg = (
        f"{path} is a {type(value).__name__} ({value!r:.80}); "
        "metadata values must be JSON (str, number, bool, None, list, dict)"
    )
    raise InvalidInputError(msg)


def copy_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of stored metadata that shares nothing mutable with it (stored metadata is JSON-like)."""
    return {key: _copy_value(value) for key, value in metadata.items()}


def _copy_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_value(item) for item in value]
    return value


def check_records(records: Sequence[Record], dim: int | None) -> tuple[list[FloatMatrix], list[dict[str, Any]]]:
    """Validate records for a write: Record objects with valid, distinct ids, parents that are not
    themselves, finite matrices of one width (``dim`` when known), JSON metadata and valid text. Returns
    the matrices (float32, contiguous) and validated copies of the metadata."""
    if isinstance(records, Record) or not isinstance(records, Sequence):
        msg = f"records must be a list of Record, got {type(records).__name__}"
        raise InvalidInputError(msg)
    if not records:
        msg = "no records given"
        raise InvalidInputError(msg)
    for record in records:
        if not isinstance(record, Record):
            msg = f"records must be Record objects, got {type(record).__name__}"
            raise InvalidInputError(msg)
    ids = check_ids([r.id for r in records])
    for record in records:
        if record.parent_id is not None:
            check_ids([record.parent_id], f"parent_id of {record.id!r}")
            if record.parent_id == record.id:
                msg = f"record {record.id!r} names itself as its parent"
                raise InvalidInputError(msg)
    both = sorted(set(ids) & {r.parent_id for r in records if r.parent_id is not None})
    if both:  # an id names a record or an item stored as chunks, never both (nor a chunk of a chunk)
        msg = f"ids {both[:5]} are given both as records and as the parent of other records"
        raise InvalidInputError(msg)
    matrices = []
    for record in records:
        matrix = as_matrix(record.vectors, dim, f"vectors of {record.id!r}")
        dim = matrix.shape[1]
        matrices.append(matrix)
    metadatas = [check_metadata(record.metadata, f"metadata of {record.id!r}") for record in records]
    for record in records:
        if record.text is not None:
            check_text(record.text, f"text of {record.id!r}")
    return matrices, metadatas


def plan_write(records: Sequence[Record], stored: Mapping[str, str | None], *, upsert: bool) -> list[str]:
    """The ids of stored records a write removes, or the :class:`DuplicateIdError` it must raise: the one
    set of ownership rules every store applies (each store only looks up ``stored``).

    ``stored`` maps the id of every stored record that the write touches to its ``parent_id``: records
    whose id is one of the new ids or items, and records whose parent is. An add refuses any new id or
    item that is stored as a record or as an item; an upsert removes every record of its items and
    refuses a new id that belongs to another stored item, or an item id that is another item's chunk.
    """
    new_ids = {r.id for r in records}
    items = {r.item_id for r in records}
    parents = {p for p in stored.values() if p is not None}
    if not upsert:
        taken = sorted((new_ids | items) & (set(stored) | parents))
        if taken:
            msg = f"ids already stored: {taken[:10]}; use upsert to replace them"
            raise DuplicateIdError(msg)
        return []
    foreign = sorted(i for i in items if stored.get(i) is not None)
    if foreign:
        owner = stored[foreign[0]]
        msg = f"id {foreign[0]!r} is a chunk of item {owner!r}; upsert or delete {owner!r} instead"
        raise DuplicateIdError(msg)
    gone = [i for i, p in stored.items() if i in items or p in items]
    kept = set(stored) - set(gone)
    clash = sorted(new_ids & (kept | {stored[i] for i in kept if stored[i] is not None}))
    if clash:
        msg = f"ids {clash[:5]} belong to other stored items; not replaced"
        raise DuplicateIdError(msg)
    return gone
