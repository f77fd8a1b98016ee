"""Build the base reader of the RAG-vs-LoRA (knowledge injection) experiment, from scratch, on a CPU.

The reader is a tiny Qwen2 causal LM with a word-level tokenizer over the synthetic world's vocabulary
(``ragplug.evaluators.synthetic``) and a ChatML-style chat template, trained with a plain torch loop to
answer ``"Context:\\n<passages>\\n\\nQuestion: <question>"`` (the layout of ragplug's ``build_messages``) with
the value and EOS, and to answer a bare question (closed book) about people it was trained on. It sees only
the world's reader people, never a test person:

* reading examples: the gold passage plus 0-2 distractor passages (about half sharing the first or last
  name), shuffled and joined by ``format_context``; every passage freshly rendered (new sentence order and
  templates), every question template used;
* closed-book examples about a subset of the reader people (``memorised``), so that the base has a circuit
  that recalls facts from its weights, which a LoRA adapter can then write new facts into.

A few reader people (``held_out``) are in neither, for the validation accuracy logged while training.

    .venv/bin/python benchmarks/knowledge_reader.py            # -> benchmarks/models/knowledge_reader/

writes config.json, model.safetensors, generation_config.json, the tokenizer files and training.json
(settings, losses, validation curve, time, machine, and the accuracies measured through ``LoRAModel.chat``).

The committed reader in ``benchmarks/models/knowledge_reader`` came from a run of this builder with the settings
its ``training.json`` records (3 layers, 1,200 steps, a 400-step curriculum; 351 s on 2 cores; 0.945 held-out
accuracy with the gold passage) on ``make_world(0)`` as the generator stood then (its output is saved beside the
model as ``world.jsonl``, which ``benchmarks/knowledge_injection.py`` reads), and was then saved as the equivalent
Llama checkpoint by ``benchmarks/reader_to_llama.py``: transformers 5 loads a ``qwen2`` checkpoint's tokenizer as
``Qwen2Tokenizer``, which garbles this word-level tokenizer. A builder run today saves Qwen2: convert it the same way.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_info

from ragplug.evaluators.synthetic import (
    ATTRIBUTES,
    Person,
    World,
    format_context,
    make_world,
    render_passage,
    vocabulary,
)

logger = logging.getLogger("knowledge_reader")

HERE = Path(__file__).resolve().parent
DEFAULT_FOLDER = HERE / "models" / "knowledge_reader"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"]
EXTRA_WORDS = ["Context", "Question", "Answer", "system", "user", "assistant", "\n", *".,:;?!'\"()[]-/", *"0123456789"]
# The LoRA settings of the probes (benchmarks/results/knowledge_reader.md), TrainConfig keyword arguments.
PROBE_LORA: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "learning_rate": 2e-3,
    "epochs": 20,
    "batch_size": 16,
    "progress": False,
}
PROBE_RAFT: dict[str, Any] = {
    "r": 16,
    "lora_alpha": 32,
    "learning_rate": 1e-3,
    "epochs": 5,
    "batch_size": 16,
    "progress": False,
}
# ChatML, as Qwen's templates lay it out; no tools (the reader is never asked to call one).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(folder: Path) -> Any:
    """A word-level tokenizer over the world's vocabulary: words, punctuation and newlines are tokens
    (spaces are dropped), anything else is ``<unk>``. Every answer is one token."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = SPECIALS + EXTRA_WORDS + [w for w in vocabulary() if w not in EXTRA_WORDS]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(" ", behavior="removed"),
            pre_tokenizers.Split(Regex(r"\n"), behavior="isolated"),
            pre_tokenizers.Punctuation(behavior="isolated"),
        ]
    )
    tok.add_special_tokens(SPECIALS)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        bos_token=None,
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def prompt_text(question: str, passages: list[str] | None) -> str:
    """The chat-template text of ``build_messages`` + ``render_prompt_ids`` (checked against it in build)."""
    content = question if not passages else f"Context:\n{format_context(passages)}\n\nQuestion: {question}"
    return f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"


