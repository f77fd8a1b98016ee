"""A Postgres collection's codec: how its rows keep token matrices, and the centroid first stage.

A collection is created with a :class:`~ragplug.retrievers.late_interaction.codecs.CodecConfig`. Until the
codec is trained its rows keep fp16 token matrices (``tokens``) and are searched through the summary
vector's HNSW index. Training (automatic once the collection holds ``train_tokens`` tokens, or by
:meth:`PgVectorStore.train_codec`) fits the codec on a sample of the stored tokens, saves its arrays in
the collection's row (safetensors bytes, never pickles), re-encodes every row in the same transaction,
and from then on every write is encoded on the way in:

- ``float16`` / ``float32`` codecs (with or without a projection) keep the prepared vectors in ``tokens``;
- the ``residual`` codec keeps each token's centroid id in ``codes`` (little-endian uint16 or int32) and its
  packed residual bits in ``tokens``, plus a ``bag``: a ``sparsevec`` over the centroids marking those the
  record's tokens fall in (the default is 8-bit residuals: a byte per dimension); a float codec with
  ``codes=True`` keeps its vectors in ``tokens`` and the same ``codes`` and ``bag``.

Search over a collection with codes (PLAID's pipeline, with pgvector as its first stage):

1. candidates: an HNSW index over the bags, queried with a sparse vector weighting, for each query token,
   its ``n_probe`` nearest centroids by their similarity above the weakest of them (one inner product per
   record, ``benchmarks/first_stage_recall.py``);
2. centroid interaction: for each candidate, MaxSim of the query against its tokens' centroids (from
   ``codes`` alone, fetched with the candidates), keeping the ``n_rescore`` best;
3. exact MaxSim over those records' decoded tokens (a second round trip fetches their vectors or residuals).

Measured in numpy on the 100k-document haystack of ``benchmarks/pgvector_scale.py`` (8,192 centroids, 50
queries, ``benchmarks/codes_pipeline_recall.py``): stages 1-2 keep 0.958 of exact MaxSim's top 10 with
1,000 candidates and 400 re-scored; scoring those with float32 vectors keeps that 0.958, with residuals
(Lloyd-Max buckets) 8-bit 0.956, 4-bit 0.932, 2-bit 0.882 (near ties swap under the coarser ones). Hence the
default: 8-bit residuals, as precise as fp16 for ranking at half its bytes (a quarter of float32's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug.errors import InvalidInputError, StoreCorruptedError, StoreError
from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig
from ragplug.retrievers.late_interaction.ivf import centroid_maxsim
from ragplug.retrievers.late_interaction.tokens import TokenMatrix
from ragplug.retrievers.late_interaction.twostage import pack

__all__ = [
    "BAG_DIM",
    "Coded",
    "centroid_interaction",
    "codec_arrays_blob",
    "decode_row",
    "encode_rows",
    "restore_codec",
    "scoring_rows",
]

FloatMatrix = npt.NDArray[np.float32]

#: The dimension every bag of centroids is declared with, whatever the codec's number of centroids: the bag
#: index's expression (``bag::sparsevec(BAG_DIM)``) then accepts every row version, including those a
#: re-training transaction has just replaced, which an index built in that transaction still reads.
BAG_DIM = 1 << 20


@dataclass(frozen=True)
class Coded:
    """One record's columns as stored: ``tokens`` bytes, ``codes`` bytes (residual codec) and ``bag``."""

    tokens: bytes
    codes: bytes | None
    bag: Any  # pgvector SparseVector or None


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
        return [Coded(np.ascontiguousarray(m, dtype="<f2").tobytes(), None, None) for m in matrices]
    if codec.centroids is None:
        dtype = "<f2" if codec.config.kind == "float16" else "<f4"
        return [Coded(np.ascontiguousarray(codec.prepare(m), dtype=dtype).tobytes(), None, None) for m in matrices]
    if len(codec.centroids) > BAG_DIM:
        msg = f"a Postgres collection takes at most {BAG_DIM} centroids, got {len(codec.centroids)}"
        raise InvalidInputError(msg)
    SparseVector = _sparse_vector()
    lengths = [len(m) for m in matrices]
    columns = codec.encode(codec.prepare(np.concatenate(matrices)))
    codes = columns["codes"].astype(_code_dtype(codec))
    if codec.config.compressed:
        payload = columns["residuals"]
    else:
        payload = columns["vectors"].astype("<f2" if codec.config.kind == "float16" else "<f4")
    out = []
    lo = 0
    for n in lengths:
        mine = codes[lo : lo + n]
        present = np.unique(mine).astype(np.int64)
        bag = SparseVector(dict.fromkeys(present.tolist(), 1.0), BAG_DIM)
        out.append(Coded(payload[lo : lo + n].tobytes(), mine.tobytes(), bag))
        lo += n
    return out


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


def query_bag(codec: Codec, query: FloatMatrix, n_probe: int) -> tuple[Any, FloatMatrix]:
    """The sparse query of the first stage, and the query's similarity to every centroid."""
    assert codec.centroids is not None
    sims = (query @ codec.centroids.T).astype(np.float32)
    n_probe = min(n_probe, sims.shape[1])
    probe = np.argpartition(-sims, n_probe - 1, axis=1)[:, :n_probe]
    probed = np.take_along_axis(sims, probe, axis=1)
    weights = np.zeros(sims.shape[1], dtype=np.float64)
    np.add.at(weights, probe.ravel(), (probed - probed.min(axis=1, keepdims=True)).ravel())
    nonzero = np.flatnonzero(weights > 0)
    if not len(nonzero):  # one probe per token: every weight is zero; fall back to the probed centroids
        nonzero = np.unique(probe)
        weights[nonzero] = 1.0
    bag = _sparse_vector()(dict(zip(nonzero.tolist(), weights[nonzero].tolist(), strict=True)), BAG_DIM)
    return bag, sims


def centroid_interaction(sims: FloatMatrix, codes: Sequence[bytes], codec: Codec) -> FloatMatrix:
    """MaxSim of the query against each record's token centroids (``sims``: query x centroids)."""
    dtype = _code_dtype(codec)
    arrays = [np.frombuffer(c, dtype=dtype) for c in codes]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    starts = np.cumsum(lengths) - lengths
    return centroid_maxsim(sims, np.concatenate(arrays), starts, lengths, np.arange(len(arrays)))


def _sparse_vector() -> Any:
    from pgvector import SparseVector

    return SparseVector


def default_codec() -> CodecConfig:
    """What a new collection keeps: 8-bit residuals from centroids (see the module docstring)."""
    return CodecConfig(kind="residual", nbits=8)
