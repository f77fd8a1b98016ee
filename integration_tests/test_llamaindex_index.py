"""ColBERTIndex as LlamaIndex users drive an index: from_documents, as_retriever / as_query_engine /
as_chat_engine, insert / delete_ref_doc / refresh_ref_docs, storage_context.persist and
load_index_from_storage (encoder rebuilt from the saved record), from_index, and a Postgres-backed index."""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path

import pytest
from llama_index.core import Document, StorageContext, load_index_from_storage
from llama_index.core.chat_engine.types import ChatMode
from llama_index.core.llms import MockLLM
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters

from conftest import CAROL, FACTS
from ragplug.errors import EncoderMismatchError, InvalidInputError
from ragplug.plugins.llamaindex import ColBERTIndex, ColBERTRetriever
from ragplug.plugins.llamaindex.index import TokenWindowSplitter
from ragplug.retrievers.colbert import ColBERTEncoder

pytestmark = pytest.mark.integration

QUESTIONS = {
    "Which child used a crutch?": "tim",
    "How much was the clerk paid?": "cratchit",
    "What is the capital of France?": "paris",
}


def _documents(keys: list[str] | None = None) -> list[Document]:
    return [
        Document(text=FACTS[key], id_=key, metadata={"topic": "paris" if key == "paris" else "carol"})
        for key in (keys or list(FACTS))
    ]


def _top_documents(index: ColBERTIndex, query: str, k: int = 2) -> list[str | None]:
    return [n.node.ref_doc_id for n in index.as_retriever(similarity_top_k=k).retrieve(query)]


@pytest.fixture(scope="module")
def index(minilm_encoder: ColBERTEncoder) -> ColBERTIndex:
    return ColBERTIndex.from_documents(_documents(), model=minilm_encoder, show_progress=True)


def test_from_documents_and_retriever(index: ColBERTIndex) -> None:
    retriever = index.as_retriever(similarity_top_k=3)
    assert isinstance(retriever, ColBERTRetriever)
    for query, key in QUESTIONS.items():
        nodes = retriever.retrieve(query)
        assert len(nodes) == 3 and nodes[0].node.ref_doc_id == key
        assert nodes[0].node.get_content() == FACTS[key] and nodes[0].node.metadata["topic"]
        assert all(n.score is not None and 0.0 <= n.score <= 1.0 for n in nodes)
    # node ids are the ragplug ids, one record per node, each node in the docstore
    assert sorted(index.engine.store.ids()) == sorted(index.index_struct.nodes_dict)
    assert sorted(index.ref_doc_info) == sorted(FACTS)
    filters = MetadataFilters(filters=[MetadataFilter(key="topic", value="carol")])
    filtered = index.as_retriever(similarity_top_k=2, filters=filters).retrieve("What is the capital of France?")
    assert "paris" not in [n.node.ref_doc_id for n in filtered]


