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


@pytest.mark.slow
def test_readme_python_blocks_run(tiny_llm: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Every README example runs. The LoRA example names a real hub model; here (no hub) its first line
    is pointed at the locally built tiny model and adapter instead, and the rest runs unchanged."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        if block.count("base, adapters = ") == 1:
            line = next(x for x in block.splitlines() if x.startswith("base, adapters = "))
            local = f"base, adapters = {str(tiny_llm['base'])!r}, {{'carol': {str(tiny_llm['alpha'])!r}}}"
            block = block.replace(line, local)
        exec(compile(block, str(README), "exec"), namespace)
    assert capsys.readouterr().out  # the LoRA example printed its answers
