"""ragplug's LLM judges and retrieval metrics as LlamaIndex evaluators.

The judges (:mod:`ragplug.evaluators.judges`) appear as ``BaseEvaluator`` subclasses, so they run wherever
LlamaIndex's own evaluators run (``evaluator.evaluate_response(query, response)``, ``BatchEvalRunner``):

- :class:`FaithfulnessEvaluator`: is ``response`` supported by ``contexts``?
- :class:`CorrectnessEvaluator`: does ``response`` say what ``reference=`` says, for ``query``?
- :class:`ContextRelevanceEvaluator`: are ``contexts`` relevant to ``query``?
- :class:`PairwiseEvaluator`: is ``response`` better than ``second_response=`` for ``query`` (both orders)?

Each takes a LlamaIndex LLM (wrapped with :func:`~ragplug.plugins.llamaindex.llamaindex_chat_function`; for
ragplug's ``LoRALLM`` that decodes under a grammar) or any ragplug chat function, sync or ``async def``.
``aevaluate`` is native: the judge's async path (a sync chat function runs in a thread); ``evaluate`` is
LlamaIndex's. A judge that gives no valid answer after its retries yields an ``EvaluationResult`` with
``invalid_result=True`` and the reason (LlamaIndex's way to report it; one bad item does not abort a batch
run), never a made-up score. Inputs a judge needs and did not get raise
:class:`~ragplug.errors.InvalidInputError`.

:class:`RagplugRetrievalMetric` is a ``BaseRetrievalMetric`` for LlamaIndex's ``RetrieverEvaluator``:
``hit@k``, ``recall@k``, ``precision@k``, ``mrr``, ``ndcg@k``, ... computed by
:func:`ragplug.evaluators.metrics.retrieval_scores` (``ir_measures``, checked against ``trec_eval``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

from llama_index.core.evaluation import BaseEvaluator, EvaluationResult
from llama_index.core.evaluation.retrieval.metrics_base import BaseRetrievalMetric, RetrievalMetricResult
from llama_index.core.llms.llm import LLM
from llama_index.core.prompts.mixin import PromptDictType
from pydantic import Field

from ragplug.chat import ChatFunction
from ragplug.errors import InvalidInputError, JudgeError
from ragplug.evaluators.judges import (
    AsyncChatFunction,
    ContextRelevance,
    Correctness,
    Faithfulness,
    Judge,
    Judgement,
    PairwisePreference,
)
from ragplug.evaluators.metrics import DEFAULT_RETRIEVAL_METRICS, check_retrieval_metrics, retrieval_scores
from ragplug.plugins.llamaindex.chat_function import llamaindex_chat_function

__all__ = [
    "ContextRelevanceEvaluator",
    "CorrectnessEvaluator",
    "FaithfulnessEvaluator",
    "PairwiseEvaluator",
    "RagplugRetrievalMetric",
    "retrieval_metrics",
]

logger = logging.getLogger(__name__)

Model = LLM | ChatFunction | AsyncChatFunction | Callable[..., Any]


def _chat(llm: Any) -> Any:
    if isinstance(llm, LLM):
        return llamaindex_chat_function(llm)
    if callable(llm):
        return llm
    msg = f"llm must be a LlamaIndex LLM or a ragplug chat function (messages, schema) -> dict, got {llm!r}"[:300]
    raise InvalidInputError(msg)


def _item_id(kwargs: dict[str, Any], *parts: Any) -> str:
    given = kwargs.pop("item_id", None)
    if given is not None:
        return str(given)
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return "li-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


class _JudgeEvaluator(BaseEvaluator):
    """One ragplug judge as a LlamaIndex evaluator. ``passing`` is ``score >= threshold``."""

    judge_class: ClassVar[type[Judge]]

    def __init__(
        self,
        llm: Model,
        *,
        threshold: float = 0.75,
        retries: int = 2,
        context_chars: int = 6000,
        reason_chars: int = 300,
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
            msg = f"threshold must be a number in [0, 1] (scores are normalised), got {threshold!r}"
            raise InvalidInputError(msg)
        self.threshold = float(threshold)
        self.judge = self.judge_class(
            _chat(llm), retries=retries, context_chars=context_chars, reason_chars=reason_chars
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(judge={self.judge!r}, threshold={self.threshold})"

    # The prompts are ragplug's plain strings (see ragplug.evaluators.judges), not LlamaIndex templates.
    def _get_prompts(self) -> PromptDictType:
        return {}

    def _update_prompts(self, prompts_dict: PromptDictType) -> None:
        if prompts_dict:
            msg = f"{type(self).__name__} has no LlamaIndex prompt templates to update (got {sorted(prompts_dict)})"
            raise InvalidInputError(msg)

    def _passing(self, judgement: Judgement) -> bool | None:
        return judgement.score >= self.threshold

    async def _run(
        self, item_id: str, query: str | None, response: str | None, contexts: Sequence[str] | None, **fields: Any
    ) -> EvaluationResult:
        try:
            judgement = await self.judge.ajudge(
                item_id, question=query, answer=response, contexts=list(contexts or ()), **fields
            )
        except JudgeError as err:
            logger.warning("%s: %s", type(self).__name__, err)
            return EvaluationResult(
                query=query, response=response, contexts=contexts, invalid_result=True, invalid_reason=str(err)
            )
        return EvaluationResult(
            query=query,
            response=response,
            contexts=contexts,
            passing=self._passing(judgement),
            score=judgement.score,
            feedback=judgement.reason,
        )


class FaithfulnessEvaluator(_JudgeEvaluator):
    """Is ``response`` supported by ``contexts`` (required; ``query`` is shown to the judge when given)?
    Score in [0, 1] from the judge's 1-5 scale; ``passing`` when ``score >= threshold`` (0.75: a 4 of 5)."""

    judge_class = Faithfulness

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        item_id = _item_id(kwargs, self.judge.name, query, response, contexts)
        return await self._run(item_id, query, response, contexts)