def test_default_splitter_splits_long_documents_once(
    minilm_encoder: ColBERTEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    text = CAROL.read_text(encoding="utf-8")[20_000:25_000]
    index = ColBERTIndex.from_documents([Document(text=text, id_="carol")], model=minilm_encoder)
    (splitter,) = index._transformations
    assert isinstance(splitter, TokenWindowSplitter) and splitter.chunk_tokens <= minilm_encoder.settings.doc_maxlen
    nodes = index.docstore.get_nodes(list(index.index_struct.nodes_dict))
    assert len(nodes) >= 2 and all(n.ref_doc_id == "carol" for n in nodes)
    assert sorted(index.engine.store.ids()) == sorted(n.node_id for n in nodes)  # not split again by ragplug
    assert all(len(minilm_encoder.tokenizer(n.get_content())["input_ids"]) <= splitter.chunk_tokens + 2 for n in nodes)
    assert {r.parent_id for r in index.engine.get([nodes[0].node_id])} == {None}

    # without splitting (transformations=[]) the whole document is one node, truncated by the encoder: said
    with caplog.at_level(logging.WARNING, logger="ragplug.plugins.llamaindex.index"):
        whole = ColBERTIndex.from_documents(
            [Document(text=text, id_="carol")], model=minilm_encoder, transformations=[]
        )
    assert len(whole.engine.store) == 1 and "longer than the encoder's window" in caplog.text


def test_query_and_chat_engines(index: ColBERTIndex) -> None:
    engine = index.as_query_engine(llm=MockLLM(max_tokens=8), similarity_top_k=2, response_mode="compact")
    response = engine.query("How much was the clerk paid?")
    assert isinstance(response.response, str) and response.response
    assert len(response.source_nodes) == 2 and response.source_nodes[0].node.ref_doc_id == "cratchit"
    chat = index.as_chat_engine(llm=MockLLM(max_tokens=8), similarity_top_k=2)
    assert str(chat.chat("Which child used a crutch?"))
    context = index.as_chat_engine(chat_mode=ChatMode.CONTEXT, llm=MockLLM(max_tokens=8), similarity_top_k=1)
    answer = context.chat("What is the capital of France?")
    assert answer.source_nodes[0].node.ref_doc_id == "paris"


def test_insert_delete_refresh(minilm_encoder: ColBERTEncoder) -> None:
    index = ColBERTIndex.from_documents(_documents(["marley", "cratchit", "paris"]), model=minilm_encoder)
    index.insert(Document(text="The Thames flows through London.", id_="thames"))
    assert _top_documents(index, "Which river runs through London?")[0] == "thames"

    (thames_node,) = index.ref_doc_info["thames"].node_ids
    index.delete_ref_doc("thames", delete_from_docstore=True)
    assert "thames" not in _top_documents(index, "Which river runs through London?", k=3)
    assert thames_node not in index.engine.store and index.docstore.get_node(thames_node, raise_error=False) is None
    assert index.docstore.get_ref_doc_info("thames") is None and "thames" not in index.ref_doc_info
    assert index.docstore.get_document_hash("thames") is None
    index.delete_ref_doc("thames")  # unknown now: a warning, as LlamaIndex indexes do

    unchanged = index.ref_doc_info["marley"].node_ids
    changed = Document(text="Bob Cratchit, the clerk, was paid one guinea a day.", id_="cratchit")
    new = Document(text=FACTS["tim"], id_="tim")
    assert index.refresh_ref_docs([*_documents(["marley"]), changed, new]) == [False, True, True]
    assert index.ref_doc_info["marley"].node_ids == unchanged
    assert set(index.engine.store.ids()) == set(index.index_struct.nodes_dict)
    assert len(index.engine.store) == 4  # marley, cratchit (replaced), paris, tim (added); thames gone
    top = index.as_retriever(similarity_top_k=1).retrieve("How much was the clerk paid?")[0].node
    assert top.ref_doc_id == "cratchit" and "guinea" in top.get_content()
    assert _top_documents(index, "Which child used a crutch?")[0] == "tim"


async def test_async_insert_retrieve_delete(minilm_encoder: ColBERTEncoder) -> None:
    index = ColBERTIndex([], model=minilm_encoder)
    await index.ainsert(Document(text=FACTS["paris"], id_="paris"))
    await index.ainsert(Document(text=FACTS["tim"], id_="tim"))
    nodes = await index.as_retriever(similarity_top_k=1).aretrieve("What is the capital of France?")
    assert nodes[0].node.ref_doc_id == "paris"
    await index.adelete_ref_doc("paris", delete_from_docstore=True)
    assert list(index.ref_doc_info) == ["tim"] and len(index.engine.store) == 1


def test_persist_and_load_round_trip(
    index: ColBERTIndex, minilm_encoder: ColBERTEncoder, stanford_encoder: ColBERTEncoder, tmp_path: Path
) -> None:
    persist_dir = tmp_path / "storage"
    index.storage_context.persist(persist_dir=str(persist_dir))
    assert (persist_dir / "ragplug" / "manifest.json").is_file() and (persist_dir / "docstore.json").is_file()

    loaded = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(persist_dir)))
    assert isinstance(loaded, ColBERTIndex) and loaded.engine.encoder is not minilm_encoder  # rebuilt from record
    for query in QUESTIONS:
        expected = index.as_retriever(similarity_top_k=3).retrieve(query)
        got = loaded.as_retriever(similarity_top_k=3).retrieve(query)
        assert [n.node.node_id for n in got] == [n.node.node_id for n in expected]
        assert [n.score for n in got] == pytest.approx([n.score for n in expected], abs=1e-5)
        assert [n.node.ref_doc_id for n in got] == [n.node.ref_doc_id for n in expected]
    assert sorted(loaded.ref_doc_info) == sorted(FACTS)

    # a wrong explicit model is refused; the right one is accepted
    with pytest.raises(EncoderMismatchError):
        load_index_from_storage(StorageContext.from_defaults(persist_dir=str(persist_dir)), model=stanford_encoder)
    same = ColBERTIndex.from_index(persist_dir, model=minilm_encoder)
    assert _top_documents(same, "What is the capital of France?")[0] == "paris"

    # the loaded index keeps working and persists again; a moved folder is found through persist_dir=
    loaded.insert(Document(text="The Thames flows through London.", id_="thames"))
    loaded.storage_context.persist(persist_dir=str(persist_dir))
    moved = tmp_path / "moved"
    shutil.move(persist_dir, moved)
    with pytest.raises(InvalidInputError, match="persist_dir="):
        load_index_from_storage(StorageContext.from_defaults(persist_dir=str(moved)), model=minilm_encoder)
    again = load_index_from_storage(
        StorageContext.from_defaults(persist_dir=str(moved)), model=minilm_encoder, persist_dir=str(moved)
    )
    assert _top_documents(again, "Which river runs through London?")[0] == "thames"


