"""ColPali page retrieval through both frameworks, on the memory and Postgres stores (tiny random models:
shapes, ordering, persistence and plumbing are asserted, not relevance)."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path

import pytest
from langchain_core.language_models import FakeListChatModel
from llama_index.core.schema import ImageNode, QueryBundle

from ragplug.errors import EncoderMismatchError, InvalidInputError
from ragplug.plugins.langchain import RagplugRetriever
from ragplug.plugins.langchain.multimodal import page_images_message
from ragplug.plugins.llamaindex import RagplugRetriever as LIRetriever
from ragplug.retrievers.colpali import ColPaliEncoder
from ragplug.retrievers.fusion import FusionRetriever
from ragplug.retrievers.late_interaction import LateInteractionIndex
from tests.fixtures.tiny_colpali import tiny_colpali_paths
from tests.test_files import minimal_pdf

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def encoder() -> ColPaliEncoder:
    return ColPaliEncoder(tiny_colpali_paths()["colqwen2"], device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def docs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("pages")
    (folder / "report.pdf").write_bytes(minimal_pdf(["Revenue grew to 12 million", "", "Outlook for next year"]))
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "chart.png")
    return folder


def test_pages_from_pdfs_and_images_in_langchain(encoder: ColPaliEncoder, docs: Path) -> None:
    retriever = RagplugRetriever.from_pages([docs], model=encoder, k=4)
    assert len(retriever.index) == 4
    found = retriever.invoke("revenue")
    assert len(found) == 4 and all(0 <= d.metadata["relevance_score"] <= 1 for d in found)
    by_id = {d.id: d for d in found}
    page2 = next(d for d in found if d.metadata.get("page") == 2)
    assert page2.page_content.startswith("[page 2 of 3 of ") and "without extractable text" in page2.page_content
    first = next(d for d in found if d.metadata.get("page") == 1 and d.metadata["source"].endswith(".pdf"))
    assert first.page_content == "Revenue grew to 12 million" and first.metadata["page_count"] == 3
    assert any(i.endswith("chart.png") for i in by_id)
    pdf_only = retriever.invoke("revenue", filter={"page": {"$gte": 2}})
    assert sorted(d.metadata["page"] for d in pdf_only) == [2, 3]
    retriever.delete([first.id])
    assert len(retriever.index) == 3


def test_images_on_request_and_a_multimodal_message(encoder: ColPaliEncoder, docs: Path) -> None:
    retriever = RagplugRetriever.from_pages([docs / "report.pdf"], model=encoder, k=2, include_images=True)
    found = retriever.invoke("outlook")
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(found[0].metadata["image_base64"])))
    assert image.format == "PNG" and image.size[0] > 100
    message = page_images_message("What was the revenue?", found)
    kinds = [block["type"] for block in message.content_blocks]
    assert kinds == ["text", "text", "image", "text", "image"]
    assert message.content_blocks[2]["mime_type"] == "image/png"
    llm = FakeListChatModel(responses=["12 million."])  # a multimodal chat model in a real app
    assert llm.invoke([message]).content == "12 million."
    plain = RagplugRetriever(index=retriever.index, k=1).invoke("outlook")
    assert "image_base64" not in plain[0].metadata  # only on request
    assert page_images_message("Again?", plain).content_blocks[2]["type"] == "image"  # re-rendered
    with pytest.raises(InvalidInputError, match="has no page image"):
        page_images_message("?", [type(plain[0])(page_content="x", metadata={})])


def test_pages_in_llamaindex_are_image_nodes(encoder: ColPaliEncoder, docs: Path) -> None:
    retriever = LIRetriever.from_pages([docs / "report.pdf"], model=encoder, similarity_top_k=3, include_images=True)
    nodes = retriever.retrieve(QueryBundle("revenue"))
    assert len(nodes) == 3 and all(isinstance(n.node, ImageNode) for n in nodes)
    assert all(n.node.image and n.node.image_mimetype == "image/png" for n in nodes)
    assert {n.node.get_content() for n in nodes} >= {"Revenue grew to 12 million", "Outlook for next year"}


def test_hybrid_fuses_page_images_and_page_text(encoder: ColPaliEncoder, docs: Path, minilm_encoder) -> None:
    retriever = RagplugRetriever.from_pages([docs / "report.pdf"], model=encoder, text_model=minilm_encoder, k=3)
    assert isinstance(retriever.index, FusionRetriever)
    found = retriever.invoke("What is the outlook for next year?")
    # pages 1 and 3 are ranked by both the image and the text index; page 2 (no text) by the images only
    assert len({d.id for d in found}) == 3 and found[2].metadata["page"] == 2
    with pytest.raises(InvalidInputError, match="read-only"):
        retriever.delete([found[0].id])


def test_page_indexes_persist_in_memory_and_postgres(
    encoder: ColPaliEncoder, docs: Path, tmp_path: Path, postgres_dsn: str
) -> None:
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    memory = RagplugRetriever.from_pages([docs], model=encoder, k=2)
    memory.save(tmp_path / "pages")
    reopened = LateInteractionIndex.open(tmp_path / "pages")  # encoder rebuilt from the manifest, dtype included
    assert isinstance(reopened.encoder, ColPaliEncoder) and len(reopened) == 4
    query = "outlook"
    expected = [(h.id, round(h.score, 3)) for h in memory.index.search(query, k=4)]
    assert [(h.id, round(h.score, 3)) for h in reopened.search(query, k=4)] == expected
    store = PgVectorStore(postgres_dsn, collection=f"pages-{uuid.uuid4().hex[:8]}")
    try:
        pg = RagplugRetriever.from_pages([docs], model=encoder, store=store, k=4)
        got = pg.invoke(query)  # a collection this small keeps fp16 vectors (its codec trains later)
        assert [d.id for d in got] == [i for i, _ in expected]
        assert [d.metadata["ragplug_score"] for d in got] == pytest.approx([s for _, s in expected], abs=0.02)
        pooled = ColPaliEncoder(tiny_colpali_paths()["colqwen2"], device="cpu", dtype="float32", pool_factor=2)
        with pytest.raises(EncoderMismatchError, match="pool_factor"):
            LateInteractionIndex(pooled, store)
    finally:
        store.close()


def test_a_document_is_its_pages(encoder: ColPaliEncoder, docs: Path) -> None:
    """Delete, get and upsert by document: a PDF's pages have the PDF as their parent."""
    from ragplug.retrievers.build import add_pages

    index = LateInteractionIndex(encoder)
    pdf = str(docs / "report.pdf")
    ids = add_pages(index, [docs], batch_pages=2)
    assert len(ids) == 4 and {r.parent_id for r in index.get([pdf])} == {pdf}
    assert len(index.get([pdf])) == 3
    (docs / "short.pdf").write_bytes(minimal_pdf(["one page"]))
    add_pages(index, [docs], upsert=True, batch_pages=2)  # documents replaced across batches, none lost
    assert len(index) == 5
    RagplugRetriever(index=index).delete([pdf])
    assert len(index) == 2 and pdf + "#p1" not in index.store
    (docs / "short.pdf").unlink()