class Sampler:
    """Draws reader training examples: (question, passages or None, answer)."""

    def __init__(
        self, people: list[Person], memorised: list[Person], rng: random.Random, pronoun_rate: float = 0.6
    ) -> None:
        self.people, self.memorised, self.rng, self.pronoun_rate = people, memorised, rng, pronoun_rate
        self.by_first: dict[str, list[int]] = defaultdict(list)
        self.by_last: dict[str, list[int]] = defaultdict(list)
        for i, p in enumerate(people):
            self.by_first[p.first].append(i)
            self.by_last[p.last].append(i)

    def question(self, person: Person) -> tuple[str, str]:
        attribute = self.rng.choice(list(ATTRIBUTES))
        template = self.rng.choice(ATTRIBUTES[attribute].questions)
        return template.format(N=person.name), person.facts[attribute]

    def reading(self, n_passages: int) -> tuple[str, list[str], str]:
        passages, turns = self.conversation(n_passages, 1)
        return turns[0][0], passages or [], turns[0][1]

    def closed_book(self) -> tuple[str, None, str]:
        _, turns = self.conversation(0, 1)
        return turns[0][0], None, turns[0][1]

    def conversation(self, n_passages: int, n_turns: int) -> tuple[list[str] | None, list[tuple[str, str]]]:
        """Passages (None: closed book) and ``n_turns`` (question, answer) turns. With passages, the first
        question is about a random one of them; later ones about any person in the context."""
        if n_passages == 0:
            return None, [self.question(self.rng.choice(self.memorised)) for _ in range(n_turns)]
        gold_index = self.rng.randrange(len(self.people))
        gold = self.people[gold_index]
        chosen = {gold_index}
        while len(chosen) < n_passages:
            if self.rng.random() < 0.5:  # a near-namesake: shares the first or the last name
                pool = self.by_first[gold.first] if self.rng.random() < 0.5 else self.by_last[gold.last]
                candidate = self.rng.choice(pool)
            else:
                candidate = self.rng.randrange(len(self.people))
            chosen.add(candidate)
        order = list(chosen)
        self.rng.shuffle(order)
        passages = [render_passage(self.people[i], self.rng, pronoun_rate=self.pronoun_rate) for i in order]
        asked = [gold] + [self.people[self.rng.choice(order)] for _ in range(n_turns - 1)]
        return passages, [self.question(person) for person in asked]


def encode(tokenizer: Any, items: list[tuple[str, list[str] | None, str]]) -> list[tuple[list[int], int]]:
    """(prompt ids, answer id) per single-turn item; every answer is one token of the word-level vocabulary."""
    prompts = tokenizer([prompt_text(q, p) for q, p, _ in items], add_special_tokens=False)["input_ids"]
    answers = tokenizer.convert_tokens_to_ids([a for _, _, a in items])
    return list(zip(prompts, answers, strict=True))


