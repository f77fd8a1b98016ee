"""A knowledge graph out of ragplug: GraphML and JSON files, and pictures of an entity's neighbourhood.

:func:`to_graphml` writes the entity–passage graph (:func:`~ragplug.retrievers.graph.communities.passage_graph`)
for Gephi, Cytoscape or networkx; :func:`to_json` writes the snapshot and its communities in a plain layout
that :func:`from_json` reads back. Both write a temporary file beside the target and rename it over the
target, so a reader never sees half a file. :func:`neighbourhood` cuts the entities and passages around one
entity out of the graph, and :func:`draw_neighbourhood` draws them into a PNG.

Why these libraries: igraph (already the graph core, a C library) writes GraphML and lays graphs out
(Fruchterman–Reingold); matplotlib draws through its Agg canvas on a ``Figure`` made here, so no pyplot
state (backend, current figure) of the caller changes. Both come with the ``graph`` extra.
"""

from __future__ import annotations

import difflib
import json
import os
import random
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug._extras import require
from ragplug.errors import InvalidInputError, UnknownIdError
from ragplug.retrievers.graph.communities import MENTIONS, _graph, passage_graph
from ragplug.retrievers.graph.model import GRAPH_FORMAT, Community, GraphSnapshot
from ragplug.retrievers.graph.model import entity_key as normalise_key

__all__ = ["JSON_KIND", "draw_neighbourhood", "from_json", "neighbourhood", "to_graphml", "to_json"]

#: The ``"kind"`` field of a file written by :func:`to_json`.
JSON_KIND = "ragplug-graph"

_ENTITY_COLOUR, _CENTRE_COLOUR, _PASSAGE_COLOUR = "#4c72b0", "#dd8452", "#55a868"


def _write_atomic(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Call ``write`` on a temporary file in ``path``'s folder, then rename it to ``path`` (removed on failure)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def to_graphml(snapshot: GraphSnapshot, path: str | os.PathLike[str]) -> Path:
    """Write the entity–passage graph as GraphML: vertex attributes ``type`` (``"entity"``/``"passage"``),
    ``key``, ``name``; edge attributes ``weight`` (relation weight or mention count) and ``label``
    (relation labels, or ``"mentions"``). Returns the path."""
    graph = passage_graph(snapshot)
    return _write_atomic(path, graph.write_graphml)


def _community_dict(community: Community) -> dict[str, Any]:
    return {
        "id": community.id,
        "level": community.level,
        "entities": list(community.entities),
        "passages": list(community.passages),
        "title": community.title,
        "summary": community.summary,
        "rank": community.rank,
    }


def to_json(
    snapshot: GraphSnapshot, path: str | os.PathLike[str], *, communities: Sequence[Community] | None = None
) -> Path:
    """Write the snapshot (and ``communities``) as one JSON object: ``kind``, ``format``, ``version`` (the
    snapshot's), ``passages`` (ids), ``entities`` (``{key, name}``), ``relations`` (``{source, target,
    label, weight}`` by entity key), ``mentions`` (``{entity, passage, count}``) and ``communities`` (their
    fields). :func:`from_json` reads it back. Returns the path."""
    keys, passages = snapshot.entity_keys, snapshot.passage_ids
    data = {
        "kind": JSON_KIND,
        "format": GRAPH_FORMAT,
        "version": snapshot.version,
        "passages": list(passages),
        "entities": [{"key": k, "name": n} for k, n in zip(keys, snapshot.entity_names, strict=True)],
        "relations": [
            {"source": keys[a], "target": keys[b], "label": label, "weight": float(w)}
            for (a, b), label, w in zip(
                snapshot.relations.reshape(-1, 2).tolist(),
                snapshot.relation_labels,
                snapshot.relation_weights.tolist(),
                strict=True,
            )
        ],
        "mentions": [
            {"entity": keys[e], "passage": passages[p], "count": float(c)}
            for (e, p), c in zip(
                snapshot.mentions.reshape(-1, 2).tolist(), snapshot.mention_counts.tolist(), strict=True
            )
        ],
        "communities": [_community_dict(c) for c in communities or ()],
    }

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False)

    return _write_atomic(path, write)


