"""Retrieval metrics, computed by ``ir_measures`` (the TREC-eval-checked implementations), never by hand.

Hand-written nDCG/MAP/MRR formulas drift from the published numbers in small ways (gain, log base, ties,
cut-offs); ``ir_measures`` computes them as ``trec_eval`` does, so a score here can be set beside a paper's.
What this module adds is the bookkeeping that ``ir_measures`` leaves implicit and that changes a mean:

- a query in the qrels that the run has no entry for (or an empty one) retrieved nothing, so it scores 0 on
  every metric and counts in the means (TREC tools would leave it out and flatter the system);
- a query in the run but not in the qrels, or whose qrels hold no relevant document (every grade <= 0), cannot
  be scored: it is recorded in :attr:`RetrievalScores.skipped` with the reason and logged, never dropped silently;
- a ranked list (best first) becomes descending scores by position, so ``ir_measures`` keeps that order. Ties
  in a score mapping are broken as ``trec_eval`` does (by document id, descending).

Importing this module is light: ``ir_measures`` is imported on the first call.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ragplug._extras import require
from ragplug.errors import EvaluationError, InvalidInputError

__all__ = [
    "DEFAULT_RETRIEVAL_METRICS",
    "RETRIEVAL_METRICS",
    "RetrievalScores",
    "check_retrieval_metrics",
    "retrieval_scores",
]

logger = logging.getLogger(__name__)

RETRIEVAL_METRICS: tuple[str, ...] = (
    "hit@k",  # ir_measures Success@k: 1 when a relevant document is in the top k
    "recall@k",  # R@k: share of the relevant documents in the top k
    "precision@k",  # P@k: share of the top k that is relevant
    "mrr",  # RR: 1 / rank of the first relevant document
    "mrr@k",  # RR@k: the same, 0 when it is below rank k
    "map",  # AP: average precision
    "map@k",  # AP@k
    "ndcg@k",  # nDCG@k, with the grades as gains (graded relevance)
    "all_gold@k",  # 1 when every relevant document is in the top k: R@k == 1.0
)
"""The accepted metric names; ``k`` stands for any positive integer (``"ndcg@10"``, ``"hit@1"``)."""

DEFAULT_RETRIEVAL_METRICS: tuple[str, ...] = ("hit@1", "hit@5", "recall@5", "mrr", "ndcg@10", "all_gold@5")

# name -> (ir_measures measure name, whether @k is required)
_MEASURES: dict[str, tuple[str, bool]] = {
    "hit": ("Success", True),
    "recall": ("R", True),
    "precision": ("P", True),
    "mrr": ("RR", False),
    "map": ("AP", False),
    "ndcg": ("nDCG", True),
    "all_gold": ("R", True),
}
_METRIC_NAME = re.compile(r"(?P<name>[a-z_]+)(?:@(?P<k>[1-9][0-9]*))?")

Run = Mapping[str, Sequence[str]] | Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]] | Mapping[str, Collection[str]]


@dataclass(frozen=True)
class RetrievalScores:
    """The scores of one run: ``per_query[metric][query_id]``, ``means[metric]`` over the evaluated queries
    (those with at least one relevant document, including the ones the run missed), and ``skipped`` (query id
    -> why it could not be scored)."""

    per_query: dict[str, dict[str, float]]
    means: dict[str, float]
    skipped: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (plain dicts of str and float)."""
        return {
            "means": dict(self.means),
            "per_query": {metric: dict(values) for metric, values in self.per_query.items()},
            "skipped": dict(self.skipped),
        }


