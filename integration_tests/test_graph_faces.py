"""Graph RAG behind the generic framework faces: ``GraphIndex`` as the engine of LangChain's and LlamaIndex's
``RagplugRetriever`` (search options, per-call modes, filters, async, agent tools, writes, global hits,
chains and query engines), in memory and with the graph in Postgres.

The corpus is a handful of unambiguous one-line pages about two films and their directors; the two-hop
question ("where was the director of Quiet Harbor born?") needs the film's page and the director's page.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from ragplug.errors import InvalidInputError, UnknownIdError
from ragplug.plugins.langchain import RagplugRetriever as LangChainRetriever
from ragplug.plugins.llamaindex import RagplugRetriever as LlamaIndexRetriever
from ragplug.retrievers.graph.index import GraphIndex
from ragplug.retrievers.graph.stores import MemoryGraphStore
from ragplug.retrievers.late_interaction import LateInteractionIndex
from ragplug.retrievers.protocol import Retriever, WritableRetriever

pytestmark = pytest.mark.integration

PAGES = {
    "quiet-harbor": "Quiet Harbor is a 1961 film directed by Mira Talbot.",
    "mira-talbot": "Mira Talbot was born in Lisbon. She studied painting before turning to cinema.",
    "red-meadow": "Red Meadow is a 1974 film directed by Oskar Lindqvist.",
    "oskar-lindqvist": "Oskar Lindqvist was born in Uppsala and worked as a cinematographer.",
    "lisbon": "Lisbon is the capital of Portugal, on the river Tagus.",
}
KINDS = {"quiet-harbor": "film", "red-meadow": "film"}  # the others are "person" or "place"
TWO_HOPS = "Where was the director of Quiet Harbor born?"
BOTH = {"quiet-harbor", "mira-talbot"}
EVIDENCE = ("graph_seeds", "graph_entities", "graph_edges")


def metadatas() -> list[dict[str, Any]]:
    return [{"kind": KINDS.get(key, "place" if key == "lisbon" else "person")} for key in PAGES]


def build(encoder: Any, store: Any = None) -> GraphIndex:
    graph = GraphIndex(store if store is not None else MemoryGraphStore(), LateInteractionIndex(encoder))
    graph.add(list(PAGES.values()), ids=list(PAGES), metadatas=metadatas(), show_progress=False)
    return graph


@pytest.fixture(scope="module")
def graph(minilm_encoder: Any) -> GraphIndex:
    return build(minilm_encoder)


def test_graph_index_is_a_writable_retriever(graph: GraphIndex) -> None:
    assert isinstance(graph, Retriever) and isinstance(graph, WritableRetriever)


# -- LangChain --------------------------------------------------------------------------------------------
def test_langchain_search_kwargs_per_call_options_and_evidence(graph: GraphIndex) -> None:
    retriever = LangChainRetriever(index=graph, search_kwargs={"mode": "hybrid", "k": 3})
    docs = retriever.invoke(TWO_HOPS)
    assert len(docs) == 3 and {d.id for d in docs[:2]} == BOTH
    for doc in docs:
        assert doc.metadata["graph_mode"] == "hybrid" and all(key in doc.metadata for key in EVIDENCE)
        assert 0 <= doc.metadata["relevance_score"] <= 1 and "ragplug_score" in doc.metadata
    assert docs[0].metadata["graph_seeds"] == ["Quiet Harbor"]
    # per call: k, mode and filter win over search_kwargs
    [local] = retriever.invoke(TWO_HOPS, k=1, mode="local")
    assert local.id == "quiet-harbor" and local.metadata["graph_mode"] == "local"
    people = retriever.invoke(TWO_HOPS, filter={"kind": "person"})
    assert people and all(d.metadata["kind"] == "person" for d in people) and people[0].id == "mira-talbot"
    with pytest.raises(InvalidInputError, match="mode must be"):
        LangChainRetriever(index=graph, search_kwargs={"mode": "wide"})
    with pytest.raises(InvalidInputError, match="mmr"):
        LangChainRetriever(index=graph, search_type="mmr")


def test_langchain_graph_dense_k_reaches_the_engine(graph: GraphIndex) -> None:
    """The graph's own option is dense_k (fetch_k belongs to MMR in the faces): it reaches the engine."""
    retriever = LangChainRetriever(index=graph, search_kwargs={"mode": "hybrid", "dense_k": 10})
    assert retriever.invoke(TWO_HOPS)
    with pytest.raises(InvalidInputError, match="dense_k"):
        LangChainRetriever(index=graph, search_kwargs={"mode": "hybrid", "dense_k": 0}).invoke(TWO_HOPS)


