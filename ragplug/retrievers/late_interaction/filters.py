"""A small filter language over metadata, parsed once into typed nodes that every store evaluates.

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

Equality is JSON equality: ``true`` never equals ``1``, a list equals only the same list. A range
comparison matches numbers against a number bound and strings against a string bound (by code point);
against a missing field, a boolean or a value of the other type it does not match. An unknown operator,
an empty ``$and``/``$or``, a ``$in`` without a list, a field given a dict without ``$`` operators
(``{"page": {"gte": 3}}``) or a list (``{"page": [1, 3]}``: write ``$in``, or ``$eq`` for the list itself),
or nesting deeper than 32 levels raises :class:`~ragplug.errors.FilterError`: nothing is silently ignored.
So does a search whose filter matches nothing because a bound can never match the values stored in its
field (``{"page": {"$gt": "2"}}`` where pages are numbers); a field that no stored record has is allowed
and logged at debug level (see :func:`explain_empty`).

:func:`parse_filter` turns the dict into nodes (:class:`Comparison`, :class:`And`, :class:`Or`), validated
once where the filter enters; stores evaluate the nodes, in Python (:func:`to_predicate`) or as SQL.

>>> match = compile_filter({"year": {"$gte": 1843}, "$or": [{"tag": "ghost"}, {"tag": "spirit"}]})
>>> match({"year": 1843, "tag": "ghost"}), match({"year": 1843, "tag": "miser"})
(True, False)
>>> compile_filter({"year": {"$regex": "18.*"}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ragplug.errors.FilterError: unknown filter operator '$regex' on field 'year'; supported: ...
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any, Union

from ragplug.errors import FilterError

__all__ = [
    "MAX_DEPTH",
    "And",
    "Comparison",
    "Filter",
    "FilterNode",
    "MetadataPredicate",
    "Op",
    "Or",
    "compile_filter",
    "explain_empty",
    "fields_of",
    "json_kind",
    "parse_filter",
    "to_predicate",
]

logger = logging.getLogger(__name__)

Filter = Mapping[str, Any]
MetadataPredicate = Callable[[Mapping[str, Any]], bool]
MAX_DEPTH = 32  # $and/$or nesting; deeper filters are refused (they would exhaust the stack)


class Op(str, Enum):
    """A comparison operator, with what each back end needs to evaluate it."""

    EQ = "$eq"
    NE = "$ne"
    IN = "$in"
    NIN = "$nin"
    GT = "$gt"
    GTE = "$gte"
    LT = "$lt"
    LTE = "$lte"

    @property
    def is_range(self) -> bool:
        return self in _RANGE

    @property
    def python(self) -> Callable[[Any, Any], bool]:
        """The Python comparison of a range operator."""
        return _RANGE[self]

    @property
    def sql(self) -> str:
        """The SQL comparison of a range operator."""
        return _RANGE_SQL[self]


_RANGE: dict[Op, Callable[[Any, Any], bool]] = {
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
}
_RANGE_SQL = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_OPS = {op.value for op in Op}


@dataclass(frozen=True)
class Comparison:
    """``field <op> value``; for ``$in``/``$nin`` the value is a tuple of options."""

    field: str
    op: Op
    value: Any


@dataclass(frozen=True)
class And:
    children: tuple[FilterNode, ...]


@dataclass(frozen=True)
class Or:
    children: tuple[FilterNode, ...]


FilterNode = Union[Comparison, And, Or]  # noqa: UP007 - a runtime alias, also used with isinstance


def parse_filter(filter: Filter | FilterNode | None) -> FilterNode | None:
    """Validate a filter dict into nodes (``None`` stays ``None``: no filter; nodes pass through)."""
    if filter is None or isinstance(filter, Comparison | And | Or):
        return filter
    return _parse(filter, path="filter", depth=0)


def compile_filter(filter: Filter | FilterNode | None) -> MetadataPredicate:
    """Validate ``filter`` and return a predicate over a metadata dict (``None`` matches everything)."""
    node = parse_filter(filter)
    return (lambda _metadata: True) if node is None else to_predicate(node)


def _parse(node: Any, path: str, depth: int) -> FilterNode:
    if depth > MAX_DEPTH:
        msg = f"filter is nested more than {MAX_DEPTH} levels deep (at {path[:80]}...)"
        raise FilterError(msg)
    if not isinstance(node, Mapping):
        msg = f"{path} must be a dict, got {type(node).__name__}: {node!r:.200}"
        raise FilterError(msg)
    if not node:
        msg = f"{path} is an empty dict; pass None for no filter"
        raise FilterError(msg)
    parts: list[FilterNode] = []
    for key, value in node.items():
        if not isinstance(key, str):
            msg = f"{path} has a non-string key {key!r}"
            raise FilterError(msg)
        if key.startswith("$"):
            parts.append(_parse_logical(key, value, path, depth))
        else:
            parts.extend(_parse_field(key, value, path))
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _parse_logical(op: str, value: Any, path: str, depth: int) -> FilterNode:
    if op not in ("$and", "$or"):
        msg = f"unknown logical operator {op!r} in {path}; supported: $and, $or"
        raise FilterError(msg)
    if not isinstance(value, list | tuple) or not value:
        msg = f"{op} in {path} takes a non-empty list of filters, got {value!r:.200}"
        raise FilterError(msg)
    children = tuple(_parse(child, f"{path}.{op}[{i}]", depth + 1) for i, child in enumerate(value))
    return And(children) if op == "$and" else Or(children)


def _parse_field(field: str, condition: Any, path: str) -> list[FilterNode]:
    if isinstance(condition, Mapping):
        keys = [k for k in condition if isinstance(k, str) and k.startswith("$")]
        if not keys:
            guess = {f"${k}": v for k, v in condition.items() if f"${k}" in _OPS}
            hint = f"did you mean {guess!r}? " if guess else ""
            msg = (
                f"field {field!r} in {path} is given a dict without $ operators: {condition!r:.200}; {hint}"
                "to match a dict value itself, write {'$eq': {...}}"
            )
            raise FilterError(msg)
        if len(keys) != len(condition):
            msg = f"field {field!r} in {path} mixes operators and plain keys: {condition!r:.200}"
            raise FilterError(msg)
        return [_parse_comparison(field, op, operand) for op, operand in condition.items()]
    if isinstance(condition, list | tuple | set | frozenset):
        msg = (
            f"field {field!r} in {path} is given a list {condition!r:.200} where a value is expected; "
            "write {'$in': [...]} to match any of them, or {'$eq': [...]} to match the list itself"
        )
        raise FilterError(msg)
    return [_parse_comparison(field, "$eq", condition)]


def _parse_comparison(field: str, op_name: str, operand: Any) -> Comparison:
    try:
        op = Op(op_name)
    except ValueError:
        supported = ", ".join(sorted(o.value for o in Op))
        msg = f"unknown filter operator {op_name!r} on field {field!r}; supported: {supported}"
        raise FilterError(msg) from None
    if op in (Op.IN, Op.NIN):
        if not isinstance(operand, list | tuple | set | frozenset):
            msg = f"{op.value} on field {field!r} takes a list, got {operand!r:.200}"
            raise FilterError(msg)
        options = tuple(operand)
        for option in options:
            _check_json(option, field, op)
        return Comparison(field, op, options)
    if op.is_range and (isinstance(operand, bool) or not isinstance(operand, int | float | str)):
        msg = f"{op.value} on field {field!r} takes a number or a string, got {operand!r:.200}"
        raise FilterError(msg)
    _check_json(operand, field, op)
    return Comparison(field, op, operand)


def _check_json(value: Any, field: str, op: Op, depth: int = 0) -> None:
    """Operands are JSON values (what metadata can hold), so every back end compares them the same way."""
    if value is None or isinstance(value, bool | int | str):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            msg = f"{op.value} on field {field!r} takes finite numbers, got {value!r}"
            raise FilterError(msg)
        return
    if depth < MAX_DEPTH and isinstance(value, list | tuple):
        for item in value:
            _check_json(item, field, op, depth + 1)
        return
    if depth < MAX_DEPTH and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        for item in value.values():
            _check_json(item, field, op, depth + 1)
        return
    msg = f"{op.value} on field {field!r} takes JSON values, got {type(value).__name__} {value!r:.200}"
    raise FilterError(msg)


def fields_of(node: FilterNode) -> list[str]:
    """The metadata fields a filter reads, in order of first use."""
    if isinstance(node, Comparison):
        return [node.field]
    return list(dict.fromkeys(f for child in node.children for f in fields_of(child)))


def json_kind(value: Any) -> str:
    """The JSON type of a value, as Postgres ``jsonb_typeof`` names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, Mapping) else "array"


