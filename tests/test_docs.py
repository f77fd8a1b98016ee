"""The README's examples and the modules' doctests run as written."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import ragplug.retrievers.late_interaction.filters
import ragplug.retrievers.late_interaction.stores.memory

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.parametrize(
    "module", [ragplug.retrievers.late_interaction.filters, ragplug.retrievers.late_interaction.stores.memory]
)
def test_doctests(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
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
