"""A Postgres collection's codec: how its rows keep token matrices, and the centroid first stage.

A collection is created with a :class:`~ragplug.retrievers.late_interaction.codecs.CodecConfig`. Until the
codec is trained its rows keep fp16 token matrices (``tokens``) and are searched through the summary
vector's HNSW index. Training (automatic once the collection holds ``train_tokens`` tokens, or by
:meth:`PgVectorStore.train_codec`) fits the codec on a sample of the stored tokens, saves its arrays in
the collection's row (safetensors bytes, never pickles), re-encodes every row in the same transaction,
and from then on every write is encoded on the way in:

- ``float16`` / ``float32`` codecs (with or without a projection) keep the prepared vectors in ``tokens``;
- the ``residual`` and ``rotated`` codecs keep each token's centroid id in ``codes`` (little-endian uint16
  or int32) and its packed residual bits in ``tokens`` (the default is 8-bit residuals: a byte per
  dimension); a float codec with ``codes=True`` keeps its vectors in ``tokens`` and the same ``codes``;
- a collection with codes keeps inverted lists in ``ragplug_postings``: per centroid, the ``seq`` of each
  record with a token under it (:func:`postings_parts`). A write appends one part per centroid it touches,
  in its own transaction; a centroid whose parts pile up is merged by the next writer that gets the
  collection's merge lock (:data:`MAX_PARTS`), dropping records deleted meanwhile. Training and
  ``compact()`` rebuild them whole.

Search over a collection with codes (PLAID's pipeline, with the inverted lists in Postgres):

1. candidates: each query token probes its ``n_probe`` nearest centroids; one query fetches their lists,
   and every listed record gets, per query token, the best similarity among the probed centroids it has a
   token under (the weakest probed similarity when it has none: XTR's imputation), summed over query
   tokens (:func:`postings_scores`, as :meth:`.FrozenIndex.approximate_scores` does in memory);
2. centroid interaction: for the ``n_candidates`` best, MaxSim of the query against all their tokens'
   centroids (from ``codes`` alone), keeping the ``n_rescore`` best;
3. exact MaxSim over those records' decoded tokens (a third round trip fetches their vectors or residuals).

Every fetch is in binary format: bytea arrives as bytes rather than hex text to decode (in a one-off
prototype on the haystack below, fetching 400 records' 8-bit residuals took about half the time). On the
100k-document haystack of ``benchmarks/pgvector_scale.py`` (16,384 centroids, 8-bit residuals, 300
queries; committed results) the defaults (8 probes, 1,000 candidates, 200 re-scored) keep 0.959 of exact
MaxSim's top 10 at a p50 of 37-48 ms (two timings; the machine's speed varied by a fifth); 300 re-scored
keep 0.963, a few ms slower. The version 2 first stage (an HNSW index over a sparse bag of centroids per
record) kept 0.932 at 73 ms: a bag's single inner product sums the similarities of every probed centroid
a record has, where MaxSim takes the best one per query token. 8-bit residuals score as fp16 does at half
its bytes (``benchmarks/codes_pipeline_recall.py``: 0.956 against float32's 0.958 on the same candidates;
4-bit 0.932, 2-bit 0.882).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug.errors import StoreCorruptedError, StoreError
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig
from ragplug.retrievers.late_interaction.ivf import centroid_maxsim
from ragplug.retrievers.late_interaction.tokens import TokenMatrix
from ragplug.retrievers.late_interaction.twostage import pack

__all__ = [
    "MAX_PARTS",
    "Coded",
    "Probe",
    "centroid_interaction",
    "codec_arrays_blob",
    "decode_row",
    "encode_rows",
    "merge_parts",
    "postings_parts",
    "postings_scores",
    "probe",
    "restore_codec",
    "scoring_rows",
]

FloatMatrix = npt.NDArray[np.float32]

#: A centroid's postings are merged into one part once it has more than this many (each write appends one).
MAX_PARTS = 8


@dataclass(frozen=True)
class Coded:
    """One record's columns as stored: ``tokens`` bytes and ``codes`` bytes (a codec with centroids)."""

    tokens: bytes
    codes: bytes | None


def codec_arrays_blob(codec: Codec) -> bytes:
    """A trained codec's arrays as safetensors bytes."""
    from safetensors.numpy import save

    return save({name: np.ascontiguousarray(a, dtype=np.float32) for name, a in codec.arrays().items()})


def restore_codec(header: Any, blob: bytes | None, where: str) -> Codec:
    """The codec saved in a collection row (``header`` JSON and ``blob`` from :func:`codec_arrays_blob`)."""
    from safetensors.numpy import load

    try:
        arrays = load(bytes(blob)) if blob else {}
    except Exception as err:  # safetensors raises its own SafetensorError for damaged bytes
        msg = f"{where}: the saved codec arrays are damaged: {err}"
        raise StoreCorruptedError(msg) from err
    return Codec.restore(header, arrays, where)


