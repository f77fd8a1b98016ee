"""Encoders rebuilt from what an index recorded about them, through a small registry of encoder kinds.

A store keeps the :class:`~ragplug.retrievers.late_interaction.base.EncoderIdentity` of the encoder that
wrote it; its ``settings`` name the kind (``"colbert"``) and the model (hub id, or the absolute path of a
local folder). :func:`encoder_from_identity` loads that encoder again, so an index reopens from its path
alone (as RAGatouille's ``from_index`` and byaldi's ``from_index`` do). Another encoder family registers
itself with :func:`register_encoder`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction.base import Encoder, EncoderIdentity

__all__ = ["encoder_from_identity", "encoder_of_kind", "register_encoder"]

# kind -> (target "module:factory", the recorded settings the factory takes as keyword arguments)
_ENCODERS: dict[str, tuple[str, tuple[str, ...]]] = {}


def register_encoder(kind: str, target: str, rebuild_keys: tuple[str, ...] = ()) -> None:
    """Make ``target`` (``"package.module:Class"``, called as ``Class(model, **kwargs)``) rebuild encoders
    whose identity records ``{"encoder": kind}``; ``rebuild_keys`` are the recorded settings passed on."""
    _ENCODERS[kind] = (target, rebuild_keys)


def _resolve(target: str) -> Callable[..., Encoder]:
    module, _, attr = target.partition(":")
    factory: Callable[..., Encoder] = getattr(importlib.import_module(module), attr)
    return factory


def encoder_of_kind(kind: str, model: str, **kwargs: Any) -> Encoder:
    """An encoder of the registered ``kind`` (``"colbert"``, ``"colpali"``...) for ``model``."""
    if kind not in _ENCODERS:
        msg = f"no registered encoder of kind {kind!r}; registered: {sorted(_ENCODERS)}"
        raise InvalidInputError(msg)
    return _resolve(_ENCODERS[kind][0])(model, **kwargs)


def encoder_from_identity(identity: EncoderIdentity | None, where: str, **overrides: Any) -> Encoder:
    """Load the encoder an index was written by, from its recorded identity; ``overrides`` (``device``,
    ``batch_size``...) are passed to the encoder. Raises :class:`~ragplug.errors.InvalidInputError` saying
    what to pass as ``model=`` when the identity cannot be rebuilt here."""
    if identity is None:
        msg = f"{where} records no encoder (it is empty, or was never written to); pass model="
        raise InvalidInputError(msg)
    settings: Mapping[str, Any] = identity.settings
    kind = settings.get("encoder", "colbert")  # indexes written before settings were recorded are ColBERT ones
    if kind not in _ENCODERS:
        msg = f"{where} was written by a {kind!r} encoder, which no registered encoder rebuilds; pass model="
        raise InvalidInputError(msg)
    model = str(settings.get("model", identity.name))
    if os.path.isabs(model) and not os.path.isdir(model):
        msg = (
            f"{where} was written by the model in {model}, which is not on this machine; pass model= "
            "(that checkpoint's folder or hub id)"
        )
        raise InvalidInputError(msg)
    target, keys = _ENCODERS[kind]
    kwargs = {key: settings[key] for key in keys if settings.get(key) is not None}
    return _resolve(target)(model, **(kwargs | overrides))


register_encoder(
    "colbert", "ragplug.retrievers.colbert:ColBERTEncoder", rebuild_keys=("query_maxlen", "doc_maxlen", "revision")
)
register_encoder(
    "colpali",
    "ragplug.retrievers.colpali:ColPaliEncoder",
    rebuild_keys=("pool_factor", "pooler", "max_visual_tokens", "revision", "dtype"),
)
