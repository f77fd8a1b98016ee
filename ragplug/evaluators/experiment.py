"""RAG vs LoRA vs both, measured on the user's own model and data: :func:`compare` (``ragplug compare``).

Given a base model, a corpus, training QA pairs and test QA pairs, every arm answers every test question:

* ``base`` — the base model, closed book;
* ``rag`` — the base model with the top-``k`` retrieved passages in the prompt;
* ``lora`` — a LoRA adapter trained on the training pairs (``lora_data="qa"``) or on the corpus
  (``"corpus"``: each passage's opening words as the prompt, the rest as the answer), closed book;
* ``lora_rag`` — that adapter with the retrieved passages;
* ``raft_rag`` — a RAFT-style adapter, trained with each pair's gold passage (its ``context`` if it has one,
  else its ``gold_ids`` in the corpus) among ``raft_distractors`` random corpus passages in the prompt (so it
  learns to find the answer among retrieved text), served with the retrieved passages.

One base model serves every arm: the adapters are loaded together and the scheduler mixes their requests in
shared batches. Prompts come from :func:`~ragplug.adapters.lora.train.build_messages` in training and
serving alike; the retriever (any ragplug :class:`~ragplug.retrievers.protocol.Retriever`) is queried once
per question and its passages are shared by the RAG arms.

The report (``compare.json``/``.md``/``.png`` through :class:`~.report.Report`): answer quality per arm
(exact match and token F1, or label accuracy when ``labels`` are given; a judge's correctness score when a
:class:`~ragplug.chat.ChatFunction` judge is given), per question kind when the items carry
``metadata["kind"]``, with 95% bootstrap intervals and paired tests against ``base``; and the costs —
training time, adapter size, index size, retrieval recall, latency per answer, prompt tokens, failures.

Resumable: the work folder holds the experiment's identity, the adapters, and journals of retrievals,
answers and judgements written as they finish (:mod:`.journal`). A killed run continues where it stopped;
a failed item (a retriever or an adapter that raised) is recorded with its error, counted in the report,
and tried again by the next run. A folder holding another experiment is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from ragplug._checks import integer_at_least
from ragplug.errors import DatasetError, EvaluationError, InvalidInputError
from ragplug.evaluators.datasets import QAItem
from ragplug.evaluators.journal import Journal

__all__ = ["ARMS", "CompareConfig", "CompareResult", "compare"]

logger = logging.getLogger(__name__)

ARMS = ("base", "rag", "lora", "lora_rag", "raft_rag")
_ADAPTER = {"base": None, "rag": None, "lora": "lora", "lora_rag": "lora", "raft_rag": "raft"}
_RETRIEVES = {"rag", "lora_rag", "raft_rag"}
FORMAT = 1


def _default_train() -> Any:
    from ragplug.adapters.lora.train import TrainConfig

    return TrainConfig(progress=False)


@dataclass(frozen=True)
class CompareConfig:
    """The experiment's settings (all part of its identity: a resumed run must use the same)."""

    arms: tuple[str, ...] = ARMS
    k: int = field(default=3, metadata={"help": "passages retrieved per question"})
    lora_data: Literal["qa", "corpus"] = field(default="qa", metadata={"help": "what the lora adapter learns"})
    train: Any = field(default_factory=_default_train, metadata={"help": "TrainConfig of both adapters"})
    raft_distractors: int = field(default=2, metadata={"help": "distractor passages per RAFT example"})
    max_new_tokens: int = 32
    system: str | None = field(default=None, metadata={"help": "system prompt of every arm (and of training)"})
    labels: tuple[str, ...] | None = field(default=None, metadata={"help": "score by label accuracy (yes/no/..)"})
    concurrency: int = field(default=16, metadata={"help": "requests in flight (the scheduler batches them)"})
    seed: int = 0

    def __post_init__(self) -> None:
        from ragplug.adapters.lora.train import TrainConfig

        arms = tuple(self.arms) if not isinstance(self.arms, str) else (self.arms,)
        unknown = [arm for arm in arms if arm not in ARMS]
        if not arms or unknown or len(set(arms)) != len(arms):
            msg = f"arms must be distinct names among {list(ARMS)}, got {list(self.arms)!r}"
            raise InvalidInputError(msg)
        object.__setattr__(self, "arms", arms)
        for name, least in (("k", 1), ("raft_distractors", 0), ("max_new_tokens", 1), ("concurrency", 1)):
            integer_at_least(getattr(self, name), name, least)
        if self.lora_data not in ("qa", "corpus"):
            msg = f"lora_data must be 'qa' or 'corpus', got {self.lora_data!r}"
            raise InvalidInputError(msg)
        if not isinstance(self.train, TrainConfig):
            msg = f"train must be a TrainConfig, got {type(self.train).__name__}"
            raise InvalidInputError(msg)
        if self.labels is not None:
            labels = tuple(self.labels)
            if not labels or not all(isinstance(label, str) and label.strip() for label in labels):
                msg = f"labels must be non-empty strings, got {self.labels!r}"
                raise InvalidInputError(msg)
            object.__setattr__(self, "labels", labels)

    def identity(self) -> dict[str, Any]:
        """What makes two runs the same experiment (progress bars and devices aside)."""
        data = asdict(self)
        data["train"] = {k: v for k, v in asdict(self.train).items() if k not in ("progress", "device")}
        return json.loads(json.dumps(data, default=list))


