"""The ``ragplug`` command over a user's folder (txt, md, a PDF, BEIR JSONL, files it cannot read): index,
info, search, re-index with --upsert, --version, help, and errors as one line (a traceback only with --debug).

The CLI loads its encoder at every call, as a process would. Here each model is loaded once per module (a
cache in front of ``ColBERTEncoder``), so the tests take seconds; what the CLI does with it is unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ragplug.cli as cli
from ragplug import __version__
from ragplug.cli import main
from tests.test_files import minimal_pdf

LONG = " ".join(  # about 630 tokens: two chunks for the MiniLM (510 tokens each)
    f"Sentence {n} of a long note about the orbits of the outer planets and their moons." for n in range(35)
)


@pytest.fixture(scope="module")
def encoders() -> Iterator[dict[tuple[str, str], Any]]:
    """``ColBERTEncoder(model, **kwargs)`` loads each (model, kwargs) once in this module."""
    import ragplug.retrievers.colbert as colbert

    real = colbert.ColBERTEncoder
    cache: dict[tuple[str, str], Any] = {}

    def cached(model: Any, **kwargs: Any) -> Any:
        key = (str(model), json.dumps(kwargs, sort_keys=True, default=str))
        if key not in cache:
            cache[key] = real(model, **kwargs)
        return cache[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(colbert, "ColBERTEncoder", cached)
        yield cache


def make_docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "notes.txt").write_text("Berlin is the capital of Germany.\n")
    (docs / "paris.md").write_text("# Paris\n\nParis is the capital of France, on the river Seine.\n")
    (docs / "long.txt").write_text(LONG)
    (docs / "sub" / "report.pdf").write_bytes(minimal_pdf(["Bananas are yellow fruit.", "", "Green tea is a drink."]))
    beir = [
        {"_id": "scifact-1", "title": "Potassium", "text": "Potassium keeps muscles working.", "metadata": {"y": 1}},
        {"_id": "scifact-2", "title": "Volcanoes", "text": "Lava flows from erupting volcanoes.", "lang": "en"},
    ]
    (docs / "sub" / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in beir))
    (docs / "photo.png").write_bytes(b"\x89PNG")
    (docs / ".cache.txt").write_text("hidden")
    return docs


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, encoders: dict[Any, Any], minilm_path: Path) -> dict[str, Any]:
    """A folder indexed once with the default model (the offline MiniLM): its paths and the summary."""
    root = tmp_path_factory.mktemp("cli")
    docs = make_docs(root)
    code, out, err = run(["index", str(docs), "--out", str(root / "idx"), "--root", str(root), "--no-progress"])
    assert code == 0, err
    return {"root": root, "docs": docs, "index": root / "idx", "out": out, "err": err}


def test_index_reports_what_it_read(built: dict[str, Any]) -> None:
    summary = built["out"].strip()
    assert "\n" not in summary  # one line
    assert summary.startswith(f"indexed 5 files: 7 items, 8 records into {built['index']} (8 records in all) in ")
    assert "skipped 1 file with no reader (1 .png)" in summary
    assert "1 without text, not indexed (docs/sub/report.pdf#p2)" in summary
    assert built["err"] == ""  # --no-progress: nothing on stderr


def test_info_without_loading_the_model(
    built: dict[str, Any], minilm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ragplug.retrievers.colbert as colbert

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("info loaded a model")

    monkeypatch.setattr(colbert, "ColBERTEncoder", refuse)
    code, out, _ = run(["info", str(built["index"])])
    assert code == 0
    lines = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith(" "))
    assert lines["records"] == "8 (7 items, 1 of them split into chunks)"
    assert lines["sources"] == "5 files"
    assert lines["vectors"].endswith("token vectors, dim 384")
    assert lines["encoder"].startswith(str(minilm_path))
    assert lines["codec"] == "pq (not trained yet: vectors are kept as they came until 200,000 tokens)"
    assert "  doc_maxlen" in out and "  model" in out  # the recorded settings
    code, out, _ = run(["info", str(built["index"]), "--json"])
    info = json.loads(out)
    assert (info["records"], info["items"], info["items_split"], info["sources"], info["dim"]) == (8, 7, 1, 5, 384)
    assert info["encoder"]["settings"]["model"] == str(minilm_path)
    assert info["bytes_on_disk"] > 8 * 384 and info["format"] == "ragplug.multivector"


def test_search_finds_the_right_item(built: dict[str, Any]) -> None:
    index = str(built["index"])
    code, out, _ = run(["search", index, "What is the capital of Germany?", "-k", "2"])
    assert code == 0
    first = out.split("\n\n")[0].splitlines()
    assert first[0].startswith(" 1. docs/notes.txt  relevance 0.")
    assert first[1:] == ["    source docs/notes.txt", "    Berlin is the capital of Germany."]
    assert out.count("\n\n") == 1  # two hits, separated by a blank line

    code, out, _ = run(["search", index, "green tea", "-k", "1"])
    assert "docs/sub/report.pdf#p3" in out and "source docs/sub/report.pdf, page 3/3" in out

    code, out, _ = run(["search", index, "potassium and muscles", "-k", "3", "--json"])
    hits = [json.loads(line) for line in out.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    top = hits[0]
    assert top["id"] == "scifact-1"
    assert top["metadata"] == {"source": "docs/sub/corpus.jsonl", "title": "Potassium", "y": 1}
    assert top["text"] == "Potassium\nPotassium keeps muscles working."
    assert all(0.0 <= h["relevance"] <= 1.0 for h in hits)
    assert hits[0]["relevance"] > hits[1]["relevance"] + 0.05

    code, out, _ = run(["search", index, "orbits of the outer planets", "-k", "1", "--json"])
    hit = json.loads(out)
    assert hit["parent_id"] == "docs/long.txt" and hit["id"].startswith("docs/long.txt#")


def test_search_with_filter_and_model(built: dict[str, Any], minilm_path: Path) -> None:
    index = str(built["index"])
    only = '{"source": "docs/sub/corpus.jsonl"}'
    code, out, _ = run(["search", index, "capital of Germany", "--filter", only, "--json", "--model", str(minilm_path)])
    assert code == 0
    assert {json.loads(line)["id"] for line in out.splitlines()} == {"scifact-1", "scifact-2"}
    code, out, _ = run(["search", index, "capital", "--filter", '{"source": "nowhere"}'])
    assert (code, out) == (0, "no matches (with this filter)\n")


def test_a_model_of_another_encoder_is_refused(built: dict[str, Any], plain_checkpoint: Path) -> None:
    code, out, err = run(["search", str(built["index"]), "capital", "--model", str(plain_checkpoint)])
    assert code == 2 and out == ""
    first, hint = err.splitlines()
    assert first.startswith(f"ragplug: error: {built['index']} was written by encoder") and "dim: 384 != " in first
    assert hint == "ragplug: hint: leave out --model to use the encoder the index records (`ragplug info INDEX`)"


def test_reindex_needs_upsert_and_then_updates(built: dict[str, Any], tmp_path: Path) -> None:
    index, docs = tmp_path / "idx", built["docs"]
    shutil.copytree(built["index"], index)
    code, out, err = run(["index", str(docs), "--out", str(index), "--root", str(built["root"])])
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"ragplug: error: 7 of the 7 items are already in {index}: 'docs/long.txt', 'docs/notes.txt', "
        "'docs/paris.md', ...",
        "ragplug: hint: rerun with --upsert to replace them",
    ]
    changed = tmp_path / "docs"
    shutil.copytree(docs, changed)
    (changed / "notes.txt").write_text("Berlin, the capital of Germany, is on the Spree.\n")
    argv = ["index", str(changed / "notes.txt"), "--out", str(index), "--root", str(tmp_path), "--upsert"]
    code, out, _ = run([*argv, "--no-progress"])
    assert code == 0
    assert out.startswith(f"indexed 1 file: 1 item, 1 record into {index} (8 records in all)")  # replaced
    code, out, _ = run(["search", str(index), "capital of Germany", "-k", "1", "--json"])
    assert json.loads(out)["text"] == "Berlin, the capital of Germany, is on the Spree.\n"


def test_progress_goes_to_stderr(built: dict[str, Any], tmp_path: Path) -> None:
    code, out, err = run(["index", str(built["docs"] / "notes.txt"), "--out", str(tmp_path / "idx")])
    assert code == 0 and out.startswith("indexed 1 file: 1 item, 1 record") and "1/1" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"ragplug {__version__}\n"


def test_version_in_a_process() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "ragplug.cli", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode, done.stdout, done.stderr) == (0, f"ragplug {__version__}\n", "")


def test_every_command_and_option_has_help() -> None:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.choices and isinstance(a.choices, dict)]
    assert set(sub.choices) == {"index", "search", "info", "demo", "graph", "compare", "eval"}
    assert all(choice.help for choice in sub._choices_actions)
    for command in (parser, *sub.choices.values()):
        for action in command._actions:
            assert action.help, f"{command.prog} {action.option_strings or action.dest} has no help"
    model_help = next(a.help for a in sub.choices["index"]._actions if "--model" in a.option_strings)
    assert "offline all-MiniLM-L6-v2" in str(model_help)


def test_help_and_usage_errors_return_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["index", "--help"]) == 0
    assert "--upsert" in capsys.readouterr().out
    assert main(["demo", "--help"]) == 0
    capsys.readouterr()
    assert main([]) == 2
    assert main(["search", "idx", "q", "-k", "0"]) == 2
    assert "must be a positive integer, got '0'" in capsys.readouterr().err


def test_errors_are_one_line_and_a_hint(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    code, out, err = run(["index", str(missing), "--out", str(tmp_path / "idx")])
    assert (code, out) == (2, "")
    assert err.splitlines() == [
        f"ragplug: error: {missing} does not exist",
        "ragplug: hint: see `ragplug index --help`",
    ]
    for argv in (["--debug", "index", str(missing), "--out", "x"], ["index", str(missing), "--out", "x", "--debug"]):
        code, _, err = run(argv)
        assert code == 2 and err.startswith("Traceback (most recent call last)") and "InvalidInputError" in err
        assert err.endswith(f"ragplug: error: {missing} does not exist\nragplug: hint: see `ragplug index --help`\n")

    code, _, err = run(["info", str(tmp_path)])
    assert code == 2 and len(err.splitlines()) == 2 and "holds no ragplug store" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["search", "{idx}", "q", "--filter", "{bad"], "ragplug: error: --filter is not valid JSON"),
        (["search", "{idx}", "q", "--filter", '{"n": {"gt": 1}}'], "ragplug: error: field 'n' in filter"),
        (["index", "{docs}/photo.png", "--out", "{tmp}/new"], "photo.png: no reader for '.png' files"),
        (["index", "{docs}", "--out", "{docs}"], "is a folder that holds other files, not a ragplug index"),
        (["index", "{docs}/notes.txt", "--out", "{docs}/notes.txt"], "notes.txt is a file, not a folder"),
    ],
)
def test_input_errors_before_loading_a_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    import ragplug.retrievers.colbert as colbert

    monkeypatch.setattr(colbert, "ColBERTEncoder", lambda *a, **k: pytest.fail("loaded a model"))
    docs = make_docs(tmp_path)
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "manifest.json").write_text('{"format": "ragplug.multivector"}')
    places = {"{idx}": str(tmp_path / "idx"), "{docs}": str(docs), "{tmp}": str(tmp_path)}
    filled = []
    for arg in argv:
        for key, value in places.items():
            arg = arg.replace(key, value)
        filled.append(arg)
    code, out, err = run(filled)
    assert (code, out) == (2, "")
    assert message in err.splitlines()[0] and len(err.splitlines()) == 2 and "Traceback" not in err


def test_a_folder_with_nothing_readable(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.docx").write_bytes(b"PK")
    (tmp_path / "in" / "b.docx").write_bytes(b"PK")
    (tmp_path / "in" / "blank.txt").write_text("  \n")
    code, _, err = run(["index", str(tmp_path / "in"), "--out", str(tmp_path / "idx")])
    assert code == 2
    assert err.splitlines() == [
        f"ragplug: error: nothing to index in {tmp_path / 'in'} (1 readable file; skipped 2 .docx; 1 without text)",
        "ragplug: hint: ragplug reads .txt, .md, .markdown, .pdf (with text) and .jsonl files",
    ]


def test_a_pdf_without_the_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypdfium2", None)
    docs = make_docs(tmp_path)
    code, _, err = run(["index", str(docs), "--out", str(tmp_path / "idx")])
    assert code == 2
    assert err.splitlines() == [
        "ragplug: error: 'pypdfium2' is required for this feature but is not installed. "
        'Install it with: pip install "ragplug[files]"'
    ]


def test_a_bug_is_exit_1_and_ctrl_c_is_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_info", broken)
    code, _, err = run(["info", "idx"])
    assert code == 1
    assert err.splitlines() == [
        "ragplug: error: unexpected RuntimeError: boom",
        "ragplug: hint: this is a bug in ragplug; rerun with --debug and report the traceback",
    ]

    def interrupted(args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_info", interrupted)
    assert run(["info", "idx"]) == (130, "", "")
