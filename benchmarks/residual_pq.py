"""Would product quantisation of the rotated residuals beat the ``rotated`` codec at 96 bytes per token?

A study for issue 8 (no codec of ragplug's yet meets recall@10 >= 0.95 at <= 96 B/token), on the SciFact
vectors that ``codecs_scifact.py`` encodes and caches. Both arms share the ``rotated`` codec's centroids and
its rotation (the principal basis of the residuals); they differ in how the rotated residual is coded:

- ``rotated``: the codec as it is: 0-8 bits per dimension by a Lagrangian allocation, one Lloyd-Max
  bucket shape per width (95 B: 2 B centroid id + 93 B);
- ``pq``: the dimensions, in variance order, cut into consecutive groups that reverse water-filling gives
  about equal bits (at most 16 dimensions each), as many groups as bytes left after the centroid id; each
  group is coded by the nearest of 256 codewords fitted by k-means (Euclidean, on a sample of residuals).
  The grouping and the k-means are the ``pq`` codec's own (``codecs._pq_groups``, ``_codewords``); this study keeps the
  rotated codec's basis so that the two arms differ only in how the residual is coded.

Reported: recall@10 of exact MaxSim over each arm's decoded vectors against float32 exact MaxSim (brute
force, no approximate first stage), nDCG@10, and the mean squared error of the decoded residuals.

    python benchmarks/residual_pq.py [--data ../shared/data/scifact] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _machine import cpu_flags, machine_info  # noqa: E402
from codecs_scifact import DEFAULT_CACHE, load_corpus  # noqa: E402

from ragplug.retrievers.late_interaction.codecs import (  # noqa: E402
    Codec,
    CodecConfig,
    _codewords,
    _nearest,
    _pq_groups,
)
from ragplug.retrievers.late_interaction.ivf import assign_codes, normalise  # noqa: E402
from ragplug.retrievers.late_interaction.twostage import top_k_exact  # noqa: E402

K = 10
CHUNK = 200_000


def recall_and_ndcg(
    decoded: np.ndarray,
    queries: list[np.ndarray],
    corpus: dict[str, Any],
    reference: list[list[int]],
    ids: list[str],
    qids: list[str],
    qrels: dict[str, dict[str, int]],
) -> dict[str, float]:
    from colbert_scifact import evaluate

    lengths = corpus["lengths"]
    starts = np.cumsum(lengths) - lengths
    ranked = [top_k_exact(q, decoded, starts, lengths, K) for q in queries]
    recall = np.mean([len({d for d, _ in r} & set(ref)) / K for r, ref in zip(ranked, reference, strict=True)])
    run = {qid: {ids[d]: s for d, s in r} for qid, r in zip(qids, ranked, strict=True)}
    return {"recall@10_exact": round(float(recall), 4), "ndcg@10": evaluate(qrels, run)["ndcg@10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data" / "scifact")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--token-bytes", type=int, default=96)
    parser.add_argument("--pq-sample", type=int, default=262_144, help="residuals the codewords are fitted on")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    ids, _, qids, qrels, corpus = load_corpus(
        argparse.Namespace(data=args.data, limit_docs=None, limit_queries=args.queries, cache=args.cache)
    )
    tokens = np.asarray(corpus["tokens"])
    queries = corpus["queries"][: args.queries]
    lengths = corpus["lengths"]
    starts = np.cumsum(lengths) - lengths
    reference = [[d for d, _ in top_k_exact(q, tokens, starts, lengths, K)] for q in queries]
    res: dict[str, Any] = {
        "benchmark": "residual_pq",
        "machine": {**machine_info(["numpy"]), "cpu_flags": cpu_flags()},
        "corpus": {"docs": len(ids), "tokens": len(tokens), "dim": tokens.shape[1], "queries": len(queries)},
        "settings": {"token_bytes": args.token_bytes, "pq_sample": args.pq_sample},
        "arms": {},
    }
    rng = np.random.default_rng(0)
    config = CodecConfig(kind="rotated", token_bytes=args.token_bytes)
    sample = tokens[np.sort(rng.choice(len(tokens), config.training_rows, replace=False))]
    t0 = time.perf_counter()
    codec = Codec.train(config, sample, n_tokens=len(tokens))
    res["rotated_train_s"] = round(time.perf_counter() - t0, 1)
    assert codec.centroids is not None
    prepared = np.concatenate([codec.prepare(tokens[i : i + CHUNK]) for i in range(0, len(tokens), CHUNK)])
    codes = np.concatenate(
        [assign_codes(prepared[i : i + CHUNK], codec.centroids) for i in range(0, len(tokens), CHUNK)]
    )
    residuals = prepared - codec.centroids[codes]
    prepared_queries = [codec.prepare(q) for q in queries]

    decoded = np.concatenate(
        [codec._unnormalised(codec.encode(prepared[i : i + CHUNK])) for i in range(0, len(tokens), CHUNK)]
    )
    mse = float(((decoded - prepared) ** 2).sum(axis=1).mean())
    res["arms"]["rotated"] = {
        "bytes_per_token": codec.bytes_per_token,
        "residual_mse": round(mse, 5),
        **recall_and_ndcg(normalise(decoded), prepared_queries, corpus, reference, ids, qids, qrels),
    }
    print("rotated", res["arms"]["rotated"], flush=True)

    code_bytes = np.dtype(codec.code_dtype).itemsize
    rows = np.sort(rng.choice(len(tokens), min(args.pq_sample, len(tokens)), replace=False))
    variance = (residuals[rows] ** 2).mean(axis=0)  # the rotation keeps dimensions by decreasing variance
    order = np.argsort(-variance, kind="stable")
    groups = [order[g] for g in _pq_groups(variance[order].astype(np.float64), args.token_bytes - code_bytes)]
    t0 = time.perf_counter()
    decoded = codec.centroids[codes]
    for group in groups:
        books = _codewords(np.ascontiguousarray(residuals[rows][:, group]), rng)
        for lo in range(0, len(tokens), CHUNK):
            part = residuals[lo : lo + CHUNK][:, group]
            decoded[lo : lo + CHUNK, group] += books[_nearest(part, books)]
    mse = float(((decoded - prepared) ** 2).sum(axis=1).mean())
    res["arms"]["pq"] = {
        "bytes_per_token": code_bytes + len(groups),
        "groups": len(groups),
        "group_widths": [len(g) for g in groups],
        "train_and_code_s": round(time.perf_counter() - t0, 1),
        "residual_mse": round(mse, 5),
        **recall_and_ndcg(normalise(decoded), prepared_queries, corpus, reference, ids, qids, qrels),
    }
    print("pq", {k: v for k, v in res["arms"]["pq"].items() if k != "group_widths"}, flush=True)
    from colbert_scifact import evaluate

    run = {
        qid: {ids[d]: s for d, s in top_k_exact(q, tokens, starts, lengths, K)}
        for qid, q in zip(qids, queries, strict=True)
    }
    res["float32_exact_ndcg@10"] = evaluate(qrels, run)["ndcg@10"]
    res["elapsed_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "residual_pq.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "residual_pq.md")


def write_markdown(res: dict[str, Any], path: Path) -> None:
    c, m = res["corpus"], res["machine"]
    lines = [
        "# Product quantisation of rotated residuals vs the rotated codec (SciFact)",
        "",
        f"{c['docs']:,} documents, {c['tokens']:,} tokens of {c['dim']} dims, {c['queries']} test queries; "
        f"exact MaxSim over decoded vectors against float32 exact (nDCG@10 {res['float32_exact_ndcg@10']}).",
        f"Machine: {m.get('cpu')} ({m.get('cpu_count')} cores), {m.get('date')}; run took {res['elapsed_s']} s.",
        "",
        "| arm | bytes/token | residual MSE | recall@10 vs float32 exact | nDCG@10 |",
        "|---|---|---|---|---|",
    ]
    for name, a in res["arms"].items():
        lines.append(
            f"| {name} | {a['bytes_per_token']} | {a['residual_mse']} | {a['recall@10_exact']} | {a['ndcg@10']} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