def check_retrieval_metrics(metrics: Iterable[str]) -> tuple[str, ...]:
    """The metric names, checked against :data:`RETRIEVAL_METRICS` (duplicates dropped, order kept).

    Raises :class:`InvalidInputError` listing the accepted names when one is unknown or none is given."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    names: list[str] = []
    for name in metrics:
        _parse_metric(name)
        if name not in names:
            names.append(name)
    if not names:
        msg = f"no metric given; accepted: {', '.join(RETRIEVAL_METRICS)}"
        raise InvalidInputError(msg)
    return tuple(names)


def _parse_metric(name: object) -> tuple[str, str, int | None]:
    """(our name, ir_measures measure name, k) for a metric name such as ``"ndcg@10"``."""
    match = _METRIC_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None or match["name"] not in _MEASURES or (_MEASURES[match["name"]][1] and match["k"] is None):
        msg = f"unknown retrieval metric {name!r}; accepted: {', '.join(RETRIEVAL_METRICS)} (k a positive integer)"
        raise InvalidInputError(msg)
    k = int(match["k"]) if match["k"] is not None else None
    return match["name"], _MEASURES[match["name"]][0], k


def retrieval_scores(run: Run, qrels: Qrels, metrics: Iterable[str] = DEFAULT_RETRIEVAL_METRICS) -> RetrievalScores:
    """Score ``run`` against ``qrels`` with ``ir_measures``.

    ``run`` maps a query id to its ranked document ids (best first) or to ``{doc id: score}``. ``qrels`` maps a
    query id to ``{doc id: grade}`` (an int; grades <= 0 mean not relevant, higher grades are the nDCG gains)
    or to a collection of relevant doc ids (grade 1). ``all_gold@k`` is derived per query from ``ir_measures``'
    ``R@k``: 1.0 when ``R@k == 1.0`` (every relevant document is in the top k), else 0.0.

    Raises :class:`InvalidInputError` for bad input (empty qrels, an unknown metric, a ranked list that repeats
    a document) and :class:`EvaluationError` when no query can be scored. The means never hold a NaN.
    """
    names = check_retrieval_metrics(metrics)
    graded = _check_qrels(qrels)
    scored = _check_run(run)
    skipped: dict[str, str] = {}
    for qid in scored:
        if qid not in graded:
            skipped[qid] = "not in the qrels"
    judged: dict[str, dict[str, int]] = {}
    for qid, grades in graded.items():
        if any(g > 0 for g in grades.values()):
            judged[qid] = grades
        else:
            skipped[qid] = "no relevant document in the qrels (every grade <= 0)"
    if skipped:
        logger.warning(
            "%d of %d queries cannot be scored and are left out of the means (see RetrievalScores.skipped)",
            len(skipped),
            len(set(graded) | set(scored)),
        )
    if not judged:
        msg = (
            "no query can be scored: none of the qrels' queries has a relevant document "
            f"({len(skipped)} skipped, e.g. {next(iter(skipped.items()), None)})"
        )
        raise EvaluationError(msg)

    missed = [qid for qid in judged if not scored.get(qid)]
    found = {qid: docs for qid, docs in scored.items() if qid in judged and docs}
    per_query = _ir_measures_scores(names, judged, found)
    for name in names:  # nothing retrieved: every metric here is 0 by definition
        per_query[name].update(dict.fromkeys(missed, 0.0))
    means: dict[str, float] = {}
    for name in names:
        values = per_query[name]
        absent = [qid for qid in judged if qid not in values]
        if absent:
            msg = f"ir_measures returned no {name} for queries {absent[:5]}"
            raise EvaluationError(msg)
        bad = [qid for qid, v in values.items() if not math.isfinite(v)]
        if bad:
            msg = f"ir_measures returned a non-finite {name} for queries {bad[:5]}"
            raise EvaluationError(msg)
        per_query[name] = {qid: values[qid] for qid in judged}  # qrels order
        means[name] = math.fsum(per_query[name].values()) / len(judged)
    return RetrievalScores(per_query=per_query, means=means, skipped=skipped)


def _ir_measures_scores(
    names: Sequence[str], qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    """metric name -> query id -> value, from one ``ir_measures.iter_calc`` pass over every metric."""
    per_query: dict[str, dict[str, float]] = {name: {} for name in names}
    if not run:
        return per_query
    ir_measures = require("ir_measures", "eval")
    wanted: dict[Any, list[tuple[str, str]]] = {}  # ir_measures measure -> (our name, kind) computed from it
    for name in names:
        kind, measure_name, k = _parse_metric(name)
        measure = ir_measures.parse_measure(measure_name if k is None else f"{measure_name}@{k}")
        wanted.setdefault(measure, []).append((name, kind))
    for result in ir_measures.iter_calc(list(wanted), qrels, run):
        if result.query_id not in qrels:
            continue
        value = float(result.value)
        for name, kind in wanted[result.measure]:
            # R@k is n / n, exactly 1.0, when all n relevant documents are in the top k.
            per_query[name][result.query_id] = float(value == 1.0) if kind == "all_gold" else value
    return per_query


def _check_qrels(qrels: Qrels) -> dict[str, dict[str, int]]:
    """qrels as ``{query: {doc: grade}}`` with grades <= 0 set to 0 (not relevant, and no negative gain)."""
    if not isinstance(qrels, Mapping):
        msg = f"qrels must be a mapping query id -> {{doc id: grade}} or doc ids, got {type(qrels).__name__}"
        raise InvalidInputError(msg)
    if not qrels:
        msg = "qrels are empty: there is nothing to score the run against"
        raise InvalidInputError(msg)
    out: dict[str, dict[str, int]] = {}
    for qid, judged in qrels.items():
        _check_id(qid, "qrels query id")
        if isinstance(judged, Mapping):
            grades: dict[str, int] = {}
            for doc, grade in judged.items():
                _check_id(doc, f"qrels[{qid!r}] doc id")
                if isinstance(grade, bool) or not isinstance(grade, int):
                    msg = f"qrels[{qid!r}][{doc!r}] must be an int grade, got {grade!r}"
                    raise InvalidInputError(msg)
                grades[doc] = max(grade, 0)
        elif isinstance(judged, Collection) and not isinstance(judged, (str, bytes)):
            for doc in judged:
                _check_id(doc, f"qrels[{qid!r}] doc id")
            grades = dict.fromkeys(judged, 1)
        else:
            msg = f"qrels[{qid!r}] must be a mapping doc id -> grade or a collection of doc ids, got {judged!r}"
            raise InvalidInputError(msg)
        out[qid] = grades
    return out


def _check_run(run: Run) -> dict[str, dict[str, float]]:
    """The run as ``{query: {doc: score}}``; a ranked list gets scores n, n-1, ..., 1 by position."""
    if not isinstance(run, Mapping):
        msg = f"run must be a mapping query id -> ranked doc ids or {{doc id: score}}, got {type(run).__name__}"
        raise InvalidInputError(msg)
    out: dict[str, dict[str, float]] = {}
    for qid, ranked in run.items():
        _check_id(qid, "run query id")
        if isinstance(ranked, Mapping):
            scores: dict[str, float] = {}
            for doc, score in ranked.items():
                _check_id(doc, f"run[{qid!r}] doc id")
                if isinstance(score, bool) or not isinstance(score, (int, float)) or math.isnan(score):
                    msg = f"run[{qid!r}][{doc!r}] must be a number (not NaN), got {score!r}"
                    raise InvalidInputError(msg)
                scores[doc] = float(score)
        elif isinstance(ranked, Sequence) and not isinstance(ranked, (str, bytes)):
            scores = {}
            for position, doc in enumerate(ranked):
                _check_id(doc, f"run[{qid!r}] doc id")
                if doc in scores:
                    msg = f"run[{qid!r}] ranks document {doc!r} twice; a ranked list must not repeat a document"
                    raise InvalidInputError(msg)
                scores[doc] = float(len(ranked) - position)
        else:
            msg = f"run[{qid!r}] must be a ranked list of doc ids or a mapping doc id -> score, got {ranked!r}"
            raise InvalidInputError(msg)
        out[qid] = scores
    return out


def _check_id(value: object, what: str) -> None:
    if not isinstance(value, str) or not value:
        msg = f"{what} must be a non-empty string, got {value!r}"
        raise InvalidInputError(msg)
