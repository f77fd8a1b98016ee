"""Communities of a knowledge graph, with summaries, and the graphs that search ranks on.

:func:`entity_graph` and :func:`passage_graph` turn a :class:`~ragplug.retrievers.graph.model.GraphSnapshot`
into igraph graphs, built in one vectorised call from the snapshot's arrays (no per-edge Python loop).
:func:`detect_communities` runs Leiden on the entity graph: level 0 is the partition found at ``resolution``,
each coarser level runs Leiden again on the previous level's community graph at half the resolution.
Every community carries its entities (most central first), the passages that mention them and a summary:
extractive by default (:func:`extractive_summary`, no model), or written by a chat model
(:func:`llm_summary`, falling back to the extractive one when the model's answers are unusable).

Why these libraries: igraph and leidenalg are C/C++ cores with thin Python faces, fast enough for graphs
of hundreds of thousands of edges on two cores, and Leiden is the algorithm Microsoft's GraphRAG uses.
Not graspologic (GraphRAG's choice), which pins an older numpy. Both are imported lazily (extra ``graph``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug._extras import require
from ragplug._progress import progress_bar, wants_progress
from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.model import SYNONYM, ChatFunction, Community, GraphSnapshot, Passage

__all__ = [
    "MENTIONS",
    "detect_communities",
    "entity_graph",
    "extractive_summary",
    "llm_summary",
    "passage_graph",
    "summarize_communities",
]

logger = logging.getLogger(__name__)

#: The label of an edge between an entity and a passage that mentions it (in :func:`passage_graph`).
MENTIONS = "mentions"
#: Each coarser level of :func:`detect_communities` runs at this fraction of the previous level's resolution.
_COARSER = 0.5
#: The summaries read at most this many passages of a community (its best-covered ones come first).
_SUMMARY_PASSAGES = 64
#: Sentences are matched against at most this many of a community's entities (its most central ones).
_SUMMARY_ENTITIES = 100
#: "Key entities:" names at most this many entities.
_KEY_ENTITIES = 10
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_SPACE = re.compile(r"\s+")


def _graph(n: int, edges: npt.NDArray[np.int64], vertex_attrs: dict[str, list[Any]], edge_attrs: dict[str, Any]) -> Any:
    """An undirected igraph graph; ``add_edges`` with an array is ~3x faster than the constructor's ``edges=``."""
    ig = require("igraph", "graph")
    graph = ig.Graph(n=n, directed=False)
    graph.add_edges(np.ascontiguousarray(edges, dtype=np.int64))
    for name, values in vertex_attrs.items():
        graph.vs[name] = values
    for name, values in edge_attrs.items():
        graph.es[name] = values
    return graph


def entity_graph(snapshot: GraphSnapshot) -> Any:
    """The entities as an undirected weighted ``igraph.Graph``: vertex ``i`` is entity ``i`` of the snapshot
    (attributes ``key``, ``name``); each aggregated relation is one edge (attributes ``weight``, ``label``)."""
    return _graph(
        len(snapshot.entity_keys),
        snapshot.relations.reshape(-1, 2),
        {"key": list(snapshot.entity_keys), "name": list(snapshot.entity_names)},
        {"weight": snapshot.relation_weights.astype(np.float64).tolist(), "label": list(snapshot.relation_labels)},
    )


def passage_graph(snapshot: GraphSnapshot, *, synonym_weight: float = 1.0, mention_weight: float = 1.0) -> Any:
    """The entity–passage graph (HippoRAG 2): entities and passages as vertices of one undirected weighted
    ``igraph.Graph``, for personalized PageRank.

    Vertex ``i < E`` is entity ``i`` of the snapshot and vertex ``E + j`` is passage ``j`` (``E`` entities);
    attributes ``type`` (``"entity"`` / ``"passage"``), ``key`` (entity key or passage id) and ``name`` (entity
    name or passage id). Edges: first the relations, in snapshot order, weighted by their weight, a relation
    labelled only :data:`~ragplug.retrievers.graph.model.SYNONYM` times ``synonym_weight``; then one edge per
    mention row, weighted by its count times ``mention_weight``, labelled :data:`MENTIONS`."""
    if synonym_weight < 0 or mention_weight < 0:
        msg = f"synonym_weight and mention_weight must be >= 0, got {synonym_weight!r} and {mention_weight!r}"
        raise InvalidInputError(msg)
    n_entities, n_passages = len(snapshot.entity_keys), len(snapshot.passage_ids)
    synonym_only = np.fromiter(
        (label == SYNONYM for label in snapshot.relation_labels), dtype=bool, count=len(snapshot.relation_labels)
    )
    relation_weights = np.where(synonym_only, synonym_weight, 1.0) * snapshot.relation_weights.astype(np.float64)
    mentions = snapshot.mentions.reshape(-1, 2) + np.array([0, n_entities], dtype=np.int64)
    edges = np.concatenate([snapshot.relations.reshape(-1, 2), mentions])
    weights = np.concatenate([relation_weights, snapshot.mention_counts.astype(np.float64) * mention_weight])
    return _graph(
        n_entities + n_passages,
        edges,
        {
            "type": ["entity"] * n_entities + ["passage"] * n_passages,
            "key": list(snapshot.entity_keys) + list(snapshot.passage_ids),
            "name": list(snapshot.entity_names) + list(snapshot.passage_ids),
        },
        {"weight": weights.tolist(), "label": list(snapshot.relation_labels) + [MENTIONS] * len(mentions)},
    )


