"""``ragplug compare`` and ``ragplug eval``: measure on your own data. :func:`add_eval_commands` registers them
on the ``ragplug`` parser (:mod:`ragplug.cli`), whose error handling and exit statuses they share.

    ragplug compare --base MODEL --out DIR (--pubmedqa DIR | --corpus FILE --train FILE --test FILE)
                    [--arms base,rag,lora,lora_rag,raft_rag] [--model ENCODER] [-k N] [--lora-data qa|corpus]
                    [--epochs N] [--rank R] [--lr X] [--max-new-tokens N] [--labels yes,no,maybe]
                    [--system TEXT] [--judge] [--limit N] [--no-progress]
    ragplug eval retrieval INDEX --beir DIR [--split test] [-k N] [--metrics ndcg@10,recall@10,...] [--json]

``compare`` runs :func:`ragplug.evaluators.experiment.compare` in ``--out`` (run it again to resume a stopped
run): the corpus is indexed into ``--out/index`` with ``--model`` (a ColBERT checkpoint or a sentence
encoder), the adapters are trained into ``--out/adapters``, and the report is ``--out/compare.{md,json,png}``.
Corpus files are JSON Lines with ``id`` and ``text``; train and test files are QA JSON Lines (``question``,
``answer``, optional ``id`` and ``gold_ids``; see :func:`ragplug.evaluators.datasets.load_qa_jsonl`).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragplug.cli import CommandError, _positive, default_model
from ragplug.errors import DatasetError

__all__ = ["add_eval_commands"]

_PUBMEDQA_SYSTEM = "Answer the biomedical research question with yes, no or maybe."


def _csv(text: str) -> tuple[str, ...]:
    values = tuple(part.strip() for part in text.split(",") if part.strip())
    if not values:
        msg = f"expected a comma-separated list, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return values


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"expected a positive number, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return value


def load_corpus_jsonl(path: Path) -> dict[str, str]:
    """A corpus file: one JSON object per line with a string ``id`` (or ``_id``) and ``text`` (a BEIR
    ``corpus.jsonl`` reads as is; its ``title`` is put before the text)."""
    corpus: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:
            msg = f"{path}: line {n}: not JSON ({err})"
            raise DatasetError(msg) from err
        key = record.get("id", record.get("_id")) if isinstance(record, dict) else None
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(key, str | int) or not str(key) or not isinstance(text, str) or not text.strip():
            field = "text" if isinstance(key, str | int) and str(key) else "id"
            msg = f"{path}: line {n}: field {field!r} must be a non-empty string"
            raise DatasetError(msg)
        if str(key) in corpus:
            msg = f"{path}: line {n}: field 'id': {key!r} appears twice"
            raise DatasetError(msg)
        title = record.get("title")
        corpus[str(key)] = f"{title}\n{text}" if isinstance(title, str) and title.strip() else text
    if not corpus:
        msg = f"{path}: no passages"
        raise DatasetError(msg)
    return corpus


def _data(args: argparse.Namespace) -> tuple[dict[str, str], list[Any], list[Any], dict[str, Any]]:
    """Corpus, train items, test items and defaults the data implies (labels, system prompt)."""
    from ragplug.evaluators.datasets import load_pubmedqa, load_qa_jsonl

    implied: dict[str, Any] = {}
    if args.pubmedqa is not None:
        if any(v is not None for v in (args.corpus, args.train, args.test)):
            msg = "--pubmedqa brings its own corpus, train and test sets"
            raise CommandError(msg, "give either --pubmedqa DIR or --corpus, --train and --test")
        test_set = load_pubmedqa(args.pubmedqa, "test")
        corpus, test = test_set.corpus, list(test_set.items)
        train = list(load_pubmedqa(args.pubmedqa, "train").items)
        implied = {"labels": ("yes", "no", "maybe"), "system": _PUBMEDQA_SYSTEM}
    else:
        missing = [name for name in ("corpus", "train", "test") if getattr(args, name) is None]
        if missing:
            msg = f"missing {', '.join('--' + m for m in missing)}"
            raise CommandError(msg, "give --corpus, --train and --test files, or --pubmedqa DIR")
        corpus, train, test = load_corpus_jsonl(args.corpus), load_qa_jsonl(args.train), load_qa_jsonl(args.test)
    if args.limit is not None:
        train, test = train[: args.limit], test[: args.limit]
    return corpus, train, test, implied


def _retriever(out: Path, corpus: dict[str, str], model: str | None) -> tuple[Any, int]:
    """The index of ``corpus`` in ``out/index``: built the first time, opened (and checked) on a resumed run."""
    from ragplug.retrievers.colbert import ColBERTEncoder
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    folder = out / "index"
    if (folder / "manifest.json").is_file():
        from ragplug.errors import UnknownIdError

        index = LateInteractionIndex.open(folder, model)
        try:
            index.get(list(corpus))  # every passage of this corpus is there (by id; a parent expands to its chunks)
        except UnknownIdError as err:
            msg = f"{folder} does not index this corpus ({err})"
            raise CommandError(msg, "use a new --out folder for other data") from err
    else:
        encoder = ColBERTEncoder(model or default_model())
        index = LateInteractionIndex(encoder, chunker=encoder.chunker())
        index.add(list(corpus.values()), ids=list(corpus), show_progress=True)
        index.save(folder)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return index, size


def _compare(args: argparse.Namespace) -> None:
    from ragplug.adapters.lora import TrainConfig
    from ragplug.evaluators.experiment import CompareConfig, compare

    started = time.perf_counter()
    corpus, train, test, implied = _data(args)
    config = CompareConfig(
        arms=args.arms,
        k=args.k,
        lora_data=args.lora_data,
        train=TrainConfig(
            epochs=args.epochs,
            r=args.rank,
            lora_alpha=2 * args.rank,
            learning_rate=args.lr,
            progress=not args.no_progress,
        ),
        max_new_tokens=args.max_new_tokens,
        system=args.system if args.system is not None else implied.get("system"),
        labels=args.labels if args.labels is not None else implied.get("labels"),
    )
    retrieves = {"rag", "lora_rag", "raft_rag"} & set(config.arms)
    retriever, size = _retriever(args.out, corpus, args.model) if retrieves else (None, None)
    judge = None
    if args.judge:
        from ragplug.adapters.lora import LoRAModel, lora_chat_function

        judge_model = LoRAModel(args.base)
        judge = lora_chat_function(judge_model, max_new_tokens=200)
    result = compare(
        args.base,
        corpus=corpus,
        train=train,
        test=test,
        folder=args.out,
        retriever=retriever,
        config=config,
        judge=judge,
        index_bytes=size,
        progress=not args.no_progress,
    )
    report = result.report
    for metric in report["metrics"]:
        cells = [f"{arm} {report['estimates'][arm][metric]['overall']['mean']:.3f}" for arm in report["arms"]]
        print(f"{metric}: " + ", ".join(cells))
    failed = {arm: len(items) for arm, items in result.failures.items() if items}
    if failed:
        print(f"failed (run again to retry): {failed}")
    print(f"report: {result.files['md']} ({time.perf_counter() - started:.0f}s)")


def _eval_retrieval(args: argparse.Namespace) -> None:
    from ragplug.evaluators.datasets import load_beir
    from ragplug.evaluators.metrics import retrieval_scores
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    data = load_beir(args.beir, args.split)
    index = LateInteractionIndex.open(args.index, args.model)
    queries = [q for q in data.queries if q in data.qrels]
    ranked: dict[str, list[str]] = {}
    for qid in queries:
        hits = index.search(data.queries[qid], k=args.k * 3)
        ranked[qid] = list(dict.fromkeys(h.parent_id or h.id for h in hits))[: args.k]
    metrics = args.metrics or (f"ndcg@{args.k}", f"recall@{args.k}", "mrr", "hit@1")
    scores = retrieval_scores(ranked, {q: data.qrels[q] for q in queries}, metrics)
    if args.json:
        print(json.dumps(scores.to_dict(), indent=2))
        return
    for name, value in scores.means.items():
        print(f"{name}: {value:.4f}")
    print(f"({len(queries)} queries; {len(scores.skipped)} skipped)")


def add_eval_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``compare`` and ``eval`` to ``sub`` (the ``ragplug`` parser's subparsers)."""

    def command(parent: Any, name: str, run: Callable[[argparse.Namespace], None], **kwargs: Any) -> Any:
        parser = parent.add_parser(name, parents=[common], **kwargs)
        parser.set_defaults(run=run)
        return parser

    cmp = command(
        sub,
        "compare",
        _compare,
        help="RAG vs LoRA vs both on your model and data: train, answer, score, report (resumable)",
        description="Answer the test questions with every arm (base, rag, lora, lora_rag, raft_rag) of one base "
        "model, score them, and write a report with confidence intervals, paired tests and costs to --out. "
        "Run it again with the same arguments to resume.",
    )
    cmp.add_argument("--base", required=True, help="base model: a folder or hub id of a causal LM with a chat template")
    cmp.add_argument("--out", required=True, type=Path, metavar="DIR", help="work folder (created; reused to resume)")
    cmp.add_argument("--pubmedqa", type=Path, metavar="DIR", help="the PubMedQA folder (500 train / 500 test)")
    cmp.add_argument("--corpus", type=Path, metavar="FILE", help="corpus JSON Lines (id, text)")
    cmp.add_argument("--train", type=Path, metavar="FILE", help="training QA JSON Lines (question, answer, ...)")
    cmp.add_argument("--test", type=Path, metavar="FILE", help="test QA JSON Lines (question, answer, ...)")
    cmp.add_argument(
        "--arms", type=_csv, default=("base", "rag", "lora", "lora_rag", "raft_rag"), help="comma-separated arms"
    )
    cmp.add_argument("--model", default=None, help="retrieval encoder (default: the index's, else the offline MiniLM)")
    cmp.add_argument("-k", type=_positive, default=3, help="passages retrieved per question (default 3)")
    cmp.add_argument("--lora-data", choices=("qa", "corpus"), default="qa", help="what the lora arm learns")
    cmp.add_argument("--epochs", type=_positive, default=3, help="LoRA training epochs (default 3)")
    cmp.add_argument("--rank", type=_positive, default=16, help="LoRA rank (default 16; alpha = 2 x rank)")
    cmp.add_argument("--lr", type=_float, default=2e-4, help="LoRA learning rate (default 2e-4)")
    cmp.add_argument("--max-new-tokens", type=_positive, default=32, help="answer length limit (default 32)")
    cmp.add_argument("--labels", type=_csv, default=None, help="score by label accuracy over these labels")
    cmp.add_argument("--system", default=None, help="system prompt of every arm and of training")
    cmp.add_argument("--judge", action="store_true", help="also grade answers with the base model as a judge")
    cmp.add_argument("--limit", type=_positive, default=None, help="use only the first N train and test items")
    cmp.add_argument("--no-progress", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", parents=[common], help="evaluate an index on a labelled dataset")
    kinds = ev.add_subparsers(dest="eval_command", required=True, metavar="SUBCOMMAND", help="what to evaluate")
    retrieval = command(
        kinds,
        "retrieval",
        _eval_retrieval,
        help="retrieval metrics (ir-measures) of an index on a BEIR dataset",
        description="Search INDEX with the BEIR split's queries and score the rankings with ir-measures.",
    )
    retrieval.add_argument("index", type=Path, metavar="INDEX", help="a folder made by `ragplug index`")
    retrieval.add_argument(
        "--beir", required=True, type=Path, metavar="DIR", help="BEIR folder (corpus, queries, qrels)"
    )
    retrieval.add_argument("--split", default="test", help="qrels split (default test)")
    retrieval.add_argument("-k", type=_positive, default=10, help="results per query (default 10)")
    retrieval.add_argument("--model", default=None, help="query encoder (default: the one the index records)")
    retrieval.add_argument("--metrics", type=_csv, default=None, help="e.g. ndcg@10,recall@100,mrr,hit@1")
    retrieval.add_argument("--json", action="store_true", help="per-query scores as JSON")
