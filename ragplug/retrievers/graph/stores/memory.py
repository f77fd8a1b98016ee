"""``MemoryGraphStore``: a knowledge graph in process, optionally kept in a folder.

The graph lives in dicts (passages, entities, each passage's mentions and relations, synonym edges by
unordered pair) and one float32 matrix of entity vectors, searched exactly (cosine similarity: a graph
has thousands of entities, not millions, so a scan is fast and needs no index to keep up to date).

Every write builds the next state from a shallow copy of the current one (entries are immutable, so no
entry is copied), checks it, saves it when the store has a folder, and only then publishes it: a write
that raises, at any point, leaves the store as it was. Readers see one published state or the next,
never a mix. One lock serialises writers and readers of a store object.

With a ``folder``, the store loads what is there and saves every write atomically in the format of
:mod:`ragplug.retrievers.late_interaction.stores.folder`: new data files (``graph-<hex>.json``, the graph;
``vectors-<hex>.safetensors``, the entity vectors, never pickle) are written in a staging folder, fsynced
and renamed into place, then ``manifest.json`` (format ``ragplug.graph``, :data:`GRAPH_FORMAT`, the
version, the identity, each file's SHA-256) is replaced the same way, and the previous generation's files
are deleted. A folder written in another format version, or whose manifest or a file is damaged, is refused
with :class:`~ragplug.errors.StoreCorruptedError` naming the file. Saving rewrites the whole graph (a
graph is small next to its text encoder's index); one process writes a folder at a time, other processes
see its writes when they open it again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ragplug.errors import DuplicateIdError, InvalidInputError, StoreCorruptedError, StoreError, UnknownIdError
from ragplug.retrievers.graph.model import (
    GRAPH_FORMAT,
    Community,
    Entity,
    FloatMatrix,
    GraphBatch,
    GraphIdentity,
    GraphSnapshot,
    GraphStats,
    Passage,
    ThreadedGraphAsync,
)
from ragplug.retrievers.graph.stores._check import (
    RelationRow,
    check_batch,
    check_communities,
    check_dim,
    check_doc_ids,
    check_k,
    check_queries,
    check_stored_keys,
    check_strings,
    encoder_dim,
)
from ragplug.retrievers.late_interaction.stores.folder import MANIFEST, read_folder, safetensors_views, write_folder

__all__ = ["FOLDER_FORMAT", "MemoryGraphStore"]

logger = logging.getLogger(__name__)

#: The ``format`` field of a graph folder's manifest (its version is :data:`GRAPH_FORMAT`).
FOLDER_FORMAT = "ragplug.graph"


@dataclass
class _State:
    """One version of the graph. Published states are never changed: a write changes a :meth:`copy`."""

    version: int = 0
    identity: GraphIdentity | None = None
    passages: dict[str, Passage] = field(default_factory=dict)
    docs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # doc id -> its passage ids
    mentions: dict[str, tuple[tuple[str, int], ...]] = field(default_factory=dict)  # passage -> (entity, count)
    relations: dict[str, tuple[RelationRow, ...]] = field(default_factory=dict)  # passage -> relations it states
    synonyms: dict[tuple[str, str], RelationRow] = field(default_factory=dict)  # sorted pair -> relation
    entities: dict[str, Entity] = field(default_factory=dict)
    support: dict[str, int] = field(default_factory=dict)  # entity -> passages that mention it
    vector_rows: dict[str, int] = field(default_factory=dict)  # entity -> row of vectors
    vectors: FloatMatrix = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))
    communities: tuple[Community, ...] = ()
    communities_version: int | None = None

    def copy(self) -> _State:
        return dataclasses.replace(
            self,
            passages=dict(self.passages),
            docs=dict(self.docs),
            mentions=dict(self.mentions),
            relations=dict(self.relations),
            synonyms=dict(self.synonyms),
            entities=dict(self.entities),
            support=dict(self.support),
            vector_rows=dict(self.vector_rows),
        )

    @property
    def dim(self) -> int | None:
        return encoder_dim(self.identity) or (int(self.vectors.shape[1]) if self.vector_rows else None)


class MemoryGraphStore(ThreadedGraphAsync):
    """A :class:`~ragplug.retrievers.graph.model.GraphStore` in process; with ``folder``, loaded from and
    saved to that folder at every write (see the module docstring). :meth:`open` opens a folder that must
    already hold a graph and keeps writing to it; :meth:`load` reads one into memory; :meth:`save` writes a
    copy to a folder."""

    kind: ClassVar[str] = "memory"

    def __init__(self, folder: str | os.PathLike[str] | None = None) -> None:
        self._lock = threading.RLock()
        self._folder = None if folder is None else Path(folder)
        self._state = _State()
        if self._folder is not None and (self._folder / MANIFEST).exists():
            self._state = _load(self._folder)

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> MemoryGraphStore:
        """The graph saved in ``folder``; :class:`~ragplug.errors.StoreError` when it holds none."""
        if not (Path(folder) / MANIFEST).is_file():
            msg = f"{folder} holds no graph ({MANIFEST} not found)"
            raise StoreError(msg)
        return cls(folder)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> MemoryGraphStore:
        """The graph saved in ``folder``, read into a store without a folder: later writes stay in memory
        until :meth:`save` (:meth:`open` keeps writing to the folder instead)."""
        store = cls.open(folder)
        store._folder = None
        return store

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write the graph as it is now to ``folder`` (atomically, as every write to a store's own folder).
        The store keeps the folder it was made with (or none): later writes do not go to ``folder``."""
        with self._lock:
            _save(Path(folder), self._state)

    @property
    def folder(self) -> Path | None:
        return self._folder

    def __repr__(self) -> str:
        where = f"folder={str(self._folder)!r}, " if self._folder is not None else ""
        return f"MemoryGraphStore({where}passages={len(self)}, version={self.version})"

    # -- identity and version -------------------------------------------------------------------------
    @property
    def identity(self) -> GraphIdentity | None:
        return self._state.identity

    @property
    def version(self) -> int:
        return self._state.version

    def bind(self, identity: GraphIdentity) -> None:
        """Record ``identity`` (a graph without one), or check it against the recorded one."""
        if not isinstance(identity, GraphIdentity):
            msg = f"bind takes a GraphIdentity, got {type(identity).__name__}"
            raise InvalidInputError(msg)
        with self._lock:
            state = self._state
            if state.identity is not None:
                state.identity.check(identity, self._where())
                return
            check_dim(encoder_dim(identity), state.dim, self._where())
            new = state.copy()
            new.identity = identity
            self._publish(new)

    def _where(self) -> str:
        return f"the graph in {self._folder}" if self._folder is not None else "this graph"

    # -- writes ---------------------------------------------------------------------------------------
    def add(self, batch: GraphBatch, *, replace_documents: bool = False) -> None:
        """Store ``batch`` (see :class:`~ragplug.retrievers.graph.model.GraphStore`)."""
        checked = check_batch(batch)
        with self._lock:
            new = self._state.copy()
            candidates: set[str] = set()
            if replace_documents:
                for doc_id in checked.doc_ids:
                    if doc_id in new.docs:
                        self._remove_document(new, doc_id, candidates)
            taken = [p.id for p in checked.passages if p.id in new.passages]
            if taken:
                msg = f"passage ids already stored: {taken[:10]}"
                raise DuplicateIdError(msg)
            check_stored_keys(checked.needs_stored, new.entities)
            check_dim(checked.dim, new.dim, self._where())
            for passage in checked.passages:
                new.passages[passage.id] = passage
                new.docs[passage.doc_id] = (*new.docs.get(passage.doc_id, ()), passage.id)
            for key, entity in checked.entities.items():
                new.entities.setdefault(key, entity)
            by_passage: dict[str, list[tuple[str, int]]] = {}
            for key, pid, count in checked.mentions:
                by_passage.setdefault(pid, []).append((key, count))
                new.support[key] = new.support.get(key, 0) + 1
            new.mentions.update({pid: tuple(rows) for pid, rows in by_passage.items()})
            stated: dict[str, list[RelationRow]] = {}
            for row in checked.relations:
                stated.setdefault(str(row[4]), []).append(row)
            new.relations.update({pid: tuple(rows) for pid, rows in stated.items()})
            for row in checked.synonyms:
                new.synonyms[_pair(row)] = row
            fresh = [key for key in checked.vectors if key not in new.vector_rows]
            if fresh:
                rows = np.stack([checked.vectors[key] for key in fresh])
                new.vectors = np.concatenate([new.vectors, rows]) if new.vector_rows else rows
                start = len(new.vector_rows)
                new.vector_rows.update({key: start + i for i, key in enumerate(fresh)})
            self._prune(new, candidates)
            new.version += 1
            self._publish(new)

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        """Delete documents and what only they supported; an unknown id deletes nothing."""
        ids = check_doc_ids(doc_ids)
        with self._lock:
            new = self._state.copy()
            unknown = [d for d in ids if d not in new.docs]
            if unknown:
                msg = f"unknown document ids: {unknown[:10]}"
                raise UnknownIdError(msg)
            candidates: set[str] = set()
            for doc_id in ids:
                self._remove_document(new, doc_id, candidates)
            self._prune(new, candidates)
            new.version += 1
            self._publish(new)

    @staticmethod
    def _remove_document(state: _State, doc_id: str, candidates: set[str]) -> None:
        """Remove a document's passages with their mentions and relations; the entities they mentioned go to
        ``candidates`` (pruned if no passage mentions them any more)."""
        for pid in state.docs.pop(doc_id):
            del state.passages[pid]
            for key, _ in state.mentions.pop(pid, ()):
                state.support[key] -= 1
                candidates.add(key)
            state.relations.pop(pid, None)

    def _prune(self, state: _State, candidates: set[str]) -> None:
        """Remove the ``candidates`` no passage mentions, with every relation touching them and their vector."""
        gone = {key for key in candidates if state.support.get(key, 0) <= 0}
        if not gone:
            return
        for key in gone:
            state.entities.pop(key, None)
            state.support.pop(key, None)
        state.synonyms = {pair: row for pair, row in state.synonyms.items() if not gone.intersection(pair)}
        for pid, rows in list(state.relations.items()):
            kept = tuple(row for row in rows if row[0] not in gone and row[1] not in gone)
            if len(kept) != len(rows):
                state.relations[pid] = kept
        if gone.intersection(state.vector_rows):
            keys = [key for key in state.vector_rows if key not in gone]
            state.vectors = state.vectors[[state.vector_rows[key] for key in keys]]
            state.vector_rows = {key: i for i, key in enumerate(keys)}

    def set_communities(self, communities: Sequence[Community], version: int) -> None:
        """Replace the stored communities; they do not change :attr:`version` (the graph is the same)."""
        with self._lock:
            checked = check_communities(communities, version, self._state.version)
            new = self._state.copy()
            new.communities = tuple(checked)
            new.communities_version = int(version)
            self._publish(new)

    def _publish(self, new: _State) -> None:
        """Save ``new`` (with a folder), then make it the store's state. Called with the lock held."""
        if self._folder is not None:
            _save(self._folder, new)
        self._state = new

    # -- reads ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._state.passages)

    def documents(self) -> list[str]:
        return sorted(self._state.docs)

    def passages(self, ids: Sequence[str]) -> list[Passage]:
        wanted = check_strings(ids, "passage ids")
        state = self._state
        unknown = [i for i in wanted if i not in state.passages]
        if unknown:
            msg = f"unknown passage ids: {unknown[:10]}"
            raise UnknownIdError(msg)
        return [state.passages[i] for i in wanted]

    def document_passages(self, doc_ids: Sequence[str]) -> list[str]:
        wanted = check_strings(doc_ids, "document ids")
        state = self._state
        unknown = [d for d in wanted if d not in state.docs]
        if unknown:
            msg = f"unknown document ids: {unknown[:10]}"
            raise UnknownIdError(msg)
        return [pid for d in dict.fromkeys(wanted) for pid in state.docs[d]]

    def entities(self, keys: Sequence[str]) -> list[Entity]:
        state = self._state
        return [state.entities[k] for k in check_strings(keys, "entity keys") if k in state.entities]

    def entity_vectors(self, keys: Sequence[str]) -> dict[str, FloatMatrix]:
        state = self._state
        rows = state.vector_rows
        return {k: state.vectors[rows[k]].copy() for k in check_strings(keys, "entity keys") if k in rows}

    def nearest_entities(self, vectors: FloatMatrix, k: int) -> list[list[tuple[str, float]]]:
        """Exact cosine similarity over every entity vector; ties are broken by key."""
        k = check_k(k)
        state = self._state
        queries = check_queries(vectors, state.dim)
        if not state.vector_rows:
            return [[] for _ in range(len(queries))]
        keys = sorted(state.vector_rows)  # a stable sort of the scores then breaks ties by key
        matrix = state.vectors[[state.vector_rows[key] for key in keys]].astype(np.float64)
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
        q = queries.astype(np.float64)
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        q = np.divide(q, norms, out=np.zeros_like(q), where=norms > 0)
        scores = q @ matrix.T
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[(keys[j], float(scores[i, j])) for j in order[i]] for i in range(len(q))]

    def snapshot(self) -> GraphSnapshot:
        state = self._state
        return GraphSnapshot.build(
            state.version,
            list(state.passages),
            [(key, e.name) for key, e in state.entities.items()],
            [(key, pid, float(count)) for pid, rows in state.mentions.items() for key, count in rows],
            [row[:4] for rows in state.relations.values() for row in rows] + [r[:4] for r in state.synonyms.values()],
        )

    def communities(self) -> tuple[list[Community], int | None]:
        state = self._state
        return list(state.communities), state.communities_version

    def stats(self) -> GraphStats:
        state = self._state
        pairs = {_pair(row) for rows in state.relations.values() for row in rows if row[0] != row[1]}
        pairs.update(_pair(row) for row in state.synonyms.values())
        return GraphStats(
            documents=len(state.docs),
            passages=len(state.passages),
            entities=len(state.entities),
            relations=len(pairs),
            mentions=sum(len(rows) for rows in state.mentions.values()),
            communities=len(state.communities),
            empty_passages=sum(1 for pid in state.passages if not state.mentions.get(pid)),
        )


