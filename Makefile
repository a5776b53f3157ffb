# hazard-cascade: `make demo` and `make test` each set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= token

.PHONY: help setup demo test test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install everything (quick when nothing changed)

$(STAMP): pyproject.toml scripts/install_helm.py
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch + torchvision first, pinned: pip takes both from this machine's disk where it has them
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) scripts/install_helm.py
	$(PY) scripts/install_checkov.py  # checkov in a venv of its own: .venv/tools/checkov
	touch $(STAMP)

demo: setup ## run data -> stage 1 -> stage 2 -> calibration -> serving end to end (tiny model)
	$(VENV)/bin/hazard demo

test: setup ## run the whole test suite (CPU)
	$(PY) -m pytest -q

test-fast: setup ## unit tests only
	$(PY) -m pytest -q tests/unit

lint: setup ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup ## ruff fix + format
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup ## run the benchmarks in bench/ (prints tables, saves JSON)
	$(PY) -m bench.run_all

.PHONY: gpu-smoke
gpu-smoke: ## on a machine with one NVIDIA GPU: GPU lock in .venv-gpu, vLLM/engine/DeepSpeed checks
	scripts/gpu_smoke.sh

clean: ## remove run outputs (keeps .venv and the tiny-model cache)
	rm -rf runs .pytest_cache .ruff_cache
