"""``ragplug graph``: build a Graph RAG index of your files, see what it holds, look around an entity, search,
export. :func:`add_graph_commands` registers the group on the ``ragplug`` parser (:mod:`ragplug.cli`), whose
error handling and exit statuses it shares.

    ragplug graph build PATH... --out DIR [--model M] [--root DIR] [--upsert] [--no-progress]
                                          [--max-words N] [--no-phrases]
    ragplug graph stats DIR [--json]
    ragplug graph show DIR ENTITY [--hops N] [--max-nodes N] [--png FILE] [--json]
    ragplug graph search DIR QUERY [-k N] [--mode local|global|hybrid] [--filter JSON] [--json]
    ragplug graph export DIR (--graphml FILE | --json FILE)

A graph folder is what :meth:`GraphIndex.save <ragplug.retrievers.graph.index.GraphIndex.save>` writes:
``graph_index.json`` (how it was built), ``graph/`` (the in-memory graph store) and ``passages/`` (the ColBERT
index of the passages). ``stats``, ``show`` and ``export`` read the graph store alone, without loading the
encoder; ``build`` and ``search`` reopen the encoder the folder records.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ragplug.cli import CommandError, _plural, _positive, _round, default_model, existing_output, filter_arg, read_paths
from ragplug.errors import DuplicateIdError, EncoderMismatchError, StoreError, UnknownIdError

__all__ = ["add_graph_commands"]

_GRAPH_MANIFEST = "graph_index.json"  # GraphIndex.save's record; read here without importing the engine
_INDEX_MANIFEST = "manifest.json"  # what a `ragplug index` folder holds
_SNIPPET = 120
_DEFAULT_MAX_WORDS = 200  # PassageSplitter's default, stated here for --help without importing it
_BUILD_HINT = "make one with `ragplug graph build PATH... --out DIR`"


# -- folders --------------------------------------------------------------------------------------------
def _manifest(folder: Path) -> dict[str, Any]:
    """The record of the graph index in ``folder``, or a CommandError saying what the folder is instead."""
    file = folder / _GRAPH_MANIFEST
    if not file.is_file():
        if not folder.exists():
            msg = f"{folder} does not exist"
        elif not folder.is_dir():
            msg = f"{folder} is a file, not a graph index folder"
        elif (folder / _INDEX_MANIFEST).is_file():
            msg = f"{folder} is a ColBERT index made by `ragplug index`, not a graph index"
            raise CommandError(msg, "search it with `ragplug search`, or " + _BUILD_HINT)
        else:
            msg = f"{folder} is not a graph index (no {_GRAPH_MANIFEST})"
        raise CommandError(msg, _BUILD_HINT)
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as err:
        msg = f"{file} is not valid JSON: {err}"
        raise CommandError(msg, "the graph folder is damaged; rebuild it with `ragplug graph build`") from err
    if not isinstance(data, dict) or not isinstance(data.get("store"), dict) or "identity" not in data:
        msg = f"{file} is not a graph index record"
        raise CommandError(msg, "the graph folder is damaged; rebuild it with `ragplug graph build`")
    return data


def _load_graph(folder: Path) -> tuple[dict[str, Any], Any]:
    """The folder's manifest and its in-memory graph store, loaded without the encoder."""
    from ragplug.retrievers.graph.stores import MemoryGraphStore

    manifest = _manifest(folder)
    kind = manifest["store"].get("kind")
    if kind != "memory":
        msg = f"the graph of {folder} lives in a {kind} store, not in the folder"
        raise CommandError(msg, "open it in Python: GraphIndex.open(DIR, store=PgGraphStore(...))")
    with _graph_errors():
        return manifest, MemoryGraphStore.load(folder / "graph")


@contextlib.contextmanager
def _graph_errors() -> Iterator[None]:
    """Errors of a graph folder, with hints that name the graph commands (cli.py's name `ragplug index`)."""
    try:
        yield
    except EncoderMismatchError as err:
        hint = "leave out --model (and --no-phrases, --max-words) to use what the graph records (`ragplug graph stats`)"
        raise CommandError(str(err), hint) from err
    except StoreError as err:
        raise CommandError(str(err), "the graph folder is damaged; rebuild it with `ragplug graph build`") from err