def _pair(row: RelationRow) -> tuple[str, str]:
    return (row[0], row[1]) if row[0] < row[1] else (row[1], row[0])


# -- the folder ---------------------------------------------------------------------------------------
def _save(folder: Path, state: _State) -> None:
    relations = [list(row) for rows in state.relations.values() for row in rows]
    relations += [list(row) for row in state.synonyms.values()]
    graph = {
        "passages": [[p.id, p.doc_id, p.text, dict(p.metadata)] for p in state.passages.values()],
        "entities": [[e.key, e.name, e.kind, e.description] for e in state.entities.values()],
        "mentions": [[key, pid, count] for pid, rows in state.mentions.items() for key, count in rows],
        "relations": relations,
        "vector_keys": list(state.vector_rows),
        "communities": [dataclasses.asdict(c) for c in state.communities],
    }
    header = {
        "format": FOLDER_FORMAT,
        "format_version": GRAPH_FORMAT,
        "version": state.version,
        "identity": None if state.identity is None else state.identity.to_dict(),
        "communities_version": state.communities_version,
    }
    tensors = {"vectors": {"vectors": np.ascontiguousarray(state.vectors)}} if state.vector_rows else {}
    write_folder(folder, header, tensors=tensors, documents={"graph": graph})
    logger.debug("saved graph version %d to %s", state.version, folder)


