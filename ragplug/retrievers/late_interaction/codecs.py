"""Token codecs: how a store keeps its token vectors, from float32 down to a few bits per dimension.

A store receives float32 token matrices from its encoder. A :class:`Codec` decides what it keeps:

- ``float32``: the vectors as they are (4 bytes per dimension);
- ``float16``: half precision (2 bytes per dimension), decoded exactly back to float32 for scoring;
- ``residual``: PLAID's compression. Each token keeps the id of its nearest centroid (spherical
  k-means, :func:`~.ivf.spherical_kmeans`) and its residual from that centroid, bucketised per
  dimension into ``2 ** nbits`` buckets (``nbits`` in 1, 2, 4, 8): the buckets are fitted to the training
  residuals by Lloyd-Max (colbert-ai uses quantiles and medians; see :func:`_buckets`). A decoded token is
  ``centroid + bucket values``, re-normalised. The residual bits are laid out as colbert-ai lays them
  (per dimension, bit ``b`` of the bucket index; the flat bit string packed big-endian), so PLAID indexes
  decode with the same code.
  8 bits is ragplug's own step beyond PLAID's 1, 2 and 4: a byte per dimension, 256 buckets,
  close to lossless for ranking at a quarter of float32's bytes (an eighth of them at half the dims).
- ``rotated``: ragplug's own residual code at a fixed byte budget per token (``token_bytes``, centroid id
  included; by default ``dim * nbits / 8``, 96 B at 384 dims and 2 bits: 1/16 of float32). Residuals are
  not spread evenly over dimensions: on SciFact's MiniLM tokens the variance of the first principal
  direction of the residuals is 17x the median one. The codec rotates every vector (documents and
  queries, so scores are unchanged) into the principal basis of the training residuals and gives each
  dimension 0, 1, 2, 4 or 8 bits, whichever minimises the total squared error within the budget (a
  Lagrangian allocation over the errors measured per dimension and width, :func:`_allocate`), with
  Lloyd-Max buckets of one shape per width scaled to each dimension. On all of SciFact (300 queries,
  ``benchmarks/results/codecs_rotated``) exact MaxSim over the decoded vectors keeps recall@10 0.946 of
  float32's at 95 B/token (2-bit ``residual``: 0.932 at 98 B), 0.910 at 63 B and 0.987 at 192 B (4-bit
  ``residual``: 0.985 at 194 B). Dimensions of one width are stored together, so every byte holds whole
  dimensions of one width and decodes by a table look-up; three groups make decoding about 1.4x slower
  than 2-bit ``residual`` codes (approximate search p50 127 against 88 ms on SciFact).

- ``pq``: the same rotation and budget, with the residual coded by product quantisation: the rotated
  dimensions, in variance order, cut into consecutive groups of about equal bits under reverse
  water-filling (:func:`_pq_groups`, at most 16 dimensions per group), one byte per group naming the
  nearest of 256 codewords fitted by k-means on the training residuals (256 per codeword, faiss's cap), and
  one byte naming the decoded vector's norm (256 levels, even in log-norm). With the norm stored, a query is scored
  against tokens without decoding them: its similarity to every codeword is tabulated once, and a token's
  score is its centroid's similarity plus one table entry per group, over the norm (asymmetric distance
  computation, summed by torch's ``embedding_bag`` where torch is installed; decoding otherwise). Codecs
  saved before the norm byte (no norm buckets) are read and decoded as they were. Codewords follow the joint shape
  of a group's values, where buckets see one dimension at a time: on all of SciFact
  (``benchmarks/results/residual_pq.md``, 300 queries) exact MaxSim over the decoded vectors keeps
  recall@10 0.956 of float32's at 96 B/token (``rotated``: 0.946 at 95 B) and nDCG@10 within 0.004 of it,
  with 25% less squared error (that study coded every group, with no norm byte). In a memory store at
  95 B with 4,096 centroids (``benchmarks/results/codecs_default``, one run) approximate search keeps
  recall@10 0.943 and nDCG@10 0.7173 (float32 exact: 0.7249) in 32 ms p50 against float32's 33 ms, where
  decoding made it 87 against 31 ms (``codecs_pq``); with 8,192 centroids (the store's default codec,
  :func:`default_codec`; ``codecs_pq_8192c``) 0.955 and 0.7214 in 22 ms against 25. Groups of one width
  are stored together and decode by one table look-up per width. SciFact's store builds in 143 s with
  4,096 centroids, 284 s with 8,192 (float32: 69-78 s).

``float16`` and ``float32`` may also keep each token's centroid id (``codes=True``): the vectors stay as
precise as they are, and the ids serve candidate generation (a store's approximate index, the Postgres inverted lists
of centroids) as a residual codec's do.

Any kind may first project the vectors to fewer dimensions (``dim``): an orthonormal map fitted by PCA
on the training tokens (``projection="pca"``) or drawn at random (``"random"``), applied to documents and
queries alike and re-normalised. The map has orthonormal columns, so :meth:`Codec.lift` maps stored
vectors back into the encoder's space (``x @ P.T``) and projecting a lifted vector again gives it back:
records copied between stores with the same codec keep their exact vectors.

A codec with a projection or centroids must be trained on token vectors first (:meth:`Codec.train`);
float32 and float16 without a projection need none. The codec's settings and trained arrays are saved
with the store and are part of its compatibility check.

numpy only: 1-D Lloyd-Max, packing and table look-ups; k-means is the engine's own (:mod:`.ivf`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ragplug._extras import is_available
from ragplug._progress import progress_bar
from ragplug._threads import torch_threads
from ragplug.errors import InvalidInputError, StoreCorruptedError
from ragplug.retrievers.late_interaction.ivf import ApproximateConfig, assign_codes, normalise, spherical_kmeans

__all__ = [
    "KINDS",
    "NBITS",
    "Codec",
    "CodecConfig",
    "Columns",
    "Progress",
    "codec_config",
    "default_codec",
    "train_codec",
]

FloatMatrix = npt.NDArray[np.float32]
Columns = dict[str, np.ndarray[Any, Any]]
"""A codec's per-token arrays, each with one row per token (``vectors``; or ``codes`` and ``residuals``)."""

KINDS = ("float32", "float16", "residual", "rotated", "pq")
#: The kinds with a byte budget per token (``token_bytes``) and the residuals' principal basis.
ROTATING = ("rotated", "pq")
#: At most this many dimensions share one codeword of a ``pq`` codec.
PQ_MAX_WIDTH = 16
#: Training residuals a ``pq`` codec fits its codewords and norm levels on: 256 per codeword, faiss's default
#: cap (``max_points_per_centroid``) for k-means.
PQ_TRAINING_ROWS = 256 * 256
NBITS = (1, 2, 4, 8)
#: Bits a ``rotated`` codec may give one dimension (widths that divide a byte, so no dimension straddles two).
WIDTHS = (8, 4, 2, 1, 0)
PROJECTIONS = ("pca", "random")


