"""The evaluators' framework faces: ragplug's judges as LlamaIndex ``BaseEvaluator``s (sync, async,
``BatchEvalRunner``), ragplug's retrieval metrics in LlamaIndex's ``RetrieverEvaluator``, and the judges and
answer metrics as LangSmith-style evaluator functions, over scripted framework models written here and over
ragplug's ChatLoRA / LoRALLM on the tiny grammar-constrained model."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.base.response.schema import Response
from llama_index.core.evaluation import BatchEvalRunner, RetrieverEvaluator
from llama_index.core.evaluation.retrieval.metrics import MRR, HitRate
from llama_index.core.llms.custom import CustomLLM
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from pydantic import Field

from ragplug.errors import InvalidInputError, JudgeError
from ragplug.plugins.langchain import ChatLoRA
from ragplug.plugins.langchain.evaluators import (
    context_relevance_evaluator,
    correctness_evaluator,
    exact_match_evaluator,
    faithfulness_evaluator,
    pairwise_evaluator,
    token_f1_evaluator,
)
from ragplug.plugins.llamaindex import LoRALLM
from ragplug.plugins.llamaindex.evaluators import (
    ContextRelevanceEvaluator,
    CorrectnessEvaluator,
    FaithfulnessEvaluator,
    PairwiseEvaluator,
    RagplugRetrievalMetric,
    retrieval_metrics,
)

pytestmark = pytest.mark.integration

MARLEY = "Jacob Marley, Scrooge's business partner, had been dead for seven years."
TIM = "Tiny Tim was the youngest Cratchit child; he walked with a crutch."
QUESTION = "Who was Marley?"
GOOD, BAD = "Scrooge's business partner.", "A ghost."


def prefer_good(user_text: str) -> dict[str, Any]:
    """The answer of a judge that knows which answer is right: in a pairwise prompt, the one holding GOOD;
    otherwise a 4 of 5."""
    if "Answer A:" in user_text:
        first = user_text.split("Answer A:\n")[1].split("\n")[0]
        return {"reason": "it names the partner", "verdict": "A" if first == GOOD else "B"}
    return {"reason": "supported by passage 1", "score": 4}


class ScriptedLLM(CustomLLM):
    """A LlamaIndex LLM whose reply is ``reply(user message)`` as text, as an unconstrained hosted LLM answers."""

    reply: Callable[[str], str]
    seen: list[list[ChatMessage]] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="scripted", is_chat_model=True)

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self.seen.append(list(messages))
        text = self.reply(str(messages[-1].content))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model answering ``with_structured_output`` with one forced tool call whose arguments
    are ``answer(user message)``, as a function-calling provider does."""

    answer: Callable[[str], dict[str, Any]]
    tools: list[Any] = Field(default_factory=list)
    seen: list[list[BaseMessage]] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        self.tools.extend(tools)
        return self.bind(**{k: v for k, v in kwargs.items() if k != "ls_structured_output_format"})

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        args = self.answer(str(messages[-1].content))
        call = {"name": self.tools[-1]["title"], "args": args, "id": "call-1", "type": "tool_call"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))])


def _valid_result(result: Any) -> None:
    assert not result.invalid_result, result.invalid_reason
    assert isinstance(result.score, float) and math.isfinite(result.score) and 0.0 <= result.score <= 1.0
    assert isinstance(result.feedback, str)


# -- LlamaIndex judges ---------------------------------------------------------------------------------------


def test_llamaindex_evaluators_with_a_text_llm() -> None:
    llm = ScriptedLLM(reply=lambda text: json.dumps(prefer_good(text)))
    faithful = FaithfulnessEvaluator(llm).evaluate(query=QUESTION, response=GOOD, contexts=[MARLEY])
    assert (faithful.score, faithful.passing, faithful.feedback) == (0.75, True, "supported by passage 1")
    assert faithful.contexts == [MARLEY] and faithful.response == GOOD
    # the schema is spelled out in the system message for an LLM without a grammar
    assert '"enum": [1, 2, 3, 4, 5]' in str(llm.seen[-1][0].content)
    correct = CorrectnessEvaluator(llm, threshold=0.9).evaluate(query=QUESTION, response=GOOD, reference="partner")
    assert (correct.score, correct.passing) == (0.75, False)
    relevant = ContextRelevanceEvaluator(llm).evaluate(query=QUESTION, contexts=[MARLEY, TIM])
    assert relevant.score == 0.75 and relevant.query == QUESTION
    better = PairwiseEvaluator(llm).evaluate(query=QUESTION, response=GOOD, second_response=BAD)
    assert (better.score, better.passing) == (1.0, True)
    worse = PairwiseEvaluator(llm).evaluate(query=QUESTION, response=BAD, second_response=GOOD)
    assert (worse.score, worse.passing) == (0.0, False)