def detect_communities(
    snapshot: GraphSnapshot,
    *,
    resolution: float = 1.0,
    seed: int = 0,
    min_size: int = 2,
    levels: int = 2,
    passages_of: Callable[[Sequence[str]], list[Passage]] | None = None,
) -> list[Community]:
    """Leiden communities of the entity graph, finest level first.

    Level 0 is Leiden (``RBConfigurationVertexPartition``, weighted, at ``resolution``) on the entity graph.
    With ``levels >= 2``, level ``L`` runs Leiden on level ``L - 1``'s community graph at
    ``resolution * 0.5**L`` (coarser groups); levels stop early once a level merges nothing. Each level is a
    partition of all entities, less the communities of fewer than ``min_size`` entities (singletons by default).

    A community's ``id`` is ``"c<level>-<n>"``, numbered by size (largest first, ties by their first entity
    key), the same for the same snapshot and ``seed``. Its ``entities`` come most central first (weighted
    degree inside the community), its ``passages`` are those mentioning at least one of its entities, the
    ones mentioning the most of them first. ``rank`` is the community's total internal relation weight.

    Title and summary are extractive (:func:`extractive_summary`) over the texts ``passages_of`` returns for
    passage ids; without ``passages_of`` the summary only names the key entities. For LLM-written ones, pass
    the result to :func:`summarize_communities` with a chat function.
    """
    if resolution <= 0:
        msg = f"resolution must be > 0, got {resolution!r}"
        raise InvalidInputError(msg)
    if min_size < 1 or levels < 1:
        msg = f"min_size and levels must be >= 1, got min_size={min_size!r}, levels={levels!r}"
        raise InvalidInputError(msg)
    if not snapshot.entity_keys:
        return []
    la = require("leidenalg", "graph")
    graph = entity_graph(snapshot)
    partition = la.find_partition(
        graph, la.RBConfigurationVertexPartition, weights="weight", resolution_parameter=resolution, seed=seed
    )
    memberships = [np.asarray(partition.membership, dtype=np.int64)]
    optimiser = la.Optimiser()
    optimiser.set_rng_seed(seed)
    for level in range(1, levels):
        n_before = len(partition)
        partition = partition.aggregate_partition()  # one node per community of the level below
        partition.resolution_parameter = resolution * _COARSER**level
        optimiser.optimise_partition(partition, n_iterations=2)
        if len(partition) >= n_before:
            break
        memberships.append(np.asarray(partition.membership, dtype=np.int64)[memberships[-1]])
    communities: list[Community] = []
    for level, membership in enumerate(memberships):
        communities.extend(_communities_of(snapshot, membership, level, min_size))
    names = dict(zip(snapshot.entity_keys, snapshot.entity_names, strict=True))
    return summarize_communities(communities, passages_of or _no_passages, names, show_progress=False)


def _no_passages(ids: Sequence[str]) -> list[Passage]:
    return []


