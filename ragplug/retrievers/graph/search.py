"""Graph RAG's last stage: local, global and hybrid search over a graph store.

- ``local`` (HippoRAG 2's recipe): seed entities come from the query — stored entity keys that appear in it
  as word n-grams, plus the stored entities nearest to the query's entity mentions by embedding — each
  weighted by its specificity (one over the number of passages that mention it, so "film" counts for less
  than "Denys Desjardins"). Personalized PageRank (damping ~0.5) over the graph of entities *and passages*
  then spreads that weight along mentions and relations, and passages are ranked by where it settles. A
  passage two hops from the query's entities (the film's page → its director → the director's page) is
  reached this way, which similarity search misses. With no seed entity the search falls back to the
  ColBERT index and says so in each hit's metadata (``graph_fallback``).
- ``hybrid``: the same walk, its passages' scores fused with the ColBERT engine's relevance
  (``dense_weight``); optionally ColBERT's top passages seed the walk too (``passage_weight``, HippoRAG 2's
  passage nodes). Reciprocal rank fusion was tried and lost to the walk alone on 2WikiMultihopQA: ColBERT's
  near-duplicates of the first passage crowd out the second hop (``benchmarks/results/graph_multihop.md``).
- ``global``: the graph's communities (Leiden, :mod:`.communities`) ranked against the query by MaxSim over
  their summaries; with a chat model, the best ones (at most ``max_llm_calls``) are read by the LLM and
  ranked by the helpfulness score it gives (GraphRAG's map step; the caller's chain does the reduce).

Every hit cites its evidence: ``graph_seeds`` (the query's seed entities), ``graph_entities`` (the
passage's entities the walk weighted most) and ``graph_edges`` (``[source, label, target]`` relations between
seeds and those entities); a global hit cites its community's entities and passages.

Personalized PageRank is igraph's (PRPACK, a C solver): one call over a graph of ~60k vertices and ~400k
edges takes tens of milliseconds.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ragplug._extras import require
from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.model import Extractor, GraphSnapshot, GraphStore, entity_key
from ragplug.retrievers.late_interaction.base import SearchOptions

if TYPE_CHECKING:
    from ragplug.retrievers.late_interaction import Encoder

__all__ = ["GraphSearchOptions", "GraphView", "LocalSearch", "Seeds", "embed_phrases"]

logger = logging.getLogger(__name__)

Mode = Literal["local", "global", "hybrid"]
_WORD = re.compile(r"[\w][\w'’\-.&]*[\w]|[\w]")
_MAX_NGRAM = 8


@dataclass(frozen=True)
class GraphSearchOptions(SearchOptions):
    """Per-search settings of a graph retriever (``search_kwargs``).

    ``mode``: ``local``, ``global`` or ``hybrid``. ``damping``: PageRank's probability of following an edge
    rather than jumping back to a seed (HippoRAG 2 uses 0.5). ``dense_weight``: in hybrid mode, a passage's
    score is its walk relevance plus this times its ColBERT relevance. ``passage_weight``: the weight of
    ColBERT's passages among the walk's seeds, relative to the entities (HippoRAG 2's passage nodes; 0, the
    default, walks from entities only: on 2WikiMultihopQA seeding passages cost more than it gave, see
    ``benchmarks/results/graph_multihop.md``). ``dense_k``: ColBERT hits (and walk passages) fused in
    hybrid mode (not ``fetch_k``, which the framework faces keep for MMR). ``max_llm_calls``: in global
    mode, the most communities an LLM reads per query (0: rank by summary similarity alone)."""

    mode: Mode = "local"
    damping: float = 0.5
    dense_weight: float = 0.1
    passage_weight: float = 0.0
    dense_k: int = 50
    max_llm_calls: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("local", "global", "hybrid"):
            msg = f"mode must be 'local', 'global' or 'hybrid', got {self.mode!r}"
            raise InvalidInputError(msg)
        if not _number(self.damping) or not 0 < self.damping < 1:
            msg = f"damping must be a number in (0, 1), got {self.damping!r}"
            raise InvalidInputError(msg)
        for name in ("dense_weight", "passage_weight"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                msg = f"{name} must be a non-negative number, got {value!r}"
                raise InvalidInputError(msg)
        for name in ("dense_k", "max_llm_calls"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "dense_k" else 0):
                msg = f"{name} must be a {'positive' if name == 'dense_k' else 'non-negative'} integer, got {value!r}"
                raise InvalidInputError(msg)


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and np.isfinite(value)


def embed_phrases(encoder: Encoder, phrases: Sequence[str], *, show_progress: bool | None = None) -> np.ndarray:
    """One unit vector per phrase: the mean of the encoder's token vectors for it, normalised. With a
    ColBERT encoder over all-MiniLM-L6-v2 this is close to the sentence embedding the model was trained
    for (mean pooling). Returns an ``(n, dim)`` float32 array."""
    if not phrases:
        return np.zeros((0, encoder.identity.dim), dtype=np.float32)
    matrices = encoder.encode_documents(list(phrases), show_progress=show_progress)
    out = np.stack([m.mean(axis=0) for m in matrices]).astype(np.float32)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


class GraphView:
    """A snapshot of a store with what searching it needs (key lookup, specificity, the walk's graph),
    rebuilt when the store's version moves on. Thread-safe."""

    def __init__(self, store: GraphStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._state: tuple[GraphSnapshot, _Prepared] | None = None

    def current(self) -> tuple[GraphSnapshot, _Prepared]:
        version = self.store.version
        with self._lock:
            if self._state is None or self._state[0].version != version:
                snapshot = self.store.snapshot()
                self._state = (snapshot, _Prepared(snapshot))
            return self._state


class _Prepared:
    """Lookups over one snapshot: entity key → index, passage id → index, specificity, the walk's graph."""

    def __init__(self, snapshot: GraphSnapshot) -> None:
        from ragplug.retrievers.graph.communities import passage_graph

        self.key_index = {key: i for i, key in enumerate(snapshot.entity_keys)}
        self.passage_index = {pid: i for i, pid in enumerate(snapshot.passage_ids)}
        n_entities, n_passages = len(snapshot.entity_keys), len(snapshot.passage_ids)
        mentions = snapshot.mentions
        self.passages_per_entity = np.bincount(mentions[:, 0], minlength=n_entities).astype(np.float32)
        self.graph = passage_graph(snapshot) if n_entities + n_passages else None
        self.n_entities = n_entities
        # mentions grouped by passage, for explaining a hit
        order = np.argsort(mentions[:, 1], kind="stable")
        self.mention_entities = mentions[order, 0]
        self.mention_starts = np.searchsorted(mentions[order, 1], np.arange(n_passages + 1))
        pairs = snapshot.relations
        self.edge_labels = {
            (int(a), int(b)): label for (a, b), label in zip(pairs.tolist(), snapshot.relation_labels, strict=True)
        }

    def entities_of(self, passage: int) -> np.ndarray:
        return self.mention_entities[self.mention_starts[passage] : self.mention_starts[passage + 1]]

    def label(self, a: int, b: int) -> str | None:
        return self.edge_labels.get((a, b) if a < b else (b, a))


@dataclass(frozen=True)
class Seeds:
    """The query's seed entities (snapshot indices) and their reset weights, with how each was found."""

    entities: dict[int, float]
    matched: list[str]  # keys found as n-grams of the query
    similar: list[tuple[str, str, float]]  # (query mention, stored key, cosine)


class LocalSearch:
    """Seeds from a query, personalized PageRank, passages ranked with their evidence."""

    def __init__(
        self,
        view: GraphView,
        extractor: Extractor,
        encoder: Encoder,
        *,
        seed_k: int = 3,
        seed_threshold: float = 0.8,
    ) -> None:
        self.view, self.extractor, self.encoder = view, extractor, encoder
        self.seed_k, self.seed_threshold = seed_k, seed_threshold

    def seeds(self, query: str, snapshot: GraphSnapshot, prepared: _Prepared) -> Seeds:
        """Stored entities named in the query (word n-grams, longest first, each word used once) or close
        to its entity mentions. In a query that capitalises names, an n-gram must start with a capital or a
        digit ("The Straw Hat", not "composer"); a single stopword or common word is never a seed."""
        from ragplug.retrievers.graph.extract import COMMON_WORDS, STOPWORDS

        words = _WORD.findall(query)
        cased = any(w[0].isupper() for w in words[1:])
        used = [False] * len(words)
        found: dict[int, float] = {}
        matched: list[str] = []
        for n in range(min(_MAX_NGRAM, len(words)), 0, -1):
            for start in range(len(words) - n + 1):
                span = words[start : start + n]
                if any(used[start : start + n]) or (cased and not (span[0][0].isupper() or span[0][0].isdigit())):
                    continue
                if n == 1 and span[0].lower() in STOPWORDS | COMMON_WORDS:
                    continue
                index = prepared.key_index.get(entity_key(" ".join(span)))
                if index is not None:
                    used[start : start + n] = [True] * n
                    found.setdefault(index, 1.0)
                    matched.append(snapshot.entity_keys[index])
        mentions = [e.name for e in self.extractor.query_entities(query)]
        mentions = [m for m in dict.fromkeys(mentions) if entity_key(m) not in prepared.key_index]
        similar: list[tuple[str, str, float]] = []
        if mentions and prepared.n_entities:
            vectors = embed_phrases(self.encoder, mentions, show_progress=False)
            for mention, nearest in zip(mentions, self.view.store.nearest_entities(vectors, self.seed_k), strict=True):
                for key, similarity in nearest:
                    index = prepared.key_index.get(key)
                    if index is not None and similarity >= self.seed_threshold:
                        found[index] = max(found.get(index, 0.0), float(similarity))
                        similar.append((mention, key, float(similarity)))
        weights = {i: w / max(1.0, float(prepared.passages_per_entity[i])) for i, w in found.items()}
        return Seeds(weights, matched, similar)

    def walk(
        self,
        prepared: _Prepared,
        seeds: Mapping[int, float],
        passage_seeds: Mapping[int, float],
        damping: float,
    ) -> np.ndarray:
        """Personalized PageRank from the seeds (entity and passage indices): every vertex's score, entities
        first (``[:n_entities]``), then passages."""
        require("igraph", "graph")
        graph = prepared.graph
        assert graph is not None
        reset = np.zeros(graph.vcount(), dtype=np.float64)
        for i, w in seeds.items():
            reset[i] += w
        for p, w in passage_seeds.items():
            reset[prepared.n_entities + p] += w
        if reset.sum() <= 0:
            return np.zeros(graph.vcount())
        scores = graph.personalized_pagerank(
            damping=damping, reset=(reset / reset.sum()).tolist(), weights="weight", directed=False
        )
        return np.asarray(scores, dtype=np.float64)

    def explain(
        self, snapshot: GraphSnapshot, prepared: _Prepared, seeds: Seeds, passage: int, entity_scores: np.ndarray
    ) -> dict[str, Any]:
        """Why a passage ranks: the query's seeds, the passage's most weighted entities, the edges between."""
        names = snapshot.entity_names
        own = prepared.entities_of(passage)
        top = own[np.argsort(-entity_scores[own], kind="stable")][:5] if len(own) else own
        seed_ids = list(seeds.entities)
        edges: list[list[str]] = []
        for e in top.tolist():
            for s in seed_ids:
                label = prepared.label(e, s) if e != s else None
                if label is not None and len(edges) < 8:
                    edges.append([names[s], label, names[e]])
        return {
            "graph_seeds": [names[s] for s in seed_ids][:10],
            "graph_entities": [names[e] for e in top.tolist()],
            "graph_edges": edges,
        }