def test_llamaindex_pairwise_position_bias_is_a_tie() -> None:
    llm = ScriptedLLM(reply=lambda text: json.dumps({"reason": "the first", "verdict": "A"}))
    result = PairwiseEvaluator(llm).evaluate(query=QUESTION, response=GOOD, second_response=BAD)
    assert (result.score, result.passing) == (0.5, None)
    assert "swapped places" in str(result.feedback)


async def test_llamaindex_aevaluate_and_batch_runner() -> None:
    llm = ScriptedLLM(reply=lambda text: json.dumps(prefer_good(text)))
    evaluator = FaithfulnessEvaluator(llm)
    result = await evaluator.aevaluate(query=QUESTION, response=GOOD, contexts=[MARLEY])
    assert result.score == 0.75
    response = Response(response=GOOD, source_nodes=[NodeWithScore(node=TextNode(text=MARLEY), score=1.0)])
    from_response = await evaluator.aevaluate_response(query=QUESTION, response=response)
    assert from_response.contexts == [MARLEY] and from_response.score == 0.75
    runner = BatchEvalRunner({"faithfulness": evaluator, "relevance": ContextRelevanceEvaluator(llm)}, workers=2)
    results = await runner.aevaluate_response_strs(
        queries=[QUESTION, "Who was Tim?"], response_strs=[GOOD, "A child."], contexts_list=[[MARLEY], [TIM]]
    )
    assert [r.score for r in results["faithfulness"]] == [0.75, 0.75]
    assert [r.contexts for r in results["relevance"]] == [[MARLEY], [TIM]]


def test_llamaindex_invalid_answers_give_an_invalid_result_and_bad_inputs_raise() -> None:
    llm = ScriptedLLM(reply=lambda text: "I'd rather not say.")
    result = FaithfulnessEvaluator(llm, retries=1).evaluate(
        query=QUESTION, response=GOOD, contexts=[MARLEY], item_id="q-17"
    )
    assert result.invalid_result and result.score is None and result.passing is None
    assert "item 'q-17' after 2 attempts" in str(result.invalid_reason)
    assert len(llm.seen) == 2
    with pytest.raises(InvalidInputError, match="needs a reference answer"):
        CorrectnessEvaluator(llm).evaluate(query=QUESTION, response=GOOD)
    with pytest.raises(InvalidInputError, match="at least one non-empty context"):
        FaithfulnessEvaluator(llm).evaluate(query=QUESTION, response=GOOD, contexts=[])
    with pytest.raises(InvalidInputError, match="needs a second answer"):
        PairwiseEvaluator(llm).evaluate(query=QUESTION, response=GOOD)
    with pytest.raises(InvalidInputError, match="threshold"):
        FaithfulnessEvaluator(llm, threshold=4)
    with pytest.raises(InvalidInputError, match="LlamaIndex LLM or a ragplug chat function"):
        FaithfulnessEvaluator("gpt-4")  # type: ignore[arg-type]
    assert FaithfulnessEvaluator(llm).get_prompts() == {}


def test_llamaindex_evaluator_over_an_async_ragplug_chat_function() -> None:
    async def chat(messages: Sequence[Any], schema: Any) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"reason": "fully supported", "score": 5}

    result = FaithfulnessEvaluator(chat).evaluate(query=QUESTION, response=GOOD, contexts=[MARLEY])
    assert (result.score, result.passing) == (1.0, True)


def test_llamaindex_evaluators_over_the_tiny_lora_llm(lora_model: Any) -> None:
    """LoRALLM decodes the judge's schema under a grammar: random weights, valid results."""
    llm = LoRALLM(llm=lora_model, max_new_tokens=40)
    kwargs = {"retries": 0, "reason_chars": 40, "context_chars": 200}
    _valid_result(FaithfulnessEvaluator(llm, **kwargs).evaluate(query=QUESTION, response=GOOD, contexts=[MARLEY]))
    _valid_result(CorrectnessEvaluator(llm, **kwargs).evaluate(query=QUESTION, response=GOOD, reference="partner"))
    result = asyncio.run(ContextRelevanceEvaluator(llm, **kwargs).aevaluate(query=QUESTION, contexts=[MARLEY, TIM]))
    _valid_result(result)
    pair = PairwiseEvaluator(llm, **kwargs).evaluate(query=QUESTION, response=GOOD, second_response=BAD)
    _valid_result(pair)
    assert pair.score in (0.0, 0.5, 1.0)