def from_json(path: str | os.PathLike[str]) -> tuple[GraphSnapshot, list[Community]]:
    """The snapshot and communities of a file written by :func:`to_json`. A file of another kind or layout
    raises :class:`~ragplug.errors.InvalidInputError` naming it."""
    with open(path, encoding="utf-8") as fh:
        data = json.load(fh)
    try:
        if data.get("kind") != JSON_KIND or data.get("format") != GRAPH_FORMAT:
            msg = f"kind {data.get('kind')!r}, format {data.get('format')!r}"
            raise ValueError(msg)
        passage_ids = [str(p) for p in data["passages"]]
        entities = [(str(e["key"]), str(e["name"])) for e in data["entities"]]
        p_index = {p: i for i, p in enumerate(passage_ids)}
        e_index = {k: i for i, (k, _) in enumerate(entities)}
        relations = data["relations"]
        mentions = data["mentions"]
        snapshot = GraphSnapshot(
            version=int(data["version"]),
            passage_ids=passage_ids,
            entity_keys=[k for k, _ in entities],
            entity_names=[n for _, n in entities],
            mentions=np.array(
                [(e_index[m["entity"]], p_index[m["passage"]]) for m in mentions], dtype=np.int64
            ).reshape(-1, 2),
            mention_counts=np.array([m["count"] for m in mentions], dtype=np.float32),
            relations=np.array(
                [(e_index[r["source"]], e_index[r["target"]]) for r in relations], dtype=np.int64
            ).reshape(-1, 2),
            relation_weights=np.array([r["weight"] for r in relations], dtype=np.float32),
            relation_labels=[str(r["label"]) for r in relations],
        )
        communities = [
            Community(
                id=str(c["id"]),
                entities=tuple(c["entities"]),
                passages=tuple(c["passages"]),
                title=str(c["title"]),
                summary=str(c["summary"]),
                level=int(c["level"]),
                rank=float(c["rank"]),
            )
            for c in data.get("communities", [])
        ]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        msg = f"{str(path)!r} is not a graph written by ragplug's to_json: {type(err).__name__}: {err}"
        raise InvalidInputError(msg) from err
    return snapshot, communities


def _entity_index(snapshot: GraphSnapshot, key: str) -> int:
    """The index of entity ``key``, as given or normalised (``entity_key``), or UnknownIdError."""
    for candidate in (key, normalise_key(key)):
        try:
            return snapshot.entity_keys.index(candidate)
        except ValueError:
            continue
    close = difflib.get_close_matches(normalise_key(key), snapshot.entity_keys, n=5, cutoff=0.6)
    hint = f"; close keys: {', '.join(repr(k) for k in close)}" if close else ""
    msg = f"unknown entity {key!r}{hint}"
    raise UnknownIdError(msg)


def neighbourhood(snapshot: GraphSnapshot, entity_key: str, *, hops: int = 1, max_nodes: int = 40) -> Any:
    """The entities and passages within ``hops`` edges of one entity in the entity–passage graph, as an
    ``igraph.Graph`` of at most ``max_nodes`` vertices.

    Vertex 0 is the entity (``entity_key`` as stored, or any spelling that
    :func:`~ragplug.retrievers.graph.model.entity_key` maps to it); then each hop's vertices, those most
    strongly linked to the previous hop first (summed edge weight, ties by key), while room is left.
    Vertex attributes ``type``, ``key``, ``name``, ``hop``; edge attributes ``weight``, ``label``, as in
    :func:`to_graphml`; every edge among the chosen vertices is kept. An unknown entity raises
    :class:`~ragplug.errors.UnknownIdError` naming it and the closest keys."""
    if hops < 0 or max_nodes < 1:
        msg = f"hops must be >= 0 and max_nodes >= 1, got hops={hops!r}, max_nodes={max_nodes!r}"
        raise InvalidInputError(msg)
    centre = _entity_index(snapshot, entity_key)
    n_entities = len(snapshot.entity_keys)
    keys = np.asarray(list(snapshot.entity_keys) + list(snapshot.passage_ids), dtype=object)
    edges = np.concatenate(
        [snapshot.relations.reshape(-1, 2), snapshot.mentions.reshape(-1, 2) + np.array([0, n_entities])]
    )
    weights = np.concatenate([snapshot.relation_weights, snapshot.mention_counts]).astype(np.float64)
    chosen, hop_of = [centre], [0]
    frontier = np.array([centre], dtype=np.int64)
    for hop in range(1, hops + 1):
        room = max_nodes - len(chosen)
        if room <= 0 or frontier.size == 0:
            break
        from_a, from_b = np.isin(edges[:, 0], frontier), np.isin(edges[:, 1], frontier)
        others = np.concatenate([edges[from_a, 1], edges[from_b, 0]])
        links = np.concatenate([weights[from_a], weights[from_b]])
        fresh = ~np.isin(others, chosen)
        candidates, inverse = np.unique(others[fresh], return_inverse=True)
        strength = np.bincount(inverse.reshape(-1), links[fresh], minlength=len(candidates))
        frontier = candidates[np.lexsort((keys[candidates], -strength))][:room]
        chosen.extend(frontier.tolist())
        hop_of.extend([hop] * len(frontier))
    ids = np.asarray(chosen, dtype=np.int64)
    inside = np.isin(edges[:, 0], ids) & np.isin(edges[:, 1], ids)
    position = {v: i for i, v in enumerate(chosen)}
    sub_edges = np.array([(position[a], position[b]) for a, b in edges[inside].tolist()], dtype=np.int64)
    labels = list(snapshot.relation_labels) + [MENTIONS] * len(snapshot.mentions)
    names = list(snapshot.entity_names) + list(snapshot.passage_ids)
    return _graph(
        len(chosen),
        sub_edges.reshape(-1, 2),
        {
            "type": ["entity" if v < n_entities else "passage" for v in chosen],
            "key": [keys[v] for v in chosen],
            "name": [names[v] for v in chosen],
            "hop": hop_of,
        },
        {"weight": weights[inside].tolist(), "label": [labels[i] for i in np.flatnonzero(inside).tolist()]},
    )


