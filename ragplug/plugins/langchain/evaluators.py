"""ragplug's LLM judges and answer metrics as LangSmith-style evaluator functions.

Each factory returns ``fn(inputs, outputs, reference_outputs=None) -> {"key", "score", "comment"}``: the
signature LangSmith's ``evaluate(target, data=..., evaluators=[fn])`` recognises by its argument names (it
passes the example's inputs, the run's outputs and the example's reference outputs), and a plain function any
other loop can call. Scores are floats in [0, 1].

What each reads, with the default key names (each can be renamed with ``question_key=``, ``answer_key=``,
``contexts_key=``, ``answer_b_key=``, ``reference_key=``):

- ``faithfulness_evaluator``: ``outputs["answer"]``, ``outputs["contexts"]``; ``inputs["question"]`` if present;
- ``correctness_evaluator``: ``inputs["question"]``, ``outputs["answer"]``, ``reference_outputs["answer"]``;
- ``context_relevance_evaluator``: ``inputs["question"]``, ``outputs["contexts"]``;
- ``pairwise_evaluator``: ``inputs["question"]``, ``outputs["answer"]`` (A), ``outputs["answer_b"]`` (B), and
  ``outputs["contexts"]`` and ``reference_outputs["answer"]`` if present;
- ``exact_match_evaluator``, ``token_f1_evaluator``: ``outputs["answer"]``, ``reference_outputs["answer"]`` (a
  string or a list of acceptable ones).

``contexts`` is a list of strings or of LangChain ``Document`` objects (their ``page_content``). A key that is
missing raises :class:`~ragplug.errors.InvalidInputError` naming it and the keys there are. The judges take a
LangChain chat model (wrapped with :func:`~ragplug.plugins.langchain.langchain_chat_function`, which asks for
structured output; ragplug's ``ChatLoRA`` decodes it under a grammar) or a ragplug chat function. A judge
that gives no valid answer after its retries raises :class:`~ragplug.errors.JudgeError` (LangSmith records an
evaluator's exception as that example's error), never a made-up score. The item id in errors is
``inputs["id"]`` when there is one, else a hash of the inputs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel

from ragplug.chat import ChatFunction
from ragplug.errors import InvalidInputError
from ragplug.evaluators.answers import exact_match, token_f1
from ragplug.evaluators.judges import (
    AsyncChatFunction,
    ContextRelevance,
    Correctness,
    Faithfulness,
    Judge,
    PairwisePreference,
)
from ragplug.plugins.langchain.chat_function import langchain_chat_function

__all__ = [
    "context_relevance_evaluator",
    "correctness_evaluator",
    "exact_match_evaluator",
    "faithfulness_evaluator",
    "pairwise_evaluator",
    "token_f1_evaluator",
]

Model = BaseChatModel | ChatFunction | AsyncChatFunction | Callable[..., Any]
Evaluator = Callable[..., dict[str, Any]]
_MISSING = object()


def _chat(model: Any, method: str | None) -> Any:
    if isinstance(model, BaseChatModel):
        return langchain_chat_function(model, method=method)
    if callable(model):
        return model
    msg = f"model must be a LangChain chat model or a ragplug chat function, got {model!r}"[:300]
    raise InvalidInputError(msg)


def _get(data: Mapping[str, Any] | None, where: str, key: str, required: bool = True) -> Any:
    if data is None or not isinstance(data, Mapping):
        if not required:
            return None
        msg = f"{where} must be a dict with the key {key!r}, got {data!r}"[:300]
        raise InvalidInputError(msg)
    value = data.get(key, _MISSING)
    if value is _MISSING:
        if not required:
            return None
        msg = f"{where} has no {key!r} key (it has {sorted(map(str, data))}); rename the key the evaluator reads"
        raise InvalidInputError(msg[:400])
    return value


def _contexts(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
        msg = f"outputs[{key!r}] must be a list of strings or Documents, got {type(value).__name__}"
        raise InvalidInputError(msg)
    return [item.page_content if isinstance(item, Document) else item for item in value]


def _item_id(inputs: Mapping[str, Any] | None) -> str:
    if isinstance(inputs, Mapping) and inputs.get("id") is not None:
        return str(inputs["id"])
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, default=str)
    return "lc-" + hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def _judge_evaluator(
    judge: Judge, key: str, read: Callable[[Any, Any, Any], dict[str, Any]]
) -> Callable[..., dict[str, Any]]:
    def evaluator(
        inputs: dict[str, Any], outputs: dict[str, Any], reference_outputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        fields = read(inputs, outputs, reference_outputs)
        judgement = judge.judge(_item_id(inputs), **fields)
        return {"key": key, "score": judgement.score, "comment": judgement.reason}

    evaluator.__name__ = key  # LangSmith names the evaluator's trace after the function
    evaluator.judge = judge  # type: ignore[attr-defined]  # for callers who want the settings
    return evaluator


def faithfulness_evaluator(
    model: Model,
    *,
    key: str = "faithfulness",
    question_key: str = "question",
    answer_key: str = "answer",
    contexts_key: str = "contexts",
    method: str | None = "json_schema",
    **judge_kwargs: Any,
) -> Evaluator:
    """Is the answer supported by the contexts? ``judge_kwargs`` go to
    :class:`~ragplug.evaluators.judges.Faithfulness` (``retries``, ``context_chars``, ``reason_chars``);
    ``method`` to :func:`langchain_chat_function`."""

    def read(inputs: Any, outputs: Any, reference_outputs: Any) -> dict[str, Any]:
        return {
            "question": _get(inputs, "inputs", question_key, required=False),
            "answer": _get(outputs, "outputs", answer_key),
            "contexts": _contexts(_get(outputs, "outputs", contexts_key), contexts_key),
        }

    return _judge_evaluator(Faithfulness(_chat(model, method), **judge_kwargs), key, read)


def correctness_evaluator(
    model: Model,
    *,
    key: str = "correctness",
    question_key: str = "question",
    answer_key: str = "answer",
    reference_key: str = "answer",
    method: str | None = "json_schema",
    **judge_kwargs: Any,
) -> Evaluator:
    """Does the answer say what the reference answer says? (:class:`~ragplug.evaluators.judges.Correctness`)"""

    def read(inputs: Any, outputs: Any, reference_outputs: Any) -> dict[str, Any]:
        return {
            "question": _get(inputs, "inputs", question_key),
            "answer": _get(outputs, "outputs", answer_key),
            "reference": _get(reference_outputs, "reference_outputs", reference_key),
        }

    return _judge_evaluator(Correctness(_chat(model, method), **judge_kwargs), key, read)


def context_relevance_evaluator(
    model: Model,
    *,
    key: str = "context_relevance",
    question_key: str = "question",
    contexts_key: str = "contexts",
    method: str | None = "json_schema",
    **judge_kwargs: Any,
) -> Evaluator:
    """Are the retrieved contexts relevant to the question? (:class:`~ragplug.evaluators.judges.ContextRelevance`)"""

    def read(inputs: Any, outputs: Any, reference_outputs: Any) -> dict[str, Any]:
        return {
            "question": _get(inputs, "inputs", question_key),
            "contexts": _contexts(_get(outputs, "outputs", contexts_key), contexts_key),
        }

    return _judge_evaluator(ContextRelevance(_chat(model, method), **judge_kwargs), key, read)


def pairwise_evaluator(
    model: Model,
    *,
    key: str = "pairwise_preference",
    question_key: str = "question",
    answer_key: str = "answer",
    answer_b_key: str = "answer_b",
    contexts_key: str = "contexts",
    reference_key: str = "answer",
    method: str | None = "json_schema",
    **judge_kwargs: Any,
) -> Evaluator:
    """Is ``outputs["answer"]`` better than ``outputs["answer_b"]``? Asked in both orders
    (:class:`~ragplug.evaluators.judges.PairwisePreference`): score 1.0 (A better), 0.5 (tie, or the orders
    disagree) or 0.0 (B better); the comment starts with the verdict."""
    judge = PairwisePreference(_chat(model, method), **judge_kwargs)

    def evaluator(
        inputs: dict[str, Any], outputs: dict[str, Any], reference_outputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        judgement = judge.judge(
            _item_id(inputs),
            question=_get(inputs, "inputs", question_key),
            answer=_get(outputs, "outputs", answer_key),
            answer_b=_get(outputs, "outputs", answer_b_key),
            contexts=_contexts(_get(outputs, "outputs", contexts_key, required=False), contexts_key),
            reference=_get(reference_outputs, "reference_outputs", reference_key, required=False),
        )
        return {"key": key, "score": judgement.score, "comment": f"{judgement.verdict}: {judgement.reason}"}

    evaluator.__name__ = key
    evaluator.judge = judge  # type: ignore[attr-defined]
    return evaluator


def _answer_metric(metric: Callable[[str, Any], float], key: str, answer_key: str, reference_key: str) -> Evaluator:
    def evaluator(
        inputs: dict[str, Any], outputs: dict[str, Any], reference_outputs: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        answer = _get(outputs, "outputs", answer_key)
        reference = _get(reference_outputs, "reference_outputs", reference_key)
        return {"key": key, "score": float(metric(answer, reference)), "comment": None}

    evaluator.__name__ = key
    return evaluator


def exact_match_evaluator(
    *, key: str = "exact_match", answer_key: str = "answer", reference_key: str = "answer"
) -> Evaluator:
    """1.0 when the answer equals the reference (or one of a list of references) after SQuAD's normalisation
    (:func:`ragplug.evaluators.answers.exact_match`), else 0.0."""
    return _answer_metric(exact_match, key, answer_key, reference_key)


def token_f1_evaluator(
    *, key: str = "token_f1", answer_key: str = "answer", reference_key: str = "answer"
) -> Evaluator:
    """SQuAD's token F1 between the answer and the best-matching reference
    (:func:`ragplug.evaluators.answers.token_f1`)."""
    return _answer_metric(token_f1, key, answer_key, reference_key)
