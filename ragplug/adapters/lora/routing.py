"""The adapters of a :class:`~ragplug.adapters.lora.engine.LoRAModel` and how a batch's rows reach them.

:class:`Adapters` owns the served model object (peft wraps the base model at the first adapter and unwraps
it at the last), the named adapters, the merged one, and the segmented-LoRA view. Loading is all or
nothing; an adapter whose modules or shapes do not fit the base is refused before any generation.

Routing a mixed batch: every row goes through its own adapter, by stacked LoRA weights and two matmuls per
layer (:mod:`.batched`), or by peft's ``adapter_names=`` loop for LoRA variants (``LoadConfig(mixed_lora=
"peft")`` forces it). peft cannot mix DoRA adapters, so such a batch is split into one call per adapter.
"""

from __future__ import annotations

import contextlib
import json
import threading
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ragplug.adapters.lora.batched import SegmentedLoRA
from ragplug.adapters.lora.loading import resolve_local, tensor_shapes
from ragplug.errors import AdapterError, AdapterMismatchError, InvalidInputError, UnknownAdapterError

__all__ = ["BASE", "Adapters", "Route"]

BASE = "__base__"  # peft's name for "no adapter" in adapter_names

Route = tuple[list[int], Any, dict[str, Any]]  # (row indices, context manager, generate kwargs) per call


class Adapters:
    """Named LoRA adapters over one base model. ``lock`` (re-entrant) guards every change and every batch."""

    def __init__(self, model: Any, base_name: str) -> None:
        self.model: Any = model
        self.base_name = base_name
        self.lock = threading.RLock()
        self.folders: dict[str, Path] = {}
        self.merged: str | None = None
        self.segmented: SegmentedLoRA | None = None

    @property
    def names(self) -> list[str]:
        return list(self.folders)

    def add(self, name: str, path: str | Path) -> None:
        """Load a LoRA adapter under ``name``; checks it fits the base model before loading it.

        All or nothing: if the adapter cannot be loaded, the model is left as it was and ``name`` stays free.
        """
        if not isinstance(name, str) or not name or name == BASE:
            msg = f"adapter name must be a non-empty string other than {BASE!r}, got {name!r}"
            raise InvalidInputError(msg)
        with self.lock:
            if name in self.folders:
                msg = f"an adapter named {name!r} is already loaded; remove it first"
                raise AdapterError(msg)
            if self.merged is not None:
                msg = f"adapter {self.merged!r} is merged; unmerge() before loading more adapters"
                raise AdapterError(msg)
            folder = resolve_local(path, "adapter")
            self.check(name, folder)
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
                self.segmented = SegmentedLoRA(self.model)
            self.model.eval()
            self.folders[name] = folder
            assert self.segmented is not None
            self.segmented.clear()

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

    def remove(self, name: str) -> None:
        with self.lock:
            self.require(name)
            if self.merged == name:
                self.unmerge()
            if len(self.folders) == 1:
                self.model = self.model.unload()  # drop the LoRA layers entirely: back to the bare base
                self.segmented = None
            else:
                self.model.delete_adapter(name)
                self.segmented.clear()  # type: ignore[union-attr]
            del self.folders[name]

    def merge(self, name: str) -> None:
        """Merge ``name`` into the base weights; while merged, only requests for ``name`` are served."""
        with self.lock:
            self.require(name)
            if self.merged == name:
                return
            if self.merged is not None:
                self.unmerge()
            self.model.set_adapter(name)
            self.model.merge_adapter([name])
            self.merged = name

    def unmerge(self) -> None:
        with self.lock:
            if self.merged is not None:
                self.model.unmerge_adapter()
                self.merged = None

    def require(self, name: str | None) -> None:
        if name is not None and name not in self.folders:
            msg = f"unknown adapter {name!r}; loaded adapters: {sorted(self.folders)}"
            raise UnknownAdapterError(msg)

    def servable(self, name: str | None) -> None:
        """Raise unless the model's current state can serve ``name`` (loaded, and not shadowed by a merge)."""
        self.require(name)  # it may have been removed since submit
        if self.merged is not None and name != self.merged:
            msg = f"adapter {self.merged!r} is merged; call unmerge() to serve {name or 'the base model'!r}"
            raise AdapterError(msg)

    def check(self, name: str, folder: Path) -> None:
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
            shapes = tensor_shapes(weights)
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

    def route(self, adapters: list[str | None], mixed_lora: str = "segmented") -> list[Route]:
        """How a batch's rows reach their adapters: ``(row indices, context manager, generate kwargs)`` per call.
        ``mixed_lora`` is ``LoadConfig.mixed_lora`` as it is now."""
        everyone = list(range(len(adapters)))
        if not self.folders or self.merged is not None:
            return [(everyone, contextlib.nullcontext(), {})]
        segmented = self.segmented
        if mixed_lora == "segmented" and segmented is not None and segmented.supported(adapters):
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
