"""What travels through the LoRA engine: a generation request and its plan, a generation result, and a
chat turn's options and result. Plain dataclasses, shared by every stage (no torch here)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from ragplug.adapters.lora.config import GenerationConfig
from ragplug.adapters.lora.tools import ToolCall, ToolSpec
from ragplug.errors import InvalidInputError

__all__ = ["ChatOptions", "ChatResult", "GenerationRequest", "GenerationResult", "Plan"]


@dataclass
class GenerationRequest:
    """One prompt to complete. ``on_text`` receives streamed text deltas from the serving thread."""

    prompt_ids: list[int]
    adapter: str | None = None
    config: GenerationConfig = field(default_factory=GenerationConfig)
    schema: dict[str, Any] | None = None
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    future: Future[GenerationResult] = field(default_factory=Future)
    _plan: Plan | None = field(default=None, init=False, repr=False, compare=False)  # set by submit


@dataclass(frozen=True)
class Plan:
    """What serving a request needs, found once when it enters (see :meth:`.prompts.Planner.plan`)."""

    owner: int  # id() of the model that made it: a request submitted to two models is planned by each
    prompt: list[int]  # fitted to the context window
    budget: int  # tokens the row may generate: max_new_tokens, raised to the schema's shortest valid answer
    shortest: int  # tokens of the shortest valid answer (0 without a schema)


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "cancelled"
    adapter: str | None


@dataclass(frozen=True)
class ChatResult:
    """A chat turn: text content and/or tool calls, with usage."""

    content: str
    tool_calls: list[ToolCall]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    adapter: str | None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class ChatOptions:
    """The per-call options of one chat turn, the one signature of :meth:`LoRAModel.chat` and its
    async and streaming twins. Framework wings build it with :func:`ragplug.adapters.lora.chat.chat_options`.

    ``tool_choice``: None / "auto" (calls parsed from free text), "none", "required" / "any" / True or a
    tool's name (one grammar-constrained call). ``response_schema``: the answer is JSON valid against it.
    """

    tools: tuple[ToolSpec, ...] = ()
    tool_choice: Any = None
    response_schema: dict[str, Any] | None = None
    adapter: str | None = None
    config: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools", tuple(self.tools or ()))
        if self.config is None:
            object.__setattr__(self, "config", GenerationConfig())
        if not isinstance(self.config, GenerationConfig):
            msg = f"config must be a GenerationConfig, got {type(self.config).__name__}"
            raise InvalidInputError(msg)
