# Two entry points on a fresh machine: `make demo` and `make test`. Each creates .venv when missing
# and installs what it needs: the pinned torch/torchvision pair first (requirements/torch.txt, the
# only place torch is pinned), then ragplug with its extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ragplug-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test unit integration lint bench-scifact clean

$(STAMP): pyproject.toml requirements/torch.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements/torch.txt
	$(PY) -m pip install --quiet -c requirements/torch.txt -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m ragplug.cli demo

lint: $(STAMP)
	$(PY) -m ruff check ragplug tests integration_tests benchmarks
	$(PY) -m mypy

test: $(STAMP) lint
	$(PY) -m pytest tests integration_tests

unit: $(STAMP)
	$(PY) -m pytest tests

integration: $(STAMP)
	$(PY) -m pytest integration_tests

bench-scifact: $(STAMP)
	$(PY) benchmarks/colbert_scifact.py --data ../shared/data/scifact

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
