"""Communities of a hand-built graph: Leiden finds the cliques we built, summaries say what their passages say."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.communities import (
    MENTIONS,
    detect_communities,
    entity_graph,
    extractive_summary,
    llm_summary,
    passage_graph,
    summarize_communities,
)
from ragplug.retrievers.graph.model import CO_OCCURS, SYNONYM, Community, GraphSnapshot, Passage

LOGGER = "ragplug.retrievers.graph.communities"
RED = [f"red{i}" for i in range(5)]
BLUE = [f"blue{i}" for i in range(5)]

PASSAGES = {
    "p-red-many": Passage("p-red-many", "Red0 met Red1 and Red2 at dawn. The weather was fine.", "d1"),
    "p-red-one": Passage("p-red-one", "Nobody saw Red3 that day.", "d1"),
    "p-blue": Passage("p-blue", "Blue0, Blue1, Blue2, Blue3 and Blue4 sailed together.", "d2"),
    "p-both": Passage("p-both", "Red4 waved at Blue1 across the bay.", "d2"),
    "p-none": Passage("p-none", "Nothing happened here.", "d3"),
}


def clique_rows(keys: Sequence[str], weight: float) -> list[tuple[str, str, str, float]]:
    return [(a, b, CO_OCCURS, weight) for a, b in itertools.combinations(keys, 2)]


def two_cliques() -> GraphSnapshot:
    """Two 5-entity cliques (weight 3) joined by one weak edge, an unrelated entity, five passages."""
    keys = [*RED, *BLUE, "loner"]
    mentions = [
        ("red0", "p-red-many", 1.0),
        ("red1", "p-red-many", 1.0),
        ("red2", "p-red-many", 2.0),
        ("red3", "p-red-one", 1.0),
        *((b, "p-blue", 1.0) for b in BLUE),
        ("red4", "p-both", 1.0),
        ("blue1", "p-both", 1.0),
        ("loner", "p-none", 1.0),
    ]
    relations = [*clique_rows(RED, 3.0), *clique_rows(BLUE, 3.0), ("red0", "blue0", CO_OCCURS, 0.1)]
    # red0 is the most central red entity: an extra edge to red1 (only inside the community).
    relations.append(("red0", "red1", CO_OCCURS, 2.0))
    return GraphSnapshot.build(
        version=7,
        passage_ids=list(PASSAGES),
        entities=[(k, k.capitalize()) for k in keys],
        mentions=mentions,
        relations=relations,
    )


def passages_of(ids: Sequence[str]) -> list[Passage]:
    return [PASSAGES[i] for i in ids]


NAMES = {k: k.capitalize() for k in [*RED, *BLUE, "loner"]}


def test_two_cliques_are_two_communities_with_exactly_their_members() -> None:
    communities = detect_communities(two_cliques(), levels=1)
    assert [set(c.entities) for c in communities] in ([set(RED), set(BLUE)], [set(BLUE), set(RED)])
    red = next(c for c in communities if "red0" in c.entities)
    blue = next(c for c in communities if "blue0" in c.entities)
    assert red.entities[:2] == ("red0", "red1")  # most central first (weighted degree inside)
    # p-red-many mentions three red entities, p-red-one and p-both one each (then snapshot order).
    assert red.passages == ("p-red-many", "p-red-one", "p-both")
    assert blue.passages == ("p-blue", "p-both")
    assert red.rank == pytest.approx(10 * 3.0 + 2.0)  # total internal relation weight; the bridge is outside
    assert blue.rank == pytest.approx(10 * 3.0)
    assert {c.level for c in communities} == {0}
    assert sorted(c.id for c in communities) == ["c0-0", "c0-1"]
    # Ids by size, ties by first entity key: equal sizes, "blue..." < "red...".
    assert blue.id == "c0-0"


def test_detection_is_deterministic_for_a_seed() -> None:
    first = detect_communities(two_cliques(), seed=3, passages_of=passages_of)
    again = detect_communities(two_cliques(), seed=3, passages_of=passages_of)
    assert first == again


def test_min_size_leaves_small_communities_out() -> None:
    default = detect_communities(two_cliques(), levels=1)
    assert all("loner" not in c.entities for c in default)
    with_singletons = detect_communities(two_cliques(), levels=1, min_size=1)
    loner = [c for c in with_singletons if c.entities == ("loner",)]
    assert len(loner) == 1
    assert loner[0].passages == ("p-none",)
    assert loner[0].id == "c0-2"  # the smallest comes last
    assert detect_communities(two_cliques(), levels=1, min_size=6) == []


def four_cliques_in_two_pairs() -> GraphSnapshot:
    """Cliques a, b (strongly joined), c, d (strongly joined), the pairs weakly joined."""
    groups = {g: [f"{g}{i}" for i in range(4)] for g in "abcd"}
    relations = [row for keys in groups.values() for row in clique_rows(keys, 1.0)]
    relations += [("a0", "b0", CO_OCCURS, 3.0), ("c0", "d0", CO_OCCURS, 3.0), ("b1", "c1", CO_OCCURS, 0.1)]
    keys = [k for keys in groups.values() for k in keys]
    return GraphSnapshot.build(1, ["p"], [(k, k) for k in keys], [("a0", "p", 1.0)], relations)


def test_level_one_merges_level_zero_communities() -> None:
    communities = detect_communities(four_cliques_in_two_pairs(), levels=2)
    level0 = {frozenset(c.entities) for c in communities if c.level == 0}
    level1 = {frozenset(c.entities) for c in communities if c.level == 1}
    cliques = {frozenset(f"{g}{i}" for i in range(4)) for g in "abcd"}
    assert level0 == cliques
    assert level1 == {
        frozenset(f"{g}{i}" for g in "ab" for i in range(4)),
        frozenset(f"{g}{i}" for g in "cd" for i in range(4)),
    }
    assert sorted(c.id for c in communities if c.level == 1) == ["c1-0", "c1-1"]
    only_level0 = detect_communities(four_cliques_in_two_pairs(), levels=1)
    assert {c.level for c in only_level0} == {0}


def test_levels_stop_when_nothing_merges() -> None:
    # The two cliques stay apart at every resolution tried: a level that merges nothing is not repeated.
    assert {c.level for c in detect_communities(two_cliques(), levels=4)} == {0}


def test_empty_snapshot_gives_no_communities() -> None:
    empty = GraphSnapshot.build(0, [], [], [], [])
    assert detect_communities(empty) == []
    assert entity_graph(empty).vcount() == 0
    assert passage_graph(empty).vcount() == 0
    no_edges = GraphSnapshot.build(0, ["p"], [("x", "X")], [("x", "p", 1.0)], [])
    assert detect_communities(no_edges) == []


@pytest.mark.parametrize("bad", [{"resolution": 0.0}, {"min_size": 0}, {"levels": 0}])
def test_bad_arguments_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        detect_communities(two_cliques(), **bad)


def test_communities_get_extractive_titles_and_summaries() -> None:
    communities = detect_communities(two_cliques(), levels=1, passages_of=passages_of)
    red = next(c for c in communities if "red0" in c.entities)
    assert red.title.startswith("Red0, Red1, ")
    assert red.summary.startswith("Key entities: Red0, Red1")
    assert "Red0 met Red1 and Red2 at dawn." in red.summary
    without_texts = detect_communities(two_cliques(), levels=1)
    assert all(c.summary.startswith("Key entities: ") and c.title for c in without_texts)


def test_extractive_summary_puts_the_sentence_mentioning_most_entities_first() -> None:
    passages = [
        Passage("p1", "Red3 was alone. The sea was calm!", "d"),
        Passage("p2", "Then red0 and RED1 argued; Red2 listened? Red0 left.", "d"),
        Passage("p3", "Red0 met Red1.", "d"),
    ]
    title, summary = extractive_summary(["red0", "red1", "red2", "red3"], passages, NAMES)
    assert title == "Red0, Red1, Red2"
    head = "Key entities: Red0, Red1, Red2, Red3."
    assert summary == f"{head} Then red0 and RED1 argued; Red2 listened? Red0 met Red1. Red3 was alone. Red0 left."
    assert "sea" not in summary  # mentions no entity
    _, short = extractive_summary(["red0", "red1", "red2", "red3"], passages, NAMES, max_chars=70)
    assert short == f"{head} Red0 met Red1. Red3 was alone."  # the best sentence is too long; shorter ones fit
    assert len(short) <= 70


def test_extractive_summary_matches_whole_words_only() -> None:
    passages = [Passage("p", "Redwood grew. Ann saw it.", "d")]
    _, summary = extractive_summary(["red", "ann"], passages, {"red": "Red", "ann": "Ann"})
    assert summary == "Key entities: Red, Ann. Ann saw it."


class RecordedChat:
    """A chat function that replays recorded answers (an exception instance is raised) and keeps the calls."""

    def __init__(self, answers: Sequence[Any]) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[list[Mapping[str, str]], Mapping[str, Any]]] = []

    def __call__(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        self.calls.append((list(messages), schema))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


RED_PASSAGES = [PASSAGES["p-red-many"], PASSAGES["p-red-one"]]


def test_llm_summary_uses_a_valid_answer() -> None:
    chat = RecordedChat([{"title": "The red circle", "summary": "Red0 meets Red1 and Red2."}])
    assert llm_summary(chat, RED, RED_PASSAGES, NAMES) == ("The red circle", "Red0 meets Red1 and Red2.")
    ((messages, schema),) = chat.calls
    assert schema["required"] == ["title", "summary"]
    prompt = messages[-1]["content"]
    assert "Red0" in prompt
    assert "Red0 met Red1 and Red2 at dawn." in prompt
    assert "[p-red-one]" in prompt


def test_llm_summary_retries_once_after_garbage(caplog: pytest.LogCaptureFixture) -> None:
    chat = RecordedChat(["not json at all", {"title": "Reds", "summary": "They met."}])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert llm_summary(chat, RED, RED_PASSAGES, NAMES) == ("Reds", "They met.")
    assert len(chat.calls) == 2
    assert not caplog.records


def test_llm_summary_falls_back_to_extractive_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    chat = RecordedChat([{"title": "", "summary": "x"}, RuntimeError("model fell over")])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        result = llm_summary(chat, RED, RED_PASSAGES, NAMES, max_chars=500)
    assert result == extractive_summary(RED, RED_PASSAGES, NAMES, max_chars=500)
    assert result[1].startswith("Key entities: Red0")
    assert len(chat.calls) == 2
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "model fell over" in record.getMessage()
    assert "extractive" in record.getMessage()


def test_llm_summary_clips_a_long_summary() -> None:
    chat = RecordedChat([{"title": "T", "summary": "word " * 100}])
    _, summary = llm_summary(chat, RED, RED_PASSAGES, NAMES, max_chars=50)
    assert len(summary) <= 50


def test_summarize_communities_with_and_without_a_model() -> None:
    bare = [Community("c0-0", tuple(RED), ("p-red-many", "p-red-one"), "", ""), Community("c0-1", ("x",), (), "", "")]
    asked: list[list[str]] = []

    def recording_passages_of(ids: Sequence[str]) -> list[Passage]:
        asked.append(list(ids))
        return [PASSAGES[i] for i in ids]

    extractive = summarize_communities(bare, recording_passages_of, NAMES)
    assert asked == [["p-red-many", "p-red-one"]]  # a community without passages asks for none
    assert extractive[0].summary.startswith("Key entities: Red0")
    assert extractive[1].title == "x"  # a key without a display name shows as itself
    assert [c.id for c in extractive] == ["c0-0", "c0-1"]
    chat = RecordedChat([{"title": "Reds", "summary": "S1"}, {"title": "X", "summary": "S2"}])
    written = summarize_communities(bare, passages_of, NAMES, chat=chat, show_progress=False)
    assert [(c.title, c.summary) for c in written] == [("Reds", "S1"), ("X", "S2")]
    assert written[0].entities == bare[0].entities


def test_entity_graph_structure() -> None:
    graph = entity_graph(two_cliques())
    assert graph.vcount() == 11
    assert graph.ecount() == 21  # 10 + 10 clique edges + the bridge (red0-red1 aggregated into one edge)
    assert not graph.is_directed()
    red0 = graph.vs.find(key="red0")
    assert red0["name"] == "Red0"
    edge = graph.es[graph.get_eid(red0.index, graph.vs.find(key="red1").index)]
    assert edge["weight"] == pytest.approx(5.0)


def test_passage_graph_structure_and_weights() -> None:
    snapshot = GraphSnapshot.build(
        1,
        ["p1", "p2"],
        [("a", "A"), ("b", "B"), ("c", "C")],
        [("a", "p1", 2.0), ("b", "p1", 1.0), ("c", "p2", 1.0)],
        [("a", "b", CO_OCCURS, 1.0), ("a", "b", CO_OCCURS, 1.0), ("b", "c", SYNONYM, 0.9), ("a", "c", "knows", 1.0)],
    )
    graph = passage_graph(snapshot, synonym_weight=0.5, mention_weight=3.0)
    assert graph.vcount() == 5
    assert graph.vs["type"] == ["entity"] * 3 + ["passage"] * 2
    assert graph.vs["key"] == ["a", "b", "c", "p1", "p2"]
    assert graph.vs["name"] == ["A", "B", "C", "p1", "p2"]
    assert graph.ecount() == 3 + 3

    def weight(u: int, v: int) -> float:
        return float(graph.es[graph.get_eid(u, v)]["weight"])

    assert weight(0, 1) == pytest.approx(2.0)  # co-occurs twice, summed
    assert weight(1, 2) == pytest.approx(0.9 * 0.5)  # synonym-only edge scaled
    assert weight(0, 2) == pytest.approx(1.0)  # a stated relation is not scaled
    assert weight(0, 3) == pytest.approx(2.0 * 3.0)  # mention count times mention_weight
    assert weight(4, 2) == pytest.approx(3.0)
    assert graph.es[graph.get_eid(0, 3)]["label"] == MENTIONS
    with pytest.raises(InvalidInputError, match="synonym_weight"):
        passage_graph(snapshot, synonym_weight=-1.0)


def test_extractive_summary_clips_the_best_sentence_when_no_whole_one_fits() -> None:
    passages = [Passage("p", "Red0 and Red1 walked along the long grey shore for hours.", "d")]
    _, summary = extractive_summary(["red0", "red1"], passages, NAMES, max_chars=45)
    assert summary == "Key entities: Red0, Red1. Red0 and Red1 walk…"
    assert len(summary) == 45
