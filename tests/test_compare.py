"""`compare`: the RAG vs LoRA vs both experiment, end to end on the tiny local LLM and a tiny world, with the real
offline MiniLM as its retriever. Random LLM weights: asserted are the arms, records, resumption and errors,
not the answers' quality."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from ragplug.adapters.lora import TrainConfig
from ragplug.errors import DatasetError, InvalidInputError, StoreCorruptedError
from ragplug.evaluators.datasets import QAItem
from ragplug.evaluators.experiment import ARMS, CompareConfig, compare
from ragplug.retrievers.late_interaction import LateInteractionIndex

PEOPLE = {
    "p1": ("Alda Brennic", "Corvale", "baker"),
    "p2": ("Tamsin Oakhart", "Lunmere", "sailor"),
    "p3": ("Orrin Saltmarsh", "Pellin", "florist"),
    "p4": ("Vesna Thornbury", "Raskel", "jeweller"),
}
CORPUS = {pid: f"{name} was born in {city}. {name} works as a {job}." for pid, (name, city, job) in PEOPLE.items()}
TRAIN = [
    QAItem(f"t-{pid}", f"Where was {name} born?", city, gold_ids=(pid,)) for pid, (name, city, _) in PEOPLE.items()
]
TEST = [
    QAItem(f"q-{pid}", f"What does {name} do?", job, gold_ids=(pid,), metadata={"kind": kind})
    for kind, (pid, (name, _, job)) in zip(["trained", "trained", "unseen", "unseen"], PEOPLE.items(), strict=True)
]
FAST = CompareConfig(
    k=2,
    max_new_tokens=6,
    concurrency=8,
    train=TrainConfig(epochs=1, batch_size=4, r=4, lora_alpha=8, max_length=256, progress=False),
)


class Flaky:
    """A retriever over a real index that fails for the questions named in ``broken``."""

    def __init__(self, index: LateInteractionIndex, broken: set[str]) -> None:
        self.index, self.broken, self.calls = index, broken, 0

    def search(self, query: str, *, k: int = 4, **options: Any) -> Any:
        self.calls += 1
        if any(word in query for word in self.broken):
            msg = "the search service is down"
            raise ConnectionError(msg)
        return self.index.search(query, k=k)


@pytest.fixture(scope="module")
def index(minilm_encoder) -> LateInteractionIndex:
    built = LateInteractionIndex(minilm_encoder)
    built.add(list(CORPUS.values()), ids=list(CORPUS))
    return built


def _answer_lines(folder: Path) -> list[dict[str, Any]]:
    """The journal's whole records (the torn line a killed run left is not one)."""
    records = []
    for line in (folder / "answers.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


@pytest.mark.slow
def test_every_arm_answers_and_a_stopped_run_resumes(tiny_llm: dict[str, Path], index, tmp_path: Path) -> None:
    retriever = Flaky(index, broken={"Orrin"})
    first = compare(
        tiny_llm["base"], corpus=CORPUS, train=TRAIN, test=TEST, folder=tmp_path, retriever=retriever, config=FAST
    )
    # the broken question fails in the three RAG arms, recorded per item; everything else is answered
    assert {arm: sorted(f) for arm, f in first.failures.items() if f} == {
        arm: ["q-p3"] for arm in ("rag", "lora_rag", "raft_rag")
    }
    assert "ConnectionError: the search service is down" in first.failures["rag"]["q-p3"]
    assert all(len(first.answers[arm]) == (3 if arm in ("rag", "lora_rag", "raft_rag") else 4) for arm in ARMS)
    report = first.report
    assert report["arms"] == list(ARMS) and report["groups"] == ["trained", "unseen"]
    assert set(report["metrics"]) == {"exact_match", "token_f1"}
    assert report["costs"]["rag"]["failed"] == 1 and report["costs"]["base"]["failed"] == 0
    assert report["costs"]["lora"]["adapter MB"] > 0 and report["costs"]["lora"]["train s"] > 0
    assert "retrieval recall@2" in report["costs"]["rag"] and "retrieval recall@2" not in report["costs"]["lora"]
    assert {p.suffix for p in first.files.values()} == {".json", ".md", ".png"}
    trained = (tmp_path / "adapters" / "raft" / "adapter_model.safetensors").stat().st_mtime_ns

    # a run killed while writing: its last answer line is torn
    lines = (tmp_path / "answers.jsonl").read_text().splitlines()
    (tmp_path / "answers.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    retriever.broken.clear()
    calls = retriever.calls
    second = compare(
        tiny_llm["base"], corpus=CORPUS, train=TRAIN, test=TEST, folder=tmp_path, retriever=retriever, config=FAST
    )
    assert not any(second.failures.values())
    assert retriever.calls == calls + 1  # only the failed retrieval is tried again
    assert (tmp_path / "adapters" / "raft" / "adapter_model.safetensors").stat().st_mtime_ns == trained  # kept
    done = [(r["arm"], r["id"]) for r in _answer_lines(tmp_path) if r.get("ok")]
    assert sorted(set(done)) == sorted((arm, item.id) for arm in ARMS for item in TEST)
    assert len(done) == len(set(done))  # nothing answered twice
    assert all(second.answers[arm] == {**first.answers[arm], **second.answers[arm]} for arm in ARMS)


@pytest.mark.slow
def test_a_judge_grades_every_answer(tiny_llm: dict[str, Path], lora_model, index, tmp_path: Path) -> None:
    from ragplug.adapters.lora import lora_chat_function

    config = CompareConfig(arms=("base", "rag"), k=1, max_new_tokens=4, train=FAST.train)
    judge = lora_chat_function(lora_model, max_new_tokens=120)
    result = compare(
        tiny_llm["base"],
        corpus=CORPUS,
        train=[],
        test=TEST,
        folder=tmp_path,
        retriever=index,
        config=config,
        judge=judge,
    )
    assert "judge_correctness" in result.report["metrics"]
    scores = [json.loads(line)["score"] for line in (tmp_path / "judgements.jsonl").read_text().splitlines()]
    assert len(scores) == 8 and all(0.0 <= s <= 1.0 for s in scores)


def test_labels_are_scored_by_label_accuracy(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    test = [QAItem("a", "Is the sky green?", "no"), QAItem("b", "Is water wet?", "yes")]
    config = CompareConfig(arms=("base",), max_new_tokens=3, labels=("yes", "no", "maybe"))
    result = compare(tiny_llm["base"], corpus={}, train=[], test=test, folder=tmp_path, config=config)
    assert result.report["metrics"] == ["label_accuracy"]
    assert result.report["costs"]["base"]["failed"] == 0


def test_bad_input_is_refused_before_any_work(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    base = tiny_llm["base"]
    with pytest.raises(DatasetError, match="empty"):
        compare(base, corpus=CORPUS, train=TRAIN, test=[], folder=tmp_path / "a", config=FAST)
    with pytest.raises(DatasetError, match=r"no reference answer.*\['x'\]"):
        compare(base, corpus=CORPUS, train=TRAIN, test=[QAItem("x", "Why?", None)], folder=tmp_path / "b")
    with pytest.raises(DatasetError, match="'q-p1' appears more than once"):
        compare(base, corpus=CORPUS, train=TRAIN, test=[TEST[0], TEST[0]], folder=tmp_path / "c")
    with pytest.raises(InvalidInputError, match="need a retriever"):
        compare(base, corpus=CORPUS, train=TRAIN, test=TEST, folder=tmp_path / "d", config=FAST)
    with pytest.raises(DatasetError, match="training set is empty"):
        compare(base, corpus=CORPUS, train=[], test=TEST, folder=tmp_path / "e", config=CompareConfig(arms=("lora",)))
    with pytest.raises(InvalidInputError, match="arms must be distinct names"):
        CompareConfig(arms=("base", "finetune"))
    with pytest.raises(InvalidInputError, match="k must be an integer >= 1"):
        CompareConfig(k=0)
    assert not any((tmp_path / name).exists() and any((tmp_path / name).iterdir()) for name in "abcde")


def test_a_folder_holds_one_experiment(tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    config = CompareConfig(arms=("base",), max_new_tokens=2)
    compare(tiny_llm["base"], corpus={}, train=[], test=TEST[:1], folder=tmp_path, config=config)
    with pytest.raises(InvalidInputError, match=r"holds another experiment \(different config\)"):
        compare(tiny_llm["base"], corpus={}, train=[], test=TEST[:1], folder=tmp_path, config=replace(config, k=5))
    with pytest.raises(InvalidInputError, match=r"different data"):
        compare(tiny_llm["base"], corpus={}, train=[], test=TEST[:2], folder=tmp_path, config=config)
    (tmp_path / "answers.jsonl").write_text('{"arm": "base"\n{"arm": "base", "id": "q-p1", "ok": true}\n')
    with pytest.raises(StoreCorruptedError, match="line 1"):  # damage that is not a torn last line
        compare(tiny_llm["base"], corpus={}, train=[], test=TEST[:1], folder=tmp_path, config=config)


def test_raft_examples_hold_the_gold_passage_as_learnt_among_distractors() -> None:
    from types import SimpleNamespace

    from ragplug.evaluators.experiment import _adapter_examples

    learnt = "Alda Brennic was born in Oldtown."  # the passage of the time; the corpus now says Corvale
    train = [QAItem("t1", "Where was Alda Brennic born?", "Oldtown", gold_ids=("p1",), context=learnt), TRAIN[1]]
    work = SimpleNamespace(config=replace(FAST, raft_distractors=2), corpus=CORPUS, train=train)
    examples, about = _adapter_examples("raft", work)  # type: ignore[arg-type]
    first, second = (example.context.split("\n\n") for example in examples)
    assert learnt in first and CORPUS["p1"] not in first and len(first) == 3
    assert CORPUS["p2"] in second and len(set(second)) == 3
    assert about == {"source": "raft", "examples": 2, "without_gold": 0}