def test_langchain_global_hits_are_communities(graph: GraphIndex) -> None:
    retriever = LangChainRetriever(index=graph, search_kwargs={"mode": "global", "k": 2})
    docs = retriever.invoke("films and the people who directed them")
    assert 1 <= len(docs) <= 2
    for doc in docs:
        assert doc.id == doc.metadata["graph_community"] and doc.metadata["graph_mode"] == "global"
        entities = doc.metadata["graph_entities"]
        assert isinstance(entities, list) and entities and all(isinstance(e, str) for e in entities)
        assert doc.page_content.strip() and doc.metadata["graph_passages"]


def test_langchain_async_and_lcel_chain(graph: GraphIndex) -> None:
    retriever = LangChainRetriever(index=graph, search_kwargs={"mode": "hybrid", "k": 2})
    docs = asyncio.run(retriever.ainvoke(TWO_HOPS))
    assert {d.id for d in docs} == BOTH
    [local] = asyncio.run(retriever.ainvoke(TWO_HOPS, k=1, mode="local"))
    assert local.metadata["graph_mode"] == "local"
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context.\n\n{context}"), ("human", "{question}")]
    )
    llm = FakeListChatModel(responses=["In Lisbon."])
    seen: list[str] = []

    def format_docs(docs: list[Document]) -> str:
        text = "\n\n".join(d.page_content for d in docs)
        seen.append(text)
        return text

    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    assert chain.invoke(TWO_HOPS) == "In Lisbon."
    assert PAGES["quiet-harbor"] in seen[0] and PAGES["mira-talbot"] in seen[0]
    assert asyncio.run(chain.ainvoke(TWO_HOPS)) == "In Lisbon."


def test_langchain_as_tool_for_agents(graph: GraphIndex) -> None:
    retriever = LangChainRetriever(index=graph, search_kwargs={"mode": "hybrid", "k": 2})
    tool = retriever.as_tool(name="film_graph", description="Search the film knowledge graph.")
    assert tool.name == "film_graph"
    text = tool.invoke({"query": TWO_HOPS})
    assert PAGES["mira-talbot"] in text
    message = tool.invoke({"type": "tool_call", "id": "call-1", "name": "film_graph", "args": {"query": TWO_HOPS}})
    assert message.tool_call_id == "call-1" and {d.id for d in message.artifact} == BOTH


def test_langchain_writes_through_the_face(minilm_encoder: Any) -> None:
    retriever = LangChainRetriever(index=build(minilm_encoder), search_kwargs={"mode": "local", "k": 1})
    new = Document(page_content="Uppsala is a university city in Sweden.", id="uppsala", metadata={"kind": "place"})
    assert retriever.add_documents([new]) == ["uppsala"]
    [doc] = retriever.invoke("What country is Uppsala in?")
    assert doc.id == "uppsala" and doc.metadata["kind"] == "place"
    assert [d.id for d in retriever.get_by_ids(["uppsala"])] == ["uppsala"]
    changed = Document(page_content="Uppsala lies north of Stockholm.", id="uppsala", metadata={"kind": "place"})
    retriever.add_documents([changed], upsert=True)
    assert retriever.get_by_ids(["uppsala"])[0].page_content == "Uppsala lies north of Stockholm."
    assert retriever.add_texts(["Tagus is the longest river of Iberia."], ids=["tagus"]) == ["tagus"]
    retriever.delete(["uppsala"])
    asyncio.run(retriever.adelete(["tagus"]))
    assert retriever.index.stats().documents == len(PAGES)
    with pytest.raises(UnknownIdError):
        retriever.delete(["uppsala"])


