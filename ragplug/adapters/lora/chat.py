"""Chat turns over the engine: one entry point, :class:`~.requests.ChatOptions`, for every caller.

A chat turn is messages + :class:`ChatOptions` (tools, tool choice, response schema, adapter, generation
config). :func:`chat_options` builds the options from a framework call's keywords — the names LangChain and
LlamaIndex users pass (``max_tokens``, ``stop``, ``adapter``, ``tools``, ...) over the wing's own defaults — so
the LangChain and LlamaIndex wings and the evaluation harness read per-call options the same way.

:class:`Turn` is one turn in flight: the generation request it became, and how its raw text becomes a
:class:`~.requests.ChatResult` (free text, tool calls parsed from it in "auto" mode, or one
grammar-constrained JSON object for a forced tool call or a response schema). :func:`drain` and
:func:`adrain` stream a turn's text deltas, then its result.
"""

from __future__ import annotations

import asyncio
import json
import queue
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any

from ragplug.adapters.lora.config import GenerationConfig, pop_setting, stop_sequences
from ragplug.adapters.lora.requests import ChatOptions, ChatResult, GenerationRequest, GenerationResult
from ragplug.adapters.lora.tools import ToolCall, ToolSpec, forced_call_schema, parse_tool_calls, resolve_tool_choice
from ragplug.errors import InvalidInputError

__all__ = ["Turn", "adrain", "chat_options", "drain", "tool_specs"]

_OPTION_NAMES = ("tools", "tool_choice", "response_schema", "adapter", "config")


def tool_specs(tools: Sequence[Any] | None) -> tuple[ToolSpec, ...]:
    """Tools given as :class:`ToolSpec` or OpenAI-style function dicts (``{"type": "function", "function":
    {...}}`` or the function dict itself), checked by ToolSpec."""
    specs = []
    for tool in tools or []:
        if isinstance(tool, ToolSpec):
            specs.append(tool)
            continue
        if not isinstance(tool, Mapping):
            msg = f"tools must be ToolSpec or OpenAI-style dicts, got {type(tool).__name__}"
            raise InvalidInputError(msg)
        fn = tool.get("function", tool)
        specs.append(ToolSpec(fn.get("name"), fn.get("description") or "", fn.get("parameters") or {"type": "object"}))
    return tuple(specs)


def chat_options(
    given: Mapping[str, Any],
    defaults: ChatOptions,
    *,
    owner: str,
    token_names: Sequence[str] = ("max_new_tokens", "max_tokens"),
    single_stop: bool = True,
    ignore: Sequence[str] = (),
) -> ChatOptions:
    """The options of one call: ``given`` (a framework call's keywords) over ``defaults`` (the wing's settings).

    Keywords: ``adapter``; the token budget under any of ``token_names``; ``temperature``; ``top_p``;
    ``stop`` (one string is one stop sequence when ``single_stop``, else refused with a hint); ``tools``
    (ToolSpec or OpenAI-style dicts); ``tool_choice``; ``response_schema``. Names in ``ignore`` are dropped
    (framework bookkeeping such as LangChain's ``ls_structured_output_format``); any other name raises
    :class:`~ragplug.errors.InvalidInputError` naming ``owner``.
    """
    rest = dict(given)
    for name in ignore:
        rest.pop(name, None)
    base = defaults.config
    stop: Any = rest.pop("stop", None)
    stop = base.stop if stop is None else (stop_sequences(stop) if single_stop or not isinstance(stop, str) else stop)
    config = GenerationConfig(
        max_new_tokens=pop_setting(rest, token_names, base.max_new_tokens),
        temperature=pop_setting(rest, ("temperature",), base.temperature),
        top_p=pop_setting(rest, ("top_p",), base.top_p),
        stop=stop,
    )
    options = ChatOptions(
        tools=tool_specs(rest.pop("tools", None)) or defaults.tools,
        tool_choice=rest.pop("tool_choice", defaults.tool_choice),
        response_schema=rest.pop("response_schema", defaults.response_schema),
        adapter=rest.pop("adapter", defaults.adapter),
        config=config,
    )
    if rest:
        msg = f"unexpected arguments for {owner}: {sorted(rest)}"
        raise InvalidInputError(msg)
    return options