@contextlib.contextmanager
def _quiet_graph_log(debug: bool) -> Iterator[None]:
    """The engine logs (as a library should) what the command prints anyway (passages without entities):
    outside ``--debug``, keep those records from reaching Python's last-resort handler twice."""
    logger = logging.getLogger("ragplug.retrievers.graph")
    if debug:
        yield
        return
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _short(text: str | None, limit: int = _SNIPPET) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[:limit].rstrip() + " ..."


def _listed(ids: list[str], limit: int = 5) -> str:
    return ", ".join(ids[:limit]) + (", ..." if len(ids) > limit else "")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _warn(message: str) -> None:
    print(f"ragplug: warning: {message}", file=sys.stderr)


# -- build ----------------------------------------------------------------------------------------------
def _recorded_settings(manifest: dict[str, Any], args: argparse.Namespace) -> None:
    """Refuse, before the model loads, --max-words / --no-phrases that differ from what the graph records."""
    recorded_words = manifest.get("splitter", {}).get("max_words")
    if args.max_words is not None and args.max_words != recorded_words:
        msg = f"--max-words {args.max_words}: {args.out} was built with --max-words {recorded_words}"
        raise CommandError(msg, "leave out --max-words to use the recorded value, or build into a new folder")
    settings = manifest["identity"].get("extractor_settings") or {}
    if args.no_phrases and settings.get("phrases", True) is not False:
        msg = f"--no-phrases: {args.out} was built with key phrases"
        raise CommandError(msg, "leave out --no-phrases, or build into a new folder")


