# The two commands: `make demo` and `make test`. Each builds .venv when it is missing or older than
# pyproject.toml, so a fresh clone needs nothing but Python 3.11+ and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PKG := airflow_provider_gemini
LINTED := $(PKG) $(wildcard tests dags bench scripts)

.PHONY: demo test unit lint bench clean system-packages

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed-base: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(VENV)/.installed-bench: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test,bench]'
	touch $@

# GEMINI_CONN='<connection JSON>' runs the DAG against that account instead, dry run unless
# GEMINI_DEMO_DRY_RUN=0 (command-line variables reach the script's environment).
demo: $(VENV)/.installed-base
	$(BIN)/python scripts/demo.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy --strict $(PKG)

# Debian packages a test tier needs (Chromium for the browser tests); a no-op once installed.
system-packages:
	sh scripts/install-system-packages.sh

test: lint system-packages
	$(BIN)/pytest -n 3 --dist loadgroup

# The fast tier alone (in-process, no Airflow subprocesses): seconds, for the edit-test loop.
unit: $(VENV)/.installed-test
	$(BIN)/pytest -q tests/unit

bench: $(VENV)/.installed-bench
	$(BIN)/python bench/per_cancel.py
	$(BIN)/python bench/cold_start.py
	$(BIN)/python bench/parse_cost.py
	$(BIN)/python bench/bulk.py
	$(BIN)/python bench/triggers.py
	$(BIN)/python bench/hosts.py
	@echo "bench/RESULTS.md rewritten"

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
