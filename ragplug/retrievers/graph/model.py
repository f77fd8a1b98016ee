"""The typed contract between Graph RAG's stages: passages, entities, relations, extractions, the graph store.

Stages hand each other these types, never an untyped config dict:

chunking (:class:`Passage`) → extraction (:class:`Extraction` per passage, behind :class:`Extractor`) →
graph store (:class:`GraphStore`, fed one :class:`GraphBatch` per write) → communities (:class:`Community`) →
search (over a :class:`GraphSnapshot`).

A graph store keeps what each passage supports: which entities it mentions and which relations it states.
An entity or relation lives as long as some passage supports it, so deleting a document removes exactly
what only that document supported. Synonym edges (between entities whose embeddings are close) belong to
no passage; they go when either entity goes.
"""

from __future__ import annotations

import asyncio
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from ragplug.chat import ChatFunction
from ragplug.errors import EncoderMismatchError

__all__ = [
    "CO_OCCURS",
    "GRAPH_FORMAT",
    "SYNONYM",
    "ChatFunction",
    "Community",
    "Entity",
    "Extraction",
    "Extractor",
    "GraphBatch",
    "GraphIdentity",
    "GraphSnapshot",
    "GraphStats",
    "GraphStore",
    "Passage",
    "Relation",
    "ThreadedGraphAsync",
    "entity_key",
]

#: The version of the graph's persisted layout (folder manifest, Postgres tables). A store written in
#: another version is refused with :class:`~ragplug.errors.StoreCorruptedError`.
GRAPH_FORMAT = 1
#: The label of an edge between two entities mentioned in the same passage.
CO_OCCURS = "co-occurs"
#: The label of an edge between two entities whose embeddings are close.
SYNONYM = "synonym"

FloatMatrix = npt.NDArray[np.float32]

_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = "\"'`’‘“”.,;:!?()[]{}<>«»-–—*_/\\|"


def entity_key(name: str) -> str:
    """The key under which an entity is stored: its name NFKC-normalised, case-folded, whitespace collapsed,
    surrounding punctuation and a possessive ``'s`` removed. ``"Scrooge's"`` and ``"SCROOGE"`` are one entity.

    >>> entity_key("  Ebenezer   Scrooge's "), entity_key("“Marley.”")
    ('ebenezer scrooge', 'marley')
    """
    text = unicodedata.normalize("NFKC", name).casefold()
    text = _SPACE.sub(" ", text).strip().strip(_EDGE_PUNCT).strip()
    for suffix in ("'s", "’s"):
        if text.endswith(suffix):
            text = text[: -len(suffix)].rstrip()
    return text


@dataclass(frozen=True)
class Passage:
    """A piece of a document: the unit the graph links entities to, and what a local search returns.
    ``doc_id`` names the document it was cut from (deleting the document deletes its passages)."""

    id: str
    text: str
    doc_id: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Entity:
    """A node of the graph. ``key`` (see :func:`entity_key`) identifies it; ``name`` is how it was written;
    ``kind`` is what the extractor saw (``"name"`` for a capitalised span, ``"phrase"`` for a noun phrase,
    or the type an LLM gave); ``description`` is an LLM's one-line description (empty without one)."""

    key: str
    name: str
    kind: str = "phrase"
    description: str = ""


@dataclass(frozen=True)
class Relation:
    """An edge between two entity keys. ``label`` is :data:`CO_OCCURS`, :data:`SYNONYM` or a relation an
    LLM stated (``"directed"``); ``weight`` grows with the evidence (co-occurrences, a similarity)."""

    source: str
    target: str
    label: str = CO_OCCURS
    weight: float = 1.0


@dataclass(frozen=True)
class Extraction:
    """What an extractor found in one passage: its entities (keys unique) and the relations among them."""

    passage_id: str
    entities: tuple[Entity, ...] = ()
    relations: tuple[Relation, ...] = ()


@runtime_checkable
class Extractor(Protocol):
    """Finds entities and relations in passages. ``name`` and ``settings`` (JSON) identify what it extracts:
    a graph built by one extractor is refused by a store built by another (see :class:`GraphIdentity`)."""

    name: str

    @property
    def settings(self) -> Mapping[str, Any]: ...

    def extract(self, passages: Sequence[Passage], *, show_progress: bool | None = None) -> list[Extraction]:
        """One :class:`Extraction` per passage, in order. A passage that yields nothing gets an empty
        extraction (the builder counts and reports it), never an exception."""
        ...

    def query_entities(self, query: str) -> list[Entity]:
        """The entity mentions in a search query (seeds for a local search)."""
        ...


