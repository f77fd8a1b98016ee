"""The ragplug error hierarchy.

Every error ragplug raises on purpose derives from :class:`RagplugError`, so callers can catch the
whole family in one ``except``. The subclasses also derive from the matching built-in (``ValueError``,
``KeyError``, ``ImportError``) so code written against the built-ins keeps working.
"""

from __future__ import annotations

__all__ = [
    "AdapterError",
    "AdapterMismatchError",
    "ContextLengthError",
    "DatasetError",
    "DuplicateIdError",
    "EncoderMismatchError",
    "EvaluationError",
    "FilterError",
    "InvalidInputError",
    "JudgeError",
    "MissingExtraError",
    "RagplugError",
    "SchemaError",
    "StoreCorruptedError",
    "StoreError",
    "UnknownAdapterError",
    "UnknownIdError",
]


class RagplugError(Exception):
    """Base class of every error ragplug raises on purpose."""


class InvalidInputError(RagplugError, ValueError):
    """An argument is invalid: empty corpus or query, ``k <= 0``, wrong shapes, and so on."""


class FilterError(InvalidInputError):
    """A metadata filter is malformed or uses an unknown operator."""


class DuplicateIdError(InvalidInputError):
    """The same id appears twice in one call, or an ``add`` names ids that already exist."""


class UnknownIdError(RagplugError, KeyError):
    """An id given to ``get`` / ``delete`` is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class MissingExtraError(RagplugError, ImportError):
    """An optional dependency is missing; the message names the ``pip install`` line that adds it."""


class StoreError(RagplugError):
    """A store cannot be read or written."""


class StoreCorruptedError(StoreError):
    """A persisted store is truncated, corrupted, or written in an unknown format version."""


class EncoderMismatchError(StoreError):
    """A persisted store was written by another encoder (different model or dimension)."""


class AdapterError(RagplugError):
    """A LoRA adapter cannot be loaded, removed, merged or used as asked."""


class UnknownAdapterError(AdapterError, KeyError):
    """A request names an adapter that is not loaded."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class AdapterMismatchError(AdapterError, InvalidInputError):
    """An adapter was trained for another base model (module names or shapes differ)."""


class SchemaError(InvalidInputError):
    """A JSON schema (structured output or tool parameters) is invalid or rejected by the grammar compiler."""


class ContextLengthError(InvalidInputError):
    """A prompt does not fit the model's context window with room for the requested new tokens."""


class DatasetError(InvalidInputError):
    """An evaluation dataset (BEIR folder, QA JSONL, Alpaca JSON) is malformed; the message names the file,
    the line or row, and the field."""


class EvaluationError(RagplugError):
    """An evaluation could not produce a valid result (never reported as a NaN score)."""


class JudgeError(EvaluationError):
    """An LLM judge gave no valid judgement for an item after its retries; ``item_id`` names the item."""

    def __init__(self, message: str, item_id: str | None = None) -> None:
        super().__init__(message)
        self.item_id = item_id
