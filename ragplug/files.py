"""Read a user's files into items to index: text, Markdown, PDF (text per page) and JSONL / BEIR corpora.

:func:`load_paths` takes files and folders. A folder is walked recursively in sorted order, skipping
hidden files and folders (names starting with ``.``) and counting, by extension, the files it cannot read
(:attr:`Loaded.skipped`); a file named explicitly must have a readable extension. Framework-free: the
result is plain :class:`Item` objects (id, text, metadata) that any index or framework can take.

Every item's metadata has ``source``: the file's path relative to ``root`` (default: the current folder),
with ``/`` separators; a file outside ``root`` keeps its absolute path. So ``docs/a.md`` is ``docs/a.md``
whether it was named directly or found by walking ``docs`` or ``.``, by a relative or an absolute path.
What each kind of file gives:

* ``.txt``: one item, the whole text, id ``source``.
* ``.md`` / ``.markdown``: one item, the text unchanged, id ``source``; the first level-1 heading
  (``# Title``, outside code fences) is also ``title`` in the metadata.
* ``.pdf``: one item per page with text, id ``<source>#p<page>``, metadata ``page`` (1-based) and
  ``page_count`` (and ``title`` when the document records one). Pages without text (scans, blank pages)
  are listed in :attr:`Loaded.empty`, not indexed. Needs ``pypdfium2`` (extra ``files``).
* ``.jsonl``: one item per line, either a BEIR corpus line ``{"_id", "title", "text", "metadata"}`` or a
  plain ``{"id", "text" | "contents" | "page_content", ...}`` one. The line's id is kept (``_id`` first,
  else ``id``; a line without one gets ``<source>#L<line>``). A non-empty ``title`` goes into the metadata
  and is prepended to the text with a newline (``"<title>\\n<text>"``), as BEIR's dense-retrieval models
  join them (they use a space; a newline keeps the title a line of its own in the stored text). The
  ``metadata`` object and every other key go into the metadata; a line's own ``source`` is kept.

Ids are the same on every run over the same files from the same ``root``, so indexing again with
``upsert`` replaces items instead of duplicating them. Two items with the same id (JSONL lines, or a
JSONL id that is also a file's path) are an error; a file named twice is read once. Every problem is an
:class:`~ragplug.errors.InvalidInputError` naming the file (and the line of a JSONL file).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragplug._extras import require
from ragplug.errors import InvalidInputError

__all__ = ["READERS", "Item", "Loaded", "load_paths", "read_file"]

logger = logging.getLogger(__name__)

#: The keys of a JSONL line that hold its id and its text, in the order they are looked for.
ID_KEYS = ("_id", "id")
TEXT_KEYS = ("text", "contents", "page_content")
_HEADING = re.compile(r"^#[ \t]+(.+?)(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^[ \t]{0,3}(```|~~~)")


@dataclass(frozen=True)
class Item:
    """One unit to index: its stable ``id``, its ``text`` and its ``metadata`` (always with ``source``)."""

    id: str
    text: str
    metadata: dict[str, Any]


@dataclass
class Loaded:
    """What :func:`load_paths` read."""

    items: list[Item] = field(default_factory=list)
    #: Files read (each PDF and JSONL counts once, whatever the number of items it gave).
    files: int = 0
    #: Files skipped inside folders because no reader takes their extension: extension -> count
    #: (``""`` for files without one).
    skipped: Counter[str] = field(default_factory=Counter)
    #: The ids of what had no text, left out: PDF pages (``docs/a.pdf#p3``), empty text files, JSONL
    #: lines with neither title nor text.
    empty: list[str] = field(default_factory=list)

    def skipped_summary(self) -> str:
        """``"2 .docx, 1 without extension"``: the skipped files by extension, most frequent first."""
        counts = sorted(self.skipped.items(), key=lambda pair: (-pair[1], pair[0]))
        return ", ".join(f"{n} {ext or 'without extension'}" for ext, n in counts)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        msg = f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); convert it to UTF-8"
        raise InvalidInputError(msg) from err
    except OSError as err:
        msg = f"cannot read {path}: {err.strerror or err}"
        raise InvalidInputError(msg) from err


def _text_items(path: Path, source: str) -> Iterator[Item]:
    text = _read_text(path)
    yield Item(source, text, {"source": source})


def markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading (``# Title``) outside fenced code blocks, without its ``#`` marks."""
    fence: str | None = None
    for line in text.splitlines():
        opened = _FENCE.match(line)
        if opened:
            fence = None if fence == opened.group(1) else (fence or opened.group(1))
            continue
        if fence is None:
            match = _HEADING.match(line)
            if match:
                return match.group(1).strip()
    return None