def _communities_of(
    snapshot: GraphSnapshot, membership: npt.NDArray[np.int64], level: int, min_size: int
) -> list[Community]:
    """The communities of one level (``membership[i]``: community of entity ``i``), without titles."""
    membership = np.unique(membership, return_inverse=True)[1].reshape(-1)  # community numbers 0..n-1
    n_entities, n_groups = len(membership), int(membership.max()) + 1
    relations, weights = snapshot.relations.reshape(-1, 2), snapshot.relation_weights.astype(np.float64)
    inside = membership[relations[:, 0]] == membership[relations[:, 1]]
    internal_degree = np.bincount(relations[inside].ravel(), np.repeat(weights[inside], 2), minlength=n_entities)
    total_degree = np.bincount(relations.ravel(), np.repeat(weights, 2), minlength=n_entities)
    internal_weight = np.bincount(membership[relations[inside, 0]], weights[inside], minlength=n_groups)
    # Entities by community, then by internal then total weighted degree (descending), then key.
    keys = np.asarray(snapshot.entity_keys, dtype=object)
    order = np.lexsort((keys, -total_degree, -internal_degree, membership))
    entities_by_group = np.split(order, np.cumsum(np.bincount(membership, minlength=n_groups))[:-1])
    # Passages by community, then by how many of its entities they mention (descending), then snapshot order.
    n_passages = len(snapshot.passage_ids)
    mentions = np.unique(snapshot.mentions.reshape(-1, 2), axis=0)
    pairs, covered = np.unique(membership[mentions[:, 0]] * n_passages + mentions[:, 1], return_counts=True)
    groups, passages = pairs // max(n_passages, 1), pairs % max(n_passages, 1)
    p_order = np.lexsort((passages, -covered, groups))
    passages_by_group = np.split(passages[p_order], np.cumsum(np.bincount(groups, minlength=n_groups))[:-1])
    kept = [g for g in range(n_groups) if len(entities_by_group[g]) >= min_size]
    kept.sort(key=lambda g: (-len(entities_by_group[g]), snapshot.entity_keys[entities_by_group[g][0]]))
    return [
        Community(
            id=f"c{level}-{n}",
            entities=tuple(snapshot.entity_keys[i] for i in entities_by_group[g]),
            passages=tuple(snapshot.passage_ids[j] for j in passages_by_group[g]),
            title="",
            summary="",
            level=level,
            rank=float(internal_weight[g]),
        )
        for n, g in enumerate(kept)
    ]


