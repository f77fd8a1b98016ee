"""Approximate first stage for corpora too large to scan exactly: centroid candidate generation.

The idea is PLAID's and XTR's, written for numpy:

1. Cluster all token vectors with spherical k-means; every token gets the code of its centroid, and
   each centroid keeps the list of documents owning a token in it (inverted lists, CSR layout).
2. At query time each query vector probes its ``n_probe`` most similar centroids. A document's
   approximate score is, per query vector, the best probed-centroid similarity among its tokens' codes,
   or the weakest probed similarity when it has none there (an imputed value, as in XTR); summed over
   query vectors. This costs a ``(n_query, n_centroids)`` product and a scatter-max over the probed lists.
3. The ``n_candidates`` best documents are then scored with exact MaxSim (:mod:`.maxsim`).

``n_probe`` and ``n_candidates`` trade recall for speed; by default they adapt to the corpus (see
:class:`ApproximateConfig`). k-means is implemented here (a few Lloyd iterations on a sample) to keep the
engine numpy-only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ragplug.errors import InvalidInputError
from ragplug.retrievers.late_interaction.maxsim import gather_rows

__all__ = [
    "ApproximateConfig",
    "CentroidIndex",
    "FrozenIndex",
    "assign_codes",
    "centroid_maxsim",
    "normalise",
    "spherical_kmeans",
]

logger = logging.getLogger(__name__)

_ASSIGN_CHUNK = 8192

#: Documents at least this long (mean tokens) are searched with ``n_probe`` and ``n_candidates`` as given:
#: about a SciFact abstract (327 tokens), where 8 probes and 256 candidates keep recall@10 0.99 of exact.
REFERENCE_DOC_TOKENS = 300
#: Corpora up to this many documents are searched with ``n_candidates`` as given.
REFERENCE_DOCS = 10_000
#: Upper bounds of the adapted values (``n_candidates`` is also bounded by the corpus).
MAX_ADAPTED_PROBE = 64
MAX_ADAPTED_CANDIDATES = 4096
#: At most this many times the centroids of the length-blind rule (k-means time grows with the count).
MAX_CENTROID_FACTOR = 2.0


def _shortness(n_docs: int, n_tokens: int) -> float:
    """How many times shorter than ``REFERENCE_DOC_TOKENS`` the documents are on average (at least 1)."""
    return max(1.0, REFERENCE_DOC_TOKENS * n_docs / n_tokens) if n_docs and n_tokens else 1.0


@dataclass(frozen=True)
class ApproximateConfig:
    """Settings of the approximate search; checked at construction.

    With ``adaptive`` (the default) the search adapts to the corpus, never going below the values given, from
    its mean document length ``L`` (tokens), document count ``N`` and token count ``T``::

        shortness    = max(1, REFERENCE_DOC_TOKENS / L)                    # 1 for abstracts, 2.9 for 2Wiki
        n_centroids  = power of two nearest 4 * sqrt(T) * min(2, sqrt(shortness))    (centroids_for)
        n_probe      = min(64,   round(n_probe * shortness))                          (effective)
        n_candidates = min(4096, round(n_candidates * sqrt(shortness) * max(1, N / REFERENCE_DOCS) ** (1/3)))

    then at least ``4 * k`` candidates and at most ``N``. Why, as measured by ``benchmarks/approx_recall.py``
    (MiniLM token vectors; the fixed values were 8 probes, 256 candidates, centroids by ``T`` alone):

    * Short documents are what the fixed values miss. On SciFact (327 tokens per abstract) they keep recall@10
      0.990 of exact MaxSim; on 2WikiMultihopQA (102 tokens per passage, a corpus of similar size, 4,096
      centroids too) 0.951-0.967 over three k-means seeds. A short document has tokens under fewer centroids
      (52 distinct codes against 146), so for 0.33 of the pairs of a query vector and an exact top-5 document
      no token of the document is under a probed centroid and the similarity is imputed (SciFact: 0.20).
      The imputed value does not change the ranking (it is the same for every document); only probing more
      makes it rarer: twice the probes bring 2Wiki to SciFact's 0.20. Probing is the cheap part of a search
      (a scatter over short lists, against one exact MaxSim per candidate), hence the linear rule.
    * Short passages also crowd the top (42 documents within 1.0 of the fifth exact score on 2Wiki, 18 on
      SciFact): the candidates that hold the exact top 5 are p90 238 on 2Wiki against 83 on SciFact. Hence
      more candidates, by the square root, since each costs an exact MaxSim.
    * Coarser centroids hurt short passages: on 2Wiki, 2,048 centroids lose 0.025 Recall@5 and 1,024
      lose 0.074 at the fixed settings, where 4,096 lose 0.005. The length-blind rule gives 2,048 below
      524k tokens, e.g. to half of 2Wiki, which the factor gives 4,096 (at most twice the count: k-means
      time grows with it); with the other rules, recall@10 against exact there goes from 0.965 to 0.996.
    * Corpus size counts for little: over random subsets of 1/8 to all of either corpus the candidates needed
      for recall@10 0.99 grew 1.3-2x per eightfold documents, hence the cube root past ``REFERENCE_DOCS``.

    SciFact-like corpora (``L`` >= 300, ``N`` <= 10,000) keep exactly the values given. ``adaptive=False``
    uses them as given (still at least ``4 * k`` candidates); ``n_centroids`` when set, and values passed to
    :meth:`effective` for one search (a store's search options), are used as they are.
    """

    n_probe: int = field(
        default=8,
        metadata={"help": "centroids probed per query vector (more: better recall); scaled up for short documents"},
    )
    n_candidates: int = field(
        default=256,
        metadata={
            "help": "documents re-scored with exact MaxSim (at least 4 * k); scaled up for short documents and "
            "large corpora"
        },
    )
    n_rescore: int | None = field(
        default=None,
        metadata={
            "help": "a compressed store decodes and re-scores this many of the candidates, the best by centroid "
            "interaction; None: half of them (at least 4 * k)"
        },
    )
    n_centroids: int | None = field(
        default=None,
        metadata={"help": "k-means centroids; None: a power of two near 4*sqrt(n_tokens), more for short documents"},
    )
    kmeans_iterations: int = field(default=8, metadata={"help": "Lloyd iterations"})
    kmeans_sample: int = field(default=131072, metadata={"help": "token vectors sampled to fit k-means"})
    seed: int = 0
    adaptive: bool = field(
        default=True,
        metadata={
            "help": "scale n_probe, n_candidates and the centroid count to the corpus (never below the values "
            "given); False uses them as given"
        },
    )

    def __post_init__(self) -> None:
        for name in ("n_probe", "n_candidates", "kmeans_iterations", "kmeans_sample"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                msg = f"ApproximateConfig.{name} must be a positive integer, got {value!r}"
                raise InvalidInputError(msg)
        if type(self.seed) is not int:
            msg = f"ApproximateConfig.seed must be an integer, got {self.seed!r}"
            raise InvalidInputError(msg)
        for name in ("n_centroids", "n_rescore"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 1):
                msg = f"ApproximateConfig.{name} must be a positive integer or None, got {value!r}"
                raise InvalidInputError(msg)
        if not isinstance(self.adaptive, bool):
            msg = f"ApproximateConfig.adaptive must be True or False, got {self.adaptive!r}"
            raise InvalidInputError(msg)

    def centroids_for(self, n_tokens: int, n_docs: int | None = None) -> int:
        """k-means centroids for ``n_tokens`` tokens in ``n_docs`` documents (the rule is in the class
        docstring; without ``n_docs``, the length of the documents is not taken into account)."""
        if self.n_centroids is not None:
            return max(1, min(self.n_centroids, n_tokens))
        wanted = 4 * math.sqrt(max(n_tokens, 1))
        if self.adaptive and n_docs:
            wanted *= min(MAX_CENTROID_FACTOR, math.sqrt(_shortness(n_docs, n_tokens)))
        return max(1, min(n_tokens, 2 ** max(4, round(math.log2(wanted)))))

    def rescore_for(self, n_candidates: int, k: int) -> int:
        """Candidates a compressed store decodes and re-scores out of ``n_candidates``: ``n_rescore``, else half
        of them, at least ``4 * k`` (``benchmarks/results/residual_rescoring.md``: on SciFact, ranking 256
        candidates by centroid interaction and decoding 128 cost 0.003-0.005 recall@10 against exact MaxSim
        and took 0.57x the time of decoding all 256; decoding 64 cost 0.014-0.025)."""
        wanted = self.n_rescore if self.n_rescore is not None else max(4 * k, n_candidates // 2)
        return max(1, min(n_candidates, wanted))

    def effective(
        self, n_docs: int, n_tokens: int, k: int, *, n_probe: int | None = None, n_candidates: int | None = None
    ) -> tuple[int, int]:
        """``(n_probe, n_candidates)`` for a search of the ``k`` best among ``n_docs`` documents holding
        ``n_tokens`` tokens (the rules are in the class docstring). ``n_probe`` / ``n_candidates`` given here
        (one search's options) are returned as they are."""
        for name, value in (("n_docs", n_docs), ("n_tokens", n_tokens), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                msg = f"{name} must be a non-negative integer, got {value!r}"
                raise InvalidInputError(msg)
        probe, candidates = self.n_probe, self.n_candidates
        if self.adaptive and n_docs and n_tokens:
            shortness = _shortness(n_docs, n_tokens)
            size = max(1.0, n_docs / REFERENCE_DOCS)
            probe = max(probe, min(MAX_ADAPTED_PROBE, round(probe * shortness)))
            scaled = round(candidates * math.sqrt(shortness) * size ** (1 / 3))
            candidates = max(candidates, min(MAX_ADAPTED_CANDIDATES, scaled))
        candidates = max(1, min(max(candidates, 4 * k), n_docs))
        return (probe if n_probe is None else n_probe), (candidates if n_candidates is None else n_candidates)


def normalise(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def assign_codes(vectors: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
    codes = np.empty(len(vectors), dtype=np.int32)
    centroids_t = np.ascontiguousarray(centroids.T)
    for lo in range(0, len(vectors), _ASSIGN_CHUNK):
        codes[lo : lo + _ASSIGN_CHUNK] = np.argmax(vectors[lo : lo + _ASSIGN_CHUNK] @ centroids_t, axis=1)
    return codes


def spherical_kmeans(
    vectors: npt.NDArray[np.float32],
    n_centroids: int,
    *,
    iterations: int = 8,
    sample: int = 131072,
    seed: int = 0,
    on_iteration: Callable[[], object] | None = None,
) -> npt.NDArray[np.float32]:
    """``n_centroids`` unit centroids fitted by spherical k-means (Lloyd) on a sample of ``vectors``
    (``on_iteration`` is called after each of the ``iterations``)."""
    rng = np.random.default_rng(seed)
    n_centroids = max(1, min(n_centroids, len(vectors)))
    sample_size = min(len(vectors), max(sample, n_centroids))
    points = normalise(vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))])
    centroids = points[rng.choice(sample_size, n_centroids, replace=False)].copy()
    for _ in range(iterations):
        codes = assign_codes(points, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, codes, points)
        counts = np.bincount(codes, minlength=n_centroids)
        empty = counts == 0
        if empty.any():  # re-seed empty clusters with random sample points
            sums[empty] = points[rng.choice(sample_size, int(empty.sum()), replace=False)]
        centroids = normalise(sums)
        if on_iteration is not None:
            on_iteration()
    logger.debug("k-means: %d centroids from %d sampled vectors", n_centroids, sample_size)
    return centroids


class CentroidIndex:
    """Centroids, one code per token, and per-centroid document lists over a packed token matrix."""

    def __init__(self, centroids: npt.NDArray[np.float32], codes: npt.NDArray[np.int32]) -> None:
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.codes = np.ascontiguousarray(codes, dtype=np.int32)
        self._lists: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None

    @classmethod
    def fit(
        cls, vectors: npt.NDArray[np.float32], config: ApproximateConfig, *, n_docs: int | None = None
    ) -> CentroidIndex:
        """Spherical k-means on a sample of ``vectors`` (the tokens of ``n_docs`` documents, when known: short
        documents get more centroids), then assign every vector to its centroid."""
        centroids = spherical_kmeans(
            vectors,
            config.centroids_for(len(vectors), n_docs),
            iterations=config.kmeans_iterations,
            sample=config.kmeans_sample,
            seed=config.seed,
        )
        return cls(centroids, assign_codes(vectors, centroids))

    def assign(self, vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.int32]:
        return assign_codes(vectors, self.centroids)

    # -- maintenance, driven by the store ------------------------------------------------------------
    def append(self, vectors: npt.NDArray[np.float32]) -> None:
        self.codes = np.concatenate([self.codes, self.assign(vectors)])
        self._lists = None

    def extend(self, codes: npt.NDArray[np.int32]) -> None:
        """Append tokens whose codes are already known (a codec that keeps centroid ids)."""
        self.codes = np.concatenate([self.codes, codes])
        self._lists = None

    def keep(self, token_mask: npt.NDArray[np.bool_]) -> None:
        self.codes = self.codes[token_mask]
        self._lists = None

    def invalidate(self) -> None:
        self._lists = None

    def _inverted_lists(self, lengths: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        if self._lists is None:
            n_docs = len(lengths)
            doc_of_token = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
            pairs = np.unique(self.codes.astype(np.int64) * n_docs + doc_of_token)
            list_codes, list_docs = np.divmod(pairs, max(n_docs, 1))
            offsets = np.zeros(len(self.centroids) + 1, dtype=np.int64)
            np.cumsum(np.bincount(list_codes, minlength=len(self.centroids)), out=offsets[1:])
            self._lists = (offsets, list_docs)
        return self._lists

    # -- search ---------------------------------------------------------------------------------------
    def frozen(self, lengths: npt.NDArray[np.int64]) -> FrozenIndex:
        """What a search reads: centroids and inverted lists for these document lengths. Later changes to
        the index replace its arrays rather than writing into them, so a frozen index stays valid."""
        offsets, list_docs = self._inverted_lists(lengths)
        return FrozenIndex(self.centroids, offsets, list_docs, len(lengths), self.codes)

    def approximate_scores(
        self, query: npt.NDArray[np.float32], lengths: npt.NDArray[np.int64], n_probe: int
    ) -> npt.NDArray[np.float32]:
        """Approximate MaxSim of ``query`` for every document (see the module docstring)."""
        return self.frozen(lengths).approximate_scores(query, n_probe)


@dataclass(frozen=True)
class FrozenIndex:
    """A read-only view of a :class:`CentroidIndex` for one state of the store."""

    centroids: npt.NDArray[np.float32]
    offsets: npt.NDArray[np.int64]
    list_docs: npt.NDArray[np.int64]
    n_docs: int
    codes: npt.NDArray[np.int32] | None = None  # every token's centroid, when centroid interaction is wanted

    def approximate_scores(
        self, query: npt.NDArray[np.float32], n_probe: int, sims: npt.NDArray[np.float32] | None = None
    ) -> npt.NDArray[np.float32]:
        """Approximate MaxSim of ``query`` for every document (see the module docstring); ``sims`` is
        ``query @ centroids.T`` when the caller has it already.

        Written as the imputed floor of every query vector plus, per query vector, each probed
        document's gain over that floor; the gains go through one per-document buffer, reset after each
        query vector, so memory stays O(documents) (not query vectors x documents) and time O(list entries).
        """
        offsets, list_docs, n_docs, n_query = self.offsets, self.list_docs, self.n_docs, len(query)
        if sims is None:
            sims = query @ self.centroids.T  # (n_query, n_centroids)
        n_probe = min(n_probe, sims.shape[1])
        probe = np.argpartition(-sims, n_probe - 1, axis=1)[:, :n_probe]
        probe_sims = np.take_along_axis(sims, probe, axis=1)
        floor = probe_sims.min(axis=1)  # imputed for a document with no token in a probed centroid
        total = np.full(n_docs, floor.sum(dtype=np.float64), dtype=np.float64)
        best = np.zeros(n_docs, dtype=np.float32)
        for q in range(n_query):
            codes = probe[q]
            lens = offsets[codes + 1] - offsets[codes]
            local = np.cumsum(lens) - lens
            rows = np.repeat(offsets[codes] - local, lens) + np.arange(int(lens.sum()))
            docs = list_docs[rows]
            np.maximum.at(best, docs, np.repeat(probe_sims[q] - floor[q], lens))
            total[docs] += best[docs]  # repeated indices add once: the buffered semantics of fancy +=
            best[docs] = 0.0
        return total.astype(np.float32)

    def centroid_interaction(
        self,
        sims: npt.NDArray[np.float32],
        starts: npt.NDArray[np.int64],
        lengths: npt.NDArray[np.int64],
        docs: npt.NDArray[np.int64],
    ) -> npt.NDArray[np.float32]:
        """MaxSim of a query against the centroids of each of ``docs``' tokens (PLAID's centroid interaction;
        ``sims`` is ``query @ centroids.T``): every token counts, not only those under probed centroids."""
        assert self.codes is not None
        return centroid_maxsim(sims, self.codes, starts, lengths, docs)


def centroid_maxsim(
    sims: npt.NDArray[np.float32],
    codes: npt.NDArray[np.integer],
    starts: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    docs: npt.NDArray[np.int64],
) -> npt.NDArray[np.float32]:
    """Per document of ``docs``, the sum over query vectors of the best ``sims`` (query x centroids) among its
    tokens' codes: MaxSim with every token replaced by its centroid. Documents must hold tokens."""
    if not len(docs):
        return np.empty(0, dtype=np.float32)
    rows, local_starts = gather_rows(starts, lengths, docs)
    # gathered as rows of the transposed sims (one query's worth of floats per token, contiguous): about
    # twice as fast as taking columns of ``sims`` in a one-off timing at the Postgres haystack's shape
    per_token = np.ascontiguousarray(sims.T)[codes[rows]]  # (tokens of docs, n_query)
    return np.maximum.reduceat(per_token, local_starts, axis=0).sum(axis=1, dtype=np.float32)