# -- LlamaIndex -------------------------------------------------------------------------------------------
def test_llamaindex_retriever_modes_filters_and_async(graph: GraphIndex) -> None:
    retriever = LlamaIndexRetriever(graph, similarity_top_k=2, search_kwargs={"mode": "hybrid"})
    nodes = retriever.retrieve(TWO_HOPS)
    assert {n.node.node_id for n in nodes} == BOTH
    assert all(0 <= (n.score or 0) <= 1 and all(k in n.node.metadata for k in EVIDENCE) for n in nodes)
    assert {n.node.node_id for n in asyncio.run(retriever.aretrieve(TWO_HOPS))} == BOTH
    local = LlamaIndexRetriever(graph, similarity_top_k=1, search_kwargs={"mode": "local"})
    assert local.retrieve(TWO_HOPS)[0].node.metadata["graph_mode"] == "local"
    filtered = LlamaIndexRetriever(
        graph,
        similarity_top_k=3,
        filters=MetadataFilters(filters=[MetadataFilter(key="kind", value="person")]),
        search_kwargs={"mode": "hybrid"},
    )
    people = filtered.retrieve(TWO_HOPS)
    assert people and all(n.node.metadata["kind"] == "person" for n in people)
    communities = LlamaIndexRetriever(graph, similarity_top_k=2, search_kwargs={"mode": "global"}).retrieve(TWO_HOPS)
    assert communities and all(n.node.node_id == n.node.metadata["graph_community"] for n in communities)
    with pytest.raises(InvalidInputError, match="cannot"):  # MMR needs an engine that diversifies
        LlamaIndexRetriever(graph, vector_store_query_mode="mmr")


def test_llamaindex_query_engine_with_mock_llm(graph: GraphIndex) -> None:
    retriever = LlamaIndexRetriever(graph, similarity_top_k=2, search_kwargs={"mode": "hybrid"})
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query(TWO_HOPS)
    assert {n.node.node_id for n in response.source_nodes} == BOTH
    assert isinstance(response.response, str) and response.response
    response = asyncio.run(engine.aquery(TWO_HOPS))
    assert {n.node.node_id for n in response.source_nodes} == BOTH


def test_llamaindex_insert_and_delete(minilm_encoder: Any) -> None:
    retriever = LlamaIndexRetriever(build(minilm_encoder), similarity_top_k=1, search_kwargs={"mode": "local"})
    node = TextNode(text="Uppsala is a university city in Sweden.", id_="uppsala", metadata={"kind": "place"})
    assert retriever.insert([node]) == ["uppsala"]
    assert retriever.retrieve("What country is Uppsala in?")[0].node.node_id == "uppsala"
    retriever.delete(["uppsala"])
    assert retriever.retrieve("What country is Uppsala in?")[0].node.node_id != "uppsala"


# -- the graph in Postgres ----------------------------------------------------------------------------------
@pytest.fixture
def pg_graph(postgres_dsn: str, minilm_encoder: Any) -> Iterator[GraphIndex]:
    from ragplug.retrievers.graph.stores import PgGraphStore

    store = PgGraphStore(postgres_dsn, name=f"faces-{uuid.uuid4().hex[:8]}", pool_size=2)
    try:
        yield build(minilm_encoder, store)
    finally:
        store.close()


def test_postgres_graph_behind_both_faces(pg_graph: GraphIndex) -> None:
    assert pg_graph.store.kind != "memory"
    retriever = LangChainRetriever(index=pg_graph, search_kwargs={"mode": "hybrid", "k": 2})
    assert {d.id for d in retriever.invoke(TWO_HOPS)} == BOTH
    assert {d.id for d in asyncio.run(retriever.ainvoke(TWO_HOPS))} == BOTH
    people = retriever.invoke(TWO_HOPS, filter={"kind": "person"}, mode="local")
    assert people and all(d.metadata["kind"] == "person" for d in people)
    llama = LlamaIndexRetriever(pg_graph, similarity_top_k=2, search_kwargs={"mode": "hybrid"})
    assert {n.node.node_id for n in llama.retrieve(TWO_HOPS)} == BOTH
    retriever.add_documents([Document(page_content="Uppsala is a university city in Sweden.", id="uppsala")])
    assert retriever.invoke("What country is Uppsala in?", mode="local", k=1)[0].id == "uppsala"
    retriever.delete(["uppsala"])
    assert pg_graph.stats().documents == len(PAGES)
