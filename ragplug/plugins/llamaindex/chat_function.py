"""``llamaindex_chat_function``: a LlamaIndex LLM as the chat function Graph RAG's LLM extractor calls.

Graph RAG asks a :class:`~ragplug.retrievers.graph.model.ChatFunction` for a JSON object valid against a
JSON schema (a dict). LlamaIndex's structured-output APIs (``structured_predict``, ``as_structured_llm``,
Pydantic programs) take a Pydantic class, not a JSON schema, so this adapter uses the one API every LlamaIndex
LLM has, ``llm.chat(messages)``: the schema goes into the system message with the instruction to answer with
one JSON object, and the reply is parsed (a Markdown code fence around it is allowed). Where the LLM can
constrain its decoding to a schema through a keyword of ``chat`` — ragplug's ``LoRALLM`` takes
``response_schema=`` and decodes under a grammar — the schema is passed that way instead, so the answer
always parses.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms.llm import LLM

from ragplug.chat import ChatFunction, role_messages
from ragplug.errors import InvalidInputError

__all__ = ["llamaindex_chat_function", "parse_json_object", "to_llamaindex_messages"]

_ROLES = {
    "system": MessageRole.SYSTEM,
    "developer": MessageRole.SYSTEM,
    "user": MessageRole.USER,
    "human": MessageRole.USER,
    "assistant": MessageRole.ASSISTANT,
    "ai": MessageRole.ASSISTANT,
}
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)

_INSTRUCTION = (
    "Answer with one JSON object valid against this JSON schema, and nothing else (no prose, no code fence):\n"
)


def to_llamaindex_messages(messages: Sequence[Mapping[str, str]]) -> list[ChatMessage]:
    """``{"role", "content"}`` dicts as LlamaIndex chat messages (system, user/human, assistant/ai)."""
    return [ChatMessage(role=_ROLES[role], content=content) for role, content in role_messages(messages, _ROLES)]


def parse_json_object(text: str | None) -> dict[str, Any]:
    """The JSON object in a model's reply: the whole reply, the inside of a code fence, or the span from
    the first ``{`` to the last ``}``; :class:`~ragplug.errors.InvalidInputError` when there is none."""
    text = (text or "").strip()
    fenced = _FENCE.match(text)
    candidates = [fenced.group(1) if fenced else text]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first : last + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    msg = f"the model's reply holds no JSON object: {text[:300]!r}"
    raise InvalidInputError(msg)


def _default_schema_keyword(llm: LLM) -> str | None:
    # ragplug's LoRALLM takes the schema as response_schema=; it can only be one if its module is loaded.
    module = sys.modules.get("ragplug.plugins.llamaindex.llms")
    if module is not None and isinstance(llm, module.LoRALLM):
        return "response_schema"
    return None


def llamaindex_chat_function(
    llm: LLM, *, schema_keyword: str | None = "auto", chat_kwargs: Mapping[str, Any] | None = None
) -> ChatFunction:
    """A :class:`~ragplug.retrievers.graph.model.ChatFunction` over a LlamaIndex LLM.

    Each call sends the messages through ``llm.chat`` and returns the JSON object of the reply.
    ``schema_keyword`` names a keyword of ``llm.chat`` that constrains decoding to the schema: ``"auto"`` picks
    ``response_schema`` for ragplug's ``LoRALLM`` and none for other LLMs; None never passes one. Without
    one, the schema and the instruction to answer with one JSON object are added to the system message.
    ``chat_kwargs`` go to every ``llm.chat`` call (``temperature``, ``max_tokens``, ...). A reply without a
    JSON object raises :class:`~ragplug.errors.InvalidInputError` (Graph RAG's extractor then asks again)."""
    if not isinstance(llm, LLM):
        msg = f"llm must be a LlamaIndex LLM, got {type(llm).__name__}: {llm!r}"
        raise InvalidInputError(msg)
    keyword = _default_schema_keyword(llm) if schema_keyword == "auto" else schema_keyword
    if keyword is not None and (not isinstance(keyword, str) or not keyword.isidentifier()):
        msg = f"schema_keyword must be a keyword name, 'auto' or None, got {schema_keyword!r}"
        raise InvalidInputError(msg)
    extra = dict(chat_kwargs or {})

    def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        plain = json.loads(json.dumps(schema))
        turns = to_llamaindex_messages(messages)
        kwargs = dict(extra)
        if keyword is not None:  # decoding follows the schema: no need to spend context on spelling it out
            kwargs[keyword] = plain
        else:
            instruction = _INSTRUCTION + json.dumps(plain, ensure_ascii=False)
            if turns and turns[0].role == MessageRole.SYSTEM:
                turns[0] = ChatMessage(role=MessageRole.SYSTEM, content=f"{turns[0].content}\n\n{instruction}")
            else:
                turns.insert(0, ChatMessage(role=MessageRole.SYSTEM, content=instruction))
        response = llm.chat(turns, **kwargs)
        return parse_json_object(response.message.content)

    return chat
