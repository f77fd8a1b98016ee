"""A local causal LM with named LoRA adapters, served in shared ``generate`` calls.

:class:`LoRAModel` loads a base model with transformers and any number of named LoRA adapters with
peft. Every request names its adapter (``None`` = the base model). Requests arriving together — from
threads or from asyncio — are gathered by a scheduler thread into one ``generate`` call per sampling
setting, whatever their adapters: each row goes through its own adapter (mixed-adapter batches), by
stacked LoRA weights and two matmuls per layer (:mod:`.batched`), or by peft's ``adapter_names=``
loop for LoRA variants (``LoadConfig(mixed_lora="peft")`` forces it). peft cannot mix DoRA adapters,
so such a batch is split into one call per adapter. Each row keeps its own stop strings, token
budget, grammar (for tool calls and structured output, see :mod:`.grammar`), streaming sink and
cancellation flag, enforced from a stopping criterion and a logits processor that see every
decoding step.

Prompt length policy (``LoadConfig.truncation``): ``"error"`` raises
:class:`~ragplug.errors.ContextLengthError` when prompt + ``max_new_tokens`` exceeds the context
window; ``"left"`` keeps the most recent tokens that fit (the oldest turns, system prompt included, are
cut first). A constrained request's budget is first raised to its schema's shortest valid answer, so
that answer always completes; a schema with none that fits the window is refused. No row ever
generates past the context window.

Failures stay with their request. A request is checked once, at :meth:`LoRAModel.submit` (token ids,
schema, context length); what depends on the model's state (its adapter still loaded, not merged away)
is checked again per row when its batch is served, and a streaming callback that raises (a consumer
gone away) ends only its own row. The other rows of the batch are served as if it were not there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import operator
import queue
import threading
import time
import warnings
from collections.abc import AsyncGenerator, Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragplug._extras import require
from ragplug._progress import quiet_transformers
from ragplug._text import unicode_error
from ragplug.adapters.lora.batched import SegmentedLoRA
from ragplug.adapters.lora.config import GenerationConfig, LoadConfig
from ragplug.adapters.lora.grammar import GrammarBackend, GrammarRow
from ragplug.adapters.lora.tools import ToolCall, ToolSpec, forced_call_schema, parse_tool_calls, resolve_tool_choice
from ragplug.errors import (
    AdapterError,
    AdapterMismatchError,
    ContextLengthError,
    InvalidInputError,
    UnknownAdapterError,
)

__all__ = ["ChatResult", "GenerationRequest", "GenerationResult", "LoRAModel", "render_prompt_ids", "resolve_local"]

logger = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in adapter_names


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
    _plan: _Plan | None = field(default=None, init=False, repr=False, compare=False)  # set by submit


@dataclass(frozen=True)
class _Plan:
    """What serving a request needs, found once when it enters (see ``LoRAModel._plan``)."""

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


def _contiguous_head_input(model: Any) -> None:
    """Make the LM head's input contiguous before its matmul.

    Generation keeps only the last position (``hidden[:, -1:, :]``, a strided view). On CPU, torch 2.11
    multiplies such a 3-D view by a weight that does not require grad — every peft model, whose base
    weights are frozen — through ``bmm`` on a per-row copy of the whole weight: 3.8 s instead of 15 ms
    for 8 rows of a 152 k x 896 bf16 head (benchmarks/results/lora_serving.md). A contiguous copy of the
    few hidden rows avoids it.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None:
        head.register_forward_pre_hook(lambda _module, args: (args[0].contiguous(), *args[1:]) if args else None)


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


def _tensor_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of every tensor in a safetensors file, read from its header (checked against the file size)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118 - no __iter__


def resolve_local(name_or_path: str | Path, what: str) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"])
        )
    except Exception as err:  # offline, missing repo, network: many exception types
        msg = f"cannot find {what} {str(name_or_path)!r}: not a local folder and not available from the hub ({err})"
        raise InvalidInputError(msg) from err


