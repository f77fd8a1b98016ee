"""The README's examples and the modules' doctests run as written."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import ragplug.retrievers.late_interaction.filters
import ragplug.retrievers.late_interaction.memory

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize(
    "module", [ragplug.retrievers.late_interaction.filters, ragplug.retrievers.late_interaction.memory]
)
def test_doctests(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.slow
def test_readme_python_blocks_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