def _normalise(text: str) -> str:
    """Text as entity keys are written: NFKC, case-folded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def _display(key: str, names: Mapping[str, str]) -> str:
    return names.get(key) or key


def extractive_summary(
    community_entities: Sequence[str],
    passages: Sequence[Passage],
    names: Mapping[str, str],
    *,
    max_chars: int = 800,
) -> tuple[str, str]:
    """A title and summary without a model: ``(title, summary)``.

    ``community_entities`` are entity keys, most central first; ``names`` maps a key to its display name.
    The title joins the names of the three most central entities. The summary starts with
    ``"Key entities: …."`` and goes on with the sentences of ``passages`` that mention the most distinct
    community entities (whole-word, case-insensitive match of their keys), best first, ties in passage order,
    each sentence once, as many whole ones as fit in ``max_chars`` (the best one clipped if none fits)."""
    if max_chars < 1:
        msg = f"max_chars must be >= 1, got {max_chars!r}"
        raise InvalidInputError(msg)
    title = ", ".join(_display(k, names) for k in community_entities[:3])
    head = "Key entities: " + ", ".join(_display(k, names) for k in community_entities[:_KEY_ENTITIES]) + "."
    if len(head) >= max_chars:
        return title, _clip(head, max_chars)
    matchable = sorted({k for k in community_entities[:_SUMMARY_ENTITIES] if k}, key=len, reverse=True)
    if not matchable or not passages:
        return title, head
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(k) for k in matchable) + r")(?!\w)")
    scored: list[tuple[int, int, str]] = []
    seen: set[str] = set()
    for passage in passages:
        for sentence in _SENTENCE.split(passage.text):
            sentence = _SPACE.sub(" ", sentence).strip()
            if not sentence or sentence in seen:
                continue
            seen.add(sentence)
            hits = len(set(pattern.findall(_normalise(sentence))))
            if hits:
                scored.append((-hits, len(scored), sentence))
    scored.sort()
    summary = head
    for _, _, sentence in scored:
        if len(summary) + 1 + len(sentence) <= max_chars:
            summary += " " + sentence
    if summary == head and scored:  # no whole sentence fits: keep the beginning of the best one
        summary = _clip(f"{head} {scored[0][2]}", max_chars)
    return title, summary


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1].rstrip() + "…"


_SYSTEM_PROMPT = (
    "You write reports about communities of a knowledge graph: groups of entities that the source texts "
    "link closely. Given the community's entities (most central first) and excerpts of passages that mention "
    "them, write a short title naming what the group is about, and a summary of what the excerpts say about "
    "these entities and how they relate. Use only facts from the excerpts. Answer as JSON with the keys "
    '"title" and "summary".'
)
_PROMPT_CHARS = 6000  # of passage text per prompt


def _schema(max_chars: int) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": 120},
            "summary": {"type": "string", "minLength": 1, "maxLength": max_chars},
        },
        "required": ["title", "summary"],
        "additionalProperties": False,
    }


def _messages(
    community_entities: Sequence[str], passages: Sequence[Passage], names: Mapping[str, str]
) -> list[dict[str, str]]:
    entity_lines = "\n".join(f"- {_display(k, names)}" for k in community_entities[:30])
    excerpts, used = [], 0
    for passage in passages:
        text = _SPACE.sub(" ", passage.text).strip()[: _PROMPT_CHARS - used]
        if not text:
            break
        excerpts.append(f"[{passage.id}] {text}")
        used += len(text)
    user = f"Entities:\n{entity_lines}\n\nExcerpts:\n" + ("\n\n".join(excerpts) or "(none)")
    return [{"role": "system", "content": _SYSTEM_PROMPT}, {"role": "user", "content": user}]


def _parse(answer: Any, max_chars: int) -> tuple[str, str] | None:
    if not isinstance(answer, Mapping):
        return None
    title, summary = answer.get("title"), answer.get("summary")
    if not isinstance(title, str) or not isinstance(summary, str) or not title.strip() or not summary.strip():
        return None
    return _SPACE.sub(" ", title).strip(), _clip(summary.strip(), max_chars)


def llm_summary(
    chat: ChatFunction,
    community_entities: Sequence[str],
    passages: Sequence[Passage],
    names: Mapping[str, str],
    *,
    max_chars: int = 1200,
) -> tuple[str, str]:
    """A title and summary written by ``chat`` from the community's entities and passages: ``(title,
    summary)``, the summary at most ``max_chars`` long.

    The model answers a JSON schema ``{title, summary}``. An answer that raises or is not two non-empty
    strings is asked again once; if that fails too, a warning is logged and the extractive summary
    (:func:`extractive_summary`) is returned instead, so a community never ends up without one."""
    if max_chars < 1:
        msg = f"max_chars must be >= 1, got {max_chars!r}"
        raise InvalidInputError(msg)
    messages, schema = _messages(community_entities, passages, names), _schema(max_chars)
    problem = ""
    for attempt in range(2):
        try:
            parsed = _parse(chat(messages, schema), max_chars)
        except Exception as err:  # the chat function raises on failure; the protocol leaves the type open
            problem = f"{type(err).__name__}: {err}"
            logger.debug("community summary attempt %d failed: %s", attempt + 1, problem)
            continue
        if parsed is not None:
            return parsed
        problem = "the answer was not a JSON object with a non-empty title and summary"
    title = ", ".join(_display(k, names) for k in community_entities[:3])
    logger.warning("LLM summary of community %r failed twice (%s); using the extractive summary", title, problem)
    return extractive_summary(community_entities, passages, names, max_chars=max_chars)


def summarize_communities(
    communities: Sequence[Community],
    passages_of: Callable[[Sequence[str]], list[Passage]],
    names: Mapping[str, str],
    *,
    chat: ChatFunction | None = None,
    show_progress: bool | None = None,
) -> list[Community]:
    """The ``communities`` with titles and summaries: written by ``chat`` (:func:`llm_summary`) when given,
    else extractive (:func:`extractive_summary`). ``passages_of`` returns the passages of a list of passage
    ids (a graph store's ``passages``); each summary reads a community's first 64 passages (those that
    mention the most of its entities). ``names`` maps entity keys to display names."""
    if show_progress is None and chat is not None:  # a model call per community: worth a bar from two on
        enabled = len(communities) > 1
    else:
        enabled = wants_progress(show_progress, len(communities))
    out = []
    with progress_bar(len(communities), desc="summarising communities", unit="community", enabled=enabled) as bar:
        for community in communities:
            passages = passages_of(list(community.passages[:_SUMMARY_PASSAGES])) if community.passages else []
            if chat is None:
                title, summary = extractive_summary(community.entities, passages, names)
            else:
                title, summary = llm_summary(chat, community.entities, passages, names)
            out.append(dataclasses.replace(community, title=title, summary=summary))
            bar.update(1)
    return out
