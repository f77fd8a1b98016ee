"""Where the Postgres store's codes pipeline loses exact MaxSim's top 10, stage by stage, in numpy.

On the 100k-document haystack of ``pgvector_scale.py`` (same vectors, projection and distractors; its
encoded passages are reused from the cache), for the first 50 SciFact test queries: 8,192 k-means
centroids; stage 1 ranks documents by a sparse bag of centroids (what the version 2 Postgres ``bag``
HNSW index held), keeping ``N``; stage 2 ranks those by centroid interaction (MaxSim against their tokens'
centroids), keeping ``M``; stage 3 scores the ``M`` exactly with float32 vectors, or with vectors decoded
from 2-, 4- or 8-bit residuals (Lloyd-Max buckets, as the codec trains them). Reported: the share of
exact MaxSim's top 10 still present after each stage (``stageN``, ``stageM``) and in the final top 10
(``fp32``, ``b2``, ``b4``, ``b8``). Brute force, no index: the HNSW's own loss comes on top (measured by
``pgvector_scale.py``).

    python benchmarks/codes_pipeline_recall.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, machine_info
from pgvector_scale import REPO, haystack_matrices

from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig, _buckets, pack_residuals
from ragplug.retrievers.late_interaction.ivf import assign_codes
from ragplug.retrievers.late_interaction.maxsim import maxsim_all, maxsim_subset

N_CENTROIDS = 8192
SETTINGS = ((8, 1000, 200), (8, 1000, 400), (16, 2000, 400), (8, 400, 100))  # probes, N, M


class _Decoded:
    """Rows decoded on the fly from codes and packed residuals (what a residual store scores)."""

    def __init__(self, codec: Codec, codes: np.ndarray, packed: np.ndarray) -> None:
        self.codec, self.codes, self.packed = codec, codes, packed

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, rows: Any) -> np.ndarray:
        return self.codec.decode({"codes": self.codes[rows], "residuals": self.packed[rows]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--cache", type=Path, default=REPO / ".ragplug-cache" / "pgvector-scale")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import scipy.sparse as sp

    started = time.perf_counter()
    mats, query_mats = haystack_matrices(args.data, args.cache, 100_000, args.queries)
    lengths = np.array([len(m) for m in mats])
    starts = np.cumsum(lengths) - lengths
    vectors = np.concatenate(mats)
    del mats
    exact = [set(np.argsort(-maxsim_all(q, vectors, starts, lengths))[:10]) for q in query_mats]

    base = Codec.train(CodecConfig(kind="residual", nbits=2, n_centroids=N_CENTROIDS), vectors, n_tokens=len(vectors))
    centroids = base.centroids
    assert centroids is not None
    codes = np.empty(len(vectors), np.int32)
    for lo in range(0, len(vectors), 1 << 17):
        codes[lo : lo + (1 << 17)] = assign_codes(vectors[lo : lo + (1 << 17)], centroids)
    sample = np.random.default_rng(0).choice(len(vectors), 200_000, replace=False)
    residual_sample = vectors[sample] - centroids[codes[sample]]
    decoded = {}
    for nbits in (2, 4, 8):
        cutoffs, weights = _buckets(residual_sample, 2**nbits)
        config = CodecConfig(kind="residual", nbits=nbits, n_centroids=N_CENTROIDS)
        codec = Codec(config, 128, centroids=centroids, cutoffs=cutoffs, weights=weights)
        packed = np.empty((len(vectors), 128 * nbits // 8), np.uint8)
        for lo in range(0, len(vectors), 1 << 17):
            res = vectors[lo : lo + (1 << 17)] - centroids[codes[lo : lo + (1 << 17)]]
            buckets = np.searchsorted(cutoffs, res, side="left").astype(np.uint8)
            packed[lo : lo + len(res)] = pack_residuals(buckets, nbits)
        decoded[f"b{nbits}"] = _Decoded(codec, codes, packed)
    doc_of = np.repeat(np.arange(len(lengths)), lengths)
    bags = sp.csr_matrix(
        (np.ones(len(codes), np.float32), (doc_of, codes.astype(np.int64))), shape=(len(lengths), N_CENTROIDS)
    )
    bags.sum_duplicates()
    bags.data[:] = 1.0

    table = {}
    for probes, n_keep, m_keep in SETTINGS:
        found: dict[str, list[float]] = {"stageN": [], "stageM": [], "fp32": [], "b2": [], "b4": [], "b8": []}
        for q, truth in zip(query_mats, exact, strict=True):
            sims = q @ centroids.T
            top = np.argpartition(-sims, probes - 1, axis=1)[:, :probes]
            probed = np.take_along_axis(sims, top, axis=1)
            weights_q = np.zeros(N_CENTROIDS, np.float32)
            np.add.at(weights_q, top.ravel(), (probed - probed.min(1, keepdims=True)).ravel())
            cand = np.argpartition(-(bags @ weights_q), n_keep - 1)[:n_keep]
            found["stageN"].append(len(truth & set(cand)) / 10)
            flat = np.concatenate([codes[starts[d] : starts[d] + lengths[d]] for d in cand])
            local = np.cumsum(lengths[cand]) - lengths[cand]
            interaction = np.maximum.reduceat(sims[:, flat], local, axis=1).sum(0)
            keep = cand[np.argsort(-interaction)[:m_keep]]
            found["stageM"].append(len(truth & set(keep)) / 10)
            for name, source in (("fp32", vectors), *decoded.items()):
                scores = maxsim_subset(q, source, starts, lengths, keep)
                found[name].append(len(truth & set(keep[np.argsort(-scores)[:10]])) / 10)
        label = f"probes={probes} N={n_keep} M={m_keep}"
        table[label] = {k: round(float(np.mean(v)), 4) for k, v in found.items()}
        print(label, table[label], flush=True)
    res = {
        "benchmark": "codes_pipeline_recall",
        "machine": {**machine_info(["numpy", "torch", "transformers"]), "cpu_flags": cpu_flags()},
        "haystack": {
            "documents": len(lengths),
            "tokens": int(lengths.sum()),
            "token_dim": 128,
            "queries": len(query_mats),
        },
        "n_centroids": N_CENTROIDS,
        "recall_of_exact_top10": table,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codes_pipeline_recall.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
