"""colbert-ai / RAGatouille PLAID index folders opened as ragplug stores, without colbert-ai.

A PLAID index (what ``colbert.Indexer`` and RAGatouille's ``RAGPretrainedModel.index`` write) keeps every
token as a centroid id and ``nbits`` bucketised residual bits per dimension, the very residual codec of
:mod:`..codecs`. :func:`read_plaid_index` reads the folder into an
:class:`~.memory.InMemoryMultiVectorStore` whose token columns ARE the index's codes and residuals (codes cast
to the codec's dtype; nothing is decoded or re-encoded) under a :class:`~..codecs.Codec` built from the
index's ``centroids.pt`` and ``buckets.pt``. Decoding a token is then exactly colbert-ai's CPU
``ResidualCodec.decompress``: ``normalise(centroid + bucket_weights[bucket of each dimension])``. The store
is an ordinary one afterwards: search it, add documents (encoded with the same centroids), delete, save it in
ragplug's format, or copy its records into the Postgres store (:func:`..stores.copy_records`).

Files read: ``metadata.json`` (its ``config``: ``dim``, ``nbits``, ``checkpoint``, lengths; ``num_chunks``),
``centroids.pt``, ``buckets.pt`` and, per chunk ``i``, ``i.codes.pt``, ``i.residuals.pt``,
``doclens.i.json`` and ``i.metadata.json`` when present. ``plan.json``, ``avg_residual.pt`` and the inverted
file ``ivf.pid.pt`` / ``ivf.pt`` are not needed: the store derives its centroid index from the codes
themselves. ``.pt`` files are read only with ``torch.load(..., weights_only=True)``, which refuses pickled
objects other than tensors and containers of them.

Ids, texts and metadata:

- a plain colbert-ai index: passage ``pid`` is stored under the id ``str(pid)``, with empty metadata; texts come
  from ``collection=``, or the collection the index's config names (a TSV path, looked for as written and next
  to the index; or the list of texts RAGatouille stores there), else none;
- a RAGatouille index (``pid_docid_map.json``): ids are document ids. A document indexed as one passage is a
  record under its own id with its metadata (``docid_metadata_map.json``); one split into several passages
  is stored the way :class:`~..index.LateInteractionIndex` stores chunks: ``"<doc id>#<n>"`` with the document
  id as ``parent_id`` and ``parent_id`` / ``chunk_index`` added to the document's metadata (no
  ``start_index``: the index does not keep the original document). Texts come from ``collection.json``.

Passages colbert-ai's ``IndexUpdater`` deleted (``doclens`` 0) are skipped. A folder that is missing a file,
holds a truncated or non-tensor ``.pt`` file, or whose files disagree with each other raises
:class:`~ragplug.errors.StoreCorruptedError` naming the file; an index ragplug cannot represent (``nbits``
outside 1, 2, 4) raises :class:`~ragplug.errors.InvalidInputError`. Nothing is written to the folder.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragplug._extras import require
from ragplug.errors import InvalidInputError, StoreCorruptedError
from ragplug.retrievers.late_interaction.base import EncoderIdentity
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig
from ragplug.retrievers.late_interaction.stores.memory import InMemoryMultiVectorStore

__all__ = ["PlaidIndexInfo", "open_plaid_index", "read_plaid_index"]

logger = logging.getLogger(__name__)

#: The residual widths colbert-ai writes (ragplug's own 8-bit codec is not a PLAID format).
PLAID_NBITS = (1, 2, 4)

Collection = str | os.PathLike[str] | Sequence[str]


@dataclass(frozen=True)
class PlaidIndexInfo:
    """What a PLAID index records about itself: enough to build the query encoder that matches it."""

    path: Path
    checkpoint: str | None = field(metadata={"help": "the model the index was built with (hub id or path)"})
    dim: int
    nbits: int
    doc_maxlen: int | None
    query_maxlen: int | None
    n_passages: int = field(metadata={"help": "passage ids in the index, deleted ones included"})
    n_records: int = field(metadata={"help": "records in the store (passages not deleted)"})
    n_tokens: int
    n_centroids: int
    ragatouille: bool = field(metadata={"help": "RAGatouille's pid_docid_map.json was read"})
    config: Mapping[str, Any] = field(repr=False, metadata={"help": "metadata.json's config, as read"})


def open_plaid_index(
    path: str | os.PathLike[str],
    *,
    collection: Collection | None = None,
    encoder: EncoderIdentity | None = None,
    **store_options: Any,
) -> InMemoryMultiVectorStore:
    """The PLAID index folder ``path`` as an in-memory store; see :func:`read_plaid_index`."""
    return read_plaid_index(path, collection=collection, encoder=encoder, **store_options)[0]


def read_plaid_index(
    path: str | os.PathLike[str],
    *,
    collection: Collection | None = None,
    encoder: EncoderIdentity | None = None,
    **store_options: Any,
) -> tuple[InMemoryMultiVectorStore, PlaidIndexInfo]:
    """Read a colbert-ai / RAGatouille PLAID index folder (module docstring) into an in-memory store.

    Args:
        path: the index folder (the one holding ``metadata.json``).
        collection: the passages' texts, indexed by pid: a list, or a colbert-ai TSV (``pid<TAB>text``) or
            JSON list file; default: found from the index (see the module docstring).
        encoder: the identity of the query encoder, recorded in the store (default: none yet; binding an
            encoder later checks its dimension).
        store_options: :class:`~.memory.InMemoryMultiVectorStore` settings (``mode``, ``approximate``...).

    Returns:
        The store and a :class:`PlaidIndexInfo` naming the checkpoint and lengths the index was built with.
    """
    folder = Path(path)
    if not folder.is_dir():
        msg = f"{folder} is not a folder; a PLAID index is a folder holding metadata.json and *.codes.pt files"
        raise InvalidInputError(msg)
    metadata = _read_json(folder / "metadata.json", dict)
    config = metadata.get("config")
    if not isinstance(config, dict):
        msg = f"{folder / 'metadata.json'} has no 'config' object; is this a finished colbert-ai index?"
        raise StoreCorruptedError(msg)
    dim, nbits = config.get("dim"), config.get("nbits")
    if type(dim) is not int or dim < 1:
        msg = f"{folder / 'metadata.json'}: config 'dim' must be a positive integer, got {dim!r}"
        raise StoreCorruptedError(msg)
    if nbits not in PLAID_NBITS or type(nbits) is not int:
        msg = f"{folder}: the index stores nbits={nbits!r} bits per dimension; PLAID writes {list(PLAID_NBITS)}"
        raise InvalidInputError(msg)
    if (dim * nbits) % 8:
        msg = f"{folder}: dim {dim} * nbits {nbits} is not a whole number of bytes; not a valid PLAID index"
        raise StoreCorruptedError(msg)
    num_chunks = metadata.get("num_chunks")
    if type(num_chunks) is not int or num_chunks < 1:
        msg = f"{folder / 'metadata.json'}: 'num_chunks' must be a positive integer, got {num_chunks!r}"
        raise StoreCorruptedError(msg)

    torch = require("torch", "colbert")
    codec, n_centroids = _codec(folder, torch, dim, nbits)
    codes, residuals, doclens = _chunks(folder, torch, num_chunks, dim * nbits // 8, n_centroids)
    live = np.flatnonzero(doclens > 0)
    ids, parents, metas = _identities(folder, live)
    texts = _texts(folder, config, collection, len(doclens), live)
    try:
        store = InMemoryMultiVectorStore.from_columns(
            codec,
            {"codes": codes.astype(codec.code_dtype), "residuals": residuals},
            doclens[live],
            ids,
            metadata=metas,
            texts=texts,
            parents=parents,
            encoder=encoder,
            **store_options,
        )
    except InvalidInputError as err:
        msg = f"{folder}: cannot open this index as a ragplug store: {err}"
        raise InvalidInputError(msg) from err
    info = PlaidIndexInfo(
        path=folder,
        checkpoint=config.get("checkpoint") if isinstance(config.get("checkpoint"), str) else None,
        dim=dim,
        nbits=nbits,
        doc_maxlen=_optional_int(config, "doc_maxlen"),
        query_maxlen=_optional_int(config, "query_maxlen"),
        n_passages=len(doclens),
        n_records=len(ids),
        n_tokens=len(codes),
        n_centroids=n_centroids,
        ragatouille=(folder / "pid_docid_map.json").is_file(),
        config=config,
    )
    logger.info("read PLAID index %s: %d records, %d tokens, %d-bit", folder, len(ids), len(codes), nbits)
    return store, info


# -- files ---------------------------------------------------------------------------------------------
def _read_json(file: Path, kind: type) -> Any:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = f"{file} is missing; a PLAID index folder needs it"
        raise StoreCorruptedError(msg) from None
    except (OSError, ValueError) as err:  # unreadable, truncated, not UTF-8, not JSON
        msg = f"cannot read {file} (truncated or not JSON?): {err}"
        raise StoreCorruptedError(msg) from err
    if not isinstance(data, kind):
        msg = f"{file} holds a JSON {type(data).__name__}, expected a {kind.__name__}"
        raise StoreCorruptedError(msg)
    return data


def _load_pt(file: Path, torch: Any) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and containers of them, never arbitrary objects."""
    if not file.is_file():
        msg = f"{file} is missing; a PLAID index folder needs it"
        raise StoreCorruptedError(msg)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (truncated zip, refused pickle, bad header)
        msg = (
            f"cannot read {file}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
            "It is truncated, corrupted, or holds pickled objects that are not tensors (ragplug loads .pt "
            "files with weights_only=True only)"
        )
        raise StoreCorruptedError(msg) from err


