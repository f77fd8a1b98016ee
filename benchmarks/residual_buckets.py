"""Residual bucket placement on SciFact: colbert-ai's quantile buckets against Lloyd-Max, at 1, 2, 4 and 8 bits.

The residual codec keeps, per token, a centroid id and each dimension's residual as a bucket index. Where
the buckets lie decides the decoded vectors' error. colbert-ai (and fast-plaid) cut at quantiles of the
training residuals and decode a bucket to its median, which leaves each tail one wide bucket; ragplug's
codec fits them by Lloyd-Max (1-D k-means, ``codecs._buckets``). Both share everything else: the same
4,096 spherical k-means centroids, the same codes, the same bit layout and bytes per token.

On SciFact's 5,183 abstracts encoded by the offline MiniLM (384 dims, the cache ``codecs_scifact.py``
writes), for the first ``--queries`` test claims: squared decoding error, recall@10 against exact float32
MaxSim, and nDCG@10 (exact MaxSim over the decoded vectors; the candidate stage is not involved).

    python benchmarks/residual_buckets.py --data ../shared/data/scifact [--queries 100]
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
from codecs_scifact import DEFAULT_CACHE, encoded_corpus
from colbert_scifact import evaluate, load_beir

from ragplug.retrievers.late_interaction.codecs import Codec, CodecConfig, _buckets, pack_residuals
from ragplug.retrievers.late_interaction.ivf import assign_codes
from ragplug.retrievers.late_interaction.maxsim import maxsim_all

REPO = Path(__file__).resolve().parents[1]
BLOCK = 1 << 16


def quantile_buckets(values: np.ndarray, n_buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """colbert-ai's buckets: cutoffs at quantiles, each bucket decoded to its median."""
    flat = values.ravel()
    cutoffs = np.quantile(flat, np.arange(1, n_buckets) / n_buckets).astype(np.float32)
    weights = np.quantile(flat, np.arange(n_buckets) / n_buckets + 0.5 / n_buckets).astype(np.float32)
    return cutoffs, weights


def decoded(vectors: np.ndarray, codec: Codec, codes: np.ndarray) -> np.ndarray:
    """Every token encoded with the shared codes and the codec's buckets, then decoded, block by block."""
    assert codec.centroids is not None and codec.cutoffs is not None
    out = np.empty(vectors.shape, dtype=np.float32)
    for lo in range(0, len(vectors), BLOCK):
        rows = slice(lo, lo + BLOCK)
        residuals = np.asarray(vectors[rows]) - codec.centroids[codes[rows]]
        buckets = np.searchsorted(codec.cutoffs, residuals, side="left").astype(np.uint8)
        packed = pack_residuals(buckets, codec.config.nbits)
        out[rows] = codec.decode({"codes": codes[rows], "residuals": packed})
    return out


def ranking(queries: list[np.ndarray], vectors: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list:
    return [np.argsort(-maxsim_all(q, vectors, starts, lengths))[:10] for q in queries]


def recall(ranked: list, exact: list) -> float:
    return round(float(np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ranked, exact, strict=True)])), 4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--bits", default="1,2,4,8")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    started = time.perf_counter()
    ids, texts, queries, qrels = load_beir(args.data, None)
    qids = sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)
    corpus = encoded_corpus(args.cache, ids, texts, [queries[q] for q in qids])  # the cache holds all 300
    qids = qids[: args.queries]
    query_mats = corpus["queries"][: args.queries]
    qrels = {q: qrels[q] for q in qids}
    vectors = np.ascontiguousarray(corpus["tokens"], dtype=np.float32)
    lengths = corpus["lengths"]
    starts = np.cumsum(lengths) - lengths

    def run_of(ranked: list) -> dict[str, dict[str, float]]:
        return {q: {ids[d]: 10.0 - r for r, d in enumerate(top)} for q, top in zip(qids, ranked, strict=True)}

    exact = ranking(query_mats, vectors, starts, lengths)
    rows: dict[str, Any] = {"float32": {"bytes_per_token": 4 * vectors.shape[1], "mse": 0.0, "recall@10": 1.0}}
    rows["float32"]["ndcg@10"] = evaluate(qrels, run_of(exact))["ndcg@10"]
    print("float32", rows["float32"], flush=True)
    base = Codec.train(CodecConfig(kind="residual", nbits=2), vectors, n_tokens=len(vectors))
    centroids = base.centroids
    assert centroids is not None
    codes = np.concatenate([assign_codes(vectors[lo : lo + BLOCK], centroids) for lo in range(0, len(vectors), BLOCK)])
    sample = np.sort(np.random.default_rng(0).choice(len(vectors), CodecConfig().kmeans_sample, replace=False))
    residual_sample = vectors[sample] - centroids[codes[sample]]
    for nbits in (int(b) for b in args.bits.split(",")):
        for name, fit in (("quantile (colbert-ai)", quantile_buckets), ("Lloyd-Max (ragplug)", _buckets)):
            cutoffs, weights = fit(residual_sample, 2**nbits)
            config = CodecConfig(kind="residual", nbits=nbits, n_centroids=len(centroids))
            codec = Codec(config, vectors.shape[1], centroids=centroids, cutoffs=cutoffs, weights=weights)
            approx = decoded(vectors, codec, codes)
            ranked = ranking(query_mats, approx, starts, lengths)
            row = {
                "bytes_per_token": codec.bytes_per_token,
                "mse": round(float(((approx[::50] - vectors[::50]) ** 2).sum(axis=1).mean()), 5),
                "recall@10": recall(ranked, exact),
                "ndcg@10": evaluate(qrels, run_of(ranked))["ndcg@10"],
            }
            rows[f"{nbits}-bit, {name}"] = row
            print(f"{nbits}-bit, {name}", row, flush=True)
            del approx
    res = {
        "benchmark": "residual_buckets",
        "machine": {**machine_info(["numpy"]), "cpu_flags": cpu_flags()},
        "corpus": {"docs": len(ids), "tokens": len(vectors), "dim": vectors.shape[1], "queries": len(qids)},
        "n_centroids": len(centroids),
        "rows": rows,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "residual_buckets.json").write_text(json.dumps(res, indent=1))
    lines = [
        "# Residual buckets: colbert-ai's quantiles vs Lloyd-Max (SciFact, MiniLM tokens)",
        "",
        f"{len(ids):,} documents, {len(vectors):,} tokens of {vectors.shape[1]} dims, {len(centroids):,} centroids "
        f"shared by every row; first {len(qids)} test claims; exact MaxSim over the decoded vectors. "
        f"{res['machine'].get('cpu')}, {res['machine'].get('date')}; {res['elapsed_s']} s.",
        "",
        "| codec | bytes/token | squared error | recall@10 vs float32 | nDCG@10 |",
        "|---|---|---|---|---|",
        *(
            f"| {name} | {r['bytes_per_token']} | {r['mse']} | {r['recall@10']} | {r['ndcg@10']} |"
            for name, r in rows.items()
        ),
    ]
    (args.out / "residual_buckets.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
