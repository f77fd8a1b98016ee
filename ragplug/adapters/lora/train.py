"""Train a LoRA adapter on question/answer pairs (optionally with a retrieved passage) for :class:`LoRAModel`.

:func:`train_lora` fine-tunes a LoRA adapter on a base causal LM and saves it in the layout
:class:`~ragplug.adapters.lora.LoRAModel` loads (``adapter_config.json`` + ``adapter_model.safetensors``),
plus ``ragplug_training.json`` (base, settings, example count, losses).

Choices, and why:

* **One prompt layout for training and inference.** :func:`build_messages` turns an example into chat
  messages (optional system turn; one user turn holding ``"Context:\\n<passage>\\n\\nQuestion: <question>"``,
  or only the question when there is no context). Training renders them with the base tokenizer's chat
  template exactly as ``LoRAModel.render`` does (``add_generation_prompt=True``, then tokenized without
  special tokens), so the adapter sees at inference the token ids it was trained on. The context goes in
  the user turn rather than the system turn because some chat templates have no system role.
* **Loss on the answer only.** The target is the answer's tokens followed by the tokenizer's EOS token
  (which ``LoRAModel`` always stops on); prompt and padding positions are labelled ``-100``.
* **Too long is an error, not a silent cut.** An example whose prompt + answer + EOS exceeds
  ``TrainConfig.max_length`` (or the model's context window) raises
  :class:`~ragplug.errors.ContextLengthError` before the model is loaded: cutting the prompt would train on
  a layout inference never produces, and cutting the answer would teach the model to stop early.
* **A plain torch loop (AdamW, linear decay), not ``transformers.Trainer``.** The loop is some forty lines
  we control fully: answer-only masking and right padding without a custom collator, reproducibility from
  one seed (LoRA initialisation, dropout and shuffling run inside a forked RNG, so the caller's global RNG
  state is left alone), no checkpoint folders, no experiment-tracker integrations switched on by what
  happens to be installed, and no dependency on ``Trainer``'s frequently changing arguments.
* **Atomic output.** The adapter is written into a temporary folder next to ``output_dir`` and renamed into
  place at the end; if training or saving fails, nothing is left at ``output_dir``.
* **A diverged run is an error, not an adapter.** A non-finite loss stops training at that step; after the
  last step the adapter is checked before it is saved: every weight finite, and no layer's LoRA update
  more than :data:`MAX_UPDATE_RATIO` times the norm of the weight it adapts (measured: about 3 for the
  tiny test model memorising its data, 10^4 and more at learning rates of 1 and above). Either failure
  raises :class:`~ragplug.errors.InvalidInputError` naming the learning rate, and nothing is written.
* **Default targets: ``"all-linear"``** (peft's shorthand for every linear layer of attention and MLP, the
  output head excluded), which adapts more of the model than q/v-only LoRA for the same rank.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragplug._extras import require
from ragplug._progress import quiet_transformers
from ragplug._text import check_unicode
from ragplug.adapters.lora.loading import resolve_local
from ragplug.adapters.lora.prompts import render_prompt_ids
from ragplug.errors import ContextLengthError, InvalidInputError

__all__ = ["TrainConfig", "TrainExample", "TrainResult", "build_messages", "train_lora"]

logger = logging.getLogger(__name__)

METADATA_FILE = "ragplug_training.json"
MAX_UPDATE_RATIO = 1000.0  # ||scale * B @ A|| / ||W|| above this: the adapter drowns the layer it adapts
_EXAMPLE_KEYS = ("question", "answer", "context", "system")


@dataclass(frozen=True)
class TrainExample:
    """One training pair. With ``context``, the answer should be grounded in that retrieved passage."""

    question: str
    answer: str
    context: str | None = None
    system: str | None = None

    def __post_init__(self) -> None:
        for name in _EXAMPLE_KEYS:
            _check_text(name, getattr(self, name))


def _check_text(name: str, value: Any) -> None:
    """``question`` and ``answer`` must be non-empty strings; ``context`` and ``system`` may also be None."""
    if value is None and name in ("context", "system"):
        return
    if not isinstance(value, str) or not value.strip():
        msg = f"{name} must be a non-empty string, got {value!r}"
        raise InvalidInputError(msg)
    check_unicode(value, name)  # no tokenizer can encode a lone surrogate (tokenizers raises a bare TypeError)


@dataclass(frozen=True)
class TrainConfig:
    """LoRA and optimisation settings, checked at construction."""

    r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32, metadata={"help": "LoRA scaling numerator (scale = lora_alpha / r)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input, in [0, 1)"})
    target_modules: str | tuple[str, ...] = field(
        default="all-linear",
        metadata={"help": "'all-linear' (every attention and MLP projection) or module names, e.g. ('q_proj',)"},
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW peak learning rate, decayed linearly to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    epochs: int = field(default=3, metadata={"help": "passes over the examples"})
    batch_size: int = field(default=8, metadata={"help": "examples per optimisation step"})
    max_length: int = field(default=1024, metadata={"help": "longest prompt + answer + EOS, in tokens"})
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "gradient clipping; None = no clipping"})
    seed: int = field(default=0, metadata={"help": "seeds LoRA init, dropout and shuffling"})
    device: str | None = field(default=None, metadata={"help": "cpu / cuda / cuda:N; default cuda when available"})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(
        default="auto",
        metadata={"help": "base weights: 'auto' = bf16 on GPU, fp32 on CPU; LoRA weights are always fp32"},
    )
    progress: bool = field(default=True, metadata={"help": "show a tqdm progress bar"})

    def __post_init__(self) -> None:
        for name in ("r", "epochs", "batch_size", "max_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                msg = f"{name} must be a positive integer, got {value!r}"
                raise InvalidInputError(msg)
        for name in ("lora_alpha", "learning_rate"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                msg = f"{name} must be a positive number, got {value!r}"
                raise InvalidInputError(msg)
        if not isinstance(self.lora_dropout, int | float) or not 0 <= self.lora_dropout < 1:
            msg = f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.weight_decay, int | float) or not 0 <= self.weight_decay < math.inf:
            msg = f"weight_decay must be a number >= 0, got {self.weight_decay!r}"
            raise InvalidInputError(msg)
        if self.max_grad_norm is not None and (
            not isinstance(self.max_grad_norm, int | float) or not self.max_grad_norm > 0
        ):
            msg = f"max_grad_norm must be None or a positive number, got {self.max_grad_norm!r}"
            raise InvalidInputError(msg)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            msg = f"seed must be an integer, got {self.seed!r}"
            raise InvalidInputError(msg)
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            msg = f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}"
            raise InvalidInputError(msg)
        if self.device is not None and (not isinstance(self.device, str) or not self.device):
            msg = f"device must be None or a device string such as 'cpu' or 'cuda:0', got {self.device!r}"
            raise InvalidInputError(msg)
        targets = self.target_modules
        if isinstance(targets, str):
            if not targets:
                msg = "target_modules must not be empty"
                raise InvalidInputError(msg)
        else:
            try:
                targets = tuple(targets)
            except TypeError:
                targets = ()
            if not targets or not all(isinstance(t, str) and t for t in targets):
                msg = f"target_modules must be 'all-linear' or a sequence of module names, got {self.target_modules!r}"
                raise InvalidInputError(msg)
            object.__setattr__(self, "target_modules", targets)


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train_lora` produced: the adapter folder and the training losses.

    ``epoch_losses[i]`` is the mean per-answer-token loss over epoch ``i`` (measured in training mode,
    during that epoch); ``final_loss`` is the last of them.
    """

    output_dir: Path
    final_loss: float
    epoch_losses: tuple[float, ...]
    num_examples: int
    steps: int