@dataclass(frozen=True)
class GraphIdentity:
    """What a persisted graph remembers about how it was built: the layout version, the extractor and the
    encoder of its entity vectors (an :class:`~ragplug.retrievers.late_interaction.EncoderIdentity` as a
    dict). A graph written by another extractor or encoder cannot be extended or searched with this one."""

    extractor: str
    extractor_settings: Mapping[str, Any] = field(default_factory=dict)
    encoder: Mapping[str, Any] | None = None
    format: int = GRAPH_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "extractor": self.extractor,
            "extractor_settings": dict(self.extractor_settings),
            "encoder": None if self.encoder is None else dict(self.encoder),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphIdentity:
        encoder = data.get("encoder")
        return cls(
            extractor=str(data["extractor"]),
            extractor_settings=dict(data.get("extractor_settings") or {}),
            encoder=None if encoder is None else dict(encoder),
            format=int(data.get("format", GRAPH_FORMAT)),
        )

    def differences(self, other: GraphIdentity) -> list[str]:
        """What differs from ``other``, in words (empty when compatible)."""
        out = []
        if self.extractor != other.extractor:
            out.append(f"extractor: {self.extractor!r} != {other.extractor!r}")
        for key in sorted(set(self.extractor_settings) | set(other.extractor_settings)):
            mine, theirs = self.extractor_settings.get(key, "unset"), other.extractor_settings.get(key, "unset")
            if mine != theirs:
                out.append(f"extractor setting {key}: {mine!r} != {theirs!r}")
        mine_enc, theirs_enc = self.encoder or {}, other.encoder or {}
        for key in ("dim", "fingerprint"):
            if mine_enc.get(key) != theirs_enc.get(key):
                out.append(f"encoder {key}: {mine_enc.get(key)!r} != {theirs_enc.get(key)!r}")
        return out

    def check(self, other: GraphIdentity, where: str) -> None:
        """Raise :class:`~ragplug.errors.EncoderMismatchError` when ``other`` differs from this identity."""
        diffs = self.differences(other)
        if diffs:
            msg = f"{where} was built by another extractor or encoder: " + "; ".join(diffs)
            raise EncoderMismatchError(msg)


@dataclass
class GraphBatch:
    """One write to a graph store: new passages, one extraction per passage, the new entities' vectors
    (unit-norm rows, keyed by entity key; entities already stored keep theirs) and synonym relations
    between entities (new or stored). Built by the graph builder; stores only keep it."""

    passages: list[Passage]
    extractions: list[Extraction]
    entity_vectors: dict[str, FloatMatrix] = field(default_factory=dict)
    synonyms: list[Relation] = field(default_factory=list)


@dataclass(frozen=True)
class Community:
    """A group of closely linked entities (Leiden), with the passages that mention them and a summary
    (extractive without an LLM, LLM-written with one). ``level`` 0 is the finest partition."""

    id: str
    entities: tuple[str, ...]
    passages: tuple[str, ...]
    title: str
    summary: str
    level: int = 0
    rank: float = 0.0


@dataclass(frozen=True)
class GraphStats:
    """Sizes of a graph, for ``ragplug graph stats`` and benchmark reports."""

    documents: int
    passages: int
    entities: int
    relations: int
    mentions: int
    communities: int
    empty_passages: int  # passages in which the extractor found no entity

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class GraphSnapshot:
    """The whole graph as arrays, for ranking (personalized PageRank) and community detection.

    ``mentions`` rows are ``(entity index, passage index)`` with a count each; ``relations`` rows are
    ``(source entity index, target entity index)`` aggregated over every passage that states them (weight
    summed, labels joined). ``version`` is the store's write counter when the snapshot was taken."""

    version: int
    passage_ids: list[str]
    entity_keys: list[str]
    entity_names: list[str]
    mentions: npt.NDArray[np.int64]
    mention_counts: npt.NDArray[np.float32]
    relations: npt.NDArray[np.int64]
    relation_weights: npt.NDArray[np.float32]
    relation_labels: list[str]

    @classmethod
    def build(
        cls,
        version: int,
        passage_ids: Sequence[str],
        entities: Sequence[tuple[str, str]],
        mentions: Sequence[tuple[str, str, float]],
        relations: Sequence[tuple[str, str, str, float]],
    ) -> GraphSnapshot:
        """A snapshot from rows: ``entities`` as ``(key, name)``, ``mentions`` as ``(entity key, passage id,
        count)``, ``relations`` as ``(source key, target key, label, weight)`` (one row per supporting
        passage or synonym; aggregated here, direction ignored)."""
        p_index = {pid: i for i, pid in enumerate(passage_ids)}
        e_index = {key: i for i, (key, _) in enumerate(entities)}
        m = np.array([(e_index[e], p_index[p]) for e, p, _ in mentions], dtype=np.int64).reshape(-1, 2)
        counts = np.array([c for _, _, c in mentions], dtype=np.float32)
        edges: dict[tuple[int, int], tuple[float, set[str]]] = {}
        for source, target, label, weight in relations:
            a, b = e_index[source], e_index[target]
            if a == b:
                continue
            pair = (a, b) if a < b else (b, a)
            total, labels = edges.get(pair, (0.0, set()))
            labels.add(label)
            edges[pair] = (total + float(weight), labels)
        pairs = sorted(edges)
        return cls(
            version=version,
            passage_ids=list(passage_ids),
            entity_keys=[key for key, _ in entities],
            entity_names=[name for _, name in entities],
            mentions=m,
            mention_counts=counts,
            relations=np.array(pairs, dtype=np.int64).reshape(-1, 2),
            relation_weights=np.array([edges[p][0] for p in pairs], dtype=np.float32),
            relation_labels=[",".join(sorted(edges[p][1])) for p in pairs],
        )