# -- LlamaIndex retrieval metrics ----------------------------------------------------------------------------


class FixedRetriever(BaseRetriever):
    """Returns the ranked ids given for each query."""

    def __init__(self, ranked: dict[str, list[str]]) -> None:
        super().__init__()
        self.ranked = ranked

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        ids = self.ranked[query_bundle.query_str]
        return [NodeWithScore(node=TextNode(id_=i, text=i), score=1.0 / (r + 1)) for r, i in enumerate(ids)]


def test_retriever_evaluator_with_ragplug_metrics() -> None:
    metrics = retrieval_metrics(["hit@1", "hit@5", "recall@2", "mrr", "ndcg@10", "precision@2"])
    retriever = FixedRetriever({"q1": ["d3", "d1", "d2"], "q2": ["d9", "d8"], "q3": ["d5", "d5", "d6"]})
    evaluator = RetrieverEvaluator(metrics=metrics, retriever=retriever)

    first = evaluator.evaluate("q1", expected_ids=["d1", "d2"]).metric_vals_dict
    assert first["hit@1"] == 0.0 and first["hit@5"] == 1.0 and first["recall@2"] == 0.5
    assert first["mrr"] == pytest.approx(0.5) and first["precision@2"] == pytest.approx(0.5)
    ideal = 1 + 1 / math.log2(3)
    assert first["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(4)) / ideal)
    theirs = RetrieverEvaluator(metrics=[HitRate(), MRR()], retriever=retriever).evaluate("q1", ["d1", "d2"])
    assert theirs.metric_vals_dict == {"hit_rate": first["hit@5"], "mrr": first["mrr"]}  # LlamaIndex's agree

    missed = evaluator.evaluate("q2", expected_ids=["d1"]).metric_vals_dict
    assert all(missed[name] == 0.0 for name in ("hit@1", "hit@5", "recall@2", "mrr", "ndcg@10"))
    repeated = evaluator.evaluate("q3", expected_ids=["d6"]).metric_vals_dict  # d5 twice: counted once
    assert repeated["mrr"] == pytest.approx(0.5) and repeated["hit@1"] == 0.0


async def test_retriever_evaluator_async_dataset_of_queries() -> None:
    retriever = FixedRetriever({"a": ["x", "y"], "b": ["y", "x"]})
    evaluator = RetrieverEvaluator(metrics=retrieval_metrics(["hit@1", "mrr"]), retriever=retriever)
    results = await asyncio.gather(
        evaluator.aevaluate("a", expected_ids=["y"]), evaluator.aevaluate("b", expected_ids=["y"])
    )
    assert [r.metric_vals_dict for r in results] == [{"hit@1": 0.0, "mrr": 0.5}, {"hit@1": 1.0, "mrr": 1.0}]


def test_retrieval_metric_checks() -> None:
    with pytest.raises(InvalidInputError, match="unknown retrieval metric"):
        RagplugRetrievalMetric(metric="ndcg")  # needs @k
    with pytest.raises(InvalidInputError, match="no expected_ids"):
        RagplugRetrievalMetric(metric="mrr").compute(query="q", expected_ids=[], retrieved_ids=["a"])
    metric = RagplugRetrievalMetric(metric="recall@3")
    assert metric.metric_name == "recall@3"
    assert metric.compute(expected_ids=["a", "b"], retrieved_ids=["b", "c", "a"]).score == 1.0
    assert metric.compute(expected_ids=["a"], retrieved_ids=[]).score == 0.0
    assert [m.metric_name for m in retrieval_metrics(["mrr", "mrr", "hit@3"])] == ["mrr", "hit@3"]


# -- LangChain / LangSmith-style evaluators ------------------------------------------------------------------

INPUTS = {"id": "ex-1", "question": QUESTION}
OUTPUTS = {"answer": GOOD, "answer_b": BAD, "contexts": [Document(page_content=MARLEY), TIM]}
REFERENCE = {"answer": "Scrooge's business partner"}


def test_langchain_judge_evaluators_with_a_tool_calling_chat_model() -> None:
    model = ScriptedChatModel(answer=prefer_good)
    for factory, key in [
        (faithfulness_evaluator, "faithfulness"),
        (correctness_evaluator, "correctness"),
        (context_relevance_evaluator, "context_relevance"),
    ]:
        result = factory(model)(INPUTS, OUTPUTS, REFERENCE)
        assert result == {"key": key, "score": 0.75, "comment": "supported by passage 1"}
    assert MARLEY in str(model.seen[0][-1].content)  # a Document's page_content reached the prompt
    assert model.tools[0]["title"] == "faithfulness_judgement"
    pair = pairwise_evaluator(model)(INPUTS, OUTPUTS)
    assert pair == {"key": "pairwise_preference", "score": 1.0, "comment": "A: it names the partner"}
    swapped = pairwise_evaluator(model, answer_key="answer_b", answer_b_key="answer")(INPUTS, OUTPUTS, None)
    assert swapped["score"] == 0.0 and swapped["comment"].startswith("B: ")


def test_langchain_evaluators_name_a_missing_key() -> None:
    model = ScriptedChatModel(answer=prefer_good)
    with pytest.raises(InvalidInputError, match=r"outputs has no 'contexts' key \(it has \['answer'\]\)"):
        faithfulness_evaluator(model)(INPUTS, {"answer": GOOD}, None)
    with pytest.raises(InvalidInputError, match="reference_outputs must be a dict with the key 'answer'"):
        correctness_evaluator(model)(INPUTS, OUTPUTS, None)
    with pytest.raises(InvalidInputError, match="inputs has no 'query' key"):
        context_relevance_evaluator(model, question_key="query")(INPUTS, OUTPUTS, None)
    with pytest.raises(InvalidInputError, match="must be a list of strings or Documents"):
        context_relevance_evaluator(model)(INPUTS, {"contexts": MARLEY}, None)
    with pytest.raises(InvalidInputError, match="reference_outputs has no 'gold' key"):
        exact_match_evaluator(reference_key="gold")(INPUTS, OUTPUTS, REFERENCE)
    assert model.seen == []  # no judge was asked


def test_langchain_judge_error_names_the_example() -> None:
    model = ScriptedChatModel(answer=lambda text: {"reason": "x", "score": 11})
    with pytest.raises(JudgeError, match="item 'ex-1' after 2 attempts") as caught:
        faithfulness_evaluator(model, retries=1)(INPUTS, OUTPUTS, None)
    assert caught.value.item_id == "ex-1"


def test_langchain_answer_metrics() -> None:
    assert exact_match_evaluator()(INPUTS, OUTPUTS, REFERENCE) == {"key": "exact_match", "score": 1.0, "comment": None}
    assert exact_match_evaluator()(INPUTS, {"answer": "his partner"}, REFERENCE)["score"] == 0.0
    f1 = token_f1_evaluator()(INPUTS, {"answer": "his business partner"}, REFERENCE)
    assert f1["key"] == "token_f1" and 0.0 < f1["score"] < 1.0
    multi = token_f1_evaluator(key="f1")(INPUTS, {"answer": "a ghost"}, {"answer": ["partner", "A ghost"]})
    assert multi == {"key": "f1", "score": 1.0, "comment": None}


def test_langsmith_runs_the_evaluators_by_their_argument_names() -> None:
    """LangSmith's own wrapper (what ``evaluate(..., evaluators=[fn])`` uses) maps a run and an example onto
    ``inputs`` / ``outputs`` / ``reference_outputs`` and reads the returned key and score; no network."""
    from langsmith.evaluation import run_evaluator
    from langsmith.schemas import Example, Run

    now = datetime.now(timezone.utc)
    run_id = uuid.uuid4()
    run = Run(
        id=run_id,
        trace_id=run_id,
        name="rag",
        run_type="chain",
        start_time=now,
        inputs=INPUTS,
        outputs={"answer": GOOD, "contexts": [MARLEY]},
    )
    example = Example(id=uuid.uuid4(), dataset_id=uuid.uuid4(), created_at=now, inputs=INPUTS, outputs=REFERENCE)
    model = ScriptedChatModel(answer=prefer_good)
    for fn, key, score in [
        (correctness_evaluator(model), "correctness", 0.75),
        (exact_match_evaluator(), "exact_match", 1.0),
    ]:
        result = run_evaluator(fn).evaluate_run(run, example)
        assert (result.key, result.score) == (key, score)


def test_langchain_evaluators_over_chat_lora(lora_model: Any) -> None:
    """ChatLoRA answers the judges' schemas under a grammar (random weights): valid scores."""
    model = ChatLoRA(llm=lora_model, max_new_tokens=40)
    kwargs = {"retries": 0, "reason_chars": 40, "context_chars": 200}
    outputs = {"answer": GOOD, "answer_b": BAD, "contexts": [MARLEY]}
    for factory in (faithfulness_evaluator, correctness_evaluator, context_relevance_evaluator, pairwise_evaluator):
        result = factory(model, **kwargs)(INPUTS, outputs, REFERENCE)
        assert isinstance(result["score"], float) and 0.0 <= result["score"] <= 1.0
        assert isinstance(result["comment"], str)
