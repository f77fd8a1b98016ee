"""Framework-free builders of retrieval indexes, shared by the framework faces and the CLI."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ragplug.retrievers.late_interaction import Encoder, LateInteractionIndex, MultiVectorStore


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