class _Row:
    """Per-row decoding state inside one batched ``generate`` call."""

    def __init__(self, request: GenerationRequest, grammar: GrammarRow | None, plan: _Plan | None = None) -> None:
        self.request = request
        self.grammar = grammar
        self.tokens: list[int] = []
        self.visible: list[int] = []  # tokens that are text (no end-of-sequence or padding)
        self.prefix_offset = 0  # incremental detokenization window (see LoRAModel._extend_text)
        self.read_offset = 0
        self.text = ""
        self.cut = False  # the text was cut at a stop string
        self.emitted = 0
        self.done = False
        self.error: BaseException | None = None  # this row failed (its streaming callback raised)
        self.closing = False
        self.finish_reason = "length"
        # A constrained answer's budget covers at least its shortest valid document (see LoRAModel._plan).
        self.budget = plan.budget if plan is not None else request.config.max_new_tokens
        self.estimate = plan.shortest if plan is not None else 0  # tokens the shortest valid finish needs
        # (refreshed as decoding goes)
        self.fresh = False  # whether ``estimate`` is exact for the current state
        self.known: dict[int, int] = {}  # candidate token -> shortest finish after it, this step

    def fail(self, error: BaseException) -> None:
        """End this row with ``error`` (delivered to its caller); the batch's other rows go on."""
        self.error = error
        self.done, self.finish_reason = True, "error"


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
        torch = require("torch", "lora")
        transformers = require("transformers", "lora")
        require("peft", "lora")
        self.load_config = load = load or LoadConfig()
        self.base_name = str(base)
        cuda = torch.cuda.is_available()
        if load.quantization and not cuda:
            msg = f"quantization={load.quantization!r} needs a CUDA GPU (bitsandbytes); none is available"
            raise InvalidInputError(msg)
        folder = resolve_local(base, "base model")
        dtype = {"auto": torch.bfloat16 if cuda else torch.float32}.get(load.dtype) or getattr(torch, load.dtype)
        kwargs: dict[str, Any] = {"dtype": dtype}
        if load.quantization:
            require("bitsandbytes", "lora")
            kwargs["quantization_config"] = transformers.BitsAndBytesConfig(
                load_in_4bit=load.quantization == "4bit", load_in_8bit=load.quantization == "8bit"
            )
        if load.device_map is not None:
            kwargs["device_map"] = load.device_map
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer.padding_side = "left"
        with quiet_transformers():  # no per-load weight bars; transformers' load report still warns
            model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
        if load.device_map is None and not load.quantization:
            model = model.to(torch.device(load.device or ("cuda" if cuda else "cpu")))
        self.model: Any = model.eval()
        _contiguous_head_input(self.model)
        self.device = next(self.model.parameters()).device
        self.vocab_rows = int(self.model.get_input_embeddings().num_embeddings)  # valid token ids: 0 .. rows - 1
        self.context_window = int(
            getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        )
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in self.eos_token_ids:
            self.eos_token_ids.append(self.tokenizer.eos_token_id)
        if not self.eos_token_ids:
            msg = f"{folder}: neither the generation config nor the tokenizer names an end-of-sequence token"
            raise InvalidInputError(msg)
        pad = self.tokenizer.pad_token_id
        self.pad_token_id = int(pad if pad is not None else self.eos_token_ids[0])
        self._hidden_ids = {*self.eos_token_ids, self.pad_token_id}
        self._grammar: GrammarBackend | None = None
        self._lock = threading.RLock()
        self._adapters: dict[str, Path] = {}
        self._merged: str | None = None
        self._segmented: SegmentedLoRA | None = None
        self._queue: queue.Queue[GenerationRequest | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()  # the scheduler thread's start and exit
        self._closed = False
        for name, path in (adapters or {}).items():
            self.add_adapter(name, path)

    # -- adapters -------------------------------------------------------------------------------------
    @property
    def adapters(self) -> list[str]:
        return list(self._adapters)

    @property
    def merged(self) -> str | None:
        """The adapter merged into the base weights, if any (see :meth:`merge`)."""
        return self._merged

    def add_adapter(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under ``name``; checks it fits this base model before loading it.

        All or nothing: if the adapter cannot be loaded, the model is left as it was and ``name`` stays free.
        """
        if not isinstance(name, str) or not name or name == BASE:
            msg = f"adapter name must be a non-empty string other than {BASE!r}, got {name!r}"
            raise InvalidInputError(msg)
        with self._lock:
            if name in self._adapters:
                msg = f"an adapter named {name!r} is already loaded; remove it first"
                raise AdapterError(msg)
            if self._merged is not None:
                msg = f"adapter {self._merged!r} is merged; unmerge() before loading more adapters"
                raise AdapterError(msg)
            folder = resolve_local(path, "adapter")
            self._check_adapter(name, folder)
            from peft import PeftModel

            wrapped = isinstance(self.model, PeftModel)
            try:
                with warnings.catch_warnings():  # peft 0.20 calls an API transformers 5 deprecates
                    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                    if wrapped:
                        self.model.load_adapter(str(folder), adapter_name=name)
                    else:
                        self.model = PeftModel.from_pretrained(self.model, str(folder), adapter_name=name)
            except Exception as err:  # peft changed the model before failing: undo it, whatever the failure
                self._undo_load(name, wrapped)
                msg = f"adapter {name!r} could not be loaded from {folder}: {err}"
                raise AdapterError(msg) from err
            if not wrapped:
                self._segmented = SegmentedLoRA(self.model)
            self.model.eval()
            self._adapters[name] = folder
            assert self._segmented is not None
            self._segmented.clear()

    def _undo_load(self, name: str, wrapped: bool) -> None:
        """Remove what a failed load of ``name`` added: its layers and config, or (first adapter) every LoRA
        layer peft injected into the base model in place."""
        if wrapped:
            if name in self.model.peft_config:
                self.model.delete_adapter(name)
            return
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module_name, module in list(self.model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                parent_name, _, child = module_name.rpartition(".")
                parent = self.model.get_submodule(parent_name) if parent_name else self.model
                setattr(parent, child, module.get_base_layer())
        for attribute in ("peft_config", "_hf_peft_config_loaded"):
            if attribute in vars(self.model):
                delattr(self.model, attribute)

    def remove_adapter(self, name: str) -> None:
        with self._lock:
            self._require_adapter(name)
            if self._merged == name:
                self.unmerge()
            if len(self._adapters) == 1:
                self.model = self.model.unload()  # drop the LoRA layers entirely: back to the bare base
                self._segmented = None
            else:
                self.model.delete_adapter(name)
                self._segmented.clear()  # type: ignore[union-attr]
            del self._adapters[name]

    def merge(self, name: str) -> None:
        """Merge ``name`` into the base weights for single-adapter serving (faster per token).

        While merged, only requests for ``name`` are served; call :meth:`unmerge` to serve the others.
        """
        with self._lock:
            self._require_adapter(name)
            if self._merged == name:
                return
            if self._merged is not None:
                self.unmerge()
            self.model.set_adapter(name)
            self.model.merge_adapter([name])
            self._merged = name

    def unmerge(self) -> None:
        with self._lock:
            if self._merged is not None:
                self.model.unmerge_adapter()
                self._merged = None

    def _require_adapter(self, name: str | None) -> None:
        if name is not None and name not in self._adapters:
            msg = f"unknown adapter {name!r}; loaded adapters: {sorted(self._adapters)}"
            raise UnknownAdapterError(msg)

    def _check_adapter(self, name: str, folder: Path) -> None:
        """Refuse, before any generation, an adapter whose modules or shapes do not fit this base model."""
        config_file = folder / "adapter_config.json"
        if not config_file.is_file():
            msg = f"adapter {name!r}: {folder} has no adapter_config.json"
            raise AdapterError(msg)
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as err:  # truncated or not JSON (JSONDecodeError, UnicodeDecodeError)
            msg = f"adapter {name!r}: {config_file} is not a readable JSON file ({err}); is it truncated?"
            raise AdapterError(msg) from err
        if not isinstance(config, dict):
            msg = f"adapter {name!r}: {config_file} holds a {type(config).__name__}, not a JSON object"
            raise AdapterError(msg)
        if str(config.get("peft_type", "LORA")).upper() != "LORA":
            msg = f"adapter {name!r} is a {config.get('peft_type')} adapter; only LoRA adapters are supported"
            raise AdapterError(msg)
        weights = folder / "adapter_model.safetensors"
        if not weights.is_file():
            msg = f"adapter {name!r}: no adapter_model.safetensors in {folder} (pickled .bin adapters are refused)"
            raise AdapterError(msg)
        try:
            shapes = _tensor_shapes(weights)
        except Exception as err:  # SafetensorError (a truncated or corrupt file), OSError
            msg = f"adapter {name!r}: {weights} is not a readable safetensors file ({err}); is it truncated?"
            raise AdapterError(msg) from err
        from peft.utils.other import get_pattern_key  # how peft itself finds a module's rank

        rank, rank_pattern = config.get("r", 8), config.get("rank_pattern") or {}
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        modules = dict(base.named_modules())
        for key, shape in shapes.items():
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
            module = modules.get(module_name)
            if module is None:
                msg = (
                    f"adapter {name!r} was trained for another base model: module {module_name!r} "
                    f"does not exist in {self.base_name!r}"
                )
                raise AdapterMismatchError(msg)
            if len(shape) != 2:
                msg = f"adapter {name!r}: {key} in {weights} has shape {shape}; a LoRA matrix has two dimensions"
                raise AdapterError(msg)
            base_layer = getattr(module, "base_layer", module)
            in_f, out_f = getattr(base_layer, "in_features", None), getattr(base_layer, "out_features", None)
            expected = in_f if ".lora_A." in key else out_f
            got = shape[1] if ".lora_A." in key else shape[0]
            if expected is not None and got != expected:
                msg = (
                    f"adapter {name!r} was trained for another base model: {key} has shape {shape}, "
                    f"but {module_name} in {self.base_name!r} has in/out features {in_f}/{out_f}"
                )
                raise AdapterMismatchError(msg)
            module_rank = rank_pattern.get(get_pattern_key(list(rank_pattern), module_name), rank)
            got_rank = shape[0] if ".lora_A." in key else shape[1]
            if got_rank != module_rank:
                msg = (
                    f"adapter {name!r}: {key} in {weights} has rank {got_rank}, but {config_file} gives "
                    f"{module_name} rank {module_rank}; the config does not describe these weights"
                )
                raise AdapterError(msg)

    # -- prompts --------------------------------------------------------------------------------------
    def render(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[ToolSpec] | None = None) -> list[int]:
        """Token ids of a chat prompt (see :func:`render_prompt_ids`)."""
        return render_prompt_ids(self.tokenizer, messages, tools)

    def _plan(self, request: GenerationRequest) -> _Plan:
        """Check a request against what does not change while serving (the vocabulary, the context window,
        its schema) and find its fitted prompt and token budget. Raises ragplug errors naming the bad value."""
        if not isinstance(request.config, GenerationConfig):
            msg = f"config must be a GenerationConfig, got {type(request.config).__name__}"
            raise InvalidInputError(msg)
        prompt = self._token_ids(request.prompt_ids)
        budget, shortest = request.config.max_new_tokens, 0
        if request.schema is not None:
            shortest = self.grammar().shortest(request.schema)  # SchemaError when no answer fits the window
            budget = max(budget, shortest + 1)
        return _Plan(id(self), self._fit(prompt, request.config, budget), budget, shortest)

    def _token_ids(self, prompt_ids: Any) -> list[int]:
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

    def _fit(self, prompt_ids: list[int], config: GenerationConfig, budget: int) -> list[int]:
        """The prompt, cut on the left if the policy allows, so that it and ``budget`` new tokens fit."""
        room = self.context_window - budget
        if len(prompt_ids) <= room:
            return prompt_ids
        if self.load_config.truncation == "left" and room > 0:
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

    def grammar(self) -> GrammarBackend:
        if self._grammar is None:
            vocab = int(self.model.config.vocab_size if hasattr(self.model, "config") else len(self.tokenizer))
            self._grammar = GrammarBackend(
                self.tokenizer, max(vocab, len(self.tokenizer)), self.eos_token_ids, self.context_window
            )
        return self._grammar

    # -- the batched generate call --------------------------------------------------------------------
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
            admitted: list[tuple[int, _Plan]] = []
            for i, r in enumerate(requests):
                try:
                    admitted.append((i, self._admit(r)))
                except Exception as err:  # this request only (ragplug errors by design): the others are served
                    outcomes[i] = err
            for part in self._within_context(admitted):
                for indices, routing, extra in self._route([requests[i].adapter for i, _ in part]):
                    rows = [part[j] for j in indices]
                    group = self._generate([requests[i] for i, _ in rows], [plan for _, plan in rows], routing, extra)
                    for (i, _), outcome in zip(rows, group, strict=True):
                        outcomes[i] = outcome
        return [o if o is not None else AdapterError("the request was not served") for o in outcomes]

    def _within_context(self, admitted: list[tuple[int, _Plan]]) -> list[list[tuple[int, _Plan]]]:
        """Split a batch so that no row runs past the context window. A row that has finished is still fed
        padding while the others generate, so every row of a ``generate`` call reaches position
        ``len(its prompt) + the call's largest budget``. One call when that fits (the usual case); otherwise
        rows in order of prompt length, a new call whenever the next row would not fit."""
        if not admitted:
            return []
        window = self.context_window
        if max(len(plan.prompt) for _, plan in admitted) + max(plan.budget for _, plan in admitted) <= window:
            return [admitted]
        parts: list[list[tuple[int, _Plan]]] = [[]]
        budget = 0
        for item in sorted(admitted, key=lambda item: len(item[1].prompt)):
            budget = max(budget, item[1].budget)
            if parts[-1] and len(item[1].prompt) + budget > window:  # each row alone fits (see _fit)
                parts.append([])
                budget = item[1].budget
            parts[-1].append(item)
        return parts

    def _admit(self, request: GenerationRequest) -> _Plan:
        """A request's plan (found at submit, else now), once the model's current state can serve it."""
        self._require_adapter(request.adapter)  # it may have been removed since submit
        if self._merged is not None and request.adapter != self._merged:
            msg = f"adapter {self._merged!r} is merged; call unmerge() to serve {request.adapter or 'the base model'!r}"
            raise AdapterError(msg)
        plan = request._plan
        return plan if plan is not None and plan.owner == id(self) else self._plan(request)

    def _route(self, adapters: list[str | None]) -> list[tuple[list[int], Any, dict[str, Any]]]:
        """How a batch's rows reach their adapters: ``(row indices, context manager, generate kwargs)`` per call."""
        everyone = list(range(len(adapters)))
        if not self._adapters or self._merged is not None:
            return [(everyone, contextlib.nullcontext(), {})]
        segmented = self._segmented
        if self.load_config.mixed_lora == "segmented" and segmented is not None and segmented.supported(adapters):
            return [(everyone, segmented.apply(adapters), {})]
        configs = self.model.peft_config
        if not any(getattr(configs.get(a), "use_dora", False) for a in adapters if a is not None):
            return [(everyone, contextlib.nullcontext(), {"adapter_names": [a or BASE for a in adapters]})]
        # peft cannot mix DoRA adapters into one batch: one generate call per adapter
        groups: dict[str | None, list[int]] = {}
        for i, adapter in enumerate(adapters):
            groups.setdefault(adapter, []).append(i)
        return [(indices, self._only(adapter), {}) for adapter, indices in groups.items()]

    @contextlib.contextmanager
    def _only(self, adapter: str | None) -> Generator[None]:
        if adapter is None:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(adapter)
            yield

    def _generate(
        self, requests: Sequence[GenerationRequest], plans: list[_Plan], routing: Any, extra: dict[str, Any]
    ) -> list[GenerationResult | BaseException]:
        """One ``generate`` call for ``requests`` and their ``plans`` (the lock is held). A row whose callback
        fails gets its error as its outcome; an error of the call itself fails every row (it is raised)."""
        torch = require("torch", "lora")
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        rows = [
            _Row(r, self.grammar().row(r.schema) if r.schema is not None else None, plan)
            for r, plan in zip(requests, plans, strict=True)
        ]
        prompts = [plan.prompt for plan in plans]
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, prompt in enumerate(prompts):
            input_ids[i, width - len(prompt) :] = torch.tensor(prompt, dtype=torch.long)
            attention[i, width - len(prompt) :] = 1
        do_sample, temperature, top_p = requests[0].config.sampling_key
        engine = self

        class Monitor(StoppingCriteria):
            def __call__(self, ids: Any, scores: Any, **kwargs: Any) -> Any:
                last = ids[:, -1].tolist()
                for row, token in zip(rows, last, strict=True):
                    if not row.done:
                        try:
                            engine._advance(row, int(token))
                        except Exception as err:  # its streaming callback or grammar: this row only
                            row.fail(err)
                return torch.tensor([row.done for row in rows], device=ids.device)

        class Constrain(LogitsProcessor):
            def __init__(self) -> None:
                self.step = 0
                self.bitmask = engine.grammar().allocate(len(rows))

            def __call__(self, ids: Any, scores: Any) -> Any:
                self.step += 1
                active = [i for i, row in enumerate(rows) if row.grammar is not None and not row.done]
                if not active:
                    return scores
                # Sequential on purpose: torch ops from extra threads give each thread its own OpenMP team, and
                # on a CPU the teams' spin-waiting then slows every later decoding step (measured: -25%).
                for i in active:
                    self.mask(i, scores)
                best = scores.argmax(dim=-1).tolist() if not do_sample else None  # one batched pass
                for i in active:
                    self.restrict(i, scores, best)
                return scores

            def mask(self, i: int, scores: Any) -> None:
                grammar = rows[i].grammar
                assert grammar is not None
                grammar.fill(self.bitmask, i)
                grammar.mask(scores[i], self.bitmask, i)

            def restrict(self, i: int, scores: Any, best: list[int] | None) -> None:
                """Near the end of a row's budget, keep only tokens after which its shortest finish fits."""
                row = rows[i]
                grammar = row.grammar
                assert grammar is not None
                left = row.budget - len(row.tokens)
                zone = left <= 2 * row.estimate + 32
                if not row.closing and not row.fresh and (zone or len(row.tokens) % 16 == 0):
                    row.estimate = grammar.min_remaining()
                row.fresh = False
                closing = grammar.closing_choice_in(self.bitmask, i)
                if closing is None or not bool(torch.isfinite(scores[i, closing])):  # another processor cut it
                    closing = grammar.closing_choice(torch.isfinite(scores[i]).cpu().numpy())
                if closing is None:
                    return
                if row.closing or left <= row.estimate + 1:
                    row.closing = True
                    keep = [closing]
                elif zone:
                    keep = self.feasible(row, scores[i], left, None if best is None else best[i])
                    keep.append(closing)
                else:
                    return
                kept = scores[i, keep].clone()
                scores[i] = float("-inf")
                scores[i, keep] = kept

            @staticmethod
            def feasible(row: _Row, scores: Any, left: int, best: int | None) -> list[int]:
                """The best tokens (greedy: the best one) whose shortest finish still fits ``left - 1``;
                the finish length after each is remembered, so the next step need not simulate it again."""
                grammar = row.grammar
                assert grammar is not None
                row.known = {}
                # greedy: the argmax is almost always feasible; try it before ranking the top 8
                if best is not None and bool(torch.isfinite(scores[best])):
                    row.known[best] = grammar.min_remaining(after=best)
                    if row.known[best] <= left - 1:
                        return [best]
                values, indices = torch.topk(scores, k=8)
                keep = []
                for value, token in zip(values.tolist(), indices.tolist(), strict=True):
                    if value == float("-inf"):
                        break
                    if token not in row.known:
                        row.known[token] = grammar.min_remaining(after=token)
                    if row.known[token] <= left - 1:
                        keep.append(token)
                        if not do_sample:  # greedy takes the best feasible token: stop looking
                            break
                return keep

        processors = LogitsProcessorList([Constrain()]) if any(r.grammar for r in rows) else None
        kwargs: dict[str, Any] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention.to(self.device),
            "max_new_tokens": max(row.budget for row in rows),
            "do_sample": do_sample,
            "pad_token_id": self.pad_token_id,
            "eos_token_id": self.eos_token_ids,
            "stopping_criteria": StoppingCriteriaList([Monitor()]),
            "logits_processor": processors,
        }
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        kwargs.update(extra)
        with torch.inference_mode(), routing:
            self.model.generate(**kwargs)
        results: list[GenerationResult | BaseException] = []
        for row, prompt in zip(rows, prompts, strict=True):
            if row.error is None:
                if not row.cut:
                    self._extend_text(row, final=True)  # an incomplete character left at the very end
                try:
                    self._flush(row, final=True)
                except Exception as err:
                    row.fail(err)
            if row.error is not None:
                results.append(row.error)
                continue
            results.append(
                GenerationResult(
                    text=row.text,
                    token_ids=list(row.tokens),
                    prompt_tokens=len(prompt),
                    completion_tokens=len(row.tokens),
                    finish_reason=row.finish_reason,
                    adapter=row.request.adapter,
                )
            )
        return results

    def _advance(self, row: _Row, token: int) -> None:
        """Take one generated token for a row: grammar, stop strings, budget, cancellation, streaming."""
        request = row.request
        if row.grammar is not None:
            row.grammar.accept(token)
            row.fresh = token in row.known  # the shortest finish from here was simulated last step
            if row.fresh:
                row.estimate = row.known[token]
            row.known = {}
        if token in self.eos_token_ids:
            row.done, row.finish_reason = True, "stop"
            return
        row.tokens.append(token)
        if token not in self._hidden_ids:
            row.visible.append(token)
        before = len(row.text)
        self._extend_text(row)
        for stop in request.config.stop:
            cut = row.text.find(stop, max(0, before - len(stop) + 1))
            if cut >= 0:
                row.text = row.text[:cut]
                row.done, row.finish_reason, row.cut = True, "stop", True
        if request.cancel.is_set():
            row.done, row.finish_reason = True, "cancelled"
            return  # nobody reads a cancelled row's stream any more (its consumer may be gone)
        if not row.done and len(row.tokens) >= row.budget:
            row.done, row.finish_reason = True, "length"
        self._flush(row, final=row.done)

    def _extend_text(self, row: _Row, final: bool = False) -> None:
        """Append the text of a row's new tokens, decoding only a short window (not the whole answer).

        The window starts at the previous step's tokens, so tokenizers that drop or merge spaces at the
        start of a decode (SentencePiece) still produce the same text as one decode of everything. Text
        ending in an incomplete multi-byte character waits for the next token, except at the end.
        """
        decode = self.tokenizer.decode
        prefix = decode(row.visible[row.prefix_offset : row.read_offset], skip_special_tokens=False)
        full = decode(row.visible[row.prefix_offset :], skip_special_tokens=False)
        if len(full) > len(prefix) and (final or not full.endswith("\ufffd")):
            row.text += full[len(prefix) :]
            row.prefix_offset, row.read_offset = row.read_offset, len(row.visible)

    @staticmethod
    def _flush(row: _Row, final: bool) -> None:
        sink = row.request.on_text
        if sink is None or row.finish_reason == "cancelled":
            return
        safe = len(row.text)
        if not final:
            if row.text.endswith("\ufffd"):  # an incomplete multi-byte character
                safe = len(row.text.rstrip("\ufffd"))
            for stop in row.request.config.stop:  # hold back what may be the start of a stop string
                for n in range(min(len(stop) - 1, safe), 0, -1):
                    if row.text[:safe].endswith(stop[:n]):
                        safe -= n
                        break
        if safe > row.emitted:
            sink(row.text[row.emitted : safe])
            row.emitted = safe

    # -- the scheduler --------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest) -> Future[GenerationResult]:
        """Queue a request; concurrent requests are served together. Returns its future."""
        if self._closed:
            msg = "this model has been closed"
            raise AdapterError(msg)
        self._require_adapter(request.adapter)
        request._plan = self._plan(request)  # bad input fails here, alone, before any generation
        with self._worker_lock:  # not the model lock, which a running batch holds: never blocks the caller
            if self._closed:
                msg = "this model has been closed"
                raise AdapterError(msg)
            self._queue.put(request)
            if self._worker is None or not self._worker.is_alive():
                self._start_worker()
        return request.future

    def _serve(self) -> None:
        """The scheduler thread. It ends after ``idle_exit_s`` without requests (``submit`` starts a new one):
        on a CPU an idle thread that has run torch keeps its OpenMP team, which slows every other thread's
        torch work by ~25% (measured on the benchmark model: a decoding step, or a query encoding)."""
        try:
            self._serve_loop()
        finally:  # also after an unexpected error: pending requests get a new scheduler thread
            with self._worker_lock:
                if self._worker is threading.current_thread():
                    self._worker = None
                    if not self._closed and not self._queue.empty():
                        self._start_worker()

    def _start_worker(self) -> None:  # with _worker_lock held
        self._worker = threading.Thread(target=self._serve, name="ragplug-lora-scheduler", daemon=True)
        self._worker.start()

    def _serve_loop(self) -> None:
        window = self.load_config.batch_window_ms / 1000
        idle = self.load_config.idle_exit_s
        while True:
            try:
                first = self._queue.get(timeout=idle)
            except queue.Empty:
                with self._worker_lock:
                    if self._queue.empty():  # a request put after this check finds no worker and starts one
                        self._worker = None
                        return
                continue
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + window
            while len(batch) < self.load_config.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=max(remaining, 0)) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._queue.put(None)
                    break
                batch.append(item)
            groups: dict[tuple[bool, float, float] | None, list[GenerationRequest]] = {}
            for request in batch:
                try:
                    running = request.future.set_running_or_notify_cancel()
                except RuntimeError:  # the same request submitted twice, or its future settled by its caller
                    logger.warning("skipping a request whose future is already running or done")
                    continue
                if running:
                    # a config that is no GenerationConfig (only past submit) fails in its own group, alone
                    groups.setdefault(getattr(request.config, "sampling_key", None), []).append(request)
            for group in groups.values():
                try:
                    outcomes = self._serve_batch(group)
                except BaseException as err:  # delivered to the callers; the scheduler keeps serving
                    outcomes = [err] * len(group)
                for request, outcome in zip(group, outcomes, strict=True):
                    with contextlib.suppress(InvalidStateError):  # a caller settled it meanwhile
                        if isinstance(outcome, BaseException):
                            request.future.set_exception(outcome)
                        else:
                            request.future.set_result(outcome)

    def close(self) -> None:
        """Stop the scheduler thread (pending requests are still served first)."""
        self._closed = True
        with self._worker_lock:
            worker = self._worker
            if worker is not None:
                self._queue.put(None)
        if worker is not None:
            worker.join(timeout=30)

    # -- chat -----------------------------------------------------------------------------------------
    def _chat_request(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[ToolSpec] | None,
        tool_choice: Any,
        response_schema: dict[str, Any] | None,
        adapter: str | None,
        config: GenerationConfig | None,
        on_text: Callable[[str], None] | None,
    ) -> tuple[GenerationRequest, str, list[ToolSpec]]:
        mode, allowed = resolve_tool_choice(tool_choice, list(tools or []))
        schema = response_schema
        if mode == "required":
            schema = forced_call_schema(allowed)
        prompt = self.render(messages, allowed if mode != "none" else None)
        request = GenerationRequest(
            prompt_ids=prompt, adapter=adapter, config=config or GenerationConfig(), schema=schema, on_text=on_text
        )
        return request, mode, allowed

    def _chat_result(
        self,
        result: GenerationResult,
        mode: str,
        allowed: list[ToolSpec],
        response_schema: dict[str, Any] | None = None,
    ) -> ChatResult:
        content, calls = result.text, []
        if mode == "required" or response_schema is not None:
            try:
                obj = json.loads(result.text)
            except ValueError as err:
                msg = (
                    f"the constrained answer did not finish within max_new_tokens="
                    f"{result.completion_tokens} ({result.finish_reason}); raise max_new_tokens"
                )
                raise InvalidInputError(msg) from err
            if mode == "required":
                calls = [ToolCall(obj["name"], obj["arguments"])]
                content = ""
        elif mode == "auto":
            content, calls = parse_tool_calls(result.text, [t.name for t in allowed])
        return ChatResult(
            content, calls, result.prompt_tokens, result.completion_tokens, result.finish_reason, result.adapter
        )

    def chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[ToolSpec] | None = None,
        tool_choice: Any = None,
        response_schema: dict[str, Any] | None = None,
        adapter: str | None = None,
        config: GenerationConfig | None = None,
    ) -> ChatResult:
        """One chat turn. ``messages`` are chat-template dicts (role, content, tool_calls, tool_call_id).

        With ``tool_choice`` required / any / a tool name the answer is one grammar-constrained tool call;
        with ``response_schema`` it is JSON valid against that schema; with "auto" tool calls are parsed.
        """
        request, mode, allowed = self._chat_request(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            response_schema=response_schema,
            adapter=adapter,
            config=config,
            on_text=None,
        )
        return self._chat_result(self.submit(request).result(), mode, allowed, response_schema)

    async def achat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> ChatResult:
        request, mode, allowed = self._chat_request(messages, on_text=None, **_chat_defaults(kwargs))
        result = await asyncio.wrap_future(self.submit(request))
        return self._chat_result(result, mode, allowed, kwargs.get("response_schema"))

    def stream_chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Generator[str | ChatResult]:
        """Yield text deltas, then the final :class:`ChatResult`. Closing the generator cancels the request.

        Text is streamed only for free-form answers; a forced tool call or structured output arrives
        whole in the final result. In "auto" mode text stops streaming where a ``<tool_call>`` begins.
        Bad input (an unknown adapter, a rejected schema) raises here, before the generator is returned.
        """
        deltas: queue.Queue[str | None] = queue.Queue()
        options = _chat_defaults(kwargs)
        request, mode, allowed = self._chat_request(messages, on_text=deltas.put, **options)
        future = self.submit(request)
        future.add_done_callback(lambda _: deltas.put(None))
        return self._drain(request, future, deltas, mode, allowed, options["response_schema"])

    def _drain(
        self,
        request: GenerationRequest,
        future: Future[GenerationResult],
        deltas: queue.Queue[str | None],
        mode: str,
        allowed: list[ToolSpec],
        response_schema: dict[str, Any] | None,
    ) -> Generator[str | ChatResult]:
        streamed = ""
        try:
            while (delta := deltas.get()) is not None:
                shown = _visible(streamed + delta, mode, response_schema)
                if len(shown) > len(streamed):
                    yield shown[len(streamed) :]
                    streamed = shown
            yield self._chat_result(future.result(), mode, allowed, response_schema)
        finally:
            request.cancel.set()  # no-op when finished; frees the row when the consumer stopped early

    def astream_chat(self, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> AsyncGenerator[str | ChatResult]:
        """Async :meth:`stream_chat`: the event loop is never blocked; closing the generator cancels the row.

        Must be called from a running event loop; bad input raises at the call, not at the first item.
        """
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def push(delta: str | None) -> None:  # called from the scheduler thread
            try:
                loop.call_soon_threadsafe(deltas.put_nowait, delta)
            except RuntimeError:  # the consumer's event loop is closed (e.g. asyncio.run returned): nobody reads
                request.cancel.set()  # this row any more; the batch's other rows are not affected

        options = _chat_defaults(kwargs)
        request, mode, allowed = self._chat_request(messages, on_text=push, **options)
        future = self.submit(request)
        future.add_done_callback(lambda _: push(None))
        return self._adrain(request, future, deltas, mode, allowed, options["response_schema"])

    async def _adrain(
        self,
        request: GenerationRequest,
        future: Future[GenerationResult],
        deltas: asyncio.Queue[str | None],
        mode: str,
        allowed: list[ToolSpec],
        response_schema: dict[str, Any] | None,
    ) -> AsyncGenerator[str | ChatResult]:
        streamed = ""
        try:
            while (delta := await deltas.get()) is not None:
                shown = _visible(streamed + delta, mode, response_schema)
                if len(shown) > len(streamed):
                    yield shown[len(streamed) :]
                    streamed = shown
            yield self._chat_result(await asyncio.wrap_future(future), mode, allowed, response_schema)
        finally:
            request.cancel.set()


def _visible(text: str, mode: str, response_schema: dict[str, Any] | None) -> str:
    """The part of the answer so far that is streamed as text."""
    if mode == "required" or response_schema is not None:
        return ""
    return _before_tool_call(text) if mode == "auto" else text


def _chat_defaults(kwargs: dict[str, Any]) -> dict[str, Any]:
    allowed = {"tools", "tool_choice", "response_schema", "adapter", "config"}
    unknown = set(kwargs) - allowed
    if unknown:
        msg = f"unexpected arguments {sorted(unknown)}"
        raise InvalidInputError(msg)
    return {
        "tools": kwargs.get("tools"),
        "tool_choice": kwargs.get("tool_choice"),
        "response_schema": kwargs.get("response_schema"),
        "adapter": kwargs.get("adapter"),
        "config": kwargs.get("config"),
    }


def _before_tool_call(text: str) -> str:
    """Text up to where a ``<tool_call>`` starts (or may be starting)."""
    cut = text.find("<tool_call>")
    if cut >= 0:
        return text[:cut]
    for n in range(len("<tool_call>") - 1, 0, -1):
        if text.endswith("<tool_call>"[:n]):
            return text[:-n]
    return text
