"""PhraseExtractor: names, key phrases and co-occurrence relations found without a model."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest

from ragplug.errors import InvalidInputError
from ragplug.retrievers.graph.extract import STOPWORDS, PhraseExtractor
from ragplug.retrievers.graph.model import CO_OCCURS, Extraction, Extractor, Passage

CAROL = Path(__file__).resolve().parents[1] / "ragplug" / "data" / "a_christmas_carol_pg24022.txt"


def carol_passages(max_chars: int = 1200) -> list[Passage]:
    """A Christmas Carol cut at paragraph breaks into passages of about ``max_chars`` characters."""
    text = CAROL.read_text(encoding="utf-8")
    chunks, current = [], ""
    for paragraph in text.split("\n\n"):
        if paragraph.strip():
            current += paragraph + "\n\n"
        if len(current) > max_chars:
            chunks.append(current)
            current = ""
    if current.strip():
        chunks.append(current)
    return [Passage(f"carol-{i}", chunk, "carol") for i, chunk in enumerate(chunks)]


def one(text: str, **settings: object) -> Extraction:
    return PhraseExtractor(**settings).extract([Passage("p", text, "d")])[0]  # type: ignore[arg-type]


def names(extraction: Extraction) -> dict[str, str]:
    return {e.key: e.name for e in extraction.entities if e.kind == "name"}


def edges(extraction: Extraction) -> dict[tuple[str, str], float]:
    return {(r.source, r.target): r.weight for r in extraction.relations}


@pytest.fixture(scope="module")
def carol() -> list[Extraction]:
    return PhraseExtractor().extract(carol_passages(), show_progress=False)


def test_it_is_an_extractor() -> None:
    extractor = PhraseExtractor()
    assert isinstance(extractor, Extractor)
    assert extractor.name == "phrase"


def test_the_characters_of_a_christmas_carol_are_entities(carol: list[Extraction]) -> None:
    keys = {e.key for x in carol for e in x.entities if e.kind == "name"}
    assert {"scrooge", "marley", "bob cratchit", "tiny tim", "fezziwig", "jacob marley"} <= keys
    assert "ghost of christmas past" in keys  # connectors inside a name
    assert {"the", "he", "but", "when", "it", "i'll"}.isdisjoint(keys)


def test_the_characters_are_linked_by_co_occurrence(carol: list[Extraction]) -> None:
    weights: dict[tuple[str, str], float] = {}
    for extraction in carol:
        for r in extraction.relations:
            assert r.label == CO_OCCURS
            assert r.source < r.target
            weights[(r.source, r.target)] = weights.get((r.source, r.target), 0.0) + r.weight
    assert weights[("marley", "scrooge")] >= 5
    cratchit = [weights.get(pair, 0.0) for pair in (("bob cratchit", "scrooge"), ("cratchit", "scrooge"))]
    assert sum(cratchit) >= 1


def test_entity_keys_are_unique_and_relations_join_known_entities(carol: list[Extraction]) -> None:
    for extraction in carol:
        keys = [e.key for e in extraction.entities]
        assert len(keys) == len(set(keys))
        for r in extraction.relations:
            assert {r.source, r.target} <= set(keys)


def test_a_sentence_initial_stopword_is_not_a_name() -> None:
    x = one("The door was shut. He said nothing. But Scrooge went out. When Marley came, It was late.")
    assert set(names(x)) == {"scrooge", "marley"}


def test_a_sentence_initial_word_needs_evidence_to_be_a_name() -> None:
    x = one("Darkness is cheap, and Scrooge liked it. Marley was dead. Scrooge knew Marley.", phrases=False)
    assert set(names(x)) == {"scrooge", "marley"}  # Marley is capitalised mid-sentence too; Darkness is not
    assert "darkness" in {e.key for e in one("Darkness is cheap, and Scrooge liked it.").entities}  # a phrase


def test_leading_stopwords_are_stripped_from_a_name_that_opens_a_sentence() -> None:
    x = one("When Ebenezer Scrooge came home, the Bank of England was shut. The Bank of England opened.")
    assert set(names(x)) == {"ebenezer scrooge", "bank of england"}


def test_possessives_are_stripped() -> None:
    x = one("At last Scrooge's nephew visited Marley’s house and the Cratchits' table.")
    assert names(x) == {"scrooge": "Scrooge", "marley": "Marley", "cratchits": "Cratchits"}
    assert "nephew" in {e.key for e in x.entities if e.kind == "phrase"}


def test_connectors_and_joined_names() -> None:
    x = one("He worked at the Bank of England and met Ludwig van Beethoven at the firm of Scrooge and Marley.")
    assert {"bank of england", "ludwig van beethoven", "scrooge and marley", "scrooge", "marley"} <= set(names(x))
    assert "england and met ludwig" not in names(x)  # "and" joins only capitalised words


def test_honorifics_do_not_end_a_sentence() -> None:
    x = one("Then Mr. Fezziwig danced with Mrs. Fezziwig.")
    assert set(names(x)) == {"mr. fezziwig", "mrs. fezziwig"}
    assert edges(x) == {("mr. fezziwig", "mrs. fezziwig"): 1.0}  # one sentence


def test_quoted_titles_are_kept() -> None:
    x = one('She read “The Man Who Knew Too Much” and then "A Christmas Carol" by the fire.')
    assert {"the man who knew too much", "a christmas carol"} <= set(names(x))
    dialogue = one('"What do you want with me?" asked the ghost, and Scrooge said "no more, thank you".')
    assert set(names(dialogue)) == {"scrooge"}


def test_numbers_are_not_entities() -> None:
    x = one("In 1843 there were 12 ghosts, and 2007 brought 24022 more in Twelve Oaks.")
    keys = {e.key for e in x.entities}
    assert not any(ch.isdigit() for key in keys for ch in key)
    assert "twelve oaks" in keys


def test_key_phrases_are_rake_runs() -> None:
    x = one("The grasping, covetous old man counted his coins in the counting-house near the cold frosty fog.")
    phrases = {e.key for e in x.entities if e.kind == "phrase"}
    assert {"grasping", "covetous old man", "coins", "counting-house", "cold frosty fog"} <= phrases
    assert not phrases & STOPWORDS
    assert "old man" not in {e.key for e in one("He was an old man.").entities}  # only common words
    assert "frosty fog" in {e.key for e in one("the bitter cold frosty fog", max_phrase_words=2).entities}
    assert all(e.kind == "name" for e in one("Scrooge counted coins.", phrases=False).entities)


def test_a_name_wins_over_a_phrase_with_the_same_key() -> None:
    x = one("The scrooge was mean. Then Scrooge met Marley.")
    scrooge = [e for e in x.entities if e.key == "scrooge"]
    assert len(scrooge) == 1
    assert (scrooge[0].kind, scrooge[0].name) == ("name", "Scrooge")


def test_sentence_and_passage_windows() -> None:
    text = "Scrooge saw Marley. Marley saw Scrooge. Then Bob slept."
    by_sentence = edges(one(text, phrases=False))
    assert by_sentence == {("marley", "scrooge"): 2.0}
    by_passage = edges(one(text, phrases=False, window="passage"))
    assert by_passage == {("marley", "scrooge"): 1.0, ("bob", "marley"): 1.0, ("bob", "scrooge"): 1.0}


def test_the_entities_linked_per_window_are_capped() -> None:
    people = [f"Person{chr(65 + i // 26)}{chr(97 + i % 26)}" for i in range(30)]
    text = "Then " + ", ".join(people) + " sang."
    full = one(text, phrases=False)
    assert len(full.entities) == 30
    assert len(full.relations) == 24 * 23 // 2
    capped = one(text, phrases=False, max_entities_per_window=5)
    assert len(capped.relations) == 10


def test_empty_passages_give_empty_extractions() -> None:
    texts = ["", "   \n\t ", "1843 24022 ...", "the of and"]
    out = PhraseExtractor().extract([Passage(f"e{i}", t, "d") for i, t in enumerate(texts)])
    assert out == [Extraction(passage_id=f"e{i}") for i in range(4)]
    assert PhraseExtractor().extract([]) == []


def test_settings_are_stable_and_complete() -> None:
    a, b = PhraseExtractor(), PhraseExtractor()
    assert a.settings == b.settings
    assert json.loads(json.dumps(a.settings)) == a.settings
    assert a.settings["version"] >= 1
    changed = [
        PhraseExtractor(phrases=False),
        PhraseExtractor(max_phrase_words=2),
        PhraseExtractor(window="passage"),
        PhraseExtractor(max_entities_per_window=8),
        PhraseExtractor(extra_stopwords=["Humbug"]),
    ]
    assert all(c.settings != a.settings for c in changed)
    for c in changed:
        assert PhraseExtractor.from_settings(c.settings).settings == c.settings
    assert PhraseExtractor(extra_stopwords=["b", "A"]).settings == PhraseExtractor(extra_stopwords=["a", "B"]).settings


def test_extra_stopwords() -> None:
    text = "Then Humbug said Scrooge, and Humbug again."
    assert "humbug" in names(one(text))
    assert "humbug" not in {e.key for e in one(text, extra_stopwords=["humbug"]).entities}


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"window": "page"}, "'page'"),
        ({"max_phrase_words": 0}, "0"),
        ({"max_phrase_words": True}, "True"),
        ({"max_entities_per_window": 1}, "1"),
        ({"extra_stopwords": "humbug"}, "'humbug'"),
        ({"phrases": "yes"}, "'yes'"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, object], named: str) -> None:
    with pytest.raises(InvalidInputError, match=named):
        PhraseExtractor(**settings)  # type: ignore[arg-type]


def test_a_passage_without_text_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="'bad'"):
        PhraseExtractor().extract([Passage("bad", None, "d")])  # type: ignore[arg-type]


def test_query_entities() -> None:
    extractor = PhraseExtractor(phrases=False)
    found = {e.key: e.kind for e in extractor.query_entities("What did Scrooge say to Bob Cratchit about debts?")}
    assert found["scrooge"] == "name"
    assert found["bob cratchit"] == "name"
    assert "debts" in found  # phrases help queries even when passages have none
    assert "what" not in found
    assert [e.key for e in extractor.query_entities("Scrooge?")] == ["scrooge"]  # lenient at the start
    assert "scrooge" in {e.key for e in extractor.query_entities("what did scrooge say")}
    assert extractor.query_entities("   ") == []
    with pytest.raises(InvalidInputError):
        extractor.query_entities(None)  # type: ignore[arg-type]


def test_extraction_is_deterministic(carol: list[Extraction]) -> None:
    again = PhraseExtractor().extract(carol_passages(), show_progress=False)
    assert again == carol


def test_speed_smoke_on_a_thousand_passages() -> None:
    base = carol_passages(max_chars=600)
    passages = [
        Passage(f"{i}", p.text, "carol") for i, p in enumerate(islice((p for _ in range(10) for p in base), 1000))
    ]
    out = PhraseExtractor().extract(passages, show_progress=False)
    assert [x.passage_id for x in out] == [p.id for p in passages]
    assert sum(1 for x in out if x.entities) > 900


def test_a_short_heading_line_ends_a_name() -> None:
    """A title line ("Ludwig Elsbett\\nLudwig Elsbett was ...") is not one name run across the line break,
    while a name wrapped inside a long line of prose stays whole."""
    extractor = PhraseExtractor(phrases=False)
    heading = extractor.extract_one(Passage("p", "Ludwig Elsbett\nLudwig Elsbett was a German engineer.", "d"))
    assert {e.key for e in heading.entities} == {"ludwig elsbett", "german"}
    wrapped = (
        "In the evening the old clerk walked slowly home to see his good friend Ebenezer\nScrooge, who lived alone."
    )
    keys = {e.key for e in extractor.extract_one(Passage("q", wrapped, "d")).entities}
    assert "ebenezer scrooge" in keys
