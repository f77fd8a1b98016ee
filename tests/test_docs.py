"""The README's examples and the modules' doctests run as written."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

import ragplug

README = Path(__file__).parent.parent / "README.md"
PACKAGE = Path(ragplug.__file__).parent
WITH_DOCTESTS = sorted(
    ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    for path in PACKAGE.rglob("*.py")
    if ">>> " in path.read_text(encoding="utf-8")
)


def test_doctest_modules_found() -> None:
    assert "ragplug.retrievers.late_interaction.filters" in WITH_DOCTESTS and len(WITH_DOCTESTS) >= 4


@pytest.mark.parametrize("name", WITH_DOCTESTS)
def test_doctests(name: str) -> None:
    """Every module whose docstrings hold examples runs them (the dev install has every extra)."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


README_BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_its_examples() -> None:
    assert len(README_BLOCKS) >= 6
    assert "../" not in README.read_text(encoding="utf-8")  # points at nothing outside the repository


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(README_BLOCKS)))
def test_readme_block_runs_alone(number: int, tiny_llm: dict[str, Path], tmp_path: Path) -> None:
    """Every README example runs on its own, in a fresh namespace. The LoRA and page examples name real hub
    models; here (no hub) those lines point at locally built tiny models (and a PDF written here) instead,
    and the rest runs unchanged."""
    block = README_BLOCKS[number]
    for line in block.splitlines():
        if line.startswith("base, adapters = "):
            local = f"base, adapters = {str(tiny_llm['base'])!r}, {{'carol': {str(tiny_llm['alpha'])!r}}}"
            block = block.replace(line, local)
        if line.startswith("page_model = "):  # a tiny random ColQwen2 and a PDF written here
            from tests.fixtures.tiny_colpali import tiny_colpali_paths
            from tests.test_files import minimal_pdf

            pdf = tmp_path / "annual-report.pdf"
            pdf.write_bytes(minimal_pdf(["Operating margin 2022: 14 percent", "Outlook"]))
            block = block.replace(line, f"page_model = {str(tiny_colpali_paths()['colqwen2'])!r}")
            block = block.replace('pdfs = ["annual-report.pdf", "slides/"]', f"pdfs = [{str(pdf)!r}]")
    exec(compile(block, f"{README}, python block {number + 1}", "exec"), {"__name__": "readme"})