def _load(folder: Path) -> _State:
    manifest_file = folder / MANIFEST
    try:
        head = json.loads(manifest_file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        msg = f"{manifest_file} is truncated or corrupted: {err}"
        raise StoreCorruptedError(msg) from err
    if not isinstance(head, dict) or head.get("format") != FOLDER_FORMAT:
        found = head.get("format") if isinstance(head, dict) else head
        msg = f"{manifest_file} does not describe a ragplug graph (format {found!r}, expected {FOLDER_FORMAT!r})"
        raise StoreCorruptedError(msg)
    if head.get("format_version") != GRAPH_FORMAT:
        msg = (
            f"{manifest_file}: the graph was written in format version {head.get('format_version')!r}; "
            f"this ragplug reads version {GRAPH_FORMAT}"
        )
        raise StoreCorruptedError(msg)
    manifest, data = read_folder(folder)
    files = manifest.get("files", {})
    if "graph" not in data:
        msg = f"{manifest_file} names no graph file"
        raise StoreCorruptedError(msg)
    where = folder / str(files["graph"])
    try:
        return _restore(manifest, json.loads(data["graph"].tobytes()), data, files)
    except StoreCorruptedError:
        raise
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as err:
        msg = f"{where} (or {manifest_file}) does not hold a valid graph: {type(err).__name__}: {err}"
        raise StoreCorruptedError(msg) from err


def _restore(manifest: dict[str, Any], graph: dict[str, Any], data: dict[str, Any], files: dict[str, str]) -> _State:
    identity = manifest.get("identity")
    communities_version = manifest.get("communities_version")
    state = _State(
        version=int(manifest["version"]),
        identity=None if identity is None else GraphIdentity.from_dict(identity),
        communities_version=None if communities_version is None else int(communities_version),
    )
    for pid, doc_id, text, metadata in graph["passages"]:
        state.passages[pid] = Passage(id=pid, text=text, doc_id=doc_id, metadata=dict(metadata))
        state.docs[doc_id] = (*state.docs.get(doc_id, ()), pid)
    for key, name, kind, description in graph["entities"]:
        state.entities[key] = Entity(key=key, name=name, kind=kind, description=description)
    mentions: dict[str, list[tuple[str, int]]] = {}
    for key, pid, count in graph["mentions"]:
        if key not in state.entities or pid not in state.passages:
            msg = f"a mention links {key!r} and {pid!r}, which are not both stored"
            raise ValueError(msg)
        mentions.setdefault(pid, []).append((key, int(count)))
        state.support[key] = state.support.get(key, 0) + 1
    state.mentions = {pid: tuple(rows) for pid, rows in mentions.items()}
    stated: dict[str, list[RelationRow]] = {}
    for source, target, label, weight, pid in graph["relations"]:
        row: RelationRow = (source, target, label, float(weight), pid)
        if source not in state.entities or target not in state.entities:
            msg = f"a relation links {source!r} and {target!r}, which are not both stored"
            raise ValueError(msg)
        if pid is None:
            state.synonyms[_pair(row)] = row
        else:
            stated.setdefault(pid, []).append(row)
    state.relations = {pid: tuple(rows) for pid, rows in stated.items()}
    keys = list(graph["vector_keys"])
    if keys:
        if "vectors" not in data:
            msg = f"the graph names {len(keys)} entity vectors but the manifest names no vectors file"
            raise ValueError(msg)
        matrix = np.array(safetensors_views(data["vectors"])["vectors"], dtype=np.float32)
        if matrix.ndim != 2 or len(matrix) != len(keys):
            msg = f"{files.get('vectors')} holds {matrix.shape} vectors for {len(keys)} entity keys"
            raise StoreCorruptedError(msg)
        state.vectors = matrix
        state.vector_rows = {key: i for i, key in enumerate(keys)}
    state.communities = tuple(
        Community(
            id=c["id"],
            entities=tuple(c["entities"]),
            passages=tuple(c["passages"]),
            title=c["title"],
            summary=c["summary"],
            level=int(c["level"]),
            rank=float(c["rank"]),
        )
        for c in graph["communities"]
    )
    return state