def _markdown_items(path: Path, source: str) -> Iterator[Item]:
    text = _read_text(path)
    metadata: dict[str, Any] = {"source": source}
    title = markdown_title(text)
    if title:
        metadata["title"] = title
    yield Item(source, text, metadata)


def _pdf_items(path: Path, source: str) -> Iterator[Item]:
    pdfium = require("pypdfium2", "files")
    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as err:
        msg = f"{path}: cannot open the PDF ({err}); is it encrypted or damaged?"
        raise InvalidInputError(msg) from err
    try:
        title = str(pdf.get_metadata_value("Title") or "").strip()
        count = len(pdf)
        for number in range(1, count + 1):
            page = pdf[number - 1]
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n")
            finally:
                textpage.close()
                page.close()
            metadata: dict[str, Any] = {"source": source, "page": number, "page_count": count}
            if title:
                metadata["title"] = title
            yield Item(f"{source}#p{number}", text, metadata)
    except pdfium.PdfiumError as err:
        msg = f"{path}: cannot read the PDF's text ({err})"
        raise InvalidInputError(msg) from err
    finally:
        pdf.close()


def _jsonl_items(path: Path, source: str) -> Iterator[Item]:
    try:
        fh = path.open(encoding="utf-8-sig")
    except OSError as err:
        msg = f"cannot read {path}: {err.strerror or err}"
        raise InvalidInputError(msg) from err
    with fh:
        try:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    yield _jsonl_item(line, path, source, number)
        except UnicodeDecodeError as err:
            msg = f"{path}: not UTF-8 text ({err.reason}); convert it to UTF-8"
            raise InvalidInputError(msg) from err


def _jsonl_item(line: str, path: Path, source: str, number: int) -> Item:
    where = f"{path}, line {number}"
    try:
        row = json.loads(line)
    except ValueError as err:
        msg = f"{where}: not valid JSON ({err})"
        raise InvalidInputError(msg) from err
    if not isinstance(row, dict):
        msg = f"{where}: expected a JSON object, got {type(row).__name__}"
        raise InvalidInputError(msg)
    id_key = next((key for key in ID_KEYS if key in row), None)
    if id_key is None:
        id_ = f"{source}#L{number}"
    elif isinstance(row[id_key], str | int) and not isinstance(row[id_key], bool) and str(row[id_key]).strip():
        id_ = str(row[id_key])
    else:
        msg = f"{where}: {id_key!r} must be a non-empty string or an integer, got {row[id_key]!r:.80}"
        raise InvalidInputError(msg)
    text_key = next((key for key in TEXT_KEYS if key in row), None)
    if text_key is None:
        msg = f"{where}: no text; expected one of the keys {list(TEXT_KEYS)}, found {sorted(row)}"
        raise InvalidInputError(msg)
    text, title = row[text_key], row.get("title")
    if not isinstance(text, str):
        msg = f"{where}: {text_key!r} must be a string, got {type(text).__name__}"
        raise InvalidInputError(msg)
    if title is not None and not isinstance(title, str):
        msg = f"{where}: 'title' must be a string, got {type(title).__name__}"
        raise InvalidInputError(msg)
    nested = row.get("metadata")
    if nested is not None and not isinstance(nested, dict):
        msg = f"{where}: 'metadata' must be an object, got {type(nested).__name__}"
        raise InvalidInputError(msg)
    metadata: dict[str, Any] = {"source": source}
    metadata.update({k: v for k, v in row.items() if k not in (id_key, text_key, "metadata", "title")})
    metadata.update(nested or {})
    if title and title.strip():
        metadata["title"] = title
        text = f"{title}\n{text}" if text.strip() else title
    return Item(id_, text, metadata)


