"""``langchain_chat_function``: a LangChain chat model as the chat function Graph RAG's LLM extractor calls.

Graph RAG asks a :class:`~ragplug.retrievers.graph.model.ChatFunction` for a JSON object valid against a
JSON schema. LangChain's own way to get one is ``chat_model.with_structured_output(schema, method=...)``,
which every chat model with tool calling or a JSON mode implements (OpenAI, Anthropic, Ollama, ragplug's
``ChatLoRA``, which decodes under a grammar); this module only builds that runnable once per schema and turns
ragplug's ``{"role", "content"}`` dicts into LangChain messages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.runnables import Runnable
from pydantic import BaseModel

from ragplug.chat import ChatFunction, role_messages
from ragplug.errors import InvalidInputError

__all__ = ["langchain_chat_function", "to_langchain_messages"]

_MESSAGES: dict[str, type[BaseMessage]] = {
    "system": SystemMessage,
    "developer": SystemMessage,
    "user": HumanMessage,
    "human": HumanMessage,
    "assistant": AIMessage,
    "ai": AIMessage,
}


def to_langchain_messages(messages: Sequence[Mapping[str, str]]) -> list[BaseMessage]:
    """``{"role", "content"}`` dicts as LangChain messages (system, user/human, assistant/ai)."""
    return [_MESSAGES[role](content=content) for role, content in role_messages(messages, _MESSAGES)]


def langchain_chat_function(chat_model: BaseChatModel, *, method: str | None = "json_schema") -> ChatFunction:
    """A :class:`~ragplug.retrievers.graph.model.ChatFunction` over a LangChain chat model.

    Each call invokes ``chat_model.with_structured_output(schema, method=method)`` (built once per schema)
    and returns the parsed JSON object. ``method="json_schema"`` asks for the provider's native structured
    output; pass ``"function_calling"`` for a model that only has tool calling, or None for the model's own
    default. A model that gives no parsable answer raises (Graph RAG's extractor then asks again)."""
    if not isinstance(chat_model, BaseChatModel):
        msg = f"chat_model must be a LangChain BaseChatModel, got {type(chat_model).__name__}: {chat_model!r}"
        raise InvalidInputError(msg)
    if method is not None and not isinstance(method, str):
        msg = f"method must be a with_structured_output method name or None, got {method!r}"
        raise InvalidInputError(msg)
    runnables: dict[str, Runnable[Any, Any]] = {}

    def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        plain = json.loads(json.dumps(schema))
        plain.setdefault("title", "response")  # function calling names the tool after the title
        key = json.dumps(plain, sort_keys=True)
        runnable = runnables.get(key)
        if runnable is None:  # a race builds it twice, harmlessly
            kwargs: dict[str, Any] = {} if method is None else {"method": method}
            runnable = runnables[key] = chat_model.with_structured_output(plain, **kwargs)
        result = runnable.invoke(to_langchain_messages(messages))
        if isinstance(result, BaseModel):
            result = result.model_dump()
        if not isinstance(result, dict):
            msg = f"{type(chat_model).__name__} gave no JSON object for the schema {plain['title']!r}: {result!r}"
            raise InvalidInputError(msg[:500])
        return result

    return chat
