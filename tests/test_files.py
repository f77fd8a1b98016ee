"""ragplug.files: what each kind of file gives, ids that do not depend on how a file was named, and errors
that name the file (and line)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from ragplug.errors import InvalidInputError, MissingExtraError
from ragplug.files import Item, load_paths, markdown_title, read_file


def minimal_pdf(pages: list[str], title: str | None = None) -> bytes:
    """A valid PDF with one page per string (Helvetica text; "" makes a page without text), written by hand
    so the test knows exactly what text it holds. Strings must not contain ``(``, ``)`` or ``\\``."""
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
            b"/Contents %d 0 R >>" % len(objects)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % k for k in kids), len(kids))
    info = b""
    if title is not None:
        objects.append(f"<< /Title ({title}) >>".encode())
        info = b" /Info %d 0 R" % len(objects)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, info, xref)
    return bytes(out)


@pytest.fixture
def docs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path/docs with one file of each kind, a hidden file and folder, and files no reader takes; the
    current folder is tmp_path."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "notes.txt").write_text("Berlin is the capital of Germany.\n")
    (root / "paris.md").write_text("Intro line\n\n# Paris notes ##\n\nParis is on the Seine.\n# Second\n")
    (root / "sub" / "report.pdf").write_bytes(minimal_pdf(["Bananas are yellow.", "", "Tea is green."], "Fruit"))
    beir = [
        {"_id": "doc1", "title": "Bananas", "text": "Rich in potassium.", "metadata": {"lang": "en"}},
        {"_id": "doc2", "title": "", "text": "Green tea comes from China.", "year": 2001},
    ]
    (root / "sub" / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in beir))
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "table.docx").write_bytes(b"PK")
    (root / "README").write_text("no extension")
    (root / ".hidden.txt").write_text("secret")
    (root / ".git" / "config.txt").write_text("secret")
    monkeypatch.chdir(tmp_path)
    return root


def by_id(items: list[Item]) -> dict[str, Item]:
    return {item.id: item for item in items}


def test_a_folder_gives_one_item_per_text_page_and_line(docs: Path) -> None:
    loaded = load_paths(["docs"])
    items = by_id(loaded.items)
    assert list(items) == [
        "docs/notes.txt",
        "docs/paris.md",
        "doc1",
        "doc2",
        "docs/sub/report.pdf#p1",
        "docs/sub/report.pdf#p3",
    ]  # sorted by file (docs/notes.txt < docs/paris.md < docs/sub/corpus.jsonl < docs/sub/report.pdf)
    assert loaded.files == 4
    assert items["docs/notes.txt"] == Item(
        "docs/notes.txt", "Berlin is the capital of Germany.\n", {"source": "docs/notes.txt"}
    )
    paris = items["docs/paris.md"]
    assert paris.text.startswith("Intro line\n\n# Paris notes ##")  # the text is kept as written
    assert paris.metadata == {"source": "docs/paris.md", "title": "Paris notes"}
    page = items["docs/sub/report.pdf#p3"]
    assert page.text == "Tea is green."
    assert page.metadata == {"source": "docs/sub/report.pdf", "page": 3, "page_count": 3, "title": "Fruit"}
    assert loaded.empty == ["docs/sub/report.pdf#p2"]  # the page without text is reported, not indexed
    assert loaded.skipped == {".png": 1, ".docx": 1, "": 1}  # hidden files are neither read nor counted
    assert loaded.skipped_summary() == "1 without extension, 1 .docx, 1 .png"


def test_beir_lines_keep_id_title_and_metadata(docs: Path) -> None:
    items = by_id(load_paths(["docs/sub/corpus.jsonl"]).items)
    assert items["doc1"].text == "Bananas\nRich in potassium."  # title, newline, text
    assert items["doc1"].metadata == {"source": "docs/sub/corpus.jsonl", "title": "Bananas", "lang": "en"}
    assert items["doc2"].text == "Green tea comes from China."  # an empty title is not prepended
    assert items["doc2"].metadata == {"source": "docs/sub/corpus.jsonl", "year": 2001}


def test_plain_jsonl_lines(tmp_path: Path) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text(
        '{"id": 7, "contents": "seven", "source": "https://example.org/7"}\n'
        "\n"
        '{"page_content": "no id here", "metadata": {"k": [1, 2]}}\n'
        '{"id": "t", "title": "Only a title", "text": ""}\n'
        '{"id": "e", "text": "   "}\n'
    )
    loaded = load_paths([data], root=tmp_path)
    items = by_id(loaded.items)
    assert items["7"] == Item("7", "seven", {"source": "https://example.org/7"})  # the line's own source is kept
    assert items["rows.jsonl#L3"] == Item("rows.jsonl#L3", "no id here", {"source": "rows.jsonl", "k": [1, 2]})
    assert items["t"].text == "Only a title"
    assert loaded.empty == ["e"]


def test_ids_do_not_depend_on_how_a_file_is_named(docs: Path, tmp_path: Path) -> None:
    walked = {item.id for item in load_paths(["docs"]).items}
    named = load_paths(["docs/notes.txt", str(docs / "sub" / "report.pdf"), "./docs/../docs/paris.md"]).items
    assert {item.id for item in named} <= walked
    assert [item.id for item in load_paths(["."]).items][:2] == ["docs/notes.txt", "docs/paris.md"]
    inside = load_paths([docs], root=docs).items
    assert inside[0].id == "notes.txt" and inside[0].metadata["source"] == "notes.txt"
    outside = load_paths([docs / "notes.txt"], root=docs / "sub").items
    assert outside[0].id == (docs / "notes.txt").as_posix()  # outside the root: the absolute path
    # named twice (the folder and a file in it): read once
    assert load_paths(["docs", "docs/notes.txt"]).files == 4


def test_excluded_folders_are_not_walked(docs: Path) -> None:
    (docs / "idx").mkdir()
    (docs / "idx" / "records.txt").write_text("index files")
    assert "docs/idx/records.txt" in {item.id for item in load_paths(["docs"]).items}
    assert "docs/idx/records.txt" not in {item.id for item in load_paths(["docs"], exclude=[docs / "idx"]).items}


def test_markdown_title() -> None:
    assert markdown_title("# Title\ntext") == "Title"
    assert markdown_title("## Sub\n#not a heading\n# Real # \n") == "Real"
    assert markdown_title("```\n# a comment in code\n```\n# After code") == "After code"
    assert markdown_title("~~~python\n# comment\n```\n# still code\n~~~\n") is None
    assert markdown_title("no heading") is None


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", "rows.jsonl, line 2: not valid JSON"),
        ("[1, 2]", "rows.jsonl, line 2: expected a JSON object, got list"),
        ('{"id": "x"}', "rows.jsonl, line 2: no text; expected one of the keys"),
        ('{"id": "x", "text": 3}', "rows.jsonl, line 2: 'text' must be a string, got int"),
        ('{"id": ["x"], "text": "t"}', "rows.jsonl, line 2: 'id' must be a non-empty string or an integer"),
        ('{"_id": "", "text": "t"}', "rows.jsonl, line 2: '_id' must be a non-empty string"),
        ('{"id": "x", "text": "t", "title": 5}', "rows.jsonl, line 2: 'title' must be a string"),
        ('{"id": "x", "text": "t", "metadata": [1]}', "rows.jsonl, line 2: 'metadata' must be an object"),
        ('{"id": "a", "text": "again"}', "id 'a' appears twice in"),
    ],
)
def test_a_bad_jsonl_line_names_file_and_line(tmp_path: Path, line: str, expected: str) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text('{"id": "a", "text": "fine"}\n' + line + "\n")
    with pytest.raises(InvalidInputError, match=r"rows\.jsonl") as info:
        load_paths([data])
    assert expected in str(info.value)


def test_path_errors(docs: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"docs/missing does not exist"):
        load_paths(["docs/missing"])
    with pytest.raises(InvalidInputError, match=r"docs/image.png: no reader for '.png' files; ragplug reads .jsonl"):
        load_paths(["docs/image.png"])  # named explicitly: an error, not a skip
    with pytest.raises(InvalidInputError, match="no reader for files without an extension"):
        read_file(docs / "README")
    with pytest.raises(InvalidInputError, match="no paths given"):
        load_paths([])
    (docs / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"latin1.txt: not UTF-8 text .*convert it to UTF-8"):
        load_paths(["docs/latin1.txt"])
    (docs / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF")
    with pytest.raises(InvalidInputError, match=r"broken.pdf: cannot open the PDF"):
        load_paths(["docs/broken.pdf"])
    (docs / "dup.jsonl").write_text('{"id": "docs/notes.txt", "text": "clash"}\n')
    with pytest.raises(InvalidInputError, match=r"id 'docs/notes.txt' comes from .*dup.jsonl and .*notes.txt"):
        load_paths(["docs/dup.jsonl", "docs/notes.txt"])


def test_an_unreadable_file_is_an_input_error(docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", refuse)  # chmod 0 does not stop root, which runs some CIs
    with pytest.raises(InvalidInputError, match=r"cannot read .*notes.txt: Permission denied"):
        load_paths(["docs/notes.txt"])


def test_pdf_without_pypdfium2_names_the_extra(docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pypdfium2", None)  # import pypdfium2 now raises ImportError
    with pytest.raises(MissingExtraError, match=r'pip install "ragplug\[files\]"'):
        load_paths(["docs/sub/report.pdf"])
    assert len(load_paths(["docs/notes.txt"]).items) == 1  # other files do not need it
