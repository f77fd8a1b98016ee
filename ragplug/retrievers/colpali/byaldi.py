"""byaldi index folders opened as ragplug stores, without byaldi and without re-encoding a page.

byaldi's ``RAGMultiModalModel.index`` (0.0.1 to 0.0.7) writes ``<index_root>/<index_name>/``:

- ``index_config.json.gz``: ``model_name`` (the hub id or path it was built with), ``full_document_collection``
  (page images kept), ``highest_doc_id``, ``resize_stored_images``, ``max_image_width`` / ``max_image_height``
  and ``library_version`` (the last four since 0.0.2);
- ``embeddings/embeddings_<start>.pt``: ``torch.save`` of a list of page embeddings, 500 pages a file, each a
  ``(n_vectors, dim)`` tensor in the model's dtype (bfloat16: byaldi loads every model in bf16); page ``i`` of
  the index (its *embed id*) is the ``i``-th tensor over the files in ``start`` order;
- ``embed_id_to_doc_id.json.gz``: ``{embed id: {"doc_id": int, "page_id": int}}``, pages numbered from 1 (a
  PDF's pages 1..n in order, an image is page 1);
- ``doc_ids_to_file_names.json.gz`` (since 0.0.2): ``{doc id: the input path as given}``, or
  ``"In-memory Image"`` for a PIL image;
- ``metadata.json.gz``: ``{doc id: the document's metadata}`` (may be empty);
- ``collection/<start>.json.gz`` when ``full_document_collection``: ``{embed id: base64 PNG of the page}``.

:func:`read_byaldi_index` reads that folder into an in-memory store
(:class:`~ragplug.retrievers.late_interaction.InMemoryMultiVectorStore`) holding the vectors exactly as byaldi
stored them (bf16 values as float32, which is lossless; ``codec="float16"`` halves that memory and still holds
every bf16 component exactly unless it is below ~1.5e-5 in magnitude, where float16 has fewer bits; the
Postgres store keeps float16 too). It is an ordinary ragplug store afterwards: add pages, delete a document with
all its pages, filter by metadata, save it in ragplug's format. With ``store=`` the pages go into any store
instead (a Postgres collection, say), a few documents per ``add``. Either way the ``.pt`` files are
memory-mapped and converted a page at a time, so the vectors are held once, in the store (measured on 1,000
pages of 256 vectors: the peak grows by 1.28x their float32 size, against 2.38x when every page was converted
before the store was filled). :func:`open_byaldi_index` adds the ColPali encoder for queries and new pages.

Records: one per page, id ``"<doc id>#p<page>"`` (as :mod:`ragplug.files` names PDF pages) with the byaldi doc id
as ``parent_id`` (so getting or deleting ``"3"`` gets or deletes every page of document 3), no text (byaldi keeps
none), and the metadata of a page of :mod:`ragplug.retrievers.colpali.pages`: the document's byaldi metadata,
then ``doc_id`` (byaldi's value, usually an int), ``page`` (1-based), ``page_count`` (the document's pages in
the index), ``source`` (the file byaldi indexed, as it was given to byaldi) and ``image``, the page's reference
that :func:`~ragplug.retrievers.colpali.pages.page_image` renders again from that file (``"<file>#page=<n>"``
for a PDF page, the file for an image; ``None`` for a PIL image byaldi was handed, which has no ``source``
either). With ``images="inline"`` (the default) and an index that kept its page images
(``store_collection_with_index=True``), each page also has ``image_base64``: byaldi's stored PNG (possibly
resized by byaldi), under the key where the LangChain plugin puts page images; byaldi's ``search`` returned it
with every result the same way. ``images="omit"`` leaves them out (a full page is ~0.1-1 MB of base64, carried
in every hit's metadata). A document metadata key that collides with these or with keys ragplug reserves is
kept as ``byaldi_<key>``.

Scores: a ragplug search is exact MaxSim over the stored vectors, which is what byaldi computes with
colpali-engine's ``score_multi_vector``, to float32 rounding. byaldi itself scores in bfloat16 (its
embeddings and queries are bf16), so the scores its ``search`` prints are rounded to bf16 (about 3 significant
digits: within ~0.03 of ragplug's on scores near 10, with ties where bf16 cannot tell pages apart), and
``score_multi_vector`` pads pages of one batch with zero vectors, so a query vector whose best match in a
shorter page is negative counts 0 there in byaldi (pages of different lengths, ColQwen2; never for ColPali,
whose pages all have the same length, nor for query vectors with a positive best match).

Bad folders: a missing file, a truncated or unreadable one, a ``.pt`` file that holds anything but a list of
tensors (read with ``torch.load(weights_only=True)`` only: pickled objects are refused, never run), counts
that disagree between files: :class:`~ragplug.errors.StoreCorruptedError` naming the file. A folder written by
a byaldi layout this module does not know (unknown config keys, page entries or embedding files):
:class:`~ragplug.errors.InvalidInputError` naming them. Nothing is ever written to the folder.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import numpy as np

from ragplug._extras import require
from ragplug._progress import progress_bar
from ragplug.errors import DuplicateIdError, EncoderMismatchError, InvalidInputError, StoreCorruptedError
from ragplug.retrievers.colpali.pages import IMAGE_KEY
from ragplug.retrievers.late_interaction.base import (
    RELEVANCE_KEY,
    SCORE_KEY,
    Encoder,
    EncoderIdentity,
    MultiVectorStore,
    Record,
)
from ragplug.retrievers.late_interaction.codecs import Codec, codec_config, train_codec
from ragplug.retrievers.late_interaction.stores.memory import InMemoryMultiVectorStore

if TYPE_CHECKING:
    from ragplug.retrievers.late_interaction.index import LateInteractionIndex

__all__ = ["ByaldiIndexInfo", "open_byaldi_index", "page_id", "read_byaldi_index"]

logger = logging.getLogger(__name__)

ImageMode = Literal["inline", "omit"]
_Store = TypeVar("_Store", bound=MultiVectorStore)

#: index_config keys byaldi 0.0.1-0.0.7 write; another key means a layout this module does not know
CONFIG_KEYS = frozenset(
    {
        "model_name",
        "full_document_collection",
        "highest_doc_id",
        "resize_stored_images",
        "max_image_width",
        "max_image_height",
        "library_version",
    }
)
#: the newest byaldi release whose layout was checked (a newer one is read, with a warning, if it matches)
NEWEST_KNOWN_VERSION = (0, 0, 7)
#: what byaldi writes for a document given as a PIL image instead of a file
IN_MEMORY = "In-memory Image"
#: metadata keys of page records (a byaldi metadata key among these is kept as ``byaldi_<key>``)
PAGE_KEYS = ("doc_id", "page", "page_count", "source", "image", IMAGE_KEY)
_RESERVED = (*PAGE_KEYS, "parent_id", "chunk_index", "start_index", SCORE_KEY, RELEVANCE_KEY)
_EMBEDDINGS = re.compile(r"^embeddings_(\d+)\.pt$")
_COLLECTION = re.compile(r"^(\d+)\.json\.gz$")
_PNG_BASE64 = "iVBORw0KGgo"  # the PNG signature, base64-encoded


@dataclass(frozen=True)
class ByaldiIndexInfo:
    """What a byaldi index records about itself."""

    path: Path
    model_name: str = field(metadata={"help": "the hub id or path byaldi built the index with (index_config)"})
    library_version: str | None = field(metadata={"help": "byaldi's version (None before 0.0.2)"})
    dim: int
    dtype: str = field(metadata={"help": "dtype of the stored embeddings (bfloat16 for byaldi's models)"})
    n_pages: int
    n_documents: int
    n_vectors: int
    n_images: int = field(metadata={"help": "pages whose image the index kept (0 without a collection)"})
    images_kept: bool = field(metadata={"help": "the page images went into the records' metadata"})
    max_image_size: tuple[int, int] | None = field(metadata={"help": "(width, height) byaldi resized images to"})
    config: Mapping[str, Any] = field(repr=False, metadata={"help": "index_config as read"})


def page_id(doc_id: int | str, page: int) -> str:
    """The record id of page ``page`` (1-based) of byaldi document ``doc_id``: ``"<doc id>#p<page>"``."""
    return f"{doc_id}#p{page}"


def open_byaldi_index(
    path: str | os.PathLike[str],
    model: str | os.PathLike[str] | Encoder | None = None,
    *,
    images: ImageMode = "inline",
    store: MultiVectorStore | None = None,
    store_options: Mapping[str, Any] | None = None,
    **encoder_kwargs: Any,
) -> LateInteractionIndex:
    """The byaldi index folder ``path`` as a :class:`~ragplug.retrievers.late_interaction.LateInteractionIndex`
    with a ColPali encoder for queries and new pages: ``model`` (an encoder, hub id or folder), else the model
    the index records (``index_config``'s ``model_name``). ``encoder_kwargs`` go to
    :class:`~ragplug.retrievers.colpali.encoder.ColPaliEncoder` (``device``, ``dtype``...), ``store`` (a store
    to import the pages into, such as a Postgres collection), ``store_options`` (settings of the in-memory store
    made without one) and ``images`` to :func:`read_byaldi_index`. An encoder of another dimension than the
    index's raises :class:`~ragplug.errors.EncoderMismatchError` (with ``store``: before anything is written,
    so the encoder is loaded first)."""
    from ragplug.retrievers.late_interaction.index import LateInteractionIndex

    if isinstance(model, Encoder) and encoder_kwargs:
        msg = f"encoder settings {sorted(encoder_kwargs)} given with a ready encoder; pass one or the other"
        raise InvalidInputError(msg)
    if store is not None:  # the encoder first: the store is bound to it before a page is written
        folder = _index_folder(Path(path))
        encoder = _encoder(model, folder, _read_config(folder)["model_name"], encoder_kwargs)
        if store_options:
            msg = f"store_options {sorted(store_options)} given with a ready store; configure the store instead"
            raise InvalidInputError(msg)
        target, _ = read_byaldi_index(path, images=images, encoder=encoder.identity, store=store)
        return LateInteractionIndex(encoder, target)
    memory, info = read_byaldi_index(path, images=images, **dict(store_options or {}))
    return LateInteractionIndex(_encoder(model, info.path, info.model_name, encoder_kwargs), memory)


def _encoder(
    model: str | os.PathLike[str] | Encoder | None, folder: Path, recorded: str, encoder_kwargs: dict[str, Any]
) -> Encoder:
    """``model`` as an encoder: as is, else a ColPali encoder of it or of the model the index records."""
    if isinstance(model, Encoder):
        return model
    name = os.fspath(model) if model is not None else recorded
    if model is None and os.path.isabs(name) and not os.path.isdir(name):
        msg = (
            f"{folder} was built by byaldi with the model {name!r}, which is not on this machine; "
            "pass model= (its folder or hub id)"
        )
        raise InvalidInputError(msg)
    from ragplug.retrievers.colpali.encoder import ColPaliEncoder

    return ColPaliEncoder(name, **encoder_kwargs)


@overload
def read_byaldi_index(
    path: str | os.PathLike[str],
    *,
    images: ImageMode = ...,
    encoder: EncoderIdentity | None = ...,
    store: None = ...,
    batch_pages: int = ...,
    **store_options: Any,
) -> tuple[InMemoryMultiVectorStore, ByaldiIndexInfo]: ...


@overload
def read_byaldi_index(
    path: str | os.PathLike[str],
    *,
    images: ImageMode = ...,
    encoder: EncoderIdentity | None = ...,
    store: _Store,
    batch_pages: int = ...,
) -> tuple[_Store, ByaldiIndexInfo]: ...


def read_byaldi_index(
    path: str | os.PathLike[str],
    *,
    images: ImageMode = "inline",
    encoder: EncoderIdentity | None = None,
    store: MultiVectorStore | None = None,
    batch_pages: int = 64,
    **store_options: Any,
) -> tuple[MultiVectorStore, ByaldiIndexInfo]:
    """Read a byaldi index folder (module docstring) into an in-memory store, or into ``store``.

    The page embeddings are memory-mapped and converted a page at a time, so the vectors are held once, in
    the store: without ``store``, in columns allocated for all of them (a codec that needs training is
    trained first on a sample drawn from all the pages, as the store would draw it); with ``store``, by
    ``add`` calls of about ``batch_pages`` pages (a document's pages always in one call).

    Args:
        path: the index folder (``<index_root>/<index_name>``, the one holding ``index_config.json.gz``).
        images: ``"inline"``: each page's stored image, if the index kept images, as base64 PNG in its
            metadata under ``image_base64``; ``"omit"``: none (the collection is not read).
        encoder: the identity of the query encoder, recorded in the store (default: none yet; binding an
            encoder later checks its dimension). One of another dimension than the index's raises
            :class:`~ragplug.errors.EncoderMismatchError` before anything is written.
        store: any :class:`~ragplug.retrievers.late_interaction.MultiVectorStore` to add the pages to (say a
            :class:`~ragplug.retrievers.late_interaction.stores.postgres.PgVectorStore` collection); it may
            hold other records, but none with a page's id (``"<doc id>#p<page>"``) or a document's id
            (:class:`~ragplug.errors.DuplicateIdError`, before anything is written). The folder is checked
            before the first write; should a page still fail (values that are not finite, a write the store
            refuses), the pages already added are deleted again before the error is raised.
        batch_pages: pages per ``add`` call into ``store``.
        store_options: without ``store``,
            :class:`~ragplug.retrievers.late_interaction.stores.memory.InMemoryMultiVectorStore` settings
            (``codec="float16"`` halves the memory of the default float32, nearly always exactly: see the
            module docstring; ``mode``...).

    Returns:
        The store (pages in byaldi's embed id order) and a :class:`ByaldiIndexInfo`.
    """
    if images not in ("inline", "omit"):
        msg = f"images must be 'inline' or 'omit', got {images!r}"
        raise InvalidInputError(msg)
    if isinstance(batch_pages, bool) or not isinstance(batch_pages, int) or batch_pages < 1:
        msg = f"batch_pages must be a positive integer, got {batch_pages!r}"
        raise InvalidInputError(msg)
    if store is not None and store_options:
        msg = f"store options {sorted(store_options)} given with a ready store; configure the store instead"
        raise InvalidInputError(msg)
    folder = _index_folder(Path(path))
    config = _read_config(folder)
    torch = require("torch", "colpali")
    entries = _read_entries(folder)
    embeddings = _scan_embeddings(folder, torch, len(entries))
    file_names = _read_file_names(folder)
    doc_metadata = _read_doc_metadata(folder)
    kept: dict[int, str] = {}
    if config.get("full_document_collection") and images == "inline":
        kept = _read_collection(folder, len(entries))
    page_counts = Counter(doc for doc, _ in entries)
    ids: list[str] = []
    parents: list[str | None] = []
    metadatas: list[dict[str, Any]] = []
    for embed_id, (doc, page) in enumerate(entries):
        ids.append(page_id(doc, page))
        parents.append(str(doc))
        meta = _page_metadata(doc_metadata.get(str(doc), {}), doc)
        meta.update(doc_id=doc, page=page, page_count=page_counts[doc])
        source = file_names.get(str(doc))
        if source is not None and source != IN_MEMORY:
            meta["source"] = source
        meta["image"] = _reference(source, page) if source is not None and source != IN_MEMORY else None
        if embed_id in kept:
            meta[IMAGE_KEY] = kept[embed_id]
        metadatas.append(meta)
    if encoder is not None and encoder.dim != embeddings.dim:
        msg = f"{folder} holds {embeddings.dim}-dim vectors; encoder {encoder.name!r} makes {encoder.dim}-dim"
        raise EncoderMismatchError(msg)
    try:
        if store is None:
            store = _memory_store(embeddings, torch, ids, parents, metadatas, encoder, store_options)
        else:
            _check_target(store, folder, embeddings.dim, ids, page_counts)
            if encoder is not None:
                store.bind_encoder(encoder)
            _write_pages(store, embeddings, torch, ids, parents, metadatas, batch_pages=batch_pages)
    except DuplicateIdError:
        raise
    except InvalidInputError as err:
        msg = f"{folder}: cannot open this byaldi index as a ragplug store: {err}"
        raise InvalidInputError(msg) from err
    width, height = config.get("max_image_width"), config.get("max_image_height")
    info = ByaldiIndexInfo(
        path=folder,
        model_name=config["model_name"],
        library_version=config.get("library_version"),
        dim=embeddings.dim,
        dtype=embeddings.dtype,
        n_pages=len(entries),
        n_documents=len(page_counts),
        n_vectors=embeddings.n_vectors,
        n_images=len(kept),
        images_kept=bool(kept),
        max_image_size=(width, height) if type(width) is int and type(height) is int else None,
        config=config,
    )
    logger.info(
        "read byaldi index %s: %d pages of %d documents, %d vectors", folder, len(ids), len(page_counts), info.n_vectors
    )
    return store, info


def _check_target(
    store: MultiVectorStore, folder: Path, dim: int, ids: list[str], documents: Mapping[int | str, int]
) -> None:
    """Refuse a store of another dimension, or one that holds a page's or a document's id, before writing."""
    if store.dim is not None and store.dim != dim:
        msg = f"{folder} holds {dim}-dim vectors; the store holds {store.dim}-dim vectors"
        raise EncoderMismatchError(msg)
    stored = set(store.ids())  # record ids (a document id that names stored chunks is refused by the first add)
    taken = sorted(i for i in (*ids, *map(str, documents)) if i in stored)
    if taken:
        msg = f"ids already stored: {taken[:10]}; the byaldi index's pages and documents need ids of their own"
        raise DuplicateIdError(msg)


# -- the folder and its config --------------------------------------------------------------------------
def _index_folder(folder: Path) -> Path:
    if not folder.is_dir():
        msg = f"{folder} is not a folder; a byaldi index is a folder holding index_config.json.gz and embeddings/"
        raise InvalidInputError(msg)
    byaldi_files = ("index_config.json.gz", "index_config.json", "embed_id_to_doc_id.json.gz", "embeddings")
    if not any((folder / name).exists() for name in byaldi_files):
        inside = sorted(p.name for p in folder.iterdir() if (p / "index_config.json.gz").is_file())
        hint = f"; it holds the byaldi indexes {inside}: pass one of them" if inside else ""
        msg = (
            f"{folder} is not a byaldi index folder (no index_config.json.gz, embed_id_to_doc_id.json.gz nor "
            f"embeddings/){hint}"
        )
        raise InvalidInputError(msg)
    return folder


def _read_config(folder: Path) -> dict[str, Any]:
    file, config = _read_json(folder, "index_config", dict)
    unknown = sorted(set(config) - CONFIG_KEYS)
    version = config.get("library_version")
    if unknown:
        msg = (
            f"{file} has settings {unknown} that byaldi 0.0.1-0.0.7 never wrote (library_version {version!r}): "
            "this index comes from a byaldi layout ragplug does not know, so it is not read rather than read wrong"
        )
        raise InvalidInputError(msg)
    name = config.get("model_name")
    if not isinstance(name, str) or not name.strip():
        msg = f"{file}: 'model_name' must name the model the index was built with, got {name!r}"
        raise StoreCorruptedError(msg)
    if version is not None and not isinstance(version, str):
        msg = f"{file}: 'library_version' must be a string, got {version!r}"
        raise StoreCorruptedError(msg)
    if not isinstance(config.get("full_document_collection", False), bool):
        msg = f"{file}: 'full_document_collection' must be true or false, got {config['full_document_collection']!r}"
        raise StoreCorruptedError(msg)
    if version is not None and _version(version) > NEWEST_KNOWN_VERSION:
        logger.warning(
            "%s was written by byaldi %s, newer than the layouts ragplug checked (up to %s); its files look the same, "
            "reading it",
            folder,
            version,
            ".".join(map(str, NEWEST_KNOWN_VERSION)),
        )
    return config


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


# -- files --------------------------------------------------------------------------------------------
def _read_json(folder: Path, stem: str, kind: type, *, required: bool = True) -> tuple[Path, Any]:
    """``<stem>.json.gz`` (what byaldi writes) or else ``<stem>.json``; ``(path, None)`` when absent and optional."""
    file = folder / f"{stem}.json.gz"
    if not file.is_file() and (folder / f"{stem}.json").is_file():
        file = folder / f"{stem}.json"
    if not file.is_file():
        if not required:
            return file, None
        msg = f"{folder / (stem + '.json.gz')} is missing; a byaldi index folder needs it"
        raise StoreCorruptedError(msg)
    try:
        raw = gzip.decompress(file.read_bytes()) if file.suffix == ".gz" else file.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except (OSError, EOFError, ValueError) as err:  # truncated or not gzip, not UTF-8, not JSON
        msg = f"cannot read {file} (truncated, or not gzipped JSON?): {type(err).__name__}: {err}"
        raise StoreCorruptedError(msg) from err
    if not isinstance(data, kind):
        msg = f"{file} holds a JSON {type(data).__name__}, expected a {kind.__name__}"
        raise StoreCorruptedError(msg)
    return file, data


def _embed_ids(mapping: dict[str, Any], file: Path, what: str) -> dict[int, Any]:
    """A byaldi mapping keyed by embed id (JSON string keys) with integer keys."""
    out = {}
    for key, value in mapping.items():
        if not key.isdigit():
            msg = f"{file}: key {key!r} is not an embed id ({what} are keyed by page numbers 0, 1, 2...)"
            raise StoreCorruptedError(msg)
        out[int(key)] = value
    return out


def _read_entries(folder: Path) -> list[tuple[int | str, int]]:
    """``(doc id, page)`` of every page, in embed id order."""
    file, raw = _read_json(folder, "embed_id_to_doc_id", dict)
    entries = _embed_ids(raw, file, "pages")
    if not entries:
        msg = f"{file} lists no pages; the index is empty"
        raise StoreCorruptedError(msg)
    if sorted(entries) != list(range(len(entries))):
        gaps = sorted(set(range(len(entries))) - set(entries))[:5]
        msg = f"{file}: embed ids must be 0..{len(entries) - 1}, but {gaps} are missing"
        raise StoreCorruptedError(msg)
    out: list[tuple[int | str, int]] = []
    seen: dict[tuple[int | str, int], int] = {}
    for embed_id in range(len(entries)):
        entry = entries[embed_id]
        if not isinstance(entry, dict):
            msg = f"{file}: page {embed_id} is a {type(entry).__name__}, not {{'doc_id': ..., 'page_id': ...}}"
            raise StoreCorruptedError(msg)
        unknown = sorted(set(entry) - {"doc_id", "page_id"})
        if unknown:
            msg = f"{file}: page {embed_id} has fields {unknown} that byaldi 0.0.1-0.0.7 never wrote; an unknown layout"
            raise InvalidInputError(msg)
        doc, page = entry.get("doc_id"), entry.get("page_id")
        if isinstance(doc, bool) or not isinstance(doc, int | str) or (isinstance(doc, str) and not doc.strip()):
            msg = f"{file}: page {embed_id} has doc_id {doc!r}; byaldi doc ids are integers"
            raise StoreCorruptedError(msg)
        if type(page) is not int or page < 1:
            msg = f"{file}: page {embed_id} has page_id {page!r}; byaldi numbers pages from 1"
            raise StoreCorruptedError(msg)
        if (doc, page) in seen:
            msg = f"{file}: pages {seen[doc, page]} and {embed_id} are both page {page} of document {doc!r}"
            raise StoreCorruptedError(msg)
        seen[doc, page] = embed_id
        out.append((doc, page))
    return out


@dataclass(frozen=True)
class _Embeddings:
    """The page embeddings of an index as found by :func:`_scan_embeddings` (shapes only, no values read)."""

    files: list[tuple[int, Path]]  # (first embed id, file), in embed id order
    lengths: list[int]  # vectors of each page, in embed id order
    dim: int
    dtype: str

    @property
    def n_vectors(self) -> int:
        return sum(self.lengths)


def _scan_embeddings(folder: Path, torch: Any, n_pages: int) -> _Embeddings:
    """The embedding files, each page's vector count, the dimension and the stored dtype, checked against the
    page map; the files are memory-mapped, so no vector is read (values are checked by :func:`_pages`)."""
    where = folder / "embeddings"
    if not where.is_dir():
        msg = f"{where} is missing; a byaldi index folder keeps its page embeddings there"
        raise StoreCorruptedError(msg)
    files: dict[int, Path] = {}
    others = []
    for file in where.iterdir():
        match = _EMBEDDINGS.match(file.name)
        if match:
            files[int(match.group(1))] = file
        elif not file.name.startswith("."):
            others.append(file.name)
    if others:
        msg = (
            f"{where} holds {sorted(others)[:5]}, which byaldi 0.0.1-0.0.7 never wrote (only embeddings_<n>.pt); "
            "an unknown layout"
        )
        raise InvalidInputError(msg)
    if not files:
        msg = f"{where} holds no embeddings_<n>.pt file"
        raise StoreCorruptedError(msg)
    lengths: list[int] = []
    dtypes: set[str] = set()
    dim = 0  # not known yet
    for start in sorted(files):
        file = files[start]
        if start != len(lengths):
            msg = (
                f"{where}: {file.name} should hold the pages from embed id {start}, but the files before it hold "
                f"{len(lengths)} pages"
            )
            raise StoreCorruptedError(msg)
        pages = _load_pt(file, torch)
        if not isinstance(pages, list | tuple) or not pages:
            msg = f"{file} holds a {type(pages).__name__} where byaldi keeps a non-empty list of page embeddings"
            raise StoreCorruptedError(msg)
        for n, tensor in enumerate(pages):
            what = f"{file}: page {start + n}"
            if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim != 2:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                msg = f"{what} is {shape} ({getattr(tensor, 'dtype', '')}), not a 2-D float tensor (vectors x dim)"
                raise StoreCorruptedError(msg)
            if not len(tensor) or not tensor.shape[1] or (dim and tensor.shape[1] != dim):
                msg = f"{what} has shape {tuple(tensor.shape)}; the pages before it have {dim}-dim vectors"
                if not len(tensor) or not tensor.shape[1]:
                    msg = f"{what} has no vectors" if not len(tensor) else f"{what} has 0-dim vectors"
                raise StoreCorruptedError(msg)
            dim = int(tensor.shape[1])
            dtypes.add(str(tensor.dtype).removeprefix("torch."))
            lengths.append(int(tensor.shape[0]))
        del pages  # unmaps the file
    if len(lengths) != n_pages:
        listed = _name(folder, "embed_id_to_doc_id")
        msg = f"{where} holds {len(lengths)} page embeddings, but {listed} lists {n_pages} pages"
        raise StoreCorruptedError(msg)
    return _Embeddings(sorted(files.items()), lengths, dim, "/".join(sorted(dtypes)))


def _pages(embeddings: _Embeddings, torch: Any) -> Iterator[np.ndarray[Any, Any]]:
    """Every page's ``(n_vectors, dim)`` float32 matrix, in embed id order, one file mapped at a time (bf16 to
    float32 is exact); a page holding NaN or infinity raises :class:`StoreCorruptedError` naming it."""
    for start, file in embeddings.files:
        pages = _load_pt(file, torch)
        for n, tensor in enumerate(pages):
            embed_id = start + n
            expected = (embeddings.lengths[embed_id], embeddings.dim) if embed_id < len(embeddings.lengths) else None
            if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != expected:
                msg = f"{file} changed while it was read (page {embed_id})"
                raise StoreCorruptedError(msg)
            matrix = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
            if not np.isfinite(matrix).all():
                msg = f"{file}: page {embed_id} holds NaN or infinite values"
                raise StoreCorruptedError(msg)
            yield matrix
        del pages


def _name(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.json.gz"
    return gz if gz.is_file() or not (folder / f"{stem}.json").is_file() else folder / f"{stem}.json"


def _load_pt(file: Path, torch: Any) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and containers of them, never arbitrary objects.
    Memory-mapped where the file allows it (the zip format ``torch.save`` writes since torch 1.6): a tensor's
    values are read from the file when used, not when loaded."""
    with contextlib.suppress(Exception):  # an older format, or a damaged file: the plain load says which
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (truncated zip, refused pickle, bad header)
        first = str(err).splitlines()[0] if str(err) else ""
        msg = (
            f"cannot read {file}: {type(err).__name__}: {first}. It is truncated, corrupted, or holds pickled "
            "objects that are not tensors (ragplug loads .pt files with weights_only=True only)"
        )
        raise StoreCorruptedError(msg) from err


def _read_file_names(folder: Path) -> dict[str, str]:
    file, raw = _read_json(folder, "doc_ids_to_file_names", dict, required=False)
    if raw is None:  # byaldi 0.0.1 did not keep them
        return {}
    bad = [k for k, v in raw.items() if not isinstance(v, str)]
    if bad:
        msg = f"{file}: the file name of document {bad[0]!r} is a {type(raw[bad[0]]).__name__}, not a string"
        raise StoreCorruptedError(msg)
    return dict(raw)


def _read_doc_metadata(folder: Path) -> dict[str, dict[str, Any]]:
    file, raw = _read_json(folder, "metadata", dict, required=False)
    if raw is None:  # byaldi reads an index without it as one without metadata
        return {}
    bad = [k for k, v in raw.items() if not isinstance(v, dict)]
    if bad:
        msg = f"{file}: the metadata of document {bad[0]!r} is a {type(raw[bad[0]]).__name__}, not an object"
        raise StoreCorruptedError(msg)
    return dict(raw)


def _read_collection(folder: Path, n_pages: int) -> dict[int, str]:
    """``{embed id: base64 PNG}`` of the pages whose image byaldi kept."""
    where = folder / "collection"
    if not where.is_dir():
        msg = f"{where} is missing, but {_name(folder, 'index_config')} says the index keeps its page images there"
        raise StoreCorruptedError(msg)
    files = sorted((int(m.group(1)), p) for p in where.iterdir() if (m := _COLLECTION.match(p.name)) is not None)
    out: dict[int, str] = {}
    for _, file in files:
        _, raw = _read_json(where, file.name.removesuffix(".json.gz"), dict)
        for embed_id, value in _embed_ids(raw, file, "images").items():
            if embed_id >= n_pages:
                msg = f"{file} holds an image for page {embed_id}, but the index has {n_pages} pages"
                raise StoreCorruptedError(msg)
            if not isinstance(value, str) or not value.startswith(_PNG_BASE64):
                msg = f"{file}: the image of page {embed_id} is not a base64 PNG (byaldi stores pages as PNG)"
                raise StoreCorruptedError(msg)
            out[embed_id] = value
    return out


# -- records ------------------------------------------------------------------------------------------
def _reference(source: str, page: int) -> str:
    """The page's image reference as :mod:`ragplug.retrievers.colpali.pages` writes it."""
    return source if page == 1 and not source.lower().endswith(".pdf") else f"{source}#page={page}"


def _page_metadata(doc_meta: dict[str, Any], doc: int | str) -> dict[str, Any]:
    """A page's copy of its document's byaldi metadata, keys ragplug sets kept as ``byaldi_<key>``."""
    out: dict[str, Any] = {}
    for key, value in doc_meta.items():
        if key in _RESERVED:
            logger.warning("byaldi metadata %r of document %r is kept as byaldi_%s (ragplug sets it)", key, doc, key)
            key = f"byaldi_{key}"
        out[key] = value
    return out


def _memory_store(
    embeddings: _Embeddings,
    torch: Any,
    ids: list[str],
    parents: list[str | None],
    metadatas: list[dict[str, Any]],
    encoder: EncoderIdentity | None,
    store_options: dict[str, Any],
) -> InMemoryMultiVectorStore:
    """The in-memory store over the pages, holding their vectors once: columns allocated for every vector and
    filled a page at a time under the codec. A codec that needs training is trained first, on the sample of
    tokens the store itself would draw from all of them (so the store is the one ``add`` of every page made);
    below its ``train_tokens`` the store keeps float32 until it trains, as after such an ``add``."""
    options = dict(store_options)
    config = codec_config(options.pop("codec", None))
    n, dim = embeddings.n_vectors, embeddings.dim
    if config.needs_training and n < config.train_tokens:
        store = InMemoryMultiVectorStore(dim, encoder=encoder, codec=config, **options)
        _write_pages(store, embeddings, torch, ids, parents, metadatas, batch_pages=len(ids))
        return store
    if config.needs_training:
        rows = np.sort(np.random.default_rng(config.seed).choice(n, min(n, config.training_rows), replace=False))
        logger.info("training the %s codec on %d of %d tokens", config.kind, len(rows), n)
        codec = train_codec(config, _sampled(embeddings, torch, rows), n_tokens=n)
    else:
        codec = Codec.untrained(config, dim)
    columns = {name: np.empty((n, *col.shape[1:]), dtype=col.dtype) for name, col in codec.empty().items()}
    row = 0
    with progress_bar(n, desc=f"coding page vectors ({config.kind})", unit="vector", late=True) as bar:
        for matrix in _pages(embeddings, torch):
            part = codec.encode(codec.prepare(matrix))
            for name, column in columns.items():
                column[row : row + len(matrix)] = part[name]
            row += len(matrix)
            bar.update(len(matrix))
    return InMemoryMultiVectorStore.from_columns(
        codec, columns, embeddings.lengths, ids, metadata=metadatas, parents=parents, encoder=encoder, **options
    )


def _sampled(embeddings: _Embeddings, torch: Any, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The tokens at the sorted global ``rows`` (tokens numbered over all pages in embed id order)."""
    out = np.empty((len(rows), embeddings.dim), dtype=np.float32)
    first = 0
    for matrix in _pages(embeddings, torch):
        lo, hi = np.searchsorted(rows, [first, first + len(matrix)])
        out[lo:hi] = matrix[rows[lo:hi] - first]
        first += len(matrix)
    return out


def _write_pages(
    store: MultiVectorStore,
    embeddings: _Embeddings,
    torch: Any,
    ids: list[str],
    parents: list[str | None],
    metadatas: list[dict[str, Any]],
    *,
    batch_pages: int,
) -> None:
    """Add the pages to ``store`` about ``batch_pages`` at a time, a document's pages always in one call (an
    ``add`` refuses an item already stored); on an error, delete what was added, then raise it."""
    left = Counter(p for p in parents if p is not None)
    batch: list[Record] = []
    written: list[str] = []
    try:
        for id_, parent, meta, vectors in zip(ids, parents, metadatas, _pages(embeddings, torch), strict=True):
            batch.append(Record(id_, vectors, meta, None, parent))
            if parent is not None:
                left[parent] -= 1
            if len(batch) >= batch_pages and all(left[r.parent_id] == 0 for r in batch if r.parent_id is not None):
                store.add(batch)
                written += [r.id for r in batch]
                batch = []
        if batch:
            store.add(batch)
    except BaseException:
        if written:
            try:
                store.delete(written)
            except Exception:  # the first error is the one to report; say what is left behind
                logger.exception("could not remove the %d pages already written to %r", len(written), store)
        raise
