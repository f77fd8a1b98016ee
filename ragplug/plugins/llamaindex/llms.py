"""``LoRALLM``: a local transformers model with LoRA adapters as a LlamaIndex function-calling LLM.

Everything LlamaIndex asks of a hosted LLM: ``chat`` / ``complete`` / ``stream_chat`` /
``stream_complete`` and their async forms (served by the engine's own async API, never by a nested
event loop), tool calling for agents and structured programs (``chat_with_tools``,
``get_tool_calls_from_response``, ``tool_required`` / ``tool_choice``), token usage, and ``adapter=``
per call (``None`` = the base model). Forced tool calls are decoded under a grammar, so they always
parse. Only glue lives here; see :class:`~ragplug.adapters.lora.LoRAModel` for the engine.

Tool calls in a response are carried the two ways LlamaIndex code reads them: ``ToolCallBlock``s in
``message.blocks`` and OpenAI-style dicts in ``message.additional_kwargs["tool_calls"]``. Usage is in
``response.additional_kwargs`` (``prompt_tokens``, ``completion_tokens``, ``total_tokens``) and in
``response.raw["usage"]``, where LlamaIndex's token counter looks.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    CachePoint,
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection

from ragplug.adapters.lora import (
    ChatOptions,
    GenerationConfig,
    LoadConfig,
    LoRAModel,
    ToolSpec,
    chat_options,
    stop_sequences,
)
from ragplug.adapters.lora import ChatResult as LoRAChatResult
from ragplug.adapters.lora._keywords import LOADING, check_keywords, engine_from, pop_setting
from ragplug.errors import InvalidInputError, UnknownAdapterError

if TYPE_CHECKING:
    from llama_index.core.tools.types import BaseTool

__all__ = ["LoRALLM", "to_chat_dicts"]

# max_new_tokens is the engine's name (and HuggingFaceLLM's), max_tokens OpenAI's and LangChain's, num_output
# LLMMetadata's: one setting.
_MAX_TOKENS = ("max_new_tokens", "max_tokens", "num_output")

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}


# -- messages and tool calls ------------------------------------------------------------------------
def _arguments(value: Any, name: str) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except ValueError as err:
            msg = f"the arguments of the call to {name!r} are not valid JSON: {value!r}"
            raise InvalidInputError(msg) from err
    if not isinstance(value, Mapping):
        msg = f"the arguments of the call to {name!r} must be a JSON object, got {value!r}"
        raise InvalidInputError(msg)
    return dict(value)


def _call(item: Any) -> tuple[str, str, dict[str, Any]]:
    """``(id, name, arguments)`` of a tool call in any of the shapes LlamaIndex messages carry."""
    if isinstance(item, ToolCallBlock):
        return item.tool_call_id or "", item.tool_name, _arguments(item.tool_kwargs, item.tool_name)
    if isinstance(item, ToolSelection):
        return item.tool_id, item.tool_name, dict(item.tool_kwargs)
    if hasattr(item, "model_dump"):  # e.g. an OpenAI ChatCompletionMessageToolCall from another LLM
        item = item.model_dump()
    if isinstance(item, Mapping):
        fn = item.get("function") or item
        name = fn.get("name")
        if isinstance(name, str) and name:
            args = fn.get("arguments", fn.get("args", {}))
            return str(item.get("id") or ""), name, _arguments(args, name)
    msg = f"cannot read a tool call from {item!r}"
    raise InvalidInputError(msg)


def _calls(message: ChatMessage) -> list[tuple[str, str, dict[str, Any]]]:
    """The tool calls of a message: its ``ToolCallBlock``s, else ``additional_kwargs["tool_calls"]``."""
    blocks = [_call(b) for b in message.blocks if isinstance(b, ToolCallBlock)]
    return blocks or [_call(c) for c in message.additional_kwargs.get("tool_calls") or []]


def _text(message: ChatMessage) -> str:
    parts = []
    for block in message.blocks:
        if isinstance(block, TextBlock):
            parts.append(block.text)
        elif not isinstance(block, ToolCallBlock | ThinkingBlock | CachePoint):
            msg = f"LoRALLM takes text only; got a {block.block_type!r} block in a {message.role.value} message"
            raise InvalidInputError(msg)
    return "\n".join(parts)  # as ChatMessage.content joins text blocks


def to_chat_dicts(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex messages as the chat-template dicts :class:`~ragplug.adapters.lora.LoRAModel` takes."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = _ROLES.get(MessageRole(message.role))
        if role is None:
            msg = f"unsupported message role {message.role!r}; use one of {sorted(r.value for r in _ROLES)}"
            raise InvalidInputError(msg)
        entry: dict[str, Any] = {"role": role, "content": _text(message)}
        if role == "assistant":
            calls = _calls(message)
            if calls:
                entry["tool_calls"] = [
                    {"id": id_, "type": "function", "function": {"name": name, "arguments": args}}
                    for id_, name, args in calls
                ]
        elif role == "tool" and message.additional_kwargs.get("tool_call_id"):
            entry["tool_call_id"] = str(message.additional_kwargs["tool_call_id"])
        out.append(entry)
    return out


def _tool_dict(tool: BaseTool) -> dict[str, Any]:
    """A LlamaIndex tool as an OpenAI-style function description (checked by :class:`ToolSpec` now).

    The parameters are the tool's whole JSON schema: ``ToolMetadata.get_parameters_dict`` keeps only
    ``type``/``properties``/``required``/``$defs``, which drops ``additionalProperties`` and turns an array or
    enum output into ``{"type": "array"}`` — arguments the grammar would then not constrain.
    """
    meta = tool.metadata
    if not meta.name:
        msg = f"tool {tool!r} has no name; give it one in its ToolMetadata"
        raise InvalidInputError(msg)
    if meta.fn_schema is None:
        parameters = meta.get_parameters_dict()
    else:
        schema = meta.fn_schema.model_json_schema()
        parameters = {k: v for k, v in schema.items() if k not in ("title", "description")}
    return ToolSpec(meta.name, meta.description or "", parameters).to_openai()


def _assistant_message(content: str, calls: Sequence[tuple[str, str, dict[str, Any]]]) -> ChatMessage:
    blocks: list[Any] = [TextBlock(text=content)] if content or not calls else []
    blocks += [ToolCallBlock(tool_call_id=id_, tool_name=name, tool_kwargs=args) for id_, name, args in calls]
    extra: dict[str, Any] = {}
    if calls:
        extra["tool_calls"] = [
            {"id": id_, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for id_, name, args in calls
        ]
    return ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)


def _usage(result: LoRAChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.total_tokens,
    }


# -- the LLM ------------------------------------------------------------------------------------------
class LoRALLM(FunctionCallingLLM):
    """A local LLM with named LoRA adapters that behaves like any LlamaIndex function-calling LLM.

    Build it with ``LoRALLM(base="Qwen/Qwen2.5-0.5B-Instruct", adapters={"med": "path/to/adapter"})`` (hub ids
    or folders; ``device=``, ``dtype=`` or a whole ``load=LoadConfig(...)`` say how) or around an already loaded
    :class:`~ragplug.adapters.lora.LoRAModel` with ``LoRALLM(llm=...)``; ``LoRALLM.from_pretrained(base, adapters)``
    is the same as ``LoRALLM(base=base, adapters=adapters)``. The keywords are the same as
    :class:`~ragplug.plugins.langchain.ChatLoRA`'s. Choose the adapter at construction (``adapter=``) or per call
    (``llm.chat(messages, adapter="med")``).

    Generation settings, at construction or per call (a per-call value wins): ``max_new_tokens`` (or
    ``max_tokens``, or ``num_output`` as in LlamaIndex's metadata; passing two of them is an error),
    ``temperature``, ``top_p``, ``stop`` (a list of strings). Per call also ``tools``, ``tool_choice`` and
    ``response_schema``. Any other keyword is refused with :class:`~ragplug.errors.InvalidInputError`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    llm: LoRAModel = Field(exclude=True, description="the engine: base model, adapters, scheduler")
    adapter: str | None = Field(default=None, description="default adapter; None = the base model")
    max_new_tokens: int = Field(default=256, description="upper bound on generated tokens per call")
    temperature: float = Field(default=0.0, description="0 = greedy decoding")
    top_p: float = Field(default=1.0, description="nucleus sampling mass (with temperature > 0)")
    stop: list[str] | None = Field(default=None, description="strings that end the answer (not included)")
    context_window: int = Field(description="prompt + answer token budget; the engine's context window")
    model_name: str = Field(default="", description="reported in metadata; the base model's name")

    def __init__(
        self,
        *,
        base: str | Path | None = None,
        adapters: Mapping[str, str | Path] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        load: LoadConfig | None = None,
        llm: LoRAModel | None = None,
        adapter: str | None = None,
        max_new_tokens: int | None = None,
        max_tokens: int | None = None,
        num_output: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] | None = None,
        context_window: int | None = None,
        model_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Checked here, before pydantic and before the (slow) load, so that mistakes raise ragplug errors at once.
        check_keywords("LoRALLM", kwargs, _accepted_keywords())
        given = {"max_new_tokens": max_new_tokens, "max_tokens": max_tokens, "num_output": num_output}
        settings = _generation(
            pop_setting(given, _MAX_TOKENS, 256),
            0.0 if temperature is None else temperature,
            1.0 if top_p is None else top_p,
            stop,
        )
        llm = engine_from(
            "LoRALLM", base=base, adapters=adapters, device=device, dtype=dtype, load=load, llm=llm, adapter=adapter
        )
        window = llm.context_window if context_window is None else context_window
        tokens = settings.max_new_tokens
        if isinstance(window, bool) or not isinstance(window, int) or not tokens < window <= llm.context_window:
            msg = (
                f"context_window must be an integer above max_new_tokens={tokens} and at most the "
                f"model's {llm.context_window}, got {context_window!r}"
            )
            raise InvalidInputError(msg)
        super().__init__(
            llm=llm,
            adapter=adapter,
            max_new_tokens=tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop=None if stop is None else list(settings.stop),
            context_window=window,
            model_name=model_name if model_name is not None else llm.base_name,
            **kwargs,
        )

    @classmethod
    def from_pretrained(
        cls,
        base: str | Path,
        adapters: Mapping[str, str | Path] | None = None,
        load: LoadConfig | None = None,
        **kwargs: Any,
    ) -> LoRALLM:
        """``LoRALLM(base=base, adapters=adapters, load=load, **kwargs)``: load ``base`` (hub id or folder) and
        ``adapters`` (``{name: folder or hub id}``) and wrap them."""
        return cls(base=base, adapters=adapters, load=load, **kwargs)

    @property
    def max_tokens(self) -> int:
        """Another name for :attr:`max_new_tokens`."""
        return self.max_new_tokens

    @classmethod
    def class_name(cls) -> str:
        return "LoRALLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.model_name,
        )

    # -- request assembly -----------------------------------------------------------------------------
    def _options(self, kwargs: Mapping[str, Any]) -> ChatOptions:
        """The engine's options for one call: its keywords over this LLM's settings; an unknown adapter or
        keyword raises at the call (before a stream is returned)."""
        defaults = ChatOptions(
            adapter=self.adapter,
            config=GenerationConfig(self.max_new_tokens, self.temperature, self.top_p, tuple(self.stop or ())),
        )
        options = chat_options(kwargs, defaults, owner="LoRALLM", token_names=_MAX_TOKENS, single_stop=False)
        _check_adapter(self.llm, options.adapter)
        return options

    def _prompt_messages(self, prompt: str, formatted: bool) -> list[dict[str, Any]]:
        if not formatted and self.completion_to_prompt is not None:
            prompt = self.completion_to_prompt(prompt)
        return [{"role": "user", "content": prompt}]

    def _response(self, result: LoRAChatResult, delta: str | None = None) -> ChatResponse:
        calls = [(c.id, c.name, c.arguments) for c in result.tool_calls]
        raw = {
            "content": result.content,
            "tool_calls": _assistant_message("", calls).additional_kwargs.get("tool_calls", []),
            "finish_reason": result.finish_reason,
            "adapter": result.adapter,
            "model": self.model_name,
            "usage": _usage(result),
        }
        return ChatResponse(
            message=_assistant_message(result.content, calls), raw=raw, delta=delta, additional_kwargs=_usage(result)
        )

    @staticmethod
    def _completion(response: ChatResponse) -> CompletionResponse:
        return CompletionResponse(
            text=response.message.content or "",
            delta=response.delta,
            raw=response.raw,
            additional_kwargs=response.additional_kwargs,
        )

    def _stream(self, stream: Iterator[str | LoRAChatResult]) -> ChatResponseGen:
        """Chat responses from the engine's stream: a chunk per text delta, then the full message."""
        text = ""
        try:
            for item in stream:
                if isinstance(item, str):
                    text += item
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=item)
                else:
                    rest = item.content[len(text) :] if item.content.startswith(text) else ""
                    yield self._response(item, delta=rest)
        finally:
            if isinstance(stream, Generator):
                stream.close()  # cancels the request if the consumer stopped early

    async def _astream(self, stream: AsyncIterator[str | LoRAChatResult]) -> ChatResponseAsyncGen:
        text = ""
        try:
            async for item in stream:
                if isinstance(item, str):
                    text += item
                    yield ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=item)
                else:
                    rest = item.content[len(text) :] if item.content.startswith(text) else ""
                    yield self._response(item, delta=rest)
        finally:
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()

    # -- chat -----------------------------------------------------------------------------------------
    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._response(self.llm.chat(to_chat_dicts(messages), self._options(kwargs)))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._response(await self.llm.achat(to_chat_dicts(messages), self._options(kwargs)))

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        chat, options = to_chat_dicts(messages), self._options(kwargs)  # bad input fails here, not mid-stream
        return self._stream(self.llm.stream_chat(chat, options))

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        chat, options = to_chat_dicts(messages), self._options(kwargs)
        return self._astream(self.llm.astream_chat(chat, options))

    # -- completion (a single user turn through the chat template) ------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = self.llm.chat(self._prompt_messages(prompt, formatted), self._options(kwargs))
        return self._completion(self._response(result))

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = await self.llm.achat(self._prompt_messages(prompt, formatted), self._options(kwargs))
        return self._completion(self._response(result))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        chat, options = self._prompt_messages(prompt, formatted), self._options(kwargs)
        return (self._completion(r) for r in self._stream(self.llm.stream_chat(chat, options)))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        chat, options = self._prompt_messages(prompt, formatted), self._options(kwargs)
        stream = self._astream(self.llm.astream_chat(chat, options))

        async def completions() -> CompletionResponseAsyncGen:
            async for response in stream:
                yield self._completion(response)

        return completions()

    # -- tools ----------------------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Chat keywords for a turn with ``tools``.

        ``tool_choice`` ("auto", "none", "required"/"any" or a tool's name) wins over ``tool_required``,
        which maps to "required". A required call is one grammar-constrained call, so it always parses.
        """
        messages = list(chat_history or [])
        if user_msg is not None:
            messages.append(
                ChatMessage(role=MessageRole.USER, content=user_msg) if isinstance(user_msg, str) else user_msg
            )
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        return {"messages": messages, "tools": [_tool_dict(t) for t in tools], "tool_choice": tool_choice, **kwargs}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        """Keep only the first tool call unless parallel calls are allowed."""
        calls = _calls(response.message)
        if not allow_parallel_tool_calls and len(calls) > 1:
            response.message = _assistant_message(_text(response.message), calls[:1])
        return response

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        """The tool calls of a (chat or final streamed) response as ``ToolSelection``s."""
        calls = _calls(response.message)
        if not calls and error_on_no_tool_call:
            msg = f"expected a tool call in the response, got none; the model answered {response.message.content!r}"
            raise InvalidInputError(msg)
        return [ToolSelection(tool_id=id_, tool_name=name, tool_kwargs=args) for id_, name, args in calls]


def _generation(max_new_tokens: Any, temperature: Any, top_p: Any, stop: Any) -> GenerationConfig:
    """The settings checked; a single stop string is refused with a hint (GenerationConfig's), never split."""
    stops: Any = stop if isinstance(stop, str) else stop_sequences(stop)
    return GenerationConfig(max_new_tokens, temperature, top_p, stops)


def _accepted_keywords() -> set[str]:
    """LoRALLM's keywords: its own (loading and generation settings) and LlamaIndex's LLM fields."""
    return {*LOADING, "llm", "adapter", *_MAX_TOKENS, "temperature", "top_p", "stop"} | set(LoRALLM.model_fields)


def _check_adapter(llm: LoRAModel, adapter: Any) -> None:
    if adapter is not None and adapter not in llm.adapters:
        msg = f"unknown adapter {adapter!r}; loaded adapters: {sorted(llm.adapters)}"
        raise UnknownAdapterError(msg)
