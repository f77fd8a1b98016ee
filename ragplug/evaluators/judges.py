"""LLM judges: faithfulness, correctness, context relevance and pairwise preference, over any chat function.

Each judge asks a :class:`~ragplug.chat.ChatFunction` (ragplug's local ``LoRAModel`` through
:func:`~ragplug.adapters.lora.lora_chat_function`, a LangChain chat model through
``ragplug.plugins.langchain.langchain_chat_function``, a LlamaIndex LLM through
``ragplug.plugins.llamaindex.llamaindex_chat_function``, or an ``async def`` function of the same two
arguments) for a small JSON object under a strict schema: a short ``reason`` first (the model states why before
it commits to a number), then an integer ``score`` from 1 to 5, or for the pairwise judge a ``verdict`` of
``"A"``, ``"B"`` or ``"tie"``. Both fit a grammar-constrained local model easily.

Answers are checked, not trusted (as Graph RAG's LLM extractor checks its answers): a reply that is not a JSON
object, lacks or adds a key, or holds a value outside the enum is invalid, and the judge asks again, as it does
when the chat function raises, ``retries`` times; then it raises :class:`~ragplug.errors.JudgeError` naming the
item, the judge and the last problem. A :class:`Judgement`'s score is always a finite number in [0, 1]: a
1-5 score ``s`` becomes ``(s - 1) / 4``; a pairwise verdict becomes 1.0 (A better), 0.5 (tie) or 0.0 (B).

The pairwise judge asks twice, with the answers in both orders: A wins only when both orders prefer it, so a
model that favours whichever answer comes first gives a tie, not a win. Inputs are checked before any call:
a missing reference, no contexts, or an empty answer raise :class:`~ragplug.errors.InvalidInputError`. Long
contexts are cut to ``context_chars`` characters, and the prompt says so. Only the standard library is used.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Protocol

from ragplug._checks import integer_at_least as _positive
from ragplug.chat import ChatFunction, answer_object
from ragplug.errors import InvalidInputError, JudgeError
from ragplug.evaluators.runner import ItemOutcome, arun_batch, is_async_callable, run_batch, run_sync

__all__ = [
    "PROMPT_VERSION",
    "AsyncChatFunction",
    "ContextRelevance",
    "Correctness",
    "Faithfulness",
    "Judge",
    "JudgeItem",
    "Judgement",
    "PairwisePreference",
    "format_contexts",
]

logger = logging.getLogger(__name__)

#: The version of the judges' prompts and answer checks; raise it when a change can move a score.
PROMPT_VERSION = 1
SCORES = (1, 2, 3, 4, 5)
VERDICTS = ("A", "B", "tie")
_SPACE = re.compile(r"\s+")


class AsyncChatFunction(Protocol):
    """A :class:`~ragplug.chat.ChatFunction` written as ``async def``: the judges await it on the loop."""

    async def __call__(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any: ...


@dataclass(frozen=True)
class JudgeItem:
    """What one judgement looks at; each judge reads the fields it needs (see its class). ``answer_b`` is
    the second answer of a pairwise comparison."""

    item_id: str
    question: str | None = None
    answer: str | None = None
    contexts: Sequence[str] = ()
    reference: str | None = None
    answer_b: str | None = None


@dataclass(frozen=True)
class Judgement:
    """One judge's verdict on one item.

    ``score`` is in [0, 1], never NaN; ``reason`` is the model's, whitespace-collapsed and cut to the
    judge's ``reason_chars``; ``raw`` holds the valid answer(s) as the model gave them (the pairwise judge
    keeps both orders, under ``"original_order"`` and ``"swapped_order"``); ``attempts`` counts chat calls,
    retries included. ``verdict`` ("A", "B", "tie") and ``verdicts`` (each order's verdict, in the original
    labels) are set by the pairwise judge only."""

    item_id: str
    judge: str
    score: float
    reason: str
    raw: Mapping[str, Any]
    attempts: int
    verdict: str | None = None
    verdicts: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """As plain JSON types."""
        out = asdict(self)
        out["raw"], out["verdicts"] = json.loads(json.dumps(dict(self.raw))), list(self.verdicts)
        return out


class _InvalidAnswer(Exception):
    """An answer that does not have the schema's shape (internal: the judge asks again)."""


@dataclass(frozen=True)
class _Answer:
    value: int | str
    reason: str
    raw: dict[str, Any]


