"""Validation shared by every graph store, so that both backends refuse the same input with the same words.

:func:`check_batch` turns a :class:`~ragplug.retrievers.graph.model.GraphBatch` into a :class:`CheckedBatch`:
rows ready to store, every value checked (strings without NUL characters, JSON metadata, finite weights,
finite non-zero vectors of one dimension), or an :class:`~ragplug.errors.InvalidInputError` /
:class:`~ragplug.errors.DuplicateIdError` naming the bad value. What can only be checked against the store
(ids that exist, entity keys a relation names that are stored, the stored vector dimension) is left to the
store, with :attr:`CheckedBatch.needs_stored` and :func:`check_stored_keys` / :func:`check_dim` to say it
the same way.

Two rules of the store contract live here: an entity key repeated in one extraction counts as that many
mentions of it in the passage (its first occurrence gives its name, kind and description), and synonym
relations are one per unordered pair of entities (the last of a batch wins).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ragplug.errors import DuplicateIdError, InvalidInputError
from ragplug.retrievers.graph.model import Community, Entity, Extraction, FloatMatrix, GraphBatch, Passage, Relation
from ragplug.retrievers.late_interaction.base import check_k, check_metadata, check_text

__all__ = [
    "CheckedBatch",
    "check_batch",
    "check_communities",
    "check_dim",
    "check_doc_ids",
    "check_k",
    "check_queries",
    "check_stored_keys",
    "check_strings",
    "encoder_dim",
]

#: A stored relation: ``(source, target, label, weight, passage id or None for a synonym)``.
RelationRow = tuple[str, str, str, float, str | None]


@dataclass
class CheckedBatch:
    """A validated batch as rows: passages (metadata copied), entities by key (first occurrence, batch
    order), mentions ``(entity, passage, count)``, relations stated by passages, synonyms (one per unordered
    pair), vectors (float32, 1-D) by key, the batch's documents, and the keys the batch names without
    defining them (which must be stored)."""

    passages: list[Passage]
    entities: dict[str, Entity]
    mentions: list[tuple[str, str, int]]
    relations: list[RelationRow]
    synonyms: list[RelationRow]
    vectors: dict[str, FloatMatrix]
    doc_ids: list[str]
    needs_stored: list[str] = field(default_factory=list)

    @property
    def dim(self) -> int | None:
        """The dimension of the batch's vectors (``None`` without vectors)."""
        return next((len(v) for v in self.vectors.values()), None)


def check_strings(values: Any, what: str, *, unique: bool = False) -> list[str]:
    """A list of non-empty strings (``unique``: no value twice, else :class:`DuplicateIdError`)."""
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        msg = f"{what} must be a list of strings, got {type(values).__name__} {values!r:.80}"
        raise InvalidInputError(msg)
    out = list(values)
    for value in out:
        _key(value, what)
    if unique and len(set(out)) != len(out):
        seen: set[str] = set()
        dupes = sorted({v for v in out if v in seen or seen.add(v)})  # type: ignore[func-returns-value]
        msg = f"duplicate {what} in one call: {dupes[:10]}"
        raise DuplicateIdError(msg)
    return out


def check_doc_ids(doc_ids: Any) -> list[str]:
    return check_strings(doc_ids, "document ids", unique=True)