def _array(value: Any, torch: Any, file: Path, what: str, ndim: int, kinds: str) -> np.ndarray[Any, Any]:
    """A tensor of ``ndim`` dimensions and a dtype kind in ``kinds`` as a numpy array."""
    if not isinstance(value, torch.Tensor):
        msg = f"{file} holds a {type(value).__name__} where {what} (a tensor) was expected"
        raise StoreCorruptedError(msg)
    tensor = value.detach().cpu()
    if tensor.is_floating_point():
        tensor = tensor.float()
    array = tensor.numpy()
    if array.ndim != ndim or array.dtype.kind not in kinds:
        msg = f"{file}: {what} must be a {ndim}-D tensor of kind {kinds!r}, got shape {array.shape} {array.dtype}"
        raise StoreCorruptedError(msg)
    return array


def _codec(folder: Path, torch: Any, dim: int, nbits: int) -> tuple[Codec, int]:
    centroids_file, buckets_file = folder / "centroids.pt", folder / "buckets.pt"
    centroids = _array(_load_pt(centroids_file, torch), torch, centroids_file, "the centroids", 2, "f")
    if centroids.shape[1] != dim or not len(centroids):
        msg = f"{centroids_file}: centroids of shape {centroids.shape}, but the index has dim {dim}"
        raise StoreCorruptedError(msg)
    buckets = _load_pt(buckets_file, torch)
    if not isinstance(buckets, tuple | list) or len(buckets) != 2:
        msg = f"{buckets_file} must hold (bucket_cutoffs, bucket_weights), got {type(buckets).__name__}"
        raise StoreCorruptedError(msg)
    cutoffs = _array(buckets[0], torch, buckets_file, "the bucket cutoffs", 1, "f")
    weights = _array(buckets[1], torch, buckets_file, "the bucket weights", 1, "f")
    config = CodecConfig(kind="residual", nbits=nbits, n_centroids=len(centroids))
    try:
        return Codec(config, dim, centroids=centroids, cutoffs=cutoffs, weights=weights), len(centroids)
    except InvalidInputError as err:  # wrong counts of cutoffs or weights for nbits, non-finite values
        msg = f"{folder}: centroids.pt / buckets.pt do not fit nbits={nbits}, dim={dim}: {err}"
        raise StoreCorruptedError(msg) from err