def _text(item_id: str, judge: str, value: Any, what: str, required: bool) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        msg = f"item {item_id!r}: the {judge} judge needs {what} (a non-empty string), got {value!r}"[:400]
        raise InvalidInputError(msg)
    return value.strip()


def _contexts(item_id: str, judge: str, value: Any, required: bool) -> list[str]:
    if value is None:
        value = ()
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        msg = f"item {item_id!r}: contexts must be a list of strings, got {type(value).__name__}"
        raise InvalidInputError(msg)
    for i, text in enumerate(value):
        if not isinstance(text, str):
            msg = f"item {item_id!r}: context {i} must be a string, got {type(text).__name__}: {text!r}"[:400]
            raise InvalidInputError(msg)
    kept = [text.strip() for text in value if text.strip()]
    if required and not kept:
        msg = f"item {item_id!r}: the {judge} judge needs at least one non-empty context, got {list(value)!r}"
        raise InvalidInputError(msg[:400])
    return kept


def _as_tuple(contexts: Any) -> Any:
    # a list becomes a tuple (JudgeItem is frozen); anything else is left for _contexts to reject by name
    if contexts is None:
        return ()
    return tuple(contexts) if isinstance(contexts, list | tuple) else contexts


def format_contexts(contexts: Sequence[str], budget: int) -> str:
    """The contexts numbered ``[1] ...``, cut to ``budget`` characters in all (a context that does not fit is
    cut short, the ones after it left out), followed by a note saying how much was cut."""
    total = sum(len(text) for text in contexts)
    parts, used = [], 0
    for i, text in enumerate(contexts, 1):
        room = budget - used
        if room <= 0:
            break
        parts.append(f"[{i}] {text if len(text) <= room else text[:room].rstrip() + ' [...]'}")
        used += min(len(text), room)
    out = "\n\n".join(parts)
    if used < total:
        shown = len(parts)
        out += (
            f"\n\n(Note: the passages were cut to fit this prompt: {used:,} of {total:,} characters shown, "
            f"{shown} of {len(contexts)} passages.)"
        )
    return out


