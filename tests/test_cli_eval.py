"""`ragplug compare` and `ragplug eval retrieval` from the command line: tiny local LLM, offline MiniLM, files the
tests write (and the real PubMedQA folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ragplug.cli import main

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PEOPLE = [("Alda Brennic", "Corvale"), ("Tamsin Oakhart", "Lunmere"), ("Orrin Saltmarsh", "Pellin")]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    corpus = [{"id": f"p{i}", "text": f"{name} was born in {city}."} for i, (name, city) in enumerate(PEOPLE)]
    qa = [
        {"id": f"q{i}", "question": f"Where was {name} born?", "answer": city, "gold_ids": [f"p{i}"]}
        for i, (name, city) in enumerate(PEOPLE)
    ]
    return {
        "corpus": _write_jsonl(tmp_path / "corpus.jsonl", corpus),
        "train": _write_jsonl(tmp_path / "train.jsonl", qa),
        "test": _write_jsonl(tmp_path / "test.jsonl", qa),
    }


@pytest.mark.slow
def test_compare_runs_and_resumes(tiny_llm: dict[str, Path], files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = [
        "compare",
        "--base",
        str(tiny_llm["base"]),
        "--out",
        str(out),
        *("--corpus", str(files["corpus"]), "--train", str(files["train"]), "--test", str(files["test"])),
        *("--arms", "base,rag,lora_rag", "-k", "1", "--epochs", "1", "--rank", "4", "--max-new-tokens", "4"),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "exact_match: base " in printed and "report: " in printed
    assert (out / "compare.md").is_file() and (out / "index" / "manifest.json").is_file()
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 9
    assert main(argv) == 0  # resumed: nothing left to do, the report is written again
    assert (out / "answers.jsonl").read_text().splitlines() == lines
    other = [*argv[: argv.index("-k")], "-k", "2", *argv[argv.index("-k") + 2 :]]
    assert main(other) == 2
    assert "holds another experiment" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "pubmedqa").is_dir(), reason="the shared data folder (../shared/data) is absent")
def test_compare_on_pubmedqa_scores_labels(tiny_llm: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "pubmedqa"
    argv = ["compare", "--base", str(tiny_llm["base"]), "--out", str(out), "--pubmedqa", str(DATA / "pubmedqa")]
    argv += ["--arms", "base,lora", "--limit", "3", "--epochs", "1", "--rank", "2", "--max-new-tokens", "3"]
    assert main([*argv, "--no-progress"]) == 0
    assert "label_accuracy: base " in capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert report["metadata"]["test_items"] == 3 and report["metadata"]["config"]["labels"] == ["yes", "no", "maybe"]


def test_compare_refuses_incomplete_data(tiny_llm: dict[str, Path], files: dict[str, Path], tmp_path: Path, capsys):
    base = ["compare", "--base", str(tiny_llm["base"]), "--out", str(tmp_path / "x")]
    assert main([*base, "--corpus", str(files["corpus"])]) == 2
    assert "missing --train, --test" in capsys.readouterr().err
    assert main([*base, "--pubmedqa", str(tmp_path / "pubmedqa"), "--test", str(files["test"])]) == 2
    assert "brings its own" in capsys.readouterr().err
    broken = _write_jsonl(tmp_path / "broken.jsonl", [{"id": "a", "text": ""}])
    assert main([*base, "--corpus", str(broken), "--train", str(files["train"]), "--test", str(files["test"])]) == 2
    assert "line 1: field 'text'" in capsys.readouterr().err


def test_eval_retrieval_on_a_beir_folder(minilm_path: Path, files: dict[str, Path], tmp_path: Path, capsys) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(files["corpus"].read_text().replace('"id"', '"_id"'))
    queries = [{"_id": f"q{i}", "text": f"Where was {name} born?"} for i, (name, _) in enumerate(PEOPLE)]
    _write_jsonl(beir / "queries.jsonl", queries)
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tp{i}\t1\n" for i in range(3))
    )
    index = tmp_path / "index"
    assert main(["index", str(files["corpus"]), "--out", str(index), "--model", str(minilm_path), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["eval", "retrieval", str(index), "--beir", str(beir), "-k", "2", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["means"]["hit@1"] == 1.0  # the names make the answer unambiguous for a real encoder
    assert set(scores["per_query"]["ndcg@2"]) == {"q0", "q1", "q2"}