def test_a_page_index_reopens_with_an_explicit_colpali_model(
    encoder: ColPaliEncoder, docs: Path, tmp_path: Path
) -> None:
    index = LateInteractionIndex(encoder)
    from ragplug.retrievers.build import add_pages

    add_pages(index, [docs / "report.pdf"])
    index.save(tmp_path / "p")
    reopened = LateInteractionIndex.open(tmp_path / "p", tiny_colpali_paths()["colqwen2"], dtype="float32")
    assert isinstance(reopened.encoder, ColPaliEncoder) and len(reopened) == 3
    with pytest.raises(EncoderMismatchError, match="family"):
        LateInteractionIndex.open(tmp_path / "p", tiny_colpali_paths()["colidefics3"])


def test_pages_projected_to_fewer_dims_by_the_store_codec(encoder: ColPaliEncoder, docs: Path) -> None:
    """The optional projection to fewer dimensions is the codec layer's PCA (recorded in the index, applied to
    queries too), the same for pages as for text."""
    from ragplug.retrievers.late_interaction import CodecConfig, InMemoryMultiVectorStore

    store = InMemoryMultiVectorStore(codec=CodecConfig(kind="float16", dim=16, train_tokens=64))
    retriever = RagplugRetriever.from_pages([docs], model=encoder, store=store, k=4)
    assert store.codec.config.dim == 16 and encoder.dim > 16
    assert store.codec.bytes_per_token == 16 * 2
    found = retriever.invoke("revenue")
    assert len(found) == 4 and all(d.metadata["relevance_score"] <= 1 for d in found)


def test_a_byaldi_index_in_both_frameworks_uses_its_stored_images() -> None:
    """Opened without re-encoding; its stored page images go to the chat model and into ImageNodes as they
    are (the source files need not exist here)."""
    from tests.test_byaldi import FIXTURES, MODEL

    index = LateInteractionIndex.from_byaldi(FIXTURES / "pages-images", MODEL, device="cpu", dtype="float32")
    docs = RagplugRetriever(index=index, k=2, include_images=True).invoke("a chart")
    assert len(docs) == 2 and all(d.metadata["image_base64"] for d in docs)
    assert page_images_message("What does it show?", docs).content_blocks[2]["type"] == "image"
    nodes = LIRetriever(index, similarity_top_k=2, include_images=True).retrieve(QueryBundle("a chart"))
    assert all(isinstance(n.node, ImageNode) and n.node.image for n in nodes)
    assert "image_base64" not in nodes[0].node.get_content(metadata_mode="llm")
    bare = LIRetriever(index, similarity_top_k=1).retrieve(QueryBundle("a chart"))
    assert isinstance(bare[0].node, ImageNode) and bare[0].node.image is None  # images only on request


async def test_pages_added_later_async_and_as_a_tool(encoder: ColPaliEncoder, docs: Path, tmp_path: Path) -> None:
    retriever = RagplugRetriever.from_pages([docs / "chart.png"], model=encoder, k=3)
    more = tmp_path / "more.pdf"
    more.write_bytes(minimal_pdf(["Dividends of 2 dollars", "Risks"]))
    assert retriever.add_pages([more]) == [f"{more}#p1", f"{more}#p2"]
    assert len(retriever.index) == 3
    found = await retriever.ainvoke("dividends")
    assert len(found) == 3
    tool = retriever.as_tool(name="page_search", description="Search the filings' pages.")
    assert "Dividends of 2 dollars" in tool.invoke({"query": "dividends"})
    li = LIRetriever(retriever.index, similarity_top_k=2)
    assert len(li.add_pages([more], upsert=True)) == 2 and len(retriever.index) == 3
    assert len(await li.aretrieve("dividends")) == 2