@dataclass(frozen=True)
class CompareResult:
    """Where the report went, and the per-arm answers behind it."""

    folder: Path
    files: dict[str, Path]
    report: dict[str, Any]
    answers: dict[str, dict[str, str]]  # arm -> item id -> answer
    failures: dict[str, dict[str, str]]  # arm -> item id -> error


def compare(
    base: str | Path,
    *,
    corpus: Mapping[str, str],
    train: Sequence[QAItem],
    test: Sequence[QAItem],
    folder: str | Path,
    retriever: Any = None,
    config: CompareConfig | None = None,
    judge: Any = None,
    index_bytes: int | None = None,
    load: Any = None,
    progress: bool | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> CompareResult:
    """Run (or resume) the experiment in ``folder`` and write its report there; see the module docstring.

    Args:
        base: the base model (hub id or folder), served through ragplug's ``LoRAModel``.
        corpus: passage id -> text; what the retriever indexes, the RAFT examples draw passages from, and
            (``lora_data="corpus"``) what the lora adapter learns.
        train: the pairs the adapters learn (their ``gold_ids`` name RAFT's gold passages).
        test: the questions every arm answers; each needs a reference ``answer``.
        retriever: any ragplug retriever (``search(query, k=)`` or ``asearch``); needed by the RAG arms.
        judge: a :class:`~ragplug.chat.ChatFunction`; when given, a :class:`~.judges.Correctness` judge grades
            every answer against its reference (metric ``judge_correctness``).
        index_bytes: the retriever's index size, reported as a cost of the RAG arms.
        load: the ``LoadConfig`` the model is served with.
    """
    config = config or CompareConfig()
    work = _Work.open(Path(folder), base, corpus, train, test, config, retriever)
    server = _Server(work, base, load, retriever, judge, progress)
    server.run()
    return server.finish(index_bytes, metadata or {})


def _fingerprint(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
    return digest.hexdigest()


def _item_data(item: QAItem) -> dict[str, Any]:
    return {"id": item.id, "question": item.question, "answer": item.answer, "gold": list(item.gold_ids)}


@dataclass
class _Work:
    """The work folder: identity, adapters and journals."""

    folder: Path
    corpus: Mapping[str, str]
    train: list[QAItem]
    test: list[QAItem]
    config: CompareConfig
    retrievals: Journal
    answers: Journal
    judgements: Journal
    adapters: Journal

    @classmethod
    def open(
        cls,
        folder: Path,
        base: str | Path,
        corpus: Mapping[str, str],
        train: Sequence[QAItem],
        test: Sequence[QAItem],
        config: CompareConfig,
        retriever: Any,
    ) -> _Work:
        test, train = list(test), list(train)
        _check_inputs(corpus, train, test, config, retriever)
        identity = {
            "kind": "ragplug-compare",
            "format": FORMAT,
            "base": str(base),
            "config": config.identity(),
            "data": _fingerprint(sorted(corpus.items()), [_item_data(i) for i in train], [_item_data(i) for i in test]),
        }
        folder.mkdir(parents=True, exist_ok=True)
        marker = folder / "experiment.json"
        if marker.exists():
            try:
                found = json.loads(marker.read_text(encoding="utf-8"))
            except ValueError as err:
                msg = f"{marker} is not readable JSON ({err}); use another folder"
                raise InvalidInputError(msg) from err
            if found != identity:
                differs = sorted(k for k in identity if found.get(k) != identity[k]) if isinstance(found, dict) else []
                msg = (
                    f"{folder} holds another experiment (different {', '.join(differs) or 'contents'}); "
                    "resume it with the same base, data and settings, or use a new folder"
                )
                raise InvalidInputError(msg)
        else:
            temp = marker.with_suffix(".tmp")
            temp.write_text(json.dumps(identity, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            temp.replace(marker)
        return cls(
            folder,
            corpus,
            train,
            test,
            config,
            Journal(folder / "retrievals.jsonl", lambda r: r["id"]),
            Journal(folder / "answers.jsonl", lambda r: f"{r['arm']}\t{r['id']}"),
            Journal(folder / "judgements.jsonl", lambda r: f"{r['arm']}\t{r['id']}"),
            Journal(folder / "adapters.jsonl", lambda r: r["name"]),
        )


def _check_inputs(
    corpus: Mapping[str, str], train: list[QAItem], test: list[QAItem], config: CompareConfig, retriever: Any
) -> None:
    if not test:
        msg = "the test set is empty: there is nothing to answer"
        raise DatasetError(msg)
    for where, items in (("test", test), ("train", train)):
        bad = [i for i in items if not isinstance(i, QAItem)]
        if bad:
            msg = f"{where} items must be QAItem, got {type(bad[0]).__name__}"
            raise InvalidInputError(msg)
        ids = [i.id for i in items]
        if len(set(ids)) != len(ids):
            duplicate = next(i for i in ids if ids.count(i) > 1)
            msg = f"{where} item id {duplicate!r} appears more than once"
            raise DatasetError(msg)
    missing = [i.id for i in test if i.answer is None or not i.answer.strip()]
    if missing:
        msg = f"{len(missing)} test items have no reference answer to score against: {missing[:10]}"
        raise DatasetError(msg)
    adapters = {_ADAPTER[arm] for arm in config.arms} - {None}
    if ("lora" in adapters and config.lora_data == "qa") or "raft" in adapters:
        unanswered = [i.id for i in train if i.answer is None or not i.answer.strip()]
        if not train or unanswered:
            msg = "the LoRA arms need training pairs with answers: " + (
                f"{len(unanswered)} have none: {unanswered[:10]}" if train else "the training set is empty"
            )
            raise DatasetError(msg)
    if (("lora" in adapters and config.lora_data == "corpus") or "raft" in adapters) and not corpus:
        msg = "the corpus is empty; the corpus-trained and RAFT adapters learn from it"
        raise DatasetError(msg)
    if _RETRIEVES & set(config.arms) and retriever is None:
        msg = f"the arms {sorted(_RETRIEVES & set(config.arms))} need a retriever"
        raise InvalidInputError(msg)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in corpus.items()):
        msg = "corpus must map passage ids (str) to texts (str)"
        raise InvalidInputError(msg)


def _adapter_examples(name: str, work: _Work) -> tuple[list[Any], dict[str, Any]]:
    """The training examples of adapter ``name`` and what is worth reporting about them."""
    from ragplug.adapters.lora.train import TrainExample

    config, system = work.config, work.config.system
    if name == "lora" and config.lora_data == "corpus":
        examples = []
        for text in work.corpus.values():
            words = text.split()
            if len(words) >= 4:
                cut = max(2, min(12, len(words) // 3))
                opening = " ".join(words[:cut])
                examples.append(TrainExample(f"Continue the text: {opening}", " ".join(words[cut:]), system=system))
        return examples, {"source": "corpus", "examples": len(examples)}
    if name == "lora":
        examples = [TrainExample(i.question, i.answer or "", system=system) for i in work.train]
        return examples, {"source": "qa", "examples": len(examples)}
    rng = random.Random(config.seed)
    ids = sorted(work.corpus)
    examples, no_gold = [], []
    for item in work.train:
        # the gold passage as the pair was learnt: its own context if it has one (a fact since updated in the
        # corpus was learnt from the passage of the time), else its gold passages in the corpus
        gold = [item.context] if item.context else [work.corpus[g] for g in item.gold_ids if g in work.corpus]
        if not gold:
            no_gold.append(item.id)
        others = [p for p in ids if p not in set(item.gold_ids)]
        passages = gold + [work.corpus[p] for p in rng.sample(others, min(config.raft_distractors, len(others)))]
        rng.shuffle(passages)
        context = "\n\n".join(passages)
        examples.append(TrainExample(item.question, item.answer or "", context=context, system=system))
    if no_gold:
        logger.warning("RAFT: %d training items have no gold passage in the corpus: distractors only", len(no_gold))
    return examples, {"source": "raft", "examples": len(examples), "without_gold": len(no_gold)}


class _Server:
    """Trains what is missing, retrieves, answers and judges what is not done yet, then scores."""

    def __init__(self, work: _Work, base: str | Path, load: Any, retriever: Any, judge: Any, progress: Any) -> None:
        self.work = work
        self.base = base
        self.load = load
        self.retriever = retriever
        self.judge = judge
        self.progress = progress
        self.adapter_errors: dict[str, str] = {}

    # -- adapters -------------------------------------------------------------------------------------
    def _train(self, name: str) -> Path | None:
        from ragplug.adapters.lora.train import train_lora

        folder = self.work.folder / "adapters" / name
        done = self.work.adapters.get(name)
        if done is not None and done.get("error") is None and (folder / "adapter_model.safetensors").is_file():
            return folder
        examples, about = _adapter_examples(name, self.work)
        started = time.perf_counter()
        try:
            result = train_lora(self.base, examples, folder, config=self.work.config.train, overwrite=True)
        except Exception as err:  # the arms of this adapter fail, per item; the others go on
            self.adapter_errors[name] = f"{type(err).__name__}: {err}"
            self.work.adapters.append({"name": name, "error": self.adapter_errors[name], **about})
            logger.warning("adapter %r could not be trained: %s", name, err)
            return None
        self.work.adapters.append(
            {
                "name": name,
                "error": None,
                "seconds": time.perf_counter() - started,
                "bytes": (folder / "adapter_model.safetensors").stat().st_size,
                "final_loss": result.final_loss,
                "epoch_losses": list(result.epoch_losses),
                **about,
            }
        )
        return folder

    # -- the run --------------------------------------------------------------------------------------
    def run(self) -> None:
        from ragplug.adapters.lora import LoRAModel

        arms = self.work.config.arms
        names = sorted({adapter for arm in arms if (adapter := _ADAPTER[arm]) is not None})
        folders = {name: folder for name in names if (folder := self._train(name)) is not None}
        if _RETRIEVES & set(arms):
            self._retrieve()
        todo = [
            (arm, item)
            for item in self.work.test
            for arm in arms
            if not (self.work.answers.get(f"{arm}\t{item.id}") or {}).get("ok")
        ]
        if todo:
            model = LoRAModel(self.base, folders, load=self.load)
            try:
                self._answer(model, todo)
            finally:
                model.close()
        if self.judge is not None:
            self._judge()

    def _retrieve(self) -> None:
        from ragplug.evaluators.runner import run_batch

        todo = [i for i in self.work.test if not (self.work.retrievals.get(i.id) or {}).get("ok")]
        k = self.work.config.k

        def search(item: QAItem) -> None:
            started = time.perf_counter()
            try:  # chunks of one passage count once: ask for more than k, keep k passages
                hits = self.retriever.search(item.question, k=3 * k)
            except Exception as err:
                self.work.retrievals.append({"id": item.id, "ok": False, "error": f"{type(err).__name__}: {err}"})
                raise
            passages: dict[str, dict[str, Any]] = {}
            for hit in hits:
                passage = getattr(hit, "parent_id", None) or hit.id
                if passage not in passages and len(passages) < k:
                    text = self.work.corpus.get(passage, getattr(hit, "text", None) or "")
                    passages[passage] = {"id": passage, "score": float(hit.score), "text": text}
            seconds = time.perf_counter() - started
            self.work.retrievals.append(
                {"id": item.id, "ok": True, "passages": list(passages.values()), "seconds": seconds}
            )

        if todo:  # one query at a time: a query encoder on the CPU gains nothing from threads
            run_batch(todo, search, concurrency=1, progress=self.progress, desc="retrieve", ids=lambda i: i.id)

    def _messages(self, arm: str, item: QAItem) -> list[dict[str, str]]:
        from ragplug.adapters.lora.train import build_messages

        example: dict[str, Any] = {"question": item.question, "system": self.work.config.system}
        if arm in _RETRIEVES:
            found = self.work.retrievals.get(item.id) or {}
            if not found.get("ok"):
                msg = f"no retrieved passages: {found.get('error', 'retrieval did not run')}"
                raise EvaluationError(msg)
            example["context"] = "\n\n".join(p["text"] for p in found["passages"]) or "(nothing found)"
        return build_messages(example)

    def _answer(self, model: Any, todo: list[tuple[str, QAItem]]) -> None:
        from ragplug.adapters.lora import ChatOptions, GenerationConfig
        from ragplug.evaluators.runner import ItemOutcome, run_batch

        config = GenerationConfig(max_new_tokens=self.work.config.max_new_tokens)

        async def answer(job: tuple[str, QAItem]) -> bool:
            arm, item = job
            record: dict[str, Any] = {"arm": arm, "id": item.id}
            started = time.perf_counter()
            try:
                adapter = _ADAPTER[arm]
                if adapter is not None and adapter in self.adapter_errors:
                    msg = f"adapter {adapter!r} could not be trained: {self.adapter_errors[adapter]}"
                    raise EvaluationError(msg)
                result = await model.achat(self._messages(arm, item), ChatOptions(adapter=adapter, config=config))
            except Exception as err:
                self.work.answers.append({**record, "ok": False, "error": f"{type(err).__name__}: {err}"})
                raise
            self.work.answers.append(
                {
                    **record,
                    "ok": True,
                    "answer": result.content.strip(),
                    "prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "seconds": time.perf_counter() - started,
                }
            )
            return True

        outcomes: list[ItemOutcome[bool]] = run_batch(
            todo,
            answer,
            concurrency=self.work.config.concurrency,
            progress=self.progress,
            desc="answer",
            ids=lambda job: f"{job[0]}:{job[1].id}",
        )
        del outcomes  # failures are in the journal

    def _judge(self) -> None:
        from ragplug.evaluators.judges import Correctness, JudgeItem
        from ragplug.evaluators.runner import ItemOutcome, run_batch

        judge = Correctness(self.judge)
        todo = []
        for arm in self.work.config.arms:
            for item in self.work.test:
                key = f"{arm}\t{item.id}"
                answer = self.work.answers.get(key) or {}
                if answer.get("ok") and not (self.work.judgements.get(key) or {}).get("ok"):
                    todo.append(
                        (arm, JudgeItem(item.id, item.question, answer["answer"] or "(no answer)", (), item.answer))
                    )

        async def grade(job: tuple[str, Any]) -> bool:
            arm, judge_item = job
            try:
                judgement = await judge.ajudge_item(judge_item)
            except Exception as err:
                self.work.judgements.append({"arm": arm, "id": judge_item.item_id, "ok": False, "error": str(err)})
                raise
            self.work.judgements.append(
                {"arm": arm, "id": judge_item.item_id, "ok": True, "score": judgement.score, "reason": judgement.reason}
            )
            return True

        if todo:
            outcomes: list[ItemOutcome[bool]] = run_batch(
                todo, grade, concurrency=self.work.config.concurrency, progress=self.progress, desc="judge"
            )
            del outcomes  # failures are in the journal

    # -- scoring and the report -----------------------------------------------------------------------
    def finish(self, index_bytes: int | None, metadata: Mapping[str, Any]) -> CompareResult:
        from ragplug.evaluators.report import Report

        scores, answers, failures = self._scores()
        if not any(scores.values()):
            msg = f"no arm answered any question; failures: {_first_failures(failures)}"
            raise EvaluationError(msg)
        arms = [arm for arm in self.work.config.arms if scores.get(arm)]
        kinds = {i.id: i.metadata.get("kind") for i in self.work.test}
        groups = {k: str(v) for k, v in kinds.items()} if all(v is not None for v in kinds.values()) else None
        report = Report(
            {arm: scores[arm] for arm in arms},
            groups=groups,
            costs=self._costs(arms, failures, index_bytes),
            metadata={
                **metadata,
                "base": str(self.base),
                "config": self.work.config.identity(),
                "test_items": len(self.work.test),
                "train_items": len(self.work.train),
                "adapters": {
                    name: self.work.adapters.get(name) for name in ("lora", "raft") if self.work.adapters.get(name)
                },
                "failures": {arm: len(f) for arm, f in failures.items() if f},
            },
            baseline="base" if "base" in arms else None,
            bounds=(0.0, 1.0),
            title="RAG vs LoRA vs both",
            seed=self.work.config.seed,
        )
        files = report.write(self.work.folder, "compare")
        if any(failures.values()):
            logger.warning("failed items (tried again by the next run): %s", _first_failures(failures))
        return CompareResult(self.work.folder, files, report.to_dict(), answers, failures)

    def _scores(
        self,
    ) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        from ragplug.evaluators.answers import exact_match, extract_label, token_f1

        labels = self.work.config.labels
        scores: dict[str, dict[str, dict[str, float]]] = {}
        answers: dict[str, dict[str, str]] = {}
        failures: dict[str, dict[str, str]] = {}
        for arm in self.work.config.arms:
            by_metric: dict[str, dict[str, float]] = {}
            answers[arm], failures[arm] = {}, {}
            for item in self.work.test:
                record = self.work.answers.get(f"{arm}\t{item.id}")
                if record is None or not record.get("ok"):
                    failures[arm][item.id] = (record or {}).get("error", "not answered")
                    continue
                text, reference = record["answer"], item.answer or ""
                answers[arm][item.id] = text
                if labels is not None:
                    wanted = extract_label(reference, labels)
                    by_metric.setdefault("label_accuracy", {})[item.id] = float(
                        wanted is not None and extract_label(text, labels) == wanted
                    )
                else:
                    by_metric.setdefault("exact_match", {})[item.id] = exact_match(text, reference)
                    by_metric.setdefault("token_f1", {})[item.id] = token_f1(text, reference)
                judged = self.work.judgements.get(f"{arm}\t{item.id}")
                if judged is not None and judged.get("ok"):
                    by_metric.setdefault("judge_correctness", {})[item.id] = float(judged["score"])
            scores[arm] = by_metric
        judged_arms = [arm for arm in scores if "judge_correctness" in scores[arm]]
        if judged_arms and len(judged_arms) < len([arm for arm in scores if scores[arm]]):
            logger.warning("the judge graded no answer of some arms: its scores are left out of the report")
            for by_metric in scores.values():
                by_metric.pop("judge_correctness", None)
        return scores, answers, failures

    def _costs(
        self, arms: list[str], failures: Mapping[str, Mapping[str, str]], index_bytes: int | None
    ) -> dict[str, dict[str, float]]:
        from ragplug.evaluators.metrics import retrieval_scores

        k = self.work.config.k
        recall: dict[str, float] = {}
        qrels = {i.id: list(i.gold_ids) for i in self.work.test if i.gold_ids}
        run = {
            i.id: [p["id"] for p in rec["passages"]]
            for i in self.work.test
            if (rec := self.work.retrievals.get(i.id)) and rec.get("ok")
        }
        if qrels and run:
            found = retrieval_scores({q: run.get(q, []) for q in qrels}, qrels, (f"recall@{k}", f"all_gold@{k}"))
            recall = found.means
        costs: dict[str, dict[str, float]] = {}
        for arm in arms:
            answered = [self.work.answers.get(f"{arm}\t{i.id}") for i in self.work.test]
            done = [a for a in answered if a and a.get("ok")]
            row: dict[str, float] = {
                "failed": float(len(failures.get(arm, {}))),
                "s/answer": sum(a["seconds"] for a in done) / max(len(done), 1),
                "prompt tokens": sum(a["prompt_tokens"] for a in done) / max(len(done), 1),
            }
            adapter = _ADAPTER[arm]
            trained = self.work.adapters.get(adapter) if adapter else None
            if trained and trained.get("error") is None:
                row["train s"] = float(trained["seconds"])
                row["adapter MB"] = trained["bytes"] / 1e6
            if arm in _RETRIEVES:
                seconds = [
                    r["seconds"] for i in self.work.test if (r := self.work.retrievals.get(i.id)) and r.get("ok")
                ]
                row["s/answer"] += sum(seconds) / max(len(seconds), 1)  # the retrieval is part of the answer
                for name, value in recall.items():
                    row[f"retrieval {name}"] = value
                if index_bytes is not None:
                    row["index MB"] = index_bytes / 1e6
            costs[arm] = row
        return costs


def _first_failures(failures: Mapping[str, Mapping[str, str]]) -> str:
    shown = [
        f"{arm}:{item} ({error})" for arm, by_item in failures.items() for item, error in list(by_item.items())[:2]
    ]
    return "; ".join(shown[:6]) or "none"
