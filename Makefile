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

# two workers; whole modules per worker (a module's fixtures are built once, not once per worker),
# in collection order, which tests/conftest.py starts with the modules of slow tests
PYTEST_ARGS ?= -n 2 --dist loadscope --no-loadscope-reorder

.PHONY: help venv demo test bench ui lint workers workers-stop

help:
	@echo "make demo   create .venv, install, run the end-to-end pipeline, print the cost report"
	@echo "make test   create .venv if needed, install, run the whole test suite"
	@echo "make bench  run the benchmarks (JSON under bench/results/)"
	@echo "make ui     start the Dagster UI on http://127.0.0.1:3000"
	@echo "make lint   ruff"
	@echo "make workers REGIONS=\"aws/us-east-1 gcp/us-central1\"  start Celery workers per region (home init --executor celery)"

# one place for installs: pyproject.toml extras (torch==2.13.0 resolves to the local CPU wheel)
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,serving,hf,workers]'
	@touch $(STAMP)

# an editable install ships no bytecode (pip compiles only regular installs), and with
# PYTHONDONTWRITEBYTECODE set every `spotshift` start would compile the modules it loads again:
# compile once here (only what changed; ~0.3 s when nothing did)
BYTECODE = $(BIN)/python -m compileall -q -j 0 spotshift ops assets sensors resources definitions.py recording.py > /dev/null

venv: $(STAMP)

demo: $(STAMP)
	@$(BYTECODE)
	$(BIN)/python scripts/demo.py $(DEMO_ARGS)

test: $(STAMP)
	@$(BYTECODE)
	cd dbt_costs && ../$(BIN)/dbt parse --quiet --project-dir . --profiles-dir .  # manifest for dagster-dbt (cwd as dagster-dbt runs dbt)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run.py

ui: $(STAMP)
	$(BIN)/spotshift home init > /dev/null
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# one Celery worker per region queue plus one for the control queue (WORKERS_PER_REGION=2 for more)
REGIONS ?=
WORKERS_PER_REGION ?= 1
workers: $(STAMP)
	@test -n "$(REGIONS)" || { echo 'make workers: name the regions, e.g. REGIONS="aws/us-east-1 gcp/us-central1"' >&2; exit 2; }
	$(BIN)/spotshift workers start --per-region $(WORKERS_PER_REGION) $(foreach r,$(REGIONS),--region $(r))

workers-stop: $(STAMP)
	$(BIN)/spotshift workers stop

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
