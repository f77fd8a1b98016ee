"""The synthetic knowledge-injection world: deterministic, consistent splits and answers, a JSONL round trip."""

from __future__ import annotations

import random
import re

import pytest

from ragplug.errors import DatasetError, InvalidInputError
from ragplug.evaluators.synthetic import (
    ATTRIBUTES,
    KINDS,
    World,
    format_context,
    make_world,
    render_passage,
    vocabulary,
)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(seed=3, n_people=300, n_test=60)


def test_same_seed_same_world_other_seed_other_world(world: World) -> None:
    assert make_world(seed=3, n_people=300, n_test=60) == world
    other = make_world(seed=4, n_people=300, n_test=60)
    assert other.corpus != world.corpus
    assert other.test_questions != world.test_questions


def test_people_names_and_splits(world: World) -> None:
    names = [p.name for p in world.people]
    assert len(set(names)) == len(names) == 300
    assert len(world.test_people) == 60 and len(world.reader_people) == 240
    reader_ids = {p.passage_id for p in world.reader_people}
    test_ids = {p.passage_id for p in world.test_people}
    assert not reader_ids & test_ids
    assert set(world.corpus) == reader_ids | test_ids
    assert set(world.old_corpus) == test_ids
    # Nothing the experiment trains or tests on is about a reader person.
    assert {x.passage_id for x in world.lora_train} <= test_ids
    assert {q.passage_id for q in world.test_questions} == test_ids
    assert {x.passage_id for x in world.raft_train} <= test_ids
    assert all(set(x.distractor_ids) <= test_ids for x in world.raft_train)
    assert all(not p.kinds and not p.previous for p in world.reader_people)


def test_every_value_is_one_word_of_its_vocabulary(world: World) -> None:
    for person in world.people:
        assert set(person.facts) == set(ATTRIBUTES)
        for attribute, value in person.old_facts.items():
            assert value in ATTRIBUTES[attribute].values and re.fullmatch(r"\w+", value)


def test_kinds_are_stratified_per_attribute(world: World) -> None:
    assert {q.kind for q in world.test_questions} == set(KINDS)
    assert len(world.test_questions) == 60 * len(ATTRIBUTES)
    for attribute in ATTRIBUTES:
        kinds = [q.kind for q in world.test_questions if q.attribute == attribute]
        assert kinds.count("trained") == 24 and kinds.count("updated") == 12 and kinds.count("unseen") == 24


def test_answers_are_in_their_gold_passages(world: World) -> None:
    for q in world.test_questions:
        words = re.findall(r"\w+", world.corpus[q.passage_id])
        assert q.answer in words, q
        assert q.person in world.corpus[q.passage_id]
        assert q.person in q.question and q.person in q.paraphrase and q.question != q.paraphrase
        assert world.person(q.passage_id).facts[q.attribute] == q.answer


def test_updated_facts_differ_from_what_lora_learns(world: World) -> None:
    trained = {(x.passage_id, x.attribute): x for x in world.lora_train}
    for q in world.test_questions:
        key = (q.passage_id, q.attribute)
        if q.kind == "unseen":
            assert key not in trained and q.old_answer is None
        elif q.kind == "trained":
            assert trained[key].answer == q.answer and q.old_answer is None
            assert trained[key].question == q.question
        else:
            assert q.old_answer is not None and q.old_answer != q.answer
            assert trained[key].answer == q.old_answer
            old_words = re.findall(r"\w+", world.old_corpus[q.passage_id])
            assert q.old_answer in old_words and q.answer not in old_words
            assert q.old_answer not in re.findall(r"\w+", world.corpus[q.passage_id])
    assert len(world.lora_train) == sum(q.kind != "unseen" for q in world.test_questions)


def test_update_changes_only_the_updated_values(world: World) -> None:
    def words(text: str) -> list[str]:
        return ["a" if w == "an" else w for w in re.findall(r"\w+", text)]  # the article follows the value

    for person in world.test_people:
        old, new = words(world.old_corpus[person.passage_id]), words(world.corpus[person.passage_id])
        renamed = {v: person.facts[a] for a, v in person.previous.items()}
        assert [renamed.get(w, w) for w in old] == new


def test_raft_items_hold_the_old_gold_passage_among_distractors(world: World) -> None:
    for item in world.raft_train:
        assert item.gold_index is not None  # raft_p_gold=1.0 by default
        assert item.passages[item.gold_index] == world.old_corpus[item.passage_id]
        assert len(item.passages) == 3 and len(set(item.distractor_ids)) == 2
        assert item.passage_id not in item.distractor_ids
        example = item.as_example()
        assert example["context"] == format_context(item.passages) and example["answer"] == item.answer
    no_gold = make_world(seed=3, n_people=300, n_test=60, raft_p_gold=0.0)
    assert all(x.gold_index is None and len(x.passages) == 3 for x in no_gold.raft_train)


def test_jsonl_round_trip(world: World, tmp_path) -> None:
    path = world.to_jsonl(tmp_path / "world.jsonl")
    assert World.from_jsonl(path) == world
    assert world.lora_examples()[0] == {"question": world.lora_train[0].question, "answer": world.lora_train[0].answer}


def test_bad_jsonl_names_the_line(world: World, tmp_path) -> None:
    path = world.to_jsonl(tmp_path / "world.jsonl")
    lines = path.read_text().splitlines()
    lines[2] = '{"type": "person", "first": "x"}'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"world\.jsonl:3:"):
        World.from_jsonl(path)


def test_distractors_are_other_people_often_namesakes(world: World) -> None:
    gold = world.test_people[0]
    ids = world.distractors(gold.passage_id, 4, seed=1)
    assert len(set(ids)) == 4 and gold.passage_id not in ids
    assert ids == world.distractors(gold.passage_id, 4, seed=1)
    assert all(world.person(i).split == "test" for i in ids)


def test_render_passage_states_every_fact_and_shares_a_layout() -> None:
    person = make_world(seed=0, n_people=20, n_test=5).people[0]
    text = render_passage(person, random.Random(7))
    assert all(v in re.findall(r"\w+", text) for v in person.facts.values())
    assert person.name in text.split(". ")[0]
    assert render_passage(person, random.Random(7)) == text
    words = set(vocabulary())
    assert set(re.findall(r"\w+", text)) <= words


def test_bad_settings_are_refused() -> None:
    with pytest.raises(InvalidInputError, match="n_test"):
        make_world(n_people=10, n_test=10)
    with pytest.raises(InvalidInputError, match="trained_fraction"):
        make_world(trained_fraction=0.9, updated_fraction=0.2)
    with pytest.raises(InvalidInputError, match="n_people"):
        make_world(n_people=10_000)
