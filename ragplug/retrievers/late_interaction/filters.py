"""A small filter language over metadata, shared by every store.

A filter is a dict. Top-level keys are metadata fields (implicit ``$and`` between them) or the logical
operators ``$and`` / ``$or`` (each taking a non-empty list of filters). A field maps either to a plain
value (equality) or to a dict of comparison operators:

==========  ===============================================  ==========================
operator    meaning                                          example
==========  ===============================================  ==========================
``$eq``     equal                                            ``{"year": {"$eq": 1843}}``
``$ne``     not equal (a missing field counts as not equal)  ``{"lang": {"$ne": "fr"}}``
``$in``     value is one of a list                           ``{"tag": {"$in": ["a", "b"]}}``
``$nin``    value is none of a list (missing field matches)  ``{"tag": {"$nin": ["x"]}}``
``$gt``     greater than                                     ``{"page": {"$gt": 3}}``
``$gte``    greater than or equal                            ``{"page": {"$gte": 3}}``
``$lt``     less than                                        ``{"page": {"$lt": 10}}``
``$lte``    less than or equal                               ``{"page": {"$lte": 10}}``
==========  ===============================================  ==========================

A range comparison against a missing field, or between incomparable types (a string and a number),
does not match. An unknown operator, an empty ``$and``/``$or``, a ``$in`` without a list, or nesting
deeper than 32 levels raises :class:`~ragplug.errors.FilterError`: nothing is silently ignored.

>>> match = compile_filter({"year": {"$gte": 1843}, "$or": [{"tag": "ghost"}, {"tag": "spirit"}]})
>>> match({"year": 1843, "tag": "ghost"}), match({"year": 1843, "tag": "miser"})
(True, False)
>>> compile_filter({"year": {"$regex": "18.*"}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ragplug.errors.FilterError: unknown filter operator '$regex' on field 'year'; supported: ...
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from ragplug.errors import FilterError

__all__ = ["COMPARISON_OPERATORS", "LOGICAL_OPERATORS", "Filter", "MetadataPredicate", "compile_filter"]

Filter = Mapping[str, Any]
MetadataPredicate = Callable[[Mapping[str, Any]], bool]

_MISSING = object()

_RANGE: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": operator.gt,
    "$gte": operator.ge,
    "$lt": operator.lt,
    "$lte": operator.le,
}
COMPARISON_OPERATORS = frozenset({"$eq", "$ne", "$in", "$nin", *_RANGE})
LOGICAL_OPERATORS = frozenset({"$and", "$or"})
MAX_DEPTH = 32  # $and/$or nesting; deeper filters are refused (they would exhaust the stack)


def compile_filter(filter: Filter | None) -> MetadataPredicate:
    """Validate ``filter`` and return a predicate over a metadata dict (``None`` matches everything)."""
    if filter is None:
        return lambda _metadata: True
    return _compile(filter, path="filter", depth=0)


def _compile(node: Any, path: str, depth: int) -> MetadataPredicate:
    if depth > MAX_DEPTH:
        msg = f"filter is nested more than {MAX_DEPTH} levels deep (at {path[:80]}...)"
        raise FilterError(msg)
    if not isinstance(node, Mapping):
        msg = f"{path} must be a dict, got {type(node).__name__}: {node!r}"
        raise FilterError(msg)
    if not node:
        msg = f"{path} is an empty dict; pass None for no filter"
        raise FilterError(msg)
    parts: list[MetadataPredicate] = []
    for key, value in node.items():
        if not isinstance(key, str):
            msg = f"{path} has a non-string key {key!r}"
            raise FilterError(msg)
        if key.startswith("$"):
            parts.append(_compile_logical(key, value, path, depth))
        else:
            parts.append(_compile_field(key, value, path))
    if len(parts) == 1:
        return parts[0]
    return lambda metadata: all(part(metadata) for part in parts)


def _compile_logical(op: str, value: Any, path: str, depth: int) -> MetadataPredicate:
    if op not in LOGICAL_OPERATORS:
        msg = f"unknown logical operator {op!r} in {path}; supported: $and, $or"
        raise FilterError(msg)
    if not isinstance(value, list | tuple) or not value:
        msg = f"{op} in {path} takes a non-empty list of filters, got {value!r}"
        raise FilterError(msg)
    children = [_compile(child, f"{path}.{op}[{i}]", depth + 1) for i, child in enumerate(value)]
    if op == "$and":
        return lambda metadata: all(child(metadata) for child in children)
    return lambda metadata: any(child(metadata) for child in children)


def _compile_field(field: str, condition: Any, path: str) -> MetadataPredicate:
    if isinstance(condition, Mapping) and any(isinstance(k, str) and k.startswith("$") for k in condition):
        if not all(isinstance(k, str) and k.startswith("$") for k in condition):
            msg = f"field {field!r} in {path} mixes operators and plain keys: {condition!r}"
            raise FilterError(msg)
        checks = [_compile_comparison(field, op, operand) for op, operand in condition.items()]
        return lambda metadata: all(check(metadata) for check in checks)
    return _compile_comparison(field, "$eq", condition)


def _compile_comparison(field: str, op: str, operand: Any) -> MetadataPredicate:
    if op not in COMPARISON_OPERATORS:
        supported = ", ".join(sorted(COMPARISON_OPERATORS))
        msg = f"unknown filter operator {op!r} on field {field!r}; supported: {supported}"
        raise FilterError(msg)
    if op in ("$in", "$nin"):
        if not isinstance(operand, list | tuple | set | frozenset):
            msg = f"{op} on field {field!r} takes a list, got {operand!r}"
            raise FilterError(msg)
        options = list(operand)
        if op == "$in":
            return lambda metadata: metadata.get(field, _MISSING) in options
        return lambda metadata: metadata.get(field, _MISSING) not in options
    if op == "$eq":
        return lambda metadata: metadata.get(field, _MISSING) == operand
    if op == "$ne":
        return lambda metadata: metadata.get(field, _MISSING) != operand
    if isinstance(operand, bool) or not isinstance(operand, int | float | str):
        msg = f"{op} on field {field!r} takes a number or a string, got {operand!r}"
        raise FilterError(msg)
    compare = _RANGE[op]

    def check(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(field, _MISSING)
        if value is _MISSING or isinstance(value, bool):
            return False
        try:
            return bool(compare(value, operand))
        except TypeError:
            return False

    return check