class Judge:
    """The shared machinery: schema, answer checks, retries, sync and async calls, batches.

    Args:
        chat: a :class:`~ragplug.chat.ChatFunction` (called in a thread by the async methods) or an ``async
            def`` one (awaited). It may be called from several threads or tasks at once.
        retries: how many more times an item is asked after an invalid answer or an exception.
        context_chars: the most characters of contexts put in a prompt (the rest is cut, with a note).
        reason_chars: the schema's ``maxLength`` of the reason (longer reasons from a model without a grammar
            are cut, not rejected).
    """

    name: ClassVar[str]
    key: ClassVar[str] = "score"  # the answer's judged field
    system_prompt: ClassVar[str]

    def __init__(
        self,
        chat: ChatFunction | AsyncChatFunction | Callable[..., Any],
        *,
        retries: int = 2,
        context_chars: int = 6000,
        reason_chars: int = 300,
    ) -> None:
        if not callable(chat):
            msg = f"chat must be a chat function (messages, schema) -> JSON object, got {chat!r}"
            raise InvalidInputError(msg)
        self.chat = chat
        self.retries = _positive(retries, "retries", 0)
        self.context_chars = _positive(context_chars, "context_chars", 1)
        self.reason_chars = _positive(reason_chars, "reason_chars", 1)
        self._async = is_async_callable(chat)
        self.schema = self._schema()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(retries={self.retries}, context_chars={self.context_chars}, "
            f"reason_chars={self.reason_chars})"
        )

    # -- what a subclass fills -----------------------------------------------------------------------

    def _value_schema(self) -> dict[str, Any]:
        return {"type": "integer", "enum": list(SCORES)}

    def _prompts(self, item: JudgeItem) -> list[str]:
        """The user message(s) to ask, after checking the item's inputs (one; the pairwise judge: two)."""
        raise NotImplementedError

    def _value(self, value: Any) -> int | str:
        """The judged value of an answer, checked against the enum; :class:`_InvalidAnswer` if not."""
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # JSON's 4.0 is the integer 4
        if isinstance(value, bool) or not isinstance(value, int) or value not in SCORES:
            msg = f"'score' must be an integer among {list(SCORES)}, got {value!r}"[:300]
            raise _InvalidAnswer(msg)
        return value

    def _combine(self, item: JudgeItem, answers: list[tuple[_Answer, int]]) -> Judgement:
        (answer, attempts), score = answers[0], (int(answers[0][0].value) - 1) / (len(SCORES) - 1)
        return Judgement(item.item_id, self.name, score, answer.reason, answer.raw, attempts)

    # -- shared -------------------------------------------------------------------------------------

    def _schema(self) -> dict[str, Any]:
        return {
            "title": f"{self.name}_judgement",
            "type": "object",
            "properties": {
                "reason": {"type": "string", "maxLength": self.reason_chars},
                self.key: self._value_schema(),
            },
            "required": ["reason", self.key],
            "additionalProperties": False,
        }

    def messages(self, item: JudgeItem) -> list[list[dict[str, str]]]:
        """The chat(s) the judge sends for ``item`` (checked first: :class:`InvalidInputError` when an input
        it needs is missing or empty)."""
        if not isinstance(item, JudgeItem):
            msg = f"expected a JudgeItem, got {type(item).__name__}: {item!r}"[:300]
            raise InvalidInputError(msg)
        if not isinstance(item.item_id, str) or not item.item_id.strip():
            msg = f"item_id must be a non-empty string, got {item.item_id!r}"
            raise InvalidInputError(msg)
        system = {"role": "system", "content": self.system_prompt}
        return [[system, {"role": "user", "content": prompt}] for prompt in self._prompts(item)]

    def _contexts_block(self, item: JudgeItem, required: bool) -> str | None:
        kept = _contexts(item.item_id, self.name, item.contexts, required)
        return format_contexts(kept, self.context_chars) if kept else None

    def _parse(self, answer: Any) -> _Answer:
        try:
            answer = answer_object(answer)
        except ValueError as err:
            raise _InvalidAnswer(str(err)) from err
        expected = {"reason", self.key}
        if set(answer) != expected:
            missing, extra = sorted(expected - set(answer)), sorted(set(answer) - expected, key=str)
            msg = f"the answer's keys must be {sorted(expected)}; missing {missing}, unexpected {extra}"[:300]
            raise _InvalidAnswer(msg)
        reason = answer["reason"]
        if not isinstance(reason, str):
            msg = f"'reason' must be a string, got {reason!r}"[:300]
            raise _InvalidAnswer(msg)
        value = self._value(answer[self.key])
        reason = _SPACE.sub(" ", reason).strip()[: self.reason_chars]
        return _Answer(value, reason, dict(answer))

    def _failed(self, item_id: str, problem: str) -> JudgeError:
        msg = (
            f"the {self.name} judge gave no valid judgement for item {item_id!r} after "
            f"{self.retries + 1} attempts; last problem: {problem}"
        )
        return JudgeError(msg[:1000], item_id=item_id)

    def _ask(self, item_id: str, messages: list[dict[str, str]]) -> tuple[_Answer, int]:
        problem, error = "", None
        for attempt in range(1, self.retries + 2):
            try:
                answer = self.chat(messages, self.schema)
                if inspect.isawaitable(answer):  # an async chat function called from the sync API
                    answer = run_sync(answer)
                return self._parse(answer), attempt
            except _InvalidAnswer as err:
                problem, error = f"invalid answer: {err}", None
            except Exception as err:  # any failure of the caller's model is retried, then reported
                problem, error = f"{type(err).__name__}: {err}", err
            logger.debug("%s judge, item %s, attempt %d: %s", self.name, item_id, attempt, problem)
        raise self._failed(item_id, problem) from error

    async def _aask(self, item_id: str, messages: list[dict[str, str]]) -> tuple[_Answer, int]:
        problem, error = "", None
        for attempt in range(1, self.retries + 2):
            try:
                if self._async:
                    answer = await self.chat(messages, self.schema)
                else:
                    answer = await asyncio.to_thread(self.chat, messages, self.schema)
                    if inspect.isawaitable(answer):
                        answer = await answer
                return self._parse(answer), attempt
            except _InvalidAnswer as err:
                problem, error = f"invalid answer: {err}", None
            except Exception as err:  # any failure of the caller's model is retried, then reported
                problem, error = f"{type(err).__name__}: {err}", err
            logger.debug("%s judge, item %s, attempt %d: %s", self.name, item_id, attempt, problem)
        raise self._failed(item_id, problem) from error

    def _finish(self, item: JudgeItem, answers: list[tuple[_Answer, int]]) -> Judgement:
        judgement = self._combine(item, answers)
        if not (isinstance(judgement.score, float) and 0.0 <= judgement.score <= 1.0):  # also rejects NaN
            msg = f"the {self.name} judge computed score {judgement.score!r} for item {item.item_id!r}"
            raise JudgeError(msg, item_id=item.item_id)
        return judgement

    def judge_item(self, item: JudgeItem) -> Judgement:
        """The judgement of ``item`` (see :meth:`judge`)."""
        chats = self.messages(item)
        return self._finish(item, [self._ask(item.item_id, messages) for messages in chats])

    async def ajudge_item(self, item: JudgeItem) -> Judgement:
        """The judgement of ``item``, asynchronously; the pairwise judge asks both orders at once."""
        chats = self.messages(item)
        # every order runs to its end, so a failed one leaves no task behind; then the first error is raised
        done = await asyncio.gather(*(self._aask(item.item_id, m) for m in chats), return_exceptions=True)
        for result in done:
            if isinstance(result, BaseException):
                raise result
        return self._finish(item, [r for r in done if not isinstance(r, BaseException)])

    def judge(
        self,
        item_id: str,
        *,
        question: str | None = None,
        answer: str | None = None,
        contexts: Sequence[str] | None = None,
        reference: str | None = None,
        answer_b: str | None = None,
    ) -> Judgement:
        """Judge one item. Raises :class:`InvalidInputError` (before any call) when an input the judge needs
        is missing or empty, :class:`JudgeError` when every attempt failed."""
        item = JudgeItem(item_id, question, answer, _as_tuple(contexts), reference, answer_b)
        return self.judge_item(item)

    async def ajudge(
        self,
        item_id: str,
        *,
        question: str | None = None,
        answer: str | None = None,
        contexts: Sequence[str] | None = None,
        reference: str | None = None,
        answer_b: str | None = None,
    ) -> Judgement:
        """:meth:`judge`, asynchronously: a sync chat function runs in a thread (``asyncio.to_thread``), an
        async one is awaited."""
        item = JudgeItem(item_id, question, answer, _as_tuple(contexts), reference, answer_b)
        return await self.ajudge_item(item)

    def judge_batch(
        self, items: Sequence[JudgeItem], *, concurrency: int = 8, progress: bool | None = True
    ) -> list[ItemOutcome[Judgement]]:
        """Every item judged, ``concurrency`` at a time, by :func:`~ragplug.evaluators.runner.run_batch`: one
        outcome per item, in order; an item that fails (bad input, :class:`JudgeError`) keeps its error."""
        return run_batch(items, self.ajudge_item, concurrency=concurrency, progress=progress, desc=f"{self.name} judge")

    async def ajudge_batch(
        self, items: Sequence[JudgeItem], *, concurrency: int = 8, progress: bool | None = True
    ) -> list[ItemOutcome[Judgement]]:
        """:meth:`judge_batch` on the running event loop."""
        return await arun_batch(
            items, self.ajudge_item, concurrency=concurrency, progress=progress, desc=f"{self.name} judge"
        )


