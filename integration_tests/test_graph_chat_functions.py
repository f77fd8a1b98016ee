"""Graph RAG's chat functions over the frameworks: a LangChain chat model and a LlamaIndex LLM answer a JSON
schema, through recording models written here (what a hosted model would return) and through ragplug's own
ChatLoRA / LoRALLM on the tiny grammar-constrained model; and LLMExtractor runs on both."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import jsonschema
import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.custom import CustomLLM
from pydantic import Field

from ragplug.errors import InvalidInputError
from ragplug.plugins.langchain import ChatLoRA, langchain_chat_function
from ragplug.plugins.llamaindex import LoRALLM, llamaindex_chat_function
from ragplug.plugins.llamaindex.chat_function import parse_json_object
from ragplug.retrievers.graph.llm import LLMExtractor, extraction_schema
from ragplug.retrievers.graph.model import ChatFunction, Passage

pytestmark = pytest.mark.integration

ANSWER = {
    "entities": [{"name": "Scrooge", "type": "person", "description": "A miser."}],
    "relations": [{"source": "Scrooge", "target": "Marley", "relation": "partner of"}],
}
MESSAGES = [
    {"role": "system", "content": "Extract entities."},
    {"role": "user", "content": "Scrooge and Marley."},
    {"role": "assistant", "content": "{}"},
    {"role": "user", "content": "Again."},
]
SMALL = {
    "title": "pair",
    "type": "object",
    "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 12}, "count": {"type": "integer"}},
    "required": ["name", "count"],
    "additionalProperties": False,
}


class RecordingChatModel(BaseChatModel):
    """A LangChain chat model that answers every call with one forced tool call carrying ``answer``, as a
    function-calling provider answers ``with_structured_output``, and records the messages it got."""

    answer: dict[str, Any]
    seen: list[list[BaseMessage]] = Field(default_factory=list)
    tools: list[Any] = Field(default_factory=list)

    @property
    def _llm_type(self) -> str:
        return "recording"

    def bind_tools(self, tools: Sequence[Any], **kwargs: Any) -> Any:
        self.tools.extend(tools)
        return self.bind(**{k: v for k, v in kwargs.items() if k != "ls_structured_output_format"})

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kw: Any
    ) -> ChatResult:
        self.seen.append(list(messages))
        name = self.tools[-1]["title"]
        call = {"name": name, "args": self.answer, "id": "call-1", "type": "tool_call"}
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content="", tool_calls=[call]))])


class RecordingLLM(CustomLLM):
    """A LlamaIndex LLM replaying ``replies`` from ``chat`` and recording the messages and keywords."""

    replies: list[str] = Field(default_factory=list)
    seen: list[tuple[list[ChatMessage], dict[str, Any]]] = Field(default_factory=list)

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(model_name="recording", is_chat_model=True)

    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        self.seen.append((list(messages), kwargs))
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=self.replies.pop(0)))

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        raise NotImplementedError  # the chat function only chats

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        raise NotImplementedError


# -- LangChain -----------------------------------------------------------------------------------------------


def test_langchain_chat_function_returns_the_object_and_converts_the_messages() -> None:
    model = RecordingChatModel(answer=ANSWER)
    chat = langchain_chat_function(model)
    assert isinstance(chat, ChatFunction)
    schema = extraction_schema(4, 4)
    assert chat(MESSAGES, schema) == ANSWER
    (seen,) = model.seen
    assert [type(m) for m in seen] == [SystemMessage, HumanMessage, AIMessage, HumanMessage]
    assert [m.content for m in seen] == [m["content"] for m in MESSAGES]
    assert model.tools == [schema]  # the JSON schema itself, titled, is the structured-output schema
    chat(MESSAGES, schema)
    assert len(model.tools) == 1  # the structured runnable is built once per schema


def test_langchain_chat_function_refuses_bad_messages_and_models() -> None:
    chat = langchain_chat_function(RecordingChatModel(answer=ANSWER))
    with pytest.raises(InvalidInputError, match="'tool'"):
        chat([{"role": "tool", "content": "x"}], SMALL)
    with pytest.raises(InvalidInputError, match="None"):
        chat([{"role": "user", "content": None}], SMALL)  # type: ignore[dict-item]
    with pytest.raises(InvalidInputError, match="BaseChatModel"):
        langchain_chat_function("gpt")  # type: ignore[arg-type]


def test_langchain_chat_lora_answers_the_schema(lora_model: Any) -> None:
    chat = langchain_chat_function(ChatLoRA(llm=lora_model, max_new_tokens=24))  # method="json_schema"
    answer = chat([{"role": "user", "content": "Name a ghost and count them."}], SMALL)
    jsonschema.validate(answer, SMALL)


def test_llm_extractor_over_langchain() -> None:
    model = RecordingChatModel(answer=ANSWER)
    extractor = LLMExtractor(langchain_chat_function(model), model_name="recording")
    [extraction] = extractor.extract([Passage("p", "Scrooge and Marley.", "d")])
    assert {e.key for e in extraction.entities} == {"scrooge", "marley"}
    assert [(r.source, r.target, r.label) for r in extraction.relations] == [("scrooge", "marley", "partner of")]
    assert "Scrooge and Marley." in model.seen[0][-1].content


# -- LlamaIndex ----------------------------------------------------------------------------------------------


def test_llamaindex_chat_function_returns_the_object_and_converts_the_messages() -> None:
    llm = RecordingLLM(replies=[json.dumps(ANSWER), f"Sure:\n```json\n{json.dumps(ANSWER)}\n```"])
    chat = llamaindex_chat_function(llm, chat_kwargs={"temperature": 0})
    assert isinstance(chat, ChatFunction)
    schema = extraction_schema(4, 4)
    assert chat(MESSAGES, schema) == ANSWER
    assert chat(MESSAGES[1:2], schema) == ANSWER  # a fenced reply; no system message given
    (first, kwargs), (second, _) = llm.seen
    assert [m.role for m in first] == [MessageRole.SYSTEM, MessageRole.USER, MessageRole.ASSISTANT, MessageRole.USER]
    assert first[0].content.startswith("Extract entities.")
    assert json.dumps(schema) in first[0].content  # the schema is spelled out for an unconstrained LLM
    assert [m.content for m in first[1:]] == [m["content"] for m in MESSAGES[1:]]
    assert kwargs == {"temperature": 0}
    assert [m.role for m in second] == [MessageRole.SYSTEM, MessageRole.USER]


def test_llamaindex_chat_function_raises_on_a_reply_without_json() -> None:
    llm = RecordingLLM(replies=["I cannot help with that."])
    with pytest.raises(InvalidInputError, match="no JSON object"):
        llamaindex_chat_function(llm)(MESSAGES, SMALL)
    assert parse_json_object('noise {"a": 1} noise') == {"a": 1}
    with pytest.raises(InvalidInputError):
        parse_json_object("[1, 2]")
    with pytest.raises(InvalidInputError, match="schema_keyword"):
        llamaindex_chat_function(llm, schema_keyword="not a keyword")


def test_llm_extractor_over_llamaindex_retries_a_bad_reply() -> None:
    llm = RecordingLLM(replies=["no idea", json.dumps(ANSWER)])
    extractor = LLMExtractor(llamaindex_chat_function(llm), model_name="recording", retries=1)
    [extraction] = extractor.extract([Passage("p", "Scrooge and Marley.", "d")])
    assert {e.key for e in extraction.entities} == {"scrooge", "marley"}
    assert (extractor.last_report.calls, extractor.last_report.retried) == (2, 1)


def test_llamaindex_lora_llm_answers_the_schema_under_a_grammar(lora_model: Any) -> None:
    llm = LoRALLM(llm=lora_model, max_new_tokens=24)
    chat = llamaindex_chat_function(llm)  # "auto": response_schema= for LoRALLM
    answer = chat([{"role": "user", "content": "Name a ghost and count them."}], SMALL)
    jsonschema.validate(answer, SMALL)
