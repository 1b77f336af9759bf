# Assemblage developer entry points. `make run` and `make test` are the two commands a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export ASSEMBLAGE_HOME ?= $(CURDIR)/.assemblage
export DAGSTER_HOME ?= $(ASSEMBLAGE_HOME)/dagster

.PHONY: install run test ui status stop clean lint screenshot check-defs chaos

# Reinstall only when the dependency list or the constraints change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install  ## ingest and embed the sample tree (generated if empty) through Dagster and print a summary
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/assemblage demo --allow-tiny-model

test: install  ## import contracts (one-way layers), then the whole test suite against the embedded Postgres
	$(BIN)/lint-imports
	$(BIN)/pytest -q $(PYTEST_ARGS)

chaos: install  ## the fault trials alone (kill -9 mid paid run, dead Postgres, failing providers, dead run workers); `make test` runs them too
	$(BIN)/pytest -q -s tests/chaos tests/platform/test_run_monitoring.py $(PYTEST_ARGS)

ui: install  ## Dagster UI on http://127.0.0.1:3000 for the same code location and instance
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/assemblage dagster-config --write >/dev/null  # dagster.yaml: storage, run queue, limits
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

screenshot: install  ## docs/img/asset-graph.png from a running UI on sample data (needs chromium)
	$(BIN)/python docs/screenshot_ui.py

status: install
	$(BIN)/assemblage status

stop:  ## stop the embedded Postgres server
	$(BIN)/assemblage db stop

lint: install  ## ruff and the import contracts
	$(BIN)/ruff check assemblage_assets resources schedules tests benchmarks
	$(BIN)/lint-imports

check-defs: install  ## load the code location the way `dg` does and list what it defines
	mkdir -p $(DAGSTER_HOME)
	$(BIN)/dg check defs
	$(BIN)/dg list defs

clean: stop
	rm -rf $(ASSEMBLAGE_HOME)
