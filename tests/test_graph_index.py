"""The Graph RAG engine end to end on small corpora whose answers are certain: two-hop local search by
personalized PageRank, the ColBERT fallback, hybrid fusion, insert/delete/upsert consistency, global search
over known communities (with and without a recorded LLM), persistence and bad input."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from ragplug.errors import DuplicateIdError, EncoderMismatchError, InvalidInputError, UnknownIdError
from ragplug.retrievers.graph.extract import PhraseExtractor
from ragplug.retrievers.graph.index import GraphIndex
from ragplug.retrievers.graph.stores import MemoryGraphStore
from ragplug.retrievers.late_interaction import LateInteractionIndex
from ragplug.retrievers.protocol import Retriever, WritableRetriever

FILMS = {
    "harbor": "Quiet Harbor is a 1961 drama film directed by Mira Talbot.",
    "talbot": "Mira Talbot was born in Lisbon and trained as a painter before she made films.",
    "meadow": "Green Meadow is a 1975 comedy film directed by Oskar Brandt.",
    "brandt": "Oskar Brandt was born in Hamburg and worked as a journalist.",
    "lisbon": "Lisbon is the capital of Portugal, on the river Tagus.",
    "ferry": "The Tagus Ferry carries commuters across the river every morning.",
}


def graph_index(encoder: Any, **kwargs: Any) -> GraphIndex:
    return GraphIndex(MemoryGraphStore(), LateInteractionIndex(encoder), **kwargs)


@pytest.fixture(scope="module")
def films(minilm_encoder: Any) -> GraphIndex:
    index = graph_index(minilm_encoder)
    index.add(list(FILMS.values()), ids=list(FILMS), metadatas=[{"topic": k} for k in FILMS], show_progress=False)
    return index


def test_graph_index_is_a_writable_retriever(films: GraphIndex) -> None:
    assert isinstance(films, Retriever) and isinstance(films, WritableRetriever)


def test_local_search_walks_two_hops_to_the_answer(films: GraphIndex) -> None:
    """The question names the film; the director's page is reached through the director's name."""
    hits = films.search("Where was the director of Quiet Harbor born?", k=2)
    assert [h.id for h in hits] == ["harbor", "talbot"]
    first, second = hits
    assert first.relevance == 1.0 and 0 < second.relevance < 1
    assert second.metadata["graph_mode"] == "local"
    assert "Quiet Harbor" in second.metadata["graph_seeds"]
    assert "Mira Talbot" in second.metadata["graph_entities"]
    assert ["Quiet Harbor", "co-occurs", "Mira Talbot"] in second.metadata["graph_edges"]
    assert second.metadata["topic"] == "talbot"  # the passage's own metadata is kept


def test_the_walk_ranks_the_connected_passage_above_unconnected_ones(films: GraphIndex) -> None:
    hits = films.search("Where was the director of Green Meadow born?", k=6)
    assert [h.id for h in hits[:2]] == ["meadow", "brandt"]
    relevance = {h.id: h.relevance for h in hits}
    assert relevance.get("talbot", 0) < relevance["brandt"] / 2  # linked only through common words


def test_a_query_without_seed_entities_falls_back_to_colbert_and_says_so(films: GraphIndex) -> None:
    hits = films.search("which boat crosses the water each day", k=2)
    assert hits and all("no seed entity" in h.metadata["graph_fallback"] for h in hits)
    assert hits[0].id == "ferry"  # MiniLM: the ferry passage is the unambiguous match
    colbert = films.passages.search("which boat crosses the water each day", k=2)
    assert [h.id for h in hits] == [h.id for h in colbert]


def test_hybrid_fuses_the_walk_with_colbert(films: GraphIndex) -> None:
    hits = films.search("Where was the director of Quiet Harbor born?", k=3, mode="hybrid")
    assert {h.id for h in hits[:2]} == {"harbor", "talbot"}
    assert all(h.metadata["graph_mode"] == "hybrid" for h in hits)
    assert all(0 <= h.relevance <= 1 for h in hits)
    assert hits[0].relevance == 1.0


def test_filters_apply_to_passages(films: GraphIndex) -> None:
    hits = films.search("Where was the director of Quiet Harbor born?", k=3, filter={"topic": {"$ne": "harbor"}})
    assert hits[0].id == "talbot"
    assert all(h.id != "harbor" for h in hits)


async def test_async_search_matches_sync(films: GraphIndex) -> None:
    query = "Where was the director of Green Meadow born?"
    assert [h.id for h in await films.asearch(query, k=2)] == [h.id for h in films.search(query, k=2)]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"mode": "sideways"}, "mode"),
        ({"damping": 1.0}, "damping"),
        ({"dense_weight": -1}, "dense_weight"),
        ({"dense_k": 0}, "dense_k"),
        ({"max_llm_calls": -1}, "max_llm_calls"),
        ({"colour": "red"}, "unknown search options"),
        ({"k": 0}, "k"),
    ],
)
def test_bad_search_options_are_refused(films: GraphIndex, options: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        films.search("Quiet Harbor", **options)


def test_an_empty_query_is_refused(films: GraphIndex) -> None:
    with pytest.raises(InvalidInputError, match="non-empty"):
        films.search("   ")


def test_delete_removes_what_only_that_document_supported(minilm_encoder: Any) -> None:
    index = graph_index(minilm_encoder)
    index.add(list(FILMS.values()), ids=list(FILMS), show_progress=False)
    before = index.stats()
    index.delete(["meadow"])
    snapshot = index.store.snapshot()
    assert "green meadow" not in snapshot.entity_keys  # only "meadow" mentioned it
    assert "oskar brandt" in snapshot.entity_keys  # "brandt" still does
    assert index.stats().passages == before.passages - 1
    with pytest.raises(UnknownIdError):
        index.get(["meadow"])
    ranked = [h.id for h in index.search("Where was Oskar Brandt born?", k=3)]
    assert ranked[0] == "brandt" and "meadow" not in ranked
    with pytest.raises(UnknownIdError, match="meadow"):
        index.delete(["meadow"])


def test_add_refuses_stored_documents_and_upsert_replaces_them(minilm_encoder: Any) -> None:
    index = graph_index(minilm_encoder)
    index.add([FILMS["harbor"], FILMS["talbot"]], ids=["harbor", "talbot"], show_progress=False)
    with pytest.raises(DuplicateIdError, match="harbor"):
        index.add(["Quiet Harbor was remade in 1990."], ids=["harbor"])
    assert index.get(["harbor"])[0].text == FILMS["harbor"]
    index.add(["Quiet Harbor is a 1961 film directed by Rosa Vidal."], ids=["harbor"], upsert=True)
    keys = index.store.snapshot().entity_keys
    assert "rosa vidal" in keys
    assert "mira talbot" in keys  # still mentioned by the "talbot" passage
    assert index.get(["harbor"])[0].text.endswith("Rosa Vidal.")
    assert [p.text for p in index.store.passages(["harbor"])] == [index.get(["harbor"])[0].text]


def test_long_documents_are_cut_and_deleted_whole(minilm_encoder: Any) -> None:
    from ragplug.retrievers.graph.chunking import PassageSplitter

    index = graph_index(minilm_encoder, splitter=PassageSplitter(max_words=12))
    text = " ".join(f"Chapter {n} tells how Anna Berg met Tomas Ek in Uppsala." for n in range(4))
    index.add([text, FILMS["lisbon"]], ids=["book", "lisbon"], show_progress=False)
    passages = index.store.document_passages(["book"])
    assert len(passages) == 4 and all(p.startswith("book#") for p in passages)
    assert {r.id for r in index.get(["book"])} == set(passages)
    index.delete(["book"])
    assert index.store.documents() == ["lisbon"]
    assert "anna berg" not in index.store.snapshot().entity_keys


def test_blank_documents_and_passages_without_entities_are_reported(
    minilm_encoder: Any, caplog: pytest.LogCaptureFixture
) -> None:
    index = graph_index(minilm_encoder, extractor=PhraseExtractor(phrases=False))
    with caplog.at_level("WARNING", logger="ragplug.retrievers.graph.index"):
        index.add(["", "it was cold and dark.", FILMS["lisbon"]], ids=["blank", "plain", "lisbon"])
    report = index.last_report
    assert report.blank_documents == ["blank"]
    assert report.empty_passages == ["plain"]
    assert "blank" in caplog.text and "plain" in caplog.text
    assert index.get(["plain"])[0].text == "it was cold and dark."  # still searchable as a passage
    assert index.stats().empty_passages == 1


def test_a_store_built_by_another_extractor_is_refused(minilm_encoder: Any) -> None:
    index = graph_index(minilm_encoder)
    index.add([FILMS["lisbon"]], ids=["lisbon"], show_progress=False)
    with pytest.raises(EncoderMismatchError, match="extractor setting"):
        GraphIndex(index.store, LateInteractionIndex(minilm_encoder), extractor=PhraseExtractor(phrases=False))


def test_save_and_open_round_trip(films: GraphIndex, tmp_path: Any) -> None:
    films.save(tmp_path / "g")
    reopened = GraphIndex.open(tmp_path / "g")
    query = "Where was the director of Quiet Harbor born?"
    assert [h.id for h in reopened.search(query, k=2)] == [h.id for h in films.search(query, k=2)]
    assert reopened.stats() == films.stats()


# ---------------------------------------------------------------------------------------------- global
TOPICS = [
    # astronomy: one community of linked names
    "Vera Rubin studied the Andromeda Galaxy at the Kitt Peak Observatory.",
    "At Kitt Peak Observatory, Vera Rubin and Kent Ford measured the Andromeda Galaxy.",
    "Kent Ford built the spectrograph used at Kitt Peak Observatory on the Andromeda Galaxy.",
    # cooking: another
    "Julia Child taught French cooking with Simone Beck in Paris.",
    "Simone Beck and Louisette Bertholle wrote a cookbook with Julia Child in Paris.",
    "Louisette Bertholle tested recipes with Simone Beck and Julia Child.",
]


class RecordedChat:
    """A chat function that replays answers and records the prompts it saw."""

    def __init__(self, answers: Sequence[Any]) -> None:
        self.answers, self.prompts = list(answers), []

    def __call__(self, messages: Sequence[Mapping[str, str]], schema: Mapping[str, Any]) -> Any:
        self.prompts.append(messages[-1]["content"])
        answer = self.answers.pop(0) if self.answers else {"score": 0, "answer": ""}
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture(scope="module")
def topics(minilm_encoder: Any) -> GraphIndex:
    index = graph_index(minilm_encoder, extractor=PhraseExtractor(phrases=False))
    index.add(TOPICS, ids=[f"t{i}" for i in range(len(TOPICS))], show_progress=False)
    return index


def test_global_search_ranks_the_community_of_the_topic(topics: GraphIndex) -> None:
    hits = topics.search("galaxy observations by astronomers", k=2, mode="global", max_llm_calls=0)
    assert hits[0].metadata["graph_mode"] == "global"
    assert set(hits[0].metadata["graph_passages"]) == {"t0", "t1", "t2"}
    assert "vera rubin" in hits[0].metadata["graph_entities"]
    assert "Vera Rubin" in hits[0].text or "Kent Ford" in hits[0].text
    cooking = topics.search("French recipes and cookbooks", k=1, mode="global", max_llm_calls=0)[0]
    assert set(cooking.metadata["graph_passages"]) == {"t3", "t4", "t5"}
    communities, version = topics.store.communities()
    assert version == topics.store.version and len(communities) >= 2


def test_global_search_with_an_llm_follows_its_scores_within_the_budget(topics: GraphIndex) -> None:
    chat = RecordedChat([{"score": 10, "answer": "not much"}, {"score": 90, "answer": "Julia Child, in Paris."}])
    topics.chat = chat
    try:
        hits = topics.search("galaxy observations by astronomers", k=2, mode="global", max_llm_calls=2)
    finally:
        topics.chat = None
    assert len(chat.prompts) == 2
    assert hits[0].metadata["graph_answer"] == "Julia Child, in Paris."
    assert hits[0].relevance == pytest.approx(0.9)
    assert "For this question: Julia Child, in Paris." in hits[0].text
    assert all(h.metadata["graph_llm_calls"] == 2 for h in hits)


def test_global_search_survives_an_llm_that_returns_garbage(topics: GraphIndex) -> None:
    chat = RecordedChat(["not json", RuntimeError("server down")])
    topics.chat = chat
    try:
        hits = topics.search("galaxy observations by astronomers", k=1, mode="global", max_llm_calls=1)
    finally:
        topics.chat = None
    assert len(chat.prompts) == 2  # one retry, then ranked by similarity
    assert "did not validate" in hits[0].metadata["graph_llm_error"]
    assert set(hits[0].metadata["graph_passages"]) == {"t0", "t1", "t2"}


def test_a_graph_over_an_existing_colbert_index_needs_no_encoding_of_passages(
    films: GraphIndex, minilm_encoder: Any
) -> None:
    colbert = LateInteractionIndex(minilm_encoder)
    colbert.add(list(FILMS.values()), ids=list(FILMS), metadatas=[{"topic": k} for k in FILMS], show_progress=False)
    calls = []
    original = minilm_encoder.encode_documents

    def counting(items: Any, **kwargs: Any) -> Any:
        calls.append(list(items))
        return original(items, **kwargs)

    minilm_encoder.encode_documents = counting
    try:
        graph = GraphIndex.from_index(colbert)
    finally:
        del minilm_encoder.encode_documents
    assert all(FILMS["harbor"] not in batch for batch in calls)  # only entity names were encoded
    assert graph.passages is colbert and graph.store.documents() == sorted(FILMS)
    query = "Where was the director of Quiet Harbor born?"
    assert [h.id for h in graph.search(query, k=2)] == [h.id for h in films.search(query, k=2)]
    graph.add(["Ines Duarte was born in Porto."], ids=["duarte"])  # the two grow together
    assert "duarte" in colbert.store and "duarte" in graph.store.documents()


def test_personalized_pagerank_on_a_hand_built_chain_ranks_by_distance_from_the_seed() -> None:
    """Passages p0..p3 each mention two neighbours of a chain of entities e0 - e1 - e2 - e3 - e4; a walk
    from e0 must rank them by their distance from e0, and an unconnected passage gets nothing."""
    import numpy as np

    from ragplug.retrievers.graph.model import Entity, Extraction, GraphBatch, Passage
    from ragplug.retrievers.graph.search import GraphView, LocalSearch

    store = MemoryGraphStore()
    keys = [f"e{i}" for i in range(5)] + ["island"]
    passages = [Passage(f"p{i}", f"e{i} and e{i + 1}", f"p{i}") for i in range(4)] + [Passage("px", "island", "px")]
    extractions = [
        Extraction(f"p{i}", (Entity(f"e{i}", f"e{i}"), Entity(f"e{i + 1}", f"e{i + 1}"))) for i in range(4)
    ] + [Extraction("px", (Entity("island", "island"),))]
    vectors = {key: np.eye(8, dtype=np.float32)[i] for i, key in enumerate(keys)}
    store.add(GraphBatch(passages, extractions, vectors))
    view = GraphView(store)
    snapshot, prepared = view.current()
    search = LocalSearch(view, PhraseExtractor(), encoder=None)  # type: ignore[arg-type]  # no embedding seeds
    seeds = search.seeds("e0", snapshot, prepared)
    assert [snapshot.entity_keys[i] for i in seeds.entities] == ["e0"]
    walked = search.walk(prepared, seeds.entities, {}, damping=0.5)
    passage_scores = dict(zip(snapshot.passage_ids, walked[prepared.n_entities :], strict=True))
    assert passage_scores["p0"] > passage_scores["p1"] > passage_scores["p2"] > passage_scores["p3"] > 0
    assert passage_scores["px"] == 0
    assert view.current()[0] is snapshot  # cached until the store changes
    store.delete_documents(["px"])
    assert view.current()[0] is not snapshot


def test_a_christmas_carol_links_scrooge_marley_and_cratchit(minilm_encoder: Any) -> None:
    """The LLM-free extractor on real text: the three characters are nodes, linked by co-occurrence."""
    from ragplug.demo import book_passages

    names = ("Marley", "Cratchit")
    texts = [p.text for p in book_passages() if any(n in p.text for n in names)][:60]
    index = graph_index(minilm_encoder, extractor=PhraseExtractor(phrases=False))
    index.add(texts, show_progress=False)
    snapshot = index.store.snapshot()
    position = {key: i for i, key in enumerate(snapshot.entity_keys)}
    assert {"scrooge", "marley", "bob cratchit"} <= set(position), sorted(position)[:50]
    pairs = {tuple(sorted(pair)) for pair in snapshot.relations.tolist()}
    assert tuple(sorted((position["scrooge"], position["marley"]))) in pairs
    cratchits = [position[k] for k in ("bob cratchit", "cratchit") if k in position]
    assert any(tuple(sorted((position["scrooge"], c))) in pairs for c in cratchits)
    hits = index.search("What did Marley's ghost tell Scrooge?", k=3)
    assert all("Marley" in h.metadata["graph_seeds"] or "Scrooge" in h.metadata["graph_seeds"] for h in hits)


def test_answer_global_maps_then_reduces_within_the_budget(topics: GraphIndex) -> None:
    chat = RecordedChat(
        [
            {"score": 80, "answer": "Vera Rubin and Kent Ford measured Andromeda."},
            {"score": 0, "answer": ""},
            {"answer": "Vera Rubin and Kent Ford observed the Andromeda Galaxy at Kitt Peak [c0-0]."},
        ]
    )
    topics.chat = chat
    try:
        answer = topics.answer_global("Who observed galaxies?", k=2, max_llm_calls=3)
    finally:
        topics.chat = None
    assert answer.reduced and answer.llm_calls == 3 and len(chat.prompts) == 3
    assert answer.text.startswith("Vera Rubin and Kent Ford observed")
    assert "Vera Rubin and Kent Ford measured Andromeda." in chat.prompts[-1]  # the reduce saw the map's answer
    assert set(answer.passages) == {"t0", "t1", "t2"}


def test_answer_global_falls_back_to_the_best_partial_answer(topics: GraphIndex) -> None:
    chat = RecordedChat([{"score": 70, "answer": "Julia Child cooked."}, {"score": 0, "answer": ""}, "garbage"])
    topics.chat = chat
    try:
        answer = topics.answer_global("Who cooked?", k=2, max_llm_calls=3)
    finally:
        topics.chat = None
    assert not answer.reduced and answer.text.startswith("Julia Child cooked.")
    with pytest.raises(InvalidInputError, match="chat function"):
        topics.answer_global("Who cooked?")


def test_a_store_built_with_another_encoder_is_refused(minilm_encoder: Any, stanford_encoder: Any) -> None:
    index = graph_index(minilm_encoder)
    index.add([FILMS["lisbon"]], ids=["lisbon"], show_progress=False)
    with pytest.raises(EncoderMismatchError, match="encoder"):
        GraphIndex(index.store, LateInteractionIndex(stanford_encoder))


def test_global_search_returns_a_group_once_when_two_levels_hold_it(minilm_encoder: Any) -> None:
    """Leiden's coarser level repeats the groups it did not merge; a global search lists each group once."""
    from dataclasses import replace

    index = graph_index(minilm_encoder, extractor=PhraseExtractor(phrases=False))
    index.add(TOPICS, ids=[f"t{i}" for i in range(len(TOPICS))], show_progress=False)
    found = index.build_communities()
    repeated = [replace(c, id=f"again-{c.id}", level=c.level + 1) for c in found]
    index.store.set_communities(found + repeated, index.store.version)
    hits = index.search("galaxy observations by astronomers", k=10, mode="global", max_llm_calls=0)
    groups = [frozenset(h.metadata["graph_entities"]) for h in hits]
    assert len(groups) == len(set(groups)) == len(found)


def test_upserting_a_document_as_blank_removes_it_from_both_stores(minilm_encoder: Any) -> None:
    index = graph_index(minilm_encoder)
    index.add([FILMS["harbor"], FILMS["talbot"]], ids=["harbor", "talbot"], show_progress=False)
    index.add(["   "], ids=["harbor"], upsert=True)
    assert index.store.documents() == ["talbot"]
    assert "quiet harbor" not in index.store.snapshot().entity_keys
    with pytest.raises(UnknownIdError):
        index.get(["harbor"])
    assert index.last_report.blank_documents == ["harbor"]
