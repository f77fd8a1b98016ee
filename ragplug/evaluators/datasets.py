"""Evaluation datasets: QA JSONL, Alpaca JSON, PubMedQA (PQA-L) and BEIR folders, loaded with clear errors.

A benchmark that dies on item 734 with ``KeyError: 'question'`` costs an evening; every problem here raises
:class:`~ragplug.errors.DatasetError` naming the file, the 1-based line (JSONL, TSV) or row (JSON list) or
record, and the field. Loaders read everything up front and check it all, so a run never starts on a file that
would fail half way. A missing reference answer is allowed at load time (a retrieval-only set has none); the
metrics that need one report it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragplug.errors import DatasetError, InvalidInputError

__all__ = ["BeirDataset", "QADataset", "QAItem", "load_alpaca", "load_beir", "load_pubmedqa", "load_qa_jsonl"]

_PUBMEDQA_LABELS: tuple[str, ...] = ("yes", "no", "maybe")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class QAItem:
    """One question with its reference ``answer`` (None when the set has none), the ids of the passages that
    support it (``gold_ids``, for retrieval metrics), an optional gold ``context`` and free ``metadata``."""

    id: str
    question: str
    answer: str | None
    gold_ids: tuple[str, ...] = ()
    context: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        for name in ("id", "question"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                msg = f"QAItem.{name} must be a non-empty string, got {value!r}"
                raise InvalidInputError(msg)
        for name in ("answer", "context"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                msg = f"QAItem.{name} must be a string or None, got {type(value).__name__}"
                raise InvalidInputError(msg)
        gold = self.gold_ids
        if isinstance(gold, str) or not all(isinstance(g, str) and g for g in gold):
            msg = f"QAItem.gold_ids must be a tuple of non-empty strings, got {gold!r}"
            raise InvalidInputError(msg)
        object.__setattr__(self, "gold_ids", tuple(gold))
        if not isinstance(self.metadata, Mapping):
            msg = f"QAItem.metadata must be a mapping, got {type(self.metadata).__name__}"
            raise InvalidInputError(msg)


@dataclass(frozen=True)
class QADataset:
    """QA items and the ``corpus`` (passage id -> text) their ``gold_ids`` point into, ready to index."""

    items: tuple[QAItem, ...]
    corpus: dict[str, str]
    name: str = ""
    split: str = ""


@dataclass(frozen=True)
class BeirDataset:
    """A BEIR split: ``corpus`` (doc id -> {"title", "text"}), the split's ``queries`` (query id -> text) and
    ``qrels`` (query id -> {doc id: grade})."""

    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def _error(path: Path, where: str, field_name: str | None, problem: str) -> DatasetError:
    at = f"{path}: {where}" + (f": field {field_name!r}" if field_name else "")
    return DatasetError(f"{at}: {problem}")


def _read_text(path: Path) -> str:
    if not path.is_file():
        msg = f"{path}: no such file"
        raise DatasetError(msg)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        msg = f"{path}: not UTF-8 text (byte {err.start}): {err.reason}"
        raise DatasetError(msg) from err


def _read_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise _error(path, f"line {err.lineno}", None, f"malformed JSON (column {err.colno}): {err.msg}") from err


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line number, object) for each non-blank line; an empty file raises."""
    empty = True
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        empty = False
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise _error(path, f"line {n}", None, f"malformed JSON (column {err.colno}): {err.msg}") from err
        if not isinstance(record, dict):
            raise _error(path, f"line {n}", None, f"expected a JSON object, got {type(record).__name__}")
        yield n, record
    if empty:
        raise _error(path, "line 1", None, "the file holds no record")


def _optional(record: Mapping[str, Any], key: str, path: Path, where: str) -> str | None:
    """``record[key]`` checked to be a string (blank allowed), or None when absent or null."""
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise _error(path, where, key, f"must be a string, got {type(value).__name__}: {value!r:.60}")
    return value


def _required(record: Mapping[str, Any], key: str, path: Path, where: str, *, blank: bool = False) -> str:
    """``record[key]`` checked to be present and a string, non-blank unless ``blank``."""
    value = _optional(record, key, path, where)
    if value is None:
        raise _error(path, where, key, "missing (a string is required)")
    if not blank and not value.strip():
        raise _error(path, where, key, "must not be empty")
    return value


def _item_id(value: Any, default: str, path: Path, where: str, key: str) -> str:
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise _error(path, where, key, f"must be a non-empty string or an integer, got {value!r:.60}")
    return value


def _add_unique(items: dict[str, QAItem], seen: dict[str, str], item: QAItem, path: Path, where: str) -> None:
    if item.id in items:
        raise _error(path, where, "id", f"duplicate id {item.id!r} (first at {seen[item.id]})")
    items[item.id] = item
    seen[item.id] = where


