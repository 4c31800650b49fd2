# One command each: `make train` (set up + train on the bundled sample), `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# Test files run this many at a time (pytest-xdist, a module's tests in one process; 0: one process).
TEST_JOBS ?= 2

.PHONY: install train evaluate test sample clean

install: $(VENV)/.installed

# torch first, pinned: the CPU wheel. Then the project, editable, with its test tools.
$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

train: install
	$(BIN)/python -m forecast train $(ARGS)

evaluate: install
	$(BIN)/python -m forecast evaluate $(ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(ARGS)

# Rebuild data/sample from the real series inside the arch and backtesting packages.
sample: install
	$(BIN)/python -m pip install -q -e ".[sample]"
	$(BIN)/python -m data_pipelines.sample --out data/sample

clean:
	rm -rf outputs multirun checkpoints mlruns mlartifacts mlflow.db