def build_messages(example: TrainExample | Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages a model sees for ``example``, in training and at inference alike.

    ``example`` is a :class:`TrainExample` or a mapping with ``question`` and optionally ``context`` and
    ``system`` (an ``answer`` key is allowed and ignored, so inference needs none). The result is an
    optional system turn, then one user turn: the question alone, or with a context
    ``"Context:\\n<passage>\\n\\nQuestion: <question>"``. The answer is never included.

    >>> build_messages({"question": "Who?", "context": "Bob did it."})
    [{'role': 'user', 'content': 'Context:\\nBob did it.\\n\\nQuestion: Who?'}]
    """
    if isinstance(example, TrainExample):
        question, context, system = example.question, example.context, example.system
    elif isinstance(example, Mapping):
        _check_keys(example, "example")
        if "question" not in example:
            msg = f"example needs a 'question' key, got keys {sorted(example)}"
            raise InvalidInputError(msg)
        question, context, system = example["question"], example.get("context"), example.get("system")
        for name, value in (("question", question), ("context", context), ("system", system)):
            _check_text(name, value)
    else:
        msg = f"example must be a TrainExample or a mapping, got {type(example).__name__}"
        raise InvalidInputError(msg)
    messages = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    content = question if context is None else f"Context:\n{context}\n\nQuestion: {question}"
    messages.append({"role": "user", "content": content})
    return messages


def _check_keys(mapping: Mapping[str, Any], where: str) -> None:
    unknown = sorted(set(mapping) - set(_EXAMPLE_KEYS))
    if unknown:
        msg = f"{where} has unknown keys {unknown}; allowed: {list(_EXAMPLE_KEYS)}"
        raise InvalidInputError(msg)


def _as_examples(examples: Sequence[TrainExample | Mapping[str, Any]]) -> list[TrainExample]:
    if isinstance(examples, str | bytes | Mapping) or not isinstance(examples, Sequence):
        msg = f"examples must be a sequence of TrainExample or dicts, got {type(examples).__name__}"
        raise InvalidInputError(msg)
    if not examples:
        msg = "examples must not be empty"
        raise InvalidInputError(msg)
    out = []
    for i, item in enumerate(examples):
        if isinstance(item, TrainExample):
            out.append(item)
        elif isinstance(item, Mapping):
            _check_keys(item, f"example {i}")
            missing = [k for k in ("question", "answer") if k not in item]
            if missing:
                msg = f"example {i} is missing {missing}"
                raise InvalidInputError(msg)
            try:
                out.append(TrainExample(**item))
            except InvalidInputError as err:
                msg = f"example {i}: {err}"
                raise InvalidInputError(msg) from err
        else:
            msg = f"example {i} must be a TrainExample or a dict, got {type(item).__name__}"
            raise InvalidInputError(msg)
    return out


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists():
        if not output_dir.is_dir():
            msg = f"output_dir {str(output_dir)!r} exists and is not a folder"
            raise InvalidInputError(msg)
        if any(output_dir.iterdir()) and not overwrite:
            msg = f"output_dir {str(output_dir)!r} exists and is not empty; pass overwrite=True to replace it"
            raise InvalidInputError(msg)


def _encode(
    tokenizer: Any, examples: list[TrainExample], eos_id: int, limit: int, limit_reason: str
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per example: chat-template prompt + answer + EOS, labels -100 on the prompt."""
    encoded = []
    for i, example in enumerate(examples):
        prompt = render_prompt_ids(tokenizer, build_messages(example))
        answer = [*tokenizer(example.answer, add_special_tokens=False)["input_ids"], eos_id]
        total = len(prompt) + len(answer)
        if total > limit:
            msg = (
                f"example {i} has {total} tokens ({len(prompt)} prompt + {len(answer)} answer with EOS), more than "
                f"{limit_reason} {limit}; shorten its context or raise max_length"
            )
            raise ContextLengthError(msg)
        encoded.append((prompt + answer, [-100] * len(prompt) + answer))
    return encoded


def train_lora(
    base: str | Path,
    examples: Sequence[TrainExample | Mapping[str, Any]],
    output_dir: str | Path,
    *,
    config: TrainConfig | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train a LoRA adapter for ``base`` on ``examples`` and save it to ``output_dir``.

    Args:
        base: hub id or local folder of the base causal LM; its tokenizer must have a chat template.
        examples: :class:`TrainExample` objects or dicts with keys ``question``, ``answer`` and optionally
            ``context`` and ``system``. Prompts are laid out by :func:`build_messages`; use it at inference too.
        output_dir: folder for the adapter. It must not exist or be empty, unless ``overwrite=True``.
        config: :class:`TrainConfig` (rank, targets, learning rate, epochs, ...); defaults if omitted.
        overwrite: replace a non-empty ``output_dir`` (only once training has succeeded).

    Returns:
        A :class:`TrainResult`; load the adapter with ``LoRAModel(base, {"name": result.output_dir})``.

    Raises:
        InvalidInputError: bad examples, settings or ``output_dir``, or a base without a chat template.
        ContextLengthError: an example longer than ``config.max_length`` or the model's context window.
    """
    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        msg = f"config must be a TrainConfig, got {type(config).__name__}"
        raise InvalidInputError(msg)
    items = _as_examples(examples)
    output_dir = Path(output_dir).expanduser().absolute()
    _check_output_dir(output_dir, overwrite)

    torch = require("torch", "lora")
    transformers = require("transformers", "lora")
    peft = require("peft", "lora")

    folder = resolve_local(base, "base model")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    if getattr(tokenizer, "chat_template", None) is None:
        msg = f"the tokenizer of {str(base)!r} has no chat template; train_lora needs one to lay out prompts"
        raise InvalidInputError(msg)
    model_config = transformers.AutoConfig.from_pretrained(str(folder))
    window = getattr(model_config, "max_position_embeddings", None)
    limit, limit_reason = config.max_length, "max_length"
    if window is not None and int(window) < limit:
        limit, limit_reason = int(window), "the model's context window of"
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        gen_eos = transformers.GenerationConfig.from_pretrained(str(folder)).eos_token_id
        eos_id = gen_eos if isinstance(gen_eos, int) else (gen_eos or [None])[0]
    if eos_id is None:
        msg = f"{folder}: neither the tokenizer nor the generation config names an end-of-sequence token"
        raise InvalidInputError(msg)
    encoded = _encode(tokenizer, items, int(eos_id), limit, limit_reason)
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id)

    cuda = torch.cuda.is_available()
    device = torch.device(config.device or ("cuda" if cuda else "cpu"))
    if config.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, config.dtype)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            with quiet_transformers():
                model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype).to(device)
            model.config.use_cache = False
            lora = peft.LoraConfig(
                r=config.r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=(
                    config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
                ),
                task_type="CAUSAL_LM",
            )
            try:
                peft_model = peft.get_peft_model(model, lora)
            except ValueError as err:  # e.g. target modules not found in the base model
                msg = f"cannot apply LoRA to {str(base)!r} with target_modules={config.target_modules!r}: {err}"
                raise InvalidInputError(msg) from err
            epoch_losses, steps = _fit(torch, peft_model, encoded, pad_id, device, config)
        _check_converged(torch, peft_model, config)
        peft_model.peft_config["default"].base_model_name_or_path = (
            str(folder.absolute()) if Path(base).expanduser().is_dir() else str(base)
        )
        peft_model.save_pretrained(str(staging), safe_serialization=True, save_embedding_layers=False)
        metadata = {
            "base": str(base),
            "config": asdict(config),
            "num_examples": len(items),
            "steps": steps,
            "final_loss": epoch_losses[-1],
            "epoch_losses": epoch_losses,
            "messages_builder": f"{__name__}.build_messages",
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        _move_into_place(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved LoRA adapter to %s (final loss %.4f)", output_dir, epoch_losses[-1])
    return TrainResult(output_dir, epoch_losses[-1], tuple(epoch_losses), len(items), steps)


def _fit(
    torch: Any,
    model: Any,
    encoded: list[tuple[list[int], list[int]]],
    pad_id: int,
    device: Any,
    config: TrainConfig,
) -> tuple[list[float], int]:
    """The training loop: shuffled right-padded batches, AdamW, linear decay. Returns (epoch losses, steps)."""
    from tqdm.auto import tqdm

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    per_epoch = math.ceil(len(encoded) / config.batch_size)
    total = per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    epoch_losses: list[float] = []
    with tqdm(total=total, desc="LoRA training", unit="step", disable=not config.progress) as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(len(encoded), generator=generator).tolist()
            loss_sum, token_count = 0.0, 0
            for start in range(0, len(order), config.batch_size):
                batch = [encoded[i] for i in order[start : start + config.batch_size]]
                width = max(len(ids) for ids, _ in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                labels = torch.full((len(batch), width), -100, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, (ids, target) in enumerate(batch):
                    input_ids[row, : len(ids)] = torch.tensor(ids)
                    labels[row, : len(target)] = torch.tensor(target)
                    attention[row, : len(ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
                # Next-token loss, averaged over the answer tokens of the whole batch.
                shifted = labels[:, 1:].to(device)
                loss = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=-100
                )
                value = float(loss.detach())
                if not math.isfinite(value):  # stop at once: every later step would only spread it
                    step = epoch * per_epoch + start // config.batch_size + 1
                    msg = (
                        f"the training loss diverged ({value}) at step {step} of {total}; "
                        f"lower learning_rate (now {config.learning_rate})"
                    )
                    raise InvalidInputError(msg)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                n = int((shifted != -100).sum())
                loss_sum += value * n
                token_count += n
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}")
            epoch_loss = loss_sum / max(token_count, 1)
            epoch_losses.append(epoch_loss)
            logger.info("epoch %d/%d: loss %.4f", epoch + 1, config.epochs, epoch_loss)
    model.eval()
    return epoch_losses, total


def _check_converged(torch: Any, model: Any, config: TrainConfig) -> None:
    """Refuse an adapter that training broke: a non-finite weight, or a LoRA update that dwarfs its layer.

    The last optimiser step comes after the last measured loss, so a finite loss does not prove finite
    weights. ``||scale * B @ A||`` is computed as ``sqrt(trace((B^T B)(A A^T)))``, without forming ``B @ A``.
    """
    hint = f"lower learning_rate (now {config.learning_rate})"
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param).all()):
                msg = f"training diverged: the adapter weight {name} is not finite; {hint}"
                raise InvalidInputError(msg)
        for name, module in model.named_modules():
            lora_a, lora_b = getattr(module, "lora_A", None), getattr(module, "lora_B", None)
            if not isinstance(lora_a, torch.nn.ModuleDict) or "default" not in lora_a or lora_b is None:
                continue
            a, b = lora_a["default"].weight.float(), lora_b["default"].weight.float()
            scale = float(module.scaling["default"])
            update = abs(scale) * float(torch.sqrt(torch.trace((b.T @ b) @ (a @ a.T)).clamp(min=0)))
            base = float(module.get_base_layer().weight.float().norm())
            if not math.isfinite(update):
                msg = f"training diverged: the LoRA update of {name} overflows (its norm is {update}); {hint}"
                raise InvalidInputError(msg)
            if update > MAX_UPDATE_RATIO * max(base, 1e-12):
                msg = (
                    f"training diverged: the LoRA update of {name} has norm {update:.3g}, more than "
                    f"{MAX_UPDATE_RATIO:g} times the norm {base:.3g} of the weight it adapts; {hint}"
                )
                raise InvalidInputError(msg)


def _move_into_place(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Rename the finished adapter folder to ``output_dir``, replacing an old one only when allowed."""
    if not output_dir.exists():
        os.replace(staging, output_dir)
        return
    _check_output_dir(output_dir, overwrite)  # it may have been filled while we trained
    if not any(output_dir.iterdir()):
        os.replace(staging, output_dir)  # an empty folder can be replaced in one rename
        return
    old = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.old-", dir=output_dir.parent))
    os.replace(output_dir, old / output_dir.name)
    try:
        os.replace(staging, output_dir)
    except BaseException:
        os.replace(old / output_dir.name, output_dir)  # put the previous adapter back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