#: Readers by lower-case extension: each yields the items of one file, given its path and ``source``.
READERS = {
    ".txt": _text_items,
    ".md": _markdown_items,
    ".markdown": _markdown_items,
    ".pdf": _pdf_items,
    ".jsonl": _jsonl_items,
}


def read_file(path: str | os.PathLike[str], source: str | None = None) -> list[Item]:
    """The items of one file (empty ones included), with ``source`` (default: the file's name) as their
    ``source`` metadata and the base of their ids."""
    file = Path(path)
    reader = READERS.get(file.suffix.lower())
    if reader is None:
        raise _no_reader(file)
    return list(reader(file, source if source is not None else file.name))


def _no_reader(path: Path) -> InvalidInputError:
    kind = f"{path.suffix!r} files" if path.suffix else "files without an extension"
    return InvalidInputError(f"{path}: no reader for {kind}; ragplug reads {', '.join(sorted(READERS))}")


def _source(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` (both absolute, not resolved) in ``/`` form; absolute when outside it."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _walk(folder: Path, loaded: Loaded, exclude: set[Path]) -> list[Path]:
    """Every readable, non-hidden file under ``folder`` (absolute); the others are counted as skipped."""
    found = []
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and Path(top, d).resolve() not in exclude]
        for name in files:
            if name.startswith("."):
                continue
            path = Path(top, name)
            ext = path.suffix.lower()
            if ext in READERS:
                found.append(path)
            else:
                loaded.skipped[ext] += 1
                logger.debug("skipped %s: no reader for %r", path, ext)
    return found


def load_paths(
    paths: Sequence[str | os.PathLike[str]],
    *,
    root: str | os.PathLike[str] | None = None,
    exclude: Sequence[str | os.PathLike[str]] = (),
) -> Loaded:
    """Read files and folders (see the module docstring) into :class:`Loaded`, in the order of their
    ``source`` (paths relative to ``root``, default the current folder); items without text are left out
    and listed in :attr:`Loaded.empty`; folders in ``exclude`` (an index being written inside a folder
    being read, say) are not walked. Raises :class:`~ragplug.errors.InvalidInputError` for a
    path that does not exist, an explicitly named file no reader takes, an unreadable or malformed file,
    or two items with the same id."""
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    if not paths:
        msg = "no paths given"
        raise InvalidInputError(msg)
    loaded = Loaded()
    base = Path(os.path.abspath(root if root is not None else os.curdir))
    skip = {Path(folder).resolve() for folder in exclude}
    files: list[Path] = []
    for given in paths:
        path = Path(os.path.abspath(given))
        if path.is_dir():
            files.extend(_walk(path, loaded, skip))
        elif path.is_file():
            if path.suffix.lower() not in READERS:
                raise _no_reader(Path(given))
            files.append(path)
        elif path.exists():
            msg = f"{given} is neither a file nor a folder"
            raise InvalidInputError(msg)
        else:
            msg = f"{given} does not exist"
            raise InvalidInputError(msg)
    named = {_source(path, base): path for path in files}  # a file named twice (a folder and a file in it)
    origin: dict[str, Path] = {}
    for source in sorted(named):
        path = named[source]
        loaded.files += 1
        for item in read_file(path, source):
            if item.id in origin:
                first = origin[item.id]
                where = f"appears twice in {path}" if first == path else f"comes from {first} and {path}"
                msg = f"id {item.id!r} {where}; ids must be unique (rename a file, or give the lines distinct ids)"
                raise InvalidInputError(msg)
            origin[item.id] = path
            if item.text.strip():
                loaded.items.append(item)
            else:
                loaded.empty.append(item.id)
    return loaded
