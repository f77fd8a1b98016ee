"""The construction keywords ChatLoRA (LangChain) and LoRALLM (LlamaIndex) share, checked the same way in both:
settings known by several names, unknown keywords, and the engine given as ``llm=`` or loaded from ``base=``."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from ragplug.adapters.lora.config import LoadConfig, pop_setting
from ragplug.adapters.lora.engine import LoRAModel
from ragplug.errors import InvalidInputError, UnknownAdapterError

__all__ = ["LOADING", "check_keywords", "engine_from", "load_options", "pop_setting"]

LOADING = ("base", "adapters", "device", "dtype", "load")  # the keywords that load a model


def check_keywords(owner: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Refuse keywords ``owner`` does not take, naming them (with the closest accepted name) and the accepted."""
    names = sorted(accepted)
    unknown = sorted(set(given) - set(names))
    if not unknown:
        return
    hints = [
        f"{name!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(name, names, 1)) else repr(name)
        for name in unknown
    ]
    msg = f"{owner} got unexpected keyword argument(s) {', '.join(hints)}; it accepts: {', '.join(names)}"
    raise InvalidInputError(msg)


def load_options(load: LoadConfig | None, *, device: str | None = None, dtype: str | None = None) -> LoadConfig:
    """``load`` with the ``device=`` / ``dtype=`` shortcuts applied; a shortcut that contradicts ``load`` is an
    error (a field of ``load`` left at its default is no contradiction)."""
    load = LoadConfig() if load is None else load
    if not isinstance(load, LoadConfig):
        msg = f"load must be a LoadConfig, got {type(load).__name__}"
        raise InvalidInputError(msg)
    defaults = LoadConfig()
    for name, value in (("device", device), ("dtype", dtype)):
        current = getattr(load, name)
        if value is not None and current not in (getattr(defaults, name), value):
            msg = f"{name}={value!r} contradicts load=LoadConfig({name}={current!r}); pass one of them"
            raise InvalidInputError(msg)
    return replace(  # replace() checks the values again
        load, device=load.device if device is None else device, dtype=load.dtype if dtype is None else dtype
    )


def engine_from(
    owner: str,
    *,
    base: str | Path | None,
    adapters: Mapping[str, str | Path] | None,
    device: str | None,
    dtype: str | None,
    load: LoadConfig | None,
    llm: LoRAModel | None,
    adapter: str | None,
) -> LoRAModel:
    """The engine ``owner`` wraps: ``llm`` as given, or ``base`` loaded with ``adapters``; ``adapter`` (the
    default) must be one of them. Everything that can be checked without loading is checked first."""
    loading = {"base": base, "adapters": adapters, "device": device, "dtype": dtype, "load": load}
    if llm is not None:
        given = [name for name, value in loading.items() if value is not None]
        if given:
            msg = (
                f"got llm= and {', '.join(name + '=' for name in given)}: pass either llm= (a loaded LoRAModel) "
                "or base= with its loading options (to load one), not both"
            )
            raise InvalidInputError(msg)
        if not isinstance(llm, LoRAModel):
            msg = f"llm must be a ragplug LoRAModel, got {type(llm).__name__}; to load a model by name pass base="
            raise InvalidInputError(msg)
    elif base is None:
        msg = f"{owner} needs base= (hub id or folder of the base model) or llm= (a loaded LoRAModel)"
        raise InvalidInputError(msg)
    else:
        options = load_options(load, device=device, dtype=dtype)
        if adapters is not None and not isinstance(adapters, Mapping):
            msg = f"adapters must be a mapping {{name: folder or hub id}}, got {type(adapters).__name__}"
            raise InvalidInputError(msg)
        if adapter is not None and adapter not in (adapters or {}):
            msg = f"unknown adapter {adapter!r}; adapters to load: {sorted(adapters or {})}"
            raise UnknownAdapterError(msg)
        llm = LoRAModel(base, adapters, load=options)
    if adapter is not None and adapter not in llm.adapters:
        msg = f"unknown adapter {adapter!r}; loaded adapters: {sorted(llm.adapters)}"
        raise UnknownAdapterError(msg)
    return llm