@dataclass(frozen=True)
class CodecConfig:
    """What a store keeps per token; see the module docstring. Checked at construction."""

    kind: str = field(default="float32", metadata={"help": "float32, float16, residual, rotated or pq"})
    nbits: int = field(
        default=2, metadata={"help": "residual bits per dimension: 1, 2, 4 or 8 (rotated: on average, by default)"}
    )
    dim: int | None = field(default=None, metadata={"help": "project to this many dimensions first (None: keep)"})
    projection: str = field(default="pca", metadata={"help": "pca (fitted) or random (orthonormal, seeded)"})
    codes: bool = field(
        default=False, metadata={"help": "float kinds: also keep each token's centroid id (always, for residual)"}
    )
    n_centroids: int | None = field(
        default=None,
        metadata={"help": "centroids; None: a power of two near 4*sqrt(n_tokens), times centroid_scale"},
    )
    centroid_scale: int = field(
        default=1, metadata={"help": "a power of two: the default centroid count is multiplied by it"}
    )
    train_tokens: int = field(
        default=16384, metadata={"help": "a store trains the codec once it holds this many tokens (or on save)"}
    )
    kmeans_iterations: int = 8
    kmeans_sample: int = 131072
    seed: int = 0
    token_bytes: int | None = field(
        default=None,
        metadata={"help": "rotated, pq: bytes per token, centroid id included; None: dim * nbits / 8"},
    )
    keep_float32: bool = field(
        default=False,
        metadata={
            "help": "compressed kinds, memory stores: also keep every token's float32 vector (memory-mapped once "
            "saved) and re-rank the final top k by exact MaxSim over them"
        },
    )
    train_on_save: bool = field(
        default=True,
        metadata={
            "help": "a store saved before it holds train_tokens tokens trains the codec on what it has (True) or "
            "keeps its vectors as they came until it does (False)"
        },
    )

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            msg = f"unknown codec kind {self.kind!r}; one of {list(KINDS)}"
            raise InvalidInputError(msg)
        if self.nbits not in NBITS or type(self.nbits) is not int:
            msg = f"nbits must be one of {list(NBITS)}, got {self.nbits!r}"
            raise InvalidInputError(msg)
        if self.projection not in PROJECTIONS:
            msg = f"unknown projection {self.projection!r}; one of {list(PROJECTIONS)}"
            raise InvalidInputError(msg)
        for name in ("dim", "n_centroids", "token_bytes"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                msg = f"CodecConfig.{name} must be a positive integer or None, got {value!r}"
                raise InvalidInputError(msg)
        if (
            type(self.centroid_scale) is not int
            or self.centroid_scale < 1
            or self.centroid_scale & (self.centroid_scale - 1)
        ):
            msg = f"CodecConfig.centroid_scale must be a power of two, got {self.centroid_scale!r}"
            raise InvalidInputError(msg)
        for name in ("train_tokens", "kmeans_iterations", "kmeans_sample"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                msg = f"CodecConfig.{name} must be a positive integer, got {value!r}"
                raise InvalidInputError(msg)
        if type(self.seed) is not int:
            msg = f"CodecConfig.seed must be an integer, got {self.seed!r}"
            raise InvalidInputError(msg)
        for name in ("codes", "train_on_save", "keep_float32"):
            if not isinstance(getattr(self, name), bool):
                msg = f"CodecConfig.{name} must be a bool, got {getattr(self, name)!r}"
                raise InvalidInputError(msg)
        if self.keep_float32 and not self.compressed:
            msg = f"CodecConfig.keep_float32 applies to compressed codecs (residual, rotated, pq), not {self.kind!r}"
            raise InvalidInputError(msg)
        if self.token_bytes is not None and self.kind not in ROTATING:
            msg = f"CodecConfig.token_bytes applies to the rotated and pq codecs, not {self.kind!r}"
            raise InvalidInputError(msg)

    @property
    def has_codes(self) -> bool:
        """True when tokens keep their centroid ids (residual, or a float kind with ``codes=True``)."""
        return self.compressed or self.codes

    def budget(self, dim: int) -> int:
        """Bytes per token a ``rotated`` codec may use at ``dim`` dimensions: ``token_bytes`` or ``dim * nbits / 8``."""
        return self.token_bytes if self.token_bytes is not None else dim * self.nbits // 8

    @property
    def training_rows(self) -> int:
        """Tokens a store samples to train this codec: ``kmeans_sample`` (k-means runs on that many), and four
        times as many for ``rotated`` (its rotation and per-dimension scales; its pooled bucket shapes use at
        most ``_POOLED_VALUES`` values). The factor was chosen while buckets were still fitted per dimension,
        where 50k-500k SciFact tokens gave recall@10 against float32 from 0.908 to 0.975 on 100 queries; with
        pooled shapes its benefit was not measured apart (the committed benchmark ran with it)."""
        return 4 * self.kmeans_sample if self.kind in ROTATING else self.kmeans_sample

    @property
    def compressed(self) -> bool:
        """True for the kinds that keep a centroid id and coded residuals (``residual``, ``rotated``, ``pq``)."""
        return self.kind in ("residual", *ROTATING)

    @property
    def needs_training(self) -> bool:
        return self.has_codes or self.dim is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodecConfig:
        return cls(**dict(data))


#: Tokens a store holds before the default codec compresses them (as many as make ``AUTO`` search approximate:
#: smaller stores are searched exactly, from float32 vectors).
DEFAULT_TRAIN_TOKENS = 200_000


def default_codec(dim: int | None = None) -> CodecConfig:
    """The memory store's codec when none is given: ``pq`` at 1/16 of float32's bytes per token with the
    store's per-document offsets counted (``dim / 4 - 1`` bytes: 95 at 384 dims, 31 at 128), trained once the
    store holds :data:`DEFAULT_TRAIN_TOKENS` tokens; a smaller store keeps float32 vectors, also when saved.
    Its centroids are twice the engine's default count (8,192 for SciFact's 1.7M tokens), fitted on twice
    the sample: finer centroids leave smaller residuals, and on all of SciFact (one run,
    ``benchmarks/results/codecs_pq_8192c``) approximate search keeps recall@10 0.955 of exact float32 MaxSim
    and nDCG@10 0.7214 (float32 exact: 0.7249) in 22 ms p50 against float32's 25 (24.8 against 27.4 as
    shipped, ``codecs_default_shared``), where 4,096 centroids kept 0.943 and 0.7173 (``codecs_default``).
    ``dim`` None: the budget is settled when the store learns its dimension.

    >>> default_codec(384).token_bytes, default_codec(128).token_bytes, default_codec(16).token_bytes
    (95, 31, 4)
    """
    token_bytes = None if dim is None else max(dim // 4 - 1, 3 + -(-dim // PQ_MAX_WIDTH))
    return CodecConfig(
        kind="pq",
        token_bytes=token_bytes,
        centroid_scale=2,
        kmeans_sample=2 * CodecConfig.kmeans_sample,
        train_tokens=DEFAULT_TRAIN_TOKENS,
        train_on_save=False,
    )


def codec_config(spec: CodecConfig | str | None) -> CodecConfig:
    """A :class:`CodecConfig` from a config or a short name: ``"float32"``, ``"float16"``,
    ``"residual"`` (2 bits), ``"residual-1bit"``, ``"residual-4bit"``, ``"residual-8bit"``, and
    ``"rotated"`` (2 bits on average) or ``"rotated-1bit"`` ... ``"rotated-8bit"``, and ``"pq"`` likewise."""
    if spec is None:
        return CodecConfig()
    if isinstance(spec, CodecConfig):
        return spec
    if isinstance(spec, str):
        name, _, bits = spec.partition("-")
        if name in ("residual", *ROTATING) and bits:
            if bits not in ("1bit", "2bit", "4bit", "8bit"):
                msg = f"unknown codec {spec!r}; {name}-1bit, {name}-2bit, {name}-4bit or {name}-8bit"
                raise InvalidInputError(msg)
            return CodecConfig(kind=name, nbits=int(bits[0]))
        if not bits:
            return CodecConfig(kind=name)
    msg = (
        "codec must be a CodecConfig or one of float32, float16, residual[-Nbit], rotated[-Nbit], pq[-Nbit], "
        f"got {spec!r}"
    )
    raise InvalidInputError(msg)


#: ``progress(done, total)``: training steps done so far and steps known so far (the total grows when a
#: step's work is only known once earlier steps are done: a ``pq`` codec's groups of dimensions).
Progress = Callable[[int, int], object]


class _Steps:
    """Counts training steps for a :data:`Progress` callback (``None``: for nobody)."""

    __slots__ = ("done", "report", "total")

    def __init__(self, report: Progress | None, total: int) -> None:
        self.report, self.done, self.total = report, 0, int(total)

    def grow(self, n: int) -> None:
        self.total += n
        self.step(0)

    def step(self, n: int = 1) -> None:
        self.done += n
        if self.report is not None:
            self.report(self.done, self.total)


def train_codec(config: CodecConfig, vectors: FloatMatrix, *, n_tokens: int | None = None) -> Codec:
    """:meth:`Codec.train` with a bar on standard error that appears once training has run
    :data:`~ragplug._progress.LATE_BAR_SECONDS` (a store training its codec inside an ``add``: the default
    codec on the first 200,000 SciFact tokens took 53 s to train and 6 s to code them, on 2 cores)."""
    with progress_bar(0, desc=f"training the {config.kind} codec", unit="step", late=True) as bar:

        def report(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return Codec.train(config, vectors, n_tokens=n_tokens, progress=report)


class Codec:
    """A codec with its trained arrays (projection, centroids, bucket cutoffs and values, widths).

    >>> import numpy as np
    >>> x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)
    >>> codec = Codec.train(CodecConfig(kind="residual", nbits=2), x)
    >>> columns = codec.encode(codec.prepare(x))
    >>> sorted(columns), columns["residuals"].shape, codec.bytes_per_token
    (['codes', 'residuals'], (2000, 16), 18)
    >>> rotated = Codec.train(CodecConfig(kind="rotated", token_bytes=18), x)
    >>> rotated.bytes_per_token <= 18, rotated.encode(rotated.prepare(x))["residuals"].shape[1] <= 16
    (True, True)

    A ``rotated`` codec keeps ``cutoffs`` and ``weights`` per dimension (rows of 255 and 256 values, the
    first ``2 ** width - 1`` and ``2 ** width`` used) and ``widths``: the bits of every dimension, in
    storage order (widths 8, 4, 2, 1, then 0, each group a whole number of bytes). A ``pq`` codec keeps
    ``codebooks`` (one byte per group of dimensions: 256 codewords each, zero-padded to the widest group)
    and ``widths``: the dimensions of every group, in storage order (narrowest first, covering every
    dimension once), and ``cutoffs`` and ``weights`` for its norm byte (255 cutoffs, 256 levels; a ``pq``
    codec saved before the norm byte has neither).
    """

    def __init__(
        self,
        config: CodecConfig,
        input_dim: int,
        *,
        projection: FloatMatrix | None = None,
        centroids: FloatMatrix | None = None,
        cutoffs: FloatMatrix | None = None,
        weights: FloatMatrix | None = None,
        widths: FloatMatrix | None = None,
        codebooks: FloatMatrix | None = None,
    ) -> None:
        self.config = config
        self.input_dim = input_dim
        self.projection = projection
        self.centroids = centroids
        self.cutoffs = cutoffs
        self.weights = weights
        self.widths = None if widths is None else np.asarray(widths)
        self.codebooks = codebooks
        self.dim = projection.shape[1] if projection is not None else input_dim
        self._check()
        self._table: FloatMatrix | None = None
        self._groups: list[_Group] = []
        self._silent_values = np.empty(0, dtype=np.float32)  # rotated: the dimensions without bits, stored last
        self._books: list[_Books] = []
        if config.kind == "residual":
            assert weights is not None
            self._table = _lookup_table(weights, config.nbits)
            self._table_items = self._table.view(np.dtype((np.void, self._table.shape[1] * 4))).reshape(256)
        elif config.kind == "rotated":
            assert self.widths is not None and weights is not None
            self._groups = _groups(self.widths.astype(np.int64), weights)
            self._silent_values = weights[int(np.count_nonzero(self.widths)) :, 0].copy()
        elif config.kind == "pq":
            assert self.widths is not None and codebooks is not None
            self._books = _books(self.widths.astype(np.int64), codebooks)
            self._offsets = (np.arange(len(self.widths)) * 256).astype(np.int32)
        self._last_query: tuple[FloatMatrix, FloatMatrix] | None = None  # pq: a query and its centroid sims

    def _check(self) -> None:
        """Refuse arrays that do not fit the config (a corrupted or foreign saved codec)."""
        c = self.config
        problems = []
        if c.dim is not None and (self.projection is None or self.projection.shape != (self.input_dim, c.dim)):
            problems.append(f"a projection of shape ({self.input_dim}, {c.dim})")
        if c.kind in ROTATING and (
            self.projection is None or self.projection.shape != (self.input_dim, c.dim or self.input_dim)
        ):
            problems.append(f"a rotation of shape ({self.input_dim}, {c.dim or self.input_dim})")
        elif c.dim is None and c.kind not in ROTATING and self.projection is not None:
            problems.append("no projection")
        if c.has_codes:
            if self.centroids is None or self.centroids.ndim != 2 or self.centroids.shape[1] != self.dim:
                problems.append(f"centroids of width {self.dim}")
            elif len(self.centroids) > np.iinfo(np.int32).max or len(self.centroids) < 1:
                problems.append("between 1 and 2**31 centroids")
        elif self.centroids is not None:
            problems.append("no centroids")
        if c.kind == "residual":
            n_buckets = 2**c.nbits
            if self.cutoffs is None or self.cutoffs.shape != (n_buckets - 1,):
                problems.append(f"{n_buckets - 1} bucket cutoffs")
            if self.weights is None or self.weights.shape != (n_buckets,):
                problems.append(f"{n_buckets} bucket values")
            if (self.dim * c.nbits) % 8:
                problems.append(f"dim * nbits divisible by 8 (dim {self.dim}, nbits {c.nbits})")
        elif c.kind == "rotated":
            problems.extend(self._check_rotated())
        elif c.kind == "pq":
            problems.extend(self._check_pq())
        elif self.widths is not None:
            problems.append("no widths")
        if c.kind != "pq" and self.codebooks is not None:
            problems.append("no codebooks")
        named = (self.projection, self.centroids, self.cutoffs, self.weights, self.codebooks)
        arrays = [a for a in named if a is not None]
        if any(not np.isfinite(a).all() for a in arrays):
            problems.append("finite values")
        if problems:
            msg = f"codec {c.kind!r} needs " + ", ".join(problems)
            raise InvalidInputError(msg)

    def _check_rotated(self) -> list[str]:
        if self.cutoffs is None or self.cutoffs.shape != (self.dim, 255):
            return [f"bucket cutoffs of shape ({self.dim}, 255)"]
        if self.weights is None or self.weights.shape != (self.dim, 256):
            return [f"bucket values of shape ({self.dim}, 256)"]
        widths = self.widths
        if widths is None or widths.shape != (self.dim,) or not np.isin(widths, WIDTHS).all():
            return [f"{self.dim} widths, each one of {list(WIDTHS)}"]
        widths = widths.astype(np.int64)
        if (np.diff(widths) > 0).any():
            return ["widths in storage order (largest first)"]
        ragged = [w for w in WIDTHS[:-1] if (int((widths == w).sum()) * w) % 8]
        if ragged:
            return [f"whole bytes of {ragged[0]}-bit dimensions"]
        code = 2 if self.centroids is None or len(self.centroids) <= 1 << 16 else 4
        budget = self.config.budget(self.dim)
        if code + int(widths.sum()) // 8 > budget:
            return [f"at most {budget} bytes per token"]
        return []

    def _check_pq(self) -> list[str]:
        widths = self.widths
        if widths is None or widths.ndim != 1 or not len(widths):
            return ["group widths"]
        if not np.isin(widths, np.arange(1, PQ_MAX_WIDTH + 1)).all():
            return [f"group widths from 1 to {PQ_MAX_WIDTH}"]
        widths = widths.astype(np.int64)
        if (np.diff(widths) < 0).any() or int(widths.sum()) != self.dim:
            return [f"group widths in storage order (narrowest first) covering the {self.dim} dimensions"]
        shape = (len(widths), 256, int(widths.max()))
        if self.codebooks is None or self.codebooks.shape != shape:
            return [f"codebooks of shape {shape}"]
        if (self.cutoffs is None) != (self.weights is None):
            return ["norm buckets (cutoffs and values) or neither"]
        if self.cutoffs is not None and self.weights is not None:
            if self.cutoffs.shape != (255,) or self.weights.shape != (256,):
                return ["255 norm cutoffs and 256 norm values"]
            if not (self.weights > 0).all() or (np.diff(self.cutoffs) < 0).any():
                return ["positive norm values and increasing cutoffs"]
        code = 2 if self.centroids is None or len(self.centroids) <= 1 << 16 else 4
        budget = self.config.budget(self.dim)
        if code + self.residual_bytes > budget:
            return [f"at most {budget} bytes per token"]
        return []

    # -- training -------------------------------------------------------------------------------------
    @classmethod
    def untrained(cls, config: CodecConfig, input_dim: int) -> Codec:
        """A codec that needs no training (float32/float16 without projection)."""
        if config.needs_training:
            msg = f"codec {config.kind!r} (dim {config.dim}) must be trained on token vectors first"
            raise InvalidInputError(msg)
        return cls(config, input_dim)

    @classmethod
    def train(
        cls, config: CodecConfig, vectors: FloatMatrix, *, n_tokens: int | None = None, progress: Progress | None = None
    ) -> Codec:
        """Fit the projection and the residual centroids and buckets on ``vectors`` (float32 tokens, or a
        sample of ``n_tokens``: the corpus size sets the default number of centroids). ``progress`` is told
        the steps done and the steps known after each step (see :data:`Progress`)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or not len(vectors):
            msg = "a codec trains on a non-empty (n_tokens, dim) matrix"
            raise InvalidInputError(msg)
        input_dim = vectors.shape[1]
        steps = _Steps(
            progress,
            (config.dim is not None) + (config.kmeans_iterations + config.compressed if config.has_codes else 0),
        )
        rng = np.random.default_rng(config.seed)
        sample = vectors
        if len(sample) > config.kmeans_sample:
            sample = vectors[np.sort(rng.choice(len(vectors), config.kmeans_sample, replace=False))]
        projection = None
        if config.dim is not None:
            if config.dim > input_dim:
                msg = f"cannot project {input_dim}-dim vectors up to {config.dim} dims"
                raise InvalidInputError(msg)
            projection = _fit_projection(sample, config.dim, config.projection, rng)
            steps.step()
        if not config.has_codes:
            return cls(config, input_dim, projection=projection)
        points = normalise(sample @ projection) if projection is not None else normalise(sample)
        n_tokens = n_tokens or len(vectors)
        n_centroids = config.n_centroids or min(
            n_tokens, config.centroid_scale * ApproximateConfig().centroids_for(n_tokens)
        )
        centroids = spherical_kmeans(
            points,
            n_centroids,
            iterations=config.kmeans_iterations,
            sample=config.kmeans_sample,
            seed=config.seed,
            on_iteration=steps.step,
        )
        if not config.compressed:
            return cls(config, input_dim, projection=projection, centroids=centroids)
        if config.kind in ROTATING:  # coded on every row given (k-means saw a sample of them)
            every = normalise(vectors @ projection) if projection is not None else normalise(vectors)
            residuals = every - centroids[assign_codes(every, centroids)]
            if config.kind == "rotated":
                codec = cls._train_rotated(config, input_dim, projection, centroids, residuals)
            else:
                codec = cls._train_pq(config, input_dim, projection, centroids, residuals, steps)
                codec = codec._with_norms(vectors, rng)
        else:
            residuals = points - centroids[assign_codes(points, centroids)]
            cutoffs, weights = _buckets(residuals, 2**config.nbits)
            codec = cls(config, input_dim, projection=projection, centroids=centroids, cutoffs=cutoffs, weights=weights)
        steps.step()  # the residual code (buckets, widths, or a pq codec's norm levels)
        return codec

    @classmethod
    def _train_rotated(
        cls,
        config: CodecConfig,
        input_dim: int,
        projection: FloatMatrix | None,
        centroids: FloatMatrix,
        residuals: FloatMatrix,
    ) -> Codec:
        """The principal basis of the residuals, each dimension's buckets at every width, and the widths
        that minimise the squared error within the byte budget (see the module docstring)."""
        dim = centroids.shape[1]
        code_bytes, budget = _budget(config, centroids)
        basis = _principal_basis(residuals)
        rotated = residuals @ basis
        # One bucket shape per width, fitted on every dimension's values standardised and pooled, scaled back
        # per dimension: Lloyd-Max fitted per dimension follows the few extreme values of each, and recall@10
        # against float32 on 100 SciFact queries varied from 0.908 to 0.975 with the training sample (pooled
        # shapes: 0.933 to 0.967).
        centre, scale = rotated.mean(axis=0), rotated.std(axis=0)
        scale[scale < 1e-12] = 1e-12
        rows = np.arange(0, len(rotated), max(1, len(rotated) * dim // _POOLED_VALUES))
        pooled = _Sorted((rotated[rows] - centre) / scale)
        shapes = {w: _lloyd(pooled, 2**w) for w in WIDTHS if w}
        errors = scale[:, None].astype(np.float64) ** 2 * np.array([shapes[w][2] if w else 1.0 for w in WIDTHS])
        fitted = {
            w: [(centre[d] + scale[d] * cut, centre[d] + scale[d] * val) for d in range(dim)]
            for w, (cut, val, _) in shapes.items()
        }
        widths = _allocate(errors, 8 * (budget - code_bytes))
        order = np.lexsort((np.arange(dim), -widths))  # storage order: widest first, then by variance
        widths = widths[order]
        cutoffs = np.zeros((dim, 255), dtype=np.float32)
        weights = np.zeros((dim, 256), dtype=np.float32)
        for i, d in enumerate(order):
            w = int(widths[i])
            if w:
                cutoffs[i, : 2**w - 1], weights[i, : 2**w] = fitted[w][d]
            else:
                weights[i, 0] = centre[d]
        rotation = basis[:, order]
        full = rotation if projection is None else projection @ rotation
        return cls(
            config,
            input_dim,
            projection=np.ascontiguousarray(full, dtype=np.float32),
            centroids=np.ascontiguousarray(centroids @ rotation, dtype=np.float32),
            cutoffs=cutoffs,
            weights=weights,
            widths=widths.astype(np.float32),
        )

    @classmethod
    def _train_pq(
        cls,
        config: CodecConfig,
        input_dim: int,
        projection: FloatMatrix | None,
        centroids: FloatMatrix,
        residuals: FloatMatrix,
        steps: _Steps,
    ) -> Codec:
        """The principal basis of the residuals, cut into groups of about equal bits under reverse
        water-filling, one byte per group, and 256 codewords per group fitted by k-means (see
        ``benchmarks/residual_pq.py``: at 96 B/token on SciFact, 25% less squared error than ``rotated``)."""
        code_bytes, budget = _budget(config, centroids)
        basis = _principal_basis(residuals)
        rng = np.random.default_rng(config.seed)
        rows = np.sort(rng.choice(len(residuals), min(len(residuals), PQ_TRAINING_ROWS), replace=False))
        rotated = residuals[rows] @ basis
        groups = _pq_groups(rotated.var(axis=0).astype(np.float64), budget - code_bytes - 1)  # 1: the norm
        groups.sort(key=len)  # storage order: narrowest first (stable: by variance within a width)
        order = np.concatenate(groups)
        widths = np.array([len(g) for g in groups])
        codebooks = np.zeros((len(groups), 256, int(widths.max())), dtype=np.float32)
        steps.grow(len(groups))  # the codewords of each group
        for i, group in enumerate(groups):
            codebooks[i, :, : len(group)] = _codewords(np.ascontiguousarray(rotated[:, group]), rng)
            steps.step()
        rotation = basis[:, order]
        full = rotation if projection is None else projection @ rotation
        return cls(
            config,
            input_dim,
            projection=np.ascontiguousarray(full, dtype=np.float32),
            centroids=np.ascontiguousarray(centroids @ rotation, dtype=np.float32),
            widths=widths.astype(np.float32),
            codebooks=codebooks,
        )

    def _with_norms(self, vectors: FloatMatrix, rng: np.random.Generator) -> Codec:
        """This ``pq`` codec with norm levels: 256 levels evenly spaced in log-norm over the range of the norms
        of decoded (centroid plus codewords) training tokens, widened by half of it on each side. A token then
        keeps one byte naming its decoded vector's norm (within half a step: twice the training range over
        255, in log-norm), and is scored without decoding it (:meth:`similarities`). Even spacing bounds every
        token's error, where Lloyd-Max levels left the rare tail norms of the tests' clustered vectors 1% off."""
        rows = np.sort(rng.choice(len(vectors), min(len(vectors), PQ_TRAINING_ROWS), replace=False))
        values = self._unnormalised(self.encode(self.prepare(vectors[rows])))
        logs = np.log(np.maximum(np.sqrt(np.einsum("ij,ij->i", values, values)), 1e-6))
        low, high = float(logs.min()), float(logs.max())
        span = max(high - low, 1e-3)
        levels = np.linspace(low - span / 2, high + span / 2, 256)
        cutoffs, weights = np.exp((levels[1:] + levels[:-1]) / 2), np.exp(levels)
        arrays = {k: v for k, v in self.arrays().items() if k not in ("cutoffs", "weights")}
        return Codec(
            self.config,
            self.input_dim,
            cutoffs=cutoffs.astype(np.float32),
            weights=weights.astype(np.float32),
            **arrays,
        )

    # -- coding ---------------------------------------------------------------------------------------
    def prepare(self, vectors: FloatMatrix) -> FloatMatrix:
        """Encoder-space vectors (documents or queries) in the codec's space: projected and re-normalised."""
        if self.projection is None:
            return np.asarray(vectors, dtype=np.float32)
        return normalise(np.asarray(vectors, dtype=np.float32) @ self.projection)

    def lift(self, vectors: FloatMatrix) -> FloatMatrix:
        """Stored vectors mapped back into the encoder's space (the identity without a projection)."""
        return vectors if self.projection is None else (vectors @ self.projection.T).astype(np.float32)

    @property
    def column_names(self) -> tuple[str, ...]:
        if self.config.compressed:
            return ("codes", "residuals", "vectors") if self.config.keep_float32 else ("codes", "residuals")
        return ("vectors", "codes") if self.config.codes else ("vectors",)

    def empty(self) -> Columns:
        """Zero-row columns of the right dtypes and widths."""
        return self.encode(np.empty((0, self.dim), dtype=np.float32))

    def encode(self, vectors: FloatMatrix) -> Columns:
        """Columns for prepared vectors (see :meth:`prepare`)."""
        kind = self.config.kind
        if not self.config.compressed:
            dtype = np.float32 if kind == "float32" else np.float16
            columns = {"vectors": np.ascontiguousarray(vectors, dtype=dtype)}
            if self.centroids is not None:
                columns["codes"] = assign_codes(vectors, self.centroids).astype(self.code_dtype)
            return columns
        assert self.centroids is not None
        codes = assign_codes(vectors, self.centroids)
        residuals = vectors - self.centroids[codes]
        kept = {"vectors": np.ascontiguousarray(vectors, dtype=np.float32)} if self.config.keep_float32 else {}
        if kind == "pq":
            n_groups = len(self._offsets)
            packed = np.empty((len(vectors), self.residual_bytes), dtype=np.uint8)
            for b in self._books:
                for i in range(b.n_groups):
                    part = residuals[:, b.start + i * b.width : b.start + (i + 1) * b.width]
                    packed[:, b.first_group + i] = _nearest(part, b.table[i * 256 : (i + 1) * 256])
            columns = {"codes": codes.astype(self.code_dtype), "residuals": packed}
            if self.cutoffs is not None:  # the decoded vector's norm, by its bucket, in the last byte
                values = self._unnormalised(columns)
                norms = np.sqrt(np.einsum("ij,ij->i", values, values))
                packed[:, n_groups] = np.searchsorted(self.cutoffs, norms, side="left")
            return {**columns, **kept}
        assert self.cutoffs is not None
        if kind == "residual":
            buckets = np.searchsorted(self.cutoffs, residuals, side="left").astype(np.uint8)
            packed = pack_residuals(buckets, self.config.nbits)
        else:
            parts = [np.empty((len(vectors), 0), dtype=np.uint8)]
            for g in self._groups:
                buckets = np.empty((len(vectors), g.stop - g.start), dtype=np.uint8)
                for j, d in enumerate(range(g.start, g.stop)):
                    cut = self.cutoffs[d, : 2**g.width - 1]
                    buckets[:, j] = np.searchsorted(cut, residuals[:, d], side="left")
                parts.append(pack_residuals(buckets, g.width))
            packed = np.ascontiguousarray(np.concatenate(parts, axis=1))
        return {"codes": codes.astype(self.code_dtype), "residuals": packed, **kept}

    def _unnormalised(self, columns: Mapping[str, np.ndarray[Any, Any]]) -> FloatMatrix:
        """Centroid plus bucket values of every row (float32, not re-normalised)."""
        assert self.centroids is not None
        codes, packed = columns["codes"], np.asarray(columns["residuals"], dtype=np.uint8)
        if self.config.kind == "residual":
            # one look-up per byte of whole table rows (viewed as single items): several times faster than
            # fancy-indexing the 2-D table, same values
            rows = np.take(self._table_items, packed)
            values = np.ascontiguousarray(rows).view(np.float32).reshape(len(packed), self.dim)
            values += self.centroids[codes]
            return values
        values = self.centroids[codes]
        for b in self._books:  # one look-up per width: each group's codeword, side by side
            rows = np.take(b.items, packed[:, b.first_group : b.first_group + b.n_groups] + b.offsets)
            span = b.n_groups * b.width
            values[:, b.start : b.start + span] += rows.view(np.float32).reshape(len(packed), span)
        for g in self._groups:  # the same look-up, one table row per byte position of the group
            rows = np.take(g.items, packed[:, g.first_byte : g.first_byte + g.n_bytes] + g.offsets)
            values[:, g.start : g.stop] += rows.view(np.float32).reshape(len(packed), g.stop - g.start)
        values[:, self.dim - len(self._silent_values) :] += self._silent_values
        return values

    def _norms(self, columns: Mapping[str, np.ndarray[Any, Any]]) -> FloatMatrix | None:
        """The stored norms of decoded rows (a ``pq`` codec with norm levels), else None."""
        if self.config.kind != "pq" or self.weights is None:
            return None
        return self.weights[np.asarray(columns["residuals"], dtype=np.uint8)[:, len(self._offsets)]]

    def decode(self, columns: Mapping[str, np.ndarray[Any, Any]]) -> FloatMatrix:
        """Float32 vectors (in the codec's space) for columns of any number of rows."""
        if not self.config.compressed:
            return np.asarray(columns["vectors"], dtype=np.float32)
        values = self._unnormalised(columns)
        norms = self._norms(columns)
        if norms is None:
            return normalise(values)
        values /= norms[:, None]
        return values

    def similarities(self, query: FloatMatrix, columns: Mapping[str, np.ndarray[Any, Any]]) -> FloatMatrix:
        """``query @ decoded.T`` (``(n_query, n_rows)``) for prepared query vectors: the same values as
        :meth:`decode` then a product, up to float rounding. A compressed codec decodes the rows without
        normalising them and divides the product's columns by the rows' norms instead: one pass over the
        decoded rows less (n_query is small next to the dimension): re-scoring 400 records in
        ``benchmarks/pg_rescoring.py`` took 10.5 ms instead of 14.5 (8-bit residuals)."""
        query = np.ascontiguousarray(query, dtype=np.float32)
        if not self.config.compressed:
            return query @ self.decode(columns).T
        norms = self._norms(columns)
        if norms is not None and is_available("torch"):
            return self._pq_similarities(query, columns, norms)
        values = self._unnormalised(columns)
        if norms is None:
            norms = np.sqrt(np.einsum("ij,ij->i", values, values))
            norms[norms == 0] = 1.0
        sims = query @ values.T
        sims /= norms
        return sims

    def _pq_similarities(
        self, query: FloatMatrix, columns: Mapping[str, np.ndarray[Any, Any]], norms: FloatMatrix
    ) -> FloatMatrix:
        """``query @ decoded.T`` of a ``pq`` codec with stored norms, without decoding: each token's score is its
        centroid's similarity plus the similarities of its codewords, read from tables of the query against
        every codeword (asymmetric distance computation), summed by torch's ``embedding_bag`` (one pass over
        the codes; numpy has no gather-and-sum that does not materialise every codeword), divided by the stored
        norm. One thread (a single query's work; see :mod:`ragplug._threads`)."""
        import torch

        assert self.centroids is not None
        packed = np.asarray(columns["residuals"], dtype=np.uint8)
        codes = np.asarray(columns["codes"])
        if not len(packed):
            return np.empty((len(query), 0), dtype=np.float32)
        tables = self._query_tables(query)
        index = np.add(packed[:, : len(self._offsets)], self._offsets, dtype=np.int32)
        with torch_threads(1), torch.inference_mode():
            sums = torch.nn.functional.embedding_bag(torch.from_numpy(index), torch.from_numpy(tables), mode="sum")
        per_token = sums.numpy()[:, : len(query)]  # (rows, n_query)
        per_token += self.centroid_sims(query)[codes]
        per_token /= norms[:, None]
        return np.ascontiguousarray(per_token.T)

    def _query_tables(self, query: FloatMatrix) -> FloatMatrix:
        """Every codeword's similarity to every query vector, one row per (group, codeword): ``(n_groups * 256,
        n_query)`` padded to a multiple of 16 columns, rows in the order of the stored groups."""
        # columns padded with zeros to a multiple of 16: torch's summing kernel took 5.5 ms for 42k tokens x 94
        # groups at 32 columns, 7.9 ms at 23 (one-off timing, 1 thread)
        n_query, padded = len(query), -(-len(query) // 16) * 16
        query = np.concatenate([query, np.zeros((padded - n_query, self.dim), dtype=np.float32)])
        parts = []
        for b in self._books:  # (groups, 256, width) @ (groups, width, n_query)
            part = query[:, b.start : b.start + b.n_groups * b.width].reshape(padded, b.n_groups, b.width)
            parts.append(np.matmul(b.table.reshape(b.n_groups, 256, b.width), part.transpose(1, 2, 0)))
        return np.ascontiguousarray(np.concatenate(parts).reshape(-1, padded), dtype=np.float32)

    def centroid_sims(self, query: FloatMatrix) -> FloatMatrix:
        """``(query @ centroids.T).T`` for a prepared query, kept for the last query seen: a search's first
        stage (probing the centroids) and its scoring of candidates in blocks share one product."""
        assert self.centroids is not None
        last = self._last_query
        if last is not None and last[0].shape == query.shape and np.array_equal(last[0], query):
            return last[1]
        sims = np.ascontiguousarray((query @ self.centroids.T).T)
        self._last_query = (query.copy(), sims)
        return sims

    @property
    def code_dtype(self) -> type[np.unsignedinteger[Any]] | type[np.signedinteger[Any]]:
        return np.uint16 if self.centroids is not None and len(self.centroids) <= 1 << 16 else np.int32

    @property
    def residual_bytes(self) -> int:
        """Bytes of coded residual per token (0 for the float kinds)."""
        if self.config.kind == "residual":
            return self.dim * self.config.nbits // 8
        if self.config.kind == "rotated":
            assert self.widths is not None
            return int(self.widths.sum()) // 8
        if self.config.kind == "pq":  # a byte per group, and one for the norm when there are norm buckets
            assert self.widths is not None
            return len(self.widths) + (self.cutoffs is not None)
        return 0

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token takes in the columns (not counting the shared arrays)."""
        kind = self.config.kind
        code = np.dtype(self.code_dtype).itemsize if self.config.has_codes else 0
        if kind == "float32":
            return 4 * self.dim + code
        if kind == "float16":
            return 2 * self.dim + code
        return code + self.residual_bytes + (4 * self.dim if self.config.keep_float32 else 0)

    # -- persistence ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON part of a saved codec (its arrays are :meth:`arrays`)."""
        return {"config": self.config.to_dict(), "input_dim": self.input_dim, "dim": self.dim}

    def arrays(self) -> dict[str, np.ndarray[Any, Any]]:
        named = {"projection": self.projection, "centroids": self.centroids, "cutoffs": self.cutoffs}
        named["weights"] = self.weights
        named["widths"] = None if self.widths is None else self.widths.astype(np.float32)
        named["codebooks"] = self.codebooks
        return {k: v for k, v in named.items() if v is not None}

    @classmethod
    def restore(cls, header: Any, arrays: Mapping[str, np.ndarray[Any, Any]], where: str) -> Codec:
        """A codec saved by :meth:`to_dict` and :meth:`arrays`; a bad one is :class:`StoreCorruptedError`."""
        try:
            config = CodecConfig.from_dict(header["config"])
            input_dim = header["input_dim"]
            if type(input_dim) is not int or input_dim < 1:
                msg = f"input_dim {input_dim!r}"
                raise InvalidInputError(msg)
            unknown = set(arrays) - {"projection", "centroids", "cutoffs", "weights", "widths", "codebooks"}
            if unknown:
                msg = f"unknown arrays {sorted(unknown)}"
                raise InvalidInputError(msg)
            parts = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}
            codec = cls(config, input_dim, **parts)
            if header.get("dim") != codec.dim:
                msg = f"dim {header.get('dim')!r} but the arrays give {codec.dim}"
                raise InvalidInputError(msg)
        except (InvalidInputError, TypeError, KeyError, AttributeError) as err:
            msg = f"{where}: the saved codec is invalid: {err}"
            raise StoreCorruptedError(msg) from err
        return codec

    def same_as(self, other: Codec) -> bool:
        """True when both codecs store the same vectors the same way (settings and arrays)."""
        if self.to_dict() != other.to_dict():
            return False
        mine, theirs = self.arrays(), other.arrays()
        return mine.keys() == theirs.keys() and all(np.array_equal(mine[k], theirs[k]) for k in mine)


@dataclass(frozen=True)
class _Group:
    """The dimensions ``start:stop`` of a rotated codec that share one width: where their bytes are in a
    row (``first_byte``, ``n_bytes``) and the look-up table that decodes them, one table row per byte
    position and byte value, each row the bucket values of the ``8 / width`` dimensions that byte holds
    (``items``: the rows viewed as single items; ``offsets``: each byte position's first row)."""

    width: int
    start: int
    stop: int
    first_byte: int
    n_bytes: int
    items: np.ndarray[Any, Any]
    offsets: npt.NDArray[np.int32]


def _groups(widths: npt.NDArray[np.int64], weights: FloatMatrix) -> list[_Group]:
    groups, start, first_byte = [], 0, 0
    for w in WIDTHS[:-1]:
        n = int((widths == w).sum())
        if not n:
            continue
        per_byte, n_bytes = 8 // w, n * w // 8
        buckets = unpack_residuals(np.arange(256, dtype=np.uint8)[:, None], w)  # (256, per_byte)
        dims = start + np.arange(n_bytes)[:, None, None] * per_byte + np.arange(per_byte)[None, None, :]
        table = np.ascontiguousarray(weights[dims, buckets[None, :, :]], dtype=np.float32)  # (bytes, 256, per)
        items = table.reshape(n_bytes * 256, per_byte).view(np.dtype((np.void, per_byte * 4))).reshape(-1)
        offsets = (np.arange(n_bytes, dtype=np.int32) * 256)[None, :]
        groups.append(_Group(w, start, start + n, first_byte, n_bytes, items, offsets))
        start, first_byte = start + n, first_byte + n_bytes
    return groups


@dataclass(frozen=True)
class _Books:
    """The groups of one width of a ``pq`` codec (groups ``first_group`` on, dimensions ``start`` on): their
    codewords as one table of ``n_groups * 256`` rows (``items``: the rows viewed as single items;
    ``offsets``: each group's first row)."""

    width: int
    first_group: int
    n_groups: int
    start: int
    table: FloatMatrix
    items: np.ndarray[Any, Any]
    offsets: npt.NDArray[np.int64]


def _books(widths: npt.NDArray[np.int64], codebooks: FloatMatrix) -> list[_Books]:
    out, first, start = [], 0, 0
    for width, run in itertools.groupby(widths.tolist()):
        n = len(list(run))
        table = np.ascontiguousarray(codebooks[first : first + n, :, :width].reshape(n * 256, width))
        items = table.view(np.dtype((np.void, width * 4))).reshape(n * 256)
        out.append(_Books(width, first, n, start, table, items, np.arange(n, dtype=np.int64) * 256))
        first, start = first + n, start + n * width
    return out


def _budget(config: CodecConfig, centroids: FloatMatrix) -> tuple[int, int]:
    """Bytes of a centroid id, and the byte budget per token (more than the id: else an error)."""
    code_bytes = 2 if len(centroids) <= 1 << 16 else 4
    budget = config.budget(centroids.shape[1])
    if budget <= code_bytes:
        msg = f"a {config.kind} codec needs more than {code_bytes} bytes per token (the centroid id), got {budget}"
        raise InvalidInputError(msg)
    return code_bytes, budget


def _principal_basis(residuals: FloatMatrix) -> FloatMatrix:
    """The principal basis of ``residuals``, by decreasing variance (float64 sums, chunked)."""
    dim = residuals.shape[1]
    gram = np.zeros((dim, dim))
    for lo in range(0, len(residuals), 1 << 16):  # float64 sums without a float64 copy of every residual
        chunk = residuals[lo : lo + (1 << 16)].astype(np.float64)
        gram += chunk.T @ chunk
    _, basis = np.linalg.eigh(gram)
    return basis[:, ::-1].astype(np.float32)


def _pq_groups(variance: npt.NDArray[np.float64], n_groups: int) -> list[npt.NDArray[np.int64]]:
    """Consecutive groups of dimensions (``variance`` decreasing) with about equal bits under reverse
    water-filling of ``8 * n_groups`` bits: at most ``n_groups`` groups of at most :data:`PQ_MAX_WIDTH`,
    covering every dimension."""
    variance = np.maximum(variance, 1e-20)
    lo, hi = 1e-24, float(variance.max())
    for _ in range(100):  # the water level that spends the bits
        level = np.sqrt(lo * hi)
        lo, hi = (level, hi) if np.maximum(0.0, 0.5 * np.log2(variance / level)).sum() > 8 * n_groups else (lo, level)
    bits = np.maximum(0.0, 0.5 * np.log2(variance / hi))

    def cut(target: float) -> list[npt.NDArray[np.int64]]:
        groups, start, acc = [], 0, 0.0
        for d, b in enumerate(bits):
            acc += b
            if acc >= target or d + 1 - start >= PQ_MAX_WIDTH:
                groups.append(np.arange(start, d + 1))
                start, acc = d + 1, 0.0
        if start < len(bits):
            groups.append(np.arange(start, len(bits)))
        return groups

    low, high = 1e-3, 8.0 * PQ_MAX_WIDTH
    for _ in range(50):  # the bits per group that make at most n_groups groups
        mid = (low + high) / 2
        low, high = (mid, high) if len(cut(mid)) > n_groups else (low, mid)
    groups = cut(high)
    if len(groups) > n_groups:  # too few bytes for every dimension: the widest groups of the rest
        msg = f"a pq codec needs at least {-(-len(bits) // PQ_MAX_WIDTH)} bytes after the centroid id and the norm"
        raise InvalidInputError(msg)
    return groups


#: Points compared with a group's codewords at a time: the ``(chunk, 256)`` products stay in cache.
_NEAREST_CHUNK = 2048


def _nearest(points: FloatMatrix, codewords: FloatMatrix) -> npt.NDArray[np.uint8]:
    """The nearest codeword (Euclidean) of each point: the largest ``point . codeword - |codeword|^2 / 2``."""
    half = 0.5 * np.einsum("ij,ij->i", codewords, codewords)
    out = np.empty(len(points), dtype=np.uint8)
    for lo in range(0, len(points), _NEAREST_CHUNK):
        products = points[lo : lo + _NEAREST_CHUNK] @ codewords.T
        products -= half
        out[lo : lo + len(products)] = products.argmax(axis=1)
    return out


def _codewords(points: FloatMatrix, rng: np.random.Generator, iterations: int = 20) -> FloatMatrix:
    """256 codewords fitted by Euclidean k-means (Lloyd) on ``points`` (repeated when fewer)."""
    start = rng.choice(len(points), 256, replace=len(points) < 256)
    codewords = points[start].astype(np.float32).copy()
    for _ in range(iterations):
        nearest = _nearest(points, codewords)
        sums = np.stack([np.bincount(nearest, weights=column, minlength=256) for column in points.T], axis=1)
        counts = np.bincount(nearest, minlength=256)
        filled = counts > 0
        codewords[filled] = sums[filled] / counts[filled, None]
    return codewords


def _allocate(errors: npt.NDArray[np.float64], budget_bits: int) -> npt.NDArray[np.int64]:
    """Bits per dimension (one of ``WIDTHS``; ``errors[d, j]`` is dimension ``d``'s squared error at
    ``WIDTHS[j]``) minimising the total error within ``budget_bits``: each dimension takes the width that
    minimises ``error + price * bits`` for the lowest price that fits the budget (bisection), then each
    width's count is trimmed to whole bytes by moving its cheapest-to-move dimensions one width down."""
    widths_arr = np.array(WIDTHS, dtype=np.int64)

    def at(price: float) -> npt.NDArray[np.int64]:
        return widths_arr[np.argmin(errors + price * widths_arr[None, :], axis=1)]

    low, high = 0.0, float(errors.max()) + 1.0  # at high every dimension is cheapest with 0 bits
    if at(low).sum() > budget_bits:
        for _ in range(60):
            mid = (low + high) / 2
            if at(mid).sum() > budget_bits:
                low = mid
            else:
                high = mid
        chosen = at(high)
    else:
        chosen = at(low)
    column = {w: j for j, w in enumerate(WIDTHS)}
    for w, lower in itertools.pairwise(WIDTHS):  # 8 -> 4 (always whole bytes), 4 -> 2, 2 -> 1, 1 -> 0
        dims = np.flatnonzero(chosen == w)
        extra = len(dims) % (8 // w)
        if extra:
            cost = errors[dims, column[lower]] - errors[dims, column[w]]
            chosen[dims[np.argsort(cost, kind="stable")[:extra]]] = lower
    return chosen


def _buckets(residuals: FloatMatrix, n_buckets: int, iterations: int = 30) -> tuple[FloatMatrix, FloatMatrix]:
    """Bucket cutoffs and values for the residual values, all dimensions pooled as colbert-ai pools them:
    Lloyd-Max (1-D k-means: a value is the mean of its bucket, a cutoff the midpoint of two values),
    started from colbert-ai's quantile buckets. Quantile buckets give the tails a single wide bucket each;
    Lloyd-Max spends levels where the squared error is, which on SciFact's MiniLM tokens cuts the residual
    error by 31% at 2 bits and 70% at 4 bits, and lifts recall@10 against float32 from 0.884 to 0.930
    (2 bits) and 0.963 to 0.991 (4 bits) at the same bytes (``benchmarks/residual_buckets.py``)."""
    return _lloyd(_Sorted(residuals), n_buckets, iterations)[:2]


#: Standardised residual values pooled to fit a rotated codec's bucket shapes.
_POOLED_VALUES = 1 << 24


class _Sorted:
    """Values sorted once, with prefix sums of them and of their squares: every width's Lloyd-Max fit and
    squared error from one sort (a rotated codec fits four widths per dimension)."""

    def __init__(self, values: np.ndarray[Any, Any]) -> None:
        self.flat = np.sort(values, axis=None).astype(np.float64)
        self.sums = np.concatenate([[0.0], np.cumsum(self.flat)])
        self.squares = np.concatenate([[0.0], np.cumsum(self.flat**2)])


def _lloyd(data: _Sorted, n_buckets: int, iterations: int = 30) -> tuple[FloatMatrix, FloatMatrix, float]:
    """Lloyd-Max cutoffs and values for sorted ``data``, and the mean squared error they leave."""
    flat, sums = data.flat, data.sums
    weights = np.quantile(flat, np.arange(n_buckets) / n_buckets + 0.5 / n_buckets)
    for _ in range(iterations):
        cutoffs = (weights[1:] + weights[:-1]) / 2
        edges = np.concatenate([[0], np.searchsorted(flat, cutoffs), [len(flat)]])
        counts = np.diff(edges)
        means = (sums[edges[1:]] - sums[edges[:-1]]) / np.maximum(counts, 1)
        updated = np.where(counts > 0, means, weights)  # an empty bucket keeps its value
        if np.array_equal(updated, weights):
            break
        weights = updated
    cutoffs32 = ((weights[1:] + weights[:-1]) / 2).astype(np.float32)
    weights32 = weights.astype(np.float32)
    edges = np.concatenate([[0], np.searchsorted(flat, cutoffs32.astype(np.float64)), [len(flat)]])
    w = weights32.astype(np.float64)
    s1 = data.sums[edges[1:]] - data.sums[edges[:-1]]
    s2 = data.squares[edges[1:]] - data.squares[edges[:-1]]
    error = float((s2 - 2 * w * s1 + np.diff(edges) * w**2).sum() / max(len(flat), 1))
    return cutoffs32, weights32, max(error, 0.0)


def _fit_projection(sample: FloatMatrix, dim: int, how: str, rng: np.random.Generator) -> FloatMatrix:
    """An ``(input_dim, dim)`` matrix with orthonormal columns: PCA directions of ``sample`` (uncentred,
    so dot products are what is kept) or a random orthonormal map."""
    if how == "pca":  # top eigenvectors of the Gram matrix: the SVD's right singular vectors, without U
        x = sample.astype(np.float64)
        eigenvalues, vectors = np.linalg.eigh(x.T @ x)
        basis = vectors[:, np.argsort(eigenvalues)[::-1][: min(dim, len(sample))]]
        if basis.shape[1] < dim:  # fewer sample rows than dims: fill with random orthogonal directions
            extra = rng.standard_normal((sample.shape[1], dim - basis.shape[1]))
            basis, _ = np.linalg.qr(np.concatenate([basis, extra], axis=1))
    else:
        basis, _ = np.linalg.qr(rng.standard_normal((sample.shape[1], dim)))
    return np.ascontiguousarray(basis, dtype=np.float32)


# -- residual bits, in colbert-ai's layout ----------------------------------------------------------------
def pack_residuals(buckets: npt.NDArray[np.uint8], nbits: int) -> npt.NDArray[np.uint8]:
    """``(n, dim)`` bucket indices as ``(n, dim * nbits / 8)`` bytes: for each dimension its ``nbits``
    bits, lowest first; the whole bit string of a token packed big-endian (``np.packbits``)."""
    n, dim = buckets.shape
    bits = (buckets[:, :, None] >> np.arange(nbits, dtype=np.uint8)) & 1
    return np.packbits(bits.reshape(n, dim * nbits), axis=1)


def unpack_residuals(packed: npt.NDArray[np.uint8], nbits: int) -> npt.NDArray[np.uint8]:
    """The inverse of :func:`pack_residuals`: ``(n, dim)`` bucket indices."""
    n = len(packed)
    bits = np.unpackbits(packed, axis=1).reshape(n, -1, nbits)
    return (bits << np.arange(nbits, dtype=np.uint8)).sum(axis=2, dtype=np.uint8)


def _lookup_table(weights: FloatMatrix, nbits: int) -> FloatMatrix:
    """For every byte value, the bucket values of the ``8 / nbits`` dimensions it holds."""
    per_byte = 8 // nbits
    buckets = unpack_residuals(np.arange(256, dtype=np.uint8)[:, None], nbits)  # (256, per_byte)
    assert buckets.shape == (256, per_byte)
    return np.ascontiguousarray(weights[buckets], dtype=np.float32)
