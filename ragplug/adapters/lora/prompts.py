"""Prompts: chat messages rendered to token ids, and a request's plan — its prompt checked against the
vocabulary, fitted to the context window by the truncation policy, and its token budget.

Prompt length policy (``LoadConfig.truncation``): ``"error"`` raises
:class:`~ragplug.errors.ContextLengthError` when prompt + ``max_new_tokens`` exceeds the context window;
``"left"`` keeps the most recent tokens that fit (the oldest turns, system prompt included, are cut first).
A constrained request's budget is first raised to its schema's shortest valid answer, so that answer
always completes; a schema with none that fits the window is refused.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ragplug._text import unicode_error
from ragplug.adapters.lora.config import GenerationConfig
from ragplug.adapters.lora.grammar import GrammarBackend
from ragplug.adapters.lora.requests import GenerationRequest, Plan
from ragplug.adapters.lora.tools import ToolSpec
from ragplug.errors import ContextLengthError, InvalidInputError

__all__ = ["Planner", "render_prompt_ids"]

logger = logging.getLogger(__name__)


def render_prompt_ids(
    tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec] | None = None
) -> list[int]:
    """Token ids of a chat prompt through the tokenizer's chat template, with the generation prompt.

    Shared by serving and training, so an adapter sees at inference the prompt layout it was trained on.
    A tokenizer without a chat template gets a plain ``role: content`` layout.
    """
    if not messages:
        msg = "messages must not be empty"
        raise InvalidInputError(msg)
    tool_dicts = [t.to_openai() for t in tools] if tools else None
    try:
        if getattr(tokenizer, "chat_template", None) is None:
            text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant: "
            return list(tokenizer(text, add_special_tokens=True)["input_ids"])
        text = tokenizer.apply_chat_template(
            [dict(m) for m in messages], tools=tool_dicts, add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    except (TypeError, UnicodeError) as err:  # tokenizers' TypeError for text that is not valid Unicode
        error = _unencodable(list(messages), "messages") or _unencodable(tool_dicts, "tools")
        if error is None:
            raise
        raise error from err


def _unencodable(value: Any, where: str) -> InvalidInputError | None:
    """The error naming the first string in ``value`` (``messages[1]['content']``) that is not valid
    Unicode, which no tokenizer can encode; None if there is none. Walked only after a failure, so valid
    requests pay nothing."""
    if isinstance(value, str):
        return unicode_error(value, where)
    if isinstance(value, Mapping):
        items: Any = ((f"{where}[{k!r}]", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for path, item in items:
        found = _unencodable(item, path)
        if found is not None:
            return found
    return None


class Planner:
    """Checks requests against what does not change while serving (the vocabulary, the context window,
    a schema) and plans them. ``owner`` is the id() of the model whose plans these are."""

    def __init__(
        self,
        *,
        owner: int,
        vocab_rows: int,
        context_window: int,
        truncation: Callable[[], str],
        grammar: Callable[[], GrammarBackend],
    ) -> None:
        self.owner = owner
        self.vocab_rows = vocab_rows
        self.context_window = context_window
        self.truncation = truncation  # the model's LoadConfig.truncation as it is now
        self.grammar = grammar

    def plan(self, request: GenerationRequest) -> Plan:
        """A request's fitted prompt and token budget. Raises ragplug errors naming the bad value."""
        if not isinstance(request.config, GenerationConfig):
            msg = f"config must be a GenerationConfig, got {type(request.config).__name__}"
            raise InvalidInputError(msg)
        prompt = self.token_ids(request.prompt_ids)
        budget, shortest = request.config.max_new_tokens, 0
        if request.schema is not None:
            shortest = self.grammar().shortest(request.schema)  # SchemaError when no answer fits the window
            budget = max(budget, shortest + 1)
        return Plan(self.owner, self.fit(prompt, request.config, budget), budget, shortest)

    def token_ids(self, prompt_ids: Any) -> list[int]:
        """``prompt_ids`` as a list of ints, each a row of this model's embedding table."""
        try:
            ids = [operator.index(t) for t in prompt_ids]  # ints and numpy integers; not floats, not text
        except TypeError as err:
            msg = f"prompt_ids must be a sequence of integer token ids, got {prompt_ids!r:.200}"
            raise InvalidInputError(msg) from err
        if not ids or isinstance(prompt_ids, str | bytes):
            msg = "the prompt is empty" if not ids else f"prompt_ids must be token ids, got text {prompt_ids!r:.200}"
            raise InvalidInputError(msg)
        if min(ids) < 0 or max(ids) >= self.vocab_rows:
            position, bad = next((i, t) for i, t in enumerate(ids) if not 0 <= t < self.vocab_rows)
            msg = f"prompt_ids[{position}] = {bad} is not a token id of this model (0 to {self.vocab_rows - 1})"
            raise InvalidInputError(msg)
        return ids

    def fit(self, prompt_ids: list[int], config: GenerationConfig, budget: int) -> list[int]:
        """The prompt, cut on the left if the policy allows, so that it and ``budget`` new tokens fit."""
        room = self.context_window - budget
        if len(prompt_ids) <= room:
            return prompt_ids
        if self.truncation() == "left" and room > 0:
            logger.warning("prompt of %d tokens truncated to the last %d", len(prompt_ids), room)
            return prompt_ids[-room:]
        wanted = f"max_new_tokens={config.max_new_tokens}"
        if budget > config.max_new_tokens:
            wanted = f"the {budget} tokens the schema's shortest valid answer needs ({wanted} is raised to that)"
        msg = (
            f"the prompt has {len(prompt_ids)} tokens; with {wanted} it exceeds the context window of "
            f"{self.context_window} tokens. Shorten it, lower max_new_tokens, or load with "
            "LoadConfig(truncation='left')"
        )
        raise ContextLengthError(msg)