def _comparisons(node: FilterNode) -> list[Comparison]:
    if isinstance(node, Comparison):
        return [node]
    return [c for child in node.children for c in _comparisons(child)]


def explain_empty(node: FilterNode, kinds: Mapping[str, set[str]]) -> None:
    """Why a filter matched no stored record, given the JSON kinds (:func:`json_kind`) each field it names
    holds in the store (a field no record has is absent from ``kinds``).

    A comparison whose bound can never match what its field holds (``{"$gt": "2"}`` on a field of numbers,
    ``"ghost"`` against lists) raises :class:`~ragplug.errors.FilterError` naming the field: a mistake, not
    an empty result. A field that no stored record has is allowed (it may be filled later) and logged at
    debug level.
    """
    missing = [f for f in fields_of(node) if f not in kinds]
    if missing:
        logger.debug("filter names metadata field(s) %s that no stored record has", missing)
    for comparison in _comparisons(node):
        held = kinds.get(comparison.field)
        if not held or comparison.op in (Op.NE, Op.NIN):
            continue
        bounds = comparison.value if comparison.op is Op.IN else (comparison.value,)
        wanted = {json_kind(b) for b in bounds}
        if not wanted & held:
            msg = (
                f"filter {comparison.op.value} {comparison.value!r:.80} on field {comparison.field!r} can never "
                f"match: stored records hold {'/'.join(sorted(held))} values there, the bound is "
                f"{'/'.join(sorted(wanted))}"
            )
            raise FilterError(msg)


