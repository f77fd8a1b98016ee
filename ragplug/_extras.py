"""One helper for optional dependencies.

Optional backends are imported lazily, when asked for. A missing one raises
:class:`~ragplug.errors.MissingExtraError` naming the exact ``pip install "ragplug[...]"`` line,
chained to the original ``ImportError``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from importlib.util import find_spec
from types import ModuleType
from typing import Any

from ragplug.errors import MissingExtraError


@cache
def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingExtraError` naming the ragplug extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        msg = (
            f"{module!r} is required for this feature but is not installed. "
            f'Install it with: pip install "ragplug[{extra}]"'
        )
        raise MissingExtraError(msg) from err


def lazy_attributes(module: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports each public name from its submodule on first use."""

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        msg = f"module {module!r} has no attribute {name!r}"
        raise AttributeError(msg)

    return __getattr__
