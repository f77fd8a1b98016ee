"""How many candidates a compressed store must decode: centroid interaction before exact MaxSim, on SciFact.

A residual-coded memory store re-scores its approximate candidates by decoding their tokens; on SciFact
(256 candidates of 327 tokens each) that decoding made its approximate search 3.5-8x slower than float32's
(``benchmarks/codecs_scifact.py``). PLAID's answer is a third stage: rank the candidates by *centroid
interaction* (MaxSim with every token replaced by its centroid, from the codes alone, no decoding) and
decode only the ``n_rescore`` best. This script measures, for float32, residual codes at 2, 4 and 8 bits
and rotated codes at 96 B, recall@10 against float32 exact MaxSim, nDCG@10 and query latency, with every
candidate decoded (``n_rescore`` unset) and with 64 or 128 of them, all arms timed interleaved per query.

Usage::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/residual_rescoring.py --data ../shared/data/scifact

It reuses the encoded SciFact vectors cached by ``codecs_scifact.py`` (encoding them first if needed).
Results: ``<out>/residual_rescoring.json`` and ``.md``.
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from codecs_scifact import DEFAULT_CACHE, K, exact_reference, load_corpus, ms, quality  # noqa: E402

CODECS = {"float32": "float32", "residual-2bit": "residual", "rotated-96B": "rotated", "residual-4bit": "residual-4bit"}
CODECS["residual-8bit"] = "residual-8bit"
RESCORE = (None, 128, 64)


def build(spec: str, corpus: dict[str, Any], ids: list[str]) -> Any:
    """A memory store of the whole corpus under ``spec`` (one add, as ``from_texts`` does), index built."""
    from ragplug.retrievers.late_interaction import InMemoryMultiVectorStore, Record

    tokens, lengths = corpus["tokens"], corpus["lengths"]
    starts = np.cumsum(lengths) - lengths
    store = InMemoryMultiVectorStore(encoder=corpus["identity"], codec=spec)
    store.add([Record(ids[i], tokens[starts[i] : starts[i] + lengths[i]], {}) for i in range(len(ids))])
    if store.codec is None or store.codec.centroids is None:
        store.build_index()
    return store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data" / "scifact")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--codecs", default=",".join(CODECS))
    parser.add_argument("--limit-docs", type=int, default=None)
    parser.add_argument("--limit-queries", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from _machine import machine_info
    from codecs_scifact import cpu_flags
    from colbert_scifact import load
    from tqdm.auto import tqdm

    from ragplug.retrievers.late_interaction import MemorySearchOptions

    wall0 = time.perf_counter()
    res: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {**machine_info(["numpy", "ragplug"]), "cpu_flags": cpu_flags()},
        "load_avg": {"start": load()},
    }
    ids, _texts, qids, qrels, corpus = load_corpus(args)
    queries = corpus["queries"]
    res["corpus"] = {"docs": len(ids), "queries": len(qids), "n_tokens": int(corpus["lengths"].sum())}
    stores, builds = {}, {}
    for name in args.codecs.split(","):
        t0 = time.perf_counter()
        stores[name] = build(CODECS[name], corpus, ids)
        builds[name] = round(time.perf_counter() - t0, 1)
        print(f"[build] {name} {builds[name]} s", flush=True)
        gc.collect()
    reference, _ = exact_reference(stores["float32"], queries)
    arms = [(name, r) for name in stores for r in (RESCORE if name != "float32" else (None,))]
    rows = {name: {id_: i for i, id_ in enumerate(store.ids())} for name, store in stores.items()}
    out: dict[tuple[str, int | None], dict[str, Any]] = {a: {"ranked": {}, "wall": []} for a in arms}
    rng = np.random.default_rng(args.seed)
    for qi in tqdm(range(len(queries)), desc="search", unit="q"):
        for j in rng.permutation(len(arms)):
            name, n_rescore = arms[j]
            options = MemorySearchOptions(mode="approximate", n_rescore=n_rescore)
            t0 = time.perf_counter()
            hits = stores[name].search(queries[qi], k=K, options=options)
            out[arms[j]]["wall"].append(time.perf_counter() - t0)
            out[arms[j]]["ranked"][qi] = [rows[name][h.id] for h in hits]
    ref_p50 = ms(out[("float32", None)]["wall"])["p50_ms"]
    table = []
    for (name, n_rescore), got in out.items():
        row = {"codec": name, "n_rescore": n_rescore, "build_s": builds[name]}
        row.update(quality(got["ranked"], reference, ids, qids, qrels), **ms(got["wall"]))
        row["p50_vs_float32"] = round(row["p50_ms"] / ref_p50, 2)
        table.append(row)
    res["rows"] = table
    res["load_avg"]["end"] = load()
    res["wall_seconds"] = round(time.perf_counter() - wall0)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "residual_rescoring.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    write_markdown(res, args.out / "residual_rescoring.md")
    print((args.out / "residual_rescoring.md").read_text(encoding="utf-8"))


def write_markdown(res: dict[str, Any], path: Path) -> None:
    m = res["machine"]
    c = res["corpus"]
    lines = [
        "# Centroid interaction before decoding: candidates a compressed store re-scores (SciFact)",
        "",
        f"`{res['command']}` · wall time {res['wall_seconds']} s · load average {res['load_avg']}",
        "",
        f"Machine: {m.get('cpu', '')} ({m.get('cpu_count')} CPUs; flags {' '.join(m['cpu_flags'])}); versions "
        f"{m.get('versions')}. Corpus: {c['docs']} documents, {c['n_tokens']:,} tokens (MiniLM, 384 dims), "
        f"{c['queries']} test queries, k={K}; approximate search at the store's defaults (8 probes, 256 "
        "candidates); `n_rescore` unset: every candidate decoded and scored exactly; else the candidates ranked "
        "by centroid interaction and the best `n_rescore` decoded. All arms timed interleaved per query (random "
        "order); recall@10 against float32 exact MaxSim.",
        "",
        "| codec | n_rescore | recall@10 vs exact | nDCG@10 | p50 ms | p95 ms | p50 / float32's |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['codec']} | {r['n_rescore'] or 'all'} | {r['recall@10_vs_exact']:.3f} | {r['ndcg@10']:.4f} | "
            f"{r['p50_ms']} | {r['p95_ms']} | {r['p50_vs_float32']} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