def _chunks(
    folder: Path, torch: Any, num_chunks: int, width: int, n_centroids: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Every chunk's codes, residuals and doclens, concatenated and checked against each other."""
    all_codes, all_residuals, all_doclens = [], [], []
    n_passages = 0
    for i in range(num_chunks):
        doclens_file = folder / f"doclens.{i}.json"
        doclens = _read_json(doclens_file, list)
        if not all(type(n) is int and n >= 0 for n in doclens):
            msg = f"{doclens_file} must be a list of token counts (integers >= 0)"
            raise StoreCorruptedError(msg)
        codes_file, residuals_file = folder / f"{i}.codes.pt", folder / f"{i}.residuals.pt"
        codes = _array(_load_pt(codes_file, torch), torch, codes_file, "the centroid codes", 1, "iu")
        residuals = _array(_load_pt(residuals_file, torch), torch, residuals_file, "the packed residuals", 2, "u")
        if residuals.dtype != np.uint8 or residuals.shape[1] != width:
            msg = (
                f"{residuals_file}: residuals of shape {residuals.shape} ({residuals.dtype}); the index's dim and "
                f"nbits give {width} bytes per token (uint8)"
            )
            raise StoreCorruptedError(msg)
        if not sum(doclens) == len(codes) == len(residuals):
            msg = (
                f"{doclens_file} counts {sum(doclens)} tokens, but {codes_file.name} holds {len(codes)} codes and "
                f"{residuals_file.name} {len(residuals)} residuals"
            )
            raise StoreCorruptedError(msg)
        if len(codes) and (int(codes.min()) < 0 or int(codes.max()) >= n_centroids):
            msg = f"{codes_file} names centroid {int(codes.max())}, but centroids.pt holds {n_centroids}"
            raise StoreCorruptedError(msg)
        chunk_meta_file = folder / f"{i}.metadata.json"
        if chunk_meta_file.is_file():
            chunk_meta = _read_json(chunk_meta_file, dict)
            expected = {"passage_offset": n_passages, "num_passages": len(doclens), "num_embeddings": len(codes)}
            wrong = {k: chunk_meta.get(k) for k, v in expected.items() if k in chunk_meta and chunk_meta[k] != v}
            if wrong:
                msg = f"{chunk_meta_file} says {wrong}, but the chunk's files give {expected}"
                raise StoreCorruptedError(msg)
        n_passages += len(doclens)
        all_codes.append(codes)
        all_residuals.append(residuals)
        all_doclens.append(np.asarray(doclens, dtype=np.int64))
    doclens_all = np.concatenate(all_doclens)
    if not (doclens_all > 0).any():
        msg = f"{folder}: the index holds no passages (every doclens is 0)"
        raise StoreCorruptedError(msg)
    return np.concatenate(all_codes), np.concatenate(all_residuals), doclens_all


# -- ids, metadata, texts -------------------------------------------------------------------------------
def _identities(folder: Path, live: np.ndarray[Any, Any]) -> tuple[list[str], list[str | None], list[dict[str, Any]]]:
    """Record ids, parents and metadata for the live passages ``live`` (pids, ascending)."""
    map_file = folder / "pid_docid_map.json"
    if not map_file.is_file():
        return [str(pid) for pid in live], [None] * len(live), [{} for _ in live]
    raw = _read_json(map_file, dict)
    try:
        pid_docid = {int(pid): _doc_id(docid) for pid, docid in raw.items()}
    except (ValueError, TypeError) as err:
        msg = f"{map_file} must map passage ids to document ids (strings or integers): {err}"
        raise StoreCorruptedError(msg) from err
    missing = [int(p) for p in live if int(p) not in pid_docid]
    if missing:
        msg = f"{map_file} has no document id for passages {missing[:10]}"
        raise StoreCorruptedError(msg)
    doc_meta: dict[str, Any] = {}
    meta_file = folder / "docid_metadata_map.json"
    if meta_file.is_file():
        doc_meta = _read_json(meta_file, dict)
    docs = [pid_docid[int(p)] for p in live]
    n_passages: dict[str, int] = {}
    for doc in docs:
        n_passages[doc] = n_passages.get(doc, 0) + 1
    ids: list[str] = []
    parents: list[str | None] = []
    metas: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for doc in docs:
        meta = doc_meta.get(doc) or {}
        if not isinstance(meta, dict):
            msg = f"{meta_file}: the metadata of document {doc!r} is a {type(meta).__name__}, not an object"
            raise StoreCorruptedError(msg)
        if n_passages[doc] == 1:
            ids.append(doc)
            parents.append(None)
            metas.append(dict(meta))
            continue
        n = seen[doc] = seen.get(doc, -1) + 1
        ids.append(f"{doc}#{n}")
        parents.append(doc)
        metas.append({**meta, "parent_id": doc, "chunk_index": n})
    return ids, parents, metas


def _doc_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        msg = f"document id {value!r} is not a string or an integer"
        raise TypeError(msg)
    return str(value)


def _texts(
    folder: Path, config: Mapping[str, Any], collection: Collection | None, n_passages: int, live: np.ndarray[Any, Any]
) -> list[str | None] | None:
    """The live passages' texts, or None when the index does not say where they are."""
    where = "collection="
    if collection is None:
        if (folder / "collection.json").is_file():
            collection, where = folder / "collection.json", str(folder / "collection.json")
        elif isinstance(config.get("collection"), list):
            collection, where = config["collection"], f"{folder / 'metadata.json'} (config 'collection')"
        elif isinstance(config.get("collection"), str):
            named = Path(config["collection"])
            found = [p for p in (named, folder / named.name) if p.is_file()]
            if not found:
                logger.info("%s: its collection %s is not there; the records have no texts", folder, named)
                return None
            collection, where = found[0], str(found[0])
        else:
            return None
    texts = _collection(collection) if isinstance(collection, str | os.PathLike) else list(collection)
    if not all(isinstance(t, str) for t in texts):
        msg = f"the collection from {where} must hold only strings"
        raise StoreCorruptedError(msg)
    if len(texts) == n_passages:
        return [texts[int(p)] for p in live]
    if len(texts) == len(live):  # RAGatouille drops deleted passages from collection.json, keeping pid order
        return list(texts)
    msg = f"the collection from {where} holds {len(texts)} texts; the index has {n_passages} passages"
    msg += f" ({len(live)} not deleted)"
    raise StoreCorruptedError(msg)


def _collection(path: str | os.PathLike[str]) -> list[Any]:
    """Texts from a JSON list file or a colbert-ai TSV (``pid<TAB>text[<TAB>title]``, read as colbert-ai reads it)."""
    file = Path(path)
    if file.suffix == ".json":
        texts: list[Any] = _read_json(file, list)
        return texts
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as err:
        msg = f"cannot read the collection {file}: {err}"
        raise StoreCorruptedError(msg) from err
    texts = []
    for n, line in enumerate(lines):
        pid, *fields = line.strip("\n\r ").split("\t")
        if not fields or (pid != "id" and not (pid.isdigit() and int(pid) == n)):
            msg = f"{file}, line {n + 1}: {line[:40]!r} is not 'pid<TAB>text' with pid {n} (colbert-ai's TSV)"
            raise StoreCorruptedError(msg)
        passage, *title = fields
        texts.append(f"{title[0]} | {passage}" if title else passage)
    return texts


def _optional_int(config: Mapping[str, Any], name: str) -> int | None:
    value = config.get(name)
    return value if type(value) is int and value > 0 else None
