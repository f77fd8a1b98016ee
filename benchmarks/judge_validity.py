"""Judge validity: do ragplug's LLM judges always return a valid judgement with a grammar-constrained model?

A tiny random chat model (built as ``tests/fixtures/tiny_llm.py`` builds the test fixture: a byte-level BPE
trained on the bundled book, a 2-layer Qwen2 with random weights) is loaded through ragplug's ``LoRAModel`` and
wrapped with ``lora_chat_function``: every answer is decoded under the judge's JSON schema. The four judges
(faithfulness, correctness, context relevance, pairwise preference) judge synthetic items cut from A Christmas
Carol (questions, answers, references and contexts built from its sentences; some contexts longer than the
prompt's budget, so the cut-and-note path runs), all through ``run_batch`` with bounded concurrency, so the
engine batches the concurrent requests.

Counted, with 0 as the target for each: chat answers that are not valid against the schema they were asked
for (checked independently with ``jsonschema``), chat calls that raised, judgements that needed a retry,
items that ended in an error, and judgements whose score is NaN or outside [0, 1]. Also judgements per
second and chat calls per second. Random weights: the scores mean nothing; only validity is measured.

    python benchmarks/judge_validity.py [--per-judge 140] [--concurrency 16]

Results: benchmarks/results/judge_validity.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, machine_info

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "ragplug" / "data" / "a_christmas_carol_pg24022.txt"
PACKAGES = ["torch", "transformers", "xgrammar", "jsonschema", "ragplug"]
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def sentences() -> list[str]:
    """The book's sentences of 40 to 300 characters, whitespace collapsed."""
    text = " ".join(TEXT.read_text(encoding="utf-8").split())
    return [s for s in _SENTENCE.split(text) if 40 <= len(s) <= 300]