def as_options(options: ChatOptions | None, keywords: Mapping[str, Any]) -> ChatOptions:
    """:meth:`LoRAModel.chat`'s options: a :class:`ChatOptions`, or its fields as keywords (not both)."""
    unknown = set(keywords) - set(_OPTION_NAMES)
    if unknown:
        msg = f"unexpected arguments {sorted(unknown)}"
        raise InvalidInputError(msg)
    if options is None:
        return ChatOptions(**keywords)
    if not isinstance(options, ChatOptions):
        msg = f"options must be a ChatOptions, got {type(options).__name__}"
        raise InvalidInputError(msg)
    return replace(options, **keywords) if keywords else options


@dataclass(frozen=True)
class Turn:
    """One chat turn in flight: its request, and how its answer is read."""

    request: GenerationRequest
    mode: str  # "none" | "auto" | "required" (see tools.resolve_tool_choice)
    allowed: list[ToolSpec]
    response_schema: dict[str, Any] | None

    @classmethod
    def build(
        cls,
        render: Callable[[Sequence[Mapping[str, Any]], Sequence[ToolSpec] | None], list[int]],
        messages: Sequence[Mapping[str, Any]],
        options: ChatOptions,
        on_text: Callable[[str], None] | None,
    ) -> Turn:
        mode, allowed = resolve_tool_choice(options.tool_choice, list(options.tools))
        schema = forced_call_schema(allowed) if mode == "required" else options.response_schema
        prompt = render(messages, allowed if mode != "none" else None)
        request = GenerationRequest(
            prompt_ids=prompt, adapter=options.adapter, config=options.config, schema=schema, on_text=on_text
        )
        return cls(request, mode, allowed, options.response_schema)

    def result(self, result: GenerationResult) -> ChatResult:
        content, calls = result.text, []
        if self.mode == "required" or self.response_schema is not None:
            try:
                obj = json.loads(result.text)
            except ValueError as err:
                if result.finish_reason == "stop":  # the grammar let through what JSON forbids: a bug to report
                    msg = f"the constrained answer is not valid JSON ({err}): {result.text[:200]!r}"
                else:
                    msg = (
                        f"the constrained answer did not finish within max_new_tokens="
                        f"{result.completion_tokens} ({result.finish_reason}); raise max_new_tokens"
                    )
                raise InvalidInputError(msg) from err
            if self.mode == "required":
                calls = [ToolCall(obj["name"], obj["arguments"])]
                content = ""
        elif self.mode == "auto":
            content, calls = parse_tool_calls(result.text, [t.name for t in self.allowed])
        return ChatResult(
            content, calls, result.prompt_tokens, result.completion_tokens, result.finish_reason, result.adapter
        )

    def visible(self, text: str) -> str:
        """The part of the answer so far that is streamed as text."""
        if self.mode == "required" or self.response_schema is not None:
            return ""
        return _before_tool_call(text) if self.mode == "auto" else text


def drain(turn: Turn, future: Future[GenerationResult], deltas: queue.Queue[str | None]) -> Generator[str | ChatResult]:
    """Yield a turn's visible text deltas, then its result; stopping early cancels its row."""
    streamed = ""
    try:
        while (delta := deltas.get()) is not None:
            shown = turn.visible(streamed + delta)
            if len(shown) > len(streamed):
                yield shown[len(streamed) :]
                streamed = shown
        yield turn.result(future.result())
    finally:
        turn.request.cancel.set()  # no-op when finished; frees the row when the consumer stopped early


async def adrain(
    turn: Turn, future: Future[GenerationResult], deltas: asyncio.Queue[str | None]
) -> AsyncGenerator[str | ChatResult]:
    """Async :func:`drain`."""
    streamed = ""
    try:
        while (delta := await deltas.get()) is not None:
            shown = turn.visible(streamed + delta)
            if len(shown) > len(streamed):
                yield shown[len(streamed) :]
                streamed = shown
        yield turn.result(await asyncio.wrap_future(future))
    finally:
        turn.request.cancel.set()


def _before_tool_call(text: str) -> str:
    """Text up to where a ``<tool_call>`` starts (or may be starting)."""
    cut = text.find("<tool_call>")
    if cut >= 0:
        return text[:cut]
    for n in range(len("<tool_call>") - 1, 0, -1):
        if text.endswith("<tool_call>"[:n]):
            return text[:-n]
    return text
