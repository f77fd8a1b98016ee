"""The chat function: the one framework-free way ragplug's components talk to a chat model.

Graph RAG's LLM extractor and community summaries, and the evaluators' LLM judges, need one thing of a chat
model: a JSON object valid against a JSON schema. :class:`ChatFunction` is that, as a plain callable; it is
made from ragplug's local ``LoRAModel`` (grammar-constrained, so it always parses), a LangChain chat model or a
LlamaIndex LLM. This module imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ragplug.errors import InvalidInputError

__all__ = ["ChatFunction", "answer_object", "role_messages"]


@runtime_checkable
class ChatFunction(Protocol):
    """The one thing ragplug asks of a chat model (Graph RAG extraction and summaries, LLM judges): answer
    ``messages`` (``{"role", "content"}`` dicts) with a JSON object valid against ``schema`` (a JSON schema),
    returned parsed. Made from ragplug's
    ``LoRAModel`` by :func:`ragplug.adapters.lora.lora_chat_function` (grammar-constrained, so it
    always parses), from a LangChain chat model by ``ragplug.plugins.langchain.langchain_chat_function``,
    from a LlamaIndex LLM by ``ragplug.plugins.llamaindex.llamaindex_chat_function``. It raises on failure
    (the caller retries)."""

    def __call__(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any: ...


def role_messages(messages: Sequence[Mapping[str, str]], roles: Iterable[str]) -> list[tuple[str, str]]:
    """``(role, content)`` of each ``{"role", "content"}`` dict a :class:`ChatFunction` gets, checked:
    a role among ``roles`` (what a framework adapter can map), string content; else
    :class:`~ragplug.errors.InvalidInputError` naming the message."""
    known = sorted(roles)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            msg = f"message {i} must be a {{'role', 'content'}} dict, got {message!r}"
            raise InvalidInputError(msg)
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or role not in known:
            msg = f"message {i} has role {role!r}; expected one of {known}"
            raise InvalidInputError(msg)
        if not isinstance(content, str):
            msg = f"message {i} ({role}) must have string content, got {content!r}"
            raise InvalidInputError(msg)
        out.append((role, content))
    return out


def answer_object(answer: Any) -> Mapping[str, Any]:
    """A chat function's answer as a JSON object: a mapping as it is, a string parsed. ``ValueError`` saying what
    it is instead (the caller asks again or gives up)."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except ValueError as err:
            msg = f"the answer is not JSON: {answer[:200]!r}"
            raise ValueError(msg) from err
    if not isinstance(answer, Mapping):
        msg = f"the answer is not a JSON object: {answer!r}"[:300]
        raise ValueError(msg)
    return answer