def _code_dtype(codec: Codec) -> np.dtype[Any]:
    return np.dtype(codec.code_dtype).newbyteorder("<")


def encode_rows(codec: Codec | None, matrices: Sequence[FloatMatrix]) -> list[Coded]:
    """Each encoder-space matrix as stored columns: fp16 without a trained codec, else the codec's."""
    if codec is None:
        return [Coded(np.ascontiguousarray(m, dtype="<f2").tobytes(), None) for m in matrices]
    if codec.centroids is None:
        dtype = "<f2" if codec.config.kind == "float16" else "<f4"
        return [Coded(np.ascontiguousarray(codec.prepare(m), dtype=dtype).tobytes(), None) for m in matrices]
    lengths = [len(m) for m in matrices]
    columns = codec.encode(codec.prepare(np.concatenate(matrices)))
    codes = columns["codes"].astype(_code_dtype(codec))
    if codec.config.compressed:
        payload = columns["residuals"]
    else:
        payload = columns["vectors"].astype("<f2" if codec.config.kind == "float16" else "<f4")
    bounds = np.cumsum(lengths)[:-1]
    return [
        Coded(p.tobytes(), c.tobytes()) for p, c in zip(np.split(payload, bounds), np.split(codes, bounds), strict=True)
    ]


def decode_row(codec: Codec | None, n_tokens: int, tokens: bytes, codes: bytes | None, dim: int) -> FloatMatrix:
    """A stored row's token matrix in the codec's space (what scoring reads); ``dim`` is the collection's."""
    if codec is None or not codec.config.compressed:
        dtype = "<f4" if codec is not None and codec.config.kind == "float32" else "<f2"
        width = codec.dim if codec is not None else dim
        matrix = np.frombuffer(tokens, dtype=dtype)
        if matrix.size != n_tokens * width:
            msg = f"a stored token matrix holds {matrix.size} values, not {n_tokens} x {width}"
            raise StoreError(msg)
        return matrix.reshape(n_tokens, width).astype(np.float32)
    return codec.decode(_coded_columns(codec, n_tokens, tokens, codes))


def _coded_columns(codec: Codec, n_tokens: int, tokens: bytes, codes: bytes | None) -> dict[str, np.ndarray[Any, Any]]:
    """A stored row of a compressed collection as codec columns (``codes``, ``residuals``), checked."""
    if codes is None:
        msg = "a row of a residual collection has no codes"
        raise StoreError(msg)
    code_array = np.frombuffer(codes, dtype=_code_dtype(codec))
    width = codec.residual_bytes
    packed = np.frombuffer(tokens, dtype=np.uint8)
    if len(code_array) != n_tokens or packed.size != n_tokens * width:
        msg = f"a stored residual row does not hold {n_tokens} tokens"
        raise StoreError(msg)
    return {"codes": code_array, "residuals": packed.reshape(n_tokens, width)}