def test_from_index_over_a_ragplug_folder(minilm_encoder: ColBERTEncoder, tmp_path: Path) -> None:
    ColBERTRetriever.from_documents(_documents(), model=minilm_encoder).save(tmp_path / "rp")
    index = ColBERTIndex.from_index(tmp_path / "rp", model=minilm_encoder)
    assert index.as_retriever(similarity_top_k=1).retrieve("What is the capital of France?")[0].node.node_id == "paris"
    index.insert(Document(text="Paris lies on the Seine and is the French capital.", id_="paris"))  # replaces it
    assert len(index.engine.store) == len(FACTS) and "paris" not in index.engine.store
    index.delete_ref_doc("tim")  # a ragplug item the docstore never saw
    assert "tim" not in index.engine.store


def test_one_storage_context_per_index(minilm_encoder: ColBERTEncoder) -> None:
    context = StorageContext.from_defaults()
    ColBERTIndex([], model=minilm_encoder, storage_context=context)
    with pytest.raises(InvalidInputError, match="another ColBERTIndex"):
        ColBERTIndex([], model=minilm_encoder, storage_context=context)
    with pytest.raises(TypeError):
        ColBERTIndex.from_documents(_documents(["tim"]), model=minilm_encoder, embed_model="local")  # type: ignore[call-arg]


def test_postgres_backed_index(postgres_dsn: str, minilm_encoder: ColBERTEncoder, tmp_path: Path) -> None:
    pytest.importorskip("psycopg")
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    collection = f"li-index-{uuid.uuid4().hex[:10]}"
    index = ColBERTIndex.from_documents(
        _documents(), model=minilm_encoder, store=PgVectorStore(postgres_dsn, collection=collection)
    )
    assert _top_documents(index, "Which child used a crutch?")[0] == "tim"
    index.delete_ref_doc("paris", delete_from_docstore=True)
    persist_dir = tmp_path / "pg-storage"
    index.storage_context.persist(persist_dir=str(persist_dir))
    assert not (persist_dir / "ragplug").exists()  # the database keeps the vectors

    with pytest.raises(InvalidInputError, match=collection):
        load_index_from_storage(StorageContext.from_defaults(persist_dir=str(persist_dir)))
    loaded = load_index_from_storage(
        StorageContext.from_defaults(persist_dir=str(persist_dir)),
        store=PgVectorStore(postgres_dsn, collection=collection),
        model=minilm_encoder,
    )
    assert isinstance(loaded, ColBERTIndex) and sorted(loaded.ref_doc_info) == sorted(set(FACTS) - {"paris"})
    assert _top_documents(loaded, "How much was the clerk paid?")[0] == "cratchit"
    assert "paris" not in _top_documents(loaded, "What is the capital of France?", k=5)