def _build(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    out: Path = args.out
    existing = existing_output(out, _GRAPH_MANIFEST, "a graph index", "a graph made by `ragplug graph build`")
    loaded = read_paths(args.paths, args.root, out, "nothing to build a graph from")
    ids = [item.id for item in loaded.items]
    with _graph_errors():
        index = _reopen_for_build(out, args, ids) if existing else _new_graph(args)
        with _quiet_graph_log(args.debug):
            index.add(
                [item.text for item in loaded.items],
                ids=ids,
                metadatas=[item.metadata for item in loaded.items],
                upsert=args.upsert,
                show_progress=not args.no_progress,
            )
        index.save(out)
    report, stats = index.last_report, index.stats()
    parts = [
        f"built a graph of {_plural(loaded.files, 'file')} into {out}: {_plural(report.documents, 'document')}, "
        f"{_plural(report.passages, 'passage')}, {_count(report.new_entities, 'new entity', 'new entities')}",
        f"in all {_plural(stats.documents, 'document')}, {_plural(stats.passages, 'passage')}, "
        f"{_count(stats.entities, 'entity', 'entities')}, {_plural(stats.relations, 'relation')}, "
        f"{_plural(stats.empty_passages, 'empty passage')}; {time.perf_counter() - t0:.1f}s",
    ]
    if loaded.skipped:
        skipped = _plural(sum(loaded.skipped.values()), "file")
        parts.append(f"skipped {skipped} with no reader ({loaded.skipped_summary()})")
    if loaded.empty:
        parts.append(f"{len(loaded.empty)} without text, not read ({_listed(loaded.empty, 3)})")
    print("; ".join(parts))
    if report.blank_documents:
        _warn(f"{_plural(len(report.blank_documents), 'document')} gave no passage: {_listed(report.blank_documents)}")
    if report.empty_passages:
        n = len(report.empty_passages)
        _warn(
            f"{n} of {_plural(report.passages, 'passage')} yielded no entity (searchable as passages, not through "
            f"the graph): {_listed(report.empty_passages)}"
        )


def _new_graph(args: argparse.Namespace) -> Any:
    from ragplug.retrievers.colbert import ColBERTEncoder
    from ragplug.retrievers.graph.chunking import PassageSplitter
    from ragplug.retrievers.graph.extract import PhraseExtractor
    from ragplug.retrievers.graph.index import GraphIndex
    from ragplug.retrievers.graph.stores import MemoryGraphStore
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    encoder = ColBERTEncoder(args.model or default_model())
    return GraphIndex(
        MemoryGraphStore(),
        LateInteractionIndex(encoder),  # no chunker: the graph cuts documents into passages itself
        extractor=PhraseExtractor(phrases=not args.no_phrases),
        splitter=PassageSplitter(args.max_words or _DEFAULT_MAX_WORDS),
    )


def _reopen_for_build(out: Path, args: argparse.Namespace, ids: list[str]) -> Any:
    from ragplug.retrievers.graph.index import GraphIndex

    manifest, store = _load_graph(out)
    _recorded_settings(manifest, args)
    if not args.upsert:  # before loading the model and extracting
        stored = set(store.documents())
        taken = [i for i in ids if i in stored]
        if taken:
            shown = ", ".join(repr(i) for i in taken[:3]) + (", ..." if len(taken) > 3 else "")
            msg = f"{len(taken)} of the {len(ids)} documents are already in {out}: {shown}"
            raise DuplicateIdError(msg)
    return GraphIndex.open(out, store=store, model=args.model)


# -- stats ----------------------------------------------------------------------------------------------
def _stats(args: argparse.Namespace) -> None:
    folder: Path = args.dir
    manifest, store = _load_graph(folder)
    with _graph_errors():
        stats = store.stats().to_dict()
        _, communities_version = store.communities()
        version = store.version
    identity = manifest["identity"]
    encoder = identity.get("encoder") or {}
    info: dict[str, Any] = {
        "graph": str(folder),
        **stats,
        "communities_current": stats["communities"] > 0 and communities_version == version,
        "max_words": manifest.get("splitter", {}).get("max_words"),
        "extractor": identity.get("extractor"),
        "extractor_settings": identity.get("extractor_settings") or {},
        "encoder": encoder or None,
    }
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return
    communities = str(stats["communities"])
    if stats["communities"] and not info["communities_current"]:
        communities += " (older than the graph: the next global search recomputes them)"
    elif not stats["communities"]:
        communities += " (computed by the first global search)"
    settings = ", ".join(f"{k}={v}" for k, v in info["extractor_settings"].items())
    rows = [
        ("graph", str(folder)),
        ("documents", str(stats["documents"])),
        ("passages", f"{stats['passages']} (at most {info['max_words']} words each)"),
        ("entities", str(stats["entities"])),
        ("relations", str(stats["relations"])),
        ("mentions", str(stats["mentions"])),
        ("communities", communities),
        ("empty passages", f"{stats['empty_passages']} (no entity found in them)"),
        ("extractor", f"{info['extractor']} ({settings})" if settings else str(info["extractor"])),
    ]
    if encoder:
        rows.append(
            (
                "encoder",
                f"{encoder.get('name')} (dim {encoder.get('dim')}, fingerprint {encoder.get('fingerprint') or 'none'})",
            )
        )
        rows.extend((f"  {key}", str(value)) for key, value in (encoder.get("settings") or {}).items())
    else:
        rows.append(("encoder", "not recorded"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


# -- show -----------------------------------------------------------------------------------------------
def _show(args: argparse.Namespace) -> None:
    from ragplug.retrievers.graph.export import draw_neighbourhood, neighbourhood

    folder: Path = args.dir
    _, store = _load_graph(folder)
    snapshot = store.snapshot()
    try:
        graph = neighbourhood(snapshot, args.entity, hops=args.hops, max_nodes=args.max_nodes)
    except UnknownIdError as err:
        message = str(err.args[0]) if err.args else str(err)  # a KeyError's str() adds quotes
        raise CommandError(message, "`ragplug graph export DIR --json FILE` lists every entity key") from err
    centre_key = graph.vs[0]["key"]
    mentioned = sum(1 for e, _ in snapshot.mentions.tolist() if snapshot.entity_keys[e] == centre_key)
    nodes = [{"type": v["type"], "key": v["key"], "name": v["name"], "hop": v["hop"]} for v in graph.vs]
    edges = [
        {
            "source": graph.vs[e.source]["key"],
            "target": graph.vs[e.target]["key"],
            "label": e["label"],
            "weight": round(float(e["weight"]), 4),
        }
        for e in graph.es
    ]
    passage_ids = [n["key"] for n in nodes if n["type"] == "passage"]
    texts = {p.id: p.text for p in store.passages(passage_ids)} if passage_ids else {}
    png = None
    if args.png is not None:
        png = str(draw_neighbourhood(snapshot, centre_key, args.png, hops=args.hops, max_nodes=args.max_nodes))
    if args.json:
        for node in nodes:
            if node["type"] == "passage":
                node["text"] = texts.get(node["key"], "")
        out = {
            "entity": {"key": centre_key, "name": graph.vs[0]["name"]},
            "hops": args.hops,
            "passages_mentioning": mentioned,
            "nodes": nodes,
            "edges": edges,
        }
        if png is not None:
            out["png"] = png
        print(json.dumps(out, ensure_ascii=False))
        return
    print(_show_text(graph, nodes, edges, texts, mentioned, args))
    if png is not None:
        print(f"\nwrote {png}")


def _show_text(
    graph: Any,
    nodes: list[dict[str, Any]],
    edges: list[dict[str, Any]],
    texts: dict[str, str],
    mentioned: int,
    args: argparse.Namespace,
) -> str:
    """The neighbourhood in words: each entity with its links to the hop before, then the passages."""
    centre = nodes[0]
    hop_of = {n["key"]: n["hop"] for n in nodes}
    links: dict[str, list[tuple[str, str, float]]] = {}  # key -> (other key, label, weight) one hop nearer
    for e in edges:
        for a, b in ((e["source"], e["target"]), (e["target"], e["source"])):
            if hop_of[b] == hop_of[a] - 1:
                links.setdefault(a, []).append((b, e["label"], e["weight"]))
    name_of = {n["key"]: n["name"] for n in nodes}
    entities = [n for n in nodes[1:] if n["type"] == "entity"]
    passages = [n for n in nodes if n["type"] == "passage"]
    lines = [
        f"{centre['name']} (key {centre['key']!r}): mentioned in {_plural(mentioned, 'passage')}; "
        f"{_plural(len(nodes), 'node')} within {_plural(args.hops, 'hop')} (at most {args.max_nodes})"
    ]
    lines.append(f"\nentities ({len(entities)}):" if entities else "\nno linked entity")
    width = max((len(n["name"]) for n in entities), default=0)
    for node in entities:
        via = sorted(links.get(node["key"], []), key=lambda link: -link[2])
        shown = "; ".join(
            f"{label} {weight:g}" + ("" if other == centre["key"] else f" via {name_of[other]}")
            for other, label, weight in via[:3]
        )
        lines.append(f"  {node['name']:<{width}}  hop {node['hop']}  {shown}")
    lines.append(f"\npassages ({len(passages)}):" if passages else "\nno passage")
    for node in passages:
        where = "mentions it" if node["hop"] == 1 else f"hop {node['hop']}"
        lines.append(f"  {node['key']}  ({where})  {_short(texts.get(node['key']))}")
    return "\n".join(lines)


# -- search ---------------------------------------------------------------------------------------------
def _search(args: argparse.Namespace) -> None:
    from ragplug.retrievers.graph.index import GraphIndex

    node = filter_arg(args.filter)
    folder: Path = args.dir
    _, store = _load_graph(folder)
    with _graph_errors():
        index = GraphIndex.open(folder, store=store)
    hits = index.search(args.query, k=args.k, filter=node, mode=args.mode)
    for rank, hit in enumerate(hits, 1):
        if args.json:
            row: dict[str, Any] = {
                "rank": rank,
                "id": hit.id,
                "score": round(hit.score, 6),
                "relevance": _round(hit.relevance),
            }
            if hit.parent_id is not None:
                row["parent_id"] = hit.parent_id
            row.update(metadata=hit.metadata, text=hit.text)
            print(json.dumps(row, ensure_ascii=False, default=str))
        else:
            print(("\n" if rank > 1 else "") + _readable(rank, hit))
    if not hits and not args.json:
        print("no matches" + (" (with this filter)" if node is not None else ""))


def _readable(rank: int, hit: Any) -> str:
    meta = hit.metadata
    relevance = "" if hit.relevance is None else f"relevance {hit.relevance:.3f}  "
    lines = [f"{rank:>2}. {hit.id}  {relevance}(score {hit.score:.4g})"]
    if "graph_community" in meta:
        lines.append(
            f"    community {meta['graph_community']} (level {meta.get('graph_level')}): {meta.get('title')!r}"
        )
        if meta.get("graph_entities"):
            lines.append(f"    entities: {', '.join(map(str, meta['graph_entities']))}")
        if meta.get("graph_passages"):
            lines.append(f"    passages: {_listed([str(p) for p in meta['graph_passages']], 8)}")
        if meta.get("graph_answer"):
            lines.append(f"    LLM: {_short(meta['graph_answer'], 240)}")
    else:
        if meta.get("source"):
            lines.append(f"    source {meta['source']}")
        if "graph_fallback" in meta:
            lines.append(f"    fallback: {meta['graph_fallback']}")
        if meta.get("graph_seeds"):
            lines.append(f"    seeds: {', '.join(map(str, meta['graph_seeds']))}")
        if meta.get("graph_entities"):
            lines.append(f"    entities: {', '.join(map(str, meta['graph_entities']))}")
        if meta.get("graph_edges"):
            shown = "; ".join(f"{a} -{label}- {b}" for a, label, b in meta["graph_edges"][:4])
            lines.append(f"    edges: {shown}")
    text = _short(hit.text, 240)
    lines.append("    " + (text or "(no text stored)"))
    return "\n".join(lines)


# -- export ---------------------------------------------------------------------------------------------
def _export(args: argparse.Namespace) -> None:
    from ragplug.retrievers.graph.export import to_graphml, to_json

    folder: Path = args.dir
    _, store = _load_graph(folder)
    snapshot = store.snapshot()
    if args.graphml is not None:
        path = to_graphml(snapshot, args.graphml)
        kind = "GraphML"
    else:
        communities, version = store.communities()
        current = communities if version == snapshot.version else []  # stale ones describe another graph
        path = to_json(snapshot, args.json, communities=current)
        kind = f"JSON ({_count(len(current), 'community', 'communities')})"
    entities = _count(len(snapshot.entity_keys), "entity", "entities")
    passages, relations = (
        _plural(len(snapshot.passage_ids), "passage"),
        _plural(len(snapshot.relation_labels), "relation"),
    )
    print(f"wrote {path}: {kind}, {entities}, {passages}, {relations}")


# -- parser ---------------------------------------------------------------------------------------------
def _hops(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        msg = f"must be a non-negative integer, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def add_graph_commands(sub: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``graph`` command group to ``sub`` (the ``ragplug`` parser's subparsers); ``common`` holds the
    options every command takes (``--debug``). Returns the group's parser."""
    graph = sub.add_parser(
        "graph",
        parents=[common],
        help="Graph RAG: build a knowledge graph of your files, inspect it, search it",
        description="Graph RAG over a folder: entities and their relations extracted from your files (no LLM), "
        "passages ranked by a walk over the graph from the entities a query names (local), fused with ColBERT "
        "(hybrid), or the graph's communities (global).",
    )
    commands = graph.add_subparsers(dest="graph_command", required=True, metavar="SUBCOMMAND", help="what to do")

    def command(name: str, run: Callable[[argparse.Namespace], None], **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, parents=[common], **kwargs)
        parser.set_defaults(run=run)
        return parser

    build = command(
        "build",
        _build,
        help="build or extend a graph index of files and folders (.txt, .md, .pdf, .jsonl)",
        description="Read files and folders as `ragplug index` does (same ids: paths relative to --root, PDF "
        "pages, JSONL ids), cut them into passages, extract names and key phrases, and save the graph and a "
        "ColBERT index of the passages in --out, creating it or adding to it.",
    )
    build.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files and folders to read")
    build.add_argument("--out", required=True, type=Path, metavar="DIR", help="graph folder to create or add to")
    build.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="checkpoint folder or hub id of the passage and entity encoder (a new graph defaults to the one "
        "`ragplug index` defaults to; an existing graph uses the encoder it records, and a --model given is "
        "checked against it)",
    )
    build.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="ids and the 'source' metadata are file paths relative to DIR (default: the current folder)",
    )
    build.add_argument("--upsert", action="store_true", help="replace documents whose ids are already in the graph")
    build.add_argument("--no-progress", action="store_true", help="no progress bars")
    build.add_argument(
        "--max-words",
        type=_positive,
        default=None,
        metavar="N",
        help=f"longest passage, in words, cut at sentence ends (at least 8; default {_DEFAULT_MAX_WORDS}; an "
        "existing graph keeps the value it was built with)",
    )
    build.add_argument(
        "--no-phrases",
        action="store_true",
        default=None,
        help="extract capitalised names only, not key phrases (fewer, more specific entities)",
    )

    stats = command(
        "stats",
        _stats,
        help="what a graph holds and how it was built",
        description="Documents, passages, entities, relations, mentions, communities, passages without an "
        "entity, the extractor and the encoder of a graph folder, without loading the encoder.",
    )
    stats.add_argument("dir", type=Path, metavar="DIR", help="graph folder")
    stats.add_argument("--json", action="store_true", help="one JSON object")

    show = command(
        "show",
        _show,
        help="an entity's neighbourhood: linked entities and the passages that mention it",
        description="The entities and passages within --hops edges of ENTITY (its name in any case, e.g. "
        "'mira talbot'), strongest links first, at most --max-nodes; optionally drawn into a PNG.",
    )
    show.add_argument("dir", type=Path, metavar="DIR", help="graph folder")
    show.add_argument("entity", metavar="ENTITY", help="the entity's name or key")
    show.add_argument("--hops", type=_hops, default=1, metavar="N", help="edges from the entity (default 1)")
    show.add_argument("--max-nodes", type=_positive, default=40, metavar="N", help="most nodes shown (default 40)")
    show.add_argument("--png", type=Path, default=None, metavar="FILE", help="also draw the neighbourhood into FILE")
    show.add_argument("--json", action="store_true", help="one JSON object (nodes, edges, passages' text)")

    search = command(
        "search",
        _search,
        help="search a graph index",
        description="Passages (local, hybrid) or communities (global) for QUERY, each with its evidence: the "
        "query's seed entities, the passage's entities and the edges between them; a passage found by ColBERT "
        "alone (no entity of the graph in the query) says so.",
    )
    search.add_argument("dir", type=Path, metavar="DIR", help="graph folder")
    search.add_argument("query", metavar="QUERY", help="what to search for")
    search.add_argument("-k", type=_positive, default=5, metavar="N", help="number of results (default 5)")
    search.add_argument(
        "--mode",
        choices=("local", "global", "hybrid"),
        default="local",
        help="local: a walk over the graph from the query's entities (default); hybrid: fused with ColBERT; "
        "global: the graph's communities",
    )
    search.add_argument(
        "--filter",
        default=None,
        metavar="JSON",
        help='metadata filter on passages, e.g. \'{"source": "docs/a.md"}\'',
    )
    search.add_argument(
        "--json", action="store_true", help="one JSON object per hit (rank, id, score, relevance, metadata, text)"
    )

    export = command(
        "export",
        _export,
        help="write the graph as GraphML or JSON",
        description="Write the entity-passage graph as GraphML (for Gephi, Cytoscape, networkx) or as ragplug's "
        "JSON layout (entities, relations, mentions, current communities).",
    )
    export.add_argument("dir", type=Path, metavar="DIR", help="graph folder")
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--graphml", type=Path, default=None, metavar="FILE", help="GraphML file to write")
    target.add_argument("--json", type=Path, default=None, metavar="FILE", help="JSON file to write")
    return graph
