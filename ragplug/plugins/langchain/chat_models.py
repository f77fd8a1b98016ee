"""``ChatLoRA``: a local transformers model with LoRA adapters as a LangChain chat model.

Everything a hosted chat model offers: ``invoke`` / ``stream`` / ``batch`` and their async forms,
``bind_tools`` with ``tool_choice`` ("auto", "none", "any"/"required", a tool name), structured output
(``with_structured_output``, by forced tool call or by JSON schema), usage metadata, stop sequences,
and ``adapter=`` per call (``None`` = the base model). Forced tool calls and structured output are
decoded under a grammar, so they always parse. Concurrent calls share ``generate`` calls (see
:class:`~ragplug.adapters.lora.LoRAModel`). Only glue lives here.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import BaseModel, ConfigDict, Field

from ragplug.adapters.lora import ChatOptions, GenerationConfig, LoadConfig, LoRAModel, chat_options, stop_sequences
from ragplug.adapters.lora import ChatResult as LoRAChatResult
from ragplug.adapters.lora._keywords import LOADING, check_keywords, engine_from, pop_setting
from ragplug.adapters.lora.chat import tool_specs
from ragplug.errors import InvalidInputError

__all__ = ["ChatLoRA"]

logger = logging.getLogger(__name__)

# max_new_tokens is the engine's name (and LlamaIndex's), max_tokens LangChain's: one setting.
_MAX_TOKENS = ("max_new_tokens", "max_tokens")
# The standard parameters LangChain passes to hosted chat models; nothing goes over a network here.
_HOSTED_ONLY = ("timeout", "max_retries", "api_key")
# What LangChain passes with a structured-output call, for tracing only.
_BOOKKEEPING = ("ls_structured_output_format",)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") in ("tool_use", "tool_call"):
            continue  # carried by tool_calls
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            msg = f"ChatLoRA takes text only; got a {kind!r} content block"
            raise InvalidInputError(msg)
    return "".join(parts)


def to_chat_dicts(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as chat-template dicts."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text(m.content)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text(m.content)})
        elif isinstance(m, AIMessage):
            entry: dict[str, Any] = {"role": "assistant", "content": _text(m.content)}
            if m.tool_calls:
                entry["tool_calls"] = [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in m.tool_calls
                ]
            out.append(entry)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "content": _text(m.content), "tool_call_id": m.tool_call_id})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text(m.content)})
        else:
            msg = f"unsupported message type {type(m).__name__}"
            raise InvalidInputError(msg)
    return out


def _openai_tool(tool: Any) -> dict[str, Any]:
    """A tool as an OpenAI function description. A JSON schema dict (a ``title``, no function keys) keeps its
    whole schema as the parameters: LangChain's converter drops what is not an object schema's (an array's
    ``items``, an ``enum``), which would leave the call's arguments unconstrained; ToolSpec refuses it instead."""
    function_keys = {"name", "function", "parameters", "input_schema", "toolSpec"}
    if isinstance(tool, Mapping) and "title" in tool and not function_keys & set(tool):
        parameters = {k: v for k, v in tool.items() if k not in ("title", "description")}
        function = {"name": tool["title"], "description": tool.get("description", ""), "parameters": parameters}
        return {"type": "function", "function": function}
    return convert_to_openai_tool(tool)


def _json_schema(schema: Any) -> dict[str, Any]:
    """The JSON schema a structured output must follow: a dict as given (or an OpenAI function's parameters),
    a pydantic model or TypedDict converted; nothing is dropped, so what compiles is what the user asked for."""
    if isinstance(schema, Mapping):
        function = schema.get("function", schema) if schema.get("type") == "function" else schema
        if "name" in function and isinstance(function.get("parameters"), Mapping):
            return copy.deepcopy(dict(function["parameters"]))
        return copy.deepcopy(dict(schema))
    return convert_to_json_schema(schema)


