"""The SQL back end of the filter language: filter nodes as a ``WHERE`` clause over a ``jsonb`` column.

Same semantics as the Python back end (:func:`~ragplug.retrievers.late_interaction.filters.to_predicate`),
checked by one table of cases run against both: ``jsonb`` equality is JSON equality (``true`` is not ``1``);
a missing key is "not equal" and "not in"; a range comparison matches numbers against a number bound and
strings against a string bound, compared by code point (``COLLATE "C"`` on UTF-8); anything else does not
match. Field names and values are always query parameters, never spliced into the SQL text.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from ragplug.retrievers.late_interaction.filters import And, Comparison, FilterNode, Op, Or

__all__ = ["to_sql"]


def to_sql(node: FilterNode, column: sql.Composable) -> tuple[sql.Composable, list[Any]]:
    """``node`` as a boolean SQL expression over the ``jsonb`` ``column``, with its parameters."""
    params: list[Any] = []
    return _node(node, column, params), params


def _node(node: FilterNode, column: sql.Composable, params: list[Any]) -> sql.Composable:
    if isinstance(node, And | Or):
        joiner = sql.SQL(" AND " if isinstance(node, And) else " OR ")
        return sql.SQL("({})").format(joiner.join(_node(child, column, params) for child in node.children))
    return _comparison(node, column, params)


def _comparison(node: Comparison, column: sql.Composable, params: list[Any]) -> sql.Composable:
    value = sql.SQL("({} -> %s)").format(column)
    if node.op is Op.EQ:
        params.extend([node.field, Jsonb(node.value)])
        return sql.SQL("{} = %s::jsonb").format(value)
    if node.op is Op.NE:
        params.extend([node.field, Jsonb(node.value)])
        return sql.SQL("{} IS DISTINCT FROM %s::jsonb").format(value)
    if node.op in (Op.IN, Op.NIN):
        params.extend([node.field, [Jsonb(o) for o in node.value]])
        test = sql.SQL("coalesce({} = ANY(%s::jsonb[]), false)").format(value)
        return test if node.op is Op.IN else sql.SQL("NOT {}").format(test)
    kind, cast = (
        ("string", sql.SQL(' COLLATE "C"')) if isinstance(node.value, str) else ("number", sql.SQL("::numeric"))
    )
    params.extend([node.field, node.field, node.value])
    return sql.SQL(
        "(CASE WHEN jsonb_typeof({value}) = {kind} THEN ({column} ->> %s){cast} {op} %s ELSE false END)"
    ).format(value=value, kind=sql.Literal(kind), column=column, cast=cast, op=sql.SQL(node.op.sql))
