"""Query latency on a busy CPU: torch's default thread team versus ``query_threads=1`` (issue 8, section 5).

Builds the demo index as ``ragplug demo`` does (A Christmas Carol in 234 passages, the offline
all-MiniLM-L6-v2, the LangChain retriever with k=3), then times, for the old policy (``query_threads=None``:
torch's default team) and the new one (``query_threads=1``):

* query encoding of one query, and of eight at once;
* a whole retriever ``invoke`` (encoding + exact MaxSim search + LangChain documents);

quiet, and beside a competing CPU-bound process (a pure-Python loop, one core), in alternating rounds;
within a phase the two policies alternate call by call, so drift in the machine's load hits both alike.
With threadpoolctl installed it also times the search alone (MaxSim over the index, no torch) with numpy's
BLAS at its default thread count and at 1, to see whether BLAS threads need the same treatment.

Targets, new policy: loaded p50 within 2x of the quiet p50; quiet p50 no worse than the old policy's.
Results: benchmarks/results/busy_latency.{json,md}.

    python benchmarks/busy_latency.py [--rounds 2] [--n 12]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, machine_info

REPO = Path(__file__).resolve().parents[1]
OLD, NEW = "old (torch default)", "new (query_threads=1)"
POLICIES = {OLD: None, NEW: 1}
TARGET_LOAD_RATIO = 2.0


def spin(stop: Any, own_session: bool) -> None:
    """The competing process: pure Python on one core until told to stop. In its own session by default,
    as another application or a database would be: with the kernel's autogroup scheduling, a process left
    in the benchmark's session would share the benchmark's CPU quota instead of taking a core of its own."""
    if own_session:
        os.setsid()
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def control_work() -> int:
    """Fixed single-threaded pure-Python work: how much the competitor slows any work, threads aside."""
    x = 0
    for i in range(150_000):
        x += i
    return x


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (0.0 where /proc has none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat; (0, 0) where there is none."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0, 0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return 1000 * (time.perf_counter() - t)


def p50_p95(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))], 2),
        "n": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="quiet + loaded phase pairs")
    parser.add_argument("--n", type=int, default=12, help="iterations per phase (each times every measurement)")
    parser.add_argument("--same-session", action="store_true", help="keep the competitor in this session")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()

    import torch

    from ragplug.demo import book_passages, demo_questions, offline_model
    from ragplug.plugins.langchain import ColBERTRetriever
    from ragplug.retrievers.colbert import ColBERTEncoder

    try:
        from threadpoolctl import ThreadpoolController

        blas: Any = ThreadpoolController()
    except ImportError:
        blas = None

    started = time.perf_counter()
    encoder = ColBERTEncoder(offline_model(), device="cpu")
    passages = book_passages()
    t0 = time.perf_counter()
    retriever = ColBERTRetriever.from_texts(
        [p.text for p in passages],
        metadatas=[p.metadata for p in passages],
        ids=[f"p{i:04d}" for i in range(len(passages))],
        model=encoder,
        k=3,
    )
    build_s = time.perf_counter() - t0
    questions = demo_questions()
    store = retriever.index.store
    encoded = encoder.encode_queries(questions)
    options = store.search_options.from_kwargs()
    eight = [questions[i % len(questions)] for i in range(8)]

    def measurements(i: int) -> dict[str, Callable[[], Any]]:
        q = questions[i % len(questions)]
        return {
            "control: fixed pure-Python work": control_work,
            "query encoding (1 query)": lambda: encoder.encode_queries([q]),
            "query encoding (8 queries)": lambda: encoder.encode_queries(eight),
            "invoke (k=3)": lambda: retriever.invoke(q),
        }

    lat: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    phases: list[dict[str, Any]] = []
    ctx = mp.get_context("spawn")
    for threads in POLICIES.values():  # warm-up
        encoder.query_threads = threads
        for fn in measurements(0).values():
            fn()
    for round_ in range(args.rounds):
        for load in ("quiet", "loaded"):
            stop = ctx.Event()
            competitor = None
            if load == "loaded":
                competitor = ctx.Process(target=spin, args=(stop, not args.same_session), daemon=True)
                competitor.start()
                time.sleep(1.0)
            busy0, total0 = cpu_ticks()
            spun0 = process_cpu_s(competitor.pid) if competitor and competitor.pid else 0.0
            t_phase = time.perf_counter()
            for i in range(args.n):
                order = list(POLICIES.items()) if i % 2 == 0 else list(POLICIES.items())[::-1]
                for name, threads in order:
                    encoder.query_threads = threads
                    for what, fn in measurements(i).items():
                        lat[load][name][what].append(timed(fn))
                if blas is not None:  # the search alone (no torch), BLAS at its default threads and at 1
                    query = encoded[i % len(encoded)]
                    for limit in (None, 1) if i % 2 == 0 else (1, None):
                        label = "search only, BLAS " + ("default threads" if limit is None else "1 thread")
                        with nullcontext() if limit is None else blas.limit(limits=limit, user_api="blas"):
                            lat[load][NEW][label].append(
                                timed(lambda query=query: store.search_batch([query], k=3, options=options))
                            )
            busy1, total1 = cpu_ticks()
            spun = (process_cpu_s(competitor.pid) - spun0) if competitor and competitor.pid else 0.0
            if competitor is not None:
                stop.set()
                competitor.join(timeout=10)
            phases.append(
                {
                    "round": round_,
                    "phase": load,
                    "seconds": round(time.perf_counter() - t_phase, 1),
                    "competitor_cores": round(spun / (time.perf_counter() - t_phase), 2),
                    "machine_cpu_busy_pct": round(100 * (busy1 - busy0) / max(1, total1 - total0), 1),
                    "loadavg_1min_after": round(os.getloadavg()[0], 2),
                }
            )
            print(json.dumps(phases[-1]), flush=True)
    encoder.query_threads = 1

    results: dict[str, Any] = {
        "benchmark": "busy_latency",
        "machine": {
            **machine_info(["numpy", "torch", "transformers", "threadpoolctl", "ragplug"]),
            "cpu_flags": cpu_flags(),
            "torch_threads": torch.get_num_threads(),
            "thread_pools": blas.info() if blas is not None else None,
        },
        "settings": {
            "rounds": args.rounds,
            "n_per_phase": args.n,
            "competitor_session": "same" if args.same_session else "own",
            "passages": len(passages),
            "k": 3,
        },
        "index": {"passages": len(store), "build_s": round(build_s, 1)},
        "phases": phases,
        "latency": {
            load: {name: {what: p50_p95(v) for what, v in per.items()} for name, per in by_policy.items()}
            for load, by_policy in lat.items()
        },
    }
    new, old = NEW, OLD
    checks = []
    for what in ("query encoding (1 query)", "invoke (k=3)"):
        quiet_new = results["latency"]["quiet"][new][what]["p50_ms"]
        loaded_new = results["latency"]["loaded"][new][what]["p50_ms"]
        quiet_old = results["latency"]["quiet"][old][what]["p50_ms"]
        checks.append(
            {
                "target": f"{what}: loaded p50 within {TARGET_LOAD_RATIO:g}x of quiet p50 (new policy)",
                "value": f"{loaded_new:.1f} / {quiet_new:.1f} ms = {loaded_new / quiet_new:.2f}x",
                "pass": loaded_new <= TARGET_LOAD_RATIO * quiet_new,
            }
        )
        checks.append(
            {
                "target": f"{what}: quiet p50 no worse than the old policy's",
                "value": f"new {quiet_new:.1f} ms vs old {quiet_old:.1f} ms",
                "pass": quiet_new <= quiet_old,
            }
        )
    results["targets"] = checks
    results["runtime_s"] = round(time.perf_counter() - started, 1)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "busy_latency.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "busy_latency.md").write_text(report(results))
    print(report(results))
    for check in checks:
        print(f"{'PASS' if check['pass'] else 'FAIL'}  {check['target']}: {check['value']}")


def report(res: dict[str, Any]) -> str:
    m = res["machine"]
    blas = ", ".join(f"{b['internal_api']} {b['num_threads']} threads" for b in (m["thread_pools"] or [])) or "unknown"
    lines = [
        "# Query latency on a busy CPU (issue 8, section 5)",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores; flags {' '.join(m['cpu_flags'])}), {m['memory_gb']} GB, "
        f"GPU: {m['gpu'] or 'none'}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + "; "
        f"torch threads {m['torch_threads']}, numpy BLAS/OpenMP pools: {blas}; {m['date']}.",
        "",
        f"The machine has {m['cpu_count']} cores and is shared: other sessions' work (test suites, builds) may "
        "have been running during any phase, so 'quiet' means 'without our competing process', not idle. The "
        "machine-wide CPU use of each phase (all processes, from /proc/stat) is listed below; compare ratios "
        "within this run, not with other runs.",
        "",
        f"Demo index: {res['index']['passages']} passages of A Christmas Carol, offline all-MiniLM-L6-v2, built in "
        f"{res['index']['build_s']} s; LangChain `ColBERTRetriever`, k=3, exact MaxSim. 'loaded': a second process "
        f"spinning a pure-Python loop, in {res['settings']['competitor_session']} session (its CPU use, in cores, "
        "is in the phase table). The control row is fixed pure-Python work: how much the competitor slows "
        "single-threaded work on this machine now, threads aside. Each phase runs "
        f"{res['settings']['n_per_phase']} iterations, the two policies alternating call by call; "
        f"{res['settings']['rounds']} rounds of (quiet, loaded), figures pooled over rounds. "
        f"Run took {res['runtime_s']} s.",
        "",
        "| round | phase | seconds | competitor CPU (cores) | machine CPU busy | 1-min load after |",
        "|---|---|---|---|---|---|",
    ]
    for p in res["phases"]:
        lines.append(
            f"| {p['round']} | {p['phase']} | {p['seconds']} | {p['competitor_cores']} | "
            f"{p['machine_cpu_busy_pct']}% | {p['loadavg_1min_after']} |"
        )
    cores = [p["competitor_cores"] for p in res["phases"] if p["phase"] == "loaded"]
    if cores and min(cores) < 0.8:
        lines += [
            "",
            f"The competitor got only {min(cores)}{'' if min(cores) == max(cores) else f'-{max(cores)}'} of a core: "
            "other work kept the machine saturated, "
            "so 'loaded' added less than one busy core and 'quiet' was itself busy.",
        ]
    lines += [
        "",
        "| measurement | policy | quiet p50 / p95 ms | loaded p50 / p95 ms | loaded / quiet p50 |",
        "|---|---|---|---|---|",
    ]
    quiet, loaded = res["latency"]["quiet"], res["latency"]["loaded"]
    whats = list(dict.fromkeys(w for per in quiet.values() for w in per))
    for what in whats:
        for policy in quiet:
            if what not in quiet[policy]:
                continue
            q, lo = quiet[policy][what], loaded[policy][what]
            lines.append(
                f"| {what} | {policy} | {q['p50_ms']:.1f} / {q['p95_ms']:.1f} | {lo['p50_ms']:.1f} / "
                f"{lo['p95_ms']:.1f} | {lo['p50_ms'] / q['p50_ms']:.2f}x |"
            )
    lines += ["", "Targets (new policy):", ""]
    for check in res["targets"]:
        lines.append(f"- {'PASS' if check['pass'] else 'FAIL'}: {check['target']}: {check['value']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
