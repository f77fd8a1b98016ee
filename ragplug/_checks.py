"""Small argument checks shared across modules, raising :class:`~ragplug.errors.InvalidInputError`."""

from __future__ import annotations

from typing import Any

from ragplug.errors import InvalidInputError

__all__ = ["integer_at_least"]


def integer_at_least(value: Any, what: str, least: int = 1) -> int:
    """``value`` if it is an integer (not a bool) of at least ``least``; else an error naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        msg = f"{what} must be an integer >= {least}, got {value!r}"
        raise InvalidInputError(msg)
    return value
