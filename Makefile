# hazard-cascade: `make demo` and `make test` each set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= token

.PHONY: help setup setup-locks demo test test-locks test-fast lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(STAMP) ## create .venv and install everything (quick when nothing changed)

# The project's environment holds the CPU image's lock (docker/requirements-cpu.lock) plus the
# test tools; scripts/lock_env.py installs it and checks every locked version.
$(STAMP): pyproject.toml docker/requirements-cpu.lock scripts/lock_env.py scripts/lock_images.py scripts/install_helm.py
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip packaging
	@# torch==2.14.1 + torchvision==0.29.1 (the lock's): pip takes both from this machine's disk where it has them
	$(PY) scripts/lock_env.py build cpu --venv $(VENV)
	$(PY) scripts/install_helm.py
	$(PY) scripts/install_checkov.py  # checkov in a venv of its own: .venv/tools/checkov
	touch $(STAMP)

# The GPU image's lock (transformers 5.20.2, torch 2.14.0, ...) less vLLM, for the tests marked
# image_lock: every unit test, and training, calibration and batch scoring on Ray.
GPU_LOCK_VENV ?= .venv-gpu-lock
GPU_LOCK_STAMP := $(GPU_LOCK_VENV)/.installed

$(GPU_LOCK_STAMP): docker/requirements-gpu.lock pyproject.toml scripts/lock_env.py scripts/lock_images.py | $(STAMP)
	$(PY) scripts/lock_env.py build gpu --venv $(GPU_LOCK_VENV)
	touch $(GPU_LOCK_STAMP)

setup-locks: $(GPU_LOCK_STAMP) ## create .venv-gpu-lock: the GPU image's versions, for test-locks

demo: setup ## run data -> stage 1 -> stage 2 -> calibration -> serving end to end (tiny model)
	$(VENV)/bin/hazard demo

test: setup setup-locks ## the whole suite (CPU image's versions), then test-locks
	$(PY) -m pytest -q
	$(MAKE) --no-print-directory test-locks

test-locks: setup-locks ## the image_lock tests (unit, training, scoring, calibration) in the GPU image's versions
	$(GPU_LOCK_VENV)/bin/python -m pytest -q -m image_lock

test-fast: setup ## the unmarked tests (not slow, gpu or network): a few minutes on 2 cores
	$(PY) -m pytest -q -m "not slow and not gpu and not network"

lint: setup ## ruff lint + format check, and the import rules of docs/architecture.md
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests/unit/test_layering.py

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
