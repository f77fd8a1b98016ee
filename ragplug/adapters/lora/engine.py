"""A local causal LM with named LoRA adapters, served in shared ``generate`` calls.

:class:`LoRAModel` is the public facade over the engine's parts, one module per job:

* :mod:`.loading` — the base model (transformers) on its device, and its token facts;
* :mod:`.routing` — the named adapters (peft): load, check, remove, merge, and how a mixed batch's rows
  reach their adapters (segmented LoRA, peft's ``adapter_names=`` loop, or one call per DoRA adapter);
* :mod:`.prompts` — chat messages rendered to token ids; a request checked and fitted to the context window;
* :mod:`.decoding` — one ``generate`` call with per-row stops, budgets, grammars, streams and cancellation;
* :mod:`.scheduler` — the thread that gathers concurrent requests (threads or asyncio) into batches;
* :mod:`.chat` — chat turns: :class:`~.requests.ChatOptions` in, :class:`~.requests.ChatResult` out.

Every request names its adapter (``None`` = the base model). Requests arriving together are served in one
``generate`` call per sampling setting, whatever their adapters (mixed-adapter batches).

Failures stay with their request. A request is checked once, at :meth:`LoRAModel.submit` (token ids,
schema, context length); what depends on the model's state (its adapter still loaded, not merged away)
is checked again per row when its batch is served, and a streaming callback that raises (a consumer
gone away) ends only its own row. The other rows of the batch are served as if it were not there.
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from ragplug._extras import require
from ragplug.adapters.lora.chat import Turn, adrain, as_options, drain
from ragplug.adapters.lora.config import LoadConfig
from ragplug.adapters.lora.decoding import Decoder
from ragplug.adapters.lora.grammar import GrammarBackend
from ragplug.adapters.lora.loading import load_base
from ragplug.adapters.lora.prompts import Planner, render_prompt_ids
from ragplug.adapters.lora.requests import ChatOptions, ChatResult, GenerationRequest, GenerationResult, Plan
from ragplug.adapters.lora.routing import Adapters
from ragplug.adapters.lora.scheduler import Scheduler
from ragplug.adapters.lora.tools import ToolSpec
from ragplug.errors import AdapterError, InvalidInputError

__all__ = ["ChatOptions", "ChatResult", "GenerationRequest", "GenerationResult", "LoRAModel"]


class LoRAModel:
    """A base causal LM plus named LoRA adapters, with batched, streamed and constrained generation.

    Args:
        base: hub id or local folder of the base model.
        adapters: ``{name: folder or hub id}`` loaded at start.
        load: :class:`LoadConfig` (dtype, device / device_map, 4/8-bit, batching, truncation policy).
    """

    def __init__(
        self,
        base: str | Path,
        adapters: Mapping[str, str | Path] | None = None,
        *,
        load: LoadConfig | None = None,
    ) -> None:
        require("torch", "lora")
        require("transformers", "lora")
        require("peft", "lora")
        self.load_config = load = load or LoadConfig()
        self.base_name = str(base)
        loaded = load_base(base, load)
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.vocab_rows = loaded.vocab_rows
        self.context_window = loaded.context_window
        self.eos_token_ids = loaded.eos_token_ids
        self.pad_token_id = loaded.pad_token_id
        self._grammar: GrammarBackend | None = None
        self._adapters = Adapters(loaded.model, self.base_name)
        self._lock = self._adapters.lock  # held by every adapter change and every batch
        self._planner = Planner(
            owner=id(self),
            vocab_rows=self.vocab_rows,
            context_window=self.context_window,
            truncation=lambda: self.load_config.truncation,
            grammar=self.grammar,
        )
        self._decoder = Decoder(
            tokenizer=self.tokenizer,
            device=self.device,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            context_window=self.context_window,
            grammar=self.grammar,
        )
        # through a lambda, so that the scheduler calls whatever _serve_batch is now (tests wrap it)
        self._scheduler = Scheduler(lambda requests: self._serve_batch(requests), lambda: self.load_config)
        for name, path in (adapters or {}).items():
            self.add_adapter(name, path)

    @property
    def model(self) -> Any:
        """The served transformers model (a peft ``PeftModel`` once an adapter is loaded)."""
        return self._adapters.model

    # -- adapters (see .routing) ----------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return self._adapters.names

    @property
    def merged(self) -> str | None:
        """The adapter merged into the base weights, if any (see :meth:`merge`)."""
        return self._adapters.merged

    @property
    def _segmented(self) -> Any:
        return self._adapters.segmented

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under ``name``; checks it fits this base model before loading it.

        All or nothing: if the adapter cannot be loaded, the model is left as it was and ``name`` stays free.
        """
        self._adapters.add(name, path)

    def remove_adapter(self, name: str) -> None:
        self._adapters.remove(name)

    def merge(self, name: str) -> None:
        """Merge ``name`` into the base weights for single-adapter serving (faster per token).

        While merged, only requests for ``name`` are served; call :meth:`unmerge` to serve the others.
        """
        self._adapters.merge(name)

    def unmerge(self) -> None:
        self._adapters.unmerge()

    # -- prompts (see .prompts) -----------------------------------------------------------------------
    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec] | None = None) -> list[int]:
        """Token ids of a chat prompt (see :func:`~.prompts.render_prompt_ids`)."""
        return render_prompt_ids(self.tokenizer, messages, tools)

    def grammar(self) -> GrammarBackend:
        if self._grammar is None:
            vocab = int(self.model.config.vocab_size if hasattr(self.model, "config") else len(self.tokenizer))
            self._grammar = GrammarBackend(
                self.tokenizer, max(vocab, len(self.tokenizer)), self.eos_token_ids, self.context_window
            )
        return self._grammar

    # -- serving a batch (see .decoding) --------------------------------------------------------------
    def generate_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Serve ``requests`` together (they must share a sampling setting): one ``generate`` call, except for
        DoRA adapters without the segmented path, which peft cannot mix (one call per adapter then).

        Raises the error of the first request that failed (the others were served all the same).
        """
        outcomes = self._serve_batch(requests)
        results = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    def _serve_batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult | BaseException]:
        """:meth:`generate_batch` with an outcome per request: its result, or the error that failed it alone."""
        if not requests:
            return []
        keys = {getattr(r.config, "sampling_key", None) for r in requests}
        if len(keys) > 1:
            msg = "requests in one batch must share temperature and top_p"
            raise InvalidInputError(msg)
        outcomes: list[GenerationResult | BaseException | None] = [None] * len(requests)
        with self._lock:
            admitted: list[tuple[int, Plan]] = []
            for i, r in enumerate(requests):
                try:
                    admitted.append((i, self._admit(r)))
                except Exception as err:  # this request only (ragplug errors by design): the others are served
                    outcomes[i] = err
            for part in self._decoder.within_context(admitted):
                adapters = [requests[i].adapter for i, _ in part]
                for indices, routing, extra in self._adapters.route(adapters, self.load_config.mixed_lora):
                    rows = [part[j] for j in indices]
                    group = self._decoder.generate(
                        self.model, [requests[i] for i, _ in rows], [plan for _, plan in rows], routing, extra
                    )
                    for (i, _), outcome in zip(rows, group, strict=True):
                        outcomes[i] = outcome
        return [o if o is not None else AdapterError("the request was not served") for o in outcomes]

    def _admit(self, request: GenerationRequest) -> Plan:
        """A request's plan (found at submit, else now), once the model's current state can serve it."""
        self._adapters.servable(request.adapter)
        plan = request._plan
        return plan if plan is not None and plan.owner == id(self) else self._planner.plan(request)

    # -- the scheduler (see .scheduler) ---------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Queue a request; concurrent requests are served together. Returns its future."""
        if self._scheduler.closed:
            msg = "this model has been closed"
            raise AdapterError(msg)
        self._adapters.require(request.adapter)
        request._plan = self._planner.plan(request)  # bad input fails here, alone, before any generation
        return self._scheduler.put(request)

    def close(self) -> None:
        """Stop the scheduler thread (pending requests are still served first)."""
        self._scheduler.close()

    # -- chat (see .chat): one signature, ChatOptions or its fields as keywords -------------------------
    def _turn(
        self,
        messages: Sequence[Mapping[str, Any]],
        options: ChatOptions | None,
        keywords: Mapping[str, Any],
        on_text: Callable[[str], None] | None,
    ) -> Turn:
        return Turn.build(self.render, messages, as_options(options, keywords), on_text)

    def chat(
        self, messages: Sequence[Mapping[str, Any]], options: ChatOptions | None = None, **keywords: Any
    ) -> ChatResult:
        """One chat turn. ``messages`` are chat-template dicts (role, content, tool_calls, tool_call_id);
        ``options`` a :class:`ChatOptions` (or its fields as keywords: tools, tool_choice, response_schema,
        adapter, config).

        With ``tool_choice`` required / any / a tool name the answer is one grammar-constrained tool call;
        with ``response_schema`` it is JSON valid against that schema; with "auto" tool calls are parsed.
        """
        turn = self._turn(messages, options, keywords, None)
        return turn.result(self.submit(turn.request).result())

    async def achat(
        self, messages: Sequence[Mapping[str, Any]], options: ChatOptions | None = None, **keywords: Any
    ) -> ChatResult:
        """Async :meth:`chat`: the event loop waits on the request's future, never blocks."""
        turn = self._turn(messages, options, keywords, None)
        return turn.result(await asyncio.wrap_future(self.submit(turn.request)))

    def stream_chat(
        self, messages: Sequence[Mapping[str, Any]], options: ChatOptions | None = None, **keywords: Any
    ) -> Generator[str | ChatResult]:
        """Yield text deltas, then the final :class:`ChatResult`. Closing the generator cancels the request.

        Text is streamed only for free-form answers; a forced tool call or structured output arrives
        whole in the final result. In "auto" mode text stops streaming where a ``<tool_call>`` begins.
        Bad input (an unknown adapter, a rejected schema) raises here, before the generator is returned.
        """
        deltas: queue.Queue[str | None] = queue.Queue()
        turn = self._turn(messages, options, keywords, deltas.put)
        future = self.submit(turn.request)
        future.add_done_callback(lambda _: deltas.put(None))
        return drain(turn, future, deltas)

    def astream_chat(
        self, messages: Sequence[Mapping[str, Any]], options: ChatOptions | None = None, **keywords: Any
    ) -> AsyncGenerator[str | ChatResult]:
        """Async :meth:`stream_chat`: the event loop is never blocked; closing the generator cancels the row.

        Must be called from a running event loop; bad input raises at the call, not at the first item.
        """
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def push(delta: str | None) -> None:  # called from the scheduler thread
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, delta)
            except RuntimeError:  # the consumer's event loop is closed (e.g. asyncio.run returned): nobody reads
                turn.request.cancel.set()  # this row any more; the batch's other rows are not affected

        turn = self._turn(messages, options, keywords, push)
        future = self.submit(turn.request)
        future.add_done_callback(lambda _: push(None))
        return adrain(turn, future, deltas)
