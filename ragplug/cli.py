"""The ``ragplug`` command: ``demo``, ``index`` and ``search``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _index(args: argparse.Namespace) -> None:
    from ragplug.plugins._build import build_index

    texts, metadatas, ids = [], [], []
    with open(args.input, encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            texts.append(row["text"])
            ids.append(str(row.get("id", n)))
            metadatas.append(row.get("metadata") or {})
    index = build_index(
        texts,
        metadatas=metadatas,
        ids=ids,
        model=args.model,
        store=None,
        chunk=not args.no_chunk,
        encoder_kwargs=None,
        show_progress=True,
    )
    index.save(args.out)
    print(f"indexed {len(texts)} documents ({len(index)} records) into {args.out}")


def _search(args: argparse.Namespace) -> None:
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    index = LateInteractionIndex.open(args.index, args.model)
    filter_ = json.loads(args.filter) if args.filter else None
    for hit in index.search(args.query, k=args.k, filter=filter_):
        print(json.dumps({"id": hit.id, "score": round(hit.score, 4), "metadata": hit.metadata, "text": hit.text}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragplug", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="ColBERT retrieval over A Christmas Carol with LangChain and LlamaIndex")
    demo.add_argument("--model", default=None, help="hub id or folder (default: the offline all-MiniLM-L6-v2)")
    demo.add_argument("--cache", type=Path, default=Path(".ragplug-cache/demo"), help="index folder")
    demo.add_argument("-k", type=int, default=3)
    demo.add_argument(
        "--postgres",
        default="embedded",
        help='then answer from Postgres: "embedded" (default, a server ragplug starts), a DSN, or "none"',
    )
    index = sub.add_parser("index", help="index a JSONL file of {id, text, metadata} rows")
    index.add_argument("input")
    index.add_argument("--out", required=True, type=Path)
    index.add_argument("--model", required=True)
    index.add_argument("--no-chunk", action="store_true")
    search = sub.add_parser("search", help="search an index folder")
    search.add_argument("query")
    search.add_argument("--index", required=True, type=Path)
    search.add_argument("--model", required=True)
    search.add_argument("-k", type=int, default=5)
    search.add_argument("--filter", default=None, help='JSON filter, e.g. \'{"year": {"$gte": 1843}}\'')
    args = parser.parse_args(argv)
    if args.command == "demo":
        from ragplug.demo import run

        run(args.model, args.cache, args.k, None if args.postgres == "none" else args.postgres)
    elif args.command == "index":
        _index(args)
    else:
        _search(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
