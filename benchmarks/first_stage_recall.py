"""How well one-vector-per-document first stages find exact MaxSim's top 10, in the pgvector_scale haystack.

A database's vector index holds one vector per record, so the Postgres store's first stage proposes
candidates from a summary of each document; exact MaxSim then re-scores them. This script measures, by
brute force in numpy (no index, so only the summary itself is judged), the share of exact MaxSim's top 10
found among a first stage's top ``n`` candidates, on the same 100k-document haystack and vectors as
``pgvector_scale.py`` (its encoded passages are reused from the cache), for the first 80 SciFact test
queries:

- ``mean``: the L2-normalised mean token vector (the Postgres store's default);
- ``fde``: a MUVERA fixed-dimensional encoding, 1,792 dims (``SummaryConfig(kind="fde")``);
- ``segments4``: the best of four segment means per document (four vectors per document);
- ``centroids``: a sparse bag of k-means centroids per document (4,096 centroids), the query weighting each
  of its tokens' 8 nearest centroids by the similarity minus that token's weakest probed one: one inner
  product, so it fits a ``sparsevec`` index.

    python benchmarks/first_stage_recall.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info
from pgvector_scale import REPO, haystack_matrices

from ragplug.retrievers.late_interaction.fde import FDEConfig, FixedDimensionalEncoder
from ragplug.retrievers.late_interaction.ivf import ApproximateConfig, CentroidIndex
from ragplug.retrievers.late_interaction.maxsim import maxsim_all


def _norm(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--n-docs", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=80)
    parser.add_argument("--cache", type=Path, default=REPO / ".ragplug-cache" / "pgvector-scale")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import scipy.sparse as sp

    started = time.perf_counter()
    mats, query_mats = haystack_matrices(args.data, args.cache, args.n_docs, args.queries)
    lengths = np.array([len(m) for m in mats])
    starts = np.cumsum(lengths) - lengths
    vectors = np.concatenate(mats)
    exact = [np.argsort(-maxsim_all(q, vectors, starts, lengths))[:10] for q in query_mats]

    def recall(score, n: int) -> float:
        return round(
            float(
                np.mean(
                    [len(set(e) & set(np.argsort(-score(q))[:n])) / 10 for q, e in zip(query_mats, exact, strict=True)]
                )
            ),
            4,
        )

    means = _norm(np.stack([m.mean(0) for m in mats]))
    fde = FixedDimensionalEncoder(128, FDEConfig())
    encodings = fde.documents(mats)
    segments = np.stack(
        [
            _norm(np.stack([p.mean(0) for p in np.array_split(m, 4)]))
            if len(m) >= 4
            else np.repeat(_norm(m.mean(0))[None], 4, 0)
            for m in mats
        ]
    )
    index = CentroidIndex.fit(vectors, ApproximateConfig(n_centroids=4096))
    doc_of = np.repeat(np.arange(len(mats)), lengths)
    bags = sp.csr_matrix((np.ones(len(index.codes), np.float32), (doc_of, index.codes)), shape=(len(mats), 4096))
    bags.sum_duplicates()
    bags.data[:] = 1.0

    def centroid_query(q: np.ndarray) -> np.ndarray:
        sims = q @ index.centroids.T
        top = np.argsort(-sims, axis=1)[:, :8]
        probed = np.take_along_axis(sims, top, axis=1)
        weights = np.zeros(4096, np.float32)
        np.add.at(weights, top.ravel(), (probed - probed.min(axis=1, keepdims=True)).ravel())
        return bags @ weights

    stages = {
        "mean": lambda q: means @ _norm(q.mean(0)),
        "fde": lambda q: encodings @ fde.query(q),
        "segments4": lambda q: (segments @ _norm(q.mean(0))).max(axis=1),
        "centroids": centroid_query,
    }
    table = {name: {f"top{n}": recall(score, n) for n in (100, 256, 400)} for name, score in stages.items()}
    res = {
        "benchmark": "first_stage_recall",
        "machine": machine_info(["numpy", "torch", "transformers"]),
        "haystack": {
            "documents": len(mats),
            "tokens": int(lengths.sum()),
            "token_dim": 128,
            "queries": len(query_mats),
        },
        "recall_of_exact_top10": table,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "first_stage_recall.json").write_text(json.dumps(res, indent=1))
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
