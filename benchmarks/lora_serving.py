"""Serving benchmark for ragplug's LoRA engine, on a randomly initialised model of a real size.

The model has Qwen2.5-0.5B's shapes (24 layers, hidden 896, vocab 151,936) with random weights: speed
depends on shapes, not on what the weights learned. Four random LoRA adapters (r=16 on q/k/v/o).

Measured in one run, as ratios against references measured in the same run:
* 8 concurrent requests over 4 adapters (2 each), in bf16 and fp32: ragplug's mixed-adapter batch
  (segmented LoRA, one ``generate_batch`` call; the same through the scheduler from 8 threads; and with
  peft's ``adapter_names`` loop) versus one adapter at a time with switching (``set_adapter`` + a plain
  peft ``generate`` per adapter, and the engine serving one adapter per call), and versus one request at
  a time;
* a single adapter merged into the weights versus unmerged; bf16 versus fp32;
* grammar-constrained decoding (a JSON schema) versus free decoding, per generated token, at a 32-token
  budget (every step near the end of the budget, where candidates are checked) and at the default 256;
* adapter load, switch, merge and unmerge times; the LM head on a strided versus a contiguous input.

Targets: mixed batches >= 3x the switching baseline's throughput; constrained decoding <= 10% overhead
per token. Results: benchmarks/results/lora_serving.{json,md} (``--render`` rewrites the Markdown from
the JSON files; ``--only-serving --new-tokens N`` and ``--tokenizer-data DIR --only-constrained`` add
their own JSON files, which the Markdown includes).

    python benchmarks/lora_serving.py [--dtype bfloat16] [--new-tokens 32] [--repeat 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "ragplug" / "data" / "a_christmas_carol_pg24022.txt"
ADAPTERS = ["a0", "a1", "a2", "a3"]


def training_text(data: Path | None) -> list[str]:
    """Text for the tokenizer: the bundled book, plus SciFact and 2WikiMultihopQA passages when given."""
    lines = TEXT.read_text(encoding="utf-8").splitlines()
    if data is not None:
        for row in (data / "scifact" / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
            item = json.loads(row)
            lines.append(f"{item.get('title', '')} {item.get('text', '')}")
        for item in json.loads((data / "2wikimultihopqa" / "corpus.json").read_text(encoding="utf-8")):
            lines.append(f"{item.get('title', '')} {item.get('text', '')}")
    return lines


def build(cache: Path, layers: int, vocab_target: int, data: Path | None = None) -> Path:
    """Tokenizer (byte-level BPE trained on the bundled book) + random Qwen2.5-0.5B-shaped model + adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast, Qwen2Config

    base = cache / (f"base-{layers}" + ("-bigvocab" if data is not None else ""))
    if (base / "model.safetensors").exists() or (base / "model.safetensors.index.json").exists():
        return base
    base.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(training_text(data), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}"
        "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
    )
    fast.save_pretrained(base)
    config = Qwen2Config(
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=layers,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    model.save_pretrained(base)
    for i, name in enumerate(ADAPTERS):
        torch.manual_seed(100 + i)
        peft_model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        )
        with torch.no_grad():
            for pname, param in peft_model.named_parameters():
                if "lora_B" in pname:
                    param.normal_(0, 0.02)
        peft_model.save_pretrained(base.parent / f"adapter-{base.name}-{name}")
        model = peft_model.unload()
    return base


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-words", type=int, default=48)
    parser.add_argument("--vocab", type=int, default=151646, help="BPE vocabulary size to train (at most)")
    parser.add_argument("--cache", type=Path, default=ROOT / ".ragplug-cache" / "lora-bench")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--tokenizer-data",
        type=Path,
        default=None,
        help="shared data folder: train the tokenizer on SciFact + 2WikiMultihopQA too (a larger vocabulary)",
    )
    parser.add_argument("--only-constrained", action="store_true", help="measure only constrained decoding")
    parser.add_argument("--only-serving", action="store_true", help="measure only mixed vs switching (--dtype)")
    parser.add_argument("--render", action="store_true", help="rewrite lora_serving.md from the JSON files in --out")
    parser.add_argument(
        "--dtype",
        choices=["bfloat16", "float32"],
        default="bfloat16",
        help="dtype of the serving measurements (Qwen2.5 ships bf16; fp32 is also timed for mixed vs switching)",
    )
    args = parser.parse_args()
    if args.render:
        write_markdown(args.out, json.loads((args.out / "lora_serving.json").read_text()))
        return

    from ragplug.adapters.lora import GenerationConfig, GenerationRequest, LoadConfig, LoRAModel

    t0 = time.perf_counter()
    base = build(args.cache, args.layers, args.vocab, args.tokenizer_data)
    print(f"model ready in {time.perf_counter() - t0:.1f}s: {base}")
    results: dict = {"machine": machine_info(["torch", "transformers", "peft", "xgrammar", "ragplug"])}
    results["setup"] = {
        "model": f"random Qwen2 with Qwen2.5-0.5B shapes, {args.layers} layers",
        "new_tokens": args.new_tokens,
        "requests": 8,
        "adapters": 4,
        "lora": "r=16 on q/k/v/o",
        "repeat": args.repeat,
        "dtype": args.dtype,
    }

    # idle_exit_s=None: the scheduler thread stays, so every row is timed in the same thread state (see below)
    load = LoadConfig(dtype=args.dtype, batch_window_ms=50, max_batch_size=8, idle_exit_s=None)
    t_load0 = time.perf_counter()
    engine = LoRAModel(base, load=load)
    results["base_load_s"] = time.perf_counter() - t_load0
    load_times = []
    for name in ADAPTERS:
        t = time.perf_counter()
        engine.add_adapter(name, base.parent / f"adapter-{base.name}-{name}")
        load_times.append(time.perf_counter() - t)
    results["adapter_load_s"] = statistics.median(load_times)
    results["params"] = sum(p.numel() for p in engine.model.get_base_model().parameters())
    results["tokenizer_vocab"] = len(engine.tokenizer)

    words = TEXT.read_text(encoding="utf-8").split()[2000 : 2000 + args.prompt_words]
    prompt = engine.render([{"role": "user", "content": " ".join(words)}])
    fixed = GenerationConfig(max_new_tokens=args.new_tokens)

    def total_tokens(results_list) -> int:
        return sum(r.completion_tokens for r in results_list)

    if args.only_serving:  # the mixed vs switching table alone, e.g. at another answer length
        results["serving"] = {args.dtype: serving(engine, prompt, fixed, args)}
        engine.close()
        args.out.mkdir(parents=True, exist_ok=True)
        name = f"lora_serving_only_{args.dtype}_{args.new_tokens}_tokens.json"
        (args.out / name).write_text(json.dumps(results, indent=1))
        return
    if not args.only_constrained:
        results["serving"] = {args.dtype: serving(engine, prompt, fixed, args)}
        other = "float32" if args.dtype == "bfloat16" else "bfloat16"
        folders = {n: base.parent / f"adapter-{base.name}-{n}" for n in ADAPTERS}
        second = LoRAModel(base, folders, load=replace(load, dtype=other))
        results["serving"][other] = serving(second, prompt, fixed, args)
        second.close()
        main_run = results["serving"][args.dtype]
        results["mixed_vs_switching"] = main_run["mixed_vs_switching"]
        results["head_input"] = head_input_timing(engine)
        peft_model = engine.model

        # 4. switch time, merged vs unmerged single adapter (batch of 8 on one adapter)
        switch_times = []
        for name in ADAPTERS * 3:
            t = time.perf_counter()
            peft_model.set_adapter(name)
            switch_times.append(time.perf_counter() - t)
        results["adapter_switch_ms"] = 1000 * statistics.median(switch_times)
        single = [GenerationRequest(prompt, adapter="a1", config=fixed) for _ in range(8)]

        def one_adapter():
            return engine.generate_batch([GenerationRequest(r.prompt_ids, adapter="a1", config=fixed) for r in single])

        secs_unmerged, out = timed(one_adapter, args.repeat)
        t = time.perf_counter()
        engine.merge("a1")
        results["merge_s"] = time.perf_counter() - t
        secs_merged, out_m = timed(one_adapter, args.repeat)
        t = time.perf_counter()
        engine.unmerge()
        results["unmerge_s"] = time.perf_counter() - t
        results["single_adapter"] = {
            "unmerged_tokens_per_s": total_tokens(out) / secs_unmerged,
            "merged_tokens_per_s": total_tokens(out_m) / secs_merged,
        }
        results["merged_vs_unmerged"] = secs_unmerged / secs_merged
        print("merged vs unmerged", results["merged_vs_unmerged"])

    # 5. constrained vs free decoding, per token (batch of 8, base model), at two token budgets: the
    # engine checks every candidate token against the shortest valid finish only near the end of a
    # budget (the last 2 x shortest finish + 32 tokens), so a 32-token budget is all "zone" and the
    # default 256-token budget is mostly free-running
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    compile_requests = [GenerationRequest(prompt, config=GenerationConfig(max_new_tokens=8), schema=schema)]
    engine.generate_batch(compile_requests)  # compile the grammar once (cached), as a server would
    results["constrained"] = {}
    for budget in sorted({max(args.new_tokens, 32), 256}):
        config = GenerationConfig(max_new_tokens=budget)

        def free(config=config):
            return engine.generate_batch([GenerationRequest(prompt, config=config) for _ in range(8)])

        def constrained(config=config):
            return engine.generate_batch([GenerationRequest(prompt, config=config, schema=schema) for _ in range(8)])

        secs_free = secs_con = float("inf")
        for _ in range(args.repeat):  # interleaved, so load from elsewhere hits both alike; best of each
            t, out_f = timed(free)
            secs_free = min(secs_free, t)
            t, out_c = timed(constrained)
            secs_con = min(secs_con, t)
        per_free = secs_free / max(1, max(r.completion_tokens for r in out_f))
        per_con = secs_con / max(1, max(r.completion_tokens for r in out_c))
        results["constrained"][str(budget)] = {
            "free_ms_per_step": 1000 * per_free,
            "constrained_ms_per_step": 1000 * per_con,
            "overhead": per_con / per_free - 1,
            "all_outputs_valid_json": all(isinstance(json.loads(r.text), dict) for r in out_c),
            "steps_free": max(r.completion_tokens for r in out_f),
            "steps_constrained": max(r.completion_tokens for r in out_c),
        }
    print("constrained", results["constrained"])
    engine.close()

    if not args.only_constrained:
        # 6. bf16 vs fp32 (base model, batch of 8)
        def throughput(dtype: str) -> float:
            model = LoRAModel(base, load=LoadConfig(dtype=dtype))
            reqs = lambda: [GenerationRequest(prompt, config=fixed) for _ in range(8)]  # noqa: E731
            model.generate_batch(reqs())
            secs, out = timed(lambda: model.generate_batch(reqs()), args.repeat)
            model.close()
            return total_tokens(out) / secs

        fp32 = throughput("float32")
        bf16 = throughput("bfloat16")
        results["dtype"] = {"fp32_tokens_per_s": fp32, "bf16_tokens_per_s": bf16, "bf16_vs_fp32": bf16 / fp32}
        print("dtype", results["dtype"])

    if args.only_constrained:
        args.out.mkdir(parents=True, exist_ok=True)
        name = "lora_constrained" + ("_bigvocab" if args.tokenizer_data else "")
        (args.out / f"{name}.json").write_text(json.dumps(results, indent=1))
        print(json.dumps(results["constrained"], indent=1), results["tokenizer_vocab"])
        return
    results["targets"] = {
        **{f"mixed vs switching >= 3 ({d})": r["mixed_vs_switching"] >= 3 for d, r in results["serving"].items()},
        **{
            f"constrained overhead <= 10% (budget {b})": c["overhead"] <= 0.10
            for b, c in results["constrained"].items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora_serving.json").write_text(json.dumps(results, indent=1))
    print(write_markdown(args.out, results))


def write_markdown(out: Path, results: dict) -> str:
    bigvocab = out / "lora_constrained_bigvocab.json"
    extra = json.loads(bigvocab.read_text()) if bigvocab.exists() else None
    lengths = [json.loads(f.read_text()) for f in sorted(out.glob("lora_serving_only_*_tokens.json"))]
    text = markdown(results, extra, lengths)
    (out / "lora_serving.md").write_text(text)
    return text


def serving(engine, prompt: list[int], fixed, args) -> dict:
    """8 concurrent requests over 4 adapters: mixed batches (segmented and peft's loop) vs switching vs one by one."""
    import torch

    from ragplug.adapters.lora import GenerationRequest

    requests_adapters = [ADAPTERS[i % 4] for i in range(8)]
    load = engine.load_config
    out: dict = {}

    def mixed():  # 8 threads submitting at once; the scheduler gathers them into one generate call
        with ThreadPoolExecutor(8) as pool:
            futures = list(
                pool.map(lambda a: engine.submit(GenerationRequest(prompt, adapter=a, config=fixed)), requests_adapters)
            )
        return sum(f.result().completion_tokens for f in futures)

    def mixed_direct():  # the same mixed batch, one generate_batch call on this thread (as the baselines run)
        requests = [GenerationRequest(prompt, adapter=a, config=fixed) for a in requests_adapters]
        return sum(r.completion_tokens for r in engine.generate_batch(requests))

    def mixed_peft_loop():
        engine.load_config = replace(load, mixed_lora="peft")
        try:
            return mixed_direct()
        finally:
            engine.load_config = load

    def switching_peft():  # set_adapter + one plain peft generate per adapter (its 2 requests batched)
        ids = torch.tensor([prompt, prompt])
        tokens = 0
        for name in ADAPTERS:
            engine.model.set_adapter(name)
            with torch.inference_mode():
                generated = engine.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=args.new_tokens,
                    min_new_tokens=args.new_tokens,
                    do_sample=False,
                    pad_token_id=engine.pad_token_id,
                )
            tokens += (generated.shape[1] - ids.shape[1]) * ids.shape[0]
        return tokens

    def switching_engine():  # the same engine, one adapter's requests per generate call
        batches = [[GenerationRequest(prompt, adapter=a, config=fixed)] * 2 for a in ADAPTERS]
        return sum(r.completion_tokens for batch in batches for r in engine.generate_batch(batch))

    def one_at_a_time():
        requests = [GenerationRequest(prompt, adapter=a, config=fixed) for a in requests_adapters]
        return sum(engine.generate_batch([r])[0].completion_tokens for r in requests)

    # Every function runs once as a warm-up, on this thread and on the scheduler thread: on a CPU, torch
    # gives each thread that runs parallel ops its own OpenMP team, and once two teams exist every step
    # is ~25% slower than with one. All timings below are taken in that same two-team state, and the
    # repeats are interleaved, so slow phases of a shared machine hit every row alike.
    runs = {
        "mixed": mixed,
        "mixed_direct": mixed_direct,
        "mixed_peft_loop": mixed_peft_loop,
        "switching_peft": switching_peft,
        "switching_engine": switching_engine,
    }
    for fn in runs.values():
        fn()
    best: dict = {}
    for _ in range(args.repeat):
        for name, fn in runs.items():
            secs, tokens = timed(fn)
            if name not in best or secs < best[name][0]:
                best[name] = (secs, tokens)
    secs, tokens = timed(one_at_a_time)
    best["one_at_a_time"] = (secs, tokens)
    for name, (secs, tokens) in best.items():
        out[name] = {"seconds": secs, "tokens": tokens, "tokens_per_s": tokens / secs}
    best_switching = max(out["switching_peft"]["tokens_per_s"], out["switching_engine"]["tokens_per_s"])
    out["mixed_vs_switching"] = out["mixed_direct"]["tokens_per_s"] / best_switching
    out["scheduler_vs_switching"] = out["mixed"]["tokens_per_s"] / best_switching
    out["mixed_vs_one_at_a_time"] = out["mixed_direct"]["tokens_per_s"] / out["one_at_a_time"]["tokens_per_s"]
    out["segmented_vs_peft_loop"] = out["mixed_direct"]["tokens_per_s"] / out["mixed_peft_loop"]["tokens_per_s"]
    print(engine.load_config.dtype, json.dumps(out, indent=1))
    return out


def head_input_timing(engine) -> dict:
    """The LM head on the last position of 8 rows: a strided view (what generate passes) vs a contiguous copy."""
    import torch

    head = engine.model.get_output_embeddings()
    hidden = torch.randn(8, 64, head.in_features, dtype=head.weight.dtype)[:, -1:, :]
    with torch.inference_mode():
        strided, _ = timed(lambda: torch.nn.functional.linear(hidden, head.weight), 2)
        contiguous, _ = timed(lambda: torch.nn.functional.linear(hidden.contiguous(), head.weight), 2)
    return {"strided_ms": 1000 * strided, "contiguous_ms": 1000 * contiguous}


def markdown(r: dict, bigvocab: dict | None = None, lengths: list[dict] | None = None) -> str:
    m = r["machine"]
    dtypes = list(r["serving"])
    rows = [
        ("mixed-adapter batch, segmented LoRA: one generate_batch call", "mixed_direct", "tokens_per_s"),
        ("the same, 8 threads submitting to the scheduler", "mixed", "tokens_per_s"),
        ("mixed-adapter batch, peft's adapter_names loop", "mixed_peft_loop", "tokens_per_s"),
        ("switching: set_adapter + plain peft generate per adapter", "switching_peft", "tokens_per_s"),
        ("switching: the engine, one adapter per generate call", "switching_engine", "tokens_per_s"),
        ("one request at a time", "one_at_a_time", "tokens_per_s"),
    ]
    lines = [
        "# LoRA serving benchmark",
        "",
        f"{r['setup']['model']}, {r['params'] / 1e6:.0f} M parameters, tokenizer vocabulary "
        f"{r['tokenizer_vocab']:,}; 8 requests over 4 adapters ({r['setup']['lora']}), "
        f"{r['setup']['new_tokens']} new tokens each, greedy. Best of {r['setup']['repeat']}. "
        f"Measurements after the first table use {r['setup']['dtype']}.",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores, {m['memory_gb']} GiB), GPU: {m['gpu'] or 'none'}; "
        f"{m['platform']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + f"; {m['date']}.",
        "",
        "## 8 concurrent requests over 4 adapters (tokens/s)",
        "",
        "| serving | " + " | ".join(dtypes) + " |",
        "|---|" + "---|" * len(dtypes),
    ]
    for label, key, field_name in rows:
        lines.append(f"| {label} | " + " | ".join(f"{r['serving'][d][key][field_name]:.1f}" for d in dtypes) + " |")
    for label, key in [
        ("**mixed vs switching** (one call vs the faster switching row; target >= 3x)", "mixed_vs_switching"),
        ("scheduler (threads) vs switching", "scheduler_vs_switching"),
        ("mixed vs one at a time", "mixed_vs_one_at_a_time"),
        ("segmented vs peft's loop", "segmented_vs_peft_loop"),
    ]:
        lines.append(f"| {label} | " + " | ".join(f"**{r['serving'][d][key]:.2f}x**" for d in dtypes) + " |")
    lines += [
        "",
        "Switching rows serve each adapter's 2 requests as one batch (the strongest switching baseline); the",
        "mixed rows serve all 8 in one batch. All rows of a column ran in one process state, repeats interleaved:",
        "on a CPU, torch gives every thread that runs parallel ops its own OpenMP team, and while two such threads",
        "are alive (the scheduler's and the caller's) each decoding step is ~25% slower (`thread_teams.md`);",
        "comparing a row timed before that with one timed after would be off by that much. The scheduler thread",
        "is kept for the whole run here (`idle_exit_s=None`).",
        "",
        "## Other measurements",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| single adapter unmerged / merged | {r['single_adapter']['unmerged_tokens_per_s']:.1f} / "
        f"{r['single_adapter']['merged_tokens_per_s']:.1f} tok/s ({r['merged_vs_unmerged']:.2f}x) |",
        f"| fp32 / bf16 (base, batch 8) | {r['dtype']['fp32_tokens_per_s']:.1f} / "
        f"{r['dtype']['bf16_tokens_per_s']:.1f} tok/s ({r['dtype']['bf16_vs_fp32']:.2f}x) |",
        *[
            f"| budget {b}: free / constrained per step (batch 8); **overhead** (target <= 10%) | "
            f"{c['free_ms_per_step']:.1f} / {c['constrained_ms_per_step']:.1f} ms; **{100 * c['overhead']:.1f}%** "
            f"(all outputs valid JSON: {c['all_outputs_valid_json']}) |"
            for b, c in r["constrained"].items()
        ],
        f"| base load / adapter load | {r['base_load_s']:.1f} s / {r['adapter_load_s']:.2f} s |",
        f"| adapter switch (set_adapter) | {r['adapter_switch_ms']:.2f} ms |",
        f"| merge / unmerge | {r['merge_s']:.2f} s / {r['unmerge_s']:.2f} s |",
        f"| LM head on 8 rows' last position: strided view / contiguous | {r['head_input']['strided_ms']:.1f} / "
        f"{r['head_input']['contiguous_ms']:.1f} ms |",
        "",
        "Targets: " + ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in r["targets"].items()),
        "",
    ]
    if lengths:
        lines += [
            "## Answer length",
            "",
            "The shared prefill (8 prompts of the same length either way) weighs more in short answers.",
            "`--only-serving --new-tokens N` runs the first table alone:",
            "",
            "| dtype | new tokens | mixed, one call | switching (faster row) | mixed vs switching | date |",
            "|---|---|---|---|---|---|",
        ]
        for run in lengths:
            for dtype, t in run["serving"].items():
                switching = max(t["switching_peft"]["tokens_per_s"], t["switching_engine"]["tokens_per_s"])
                lines.append(
                    f"| {dtype} | {run['setup']['new_tokens']} | {t['mixed_direct']['tokens_per_s']:.1f} tok/s | "
                    f"{switching:.1f} tok/s | **{t['mixed_vs_switching']:.2f}x** | {run['machine']['date'][:16]} |"
                )
        lines.append("")
    if bigvocab:
        lines += [
            "## Constrained decoding with a large vocabulary",
            "",
            "The run above uses a 10,301-token tokenizer inside the 151,936-row vocabulary. `python",
            "benchmarks/lora_serving.py --tokenizer-data ../shared/data --only-constrained` trains the tokenizer on",
            f"the book, SciFact and 2WikiMultihopQA instead ({bigvocab['tokenizer_vocab']:,} tokens, close to a",
            f"real tokenizer's; `lora_constrained_bigvocab.json`, {bigvocab['machine']['date'][:10]}, "
            f"{bigvocab['setup'].get('dtype', 'float32')}).",
            "Only one thread used torch in that process, so its steps are faster than the main run's (see the",
            "note under the first table):",
            "",
            "| budget | free / constrained per step | overhead | all valid JSON |",
            "|---|---|---|---|",
        ]
        runs = bigvocab["constrained"]
        runs = runs if "overhead" not in runs else {str(runs["steps_free"]): runs}  # files from before budgets
        for budget, c in runs.items():
            lines.append(
                f"| {budget} | {c['free_ms_per_step']:.1f} / {c['constrained_ms_per_step']:.1f} ms | "
                f"{100 * c['overhead']:.1f}% | {c['all_outputs_valid_json']} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
