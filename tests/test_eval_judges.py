"""LLM judges: answers replayed by a scripted chat function (valid, garbage, off-enum, exceptions), the pairwise
position swap, input checks, the async paths, and the tiny grammar-constrained local model."""

from __future__ import annotations

import asyncio
import json
import math
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import pytest

from ragplug.adapters.lora import lora_chat_function
from ragplug.errors import EvaluationError, InvalidInputError, JudgeError
from ragplug.evaluators.judges import (
    ContextRelevance,
    Correctness,
    Faithfulness,
    Judge,
    JudgeItem,
    Judgement,
    PairwisePreference,
    format_contexts,
)

MARLEY = "Jacob Marley, Scrooge's business partner, had been dead for seven years."
TIM = "Tiny Tim was the youngest Cratchit child; he walked with a crutch."
FIELDS: dict[str, Any] = {
    "question": "Who was Marley?",
    "answer": "Scrooge's business partner.",
    "contexts": [MARLEY, TIM],
    "reference": "Scrooge's partner, dead seven years.",
    "answer_b": "A ghost.",
}
GRADED = [Faithfulness, Correctness, ContextRelevance]


class Scripted:
    """A chat function that replays scripted answers in order (an exception is raised, anything else is
    returned as is) and records every call's messages and schema."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []
        self.threads: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        with self.lock:
            self.calls.append(([dict(m) for m in messages], dict(schema)))
            self.threads.add(threading.get_ident())
            answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def ok(score: int = 5, reason: str = "fine") -> dict[str, Any]:
    return {"reason": reason, "score": score}


def pick(verdict: str, reason: str = "better") -> dict[str, Any]:
    return {"reason": reason, "verdict": verdict}


@pytest.mark.parametrize("judge_cls", GRADED)
@pytest.mark.parametrize(("score", "expected"), [(1, 0.0), (2, 0.25), (3, 0.5), (4, 0.75), (5, 1.0), (4.0, 0.75)])
def test_graded_scores_are_normalised(judge_cls: type[Judge], score: int, expected: float) -> None:
    chat = Scripted(ok(score, "  because\n the passage says so "))
    judgement = judge_cls(chat).judge("q1", **FIELDS)
    assert judgement == Judgement(
        "q1", judge_cls.name, expected, "because the passage says so", ok(score, "  because\n the passage says so "), 1
    )
    jsonschema.validate(ok(int(score)), chat.calls[0][1])


@pytest.mark.parametrize("judge_cls", [*GRADED, PairwisePreference])
def test_schema_is_small_and_strict(judge_cls: type[Judge]) -> None:
    schema = judge_cls(Scripted(), reason_chars=120).schema
    key = judge_cls.key
    assert schema["required"] == ["reason", key] and list(schema["properties"]) == ["reason", key]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["reason"] == {"type": "string", "maxLength": 120}
    assert schema["properties"][key]["enum"] in ([1, 2, 3, 4, 5], ["A", "B", "tie"])
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("not json at all", "not JSON"),
        ([5, "fine"], "not a JSON object"),
        (None, "not a JSON object"),
        ({"score": 5}, "missing ['reason']"),
        ({"reason": "x", "score": 5, "confidence": 0.9}, "unexpected ['confidence']"),
        ({"reason": "x", "score": 7}, "'score' must be an integer among [1, 2, 3, 4, 5], got 7"),
        ({"reason": "x", "score": 0}, "got 0"),
        ({"reason": "x", "score": "5"}, "got '5'"),
        ({"reason": "x", "score": True}, "got True"),
        ({"reason": "x", "score": 4.5}, "got 4.5"),
        ({"reason": "x", "score": math.nan}, "got nan"),
        ({"reason": 3, "score": 5}, "'reason' must be a string"),
    ],
)
def test_an_invalid_answer_is_retried(bad: Any, problem: str) -> None:
    chat = Scripted(bad, ok(4))
    judgement = Faithfulness(chat).judge("q7", **FIELDS)
    assert (judgement.score, judgement.attempts) == (0.75, 2)
    assert chat.calls[0] == chat.calls[1]  # asked again, the same way
    # with no retry left, the same answer is the error, naming the item, the judge and the problem
    with pytest.raises(JudgeError) as caught:
        Faithfulness(Scripted(bad), retries=0).judge("q7", **FIELDS)
    assert caught.value.item_id == "q7"
    assert "faithfulness judge" in str(caught.value) and "'q7'" in str(caught.value)
    assert problem in str(caught.value)


def test_a_json_string_answer_is_parsed() -> None:
    judgement = Correctness(Scripted(json.dumps(ok(3)))).judge("q", **FIELDS)
    assert judgement.score == 0.5 and judgement.raw == ok(3)


def test_exceptions_are_retried_then_reported_with_the_item_id() -> None:
    chat = Scripted(TimeoutError("slow"), ok(2))
    assert ContextRelevance(chat).judge("q2", **FIELDS).attempts == 2
    chat = Scripted(TimeoutError("slow"), "garbage", RuntimeError("server down"))
    with pytest.raises(JudgeError, match=r"item 'q3' after 3 attempts; last problem: RuntimeError: server down") as e:
        ContextRelevance(chat).judge("q3", **FIELDS)
    assert isinstance(e.value, EvaluationError) and e.value.item_id == "q3"
    assert isinstance(e.value.__cause__, RuntimeError)
    assert len(chat.calls) == 3


def test_retries_setting() -> None:
    chat = Scripted("x", "x", "x", "x", ok(5))
    assert Faithfulness(chat, retries=4).judge("q", **FIELDS).attempts == 5
    with pytest.raises(JudgeError, match="after 1 attempts"):
        Faithfulness(Scripted("x"), retries=0).judge("q", **FIELDS)


def test_long_reasons_are_cut_not_rejected() -> None:
    judgement = Faithfulness(Scripted(ok(5, "word " * 100)), reason_chars=20).judge("q", **FIELDS)
    assert len(judgement.reason) <= 20 and judgement.score == 1.0


# -- pairwise ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "verdict", "score", "verdicts"),
    [
        ("A", "B", "A", 1.0, ("A", "A")),  # both orders prefer the first answer
        ("B", "A", "B", 0.0, ("B", "B")),  # both prefer answer_b
        ("tie", "tie", "tie", 0.5, ("tie", "tie")),
        ("A", "A", "tie", 0.5, ("A", "B")),  # the model always picks the first shown: position bias -> tie
        ("B", "B", "tie", 0.5, ("B", "A")),
        ("A", "tie", "tie", 0.5, ("A", "tie")),
        ("tie", "A", "tie", 0.5, ("tie", "B")),
    ],
)
def test_pairwise_position_swap(first: str, second: str, verdict: str, score: float, verdicts: tuple) -> None:
    chat = Scripted(pick(first, "one"), pick(second, "two"))
    judgement = PairwisePreference(chat).judge("p1", **FIELDS)
    assert (judgement.verdict, judgement.score, judgement.verdicts) == (verdict, score, verdicts)
    assert judgement.raw == {"original_order": pick(first, "one"), "swapped_order": pick(second, "two")}
    assert judgement.attempts == 2
    if verdicts[0] != verdicts[1]:
        assert "swapped places" in judgement.reason
    original, swapped = (call[0][1]["content"] for call in chat.calls)
    assert original.index("Answer A:\nScrooge's business partner.") < original.index("Answer B:\nA ghost.")
    assert swapped.index("Answer A:\nA ghost.") < swapped.index("Answer B:\nScrooge's business partner.")


def test_pairwise_retries_each_order_and_counts_attempts() -> None:
    chat = Scripted(pick("a"), pick("A"), {"verdict": "B"}, pick("B"))
    judgement = PairwisePreference(chat).judge("p2", **FIELDS)
    assert judgement.verdict == "A" and judgement.attempts == 4
    with pytest.raises(JudgeError, match=r"pairwise_preference judge .* item 'p3'.*'verdict' must be one of"):
        PairwisePreference(Scripted(pick("A"), pick("C")), retries=0).judge("p3", **FIELDS)


def test_pairwise_shows_contexts_and_reference_when_given() -> None:
    chat = Scripted(pick("A"), pick("B"))
    PairwisePreference(chat).judge("p", question="Q?", answer="x", answer_b="y", reference="ref", contexts=[TIM])
    prompt = chat.calls[0][0][1]["content"]
    assert "Reference answer:\nref" in prompt and TIM in prompt
    chat = Scripted(pick("A"), pick("B"))
    PairwisePreference(chat).judge("p", question="Q?", answer="x", answer_b="y")
    assert "Passages" not in chat.calls[0][0][1]["content"]


# -- inputs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("judge_cls", "change", "match"),
    [
        (Correctness, {"reference": None}, "correctness judge needs a reference answer"),
        (Correctness, {"reference": "  "}, "needs a reference answer"),
        (Correctness, {"question": None}, "needs a question"),
        (Faithfulness, {"contexts": []}, "faithfulness judge needs at least one non-empty context"),
        (Faithfulness, {"contexts": ["", "  "]}, "at least one non-empty context"),
        (Faithfulness, {"contexts": MARLEY}, "contexts must be a list of strings"),
        (Faithfulness, {"contexts": [MARLEY, 3]}, "context 1 must be a string"),
        (Faithfulness, {"answer": ""}, "needs an answer"),
        (ContextRelevance, {"contexts": None}, "at least one non-empty context"),
        (ContextRelevance, {"question": ""}, "needs a question"),
        (PairwisePreference, {"answer_b": None}, "needs a second answer"),
        (PairwisePreference, {"answer": " "}, "needs an answer"),
        (Correctness, {"answer": 42}, "needs an answer"),
    ],
)
def test_input_checks_name_the_item_and_make_no_call(judge_cls: type[Judge], change: dict, match: str) -> None:
    chat = Scripted()
    with pytest.raises(InvalidInputError, match=match) as caught:
        judge_cls(chat).judge("item-9", **{**FIELDS, **change})
    assert "item 'item-9'" in str(caught.value) and chat.calls == []


def test_item_id_and_settings_are_checked() -> None:
    with pytest.raises(InvalidInputError, match="item_id"):
        Faithfulness(Scripted()).judge("", **FIELDS)
    with pytest.raises(InvalidInputError, match="chat must be"):
        Faithfulness("gpt")  # type: ignore[arg-type]
    for kwargs in ({"retries": -1}, {"context_chars": 0}, {"reason_chars": True}):
        with pytest.raises(InvalidInputError):
            Faithfulness(Scripted(), **kwargs)


def test_contexts_are_cut_to_the_budget_with_a_note() -> None:
    text = format_contexts(["a" * 50, "b" * 50, "c" * 50], budget=70)
    assert text.startswith("[1] " + "a" * 50 + "\n\n[2] " + "b" * 20 + " [...]")
    assert "c" not in text.replace("characters", "").replace("cut", "")
    assert "70 of 150 characters shown, 2 of 3 passages" in text
    assert format_contexts(["short"], budget=70) == "[1] short"
    chat = Scripted(ok())
    Faithfulness(chat, context_chars=30).judge("q", **FIELDS)
    total = len(MARLEY) + len(TIM)
    assert f"30 of {total} characters shown, 1 of 2 passages" in chat.calls[0][0][1]["content"]


def test_prompts_hold_the_inputs() -> None:
    chat = Scripted(ok(), ok(), ok())
    for judge_cls in GRADED:
        judge_cls(chat).judge("q", **FIELDS)
    faithful, correct, relevant = (call[0] for call in chat.calls)
    assert [m["role"] for m in faithful] == ["system", "user"]
    assert (
        MARLEY in faithful[1]["content"] and "Answer to check:\nScrooge's business partner." in faithful[1]["content"]
    )
    assert "Reference answer:\nScrooge's partner, dead seven years." in correct[1]["content"]
    assert "Passages:\n[1] " + MARLEY in relevant[1]["content"] and "Answer" not in relevant[1]["content"]
    assert len({faithful[0]["content"], correct[0]["content"], relevant[0]["content"]}) == 3


# -- async ---------------------------------------------------------------------------------------------------


async def test_ajudge_runs_a_sync_chat_function_in_a_thread() -> None:
    chat = Scripted(ok(5))
    judgement = await Faithfulness(chat).ajudge("q", **FIELDS)
    assert judgement.score == 1.0 and threading.get_ident() not in chat.threads


async def test_ajudge_awaits_an_async_chat_function_and_asks_both_orders_at_once() -> None:
    in_flight, most = 0, 0

    async def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        first = messages[1]["content"].split("Answer A:\n")[1].split("\n")[0]
        return pick("A" if first == "A ghost." else "B")  # both orders prefer "A ghost." (answer_b)

    judgement = await PairwisePreference(chat).ajudge("p", **FIELDS)
    assert (judgement.verdict, judgement.score, most) == ("B", 0.0, 2)


async def test_ajudge_retries_and_raises_like_the_sync_api() -> None:
    chat = Scripted(ValueError("bad"), {"reason": "r", "score": 9}, ok(1))
    assert (await Correctness(chat).ajudge("q", **FIELDS)).attempts == 3
    with pytest.raises(JudgeError, match="item 'q4'"):
        await Correctness(Scripted("x", "y"), retries=1).ajudge("q4", **FIELDS)
    with pytest.raises(InvalidInputError, match="reference"):
        await Correctness(Scripted()).ajudge("q5", question="q", answer="a")


def test_sync_judge_with_an_async_chat_function() -> None:
    async def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        return ok(3)

    assert Faithfulness(chat).judge("q", **FIELDS).score == 0.5


async def test_sync_judge_with_an_async_chat_function_inside_a_running_loop() -> None:
    async def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        return ok(2)

    assert Faithfulness(chat).judge("q", **FIELDS).score == 0.25


def test_judge_batch_keeps_every_item_in_order() -> None:
    answers = {"good": ok(5), "bad": "garbage"}

    def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        return answers["bad" if "BAD" in messages[1]["content"] else "good"]

    items = [
        JudgeItem("a", answer="fine", contexts=(MARLEY,)),
        JudgeItem("b", answer="BAD", contexts=(MARLEY,)),
        JudgeItem("c", answer="fine", contexts=()),
        JudgeItem("d", answer="fine", contexts=(TIM,)),
    ]
    outcomes = Faithfulness(chat, retries=1).judge_batch(items, concurrency=2, progress=False)
    assert [o.item_id for o in outcomes] == ["a", "b", "c", "d"]
    assert [o.ok for o in outcomes] == [True, False, False, True]
    assert outcomes[1].error is not None and outcomes[1].error.startswith("JudgeError: the faithfulness judge")
    assert outcomes[2].error is not None and outcomes[2].error.startswith("InvalidInputError: item 'c'")
    assert outcomes[0].value is not None and outcomes[0].value.score == 1.0


def test_judgement_to_dict_is_json() -> None:
    judgement = PairwisePreference(Scripted(pick("A"), pick("B"))).judge("p", **FIELDS)
    data = json.loads(json.dumps(judgement.to_dict()))
    assert data["verdicts"] == ["A", "A"] and data["raw"]["swapped_order"] == pick("B")


# -- the tiny grammar-constrained local model ----------------------------------------------------------------


def _valid(judgement: Judgement, item_id: str, name: str) -> None:
    assert isinstance(judgement, Judgement) and judgement.item_id == item_id and judgement.judge == name
    assert isinstance(judgement.score, float) and math.isfinite(judgement.score) and 0.0 <= judgement.score <= 1.0
    assert isinstance(judgement.reason, str) and judgement.attempts >= 1


def test_a_tiny_grammar_constrained_model_gives_valid_judgements(lora_model: Any) -> None:
    """Random weights: the judgements mean nothing, but each must parse, fit the enum and the range."""
    chat = lora_chat_function(lora_model, max_new_tokens=48)
    short = {**FIELDS, "contexts": [MARLEY]}
    for judge_cls in GRADED:
        judge = judge_cls(chat, retries=0, reason_chars=60, context_chars=200)
        judgement = judge.judge("tiny", **short)
        _valid(judgement, "tiny", judge_cls.name)
        assert judgement.attempts == 1  # the grammar makes the first answer valid
        jsonschema.validate(judgement.raw, judge.schema)
    pairwise = PairwisePreference(chat, retries=0, reason_chars=60)
    judgement = pairwise.judge("tiny-pair", **short)
    _valid(judgement, "tiny-pair", "pairwise_preference")
    assert (
        judgement.verdict in ("A", "B", "tie")
        and judgement.score == {"A": 1.0, "tie": 0.5, "B": 0.0}[judgement.verdict]
    )


def test_a_tiny_model_judges_a_batch_concurrently(lora_model: Any) -> None:
    chat = lora_chat_function(lora_model, max_new_tokens=32)
    judge = ContextRelevance(chat, retries=0, reason_chars=40, context_chars=200)
    items = [JudgeItem(f"q{i}", question=f"What did Tiny Tim carry ({i})?", contexts=(TIM, MARLEY)) for i in range(6)]
    outcomes = judge.judge_batch(items, concurrency=3, progress=False)
    assert [o.error for o in outcomes] == [None] * 6
    for outcome, item in zip(outcomes, items, strict=True):
        assert outcome.value is not None
        _valid(outcome.value, item.item_id, "context_relevance")


async def test_async_pairwise_with_one_failing_order_raises_after_both_end() -> None:
    ended = []

    async def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        swapped = messages[1]["content"].split("Answer A:\n")[1].startswith("A ghost.")
        await asyncio.sleep(0.02 if swapped else 0)
        ended.append(swapped)
        return pick("B") if swapped else "garbage"

    with pytest.raises(JudgeError, match="item 'p9'"):
        await PairwisePreference(chat, retries=0).ajudge("p9", **FIELDS)
    assert sorted(ended) == [False, True]  # the slower, valid order was awaited, not left running