def synthetic_items(per_judge: int, seed: int) -> list[tuple[str, Any]]:
    """``(judge name, JudgeItem)`` pairs, ``per_judge`` for each judge. Answers are the supporting sentence,
    a cut of it, or an unrelated sentence; every fifth item has contexts over the prompt's budget."""
    from ragplug.evaluators.judges import JudgeItem

    rng = random.Random(seed)
    pool = sentences()
    items: list[tuple[str, Any]] = []
    for name in ("faithfulness", "correctness", "context_relevance", "pairwise_preference"):
        for i in range(per_judge):
            gold, other = rng.sample(pool, 2)
            words = [w.strip(",;:.!?\"'") for w in gold.split()]
            topic = max(words, key=len)
            question = rng.choice(
                [f"What does the story say about {topic}?", f"Who or what is {topic}?", f"Why is {topic} mentioned?"]
            )
            answer = rng.choice([gold, " ".join(gold.split()[: max(4, len(words) // 2)]), other])
            contexts = [gold, *rng.sample(pool, rng.randint(0, 3))]
            if i % 5 == 0:
                contexts += rng.sample(pool, 12)  # over the context budget: cut, with a note
            rng.shuffle(contexts)
            item = JudgeItem(
                item_id=f"{name}-{i}",
                question=question,
                answer=answer,
                contexts=tuple(contexts),
                reference=gold,
                answer_b=rng.choice([other, gold, answer]),
            )
            items.append((name, item))
    rng.shuffle(items)  # the judges' requests interleave in the engine's batches
    return items


class CheckedChat:
    """Wraps a chat function: validates every answer against the schema it was asked for, counts calls,
    invalid answers and exceptions (thread-safe), and passes the answer or the exception on unchanged."""

    def __init__(self, chat: Any) -> None:
        import jsonschema

        self.chat = chat
        self.validator = jsonschema.Draft202012Validator
        self.lock = threading.Lock()
        self.calls = 0
        self.invalid: list[str] = []
        self.raised: list[str] = []

    def __call__(self, messages: Any, schema: Any) -> Any:
        with self.lock:
            self.calls += 1
        try:
            answer = self.chat(messages, schema)
        except Exception as err:
            with self.lock:
                self.raised.append(f"{type(err).__name__}: {err}"[:300])
            raise
        problems = [e.message for e in self.validator(schema).iter_errors(answer)]
        if problems:
            with self.lock:
                self.invalid.append(f"{answer!r}: {problems[0]}"[:300])
        return answer


def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO))
    import torch

    from ragplug.adapters.lora import LoadConfig, LoRAModel, lora_chat_function
    from ragplug.evaluators.judges import ContextRelevance, Correctness, Faithfulness, PairwisePreference
    from ragplug.evaluators.runner import run_batch
    from tests.fixtures.tiny_llm import build_tiny_llm

    items = synthetic_items(args.per_judge, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        base = build_tiny_llm(Path(tmp) / "base", context=2048)  # room for the prompt, contexts included
        model = LoRAModel(base, load=LoadConfig(max_batch_size=args.concurrency))
        try:
            chat = CheckedChat(lora_chat_function(model, max_new_tokens=args.max_new_tokens))
            settings = {"retries": 2, "context_chars": args.context_chars, "reason_chars": args.reason_chars}
            judges = {
                j.name: j(chat, **settings) for j in (Faithfulness, Correctness, ContextRelevance, PairwisePreference)
            }

            async def judge(pair: tuple[str, Any]) -> Any:
                name, item = pair
                return await judges[name].ajudge_item(item)

            started = time.perf_counter()
            outcomes = run_batch(
                items, judge, concurrency=args.concurrency, desc="judging", ids=lambda pair: pair[1].item_id
            )
            seconds = time.perf_counter() - started
        finally:
            model.close()

    per_judge: dict[str, dict[str, Any]] = {}
    bad_scores, retried, failed = [], 0, []
    for (name, _), outcome in zip(items, outcomes, strict=True):
        row = per_judge.setdefault(name, {"judgements": 0, "failed": 0, "scores": Counter(), "retried": 0})
        if outcome.error is not None:
            row["failed"] += 1
            failed.append(f"{outcome.item_id}: {outcome.error}"[:300])
            continue
        judgement = outcome.value
        row["judgements"] += 1
        score = judgement.score
        if not isinstance(score, float) or not math.isfinite(score) or not 0.0 <= score <= 1.0:
            bad_scores.append(f"{outcome.item_id}: {score!r}")
        minimum = 2 if name == "pairwise_preference" else 1
        if judgement.attempts > minimum:
            row["retried"] += 1
            retried += 1
        row["scores"][f"{score:.2f}"] += 1
    latencies = sorted(o.seconds for o in outcomes)
    judged = sum(row["judgements"] for row in per_judge.values())
    return {
        "machine": {**machine_info(PACKAGES), "cpu_flags": cpu_flags(), "torch_threads": torch.get_num_threads()},
        "setup": {
            "model": "tiny random Qwen2 (hidden 64, 2 layers, BPE vocab 1,200, context 2,048), as tests/fixtures",
            "decoding": "greedy, grammar-constrained (xgrammar) through lora_chat_function",
            "items_per_judge": args.per_judge,
            "concurrency": args.concurrency,
            "max_batch_size": args.concurrency,
            "max_new_tokens": args.max_new_tokens,
            "reason_chars": args.reason_chars,
            "context_chars": args.context_chars,
            "seed": args.seed,
        },
        "items": len(items),
        "judgements": judged,
        "chat_calls": chat.calls,
        "seconds": seconds,
        "judgements_per_s": judged / seconds,
        "chat_calls_per_s": chat.calls / seconds,
        "latency_s": {
            "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))],
            "max": latencies[-1],
        },
        "invalid_against_schema": len(chat.invalid),
        "chat_exceptions": len(chat.raised),
        "retried_judgements": retried,
        "failed_items": len(failed),
        "nan_or_out_of_range": len(bad_scores),
        "examples": {
            "invalid": chat.invalid[:5],
            "raised": chat.raised[:5],
            "failed": failed[:5],
            "bad_scores": bad_scores[:5],
        },
        "per_judge": {
            name: {**row, "scores": dict(sorted(row["scores"].items()))} for name, row in sorted(per_judge.items())
        },
    }


def write_markdown(out: Path, results: dict[str, Any]) -> None:
    m, s = results["machine"], results["setup"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    target = [
        ("answers invalid against the schema (jsonschema)", results["invalid_against_schema"]),
        ("chat calls that raised", results["chat_exceptions"]),
        ("judgements that needed a retry", results["retried_judgements"]),
        ("items that ended in an error (JudgeError or other)", results["failed_items"]),
        ("judgements with a NaN or out-of-range score", results["nan_or_out_of_range"]),
    ]
    lines = [
        "# Judge validity: ragplug's LLM judges on a tiny grammar-constrained model",
        "",
        f"Machine: {m['cpu']} ({m['cpu_count']} cores, shared with other work; flags {' '.join(m['cpu_flags'])}), "
        f"{m['memory_gb']} GB, GPU: {m['gpu'] or 'none'}; torch threads {m['torch_threads']}; {versions}; "
        f"{m['date']}.",
        "",
        f"Model: {s['model']}; {s['decoding']}; max_new_tokens {s['max_new_tokens']}, reason maxLength "
        f"{s['reason_chars']}, context budget {s['context_chars']} characters. {s['items_per_judge']} synthetic items "
        f"per judge (A Christmas Carol sentences; every fifth item's contexts exceed the budget), served through "
        f"`run_batch` with concurrency {s['concurrency']} (the engine batches up to {s['max_batch_size']} requests). "
        "Random weights: the scores carry no meaning; only validity and speed are measured. Reproduce with "
        "`python benchmarks/judge_validity.py`.",
        "",
        f"**{results['judgements']:,} judgements** from {results['chat_calls']:,} chat calls in "
        f"{results['seconds']:.1f} s: **{results['judgements_per_s']:.1f} judgements/s** "
        f"({results['chat_calls_per_s']:.1f} chat calls/s); per item p50 {results['latency_s']['p50']:.2f} s, "
        f"p95 {results['latency_s']['p95']:.2f} s.",
        "",
        "| count (target 0) | value |",
        "|---|---|",
        *(f"| {label} | {value} |" for label, value in target),
        "",
        "| judge | judgements | failed | retried | scores seen (normalised: count) |",
        "|---|---|---|---|---|",
    ]
    for name, row in results["per_judge"].items():
        seen = ", ".join(f"{k}: {v}" for k, v in row["scores"].items())
        lines.append(f"| {name} | {row['judgements']} | {row['failed']} | {row['retried']} | {seen} |")
    verdict = "PASS" if all(value == 0 for _, value in target) else "FAIL"
    lines += ["", f"- {verdict}: every count above is 0 (target)."]
    if results["judgements"] < 500:
        lines.append(f"- NOTE: fewer than 500 judgements ({results['judgements']}); run with a larger --per-judge.")
    for note in results.get("notes", []):  # analysis written into the JSON after a run (kept by --render)
        lines.append(f"- {note}")
    for kind, examples in results["examples"].items():
        for example in examples:
            lines.append(f"- {kind}: `{example}`")
    (out / "judge_validity.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-judge", type=int, default=140, help="items per judge (4 judges)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--reason-chars", type=int, default=80)
    parser.add_argument("--context-chars", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--render", action="store_true", help="rewrite the Markdown from the JSON in --out")
    args = parser.parse_args()
    if args.render:
        write_markdown(args.out, json.loads((args.out / "judge_validity.json").read_text(encoding="utf-8")))
        return
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "judge_validity.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    write_markdown(args.out, results)
    print((args.out / "judge_validity.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
