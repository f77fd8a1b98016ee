"""The metadata filter language: one table of cases, shared semantics for every store."""

from __future__ import annotations

import pytest

from ragplug.errors import FilterError
from ragplug.retrievers.late_interaction import compile_filter

DOCS = [
    {"id": 0, "year": 1843, "tag": "ghost", "lang": "en"},
    {"id": 1, "year": 1844, "tag": "miser", "lang": "en"},
    {"id": 2, "year": 1850, "tag": "ghost", "lang": "fr"},
    {"id": 3, "tag": "feast"},  # no year, no lang
    {"id": 4, "year": "unknown", "tag": ["a", "b"]},
]

CASES = [
    (None, [0, 1, 2, 3, 4]),
    ({"tag": "ghost"}, [0, 2]),
    ({"tag": {"$eq": "ghost"}}, [0, 2]),
    ({"tag": {"$ne": "ghost"}}, [1, 3, 4]),
    ({"tag": {"$in": ["ghost", "feast"]}}, [0, 2, 3]),
    ({"tag": {"$nin": ["ghost", "feast"]}}, [1, 4]),
    ({"lang": {"$nin": ["fr"]}}, [0, 1, 3, 4]),  # a missing field is "not in"
    ({"year": {"$gt": 1843}}, [1, 2]),
    ({"year": {"$gte": 1843}}, [0, 1, 2]),
    ({"year": {"$lt": 1850}}, [0, 1]),
    ({"year": {"$lte": 1850, "$gt": 1843}}, [1, 2]),
    ({"tag": "ghost", "lang": "en"}, [0]),  # implicit and
    ({"$and": [{"tag": "ghost"}, {"year": {"$gt": 1843}}]}, [2]),
    ({"$or": [{"tag": "miser"}, {"lang": "fr"}]}, [1, 2]),
    ({"$or": [{"$and": [{"tag": "ghost"}, {"lang": "en"}]}, {"tag": "feast"}]}, [0, 3]),
    ({"year": {"$gt": "1800"}}, [4]),  # strings compare with strings only; numbers never match a string bound
]

TYPED = [  # JSON equality: booleans never equal numbers, containers compare element-wise
    ({"flag": 1}, [{"flag": True}, {"flag": 1}, {"flag": 1.0}], [False, True, True]),
    ({"flag": True}, [{"flag": True}, {"flag": 1}], [True, False]),
    ({"flag": {"$in": [0]}}, [{"flag": False}, {"flag": 0}], [False, True]),
    ({"flag": {"$ne": 1}}, [{"flag": True}, {}], [True, True]),
    ({"tags": {"$eq": ["a", "b"]}}, [{"tags": ["a", "b"]}, {"tags": ["b", "a"]}, {"tags": "a"}], [True, False, False]),
    ({"n": {"$gte": 1}}, [{"n": True}, {"n": 1}, {"n": "2"}], [False, True, False]),
]


@pytest.mark.parametrize(("filter_", "docs", "expected"), TYPED)
def test_equality_is_json_equality(filter_, docs, expected) -> None:
    match = compile_filter(filter_)
    assert [match(d) for d in docs] == expected


@pytest.mark.parametrize(("filter_", "expected"), CASES)
def test_filter_semantics(filter_, expected) -> None:
    match = compile_filter(filter_)
    assert [d["id"] for d in DOCS if match(d)] == expected


BAD = [
    ({"year": {"$regex": "18"}}, "unknown filter operator '\\$regex'"),
    ({"$not": {"tag": "ghost"}}, "unknown logical operator"),
    ({"$and": []}, "non-empty list"),
    ({"$or": {"tag": "a"}}, "non-empty list"),
    ({"tag": {"$in": "ghost"}}, "takes a list"),
    ({"year": {"$gt": [1]}}, "number or a string"),
    ({"year": {"$gt": 1, "plain": 2}}, "mixes operators"),
    ({}, "empty dict"),
    (["tag"], "must be a dict"),
    ({"x": {"$in": [float("nan")]}}, "finite"),
    ({"x": {"$eq": object()}}, "JSON values"),
    ({"stave": {"gte": 3}}, r"field 'stave' in filter is given a dict without .*did you mean \{'\$gte': 3\}"),
    ({"stave": {"a": 1}}, r"without \$ operators: \{'a': 1\}; to match a dict value itself"),
    ({"stave": [1, 3]}, r"field 'stave' .* a list \[1, 3\] where a value is expected; write \{'\$in'"),
    ({"$or": [{"stave": (1,)}]}, r"field 'stave' in filter.\$or\[0\]"),
]


@pytest.mark.parametrize(("filter_", "message"), BAD)
def test_bad_filters_raise(filter_, message) -> None:
    with pytest.raises(FilterError, match=message):
        compile_filter(filter_)
