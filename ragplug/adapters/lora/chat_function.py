"""``lora_chat_function``: ragplug's local ``LoRAModel`` as a :class:`~ragplug.chat.ChatFunction`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ragplug.chat import ChatFunction

if TYPE_CHECKING:
    from ragplug.adapters.lora.engine import LoRAModel

__all__ = ["lora_chat_function"]


def lora_chat_function(model: LoRAModel, *, adapter: str | None = None, max_new_tokens: int = 512) -> ChatFunction:
    """A :class:`~ragplug.chat.ChatFunction` over ragplug's local ``LoRAModel``: each call
    is one grammar-constrained ``model.chat`` (xgrammar), so the answer always parses and fits the schema.
    ``adapter`` names the LoRA adapter to answer with (None: the base model)."""
    from ragplug.adapters.lora.config import GenerationConfig

    config = GenerationConfig(max_new_tokens=max_new_tokens)

    def chat(messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        turns = [dict(message) for message in messages]
        result = model.chat(turns, response_schema=json.loads(json.dumps(schema)), adapter=adapter, config=config)
        return json.loads(result.content)

    return chat