_SCALE = """Think briefly, then give a reason of one or two sentences and a score from 1 to 5."""


class Faithfulness(Judge):
    """Is the answer supported by the contexts? Reads ``answer`` and ``contexts`` (required) and ``question``
    (optional). 5: every claim is backed by the passages; 1: none is, or the answer contradicts them."""

    name = "faithfulness"
    system_prompt = f"""\
You check whether an answer sticks to the passages it was written from. Compare each claim the answer makes \
with the passages. A claim counts as supported only when a passage states it or it plainly follows from what \
the passages state; what you know from elsewhere does not count, even if it is true. An answer that says the \
passages do not tell makes no claim.
{_SCALE}
5: every claim is supported. 4: all but a minor detail. 3: some claims are supported and some are not. \
2: most claims are not supported. 1: nothing is supported, or the answer contradicts the passages."""

    def _prompts(self, item: JudgeItem) -> list[str]:
        answer = _text(item.item_id, self.name, item.answer, "an answer", True)
        question = _text(item.item_id, self.name, item.question, "a question", False)
        passages = self._contexts_block(item, required=True)
        asked = f"Question:\n{question}\n\n" if question else ""
        return [f"Passages:\n{passages}\n\n{asked}Answer to check:\n{answer}"]


class Correctness(Judge):
    """Does the answer say what the reference answer says? Reads ``question``, ``answer`` and ``reference``
    (all required). 5: the same facts (wording aside); 1: wrong or contradicting the reference."""

    name = "correctness"
    system_prompt = f"""\
You grade an answer to a question against a reference answer that is known to be right. Judge the facts, not \
the wording or the length: an answer that says the same thing in other words is fully correct. Extra detail \
is fine unless it is wrong.
{_SCALE}
5: it gives the reference's facts. 4: right, with a small omission or slip. 3: partly right. \
2: mostly wrong or missing the point. 1: wrong, contradicts the reference, or does not answer."""

    def _prompts(self, item: JudgeItem) -> list[str]:
        question = _text(item.item_id, self.name, item.question, "a question", True)
        answer = _text(item.item_id, self.name, item.answer, "an answer", True)
        reference = _text(item.item_id, self.name, item.reference, "a reference answer", True)
        return [f"Question:\n{question}\n\nReference answer:\n{reference}\n\nAnswer to grade:\n{answer}"]