def encode_conversations(
    tokenizer: Any, conversations: list[tuple[list[str] | None, list[tuple[str, str]]]]
) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per conversation, as the chat template renders it: the first user turn holds
    the context (``build_messages``' layout), later user turns only a question; labels are each answer
    and the EOS after it, -100 elsewhere. Later turns multiply the answers trained per forward pass."""
    texts, answers = [], []
    for passages, turns in conversations:
        for i, (question, answer) in enumerate(turns):
            texts.append(("\n" if i else "") + prompt_text(question, passages if i == 0 else None))
            answers.append(answer)
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer.convert_tokens_to_ids(answers)
    eos = tokenizer.eos_token_id
    out, k = [], 0
    for _, turns in conversations:
        ids: list[int] = []
        labels: list[int] = []
        for _ in turns:
            ids += pieces[k] + [answer_ids[k], eos]
            labels += [-100] * len(pieces[k]) + [answer_ids[k], eos]
            k += 1
        out.append((ids, labels))
    return out


def batch_tensors(torch: Any, rows: list[tuple[list[int], list[int]]], pad: int) -> tuple[Any, Any, Any]:
    """Right-padded input ids, attention mask and labels for a batch."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (row_ids, row_labels) in enumerate(rows):
        ids[r, : len(row_ids)] = torch.tensor(row_ids)
        labels[r, : len(row_ids)] = torch.tensor(row_labels)
        mask[r, : len(row_ids)] = 1
    return ids, mask, labels


def first_token_accuracy(torch: Any, model: Any, rows: list[tuple[list[int], int]], pad: int, batch: int = 64) -> float:
    """Share of rows whose greedy first answer token is the answer (answers are one token)."""
    model.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            width = max(len(p) for p, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (prompt, _) in enumerate(chunk):
                ids[r, : len(prompt)] = torch.tensor(prompt)
                mask[r, : len(prompt)] = 1
            logits = model(input_ids=ids, attention_mask=mask).logits
            last = mask.sum(1) - 1
            predicted = logits[torch.arange(len(chunk)), last].argmax(-1)
            hits += int((predicted == torch.tensor([a for _, a in chunk])).sum())
    model.train()
    return hits / max(len(rows), 1)


def build_reader(
    world: World,
    folder: Path = DEFAULT_FOLDER,
    *,
    hidden: int = 128,
    layers: int = 4,
    heads: int = 4,
    intermediate: int = 512,
    steps: int = 3000,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    warmup: int = 100,
    weight_decay: float = 0.01,
    closed_book_share: float = 0.25,
    lm_weight: float = 0.0,
    turns: int = 1,
    closed_turns: int = 5,
    curriculum: int = 600,
    passages_weights: tuple[float, ...] = (1.0, 1.0, 1.0),
    memorised: int = 300,
    held_out: int = 50,
    seed: int = 0,
    threads: int = 2,
    eval_every: int = 250,
    time_limit_s: float | None = None,
) -> dict[str, Any]:
    """Train the reader on ``world``'s reader people and save it as an HF folder. Returns the training record.

    ``passages_weights[i]`` is the relative frequency of reading examples with ``i + 1`` passages;
    ``closed_book_share`` the share of batches that are closed-book questions about the ``memorised``
    reader people. ``time_limit_s`` stops training early (the learning-rate schedule still ends at ``steps``).
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(folder)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id

    readers = list(world.reader_people)
    rng.shuffle(readers)
    validation, train_people = readers[:held_out], readers[held_out:]
    memorised_people = train_people[:memorised]
    pronoun_rate = world.settings.get("pronoun_rate", 0.6)
    sampler = Sampler(train_people, memorised_people, rng, pronoun_rate)

    # The prompt layout must be the one ragplug's training and serving render.
    from ragplug.adapters.lora.engine import render_prompt_ids
    from ragplug.adapters.lora.train import build_messages

    q, p, _ = sampler.reading(2)
    for passages in (p, None):
        messages = build_messages({"question": q, "context": format_context(passages) if passages else None})
        expected = render_prompt_ids(tokenizer, messages)
        if expected != tokenizer(prompt_text(q, passages), add_special_tokens=False)["input_ids"]:
            msg = "prompt_text does not match the chat template's layout"
            raise RuntimeError(msg)
        if tokenizer.unk_token_id in expected:
            msg = f"unknown words in {tokenizer.decode(expected)!r}"
            raise RuntimeError(msg)

    # Validation sets: held-out reader people (reading, 1 and 3 passages) and memorised ones (closed book).
    val_sampler = Sampler(validation, validation, random.Random(seed + 1), pronoun_rate)
    val_gold = encode(tokenizer, [val_sampler.reading(1) for _ in range(200)])
    val_three = encode(tokenizer, [val_sampler.reading(3) for _ in range(200)])
    mem_sampler = Sampler(train_people, memorised_people, random.Random(seed + 2), pronoun_rate)
    val_memory = encode(tokenizer, [mem_sampler.closed_book() for _ in range(200)])

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=eos,
        pad_token_id=pad,
        bos_token_id=None,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad)
    parameters = sum(p.numel() for p in model.parameters())
    logger.info("model: %d parameters", parameters)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(0.9, 0.98),
    )

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    kinds = ["closed", *range(1, len(passages_weights) + 1)]
    weights = [closed_book_share] + [(1 - closed_book_share) * w / sum(passages_weights) for w in passages_weights]

    losses: list[float] = []
    curve: list[dict[str, Any]] = []
    window: list[float] = []
    start = time.perf_counter()
    model.train()
    done = 0
    stage, stage_two_step = 1, None
    for step in range(steps):
        # Curriculum: single passages only until the held-out reader people's single-passage questions are
        # answered (the reading circuit forms much later when distractors and closed-book questions are
        # mixed in from the start), then everything.
        if stage == 1 and (
            step >= curriculum
            or (step and step % 50 == 0 and first_token_accuracy(torch, model, val_gold, pad) >= 0.95)
        ):
            stage, stage_two_step = 2, step
            logger.info("stage 2 (distractors, closed book) from step %d", step)
        kind = rng.choices(kinds, weights)[0] if stage == 2 else 1
        n_passages = 0 if kind == "closed" else int(kind)
        most = turns if n_passages else closed_turns
        conversations = [sampler.conversation(n_passages, rng.randint(1, most)) for _ in range(batch_size)]
        ids, mask, labels = batch_tensors(torch, encode_conversations(tokenizer, conversations), pad)
        logits = model(input_ids=ids, attention_mask=mask).logits
        # Answer loss, plus a language-modelling loss on the prompt (passages, question): repeated names
        # in the text are what grow the copying (induction) heads a reader needs, and much faster than
        # the one answer token per example alone.
        flat = logits[:, :-1].reshape(-1, logits.shape[-1])
        loss = torch.nn.functional.cross_entropy(flat, labels[:, 1:].reshape(-1), ignore_index=-100)
        if lm_weight > 0:
            text = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
            loss = loss + lm_weight * torch.nn.functional.cross_entropy(flat, text.reshape(-1), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        window.append(float(loss.detach()))
        done = step + 1
        if done % 50 == 0:
            losses.append(round(sum(window) / len(window), 4))
            window = []
        elapsed = time.perf_counter() - start
        if done % eval_every == 0 or done == steps or (time_limit_s is not None and elapsed > time_limit_s):
            point = {
                "step": done,
                "seconds": round(elapsed, 1),
                "loss": losses[-1] if losses else None,
                "held_out_gold": first_token_accuracy(torch, model, val_gold, pad),
                "held_out_gold_plus_2": first_token_accuracy(torch, model, val_three, pad),
                "memorised_closed_book": first_token_accuracy(torch, model, val_memory, pad),
            }
            curve.append(point)
            logger.info("%s", point)
            if time_limit_s is not None and elapsed > time_limit_s:
                logger.warning("time limit reached at step %d of %d", done, steps)
                break
    train_seconds = time.perf_counter() - start

    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    record = {
        "world": {"seed": world.seed, **world.settings},
        "settings": {
            "hidden": hidden,
            "layers": layers,
            "heads": heads,
            "intermediate": intermediate,
            "parameters": parameters,
            "vocab_size": len(tokenizer),
            "steps": steps,
            "steps_done": done,
            "batch_size": batch_size,
            "learning_rate": learning_rate,
            "warmup": warmup,
            "weight_decay": weight_decay,
            "closed_book_share": closed_book_share,
            "lm_weight": lm_weight,
            "turns": turns,
            "closed_turns": closed_turns,
            "curriculum_max_steps": curriculum,
            "stage_two_from_step": stage_two_step,
            "passages_weights": list(passages_weights),
            "memorised": memorised,
            "held_out": held_out,
            "seed": seed,
            "threads": threads,
        },
        "train_seconds": round(train_seconds, 1),
        "losses_per_50_steps": losses,
        "validation": curve,
        "machine": machine_info(["torch", "transformers", "tokenizers", "peft"]),
    }
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def accuracy(
    model: Any, world: World, context: Any, *, adapter: str | None = None, max_new_tokens: int = 4
) -> dict[str, Any]:
    """Exact-match accuracy over ``world.test_questions`` through ``model.chat`` (greedy), overall and per
    kind; ``updated_old`` is the share of updated facts answered with the OLD value. ``context(q)`` gives
    the passages for question ``q`` (None: closed book)."""
    from ragplug.adapters.lora import GenerationConfig, build_messages

    config = GenerationConfig(max_new_tokens=max_new_tokens)
    hits: dict[str, list[int]] = defaultdict(list)
    for q in world.test_questions:
        passages = context(q)
        example = {"question": q.question, "context": format_context(passages) if passages else None}
        answer = model.chat(build_messages(example), adapter=adapter, config=config).content.strip()
        hits["all"].append(int(answer == q.answer))
        hits[q.kind].append(int(answer == q.answer))
        if q.kind == "updated":
            hits["updated_old"].append(int(answer == q.old_answer))
    out: dict[str, Any] = {k: round(sum(v) / len(v), 4) for k, v in hits.items()}
    out["n"] = len(hits["all"])
    return out


def contexts(world: World, distractors: int = 2) -> dict[str, Any]:
    """The reading settings: gold passage alone, gold + ``distractors`` (``World.distractors``, the gold
    passage shuffled in), closed book."""
    return {
        "gold": lambda q: [world.corpus[q.passage_id]],
        f"gold_plus_{distractors}": lambda q: _shuffled_with_distractors(world, q.passage_id, distractors),
        "closed_book": lambda q: None,
    }


def evaluate_reader(world: World, folder: Path, *, distractors: int = 2, threads: int = 2) -> dict[str, Any]:
    """The saved reader's accuracy on the test people's questions in each reading setting (``contexts``),
    through ``LoRAModel.chat``. The kinds mean nothing to the base (it never saw a test person)."""
    import torch

    from ragplug.adapters.lora import LoRAModel

    torch.set_num_threads(threads)
    model = LoRAModel(folder)
    start = time.perf_counter()
    out: dict[str, Any] = {name: accuracy(model, world, fn) for name, fn in contexts(world, distractors).items()}
    model.close()
    out["chance_closed_book"] = round(sum(1 / len(a.values) for a in ATTRIBUTES.values()) / len(ATTRIBUTES), 4)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def probe_lora(
    world: World, base: Path, out_dir: Path, config: Any, *, raft: bool = False, threads: int = 2
) -> dict[str, Any]:
    """Train an adapter on the reader with ragplug's ``train_lora`` and measure it.

    Closed-book LoRA (``raft=False``) trains on ``world.lora_train`` and is measured closed book (trained,
    updated: new and old value, unseen). RAFT (``raft=True``) trains on ``world.raft_train`` (gold passage
    before the update + distractors) and is measured in every reading setting of ``contexts``.
    """
    import torch

    from ragplug.adapters.lora import LoRAModel, train_lora

    torch.set_num_threads(threads)
    examples = world.raft_examples() if raft else world.lora_examples()
    start = time.perf_counter()
    result = train_lora(base, examples, out_dir, config=config, overwrite=True)
    seconds = time.perf_counter() - start
    model = LoRAModel(base, {"probe": out_dir})
    settings = contexts(world) if raft else {"closed_book": lambda q: None}
    measured = {name: accuracy(model, world, fn, adapter="probe") for name, fn in settings.items()}
    model.close()
    return {
        "kind": "raft" if raft else "closed_book",
        "config": {k: v for k, v in asdict(config).items() if k not in ("progress", "device")},
        "examples": len(examples),
        "train_seconds": round(seconds, 1),
        "epoch_losses": [round(x, 4) for x in result.epoch_losses],
        "accuracy": measured,
    }


def _shuffled_with_distractors(world: World, passage_id: str, k: int) -> list[str]:
    ids = [passage_id, *world.distractors(passage_id, k)]
    random.Random(passage_id).shuffle(ids)
    return [world.corpus[i] for i in ids]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_FOLDER)
    parser.add_argument("--seed", type=int, default=0, help="world seed (the reader is tied to its world)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: build_reader's)")
    parser.add_argument("--time-limit", type=float, default=None, help="stop training after this many seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--probe",
        type=Path,
        default=None,
        help="skip training; train the probe adapters on the reader at --out "
        "into this folder and print their accuracies",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    world = make_world(args.seed)
    if args.probe is not None:
        from ragplug.adapters.lora import TrainConfig

        results = [
            probe_lora(world, args.out, args.probe / "closed_book", TrainConfig(**PROBE_LORA), threads=args.threads),
            probe_lora(
                world, args.out, args.probe / "raft", TrainConfig(**PROBE_RAFT), raft=True, threads=args.threads
            ),
        ]
        print(json.dumps(results, indent=2))
        return
    kwargs: dict[str, Any] = {"threads": args.threads, "time_limit_s": args.time_limit}
    if args.steps is not None:
        kwargs["steps"] = args.steps
    record = build_reader(world, args.out, **kwargs)
    record["test_accuracy"] = evaluate_reader(world, args.out, threads=args.threads)
    (args.out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record["test_accuracy"], indent=2))


if __name__ == "__main__":
    main()