class CorrectnessEvaluator(_JudgeEvaluator):
    """Does ``response`` say what ``reference=`` (required, a keyword as for LlamaIndex's own
    ``CorrectnessEvaluator``) says, for ``query`` (required)? ``contexts`` are not used."""

    judge_class = Correctness

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        reference: str | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        item_id = _item_id(kwargs, self.judge.name, query, response, reference)
        result = await self._run(item_id, query, response, None, reference=reference)
        result.contexts = contexts
        return result


class ContextRelevanceEvaluator(_JudgeEvaluator):
    """Are ``contexts`` (required) relevant to ``query`` (required)? ``response`` is not used."""

    judge_class = ContextRelevance

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        item_id = _item_id(kwargs, self.judge.name, query, contexts)
        result = await self._run(item_id, query, None, contexts)
        result.response = response
        return result


class PairwiseEvaluator(_JudgeEvaluator):
    """Is ``response`` better than ``second_response=`` (required, as for LlamaIndex's own pairwise
    evaluator) for ``query``? Asked with the answers in both orders; ``score`` is 1.0 when both orders prefer
    ``response``, 0.0 when both prefer ``second_response``, else 0.5; ``passing`` is True, False or None (a
    tie). ``contexts`` and ``reference=`` are shown to the judge when given. ``threshold`` is not used."""

    judge_class = PairwisePreference

    def _passing(self, judgement: Judgement) -> bool | None:
        return {"A": True, "B": False}.get(judgement.verdict or "tie")

    async def aevaluate(
        self,
        query: str | None = None,
        response: str | None = None,
        contexts: Sequence[str] | None = None,
        second_response: str | None = None,
        reference: str | None = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        item_id = _item_id(kwargs, self.judge.name, query, response, second_response, contexts, reference)
        return await self._run(item_id, query, response, contexts, answer_b=second_response, reference=reference)


# -- retrieval metrics ---------------------------------------------------------------------------------------


class RagplugRetrievalMetric(BaseRetrievalMetric):
    """One retrieval metric for LlamaIndex's ``RetrieverEvaluator``, computed by
    :func:`ragplug.evaluators.metrics.retrieval_scores` (``ir_measures``): ``metric`` is one of ``hit@k``,
    ``recall@k``, ``precision@k``, ``mrr``, ``mrr@k``, ``map``, ``map@k``, ``ndcg@k``, ``all_gold@k``, and is
    also the name the evaluator files the score under (``metric_vals_dict["ndcg@10"]``).

    ``expected_ids`` are the relevant ids (binary relevance); ``retrieved_ids`` the ranked ids, best first.
    A retriever that returns an id twice (two chunks of one document) is counted at its first rank. No
    expected id raises :class:`~ragplug.errors.InvalidInputError` (nothing to score against); nothing
    retrieved scores 0."""

    metric: str = Field(description="the ragplug metric name, e.g. 'hit@5', 'mrr', 'ndcg@10'")

    def __init__(self, **data: Any) -> None:
        # checked before pydantic, which would wrap the InvalidInputError in its ValidationError
        check_retrieval_metrics([data.get("metric")])  # type: ignore[list-item]
        super().__init__(**data)

    @property
    def metric_name(self) -> str:  # type: ignore[override]  # a ClassVar in LlamaIndex; here one per metric
        return self.metric

    def compute(
        self,
        query: str | None = None,
        expected_ids: list[str] | None = None,
        retrieved_ids: list[str] | None = None,
        expected_texts: list[str] | None = None,
        retrieved_texts: list[str] | None = None,
        **kwargs: Any,
    ) -> RetrievalMetricResult:
        expected = [str(i) for i in expected_ids or ()]
        if not expected:
            msg = f"{self.metric}: no expected_ids for query {query!r}; a retrieval metric needs the relevant ids"
            raise InvalidInputError(msg[:400])
        ranked = list(dict.fromkeys(str(i) for i in retrieved_ids or ()))  # first rank of each id
        scores = retrieval_scores({"query": ranked}, {"query": expected}, [self.metric])
        return RetrievalMetricResult(
            score=scores.per_query[self.metric]["query"],
            metadata={"metric": self.metric, "retrieved": len(ranked), "expected": len(set(expected))},
        )


def retrieval_metrics(metrics: Iterable[str] = DEFAULT_RETRIEVAL_METRICS) -> list[BaseRetrievalMetric]:
    """One :class:`RagplugRetrievalMetric` per name (checked; duplicates dropped), for
    ``RetrieverEvaluator(metrics=retrieval_metrics(["hit@1", "mrr", "ndcg@10"]), retriever=...)``."""
    return [RagplugRetrievalMetric(metric=name) for name in check_retrieval_metrics(metrics)]