def scoring_rows(
    codec: Codec | None, rows: Sequence[tuple[int, bytes, bytes | None]], dim: int
) -> tuple[FloatMatrix | TokenMatrix, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Stored rows (``n_tokens``, ``tokens``, ``codes``) as one packed matrix for exact MaxSim: float32
    vectors, or, under a compressed codec, the concatenated codes and residuals, which the scorer decodes
    block by block (:meth:`.Codec.similarities`) without a normalised float32 copy of every token."""
    if codec is None or not codec.config.compressed:
        return pack([decode_row(codec, n, tokens, codes, dim) for n, tokens, codes in rows])
    parts = [_coded_columns(codec, n, tokens, codes) for n, tokens, codes in rows]
    columns = {name: np.concatenate([part[name] for part in parts]) for name in ("codes", "residuals")}
    lengths = np.array([n for n, _, _ in rows], dtype=np.int64)
    matrix = TokenMatrix.from_columns(codec.input_dim, codec, columns)
    return matrix, np.cumsum(lengths) - lengths, lengths


@dataclass(frozen=True)
class Probe:
    """A query's first stage: its similarity to every centroid (``sims``, query x centroids), the
    ``n_probe`` nearest centroids of each query token (``centroids``) and their similarities (``sims_of``)."""

    sims: FloatMatrix
    centroids: npt.NDArray[np.int64]
    sims_of: FloatMatrix

    @property
    def wanted(self) -> list[int]:
        """The centroids whose postings the search reads."""
        return [int(c) for c in np.unique(self.centroids)]


def probe(codec: Codec, query: FloatMatrix, n_probe: int) -> Probe:
    """Probe ``n_probe`` centroids per token of ``query`` (in the codec's space)."""
    assert codec.centroids is not None
    sims = (query @ codec.centroids.T).astype(np.float32)
    n_probe = min(n_probe, sims.shape[1])
    nearest = np.argpartition(-sims, n_probe - 1, axis=1)[:, :n_probe].astype(np.int64)
    return Probe(sims, nearest, np.take_along_axis(sims, nearest, axis=1))


def postings_scores(
    found: Probe, lists: Sequence[tuple[int, bytes]]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The records listed under the probed centroids (their ``seq``, ascending) and their approximate
    MaxSim: per query token the best probed similarity among the centroids each record has a token under,
    or the weakest probed similarity when it has none there; summed over query tokens. ``lists`` are the
    fetched ``(centroid, seqs)`` parts (several parts of one centroid, or a seq listed twice, count once)."""
    if not lists:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64)
    lists = sorted(lists, key=lambda part: part[0])  # the parts of one centroid side by side
    arrays = [_seqs(blob) for _, blob in lists]
    cand, members = np.unique(np.concatenate(arrays), return_inverse=True)
    by_centroid = np.repeat(np.array([c for c, _ in lists], dtype=np.int64), [len(a) for a in arrays])
    cuts = np.searchsorted(by_centroid, found.centroids, side="left")
    ends = np.searchsorted(by_centroid, found.centroids, side="right")
    floor = found.sims_of.min(axis=1)
    total = np.full(len(cand), float(floor.sum()), dtype=np.float64)
    best = np.zeros(len(cand), dtype=np.float32)
    for q in range(len(found.centroids)):
        lens = ends[q] - cuts[q]
        if not lens.any():
            continue
        local = np.cumsum(lens) - lens
        rows = np.repeat(cuts[q] - local, lens) + np.arange(int(lens.sum()))
        docs = members[rows]
        np.maximum.at(best, docs, np.repeat(found.sims_of[q] - floor[q], lens))
        total[docs] += best[docs]  # repeated indices add once: the buffered semantics of fancy +=
        best[docs] = 0.0
    return cand, total


def _seqs(blob: bytes) -> npt.NDArray[np.int64]:
    if len(blob) % 8:
        msg = "a postings part is not a whole number of int64 seqs"
        raise StoreCorruptedError(msg)
    return np.frombuffer(blob, dtype="<i8").astype(np.int64)


def postings_parts(seqs: Sequence[int], codes: Sequence[bytes], codec: Codec) -> list[tuple[int, bytes]]:
    """The inverted lists of records (their ``seq`` and stored ``codes``): ``(centroid, seqs bytes)``, one
    part per centroid any of them has a token under."""
    dtype = _code_dtype(codec)
    arrays = [np.unique(np.frombuffer(c, dtype=dtype)).astype(np.int64) for c in codes]
    if not arrays:
        return []
    owners = np.repeat(np.asarray(seqs, dtype=np.int64), [len(a) for a in arrays])
    return _group(np.concatenate(arrays), owners)


def merge_parts(
    parts: Sequence[tuple[int, bytes]], live: npt.NDArray[np.int64] | None = None
) -> list[tuple[int, bytes]]:
    """Parts merged into one per centroid; with ``live``, only the seqs in it are kept."""
    if not parts:
        return []
    arrays = [_seqs(blob) for _, blob in parts]
    centroids = np.repeat(np.array([c for c, _ in parts], dtype=np.int64), [len(a) for a in arrays])
    seqs = np.concatenate(arrays)
    if live is not None:
        keep = np.isin(seqs, live)
        centroids, seqs = centroids[keep], seqs[keep]
    return _group(centroids, seqs)


def _group(centroids: npt.NDArray[np.int64], seqs: npt.NDArray[np.int64]) -> list[tuple[int, bytes]]:
    """``(centroid, ascending unique seqs as <i8 bytes)`` per distinct centroid."""
    if not len(seqs):
        return []
    order = np.lexsort((seqs, centroids))
    centroids, seqs = centroids[order], seqs[order]
    fresh = np.ones(len(seqs), dtype=bool)
    fresh[1:] = (centroids[1:] != centroids[:-1]) | (seqs[1:] != seqs[:-1])
    centroids, seqs = centroids[fresh], seqs[fresh]
    bounds = np.flatnonzero(np.diff(centroids)) + 1
    return [
        (int(c[0]), s.astype("<i8").tobytes())
        for c, s in zip(np.split(centroids, bounds), np.split(seqs, bounds), strict=True)
    ]


def centroid_interaction(sims: FloatMatrix, codes: Sequence[bytes], codec: Codec) -> FloatMatrix:
    """MaxSim of the query against each record's token centroids (``sims``: query x centroids)."""
    dtype = _code_dtype(codec)
    arrays = [np.frombuffer(c, dtype=dtype) for c in codes]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return centroid_maxsim(sims, np.concatenate(arrays), starts, lengths, np.arange(len(arrays)))


def default_codec() -> CodecConfig:
    """What a new collection keeps: 8-bit residuals from centroids (see the module docstring)."""
    return CodecConfig(kind="residual", nbits=8)