class ChatLoRA(BaseChatModel):
    """A local LLM with named LoRA adapters that behaves like any LangChain chat model.

    Build it with ``ChatLoRA(base="Qwen/Qwen2.5-0.5B-Instruct", adapters={"med": "path/to/adapter"})`` (hub
    ids or folders; ``device=``, ``dtype=`` or a whole ``load=LoadConfig(...)`` say how) or around an already
    loaded :class:`~ragplug.adapters.lora.LoRAModel` with ``ChatLoRA(llm=...)``. The keywords are the same as
    :class:`~ragplug.plugins.llamaindex.LoRALLM`'s. Choose the adapter at construction (``adapter=``) or per call
    (``model.invoke(msgs, adapter="med")``).

    Generation settings, at construction or per call (a per-call value wins): ``max_tokens`` (or
    ``max_new_tokens``; passing both is an error), ``temperature``, ``top_p``, ``stop``. ``streaming=True`` makes
    ``invoke`` stream internally, as with hosted models. ``timeout``, ``max_retries`` and ``api_key``, which
    LangChain code passes to hosted chat models, are accepted so that such code runs, and have no effect:
    nothing goes over a network. Any other keyword is refused with :class:`~ragplug.errors.InvalidInputError`.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    llm: LoRAModel
    adapter: str | None = Field(default=None, description="default adapter; None = the base model")
    max_new_tokens: int = Field(default=256, description="upper bound on generated tokens per call (max_tokens)")
    temperature: float = Field(default=0.0, description="0 = greedy decoding")
    top_p: float = Field(default=1.0, description="nucleus sampling mass (with temperature > 0)")
    stop: list[str] | None = Field(default=None, description="stop sequences; one string is one stop sequence")
    model_name: str = ""
    streaming: bool = Field(default=False, description="invoke() streams internally (LangChain's convention)")

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
        max_tokens: int | None = None,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # Checked before pydantic and before the (slow) load, so that mistakes raise ragplug errors at once.
        check_keywords("ChatLoRA", kwargs, _accepted_keywords())
        for name in _HOSTED_ONLY:
            if name in kwargs:
                logger.debug("ChatLoRA runs locally: %s=%r has no effect", name, kwargs.pop(name))
        tokens = pop_setting({"max_new_tokens": max_new_tokens, "max_tokens": max_tokens}, _MAX_TOKENS, 256)
        settings = GenerationConfig(
            tokens,
            0.0 if temperature is None else temperature,
            1.0 if top_p is None else top_p,
            stop_sequences(stop),
        )
        llm = engine_from(
            "ChatLoRA", base=base, adapters=adapters, device=device, dtype=dtype, load=load, llm=llm, adapter=adapter
        )
        kwargs.setdefault("model_name", llm.base_name)
        kwargs.update(
            llm=llm,
            adapter=adapter,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            stop=None if stop is None else list(settings.stop),
        )
        super().__init__(**kwargs)

    @property
    def max_tokens(self) -> int:
        """LangChain's name for :attr:`max_new_tokens`."""
        return self.max_new_tokens

    @property
    def _llm_type(self) -> str:
        return "ragplug-lora"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "adapter": self.adapter,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        """LangChain's tracing parameters, per-call values first."""
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "ragplug"
        tokens = kwargs.get("max_new_tokens", kwargs.get("max_tokens"))
        params["ls_max_tokens"] = tokens if isinstance(tokens, int) else self.max_new_tokens
        if "ls_stop" not in params and self.stop:
            params["ls_stop"] = list(self.stop)
        return params

    # -- request assembly -----------------------------------------------------------------------------
    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> ChatOptions:
        """The engine's options for one call: its keywords over this model's settings (``stop``, LangChain's
        own argument, wins over a ``stop`` keyword)."""
        given = dict(kwargs) if stop is None else {**kwargs, "stop": stop}
        defaults = ChatOptions(
            adapter=self.adapter,
            config=GenerationConfig(self.max_new_tokens, self.temperature, self.top_p, stop_sequences(self.stop)),
        )
        return chat_options(given, defaults, owner="ChatLoRA", token_names=_MAX_TOKENS, ignore=_BOOKKEEPING)

    def _message(self, result: LoRAChatResult) -> AIMessage:
        return AIMessage(
            content=result.content,
            tool_calls=[
                {"name": c.name, "args": c.arguments, "id": c.id, "type": "tool_call"} for c in result.tool_calls
            ],
            usage_metadata={
                "input_tokens": result.prompt_tokens,
                "output_tokens": result.completion_tokens,
                "total_tokens": result.total_tokens,
            },
            response_metadata=self._metadata(result),
        )

    def _metadata(self, result: LoRAChatResult) -> dict[str, Any]:
        return {
            "finish_reason": result.finish_reason,
            "adapter": result.adapter,
            "model_name": self.model_name,
            "model_provider": "ragplug",
        }

    def _last_chunk(self, result: LoRAChatResult) -> AIMessageChunk:
        return AIMessageChunk(
            content="",
            tool_call_chunks=[
                tool_call_chunk(name=c.name, args=json.dumps(c.arguments), id=c.id, index=i)
                for i, c in enumerate(result.tool_calls)
            ],
            usage_metadata={
                "input_tokens": result.prompt_tokens,
                "output_tokens": result.completion_tokens,
                "total_tokens": result.total_tokens,
            },
            response_metadata=self._metadata(result),
            chunk_position="last",
        )

    # -- BaseChatModel hooks --------------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = self.llm.chat(to_chat_dicts(messages), self._options(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        result = await self.llm.achat(to_chat_dicts(messages), self._options(stop, kwargs))
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for item in self.llm.stream_chat(to_chat_dicts(messages), self._options(stop, kwargs)):
            if isinstance(item, str):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
                if run_manager:
                    run_manager.on_llm_new_token(item, chunk=chunk)
            else:
                chunk = ChatGenerationChunk(message=self._last_chunk(item))
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        async for item in self.llm.astream_chat(to_chat_dicts(messages), self._options(stop, kwargs)):
            if isinstance(item, str):
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=item))
                if run_manager:
                    await run_manager.on_llm_new_token(item, chunk=chunk)
            else:
                chunk = ChatGenerationChunk(message=self._last_chunk(item))
            yield chunk

    # -- tools and structured output ------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: dict[str, Any] | str | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice`` "any"/"required"/a name forces a (grammar-constrained) call."""
        formatted = [_openai_tool(t) for t in tools]
        specs = tool_specs(formatted)  # validates names and schemas now, not at the first call
        if tool_choice is not None and tool_choice not in ("auto", "none", "any", "required", True, False):
            names = {s.name for s in specs}
            name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else tool_choice
            if name not in names:
                msg = f"tool_choice {tool_choice!r} names no bound tool; bound: {sorted(names)}"
                raise InvalidInputError(msg)
        for spec in specs:
            self.llm.grammar().compile(spec.parameters)  # a schema the compiler rejects fails here
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | BaseModel]:
        """Structured output that always parses: by a forced tool call (default), by the JSON schema of
        ``schema`` (``method="json_schema"``), or as any JSON object (``method="json_mode"``)."""
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        if method not in ("json_schema", "json_mode"):
            msg = f"method must be 'function_calling', 'json_schema' or 'json_mode', got {method!r}"
            raise InvalidInputError(msg)
        json_schema = _json_schema(schema) if method == "json_schema" else {"type": "object"}
        self.llm.grammar().shortest(json_schema)  # a schema the compiler rejects, or none fits, fails here
        llm = self.bind(response_schema=json_schema, ls_structured_output_format={"schema": json_schema})
        parser: Runnable[Any, Any] = (
            PydanticOutputParser(pydantic_object=schema)
            if isinstance(schema, type) and is_basemodel_subclass(schema)
            else JsonOutputParser()
        )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None)
        return RunnableMap(raw=llm) | parsed


def _accepted_keywords() -> set[str]:
    """ChatLoRA's keywords: its own (loading and generation settings), BaseChatModel's fields, hosted-only ones."""
    own = {*LOADING, "llm", "adapter", *_MAX_TOKENS, "temperature", "top_p", "stop"}
    return own | set(ChatLoRA.model_fields) | set(_HOSTED_ONLY)