def load_qa_jsonl(path: str | Path) -> list[QAItem]:
    """QA items from a JSONL file: one object per line with ``question`` (a non-empty string), optional
    ``answer`` (string or null), ``id`` (string or integer; default the line number), ``gold_ids`` (list of
    ids) and ``context`` (string); other keys go to ``metadata``. Blank lines are skipped."""
    path = Path(path)
    items: dict[str, QAItem] = {}
    seen: dict[str, str] = {}
    known = {"id", "question", "answer", "gold_ids", "context"}
    for n, record in _jsonl(path):
        where = f"line {n}"
        gold = record.get("gold_ids", [])
        if not isinstance(gold, list):
            raise _error(path, where, "gold_ids", f"must be a list of ids, got {type(gold).__name__}")
        gold_ids = [_item_id(g, "", path, where, "gold_ids") for g in gold]
        if "" in gold_ids:
            raise _error(path, where, "gold_ids", "holds a null id")
        item = QAItem(
            id=_item_id(record.get("id"), str(n), path, where, "id"),
            question=_required(record, "question", path, where),
            answer=_optional(record, "answer", path, where),
            gold_ids=tuple(dict.fromkeys(gold_ids)),
            context=_optional(record, "context", path, where),
            metadata={k: v for k, v in record.items() if k not in known},
        )
        _add_unique(items, seen, item, path, where)
    return list(items.values())


def load_alpaca(path: str | Path) -> list[QAItem]:
    """QA items from an Alpaca JSON list of ``{instruction, input?, output, id?}``.

    The question is the instruction, then a blank line and the input when there is one, as the Alpaca prompt
    lays them out; both are kept as written (PubMedQA's input, ``"Question: ...\\n\\nContext:\\n..."``,
    included), and also stored in ``metadata`` for a trainer that rebuilds its own prompt. The answer is
    ``output``; ``id`` defaults to the 1-based row number; other keys go to ``metadata``."""
    path = Path(path)
    rows = _read_json(path)
    if not isinstance(rows, list):
        raise _error(path, "line 1", None, f"expected a JSON list of objects, got {type(rows).__name__}")
    if not rows:
        raise _error(path, "line 1", None, "the list holds no record")
    items: dict[str, QAItem] = {}
    seen: dict[str, str] = {}
    for n, row in enumerate(rows, start=1):
        where = f"row {n}"
        if not isinstance(row, dict):
            raise _error(path, where, None, f"expected a JSON object, got {type(row).__name__}")
        instruction = _required(row, "instruction", path, where)
        extra = _optional(row, "input", path, where) or ""
        output = _required(row, "output", path, where)
        meta = {k: v for k, v in row.items() if k not in {"id", "output"}}
        meta["input"] = extra
        item = QAItem(
            id=_item_id(row.get("id"), str(n), path, where, "id"),
            question=f"{instruction}\n\n{extra}" if extra.strip() else instruction,
            answer=output,
            metadata=meta,
        )
        _add_unique(items, seen, item, path, where)
    return list(items.values())


def load_pubmedqa(folder: str | Path, split: str = "test") -> QADataset:
    """PubMedQA PQA-L from its release folder (``ori_pqal.json``, ``test_ground_truth.json``).

    The split is the official one: ``"test"`` is the 500 PMIDs of ``test_ground_truth.json`` (the labels the
    PubMedQA evaluation scores against; the authors drew them from the 1,000 with a fixed seed, stratified by
    label), ``"train"`` the other 500 of ``ori_pqal.json`` (which the paper cuts into 10 cross-validation
    folds for train/dev; that is left to the caller). ``pqal_alpaca_test.json`` / ``pqal_alpaca_train.json``
    hold the same two sets of PMIDs. Items keep ``ori_pqal.json``'s order.

    Each item: ``question`` the bare question, ``answer`` the yes/no/maybe label, ``gold_ids`` its PMID,
    ``context`` its abstract, ``metadata`` the long answer, year and MeSH terms. ``corpus`` holds one passage
    per PMID for all 1,000 abstracts, whatever the split (the other split's abstracts are distractors, which
    makes retrieval a real search): the labelled sections ``"BACKGROUND: ..."`` one per line, the text the
    Alpaca files put after ``Context:``, so a RAG prompt built from a retrieved passage matches the LoRA one.
    """
    folder = Path(folder)
    if split not in ("train", "test"):
        msg = f"unknown PubMedQA split {split!r}; choose 'train' or 'test'"
        raise InvalidInputError(msg)
    ori_path, truth_path = folder / "ori_pqal.json", folder / "test_ground_truth.json"
    records = _read_json(ori_path)
    truth = _read_json(truth_path)
    for path, value in ((ori_path, records), (truth_path, truth)):
        if not isinstance(value, dict) or not value:
            raise _error(path, "line 1", None, "expected a non-empty JSON object keyed by PMID")
    corpus: dict[str, str] = {}
    items: list[QAItem] = []
    for n, (pmid, record) in enumerate(records.items(), start=1):
        where = f"record {pmid!r} (row {n})"
        if not isinstance(record, dict):
            raise _error(ori_path, where, None, f"expected a JSON object, got {type(record).__name__}")
        question = _required(record, "QUESTION", ori_path, where)
        label = record.get("final_decision")
        if label not in _PUBMEDQA_LABELS:
            raise _error(ori_path, where, "final_decision", f"must be one of {_PUBMEDQA_LABELS}, got {label!r}")
        corpus[pmid] = _abstract(record, ori_path, where)
        in_test = pmid in truth
        if in_test and truth[pmid] != label:
            problem = f"label {truth[pmid]!r} differs from ori_pqal.json's final_decision {label!r}"
            raise _error(truth_path, f"record {pmid!r}", pmid, problem)
        if in_test != (split == "test"):
            continue
        meta: dict[str, Any] = {"source": "pubmedqa"}
        for key, name in (("LONG_ANSWER", "long_answer"), ("YEAR", "year"), ("MESHES", "meshes")):
            if record.get(key) is not None:
                meta[name] = record[key]
        items.append(QAItem(pmid, question, label, (pmid,), corpus[pmid], meta))
    unknown = [pmid for pmid in truth if pmid not in records]
    if unknown:
        raise _error(truth_path, f"record {unknown[0]!r}", unknown[0], "this PMID is not in ori_pqal.json")
    return QADataset(items=tuple(items), corpus=corpus, name="pubmedqa", split=split)


