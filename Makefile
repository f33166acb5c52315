# spotshift — the two commands a new user needs are `make demo` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export SPOTSHIFT_HOME ?= $(CURDIR)/.spotshift
export DAGSTER_HOME ?= $(SPOTSHIFT_HOME)/dagster
export DO_NOT_TRACK := 1
export GX_ANALYTICS_ENABLED := false
export DAGSTER_DISABLE_TELEMETRY := true
export PYTHONPATH := $(CURDIR)

PYTEST_ARGS ?= -n 2

.PHONY: help venv demo test bench ui lint

help:
	@echo "make demo   create .venv, install, run the end-to-end pipeline, print the cost report"
	@echo "make test   create .venv if needed, install, run the whole test suite"
	@echo "make bench  run the benchmarks (JSON under bench/results/)"
	@echo "make ui     start the Dagster UI on http://127.0.0.1:3000"
	@echo "make lint   ruff"

# one place for installs: pyproject.toml extras (torch==2.13.0 resolves to the local CPU wheel)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,serving,hf]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

test: $(STAMP)
	cd dbt_costs && ../$(BIN)/dbt parse --quiet --project-dir . --profiles-dir .  # manifest for dagster-dbt (cwd as dagster-dbt runs dbt)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py

ui: $(STAMP)
	$(BIN)/spotshift home init > /dev/null
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
