"""Loading a base model for :class:`~ragplug.adapters.lora.engine.LoRAModel`: local folder or hub id, dtype,
device, quantization, and the token facts serving needs (vocabulary rows, context window, end and padding
tokens). Also the safetensors header reader adapters are checked with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragplug._extras import require
from ragplug._progress import quiet_transformers
from ragplug.adapters.lora.config import LoadConfig
from ragplug.errors import InvalidInputError

__all__ = ["LoadedBase", "load_base", "resolve_local", "tensor_shapes"]


@dataclass(frozen=True)
class LoadedBase:
    """A base model in eval mode on its device, its tokenizer (left padding) and its token facts."""

    model: Any
    tokenizer: Any
    device: Any
    vocab_rows: int  # valid token ids: 0 .. vocab_rows - 1
    context_window: int
    eos_token_ids: list[int]
    pad_token_id: int


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


def tensor_shapes(path: Path) -> dict[str, list[int]]:
    """The shape of every tensor in a safetensors file, read from its header (checked against the file size)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {key: list(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118 - no __iter__


def load_base(base: str | Path, load: LoadConfig) -> LoadedBase:
    """Load ``base`` (hub id or folder) as ``load`` says; raises InvalidInputError for what cannot be served."""
    torch = require("torch", "lora")
    transformers = require("transformers", "lora")
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
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    tokenizer.padding_side = "left"
    with quiet_transformers():  # no per-load weight bars; transformers' load report still warns
        model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    if load.device_map is None and not load.quantization:
        model = model.to(torch.device(load.device or ("cuda" if cuda else "cpu")))
    model = model.eval()
    _contiguous_head_input(model)
    context_window = int(getattr(model.config, "max_position_embeddings", None) or tokenizer.model_max_length)
    gen = model.generation_config
    eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
    eos_token_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_token_ids:
        eos_token_ids.append(tokenizer.eos_token_id)
    if not eos_token_ids:
        msg = f"{folder}: neither the generation config nor the tokenizer names an end-of-sequence token"
        raise InvalidInputError(msg)
    pad = tokenizer.pad_token_id
    return LoadedBase(
        model=model,
        tokenizer=tokenizer,
        device=next(model.parameters()).device,
        vocab_rows=int(model.get_input_embeddings().num_embeddings),
        context_window=context_window,
        eos_token_ids=eos_token_ids,
        pad_token_id=int(pad if pad is not None else eos_token_ids[0]),
    )


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