def _abstract(record: Mapping[str, Any], path: Path, where: str) -> str:
    contexts, labels = record.get("CONTEXTS"), record.get("LABELS", [])
    if not isinstance(contexts, list) or not contexts or not all(isinstance(c, str) for c in contexts):
        raise _error(path, where, "CONTEXTS", "must be a non-empty list of strings")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise _error(path, where, "LABELS", "must be a list of strings")
    if labels and len(labels) != len(contexts):
        raise _error(path, where, "LABELS", f"{len(labels)} labels for {len(contexts)} CONTEXTS")
    if not labels:
        return "\n".join(contexts)
    return "\n".join(f"{label}: {text}" for label, text in zip(labels, contexts, strict=True))


def load_beir(folder: str | Path, split: str = "test") -> BeirDataset:
    """A BEIR folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``)
    and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, tab-separated, after a header line).

    ``queries`` keeps only the split's queries (those with qrels), as BEIR's own loader does. Every qrel must
    name a known query and document: a judgement on a document missing from the corpus could never be
    retrieved and would lower every system's score alike."""
    folder = Path(folder)
    if not isinstance(split, str) or not _SPLIT_NAME.fullmatch(split):
        msg = f"split must be a plain file name such as 'test', got {split!r}"
        raise InvalidInputError(msg)
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        have = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        msg = f"{qrels_path}: no such file (splits in {folder / 'qrels'}: {have or 'none'})"
        raise DatasetError(msg)
    corpus_path, queries_path = folder / "corpus.jsonl", folder / "queries.jsonl"
    corpus: dict[str, dict[str, str]] = {}
    for n, record in _jsonl(corpus_path):
        where = f"line {n}"
        doc_id = _beir_id(record, corpus_path, where, corpus)
        title = _optional(record, "title", corpus_path, where) or ""
        corpus[doc_id] = {"title": title, "text": _required(record, "text", corpus_path, where, blank=True)}
    all_queries: dict[str, str] = {}
    for n, record in _jsonl(queries_path):
        where = f"line {n}"
        query_id = _beir_id(record, queries_path, where, all_queries)
        all_queries[query_id] = _required(record, "text", queries_path, where)
    qrels = _beir_qrels(qrels_path, all_queries, corpus)
    queries = {qid: all_queries[qid] for qid in qrels}
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


def _beir_id(record: Mapping[str, Any], path: Path, where: str, seen: Mapping[str, Any]) -> str:
    value = record.get("_id")
    if not isinstance(value, str) or not value.strip():
        raise _error(path, where, "_id", f"must be a non-empty string, got {value!r:.60}")
    if value in seen:
        raise _error(path, where, "_id", f"duplicate id {value!r}")
    return value


def _beir_qrels(path: Path, queries: Mapping[str, str], corpus: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    columns = ("query-id", "corpus-id", "score")
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 3:
            raise _error(path, f"line {n}", None, f"expected 3 tab-separated columns {columns}, got {len(fields)}")
        query_id, doc_id, score = (f.strip() for f in fields)
        if n == 1 and not re.fullmatch(r"-?[0-9]+", score):
            continue  # the header line
        where = f"line {n}"
        if not re.fullmatch(r"-?[0-9]+", score):
            raise _error(path, where, "score", f"must be an integer, got {score!r}")
        if query_id not in queries:
            raise _error(path, where, "query-id", f"{query_id!r} is not in queries.jsonl")
        if doc_id not in corpus:
            raise _error(path, where, "corpus-id", f"{doc_id!r} is not in corpus.jsonl")
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            raise _error(path, where, "corpus-id", f"{doc_id!r} is judged twice for query {query_id!r}")
        judged[doc_id] = int(score)
    if not qrels:
        raise _error(path, "line 1", None, "the file holds no judgement")
    return qrels