class ContextRelevance(Judge):
    """Are the retrieved contexts relevant to the question? Reads ``question`` and ``contexts`` (required).
    5: they hold what an answer needs; 1: they have nothing to do with the question."""

    name = "context_relevance"
    system_prompt = f"""\
You rate passages that a search returned for a question: do they hold what is needed to answer it? Judge the \
passages together; one passage with the answer is enough for a high score, and unrelated passages beside it \
lower it only a little.
{_SCALE}
5: they hold everything needed. 4: nearly everything. 3: part of what is needed. 2: only loosely related. \
1: nothing to do with the question."""

    def _prompts(self, item: JudgeItem) -> list[str]:
        question = _text(item.item_id, self.name, item.question, "a question", True)
        passages = self._contexts_block(item, required=True)
        return [f"Question:\n{question}\n\nPassages:\n{passages}"]


class PairwisePreference(Judge):
    """Which of two answers is better for the question? Reads ``question``, ``answer`` (A) and ``answer_b``
    (B), all required, and ``contexts`` and ``reference`` when given. Asked in both orders: the verdict is
    A or B only when both orders agree, else a tie; score 1.0 / 0.5 / 0.0 for A / tie / B."""

    name = "pairwise_preference"
    key = "verdict"
    system_prompt = """\
You compare two answers to the same question and say which is better: more correct first, then more complete \
and more to the point. A longer answer is not better for being longer, and the order in which the answers are \
shown means nothing. When passages or a reference answer are given, judge the answers against them.
Give a reason of one or two sentences, then the verdict: "A" if answer A is better, "B" if answer B is better, \
"tie" if neither is clearly better."""

    _SCORES: ClassVar[dict[str, float]] = {"A": 1.0, "tie": 0.5, "B": 0.0}
    _SWAP: ClassVar[dict[str, str]] = {"A": "B", "B": "A", "tie": "tie"}

    def _value_schema(self) -> dict[str, Any]:
        return {"type": "string", "enum": list(VERDICTS)}

    def _value(self, value: Any) -> int | str:
        if not isinstance(value, str) or value not in VERDICTS:
            msg = f"'verdict' must be one of {list(VERDICTS)}, got {value!r}"[:300]
            raise _InvalidAnswer(msg)
        return value

    def _prompts(self, item: JudgeItem) -> list[str]:
        question = _text(item.item_id, self.name, item.question, "a question", True)
        first = _text(item.item_id, self.name, item.answer, "an answer (A)", True)
        second = _text(item.item_id, self.name, item.answer_b, "a second answer (answer_b)", True)
        reference = _text(item.item_id, self.name, item.reference, "a reference answer", False)
        passages = self._contexts_block(item, required=False)
        head = f"Question:\n{question}\n\n"
        head += f"Passages:\n{passages}\n\n" if passages else ""
        head += f"Reference answer:\n{reference}\n\n" if reference else ""
        return [f"{head}Answer A:\n{a}\n\nAnswer B:\n{b}" for a, b in ((first, second), (second, first))]

    def _combine(self, item: JudgeItem, answers: list[tuple[_Answer, int]]) -> Judgement:
        (original, tries_1), (swapped, tries_2) = answers
        first, second = str(original.value), self._SWAP[str(swapped.value)]  # the second in original labels
        verdict = first if first == second else "tie"
        if first == second:
            reason = original.reason
        else:
            reason = (
                f"a tie: the verdict changed when the answers swapped places. Original order: {first} "
                f"({original.reason}). Swapped order, verdict in the original labels: {second} (its reason "
                f"names the answers as they were shown: {swapped.reason})"
            )
        return Judgement(
            item.item_id,
            self.name,
            self._SCORES[verdict],
            reason,
            {"original_order": original.raw, "swapped_order": swapped.raw},
            tries_1 + tries_2,
            verdict=verdict,
            verdicts=(first, second),
        )
