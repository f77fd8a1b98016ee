"""The embedded default store: every vector in memory, exact MaxSim, persisted to a folder.

Layout: every token in one packed :class:`~.tokens.TokenMatrix` under the store's codec (float32,
float16, or PLAID-style residuals with an optional projection; :mod:`.codecs`) with per-document
``starts`` / ``lengths`` (grown by doubling, compacted on delete), plus ids, metadata and texts in
parallel lists. A codec that needs training (residuals, projection) is trained on the stored tokens once
the store holds ``CodecConfig.train_tokens`` tokens, or at the first save (unless ``train_on_save`` is
off, as in the default codec, :func:`~.codecs.default_codec`: ``pq`` from 200,000 tokens); until then
tokens are kept as they came. Search is
exact MaxSim (:mod:`.maxsim`) or, for large corpora, centroid candidate generation followed by exact
re-scoring (:mod:`.ivf`); :class:`SearchMode` picks one, ``AUTO`` by corpus size.

On disk (:meth:`InMemoryMultiVectorStore.save`) a store is a folder in the format of :mod:`.folder`
(atomic, checksummed, safe under concurrent saves and loads) holding ``vectors`` (the codec's columns,
starts, lengths), ``records`` (ids, metadata, texts), ``codec`` (its trained arrays, if any) and
optionally ``ivf`` (centroids and codes; a residual store derives them from its codec).
:meth:`~InMemoryMultiVectorStore.load` verifies the format version, every manifest field, the checksums
and shapes, and refuses a store written by another encoder. It memory-maps the token columns rather than
reading them: a loaded store's memory grows only with what its searches touch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ragplug._progress import progress_bar
from ragplug.errors import (
    EncoderMismatchError,
    InvalidInputError,
    StoreCorruptedError,
    UnknownIdError,
)
from ragplug.retrievers.late_interaction.base import (
    EncoderIdentity,
    FloatMatrix,
    Hit,
    Record,
    SearchOptions,
    ThreadedAsync,
    as_matrix,
    check_encoder,
    check_ids,
    check_k,
    check_metadata,
    check_records,
    check_text,
    copy_metadata,
    plan_write,
)
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig, codec_config, default_codec, train_codec
from ragplug.retrievers.late_interaction.filters import (
    Filter,
    FilterNode,
    explain_empty,
    fields_of,
    json_kind,
    parse_filter,
    to_predicate,
)
from ragplug.retrievers.late_interaction.ivf import ApproximateConfig, CentroidIndex
from ragplug.retrievers.late_interaction.stores.folder import MANIFEST, read_folder, safetensors_views, write_folder
from ragplug.retrievers.late_interaction.tokens import TokenMatrix
from ragplug.retrievers.late_interaction.twostage import top_k_exact

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "InMemoryMultiVectorStore", "MemorySearchOptions", "SearchMode"]

logger = logging.getLogger(__name__)

FORMAT_NAME = "ragplug.multivector"
FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # version 1: float32 vectors only, no codec


class SearchMode(str, Enum):
    """How a store searches."""

    EXACT = "exact"
    """Exact MaxSim against every document."""
    APPROXIMATE = "approximate"
    """Centroid candidate generation, then exact MaxSim over the candidates."""
    AUTO = "auto"
    """Approximate once the store holds at least ``approximate_min_tokens`` tokens and its index is ready
    (the first such search starts building it in the background and searches exactly), else exact."""


def _search_mode(mode: SearchMode | str) -> SearchMode:
    try:
        return SearchMode(mode)
    except ValueError:
        msg = f"unknown search mode {mode!r}; one of {[m.value for m in SearchMode]}"
        raise InvalidInputError(msg) from None


@dataclass(frozen=True)
class MemorySearchOptions(SearchOptions):
    """Per-search settings of :class:`InMemoryMultiVectorStore` (``None``: the store's own setting)."""

    mode: SearchMode | str | None = None
    n_probe: int | None = None
    n_candidates: int | None = None
    n_rescore: int | None = None

    def __post_init__(self) -> None:
        if self.mode is not None:
            object.__setattr__(self, "mode", _search_mode(self.mode))
        for name in ("n_probe", "n_candidates", "n_rescore"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                msg = f"{name} must be a positive integer, got {value!r}"
                raise InvalidInputError(msg)


def _options(options: SearchOptions | None) -> MemorySearchOptions:
    if options is None:
        return _DEFAULT_OPTIONS
    if not isinstance(options, MemorySearchOptions):
        msg = f"options must be MemorySearchOptions, got {type(options).__name__}"
        raise InvalidInputError(msg)
    return options


def _children_of(ids: list[str], parents: list[str | None]) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {}
    for id_, parent in zip(ids, parents, strict=True):
        if parent is not None:
            children.setdefault(parent, []).append(id_)
    return children


_DEFAULT_OPTIONS = MemorySearchOptions()


class InMemoryMultiVectorStore(ThreadedAsync):
    """A :class:`~ragplug.retrievers.late_interaction.base.MultiVectorStore` held in memory.

    >>> import numpy as np
    >>> store = InMemoryMultiVectorStore()
    >>> store.add([Record("a", np.eye(2, dtype=np.float32), {"n": 1}), Record("b", -np.eye(2, dtype=np.float32))])
    >>> [(h.id, h.score) for h in store.search(np.array([[1.0, 0.0]], dtype=np.float32), k=2)]
    [('a', 1.0), ('b', 0.0)]

    ``codec`` says how tokens are kept (:mod:`..codecs`). The default (:func:`..codecs.default_codec`) keeps
    them as float32 until the store holds 200,000 tokens (where ``AUTO`` search turns approximate), then
    compresses them with the ``pq`` codec to 1/16 of the bytes; ``codec="float32"`` keeps exact vectors at
    any size.
    """

    def __init__(
        self,
        dim: int | None = None,
        *,
        encoder: EncoderIdentity | None = None,
        mode: SearchMode | str = SearchMode.AUTO,
        approximate: ApproximateConfig | None = None,
        approximate_min_tokens: int = 200_000,
        codec: CodecConfig | str | None = None,
    ) -> None:
        if encoder is not None and dim is not None and encoder.dim != dim:
            msg = f"dim={dim} disagrees with the encoder's dimension {encoder.dim}"
            raise InvalidInputError(msg)
        self._dim = dim if dim is not None else (encoder.dim if encoder else None)
        self._encoder = encoder
        self.mode = _search_mode(mode)
        self.approximate = approximate or ApproximateConfig()
        self.approximate_min_tokens = approximate_min_tokens
        self._default_codec = codec is None  # settled by the dimension (default_codec)
        self.codec_config = codec_config(codec) if codec is not None else default_codec(self._dim)
        self._tokens = self._new_tokens(self._dim or 0)
        self._n_tokens = 0
        self._starts = np.empty(0, dtype=np.int64)
        self._lengths = np.empty(0, dtype=np.int64)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._metadata: list[dict[str, Any]] = []
        self._texts: list[str | None] = []
        self._parents: list[str | None] = []
        self._children: dict[str, list[str]] = {}  # parent id -> its chunks' ids, in insertion order
        self._ivf: CentroidIndex | None = None
        self._lock = threading.RLock()  # guards the fields above; held briefly, never while scoring or fitting
        self._removals = 0  # bumped by every delete, so an index fitted meanwhile knows its codes are stale
        self._generation = 0  # bumped when the codec is trained: the stored vectors change space
        self._build_lock = threading.Lock()  # one index build at a time
        self._save_lock = threading.Lock()  # one save at a time
        self._builder: threading.Thread | None = None

    search_options: ClassVar[type[SearchOptions]] = MemorySearchOptions

    def _new_tokens(self, dim: int) -> TokenMatrix:
        if self._default_codec and dim:
            self.codec_config = default_codec(dim)
        config = self.codec_config
        return TokenMatrix(dim, None if config.needs_training else Codec.untrained(config, dim))

    @property
    def codec(self) -> Codec | None:
        """The trained codec the tokens are stored with; None while they are kept as they came."""
        return self._tokens.codec

    @property
    def nbytes(self) -> int:
        """Bytes the stored token columns take."""
        return self._tokens.nbytes

    # -- introspection --------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        return self._dim

    @property
    def encoder(self) -> EncoderIdentity | None:
        return self._encoder

    def bind_encoder(self, identity: EncoderIdentity) -> None:
        """Record the encoder of the stored vectors; refuse another one."""
        with self._lock:
            check_encoder(self._encoder, identity, "this store")
            if self._dim is not None and self._dim != identity.dim:
                msg = f"the store holds {self._dim}-dim vectors; encoder {identity.name!r} makes {identity.dim}-dim"
                raise EncoderMismatchError(msg)
            self._encoder = identity
            self._dim = identity.dim
            if not self._n_tokens and self._tokens.input_dim != self._dim:  # a trained codec is kept
                self._tokens = self._new_tokens(self._dim)

    @property
    def n_tokens(self) -> int:
        return self._n_tokens

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, id: object) -> bool:
        """True for a record id and for the id of an item stored as chunks."""
        return id in self._row or id in self._children

    def ids(self) -> list[str]:
        return list(self._ids)

    def metadata(self) -> list[tuple[str, dict[str, Any]]]:
        """``(id, metadata)`` of every record, in insertion order, without copying vectors."""
        with self._lock:
            return [(id_, copy_metadata(m)) for id_, m in zip(self._ids, self._metadata, strict=True)]

    def records(self, *, vectors: bool = True) -> Iterator[Record]:
        """Every record, in insertion order. ``vectors=False`` reads ids, parents, texts and metadata only:
        each record's ``vectors`` is an empty ``(0, dim)`` matrix (nothing is decoded or copied), which no
        store accepts, so such a record cannot be written back by mistake."""
        for row in range(len(self._ids)):
            yield self._record(row, vectors=vectors)

    def _record(self, row: int, *, vectors: bool = True) -> Record:
        if vectors:
            lo = int(self._starts[row])
            matrix = self._tokens.lifted(lo, lo + int(self._lengths[row]))
        else:
            matrix = np.empty((0, self._dim or 0), dtype=np.float32)
        metadata = copy_metadata(self._metadata[row])
        return Record(self._ids[row], matrix, metadata, self._texts[row], self._parents[row])

    # -- writes ---------------------------------------------------------------------------------------
    def add(self, records: Sequence[Record]) -> None:
        """Add new records; an id or item that exists raises :class:`DuplicateIdError` and adds nothing."""
        self._write(records, upsert=False)

    def upsert(self, records: Sequence[Record]) -> None:
        """Add records, replacing in the same step every stored record of the items they belong to.

        An item is a record's ``parent_id`` (the chunks of a split item) or its own id. A record whose id
        belongs to another stored item (say ``"doc#0"``, a chunk of ``"doc"``) is a
        :class:`DuplicateIdError`: an upsert never replaces what it was not asked to.
        """
        self._write(records, upsert=True)

    def _write(self, records: Sequence[Record], *, upsert: bool) -> None:
        with self._lock:
            matrices, metadatas = check_records(records, self._dim)
            keys = {r.id for r in records} | {r.item_id for r in records}
            stored = {i: self._parents[self._row[i]] for i in keys if i in self._row}
            stored.update((c, p) for p in keys for c in self._children.get(p, ()))
            gone = plan_write(records, stored, upsert=upsert)
            if gone:
                self._remove(gone)
            self._append(records, matrices, metadatas)

    def delete(self, ids: Sequence[str]) -> None:
        """Delete records or whole items by id; an unknown id raises :class:`UnknownIdError` and deletes nothing."""
        with self._lock:
            self._remove(self._expand(self._known(ids)))

    def get(self, ids: Sequence[str]) -> list[Record]:
        """Records by id, in the order asked (an item id gives its chunks); an unknown id raises
        :class:`UnknownIdError`."""
        with self._lock:
            return [self._record(self._row[i]) for i in self._expand(self._known(ids), unique=False)]

    def _expand(self, ids: Sequence[str], *, unique: bool = True) -> list[str]:
        """Record ids for ids of records or items (an item's chunks in their order)."""
        out: list[str] = []
        for id_ in ids:
            out.extend(self._children.get(id_, [id_]))
        return list(dict.fromkeys(out)) if unique else out

    def _known(self, ids: Sequence[str]) -> list[str]:
        ids = check_ids(ids)
        missing = [i for i in ids if i not in self]
        if missing:
            msg = f"unknown ids: {missing[:10]}"
            raise UnknownIdError(msg)
        return ids

    def _append(self, records: Sequence[Record], matrices: list[FloatMatrix], metadatas: list[dict[str, Any]]) -> None:
        new = np.concatenate(matrices)
        if self._dim is None:
            self._dim = new.shape[1]
            self._tokens = self._new_tokens(self._dim)
        first = self._n_tokens
        self._tokens.append(new)
        needed = len(self._tokens)
        lengths = np.array([len(m) for m in matrices], dtype=np.int64)
        self._starts = np.concatenate([self._starts, self._n_tokens + np.cumsum(lengths) - lengths])
        self._lengths = np.concatenate([self._lengths, lengths])
        self._n_tokens = needed
        for record, metadata in zip(records, metadatas, strict=True):
            self._row[record.id] = len(self._ids)
            self._ids.append(record.id)
            self._metadata.append(metadata)
            self._texts.append(record.text)
            self._parents.append(record.parent_id)
            if record.parent_id is not None:
                self._children.setdefault(record.parent_id, []).append(record.id)
        if self._ivf is not None:
            codes = self._tokens.codes
            if codes is not None and self._tokens.codec is not None and self._tokens.codec.centroids is not None:
                self._ivf.extend(codes[first:needed].astype(np.int32))  # the codec's ids are the index's
            else:
                self._ivf.append(self._tokens[first:needed])
        config = self.codec_config
        if self._tokens.codec is None and config.needs_training and self._n_tokens >= config.train_tokens:
            self._train_codec()

    def _train_codec(self) -> None:
        """Train the codec on (a sample of) the stored tokens and re-encode them all (under the store's lock)."""
        config, n = self.codec_config, self._n_tokens
        rng = np.random.default_rng(config.seed)
        rows = np.sort(rng.choice(n, min(n, config.training_rows), replace=False))
        sample = self._tokens.lift(self._tokens[rows])
        logger.info("training the %s codec on %d of %d tokens", config.kind, len(rows), n)
        codec = train_codec(config, sample, n_tokens=n)
        with progress_bar(n, desc=f"coding tokens ({config.kind})", unit="token", late=True) as bar:
            self._tokens = self._tokens.encoded(codec, progress=bar.update)
        self._ivf = self._codec_ivf()
        self._generation += 1

    def _codec_ivf(self) -> CentroidIndex | None:
        """A residual codec's centroids and codes are an approximate-search index as they are."""
        codec, codes = self._tokens.codec, self._tokens.codes
        if codec is None or codec.centroids is None or codes is None:
            return None
        return CentroidIndex(codec.centroids, codes.astype(np.int32))

    def _remove(self, ids: Sequence[str]) -> None:
        drop = np.zeros(len(self._ids), dtype=bool)
        drop[[self._row[i] for i in ids]] = True
        keep_tokens = np.repeat(~drop, self._lengths)
        self._tokens.keep(keep_tokens)
        self._n_tokens = len(self._tokens)
        self._lengths = self._lengths[~drop]
        self._starts = np.cumsum(self._lengths) - self._lengths
        keep_rows = np.flatnonzero(~drop)
        self._ids = [self._ids[r] for r in keep_rows]
        self._metadata = [self._metadata[r] for r in keep_rows]
        self._texts = [self._texts[r] for r in keep_rows]
        self._parents = [self._parents[r] for r in keep_rows]
        self._row = {id_: row for row, id_ in enumerate(self._ids)}
        self._children = _children_of(self._ids, self._parents)
        if self._ivf is not None:
            if self._n_tokens:
                self._ivf.keep(keep_tokens)
            else:
                self._ivf = None
        self._removals += 1

    # -- search ---------------------------------------------------------------------------------------
    @property
    def index_status(self) -> str:
        """``"ready"`` when approximate search has its centroid index, ``"building"`` while one is being
        fitted in the background (``AUTO`` mode searches exactly meanwhile), else ``"none"``."""
        with self._lock:
            if self._ivf is not None:
                return "ready"
            return "building" if self._builder is not None and self._builder.is_alive() else "none"

    def build_index(self, config: ApproximateConfig | None = None) -> None:
        """(Re)fit the centroid index of approximate search now, and wait for it.

        ``config`` also becomes the store's default ``n_probe`` / ``n_candidates``. Searches and writes go
        on while the index is fitted; tokens added meanwhile are assigned to the new centroids before it is
        installed. Call it again after the corpus has changed a lot, so the centroids follow the data.

        A store whose codec keeps centroid ids (``residual``, ``rotated``, ``pq``, or a float codec with
        ``codes=True``) uses the codec's centroids as its index, fitted when the codec was trained: they are
        not refitted here, since the original vectors are gone and re-training on decoded ones would
        quantise them twice. Re-add the documents from their vectors (a new store) to re-train it.
        """
        with self._lock:
            if config is not None:
                self.approximate = config
        self._build(refit=True)

    def wait_for_index(self, timeout: float | None = None) -> bool:
        """Wait for a background index build (started by an ``AUTO`` search); True when the index is ready."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
        return self.index_status == "ready"

    def _build(self, *, refit: bool) -> None:
        with self._build_lock:
            with self._lock:
                if self._ivf is not None and not refit:
                    return
                if not self._n_tokens:
                    msg = "cannot build an index over an empty store"
                    raise InvalidInputError(msg)
                codec = self._tokens.codec
                if codec is not None and codec.centroids is not None:  # residuals: the codec is the index
                    self._ivf = self._codec_ivf()  # not re-trained: that would re-quantise decoded vectors
                    return
                vectors, n, removals = self._tokens.snapshot(), self._n_tokens, self._removals
                generation, config, n_docs = self._generation, self.approximate, len(self._ids)
            fitted = CentroidIndex.fit(vectors, config, n_docs=n_docs)  # type: ignore[arg-type]  # unlocked
            codes = fitted.codes
            for _ in range(4):
                with self._lock:
                    if self._generation != generation:  # the codec was trained meanwhile: this fit is moot
                        return
                    if self._removals == removals:  # at most appends since: code just those, here
                        if not self._n_tokens:
                            self._ivf = None
                            return
                        if self._n_tokens > n:
                            codes = np.concatenate([codes, fitted.assign(self._tokens[n : self._n_tokens])])
                        self._ivf = CentroidIndex(fitted.centroids, codes)
                        return
                    vectors, n, removals = self._tokens.snapshot(), self._n_tokens, self._removals
                codes = fitted.assign(vectors)  # type: ignore[arg-type]  # tokens were deleted: re-code, unlocked
            with self._lock:  # deletes kept coming: finish under the lock
                if self._generation == generation:
                    n = self._n_tokens
                    self._ivf = CentroidIndex(fitted.centroids, fitted.assign(self._tokens[:n])) if n else None

    def _build_in_background(self) -> None:
        def run() -> None:
            try:
                self._build(refit=False)
            except Exception:  # searches stay exact; the next AUTO search tries again
                logger.exception("building the approximate-search index failed")

        if self._builder is None or not self._builder.is_alive():
            self._builder = threading.Thread(target=run, name="ragplug-index-build", daemon=True)
            self._builder.start()

    def _resolve_mode(self, mode: SearchMode | str | None) -> SearchMode:
        """The mode a search runs in. ``AUTO`` past ``approximate_min_tokens`` is approximate once the index
        is ready; until then it searches exactly and has the index built in the background."""
        chosen = _search_mode(mode) if mode is not None else self.mode
        if chosen is SearchMode.AUTO:
            if self._n_tokens < self.approximate_min_tokens:
                return SearchMode.EXACT
            if self._ivf is None:
                self._build_in_background()
                return SearchMode.EXACT
            return SearchMode.APPROXIMATE
        return chosen

    def search(
        self,
        query: FloatMatrix,
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[Hit]:
        """The ``k`` best records for ``query`` by MaxSim, best first, among those matching ``filter``."""
        return self.search_batch([query], k=k, filter=filter, options=options)[0]

    def search_batch(
        self,
        queries: Sequence[FloatMatrix],
        *,
        k: int = 10,
        filter: FilterNode | Filter | None = None,
        options: SearchOptions | None = None,
    ) -> list[list[Hit]]:
        """One result list per query (the filter is evaluated once for all of them).

        Approximate search re-scores ``n_candidates`` documents exactly (default: the store's setting, at
        least ``4 * k``; a value given in ``options`` is used as is and must be at least ``k``). A store that
        decodes what it scores (a compressed codec) ranks the candidates by centroid interaction (MaxSim over
        their tokens' centroids, from the codes alone) and decodes only the ``n_rescore`` best (default: the
        store's setting, half of the candidates; see :meth:`.ApproximateConfig.rescore_for`). Scoring runs
        on a snapshot of the store, outside its lock: concurrent searches run in parallel, and writes wait
        only for the snapshot to be taken.
        """
        k = check_k(k)
        node = parse_filter(filter)
        options = _options(options)
        if options.n_candidates is not None and options.n_candidates < k:
            msg = f"n_candidates ({options.n_candidates}) must be at least k ({k})"
            raise InvalidInputError(msg)
        if isinstance(queries, np.ndarray) and queries.ndim == 2:
            msg = "search_batch takes a list of query matrices; use search for one"
            raise InvalidInputError(msg)
        with self._lock:
            if not self._ids:
                return [[] for _ in queries]
            matrices = [as_matrix(q, self._dim, f"query {i}") for i, q in enumerate(queries)]
            chosen = self._resolve_mode(options.mode)
            missing = chosen is SearchMode.APPROXIMATE and self._ivf is None
        if missing:
            self._build(refit=False)  # the first approximate search fits the index (not under the store lock)
        with self._lock:  # a consistent snapshot: writers replace these arrays and lists, or append past them
            n = len(self._ids)
            ids, metadata, texts, parents = self._ids, self._metadata, self._texts, self._parents
            tokens, starts, lengths = self._tokens.snapshot(), self._starts, self._lengths
            frozen = self._ivf.frozen(lengths) if chosen is SearchMode.APPROXIMATE and self._ivf else None
            settings = self.approximate
        if not n:
            return [[] for _ in queries]
        allowed = None
        if node is not None:
            predicate = to_predicate(node)
            allowed = np.fromiter((predicate(metadata[i]) for i in range(n)), dtype=bool, count=n)
            if not allowed.any():
                names = fields_of(node)
                kinds: dict[str, set[str]] = {}
                for m in metadata:
                    for name in names:
                        if name in m:
                            kinds.setdefault(name, set()).add(json_kind(m[name]))
                explain_empty(node, kinds)
                return [[] for _ in queries]
        vectors = tokens.raw if tokens.raw is not None else tokens  # decoded on the fly when compressed
        n_probe, n_cand = settings.effective(
            n, len(tokens), k, n_probe=options.n_probe, n_candidates=options.n_candidates
        )  # adapted to the corpus (short documents, many documents) unless given for this search
        n_cand = min(n_cand, n if allowed is None else int(allowed.sum()))
        # a compressed store decodes what it re-scores: rank the candidates by centroid interaction first
        n_rescore = (
            n_cand if tokens.raw is not None else min(n_cand, options.n_rescore or settings.rescore_for(n_cand, k))
        )
        results, codec = [], tokens.codec
        for query in (tokens.prepare_query(m) for m in matrices):
            if frozen is not None:
                if codec is not None and codec.centroids is frozen.centroids:  # the codec's: one product shared
                    sims = np.ascontiguousarray(codec.centroid_sims(query).T)
                else:
                    sims = query @ frozen.centroids.T
                approx = frozen.approximate_scores(query, n_probe, sims)
                if allowed is not None:
                    approx[~allowed] = -np.inf
                candidates = np.argpartition(-approx, n_cand - 1)[:n_cand]
                if n_rescore < n_cand:
                    interaction = frozen.centroid_interaction(sims, starts, lengths, candidates)
                    candidates = candidates[np.argpartition(-interaction, n_rescore - 1)[:n_rescore]]
                top = top_k_exact(query, vectors, starts, lengths, k, candidates=candidates)
            elif allowed is not None and allowed.mean() < 0.5:
                top = top_k_exact(query, vectors, starts, lengths, k, candidates=np.flatnonzero(allowed))
            else:
                top = top_k_exact(query, vectors, starts, lengths, k, mask=allowed)
            if tokens.kept is not None and top:  # the final top k re-ranked by exact MaxSim over kept vectors
                top = top_k_exact(query, tokens.kept, starts, lengths, k, candidates=np.array([d for d, _ in top]))
            results.append([Hit(ids[d], s, copy_metadata(metadata[d]), texts[d], parents[d]) for d, s in top])
        return results

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the store to the folder ``path`` atomically, in the format of :mod:`.folder`.

        Saves from other threads or processes to the same folder wait for each other; a reader loading it
        meanwhile gets the old or the new state. A failed save (disk full, say) raises
        :class:`~ragplug.errors.StoreError` and leaves the previous state as it was.
        """
        with self._save_lock:
            with self._lock:  # a snapshot; the files are written without holding the store's lock
                if self._dim is None:
                    msg = "cannot save an empty store that has no dimension yet"
                    raise InvalidInputError(msg)
                config = self.codec_config
                if self._n_tokens and self._tokens.codec is None and config.needs_training and config.train_on_save:
                    self._train_codec()  # saved with its codec (unless it keeps raw vectors until train_tokens)
                codec = self._tokens.codec
                tensors: dict[str, dict[str, np.ndarray[Any, Any]]] = {
                    "vectors": {**self._tokens.columns(), "starts": self._starts, "lengths": self._lengths}
                }
                if codec is not None and codec.arrays():
                    tensors["codec"] = codec.arrays()
                if self._ivf is not None and (codec is None or codec.centroids is None):
                    tensors["ivf"] = {"centroids": self._ivf.centroids, "codes": self._ivf.codes}
                records = {
                    "ids": list(self._ids),
                    "metadata": list(self._metadata),
                    "texts": list(self._texts),
                    "parents": list(self._parents),
                }
                header = {
                    "format": FORMAT_NAME,
                    "format_version": FORMAT_VERSION,
                    "dim": self._dim,
                    "encoder": self._encoder.to_dict() if self._encoder else None,
                    "n_records": len(self._ids),
                    "n_tokens": self._n_tokens,
                    "mode": self.mode.value,
                    "approximate": dataclasses.asdict(self.approximate),
                    "approximate_min_tokens": self.approximate_min_tokens,
                    "codec_config": self.codec_config.to_dict(),
                    "codec": codec.to_dict() if codec is not None else None,
                }
            write_folder(path, header, tensors=tensors, documents={"records": records})

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, encoder: EncoderIdentity | None = None, verify: bool = False
    ) -> InMemoryMultiVectorStore:
        """Load a store saved by :meth:`save`; with ``encoder``, refuse one written by another encoder.

        The token columns are memory-mapped, not read. Their checksum is verified at the first load of
        each file and the result recorded beside it (see :func:`.folder.read_folder`); ``verify=True``
        hashes them again at this load.
        """
        folder = Path(path)
        manifest, data = read_folder(folder, mapped={"vectors"}, reverify=verify)
        header = _Header.parse(folder, manifest)
        if encoder is not None:
            if header.encoder is None:
                msg = f"{folder} does not record which encoder wrote it; cannot check it against {encoder.name!r}"
                raise EncoderMismatchError(msg)
            check_encoder(header.encoder, encoder, str(folder))
        if set(data) - {"ivf", "codec"} != {"vectors", "records"}:
            msg = f"{folder}: the manifest names data files {sorted(data)}, expected vectors, records (codec, ivf)"
            raise StoreCorruptedError(msg)
        codec = None
        if header.codec is not None:
            arrays = safetensors_views(data["codec"]) if "codec" in data else {}
            codec = Codec.restore(header.codec, arrays, str(folder))
            if codec.input_dim != header.dim:
                msg = f"{folder}: the codec takes {codec.input_dim}-dim vectors, the store holds {header.dim}-dim"
                raise StoreCorruptedError(msg)
        tokens: TokenMatrix | None = TokenMatrix(header.dim, codec)
        try:
            tensors = safetensors_views(data["vectors"])
            records = json.loads(data["records"].tobytes().decode("utf-8"))
            ivf = safetensors_views(data["ivf"]) if "ivf" in data else None
            starts, lengths = tensors.pop("starts"), tensors.pop("lengths")
            fits = tokens is not None and tokens.columns_fit(tensors)
            tokens = TokenMatrix.from_columns(header.dim, codec, tensors) if fits else None
            ids, metadata, texts = records["ids"], records["metadata"], records["texts"]
            # stores saved before parents were recorded kept them only in the chunks' metadata
            parents = records.get("parents") or [_parent_in(m) for m in metadata]
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError, RecursionError) as err:
            msg = f"{folder}: cannot read the store's data files: {err}"
            raise StoreCorruptedError(msg) from err
        ids_set = set(ids) if isinstance(ids, list) and all(isinstance(i, str) for i in ids) else set()
        consistent = (
            tokens is not None
            and tokens.codes_valid()
            and starts.ndim == lengths.ndim == 1
            and isinstance(ids, list)
            and isinstance(metadata, list)
            and isinstance(texts, list)
            and len(starts) == len(lengths) == len(ids) == len(metadata) == len(texts) == header.n_records
            and int(lengths.sum()) == len(tokens) == header.n_tokens
            and bool((lengths > 0).all())
            and bool((starts == np.cumsum(lengths) - lengths).all())
            and all(isinstance(i, str) and i for i in ids)
            and len(set(ids)) == len(ids)
            and all(isinstance(m, dict) for m in metadata)
            and all(t is None or isinstance(t, str) for t in texts)
            and isinstance(parents, list)
            and len(parents) == len(ids)
            and all(p is None or (isinstance(p, str) and p and p not in ids_set) for p in parents)
        )
        if not consistent or tokens is None:
            msg = f"{folder}: the store's data files are inconsistent with each other or with the manifest"
            raise StoreCorruptedError(msg)
        store = cls(
            header.dim,
            encoder=header.encoder,
            mode=header.mode,
            approximate=header.approximate,
            approximate_min_tokens=header.approximate_min_tokens,
            codec=header.codec_config,
        )
        store._tokens = tokens
        store._n_tokens = len(tokens)
        store._starts = starts.astype(np.int64)
        store._lengths = lengths.astype(np.int64)
        store._ids = list(ids)
        store._row = {id_: row for row, id_ in enumerate(ids)}
        store._metadata = list(metadata)
        store._texts = list(texts)
        store._parents = list(parents)
        store._children = _children_of(store._ids, store._parents)
        store._ivf = store._codec_ivf()
        if store._ivf is None and ivf is not None and _valid_ivf(ivf, len(tokens), tokens.dim):
            store._ivf = CentroidIndex(ivf["centroids"], ivf["codes"])
        return store

    @classmethod
    def from_columns(
        cls,
        codec: Codec,
        columns: dict[str, np.ndarray[Any, Any]],
        lengths: Sequence[int] | np.ndarray[Any, Any],
        ids: Sequence[str],
        *,
        metadata: Sequence[dict[str, Any]] | None = None,
        texts: Sequence[str | None] | None = None,
        parents: Sequence[str | None] | None = None,
        encoder: EncoderIdentity | None = None,
        **options: Any,
    ) -> InMemoryMultiVectorStore:
        """A store over tokens already encoded with the trained ``codec`` (an imported index): ``columns`` as
        :meth:`.Codec.encode` makes them, each record's ``lengths`` tokens contiguous, in the order of ``ids``.
        Nothing is re-encoded; later writes encode with the same codec. ``options`` are the constructor's
        (``mode``, ``approximate``...). Input that does not fit raises :class:`InvalidInputError`."""
        ids = check_ids(ids)
        n = len(ids)
        metas = list(metadata) if metadata is not None else [{}] * n
        texts = list(texts) if texts is not None else [None] * n
        parents = list(parents) if parents is not None else [None] * n
        lengths = np.asarray(lengths, dtype=np.int64)
        tokens = TokenMatrix.from_columns(codec.input_dim, codec, columns)
        ids_set = set(ids)
        if not (
            lengths.ndim == 1
            and len(metas) == len(texts) == len(parents) == len(lengths) == n
            and tokens.columns_fit(columns)
            and tokens.codes_valid()
            and bool((lengths > 0).all())
            and int(lengths.sum()) == len(tokens)
            and all(p is None or (isinstance(p, str) and p and p not in ids_set) for p in parents)
        ):
            shapes = {k: (v.dtype.name, v.shape) for k, v in columns.items()}
            msg = (
                f"columns, lengths, ids, metadata, texts and parents do not fit together or the codec: {n} ids, "
                f"{len(metas)} metadata, {len(texts)} texts, {len(parents)} parents, lengths of shape {lengths.shape} "
                f"summing to {int(lengths.sum())}, columns {shapes}; lengths must be > 0 and parents not record ids"
            )
            raise InvalidInputError(msg)
        metas = [check_metadata(m, f"metadata of {i!r}") for i, m in zip(ids, metas, strict=True)]
        for text, id_ in zip(texts, ids, strict=True):
            if text is not None:
                check_text(text, f"text of {id_!r}")
        store = cls(codec.input_dim, encoder=encoder, codec=codec.config, **options)
        store._tokens, store._n_tokens = tokens, len(tokens)
        store._lengths = lengths
        store._starts = np.cumsum(lengths) - lengths
        store._ids, store._metadata, store._texts, store._parents = ids, metas, texts, parents
        store._row = {id_: row for row, id_ in enumerate(ids)}
        store._children = _children_of(ids, parents)
        store._ivf = store._codec_ivf()
        return store