def _short(text: str, limit: int, *, tail: bool = False) -> str:
    if len(text) <= limit:
        return text
    return "…" + text[-(limit - 1) :] if tail else text[: limit - 1] + "…"


def draw_neighbourhood(
    snapshot: GraphSnapshot,
    entity_key: str,
    path: str | os.PathLike[str],
    *,
    hops: int = 1,
    max_nodes: int = 40,
    title: str | None = None,
    edge_labels: bool = False,
    seed: int = 0,
) -> Path:
    """Draw :func:`neighbourhood` into a PNG at ``path`` and return the path.

    Entities are circles labelled by name (the entity itself larger, in another colour), passages squares
    labelled by their id (its end, when long); edges are as thick as they are heavy, labelled with their
    relation when ``edge_labels``. The layout is igraph's Fruchterman–Reingold from positions drawn with
    ``seed`` (and Python's ``random`` seeded for the call, its state restored after), so the same graph gives
    the same picture. No pyplot state changes."""
    require("matplotlib", "graph")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    graph = neighbourhood(snapshot, entity_key, hops=hops, max_nodes=max_nodes)
    n = graph.vcount()
    start = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2)).tolist()
    # igraph's layout draws from Python's ``random`` module (its default generator): seed it for the call
    # and put the caller's state back afterwards.
    state = random.getstate()
    try:
        random.seed(seed)
        layout = graph.layout_fruchterman_reingold(weights="weight", seed=start, niter=500)
    finally:
        random.setstate(state)
    xy: npt.NDArray[np.float64] = np.asarray(layout.coords, dtype=np.float64).reshape(n, 2)
    fig = Figure(figsize=(10, 8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_axis_off()
    pairs = np.asarray(graph.get_edgelist(), dtype=np.int64).reshape(-1, 2)
    if len(pairs):
        widths = 0.5 + np.log1p(np.asarray(graph.es["weight"], dtype=np.float64))
        ax.add_collection(LineCollection(list(xy[pairs]), linewidths=widths, colors="#999999", alpha=0.6, zorder=1))
        if edge_labels:
            for (a, b), label in zip(pairs.tolist(), graph.es["label"], strict=True):
                mid = (xy[a] + xy[b]) / 2
                ax.text(mid[0], mid[1], label, fontsize=6, color="#555555", ha="center", va="center", zorder=2)
    is_passage = np.asarray([t == "passage" for t in graph.vs["type"]], dtype=bool)
    is_entity = ~is_passage
    is_entity[0] = False  # the centre is drawn on its own
    ax.scatter(xy[is_entity, 0], xy[is_entity, 1], s=220, c=_ENTITY_COLOUR, marker="o", zorder=3)
    ax.scatter(xy[is_passage, 0], xy[is_passage, 1], s=160, c=_PASSAGE_COLOUR, marker="s", zorder=3)
    ax.scatter(xy[:1, 0], xy[:1, 1], s=480, c=_CENTRE_COLOUR, marker="o", zorder=4)
    for i, (name, passage) in enumerate(zip(graph.vs["name"], is_passage.tolist(), strict=True)):
        label = _short(name, 14, tail=True) if passage else _short(name, 24)
        ax.annotate(label, xy[i], xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8, zorder=5)
    ax.legend(
        handles=[
            Line2D([], [], marker="o", ls="", color=_CENTRE_COLOUR, markersize=10, label="entity (centre)"),
            Line2D([], [], marker="o", ls="", color=_ENTITY_COLOUR, markersize=8, label="entity"),
            Line2D([], [], marker="s", ls="", color=_PASSAGE_COLOUR, markersize=8, label="passage"),
        ],
        loc="lower right",
        fontsize=8,
        frameon=False,
    )
    ax.margins(0.08)
    ax.autoscale_view()
    if title is None:
        title = f"{graph.vs[0]['name']}: {hops}-hop neighbourhood ({n} nodes)"
    ax.set_title(title)
    return _write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
