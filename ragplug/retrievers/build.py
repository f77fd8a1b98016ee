"""Framework-free builders of retrieval indexes, shared by the framework faces and the CLI."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ragplug.retrievers.late_interaction import Encoder, LateInteractionIndex, MultiVectorStore
from ragplug.retrievers.late_interaction.base import Record


def make_encoder(model: str | Path | Encoder, encoder_kwargs: dict[str, Any] | None) -> Encoder:
    """An :class:`Encoder` from a hub id / folder (loaded as a ColBERT checkpoint) or an encoder as is."""
    if isinstance(model, str | Path):
        from ragplug.retrievers.colbert import ColBERTEncoder

        return ColBERTEncoder(model, **(encoder_kwargs or {}))
    return model


def build_index(
    texts: Sequence[str],
    *,
    metadatas: Sequence[dict[str, Any] | None] | None,
    ids: Sequence[str] | None,
    model: str | Path | Encoder,
    store: MultiVectorStore | None,
    chunk: bool,
    encoder_kwargs: dict[str, Any] | None,
    show_progress: bool | None,
) -> LateInteractionIndex:
    """Load the encoder, make the index (chunking long texts when the encoder can) and add ``texts``."""
    encoder = make_encoder(model, encoder_kwargs)
    chunker = encoder.chunker() if chunk and hasattr(encoder, "chunker") else None
    index = LateInteractionIndex(encoder, store, chunker=chunker)
    index.add(list(texts), ids=ids, metadatas=metadatas, show_progress=show_progress)
    return index


def open_index(
    source: str | Path | MultiVectorStore,
    model: str | Path | Encoder | None,
    encoder_kwargs: dict[str, Any] | None,
) -> LateInteractionIndex:
    """An index over a saved folder or a store that already holds vectors, with the encoder that wrote it
    (rebuilt from the index's record when ``model`` is ``None``; checked against it otherwise)."""
    return LateInteractionIndex.open(source, model, **(encoder_kwargs or {}))


def make_page_encoder(model: str | Path | Encoder | None, encoder_kwargs: dict[str, Any] | None) -> Encoder:
    """A page :class:`Encoder`: a ColPali-family checkpoint (hub id / folder; default
    ``ragplug.retrievers.colpali.DEFAULT_MODEL``) loaded by ``ColPaliEncoder``, or an encoder as is."""
    if model is None or isinstance(model, str | Path):
        from ragplug.retrievers.colpali import DEFAULT_MODEL, ColPaliEncoder

        return ColPaliEncoder(DEFAULT_MODEL if model is None else model, **(encoder_kwargs or {}))
    return model


def add_pages(
    index: LateInteractionIndex,
    sources: Sequence[Any],
    *,
    upsert: bool = False,
    show_progress: bool | None = None,
    batch_pages: int = 16,
) -> list[str]:
    """Render and encode the pages of ``sources`` (PDF and image files, folders, PIL images: see
    :func:`ragplug.retrievers.colpali.pages.load_pages`) into ``index``, ``batch_pages`` at a time so that
    only those pages' images are in memory. Each page is stored under its page id (``<source>#p<n>``) with
    its text (for display and citations) and metadata (source, 1-based page, page count, image reference);
    a PDF's pages have the PDF as their parent, so deleting ``<source>`` deletes its pages. A document's
    pages are encoded a batch at a time and stored in one write (only its vectors wait in memory, not its
    images), so ``upsert`` replaces whole documents atomically. Returns the ids."""
    from ragplug._progress import progress_bar, wants_progress
    from ragplug.retrievers.colpali.pages import load_pages

    pages = load_pages(*sources)
    total = pages.count() if show_progress is not False else 0  # opens the PDFs, renders nothing
    shown = wants_progress(show_progress, total)
    ids: list[str] = []
    batch: list[Any] = []
    pending: list[Record] = []  # the current document's encoded pages, written together
    document: str | None = None

    def encode(bar: Any) -> None:
        _, records = index.prepare(
            batch,
            [p.id for p in batch],
            [p.metadata for p in batch],
            [p.text or None for p in batch],
            False,
            [_document_of(p) for p in batch],
        )
        pending.extend(records)
        bar.update(len(batch))
        batch.clear()

    def write() -> None:
        if pending:
            index.write(pending, upsert=upsert)
            ids.extend(r.id for r in pending)
            pending.clear()

    with progress_bar(total, desc="pages", unit="page", enabled=shown) as bar:
        for page in pages:
            owner = _document_of(page) or page.id
            if owner != document:  # a new document: the previous one's pages go in, in one write
                if batch:
                    encode(bar)
                write()
                document = owner
            batch.append(page)
            if len(batch) == batch_pages:
                encode(bar)
        if batch:
            encode(bar)
        write()
    if not ids:
        from ragplug.errors import InvalidInputError

        msg = f"no pages found in {list(sources)!r:.200}"
        raise InvalidInputError(msg)
    return ids


def _document_of(page: Any) -> str | None:
    """The document a page belongs to (its PDF, or its multi-page image), ``None`` for a lone image."""
    source = page.metadata.get("source")
    return source if isinstance(source, str) and page.id.startswith(f"{source}#p") else None


def build_page_index(
    sources: Sequence[Any],
    *,
    model: str | Path | Encoder | None = None,
    store: MultiVectorStore | None = None,
    encoder_kwargs: dict[str, Any] | None = None,
    show_progress: bool | None = None,
) -> LateInteractionIndex:
    """A page index (ColPali): load the page encoder, make the index and add the pages of ``sources``."""
    index = LateInteractionIndex(make_page_encoder(model, encoder_kwargs), store)
    add_pages(index, sources, show_progress=show_progress)
    return index


def page_text_index(
    pages: LateInteractionIndex, model: str | Path | Encoder, **encoder_kwargs: Any
) -> LateInteractionIndex:
    """A ColBERT index over the text of the pages already in ``pages`` (same ids; pages without text are
    left out), for hybrid image + text page retrieval (:class:`~ragplug.retrievers.fusion.FusionRetriever`).
    Only the pages' texts and metadata are read, never their vectors (see :func:`stored_texts`)."""
    records = [r for r in stored_texts(pages.store) if r.text and r.text.strip()]
    encoder = make_encoder(model, encoder_kwargs)
    chunker = encoder.chunker() if hasattr(encoder, "chunker") else None
    text = LateInteractionIndex(encoder, chunker=chunker)
    if records:
        text.add([r.text for r in records], ids=[r.id for r in records], metadatas=[r.metadata for r in records])
    return text


def stored_texts(store: MultiVectorStore, *, batch_size: int = 256) -> Iterator[Record]:
    """Every record of ``store`` for its text and metadata: through ``records(vectors=False)`` where the store
    has it (both built-in stores: no vector is read, each record's ``vectors`` is empty), else through
    ``get``, ``batch_size`` records at a time (their vectors read, but only a batch of them in memory)."""
    records = getattr(store, "records", None)
    if records is not None and "vectors" in inspect.signature(records).parameters:
        yield from records(vectors=False)
        return
    ids = store.ids()
    for lo in range(0, len(ids), batch_size):
        yield from store.get(ids[lo : lo + batch_size])


def page_retriever(
    sources: Sequence[Any],
    *,
    model: str | Path | Encoder | None,
    store: MultiVectorStore | None,
    text_model: str | Path | Encoder | None,
    encoder_kwargs: dict[str, Any] | None,
    show_progress: bool | None,
) -> Any:
    """The engine behind both faces' ``from_pages``: a page index of ``sources``, fused with a ColBERT index
    of the pages' text when ``text_model`` is given (a read-only
    :class:`~ragplug.retrievers.fusion.FusionRetriever`)."""
    from ragplug.retrievers.fusion import FusionRetriever

    index = build_page_index(
        sources, model=model, store=store, encoder_kwargs=encoder_kwargs, show_progress=show_progress
    )
    if text_model is None:
        return index
    return FusionRetriever([index, page_text_index(index, text_model)])