def _parent_in(metadata: Any) -> str | None:
    parent = metadata.get("parent_id") if isinstance(metadata, dict) else None
    return parent if isinstance(parent, str) and parent else None


def _valid_ivf(ivf: dict[str, np.ndarray[Any, Any]], n_tokens: int, dim: int) -> bool:
    """A saved centroid index is used only when it fits the vectors (else it is refitted when needed)."""
    centroids, codes = ivf.get("centroids"), ivf.get("codes")
    return (
        centroids is not None
        and codes is not None
        and centroids.ndim == 2
        and centroids.shape[1] == dim
        and len(centroids) > 0
        and codes.ndim == 1
        and len(codes) == n_tokens
        and codes.dtype.kind in "iu"
        and (n_tokens == 0 or (int(codes.min()) >= 0 and int(codes.max()) < len(centroids)))
    )


@dataclasses.dataclass(frozen=True)
class _Header:
    """The store's own fields of a manifest, each checked: a bad value is corruption, named in the error."""

    dim: int
    n_records: int
    n_tokens: int
    encoder: EncoderIdentity | None
    mode: SearchMode
    approximate: ApproximateConfig
    approximate_min_tokens: int
    codec_config: CodecConfig
    codec: dict[str, Any] | None

    @classmethod
    def parse(cls, folder: Path, manifest: dict[str, Any]) -> _Header:
        where = folder / MANIFEST
        if manifest.get("format") != FORMAT_NAME:
            msg = f"{folder} is not a ragplug multi-vector store (format {manifest.get('format')!r})"
            raise StoreCorruptedError(msg)
        if manifest.get("format_version") not in _READABLE_VERSIONS:
            msg = (
                f"{folder} was written in format version {manifest.get('format_version')!r}; "
                f"this ragplug reads versions {list(_READABLE_VERSIONS)}"
            )
            raise StoreCorruptedError(msg)

        def integer(name: str, low: int, default: int | None = None) -> int:
            value = manifest.get(name, default)
            if type(value) is not int or value < low:
                msg = f"{where}: {name!r} must be an integer >= {low}, got {value!r}"
                raise StoreCorruptedError(msg)
            return value

        def parsed(name: str, make: Callable[[Any], Any], default: Any = None) -> Any:
            value = manifest.get(name, default)
            try:
                return make(value)
            except (TypeError, ValueError, KeyError, AttributeError) as err:
                msg = f"{where}: {name!r} is invalid ({value!r}): {err}"
                raise StoreCorruptedError(msg) from err

        dim = integer("dim", 1)
        encoder = parsed("encoder", lambda v: None if v is None else EncoderIdentity.from_dict(v))
        if encoder is not None and encoder.dim != dim:
            msg = f"{where}: the encoder's dimension {encoder.dim} disagrees with the store's {dim}"
            raise StoreCorruptedError(msg)
        return cls(
            dim=dim,
            n_records=integer("n_records", 0),
            n_tokens=integer("n_tokens", 0),
            encoder=encoder,
            mode=parsed("mode", SearchMode, SearchMode.AUTO.value),
            approximate=parsed("approximate", lambda v: ApproximateConfig(**v), {}),
            approximate_min_tokens=integer("approximate_min_tokens", 0, 200_000),
            codec_config=parsed("codec_config", lambda v: CodecConfig.from_dict(v or {}), None),
            codec=parsed("codec", _codec_header, None),
        )


def _codec_header(value: Any) -> dict[str, Any] | None:
    if value is not None and not isinstance(value, dict):
        msg = "must be an object or null"
        raise TypeError(msg)
    return value
