# Quick start: `make run` trains the default job offline; `make test` runs the test suite.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test test-all bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

# The main job, offline, on the embedded synthetic dataset.
run: $(STAMP)
	$(BIN)/fedrec train configs/default.toml --out runs/default

# The default test suite (slow tests deselected). Real-data tests need FEDREC_DATA.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

# Everything, slow end-to-end tests included.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_backends.py

clean:
	rm -rf $(VENV) runs .pytest_cache
