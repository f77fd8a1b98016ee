"""Mixed-adapter LoRA batches in two matrix products per layer.

peft serves a batch whose rows use different adapters (``adapter_names=``) by looping, inside every
LoRA layer and at every decoding step, over the adapters present: gather the adapter's rows, two small
matmuls, scatter the result back. With 4 adapters on q/k/v/o of a 24-layer model that is ~3,000 small
kernels per step. On the lora_serving benchmark (bf16, CPU) the segmented path below serves a mixed batch 1.12x
faster than that loop, end to end (benchmarks/results/lora_serving.md).

:class:`SegmentedLoRA` computes the same sum with a fixed number of products per layer, however many
adapters a batch uses (the idea behind punica's and S-LoRA's batched LoRA, written with dense torch
ops, no custom kernel). For the ``u`` adapters a batch uses, once per ``generate`` call and per layer:

* ``A = [A_1; ...; A_u]``, shape ``(u*r, in)``, and ``B = [s_1 B_1, ..., s_u B_u]``, shape ``(out, u*r)``
  (scalings folded in, ranks padded with zeros to the largest);
* a row mask ``M``, shape ``(batch, u*r)``, that keeps in each row the block of that row's adapter
  (all zeros for a base-model row or for an adapter that does not adapt this layer).

The layer then returns ``base(x) + ((x A^T) * M) B^T``. The extra work is ``u*r`` columns per token,
small next to the base weights; the mask wastes ``(u-1)/u`` of it, cheap for the few adapters one batch
uses. peft keeps loading, naming, merging and removing adapters; this replaces only its mixed-batch
loop, and only for adapters that are plain linear LoRAs in every layer (no DoRA or other variants, no
LoRA bias, no embedding LoRA; no ``fan_in_fan_out``, ``modules_to_save`` or trainable tokens in the
model): :meth:`SegmentedLoRA.supported` says so per batch, and the engine otherwise falls back to
peft. The LoRA terms are computed in the adapters' dtype, as peft does (fp32 by default, also under a
bf16 base), and added to the base output in its dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ragplug._extras import require

__all__ = ["SegmentedLoRA"]


@dataclass
class _Layer:
    module: Any
    a: Any  # (u*r, in)
    b: Any  # (out, u*r)
    blocks: dict[str, slice]  # adapter -> its columns in a / b


class SegmentedLoRA:
    """Stacked LoRA weights of a peft model, cached per set of adapters, and the hooks that apply them."""

    def __init__(self, peft_model: Any) -> None:
        self.peft_model = peft_model
        self._cache: dict[tuple[str, ...], list[_Layer]] = {}
        self._unsupported: set[str] | None = None  # adapters this class cannot serve ("*": none of them)

    def clear(self) -> None:
        """Forget stacked weights (after adapters are added, removed, merged or changed)."""
        self._cache.clear()
        self._unsupported = None

    def supported(self, adapters: Sequence[str | None] | None = None) -> bool:
        """Whether ``adapters`` (default: all loaded) are plain linear LoRAs in every layer they adapt, and
        the model has no ``modules_to_save`` / trainable tokens; others go through peft."""
        if self._unsupported is None:
            self._unsupported = _unsupported_adapters(self.peft_model)
        if "*" in self._unsupported:
            return False
        if adapters is None:
            return not self._unsupported
        return not self._unsupported.intersection(a for a in adapters if a is not None)

    def _layers(self, adapters: tuple[str, ...]) -> list[_Layer]:
        cached = self._cache.get(adapters)
        if cached is not None:
            return cached
        torch = require("torch", "lora")
        from peft.tuners.lora import LoraLayer

        layers = []
        with torch.no_grad():
            for found in self.peft_model.modules():
                if not isinstance(found, LoraLayer):
                    continue
                module: Any = found
                present = [name for name in adapters if name in module.lora_A]
                if not present:
                    continue
                dtype = _compute_dtype(module, present)
                rank = max(module.lora_A[name].weight.shape[0] for name in present)
                in_f = module.lora_A[present[0]].weight.shape[1]
                out_f = module.lora_B[present[0]].weight.shape[0]
                device = module.lora_A[present[0]].weight.device
                a = torch.zeros(len(present) * rank, in_f, dtype=dtype, device=device)
                b = torch.zeros(out_f, len(present) * rank, dtype=dtype, device=device)
                blocks = {}
                for i, name in enumerate(present):
                    wa, wb = module.lora_A[name].weight, module.lora_B[name].weight
                    r = wa.shape[0]
                    a[i * rank : i * rank + r] = wa.to(dtype)
                    b[:, i * rank : i * rank + r] = (wb.float() * module.scaling[name]).to(dtype)
                    blocks[name] = slice(i * rank, (i + 1) * rank)
                layers.append(_Layer(module, a, b, blocks))
        self._cache = {adapters: layers}  # one set at a time: a server's mix changes batch to batch
        return layers

    @contextlib.contextmanager
    def apply(self, row_adapters: Sequence[str | None]) -> Iterator[None]:
        """Inside the block, a forward pass sends row ``i`` through adapter ``row_adapters[i]`` (None = base).

        peft's own LoRA layers are disabled meanwhile, so the batch size of every forward pass must be
        ``len(row_adapters)`` (no beam search or repeated sequences).
        """
        torch = require("torch", "lora")
        used = tuple(sorted({name for name in row_adapters if name is not None}))
        layers = self._layers(used) if used else []
        handles = []
        masks: dict[tuple[Any, ...], Any] = {}
        for layer in layers:
            key = (layer.a.shape[0], layer.a.device, layer.a.dtype, *((n, s.start) for n, s in layer.blocks.items()))
            mask = masks.get(key)
            if mask is None:
                mask = torch.zeros(len(row_adapters), layer.a.shape[0], dtype=layer.a.dtype, device=layer.a.device)
                for row, name in enumerate(row_adapters):
                    if name is not None and name in layer.blocks:
                        mask[row, layer.blocks[name]] = 1
                masks[key] = mask
            handles.append(layer.module.register_forward_hook(_hook(layer.a, layer.b, mask)))
        try:
            with self.peft_model.disable_adapter():
                yield
        finally:
            for handle in handles:
                handle.remove()


def _hook(a: Any, b: Any, mask: Any) -> Any:
    import torch.nn.functional as F

    def add_lora(module: Any, args: tuple[Any, ...], output: Any) -> Any:
        x = args[0]
        if x.shape[0] != mask.shape[0]:
            msg = f"a segmented LoRA batch has {mask.shape[0]} rows, the forward pass {x.shape[0]}"
            raise RuntimeError(msg)
        h = F.linear(x.to(a.dtype), a)
        h = h * mask.view(mask.shape[0], *([1] * (h.dim() - 2)), mask.shape[1])
        return output + F.linear(h, b).to(output.dtype)

    return add_lora


def _compute_dtype(module: Any, adapters: Sequence[str]) -> Any:
    """The dtype LoRA runs in for this layer: the adapters' own (peft keeps bf16/fp16 adapters in fp32 by
    default and computes them in fp32), the widest among them."""
    torch = require("torch", "lora")
    dtypes = {module.lora_A[name].weight.dtype for name in adapters}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        if dtype in dtypes:
            return dtype
    return torch.float32


def _unsupported_adapters(peft_model: Any) -> set[str]:
    """Adapters that are not a plain linear LoRA in some layer; ``{"*"}`` when the model as a whole is not."""
    torch = require("torch", "lora")
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    out: set[str] = set()
    for module in peft_model.modules():
        if isinstance(module, AuxiliaryTrainingWrapper):  # modules_to_save, trainable tokens
            return {"*"}
        if not isinstance(module, LoraLayer):
            continue
        layer: Any = module
        if getattr(layer, "fan_in_fan_out", False):
            return {"*"}
        out.update(getattr(layer, "lora_embedding_A", {}).keys())
        out.update(getattr(layer, "lora_variant", {}).keys())  # DoRA and friends
        out.update(name for name, bias in getattr(layer, "lora_bias", {}).items() if bias)
        for name in layer.lora_A:
            if not isinstance(layer.lora_A[name], torch.nn.Linear) or not isinstance(
                layer.lora_B[name], torch.nn.Linear
            ):
                out.add(name)
    return out