def _key(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        msg = f"{what} must be non-empty strings, got {value!r:.80}"
        raise InvalidInputError(msg)
    return check_text(value, f"{what} {value!r:.80}")


def _weight(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{what} must be a number, got {value!r:.80}"
        raise InvalidInputError(msg)
    if not math.isfinite(float(value)):
        msg = f"{what} must be finite, got {value!r}"
        raise InvalidInputError(msg)
    return float(value)


def _relation(relation: Any, what: str) -> tuple[str, str, str, float]:
    if not isinstance(relation, Relation):
        msg = f"{what} must be a Relation, got {type(relation).__name__}"
        raise InvalidInputError(msg)
    source = _key(relation.source, f"{what}: source")
    target = _key(relation.target, f"{what}: target")
    label = _key(relation.label, f"{what}: label")
    return source, target, label, _weight(relation.weight, f"{what} ({source!r} -> {target!r}): weight")


def _vector(key: str, value: Any) -> FloatMatrix:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as err:
        msg = f"the vector of entity {key!r} is not an array of numbers: {err}"
        raise InvalidInputError(msg) from err
    if array.ndim == 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1 or array.shape[0] == 0:
        msg = f"the vector of entity {key!r} must be one row of numbers, got shape {array.shape}"
        raise InvalidInputError(msg)
    if not np.isfinite(array).all():
        msg = f"the vector of entity {key!r} holds non-finite values (NaN or infinity)"
        raise InvalidInputError(msg)
    if not float(np.linalg.norm(array)) > 0:
        msg = f"the vector of entity {key!r} is all zeros: it has no direction to compare"
        raise InvalidInputError(msg)
    return np.ascontiguousarray(array)


def check_batch(batch: Any) -> CheckedBatch:
    """Validate ``batch`` alone (see the module docstring); raise on the first bad value, naming it."""
    if not isinstance(batch, GraphBatch):
        msg = f"a graph store takes a GraphBatch, got {type(batch).__name__}"
        raise InvalidInputError(msg)
    passages, extractions = list(batch.passages), list(batch.extractions)
    if len(passages) != len(extractions):
        msg = f"a batch needs one extraction per passage: {len(passages)} passages, {len(extractions)} extractions"
        raise InvalidInputError(msg)
    out = CheckedBatch([], {}, [], [], [], {}, [])
    seen_ids: set[str] = set()
    docs: dict[str, None] = {}
    named: dict[str, None] = {}  # keys named by relations, synonyms or vectors, in order
    for i, (passage, extraction) in enumerate(zip(passages, extractions, strict=True)):
        if not isinstance(passage, Passage):
            msg = f"passage {i} of the batch must be a Passage, got {type(passage).__name__}"
            raise InvalidInputError(msg)
        pid = _key(passage.id, "passage ids")
        if pid in seen_ids:
            msg = f"duplicate passage ids in one batch: {pid!r}"
            raise DuplicateIdError(msg)
        seen_ids.add(pid)
        doc_id = _key(passage.doc_id, f"passage {pid!r}: doc_id")
        text = check_text(passage.text, f"the text of passage {pid!r}")
        metadata = check_metadata(passage.metadata, f"the metadata of passage {pid!r}")
        out.passages.append(Passage(id=pid, text=text, doc_id=doc_id, metadata=metadata))
        docs[doc_id] = None
        if not isinstance(extraction, Extraction):
            msg = f"extraction {i} of the batch must be an Extraction, got {type(extraction).__name__}"
            raise InvalidInputError(msg)
        if extraction.passage_id != pid:
            msg = f"extraction {i} is for passage {extraction.passage_id!r}, but passage {i} is {pid!r}"
            raise InvalidInputError(msg)
        counts: dict[str, int] = {}
        for entity in extraction.entities:
            if not isinstance(entity, Entity):
                msg = f"an entity of passage {pid!r} must be an Entity, got {type(entity).__name__}"
                raise InvalidInputError(msg)
            key = _key(entity.key, f"passage {pid!r}: entity keys")
            where = f"entity {key!r} of passage {pid!r}"
            checked = Entity(
                key=key,
                name=check_text(entity.name, f"{where}: name"),
                kind=check_text(entity.kind, f"{where}: kind"),
                description=check_text(entity.description, f"{where}: description"),
            )
            out.entities.setdefault(key, checked)
            counts[key] = counts.get(key, 0) + 1
        out.mentions.extend((key, pid, count) for key, count in counts.items())
        for relation in extraction.relations:
            source, target, label, weight = _relation(relation, f"a relation of passage {pid!r}")
            out.relations.append((source, target, label, weight, pid))
            named.update({source: None, target: None})
    out.doc_ids = list(docs)
    if not isinstance(batch.entity_vectors, Mapping):
        msg = f"entity_vectors must be a dict of key -> vector, got {type(batch.entity_vectors).__name__}"
        raise InvalidInputError(msg)
    for key, value in batch.entity_vectors.items():
        _key(key, "entity_vectors keys")
        vector = _vector(key, value)
        if out.vectors and len(vector) != out.dim:
            msg = f"the vector of entity {key!r} has dimension {len(vector)}, the batch's others {out.dim}"
            raise InvalidInputError(msg)
        out.vectors[key] = vector
        named[key] = None
    pairs: dict[tuple[str, str], RelationRow] = {}
    for relation in batch.synonyms:
        source, target, label, weight = _relation(relation, "a synonym relation")
        if source == target:
            msg = f"a synonym relation links entity {source!r} to itself"
            raise InvalidInputError(msg)
        pairs[(source, target) if source < target else (target, source)] = (source, target, label, weight, None)
        named.update({source: None, target: None})
    out.synonyms = list(pairs.values())
    out.needs_stored = [key for key in named if key not in out.entities]
    return out


def check_stored_keys(needed: Sequence[str], stored: Iterable[str]) -> None:
    """Refuse a batch that names entity keys neither it nor the store defines."""
    have = set(stored)
    missing = [key for key in needed if key not in have]
    if missing:
        msg = f"the batch names entities that are neither among its extractions' entities nor stored: {missing[:10]}"
        raise InvalidInputError(msg)


def check_dim(batch_dim: int | None, stored_dim: int | None, where: str) -> None:
    """Refuse vectors whose dimension differs from the graph's (its encoder's, or its stored vectors')."""
    if batch_dim is not None and stored_dim is not None and batch_dim != stored_dim:
        msg = f"the batch's entity vectors have dimension {batch_dim}, but {where} holds dimension {stored_dim}"
        raise InvalidInputError(msg)


def encoder_dim(identity: Any) -> int | None:
    """The vector dimension a :class:`~ragplug.retrievers.graph.model.GraphIdentity` records (or ``None``)."""
    encoder = getattr(identity, "encoder", None) or {}
    dim = encoder.get("dim")
    return int(dim) if isinstance(dim, int) and not isinstance(dim, bool) else None


def check_queries(vectors: Any, dim: int | None) -> FloatMatrix:
    """Query vectors as a float32 matrix (one row per query) of the graph's dimension, finite."""
    try:
        matrix = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as err:
        msg = f"query vectors must be an array of numbers: {err}"
        raise InvalidInputError(msg) from err
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        msg = f"query vectors must be a matrix (one row per query), got shape {matrix.shape}"
        raise InvalidInputError(msg)
    if dim is not None and matrix.shape[1] != dim:
        msg = f"query vectors have dimension {matrix.shape[1]}, the graph's entity vectors {dim}"
        raise InvalidInputError(msg)
    if not np.isfinite(matrix).all():
        msg = "query vectors hold non-finite values (NaN or infinity)"
        raise InvalidInputError(msg)
    zero = np.flatnonzero(~(np.abs(matrix).max(axis=1) > 0))
    if len(zero):
        msg = f"query vector {int(zero[0])} is all zeros: it has no direction to compare"
        raise InvalidInputError(msg)
    return np.ascontiguousarray(matrix)


def check_communities(communities: Any, version: Any, current: int) -> list[Community]:
    """Communities with unique ids, string members and finite ranks, computed on a version that exists."""
    if isinstance(version, bool) or not isinstance(version, int | np.integer) or not 0 <= version <= current:
        msg = f"communities must be computed on a graph version in [0, {current}], got {version!r}"
        raise InvalidInputError(msg)
    out = []
    seen: set[str] = set()
    for community in communities:
        if not isinstance(community, Community):
            msg = f"communities must be Community objects, got {type(community).__name__}"
            raise InvalidInputError(msg)
        cid = _key(community.id, "community ids")
        if cid in seen:
            msg = f"duplicate community ids in one call: {cid!r}"
            raise DuplicateIdError(msg)
        seen.add(cid)
        if isinstance(community.level, bool) or not isinstance(community.level, int) or community.level < 0:
            msg = f"community {cid!r}: level must be a non-negative integer, got {community.level!r}"
            raise InvalidInputError(msg)
        out.append(
            Community(
                id=cid,
                entities=tuple(check_strings(community.entities, f"community {cid!r}: entity keys")),
                passages=tuple(check_strings(community.passages, f"community {cid!r}: passage ids")),
                title=check_text(community.title, f"community {cid!r}: title"),
                summary=check_text(community.summary, f"community {cid!r}: summary"),
                level=int(community.level),
                rank=_weight(community.rank, f"community {cid!r}: rank"),
            )
        )
    return out
