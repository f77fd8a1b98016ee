"""LLMExtractor: validation, retries, the per-passage cache, the report; and a grammar-constrained tiny LLM."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.extract import PhraseExtractor
from ragplug.retrievers.graph.llm import (
    PROMPT_VERSION,
    ExtractionCache,
    ExtractionReport,
    LLMExtractor,
    extraction_schema,
    lora_chat_function,
)
from ragplug.retrievers.graph.model import Entity, Extraction, Extractor, Passage, Relation

GOOD = {
    "entities": [
        {"name": "Ebenezer Scrooge", "type": "Person", "description": "A miser."},
        {"name": "Jacob Marley", "type": "person", "description": "His dead partner."},
        {"name": "ebenezer  SCROOGE", "type": "person", "description": "Again."},
    ],
    "relations": [
        {"source": "Ebenezer Scrooge", "target": "Jacob Marley", "relation": "Partner Of"},
        {"source": "Jacob Marley", "target": "London", "relation": "lived in"},
        {"source": "Jacob Marley", "target": "jacob marley", "relation": "is"},
        {"source": "Ebenezer Scrooge", "target": "Jacob Marley", "relation": "partner of"},
    ],
}
EMPTY_ANSWER = {"entities": [], "relations": []}


class Recorded:
    """A chat function replaying canned answers (an exception instance is raised), recording each call."""

    def __init__(self, answers: Sequence[Any] | None = None, by_text: Mapping[str, Any] | None = None) -> None:
        self.answers = list(answers or [])
        self.by_text = dict(by_text or {})
        self.calls: list[tuple[list[dict[str, str]], dict[str, Any]]] = []

    def __call__(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        self.calls.append(([dict(m) for m in messages], dict(schema)))
        if self.by_text:
            text = messages[-1]["content"].removeprefix("Passage:\n")
            answer = self.by_text[text]
        else:
            answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def passages(*texts: str) -> list[Passage]:
    return [Passage(f"p{i}", text, "doc") for i, text in enumerate(texts)]


def test_it_is_an_extractor_with_settings() -> None:
    extractor = LLMExtractor(Recorded(), model_name="recorded", max_entities=5, max_relations=7)
    assert isinstance(extractor, Extractor)
    assert extractor.name == "llm"
    settings = extractor.settings
    assert json.loads(json.dumps(settings)) == settings
    assert (settings["model_name"], settings["prompt_version"]) == ("recorded", PROMPT_VERSION)
    assert (settings["max_entities"], settings["max_relations"]) == (5, 7)
    assert LLMExtractor(Recorded(), model_name="other").settings != settings
    assert extractor.schema["properties"]["entities"]["maxItems"] == 5
    assert extractor.schema["properties"]["relations"]["maxItems"] == 7


def test_an_answer_is_validated_and_normalised() -> None:
    chat = Recorded([GOOD])
    extraction = LLMExtractor(chat, model_name="recorded").extract(passages("Scrooge and Marley."))[0]
    assert extraction.entities == (
        Entity("ebenezer scrooge", "Ebenezer Scrooge", "person", "A miser."),
        Entity("jacob marley", "Jacob Marley", "person", "His dead partner."),
        Entity("london", "London", "unknown", ""),  # an endpoint the model did not list is added
    )
    assert set(extraction.relations) == {
        Relation("ebenezer scrooge", "jacob marley", "partner of", 2.0),  # stated twice
        Relation("jacob marley", "london", "lived in", 1.0),
    }  # the self-relation is dropped
    ((messages, schema),) = chat.calls
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "Scrooge and Marley." in messages[1]["content"]
    assert schema == extraction_schema(12, 16)


def test_garbage_and_exceptions_are_retried() -> None:
    chat = Recorded(["not json at all", RuntimeError("the server hung up"), GOOD])
    extractor = LLMExtractor(chat, model_name="recorded", retries=2)
    extraction = extractor.extract(passages("Scrooge and Marley."))[0]
    assert len(extraction.entities) == 3
    assert len(chat.calls) == 3
    report = extractor.last_report
    assert (report.calls, report.retried, report.failed, report.cache_hits) == (3, 1, [], 0)


@pytest.mark.parametrize(
    "bad",
    [
        {},  # no entities
        {"entities": "Scrooge", "relations": []},
        {"entities": ["Scrooge"], "relations": []},
        {"entities": [{"name": 7, "type": "person", "description": ""}], "relations": []},
        {"entities": [], "relations": [{"source": ["a"], "target": "b", "relation": "r"}]},
        [GOOD],
        None,
        "",
    ],
)
def test_invalid_answers_are_retried_then_the_passage_is_skipped(bad: Any, caplog: pytest.LogCaptureFixture) -> None:
    chat = Recorded([bad, bad, GOOD])
    extractor = LLMExtractor(chat, model_name="recorded", retries=1)
    with caplog.at_level(logging.WARNING, logger="ragplug.retrievers.graph.llm"):
        out = extractor.extract(passages("one passage", "another one"))
    assert out[0] == Extraction(passage_id="p0")
    assert len(out[1].entities) == 3  # the next passage still gets its answer
    report = extractor.last_report
    assert report.failed == ["p0"]
    assert "invalid answer" in report.reasons["p0"]
    assert (report.calls, report.retried) == (3, 1)
    assert "skipped 1 of 2 passages" in caplog.text
    assert "p0" in caplog.text


def test_a_valid_empty_answer_is_not_retried() -> None:
    chat = Recorded([EMPTY_ANSWER])
    extractor = LLMExtractor(chat, model_name="recorded")
    out = extractor.extract(passages("Nothing happens here.", "   \n "))
    assert out == [Extraction(passage_id="p0"), Extraction(passage_id="p1")]
    assert len(chat.calls) == 1  # a blank passage is never sent
    assert extractor.last_report == ExtractionReport(passages=2, calls=1, empty=["p0", "p1"])


def test_answers_beyond_the_limits_are_cut() -> None:
    many = {
        "entities": [{"name": f"Name {i}", "type": "t", "description": ""} for i in range(9)],
        "relations": [{"source": f"Name {i}", "target": f"Name {i + 1}", "relation": "next"} for i in range(8)],
    }
    extractor = LLMExtractor(Recorded([json.dumps(many)]), model_name="recorded", max_entities=4, max_relations=2)
    extraction = extractor.extract(passages("a list"))[0]
    assert [e.key for e in extraction.entities] == ["name 0", "name 1", "name 2", "name 3"]
    assert len(extraction.relations) == 2


def test_the_cache_makes_a_rerun_free(tmp_path: Path) -> None:
    texts = ("Scrooge and Marley.", "Bob Cratchit.", "Tiny Tim.")
    first = Recorded(by_text=dict.fromkeys(texts, GOOD))
    extractor = LLMExtractor(first, model_name="recorded", cache=tmp_path / "cache")
    out = extractor.extract(passages(*texts))
    assert (len(first.calls), extractor.last_report.cache_hits) == (3, 0)
    assert len(ExtractionCache(tmp_path / "cache")) == 3

    second = Recorded()  # any call would fail: it has no answer
    again = LLMExtractor(second, model_name="recorded", cache=ExtractionCache(tmp_path / "cache"))
    assert again.extract(passages(*texts)) == out
    assert second.calls == []
    assert (again.last_report.calls, again.last_report.cache_hits) == (0, 3)

    other_model = Recorded(by_text=dict.fromkeys(texts, EMPTY_ANSWER))
    LLMExtractor(other_model, model_name="another model", cache=tmp_path / "cache").extract(passages(*texts))
    assert len(other_model.calls) == 3  # another model's answers are its own


def test_a_corrupt_cache_file_is_recomputed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = ExtractionCache(tmp_path)
    chat = Recorded([GOOD, GOOD])
    extractor = LLMExtractor(chat, model_name="recorded", cache=cache)
    [expected] = extractor.extract(passages("Scrooge and Marley."))
    path = cache.path(extractor.cache_key("Scrooge and Marley."))
    path.write_text('{"key": "truncat', encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="ragplug.retrievers.graph.llm"):
        assert extractor.extract(passages("Scrooge and Marley.")) == [expected]
    assert "corrupt extraction cache file" in caplog.text
    assert (len(chat.calls), extractor.last_report.cache_hits) == (2, 0)
    assert json.loads(path.read_text(encoding="utf-8"))["value"] == GOOD  # rewritten
    assert extractor.extract(passages("Scrooge and Marley.")) == [expected]
    assert extractor.last_report.cache_hits == 1


def test_cache_files_are_sharded_and_written_atomically(tmp_path: Path) -> None:
    cache = ExtractionCache(tmp_path / "c")
    key = ExtractionCache.key("model", 1, {"type": "object"}, "text")
    assert key == ExtractionCache.key("model", 1, {"type": "object"}, "text")
    assert key != ExtractionCache.key("model", 1, {"type": "object"}, "text!")
    assert cache.get(key) is None
    cache.put(key, {"entities": []})
    cache.put(key, {"entities": [], "relations": []})
    assert cache.path(key) == tmp_path / "c" / key[:2] / f"{key}.json"
    assert cache.get(key) == {"entities": [], "relations": []}
    assert [p.name for p in (tmp_path / "c").rglob("*")] == [key[:2], f"{key}.json"]  # no temporary file left
    other = ExtractionCache.key("other")
    cache.path(other).parent.mkdir(parents=True, exist_ok=True)
    cache.path(other).write_text(json.dumps({"key": key, "value": 1}), encoding="utf-8")
    assert cache.get(other) is None  # a file holding another key's entry
    with pytest.raises(InvalidInputError, match=re.escape("'../escape'")):
        cache.get("../escape")


def test_passages_are_asked_concurrently_in_order() -> None:
    texts = [f"Name{chr(65 + i)} was here." for i in range(12)]
    answers = {
        t: {"entities": [{"name": t.split()[0], "type": "x", "description": ""}], "relations": []} for t in texts
    }
    extractor = LLMExtractor(Recorded(by_text=answers), model_name="recorded", max_workers=4)
    out = extractor.extract(passages(*texts), show_progress=False)
    assert [x.entities[0].name for x in out] == [t.split()[0] for t in texts]
    assert [x.passage_id for x in out] == [f"p{i}" for i in range(12)]


def test_queries_use_the_phrase_extractor_and_no_chat_call() -> None:
    chat = Recorded()
    extractor = LLMExtractor(chat, model_name="recorded", fallback_queries=PhraseExtractor(phrases=False))
    assert {e.key for e in extractor.query_entities("What did Bob Cratchit say?")} >= {"bob cratchit"}
    assert chat.calls == []


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"model_name": ""}, "''"),
        ({"model_name": "m", "retries": -1}, "-1"),
        ({"model_name": "m", "max_entities": 0}, "0"),
        ({"model_name": "m", "max_workers": 0}, "0"),
        ({"model_name": "m", "cache": 3}, "3"),
        ({"model_name": "m", "fallback_queries": "phrase"}, "'phrase'"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidInputError, match=named):
        LLMExtractor(Recorded(), **kwargs)


def test_a_tiny_grammar_constrained_llm_always_gives_valid_answers(lora_model: Any, tmp_path: Path) -> None:
    chat = lora_chat_function(lora_model, max_new_tokens=40)
    schema = extraction_schema(2, 2)
    answer = chat([{"role": "user", "content": "Scrooge met Marley."}], schema)
    jsonschema.validate(answer, schema)

    extractor = LLMExtractor(chat, model_name="tiny", max_entities=2, max_relations=2, cache=tmp_path, max_workers=3)
    texts = [f"Scrooge met Marley on day {i}. Bob Cratchit worked for Scrooge." for i in range(6)]
    out = extractor.extract(passages(*texts), show_progress=False)
    report = extractor.last_report
    assert (report.calls, report.failed, report.retried) == (6, [], 0)
    for extraction in out:
        keys = {e.key for e in extraction.entities}
        assert all(keys) and len(keys) == len(extraction.entities)
        assert all({r.source, r.target} <= keys for r in extraction.relations)
    assert extractor.extract(passages(*texts), show_progress=False) == out
    assert (extractor.last_report.calls, extractor.last_report.cache_hits) == (0, 6)