@runtime_checkable
class GraphStore(Protocol):
    """Where a knowledge graph lives: passages, entities (with vectors), mentions, relations, communities.

    Writes are atomic: a call that raises changes nothing. ``add`` refuses passage ids that exist
    (:class:`~ragplug.errors.DuplicateIdError`), or with ``replace_documents=True`` first removes every
    passage of the batch's documents, in the same write. ``delete_documents`` removes a document's passages
    and what only they supported (mentions, relations, then entities no passage mentions, with their
    synonym edges and vectors); unknown ids are :class:`~ragplug.errors.UnknownIdError`. ``version`` changes
    at every write (in every process that shares the store), so cached snapshots know they are stale.
    Every method has an ``a``-prefixed async twin.
    """

    kind: ClassVar[str]

    @property
    def identity(self) -> GraphIdentity | None: ...

    def bind(self, identity: GraphIdentity) -> None:
        """Record how the graph is built, or raise :class:`~ragplug.errors.EncoderMismatchError`."""
        ...

    @property
    def version(self) -> int: ...

    def __len__(self) -> int:
        """The number of passages."""
        ...

    def add(self, batch: GraphBatch, *, replace_documents: bool = False) -> None: ...

    def delete_documents(self, doc_ids: Sequence[str]) -> None: ...

    def documents(self) -> list[str]: ...

    def passages(self, ids: Sequence[str]) -> list[Passage]:
        """The passages of ``ids``, in order (unknown ids: :class:`~ragplug.errors.UnknownIdError`)."""
        ...

    def document_passages(self, doc_ids: Sequence[str]) -> list[str]:
        """The ids of the passages of ``doc_ids`` (unknown documents: UnknownIdError)."""
        ...

    def entities(self, keys: Sequence[str]) -> list[Entity]:
        """The entities of ``keys`` that exist, in order (unknown keys are left out)."""
        ...

    def entity_vectors(self, keys: Sequence[str]) -> dict[str, FloatMatrix]:
        """The stored vectors of those ``keys`` that have one."""
        ...

    def nearest_entities(self, vectors: FloatMatrix, k: int) -> list[list[tuple[str, float]]]:
        """For each row of ``vectors`` (unit norm), the ``k`` entities of highest cosine similarity."""
        ...

    def snapshot(self) -> GraphSnapshot: ...

    def set_communities(self, communities: Sequence[Community], version: int) -> None:
        """Replace the stored communities with ``communities``, computed on the snapshot of ``version``."""
        ...

    def communities(self) -> tuple[list[Community], int | None]:
        """The stored communities and the graph version they were computed on (``None``: never)."""
        ...

    def stats(self) -> GraphStats: ...

    async def aadd(self, batch: GraphBatch, *, replace_documents: bool = False) -> None: ...

    async def adelete_documents(self, doc_ids: Sequence[str]) -> None: ...

    async def apassages(self, ids: Sequence[str]) -> list[Passage]: ...

    async def asnapshot(self) -> GraphSnapshot: ...


class ThreadedGraphAsync:
    """Async twins for an in-process graph store: each runs the sync method in a worker thread."""

    async def aadd(self, batch: GraphBatch, *, replace_documents: bool = False) -> None:
        await asyncio.to_thread(self.add, batch, replace_documents=replace_documents)  # type: ignore[attr-defined]

    async def adelete_documents(self, doc_ids: Sequence[str]) -> None:
        await asyncio.to_thread(self.delete_documents, doc_ids)  # type: ignore[attr-defined]

    async def apassages(self, ids: Sequence[str]) -> list[Passage]:
        return await asyncio.to_thread(self.passages, ids)  # type: ignore[attr-defined]

    async def asnapshot(self) -> GraphSnapshot:
        return await asyncio.to_thread(self.snapshot)  # type: ignore[attr-defined]