# -- the Python back end ----------------------------------------------------------------------------
_MISSING = object()


def to_predicate(node: FilterNode) -> MetadataPredicate:
    """A predicate over a metadata dict that evaluates ``node``."""
    if isinstance(node, And):
        children = [to_predicate(child) for child in node.children]
        return lambda metadata: all(child(metadata) for child in children)
    if isinstance(node, Or):
        children = [to_predicate(child) for child in node.children]
        return lambda metadata: any(child(metadata) for child in children)
    field, op, operand = node.field, node.op, node.value
    if op is Op.EQ:
        return lambda metadata: json_equal(metadata.get(field, _MISSING), operand)
    if op is Op.NE:
        return lambda metadata: not json_equal(metadata.get(field, _MISSING), operand)
    if op is Op.IN:
        return lambda metadata: any(json_equal(metadata.get(field, _MISSING), o) for o in operand)
    if op is Op.NIN:
        return lambda metadata: not any(json_equal(metadata.get(field, _MISSING), o) for o in operand)
    compare = op.python
    numeric = not isinstance(operand, str)

    def check(metadata: Mapping[str, Any]) -> bool:
        value = metadata.get(field, _MISSING)
        if numeric:
            return isinstance(value, int | float) and not isinstance(value, bool) and compare(value, operand)
        return isinstance(value, str) and compare(value, operand)

    return check


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: numbers by value (``1 == 1.0``), booleans only with booleans, containers
    element-wise; what Postgres ``jsonb`` equality does too."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple | Mapping) or isinstance(b, list | tuple | Mapping):
        return False
    return bool(a == b)
